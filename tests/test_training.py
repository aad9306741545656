"""Stage-2 training: architectures, data, RoMa's losses, the trainer (resume, DDP) and the CLI.

Everything runs on CPU in about a minute with one thread per process; the training runs
use the real ``tiny`` architecture at 64 x 96 on exact synthetic pairs
(:mod:`l2m_plugin.testing.training`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.config import ARCH_PRESETS
from l2m_plugin.testing.training import write_megadepth_train_fixture, write_synth_fixture
from l2m_plugin.training import (
    MegaDepthPairs,
    RobustLoss,
    StepSampler,
    SynthPairs,
    Trainer,
    load_conf,
)
from l2m_plugin.training.data import DataError, hflip_item
from l2m_plugin.training.losses import anchor_targets, gt_at_scale

from .conftest import free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 96)  # (H, W) of the fixture pairs and of the test training runs
TINY = MatcherConfig(arch="tiny", coarse_res=SIZE, upsample_res=None, normalize=True, gp_solve="cholesky")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread per process (the machine's cores are shared; conftest asks for 2)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return write_synth_fixture(tmp_path_factory.mktemp("synth"), num_pairs=3, size=(SIZE[1], SIZE[0]), seed=0)


def _conf(root: Path, out: Path, **train):
    overrides = [
        f"data.root={root}", f"train.out={out}", f"data.size=[{SIZE[0]},{SIZE[1]}]",
        f"model.coarse_res=[{SIZE[0]},{SIZE[1]}]", "train.batch_size=2", "train.amp=none",
        "train.progress=false", "train.tensorboard=false", "train.log_every=1", "data.num_workers=0",
        "train.warmup_steps=1", "data.hflip=0.5",
    ]  # fmt: skip
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_conf(REPO / "configs" / "train" / "stage2_tiny.yaml", overrides)


# ---------------------------------------------------------------- architectures
def _fingerprint(sd: dict) -> str:
    return hashlib.sha256("\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(sd.items())).encode()).hexdigest()


def test_roma_arch_keeps_the_official_keys_and_shapes():
    """The "roma" arch is today's network: the RoMa-layout keys and shapes of its official-layout
    split (what l2m_plugin.testing.random_init / ``l2m make-checkpoint`` write) are those of the commit
    before ArchConfig existed (fingerprints computed there; ViT-L/14 gives 8f0ed767... /
    1e036a0c...). Loading those files and matching romatch's numbers: test_weights.py and
    test_equivalence.py."""
    from l2m_plugin.weights import split_official_layout

    with torch.device("meta"):
        model = L2M(MatcherConfig(arch="roma", encoder="vits14"))
    matcher, vit = split_official_layout(model.state_dict())
    assert len(matcher) == 603 and len(vit) == 175
    assert _fingerprint(matcher) == "08c1b7204b57560e73357da03003be9257e82ba7bf7c7c46c7aa879d571c56a7"
    assert _fingerprint(vit) == "092a187a126bee3dbf23a8174ae0e4884c7200646be3dff7b2fc61673c6c6ee2"
    assert MatcherConfig() == MatcherConfig(arch="roma") and MatcherConfig().arch_config == ARCH_PRESETS["roma"]


def test_tiny_arch_is_small_and_runs_at_odd_sizes():
    torch.manual_seed(0)
    model = L2M(MatcherConfig(arch="tiny", coarse_res=(64, 80), upsample_res=(72, 88)))
    n = sum(p.numel() for p in model.parameters())
    assert n <= 5_000_000, n  # fp32 weights <= 20 MB
    assert not any(k.startswith("encoder.dinov2") for k in model.state_dict())
    with torch.inference_mode():
        out = model({"image0": torch.rand(1, 3, 97, 131), "image1": torch.rand(1, 3, 61, 45)})
    assert out["warp0"].shape == (1, 72, 88, 2) and out["warp1"].shape == (1, 72, 88, 2)
    assert torch.isfinite(out["warp0"]).all() and torch.isfinite(out["certainty0"]).all()
    # the coarse stride of a CNN is 16: other sizes are refused with the reason
    with pytest.raises(ValueError, match="multiples of 16"):
        MatcherConfig(arch="tiny", coarse_res=56)
    # a small ViT as the coarse encoder (patch 14), widths from a dict as YAML gives them
    vit = dict(ARCH_PRESETS["tiny"].__dict__, coarse="vit", coarse_dim=96, vit_depth=2, vit_heads=3)
    cfg = MatcherConfig.from_dict({"arch": vit, "coarse_res": [56, 84], "upsample_res": None})
    with torch.inference_mode():
        out = L2M(cfg)({"image0": torch.rand(1, 3, 50, 70), "image1": torch.rand(1, 3, 50, 70)})
    assert out["warp0"].shape == (1, 56, 84, 2)
    assert MatcherConfig.from_dict(cfg.to_dict()) == cfg


def test_gm_outputs_exposed_without_changing_outputs():
    torch.manual_seed(0)
    model = L2M(TINY.replace(symmetric=False, normalize=False)).eval()
    x0, x1 = torch.rand(2, 3, *SIZE), torch.rand(2, 3, *SIZE)
    with torch.no_grad():
        feats = model.encoder(torch.cat((x0, x1)))
        f0 = {s: f[:2] for s, f in feats.items()}
        f1 = {s: f[2:] for s, f in feats.items()}
        plain = model.decoder(f0, f1)
        with_gm = model.decoder(f0, f1, return_gm=True)
        train_out = model.forward_train({"image0": x0, "image1": x1})
        infer = model({"image0": x0, "image1": x1})
    for s in plain:
        for k in ("flow", "certainty"):
            assert (plain[s][k] - with_gm[s][k]).abs().max() == 0
            assert (plain[s][k] - train_out[s][k]).abs().max() == 0
    assert "gm_cls" not in plain[16]
    R = ARCH_PRESETS["tiny"].anchor_res
    assert with_gm[16]["gm_cls"].shape == (2, R * R, SIZE[0] // 16, SIZE[1] // 16)
    assert with_gm[16]["gm_certainty"].shape == (2, 1, SIZE[0] // 16, SIZE[1] // 16)
    # forward() returns the training network's scale-1 flow (clamped to the image)
    flow = train_out[1]["flow"].permute(0, 2, 3, 1)
    inside = (flow.abs() <= 1).all(dim=-1)
    assert inside.any() and (infer["warp0"][inside] - flow[inside]).abs().max() == 0


# ---------------------------------------------------------------- data
def test_synth_pairs_format_resizing_and_flip(synth_root, tmp_path):
    from l2m_plugin.geometry import warp_from_depth

    ds = SynthPairs(synth_root, SIZE)
    assert len(ds) == 3
    item = ds[0]
    assert item["image0"].shape == (3, *SIZE) and item["image0"].dtype == torch.float32
    assert item["warp0"].shape == (*SIZE, 2) and item["valid0"].dtype == torch.bool
    assert item["K0"].dtype == torch.float64 and item["T_0to1"].shape == (4, 4)
    assert 0.3 < item["valid0"].float().mean() < 1.0
    # mirrored pair: its warp is what warp_from_depth gives for mirrored depth and K
    import numpy as np

    with np.load(synth_root / "pairs" / item["id"] / "geometry.npz") as g:
        d0, d1 = torch.from_numpy(g["depth0"]).double(), torch.from_numpy(g["depth1"]).double()
    f = hflip_item(item)
    w, v = warp_from_depth(d0.flip(-1), f["K0"], f["K1"], f["T_0to1"], depth1=d1.flip(-1))
    assert torch.equal(v[0], f["valid0"])
    assert (w[0][v[0]] - f["warp0"][v[0]]).abs().max() < 1e-5
    back = hflip_item(f)
    assert all(torch.equal(back[k], item[k]) for k in ("image0", "warp0", "valid0", "K1"))
    # half size: nearest-exact masks and warps, K scaled (COLMAP corner convention)
    half = SynthPairs(synth_root, (SIZE[0] // 2, SIZE[1] // 2))[0]
    assert torch.equal(half["warp0"], item["warp0"][1::2, 1::2]) and torch.equal(half["valid1"], item["valid1"][1::2, 1::2])
    assert torch.allclose(half["K0"][:2], item["K0"][:2] / 2)
    # wrong format / missing files: errors name the file
    (tmp_path / "synth_conf.yaml").write_text("format: other\nversion: 1\n")
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(DataError, match="synth_conf.yaml"):
        SynthPairs(tmp_path, SIZE)
    with pytest.raises(DataError, match="pairs.jsonl"):
        SynthPairs(tmp_path / "nothing", SIZE)


def test_megadepth_pairs_equal_the_exact_warps(tmp_path, synth_root):
    root = write_megadepth_train_fixture(tmp_path / "md", num_pairs=3, size=(SIZE[1], SIZE[0]), seed=0)
    synth = SynthPairs(synth_root, SIZE)
    for name in ("0000.npy", "0001.npz"):  # RoMa's prep_scene_info and LoFTR's pair_infos
        md = MegaDepthPairs(root, root / "scene_info" / name, SIZE)
        assert len(md) == 3
        a, b = md[1], synth[1]
        assert torch.equal(a["valid0"], b["valid0"]) and torch.equal(a["valid1"], b["valid1"])
        assert (a["warp0"] - b["warp0"])[a["valid0"]].abs().max() < 1e-6
        assert torch.allclose(a["T_0to1"], b["T_0to1"])
    assert len(MegaDepthPairs(root, root / "scene_info", SIZE)) == 6
    with pytest.raises(DataError, match="overlap"):
        MegaDepthPairs(root, root / "scene_info", SIZE, min_overlap=0.9)


def test_step_sampler_depends_only_on_seed_and_step():
    full = StepSampler(5, 2, seed=3, world_size=2, rank=1)
    resumed = StepSampler(5, 2, seed=3, world_size=2, rank=1, start_step=4, steps=6)
    assert list(resumed) == [full.batch(4), full.batch(5)]
    # one epoch over both ranks is a permutation of the items
    items = [i for s in range(2) for r in range(2) for i, _ in StepSampler(8, 2, seed=0, rank=r, world_size=2).batch(s)]
    assert sorted(items) == list(range(8))


# ---------------------------------------------------------------- losses
def _perfect_output(warp, valid, R, peak=30.0):
    """Decoder-like output whose flows are the ground truth at every scale and whose
    anchor logits peak at the ground-truth anchor."""
    out = {}
    for s in (16, 8, 4, 2, 1):
        h, w = SIZE[0] // s, SIZE[1] // s
        x2, ok = gt_at_scale(warp, valid, h, w)
        o = {"flow": x2.permute(0, 3, 1, 2).clone(), "certainty": torch.where(ok, 20.0, -20.0)[:, None]}
        if s == 16:
            target = anchor_targets(x2, R)
            o["gm_cls"] = torch.nn.functional.one_hot(target, R * R).permute(0, 3, 1, 2).float() * peak
            o["gm_certainty"] = o["certainty"].clone()
        out[s] = o
    return out


def test_losses_vanish_at_the_ground_truth(synth_root):
    ds = SynthPairs(synth_root, SIZE)
    warp = torch.stack([ds[i]["warp0"] for i in range(2)])
    valid = torch.stack([ds[i]["valid0"] for i in range(2)])
    R = 32
    loss = RobustLoss()
    total, stats = loss(_perfect_output(warp, valid, R), warp, valid)
    for s in (16, 8, 4, 2, 1):
        assert stats[f"regression_{s}"] == 0.0  # Charbonnier minus its floor: exactly 0 at zero error
        assert stats[f"certainty_{s}"] < 1e-6 and stats[f"valid_fraction_{s}"] > 0.3
    assert stats["gm_cls_16"] < 1e-6 and stats["epe_px"] == 0.0 and stats["pck_1px"] == 1.0
    assert total.item() < 1e-6
    # CE is minimal with the peak at the GT anchor: moving the peak to a neighbour raises it
    moved = _perfect_output(warp, valid, R)
    moved[16]["gm_cls"] = moved[16]["gm_cls"].roll(1, dims=1)
    _, s2 = loss(moved, warp, valid)
    assert s2["gm_cls_16"] > 20.0
    # a flow off by one pixel costs regression
    off = _perfect_output(warp, valid, R)
    off[1]["flow"][:, 0] += 2.0 / SIZE[1]  # one pixel in x
    _, s3 = loss(off, warp, valid)
    assert s3["regression_1"] > 0 and abs(s3["epe_px"] - 1.0) < 1e-4


def test_anchor_targets_are_romas_nearest_anchor():
    R = 8
    x = torch.rand(500, 2) * 2.4 - 1.2  # includes points outside the image
    g = torch.linspace(-1 + 1 / R, 1 - 1 / R, R)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    anchors = torch.stack((gx, gy), dim=-1).reshape(R * R, 2)
    nearest = (anchors[None] - x[:, None]).norm(dim=-1).min(dim=1).indices  # RoMa gm_cls_loss
    assert torch.equal(anchor_targets(x, R), nearest)


def test_locality_mask_follows_the_previous_scale_error(synth_root):
    ds = SynthPairs(synth_root, SIZE)
    warp, valid = ds[0]["warp0"][None], ds[0]["valid0"][None]
    out = _perfect_output(warp, valid, 32)
    out[16]["flow"] = out[16]["flow"] + 0.5  # coarse error of a quarter image: scale 8 sees nothing
    _, stats = RobustLoss()(out, warp, valid)
    assert stats["valid_fraction_16"] > 0.3 and stats["valid_fraction_8"] == 0.0
    assert stats["valid_fraction_4"] > 0.3  # scale 8's flow is exact again


# ---------------------------------------------------------------- training
def test_tiny_model_overfits_one_batch(synth_root):
    """One fixed batch of 2 pairs, AdamW lr 2e-3, float32, 1 thread: measured loss 9.40 -> 0.52
    (18x) and end-point error 32.8 -> 2.9 px in 25 steps (the coarse classifier memorises
    the batch within 10); asserted: loss down >= 5x, EPE down >= 4x."""
    torch.manual_seed(0)
    ds = SynthPairs(synth_root, SIZE)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    model = L2M(TINY).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    loss_fn = RobustLoss()
    losses, epes = [], []
    for _ in range(25):
        out = model.forward_train({"image0": batch["image0"], "image1": batch["image1"]})
        loss, stats = loss_fn(out, batch["warp0"], batch["valid0"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        epes.append(stats["epe_px"])
    assert losses[0] / min(losses[-3:]) >= 5.0, losses
    assert epes[0] / min(epes[-3:]) >= 4.0, epes


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_gives_the_weights_of_an_uninterrupted_run(synth_root, tmp_path):
    full = Trainer(_conf(synth_root, tmp_path / "full", steps=4)).run()
    stopped = Trainer(_conf(synth_root, tmp_path / "cut", steps=4, stop_at=2)).run()
    assert stopped.name == "model_step_0000002.pth" and not (tmp_path / "cut" / "model.pth").exists()
    assert (tmp_path / "cut" / "checkpoints" / "step_0000002.pt").is_file()
    early = L2M.from_pretrained(stopped)  # the model where the run stopped, loadable for evaluation
    assert early.weights_name == "cut-step2"
    # the training checkpoint itself is a --weights value: the same matcher, built from the run's conf
    ckpt = L2M.from_pretrained(tmp_path / "cut" / "checkpoints" / "step_0000002.pt")
    assert ckpt.weights_name == "cut-step2" and ckpt.config == early.config
    assert all(torch.equal(v, early.state_dict()[k]) for k, v in ckpt.state_dict().items())
    resumed = Trainer(_conf(synth_root, tmp_path / "cut", steps=4)).run()
    a, b = _state(full), _state(resumed)
    assert set(a) == set(b)
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert diff < 1e-6, diff
    assert any(not torch.equal(a[k], v) for k, v in L2M(TINY).state_dict().items())  # it did train
    # the log has one row per step, without duplicates from the interrupted part
    steps = [line.split(",")[0] for line in (tmp_path / "cut" / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(synth_root, tmp_path, caplog):
    conf = _conf(synth_root, tmp_path / "run", steps=3, stop_at=2, checkpoint_every=1, keep_checkpoints=2)
    Trainer(conf).run()
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert [c.name for c in ckpts] == ["step_0000001.pt", "step_0000002.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])  # cut by a crash or a full disk
    with caplog.at_level("WARNING"):
        Trainer(_conf(synth_root, tmp_path / "run", steps=3, checkpoint_every=1, keep_checkpoints=2)).run()
    assert "step_0000002.pt is unreadable" in caplog.text and "trying the previous one" in caplog.text
    steps = [line.split(",")[0] for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2", "3"]  # resumed after step 1: step 2 was done again
    assert (tmp_path / "run" / "model.pth").is_file()


def test_output_dir_with_another_config_is_refused(synth_root, tmp_path):
    from l2m_plugin.training import TrainConfigError

    Trainer(_conf(synth_root, tmp_path / "run", steps=1)).run()
    with pytest.raises(TrainConfigError, match=r"train.steps: 1 -> 2"):
        Trainer(_conf(synth_root, tmp_path / "run", steps=2)).run()
    assert Trainer(_conf(synth_root, tmp_path / "run", steps=2), overwrite=True).run().is_file()
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3  # a fresh log: 2 steps


def test_configs_resolve_and_bad_keys_are_named():
    from l2m_plugin.training import TrainConfigError

    conf = load_conf(REPO / "configs" / "train" / "stage2_l2m.yaml", ["data.root=D", "train.out=O"])
    cfg = MatcherConfig.from_dict(dict(conf.model))
    assert cfg.arch == "roma" and conf.train.freeze_encoder and conf.train.grad_clip == 0.01
    assert conf.train.encoder_weights == "dinov2l-distilled" and conf.loss.alpha == 0.5
    with pytest.raises(TrainConfigError, match="stepz"):
        load_conf(None, ["data.root=D", "train.out=O", "train.stepz=3"])
    with pytest.raises(TrainConfigError, match="data.root"):
        load_conf(None, ["train.out=O"])
    with pytest.raises(TrainConfigError, match="multiples of 16"):
        load_conf(REPO / "configs" / "train" / "stage2_tiny.yaml", ["data.root=D", "train.out=O", "model.coarse_res=100"])


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    conf = _conf(Path(root), Path(out), steps=2, batch_size=1)
    trainer = Trainer(conf)
    trainer.run()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_end_with_identical_weights(synth_root, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, free_port(), str(synth_root), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    exported = _state(tmp_path / "model.pth")
    assert all(torch.equal(exported[k], r0[k]) for k in r0)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 3  # rank 0 logs, once per step


def test_cli_trains_then_matches_with_the_exported_model(synth_root, tmp_path, capsys):
    from l2m_plugin.cli import main

    args = [
        "train", "stage2", "--conf", str(REPO / "configs" / "train" / "stage2_tiny.yaml"),
        f"data.root={synth_root}", f"train.out={tmp_path / 'run'}", "train.steps=2", "train.batch_size=2",
        f"data.size=[{SIZE[0]},{SIZE[1]}]", f"model.coarse_res=[{SIZE[0]},{SIZE[1]}]",
        "data.num_workers=0", "train.progress=false",
    ]  # fmt: skip
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path == tmp_path / "run" / "model.pth"
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "log.csv").is_file()
    model = L2M.from_pretrained(path)
    assert model.config.arch == "tiny" and model.config.coarse_res == SIZE
    pair = synth_root / "pairs" / "scene000_000"
    out = model.match(pair / "image0.png", pair / "image1.png")
    assert out["warp0"].shape == (1, *SIZE, 2)
    m = model.sample(out, 50, generator=torch.Generator().manual_seed(0))
    assert len(m["keypoints0"]) == 50 and torch.isfinite(m["keypoints1"]).all()
    # same config again: already complete; another config: refused with the differing key
    assert main(args) == 0
    assert main([*args, "train.steps=3"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert math.isfinite(float((tmp_path / "run" / "log.csv").read_text().splitlines()[-1].split(",")[1]))


def test_synth_pairs_from_several_folders(tmp_path):
    a = write_synth_fixture(tmp_path / "a", num_pairs=2, size=(48, 32), seed=0)
    b = write_synth_fixture(tmp_path / "b", num_pairs=3, size=(48, 32), seed=1)
    both = SynthPairs([a, b], (32, 48))
    assert len(both) == 5 and both.roots == [a, b]
    one_b = SynthPairs(b, (32, 48))
    for i in range(3):  # items 2..4 are b's items 0..2, unchanged
        x, y = both[2 + i], one_b[i]
        assert torch.equal(x["image1"], y["image1"]) and torch.equal(x["warp0"], y["warp0"])
    with pytest.raises(DataError, match="empty list"):
        SynthPairs([], (32, 48))


def test_synth_pairs_skip_a_crash_cut_last_line_and_refuse_a_corrupt_one(tmp_path):
    """SynthPairs reads pairs.jsonl like the generator (synthesis.list_pairs): a last line cut
    by a crash is an unfinished pair and is skipped; a corrupt line before it is an error."""
    import shutil

    root = write_synth_fixture(tmp_path / "s", num_pairs=3, size=(SIZE[1], SIZE[0]), seed=0)
    listing = root / "pairs.jsonl"
    lines = listing.read_text().splitlines()
    assert len(SynthPairs(root, SIZE)) == 3
    listing.write_text("\n".join(lines) + '\n{"id": "0000')  # a crash while appending
    assert [r["id"] for _, r in SynthPairs(root, SIZE).records] == [json.loads(x)["id"] for x in lines]
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    (bad / "pairs.jsonl").write_text(lines[0] + "\n{not json\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="line 2"):
        SynthPairs(bad, SIZE)
