"""Bad input and faults, one test each, and what the project does about them.

Images: unusual formats, missing / corrupt / truncated / tiny / huge files, malformed tensors,
values in 0-255, NaN, float64 (the matcher). Command lines: every numeric flag out of range,
unknown devices and camera models, an existing file or unwritable folder as --out, YAML syntax
errors (refused before any work, one line naming the flag or file). Files: a photo replaced
under the same name (matched again), an incomplete shard set (refused unless --allow-partial),
a refused merge (no partial file left), two writers of one output (the second refused),
Ctrl-C (one line saying what was kept), a checkpoint that pickles code (refused unless
trusted: tests/test_weights.py). Repeatable mapping: tests/test_sfm_reconstruct.py.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.io import ImageLoadError

SMALL = MatcherConfig(encoder="vits14", coarse_res=56, upsample_res=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return L2M(SMALL)


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return (rng.random((48, 64, 3)) * 255).astype(np.uint8)


def test_unusual_formats_all_match(model, tmp_path, photo):
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(photo).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(photo).save(tmp_path / "rot.jpg", exif=exif)
    ref = model.match(photo, photo)
    for name in ("gray.png", "rgba.png", "gray16.png", "cmyk.jpg", "rot.jpg"):
        out = model.match(tmp_path / name, photo)
        assert out["warp0"].shape == (1, 64, 64, 2) and torch.isfinite(out["warp0"]).all(), name
        assert out["size0"] == ((48, 64) if name == "rot.jpg" else (64, 48)), name
    # RGBA drops alpha: same pixels, same result
    rgba = model.match(tmp_path / "rgba.png", photo)
    assert torch.allclose(rgba["warp0"], ref["warp0"], atol=1e-5)


def test_missing_corrupt_truncated_and_tiny_images(model, tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    Image.fromarray(photo[:10, :10]).save(tmp_path / "tiny.png")
    for name, pattern in (("missing.jpg", "not found"), ("trunc.jpg", "truncated"), ("corrupt.jpg", "not a readable"), ("tiny.png", "14x14")):
        with pytest.raises(ImageLoadError, match=pattern) as err:
            model.match(tmp_path / name, photo)
        assert name in str(err.value)


def test_very_large_image_is_resized_not_out_of_memory(model, tmp_path):
    Image.new("RGB", (8000, 6000), (120, 60, 30)).save(tmp_path / "big.jpg", quality=50)
    out = model.match(tmp_path / "big.jpg", tmp_path / "big.jpg")
    assert out["size0"] == (8000, 6000) and out["warp0"].shape == (1, 64, 64, 2)
    s = model.sample(out, 100, generator=torch.Generator().manual_seed(0))
    assert (s["keypoints0"][:, 0] <= 8000).all() and (s["keypoints0"][:, 1] <= 6000).all()


def test_forward_rejects_malformed_tensors(model):
    x = torch.rand(1, 3, 56, 56)
    with pytest.raises(KeyError, match="image1"):
        model({"image0": x})
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model({"image0": x, "image1": torch.rand(3, 56, 56)})
    with pytest.raises(ValueError, match="batch size"):
        model({"image0": x, "image1": torch.rand(2, 3, 56, 56)})
    with pytest.raises(ValueError, match=r"image1 has values in \[0\.\d+, 25\d\]; images must be in \[0, 1\] \(it looks like 0-255"):
        model({"image0": x, "image1": x * 255})
    bad = x.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="image0 holds NaN or Inf"):
        model({"image0": bad, "image1": x})
    with pytest.raises(ValueError, match=r"float64: .*image0\.float\(\)"):
        model({"image0": x.double(), "image1": x})


# ---------------------------------------------------------------------- command lines
BAD_FLAGS = [
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--num-matches", "0"], "argument --num-matches: must be >= 1"),
    (["--num-matches", "10000000"], "is above 100000: balanced sampling draws 4x"),
    (["--coarse-res", "abc"], "argument --coarse-res: expected N or HxW"),
    (["--coarse-res", "0"], "argument --coarse-res: must be a positive size"),
    (["--upsample-res", "-8"], "argument --upsample-res: must be positive"),
    (["--threads", "-1"], "argument --threads: must be >= 0"),
    (["--device", "tpu"], "argument --device: unknown device 'tpu'"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    from l2m_plugin.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["match", "a.jpg", "b.jpg", "--out", str(out), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_cuda_without_a_gpu_and_unknown_camera_models_are_refused(tmp_path, capsys):
    from l2m_plugin.cli import main

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["match", "a.jpg", "b.jpg", "--out", str(tmp_path / "o"), "--device", "cuda"])
        assert "torch sees no CUDA GPU here: use --device cpu" in capsys.readouterr().err
    for argv in (["reconstruct", str(tmp_path), str(tmp_path / "o"), "--camera-model", "FOO"],
                 ["bench", "hpatches", "--data-root", str(tmp_path), "--memory-budget-gb", "-1"]):  # fmt: skip
        with pytest.raises(SystemExit):
            main(argv)
    err = capsys.readouterr().err
    assert "unknown COLMAP camera model 'FOO'; choose from" in err and "must be a positive number" in err


def test_outputs_that_cannot_be_written_and_bad_yaml_are_named(tmp_path, capsys, photo):
    from l2m_plugin.cli import main

    Image.fromarray(photo).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    assert main(["match", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--out", str(tmp_path / "file")]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("coarse_res: [1, 2\n")
    rc = main(["match", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
               "--config", str(bad), "--quiet"])  # fmt: skip
    assert rc == 2 and f"{bad} is not valid YAML" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "file"), str(tmp_path / "r"), "--quiet"]) == 2
    assert "is a file, not a folder of images" in capsys.readouterr().err


def test_ctrl_c_ends_with_one_line_saying_what_was_kept(monkeypatch, capsys, tmp_path):
    from l2m_plugin import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_reconstruct", interrupted)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "reconstruct", interrupted))
    assert cli.main(["reconstruct", str(tmp_path), str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "l2m reconstruct: interrupted; every finished pair is in OUT_DIR/pair_matches.h5; rerun the same command to resume"


def _with_func(parser, command, func):
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


# ---------------------------------------------------------------------- files
def _images(folder, seed):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(folder / name)


def test_a_photo_replaced_under_its_name_is_matched_again(tmp_path):
    from l2m_plugin.formats.pair_store import PairMatchStore
    from l2m_plugin.io import file_fingerprint
    from l2m_plugin.matching.baselines import RandomPairMatcher
    from l2m_plugin.sfm.pipeline import match_pairs

    _images(tmp_path / "img", 0)
    pairs = [("a.png", "b.png"), ("a.png", "c.png"), ("b.png", "c.png")]

    def run():
        fp = {n: file_fingerprint(tmp_path / "img" / n) for n in ("a.png", "b.png", "c.png")}
        store = PairMatchStore(tmp_path / "pair_matches.h5", {"m": "random"})
        return match_pairs(RandomPairMatcher(tmp_path / "img", 20, 0), pairs, store, progress=False, fingerprints=fp)

    assert run()["matched"] == 3
    assert run()["matched"] == 0  # resume: nothing changed
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "c.png")  # same name, new photo
    r = run()
    assert r["matched"] == 2 and r["skipped"] == 1  # the two pairs with c.png, and only those
    k0, k1, _ = PairMatchStore(tmp_path / "pair_matches.h5").read("a.png", "c.png")
    assert k1[:, 0].max() > 32  # keypoints of the new 50-px-wide photo, not clipped to the old 32 px


def test_merge_refuses_an_incomplete_shard_set_and_leaves_no_partial_file(tmp_path, capsys):
    from l2m_plugin.cli import main
    from l2m_plugin.formats.pair_store import PairMatchStore

    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    for i in range(3):
        s = PairMatchStore(tmp_path / f"s{i}.h5", {"m": 1})
        s.set_shard(i, 3, pairs)
        a, b = pairs[i]
        s.write(a, b, np.ones((2, 2)), np.ones((2, 2)), np.ones(2), (4, 4), (4, 4))
    out = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "s0.h5"), str(tmp_path / "s2.h5"), "--out", str(out), "--quiet"]) == 2
    assert "shards 1/3 of 3 are missing" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["merge", str(tmp_path / "s0.h5"), str(tmp_path / "s2.h5"), "--out", str(out), "--quiet", "--allow-partial"]) == 0
    other = PairMatchStore(tmp_path / "other.h5", {"m": 2})
    other.set_shard(1, 3, pairs)
    out2 = tmp_path / "merged2"
    assert main(["merge", str(tmp_path / "s0.h5"), str(tmp_path / "other.h5"), str(tmp_path / "s2.h5"),
                 "--out", str(out2), "--quiet"]) == 2  # fmt: skip
    assert "other settings" in capsys.readouterr().err
    assert sorted(p.name for p in out2.iterdir()) == []  # no pair_matches.partial.h5 left
    assert main(["merge", *(str(tmp_path / f"s{i}.h5") for i in range(3)), "--out", str(out), "--quiet"]) == 0
    assert len(PairMatchStore(out / "pair_matches.h5")) == 3


def test_a_second_writer_of_one_output_is_refused(tmp_path):
    import subprocess
    import sys

    from l2m_plugin.files import LockedError, exclusive_lock

    lock = tmp_path / "shard.h5.lock"
    with exclusive_lock(lock, "shard.h5"):
        assert lock.read_text() == str(__import__("os").getpid())
        child = subprocess.run(
            [sys.executable, "-c", "from l2m_plugin.files import exclusive_lock\n"
             f"with exclusive_lock({str(lock)!r}, 'shard.h5'): pass"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert child.returncode != 0 and "shard.h5 is being written by process" in child.stderr
    assert not lock.exists()
    lock.write_text("999999999")  # a writer that was killed: its lock is taken over
    with exclusive_lock(lock):
        pass
    assert LockedError.__mro__[1] is RuntimeError


def test_file_names_that_are_not_utf8(tmp_path, capsys, photo):
    import os

    from l2m_plugin.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    raw = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    try:
        Image.fromarray(photo).save(folder / raw)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses non-UTF-8 names")
    Image.fromarray(photo).save(folder / "b.png")
    assert main(["reconstruct", str(folder), str(tmp_path / "rec"), "--quiet", "--matcher", "sift"]) == 2
    err = capsys.readouterr().err
    assert "caf\\\\xe9.png" in err and "is not valid UTF-8" in err and "rename the file" in err
    rc = main(["match", str(folder / raw), str(folder / "b.png"), "--out", str(tmp_path / "m"), "--quiet",
               "--num-matches", "50"])  # fmt: skip
    assert rc == 0
    import h5py

    with h5py.File(tmp_path / "m" / "correspondences.h5") as f:
        assert f.attrs["image0"].endswith("caf\\xe9.png")
    assert not [p.name for p in (tmp_path / "m").iterdir() if ".partial" in p.name]


def test_a_full_disk_stops_matching_with_a_message_and_keeps_the_finished_pairs(tmp_path, monkeypatch):
    import errno

    from l2m_plugin.formats.pair_store import PairMatchStore
    from l2m_plugin.matching.baselines import RandomPairMatcher
    from l2m_plugin.sfm.pipeline import OutputWriteError, match_pairs

    _images(tmp_path / "img", 1)
    pairs = [("a.png", "b.png"), ("a.png", "c.png"), ("b.png", "c.png")]
    store = PairMatchStore(tmp_path / "pair_matches.h5", {"m": "random"})
    write = PairMatchStore.write
    calls = []

    def disk_fills_up(self, *a, **k):  # the second write hits ENOSPC, as h5py reports it
        calls.append(a[:2])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, *a, **k)

    monkeypatch.setattr(PairMatchStore, "write", disk_fills_up)
    with pytest.raises(OutputWriteError, match=r"No space left on device.*the 1 pairs finished before are kept.*rerun"):
        match_pairs(RandomPairMatcher(tmp_path / "img", 20, 0), pairs, store, progress=False)
    assert len(calls) == 2  # stopped at once, the third pair was not tried
    monkeypatch.setattr(PairMatchStore, "write", write)
    again = PairMatchStore(tmp_path / "pair_matches.h5", {"m": "random"})
    assert len(again) == 1
    r = match_pairs(RandomPairMatcher(tmp_path / "img", 20, 0), pairs, again, progress=False)
    assert r["skipped"] == 1 and r["matched"] == 2


def test_training_and_generator_arguments_are_checked_first(tmp_path, capsys):
    from l2m_plugin.cli import main

    conf = ["train", "stage2", "--conf", "configs/train/stage2_tiny.yaml", f"data.root={tmp_path}",
            f"train.out={tmp_path / 'run'}"]  # fmt: skip
    assert main([*conf, "train.steps=abc"]) == 2
    assert "train.steps must be an integer, got 'abc'" in capsys.readouterr().err
    assert main([*conf, "train.warmup_steps=-1"]) == 2
    assert "train.warmup_steps must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*conf, "--stop-at", "-3"])
    assert "argument --stop-at: must be >= 1, got -3" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["synth", "--images", str(tmp_path), "--depth", "synthetic", "--out", str(tmp_path / "file")]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "is an existing file, not a folder" in err
    assert main(["make-checkpoint", "--out", str(tmp_path / "file"), "--quiet"]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_two_track_rules_at_once_are_refused_before_matching(tmp_path, capsys, photo):
    from l2m_plugin.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(photo).save(folder / n)
    rc = main(["reconstruct", str(folder), str(tmp_path / "rec"), "--quiet", "--matcher", "sift",
               "--cell-size", "2", "--merge-radius", "1"])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "cell_size=2.0 and merge_radius=1.0" in err and "give one of them" in err
    assert not (tmp_path / "rec" / "pair_matches.h5").exists()  # refused before any matching
    rc = main(["merge", str(tmp_path / "none.h5"), "--out", str(tmp_path / "m"), "--merge-radius", "0"])
    assert rc == 2 and "merge_radius must be > 0, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["reconstruct", str(folder), str(tmp_path / "rec"), "--quiet", "--matcher", "sift", "--mapper-tries", "0"])
    assert e.value.code == 2 and "argument --mapper-tries: must be >= 1, got 0" in capsys.readouterr().err
