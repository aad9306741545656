"""`l2m match` end to end on the real pair, through the official-layout loading path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from .conftest import shared_pair

ROOT = Path(__file__).resolve().parents[1]


def run_l2m(*args, env=None, timeout=600):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "l2m_plugin.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


def test_match_writes_h5_and_png(tmp_path, official_checkpoint):
    a, b = shared_pair()
    matcher, encoder = official_checkpoint
    out = tmp_path / "out"
    r = run_l2m("match", a, b, "--weights", matcher, "--encoder-weights", encoder, "--out", out,
                "--coarse-res", "112", "--upsample-res", "168", "--num-matches", "500", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "model: l2m++_560x560v2.pth.ckpt" in r.stderr  # says which model ran
    assert str(out / "correspondences.h5") in r.stdout and str(out / "matches.png") in r.stdout
    sizes = [Image.open(p).size for p in (a, b)]
    with h5py.File(out / "correspondences.h5") as f:
        k0, k1, c = f["keypoints0"][()], f["keypoints1"][()], f["certainty"][()]
        assert k0.shape == k1.shape == (500, 2) and c.shape == (500,)
        assert tuple(f["image_size0"][()]) == sizes[0] and tuple(f["image_size1"][()]) == sizes[1]
        assert '"coarse_res": [112, 112]' in f.attrs["config"] and f.attrs["seed"] == 1
        assert "pixel centres" in f.attrs["pixel_convention"]
    assert (k0 >= 0).all() and (k0[:, 0] <= sizes[0][0]).all() and (k0[:, 1] <= sizes[0][1]).all()
    assert (k1[:, 0] <= sizes[1][0]).all() and ((c >= 0) & (c <= 1)).all() and np.unique(k0, axis=0).shape[0] > 400
    png = Image.open(out / "matches.png")
    assert png.width > 600 and png.height > 900  # matches row + certainty row
    # same seed, same matches
    r2 = run_l2m("match", a, b, "--weights", matcher, "--encoder-weights", encoder, "--out", tmp_path / "out2",
                 "--coarse-res", "112", "--upsample-res", "168", "--num-matches", "500", "--seed", "1", "--quiet")
    assert r2.returncode == 0, r2.stderr
    with h5py.File(tmp_path / "out2" / "correspondences.h5") as f:
        assert np.array_equal(f["keypoints0"][()], k0)


def test_offline_l2mpp_gives_a_clear_error_and_the_default_runs(tmp_path):
    a, b = shared_pair()
    env = {"L2M_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "hub")}
    # no --weights: l2m-tiny from the package, nothing downloaded, and stderr says so
    r = run_l2m("match", a, b, "--out", tmp_path / "tiny", "--num-matches", "200", env=env)
    assert r.returncode == 0, r.stderr
    assert "using 'l2m-tiny'" in r.stderr and (tmp_path / "tiny" / "correspondences.h5").is_file()
    assert not (tmp_path / "hub").exists()
    r = run_l2m("match", a, b, "--weights", "l2mpp-v2", "--out", tmp_path, env=env)
    assert r.returncode == 2
    assert "huggingface.co" in r.stderr and "l2m%2B%2B_560x560v2.pth.ckpt" in r.stderr and "--weights PATH" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_image_and_truncated_checkpoint(tmp_path, official_checkpoint):
    a, _ = shared_pair()
    matcher, encoder = official_checkpoint
    r = run_l2m("match", a, tmp_path / "nope.jpg", "--weights", matcher, "--encoder-weights", encoder,
                "--out", tmp_path, "--coarse-res", "56", "--upsample-res", "0")
    assert r.returncode == 2 and "nope.jpg" in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr
    trunc = tmp_path / "trunc.ckpt"
    with open(matcher, "rb") as f:
        trunc.write_bytes(f.read(1 << 20))
    r = run_l2m("match", a, a, "--weights", trunc, "--encoder-weights", encoder, "--out", tmp_path)
    assert r.returncode == 2 and "trunc.ckpt" in r.stderr and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_config_for_another_architecture_is_a_short_error_naming_the_fix(tmp_path):
    """`--config configs/matcher/romatch.yaml` (arch roma) with the default l2m-tiny (arch tiny):
    exit 2 and three lines naming both architectures and what to pass, no key list."""
    a, b = shared_pair()
    env = {"L2M_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "hub")}
    for flag in (["--config", ROOT / "configs" / "matcher" / "romatch.yaml"], ["--preset", "l2m"]):
        r = run_l2m("match", a, b, *flag, "--out", tmp_path / "x", env=env)
        assert r.returncode == 2 and not (tmp_path / "x").exists()
        error = r.stderr[r.stderr.index("l2m match: error:"):].strip().splitlines()
        assert len(error) <= 3 and sum(map(len, error)) < 500, r.stderr
        assert f"{flag[0]} {flag[1]} is for arch roma/vitl14, but the weights 'l2m-tiny' are arch tiny" in error[0]
        assert "--preset l2m-tiny (= --config " in error[1] and "l2m_tiny.yaml" in error[1]
        assert "--weights l2mpp-v1 / l2mpp-v2 / roma-outdoor" in error[2]
        assert "missing keys" not in r.stderr and "Traceback" not in r.stderr


def test_l2m_tiny_config_and_preset_match_the_real_pair(tmp_path):
    """configs/matcher/l2m_tiny.yaml and --preset l2m-tiny run end to end with the default
    weights, and give what no config gives (the same config, so the same matches)."""
    a, b = shared_pair()
    env = {"L2M_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "hub")}
    runs = {"config": ["--config", ROOT / "configs" / "matcher" / "l2m_tiny.yaml"], "preset": ["--preset", "l2m-tiny"], "none": []}
    kpts = {}
    for name, flags in runs.items():
        r = run_l2m("match", a, b, *flags, "--out", tmp_path / name, "--num-matches", "300", env=env)
        assert r.returncode == 0, r.stderr
        assert "model: l2m-tiny (arch tiny-ds, coarse (384, 384), upsample None" in r.stderr
        with h5py.File(tmp_path / name / "correspondences.h5") as f:
            kpts[name] = f["keypoints0"][()], f["keypoints1"][()]
            assert kpts[name][0].shape == (300, 2) and '"arch": "tiny-ds"' in f.attrs["config"]
    for name in ("config", "preset"):
        assert all(np.array_equal(x, y) for x, y in zip(kpts[name], kpts["none"], strict=True)), name


def test_preset_choices_are_the_presets_table():
    from l2m_plugin.cli import build_parser
    from l2m_plugin.config import PRESETS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for cmd in ("match", "reconstruct", "match-pairs", "bench"):
        action = next(a for a in sub[cmd]._actions if a.dest == "preset")
        assert list(action.choices) == list(PRESETS) and "l2m-tiny" in action.choices
        assert "arch tiny-ds: l2m-tiny" in action.help


def test_match_says_why_a_pair_gets_fewer_matches_than_asked(tmp_path):
    """l2m-tiny's sampling cutoff on the toronto pair, which it cannot match (README, "Two
    commands"): fewer matches than asked are written, and stderr says why."""
    a, b = shared_pair("toronto")
    env = {"L2M_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "hub")}
    r = run_l2m("match", a, b, "--out", tmp_path / "out", "--num-matches", "300", env=env)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "out" / "correspondences.h5") as f:
        n = len(f["keypoints0"][()])
    assert n < 300 and f"{n} of 300: only pixels whose certainty is above sample_thresh (0.5)" in r.stderr
    r = run_l2m("match", *shared_pair(), "--out", tmp_path / "sc", "--num-matches", "300", env=env)
    assert r.returncode == 0 and "sample_cutoff" not in r.stderr
