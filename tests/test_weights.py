"""Weights registry, download, checkpoint layouts and strict loading."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin import weights as W
from l2m_plugin.models.matcher import load_matcher

SMALL = MatcherConfig(encoder="vits14", coarse_res=56, upsample_res=None)


@pytest.fixture(scope="module")
def small_sd():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in L2M(SMALL).state_dict().items()}


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache for the test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


# --------------------------------------------------------------------- registry


def test_every_name_has_its_own_url_file_and_cache_path():
    downloaded = [e for e in W.REGISTRY.values() if e.packaged is None]
    urls = [e.url for e in downloaded]
    files = [e.filename for e in W.REGISTRY.values()]
    caches = [W.cache_path(e) for e in W.REGISTRY.values()]
    assert len(set(urls)) == len(urls) == len(downloaded) and len(set(files)) == len(set(caches)) == len(W.REGISTRY)
    v1, v2 = W.REGISTRY["l2mpp-v1"], W.REGISTRY["l2mpp-v2"]
    assert v1.url.endswith("l2m%2B%2B_560x560.pth") and v1.filename == "l2m++_560x560.pth"
    assert v2.url.endswith("l2m%2B%2B_560x560v2.pth.ckpt") and v2.filename == "l2m++_560x560v2.pth.ckpt"
    assert W.REGISTRY["dinov2l-distilled"].url.endswith("/dinov2l_distilled.pth")
    assert "dinov2_vitl14_pretrain.pth" in W.REGISTRY["dinov2-vitl14"].url
    for e in downloaded:
        assert W.cache_path(e).name == os.path.basename(e.url)  # torch.hub's own cache name
        if e.kind == "matcher":
            assert e.encoder in W.REGISTRY and W.REGISTRY[e.encoder].kind == "encoder"


def test_default_weights_ship_with_the_package_and_load_offline(monkeypatch):
    """l2m-tiny: inside the package, checksummed, <= 20 MB, the default of every entry point."""
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    entry = W.REGISTRY[W.DEFAULT_WEIGHTS]
    assert W.DEFAULT_WEIGHTS == "l2m-tiny" and entry.packaged and not entry.url
    path = W.resolve(W.DEFAULT_WEIGHTS)  # verifies size and SHA-256
    assert path == W.packaged_path(entry) and path.is_relative_to(Path(W.__file__).parent)
    assert entry.sha256 is not None and path.stat().st_size == entry.size <= 20 * 2**20
    model = load_matcher()
    assert model.weights_name == "l2m-tiny" and model.config.arch == "tiny-ds"
    assert sum(p.numel() for p in model.parameters()) <= 5_000_000
    assert L2M.from_pretrained().weights_name == "l2m-tiny"


def test_missing_packaged_file_names_the_fix(monkeypatch, tmp_path):
    entry = W.WeightsEntry("t", "matcher", "", "t.pth", packaged="assets/does_not_exist.pth")
    with pytest.raises(W.WeightsError, match="installed without its data files"):
        W.download(entry)


def test_v2_name_loads_the_v2_file_never_v1(hub_dir, official_checkpoint):
    """Upstream's version="v2" silently loads v1. Here each name reads its own cached file:
    v2's cache holds a valid checkpoint and v1's a broken one, so a mix-up cannot pass."""
    matcher, encoder = official_checkpoint
    for name, src in (("l2mpp-v2", matcher), ("dinov2l-distilled", encoder)):
        W.cache_path(name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, W.cache_path(name))
    W.cache_path("l2mpp-v1").write_bytes(b"not a checkpoint")
    model = load_matcher("l2mpp-v2", coarse_res=56, upsample_res=None)
    assert model.weights_name == "l2mpp-v2"
    with pytest.raises(W.WeightsError, match="l2m%2B%2B_560x560.pth"):
        load_matcher("l2mpp-v1")


def test_config_of_another_architecture_is_a_short_error(hub_dir, monkeypatch, tmp_path):
    """A preset / config / override written for another network than the weights' known one
    is refused in a few lines naming both architectures and the fix (never a key dump), for the
    packaged default, a registry name (before any download) and a checkpoint with a stored config."""
    from l2m_plugin import PRESETS

    monkeypatch.setenv(W.OFFLINE_ENV, "1")  # a download attempt would fail differently
    cases = [
        ("l2m-tiny", {"config": PRESETS["romatch"]}, "l2m-tiny", "tiny-ds", "roma/vitl14"),
        ("l2m-tiny", {"arch": "roma", "coarse_res": 280}, "l2m-tiny", "tiny-ds", "roma/vitl14"),
        ("l2mpp-v2", {"config": PRESETS["l2m-tiny"]}, "l2m", "roma/vitl14", "tiny-ds"),
        ("l2mpp-v2", {"encoder": "vits14"}, "l2m", "roma/vitl14", "roma/vits14"),
    ]
    for weights, kwargs, fix, weights_arch, config_arch in cases:
        with pytest.raises(W.ArchitectureMismatchError) as err:
            load_matcher(weights, **kwargs)
        e, msg = err.value, str(err.value)
        assert (e.weights_arch, e.config_arch, e.presets[0]) == (weights_arch, config_arch, fix), msg
        assert len(msg.splitlines()) <= 3 and len(msg) < 500 and "missing keys" not in msg, msg
        assert f"weights {weights!r} are arch {weights_arch} but the config is for arch {config_arch}" in msg
        assert f"preset {fix}" in msg
    assert W.ArchitectureMismatchError("x", PRESETS["l2m-tiny"], PRESETS["l2m"]).weights_for_config == [
        "l2mpp-v1", "l2mpp-v2", "roma-outdoor"]  # fmt: skip
    # a checkpoint file whose stored config is the tiny-ds network
    path = W.save_checkpoint(load_matcher(), tmp_path / "mine.pth")
    with pytest.raises(W.ArchitectureMismatchError, match="are arch tiny-ds but the config is for arch roma"):
        load_matcher(path, config=PRESETS["l2m"])
    # any config of the weights' own architecture applies whole
    own = PRESETS["l2m-tiny"].replace(coarse_res=256, sample_thresh=0.1)
    assert load_matcher(path, config=own).config == own
    assert load_matcher("l2m-tiny", config=PRESETS["l2m-tiny"], coarse_res=128).config.coarse_res == (128, 128)


def test_unknown_and_wrong_kind_names():
    with pytest.raises(W.WeightsError, match="l2mpp-v2"):
        W.resolve("l2mpp-v3")
    with pytest.raises(W.WeightsError, match="encoder_weights"):
        load_matcher("dinov2l-distilled")


# --------------------------------------------------------------------- download


class _Server:
    def __init__(self, root: Path):
        self.hits = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    s = _Server(root)
    s.root = root
    yield s
    s.close()


def test_download_to_hub_cache_with_checksum_then_reuse(hub_dir, server, small_sd):
    torch.save(small_sd, server.root / "m.pth")
    data = (server.root / "m.pth").read_bytes()
    entry = W.WeightsEntry("t", "matcher", server.url + "m.pth", "m.pth", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    path = W.download(entry, progress=False)
    assert path == hub_dir / "checkpoints" / "m.pth" and path.read_bytes() == data
    assert not list(path.parent.glob("*.partial")) and server.hits == 1
    assert W.download(entry, progress=False) == path and server.hits == 1  # cached: no second request


def test_download_checksum_mismatch_removes_file(hub_dir, server):
    (server.root / "bad.pth").write_bytes(b"x" * 100)
    entry = W.WeightsEntry("t", "matcher", server.url + "bad.pth", "bad.pth", sha256="0" * 64)
    with pytest.raises(W.WeightsError, match="SHA-256"):
        W.download(entry, progress=False)
    assert not (hub_dir / "checkpoints" / "bad.pth").exists()


def test_offline_error_names_url_cache_path_and_local_file_option(hub_dir, monkeypatch):
    entry = W.WeightsEntry("t", "matcher", "http://127.0.0.1:9/l2m.pth", "l2m.pth")  # port 9: refused
    with pytest.raises(W.WeightsError) as err:
        W.download(entry, progress=False)
    msg = str(err.value)
    assert entry.url in msg and str(hub_dir / "checkpoints" / "l2m.pth") in msg and "--weights" in msg
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    with pytest.raises(W.WeightsError, match="downloads are disabled") as err:
        W.download("l2mpp-v2", progress=False)
    assert W.REGISTRY["l2mpp-v2"].url in str(err.value) and str(W.cache_path("l2mpp-v2")) in str(err.value)


def test_no_network_at_import_or_construction():
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('network access')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
        "import l2m_plugin, l2m_plugin.weights, l2m_plugin.cli\n"
        "from l2m_plugin import L2M, MatcherConfig\n"
        "L2M(MatcherConfig(encoder='vits14', coarse_res=56, upsample_res=None))\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# --------------------------------------------------------------------- layouts


def test_lightning_nesting_and_prefixes_are_unwrapped():
    t = torch.zeros(2)
    assert W.unwrap_state_dict({"state_dict": {"model.decoder.x": t}, "epoch": 3}) == {"decoder.x": t}
    assert W.unwrap_state_dict({"model": {"module.decoder.x": t}}) == {"decoder.x": t}
    assert W.unwrap_state_dict({"module.model.decoder.x": t}) == {"decoder.x": t}
    with pytest.raises(W.WeightsError, match="no tensor state dict"):
        W.unwrap_state_dict({"epoch": 1})


def test_dinov2_layout_maps_onto_timm_keys():
    t = torch.zeros(1)
    sd = {"cls_token": t, "mask_token": t, "blocks.0.norm1.weight": t, "blocks.1.5.attn.qkv.weight": t}
    assert W.map_dinov2_keys(sd) == {
        "encoder.dinov2.vit.cls_token": t,
        "encoder.dinov2.vit.blocks.0.norm1.weight": t,
        "encoder.dinov2.vit.blocks.5.attn.qkv.weight": t,  # FSDP-chunked block index
    }


@pytest.mark.parametrize("lightning", [False, True], ids=["pth", "lightning-ckpt"])
def test_official_layout_round_trip_is_exact(tmp_path, small_sd, lightning):
    model = load_matcher(small_sd, config=SMALL)
    m, e = W.save_official_layout(model, tmp_path / "m.pth", tmp_path / "e.pth", lightning=lightning)
    enc = torch.load(e, weights_only=True)
    assert "mask_token" in enc and "blocks.0.attn.qkv.weight" in enc  # DINOv2's own key layout
    assert not any(k.startswith("encoder.dinov2") for k in W.unwrap_state_dict(torch.load(m, weights_only=True)))
    loaded = load_matcher(m, config=SMALL, encoder_weights=e)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_l2m_plugin_checkpoint_keeps_config(tmp_path, small_sd):
    model = load_matcher(small_sd, config=SMALL.replace(color_order="BGR"))
    W.save_checkpoint(model, tmp_path / "c.pt")
    loaded = load_matcher(tmp_path / "c.pt")
    assert loaded.config == model.config and loaded.config.color_order == "BGR"


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys(small_sd):
    sd = dict(small_sd)
    del sd["decoder.proj.8.0.weight"]
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["decoder.proj.4.0.bias"] = torch.zeros(7)
    with pytest.raises(W.WeightsError) as err:
        load_matcher(sd, config=SMALL)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "decoder.proj.8.0.weight" in msg
    assert "unexpected keys (1)" in msg and "decoder.extra.weight" in msg
    assert "shape mismatches (1)" in msg and "decoder.proj.4.0.bias: checkpoint (7,) vs model (256,)" in msg


def test_encoder_of_the_wrong_size_is_refused(tmp_path, small_sd):
    model = load_matcher(small_sd, config=SMALL)
    m, e = W.save_official_layout(model, tmp_path / "m.pth", tmp_path / "e.pth")
    with pytest.raises(W.WeightsError, match="shape mismatches"):
        load_matcher(m, config=SMALL.replace(encoder="vitb14"), encoder_weights=e)


def test_truncated_empty_and_foreign_checkpoints(tmp_path, small_sd):
    good = tmp_path / "good.pth"
    torch.save({k: small_sd[k] for k in list(small_sd)[:20]}, good)
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("hello")
    for name, pattern in (("trunc.pth", "truncated"), ("empty.pth", "empty"), ("text.pth", "truncated or is not")):
        with pytest.raises(W.WeightsError, match=pattern) as err:
            load_matcher(tmp_path / name, config=SMALL)
        assert name in str(err.value)
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}
    torch.save(resnet, tmp_path / "resnet.pth")
    with pytest.raises(W.WeightsError, match="resnet.pth is not an L2M / RoMa matcher checkpoint") as err:
        load_matcher(tmp_path / "resnet.pth", config=SMALL, encoder_weights={"cls_token": torch.zeros(1, 1, 384)})
    assert "conv1.weight" in str(err.value)
    with pytest.raises(W.WeightsError, match="neither a registry name"):
        load_matcher(tmp_path / "missing.pth")


def test_pickled_objects_are_refused_unless_trusted(tmp_path, small_sd):
    obj = {"state_dict": {"model." + k: v for k, v in small_sd.items()}, "hyper_parameters": argparse.Namespace(lr=1)}
    torch.save(obj, tmp_path / "lightning.ckpt")
    with pytest.raises(W.UntrustedCheckpointError, match=r"lightning\.ckpt holds pickled Python objects.*--trust-checkpoint"):
        load_matcher(tmp_path / "lightning.ckpt", config=SMALL)
    with pytest.warns(UserWarning, match="weights_only=False"):
        model = load_matcher(tmp_path / "lightning.ckpt", config=SMALL, trust_checkpoint=True)
    assert torch.equal(model.state_dict()["decoder.proj.8.0.weight"], small_sd["decoder.proj.8.0.weight"])


def test_an_unrelated_state_dict_is_named_before_any_download(monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("nothing may be downloaded for an unrelated file")

    monkeypatch.setattr(W, "download", no_download)
    with pytest.raises(W.WeightsError, match=r"not an L2M / RoMa matcher checkpoint.*conv1\.weight"):
        load_matcher({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})


def test_l2m_weights_calls_a_cached_file_of_the_wrong_size_broken(hub_dir, monkeypatch, capsys):
    from dataclasses import replace

    from l2m_plugin.cli import main

    entry = replace(W.REGISTRY["l2mpp-v1"], size=1000)
    monkeypatch.setitem(W.REGISTRY, "l2mpp-v1", entry)
    import l2m_plugin.cli as cli

    monkeypatch.setattr(cli, "REGISTRY", W.REGISTRY, raising=False)
    path = W.cache_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)  # a download cut short
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("l2mpp-v1"))
    assert " broken " in line and "10 bytes, expected 1000: delete it to download again" in out
