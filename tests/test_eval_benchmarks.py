"""The benchmark harnesses: loaders on the official lists, fixtures, oracle end to end, cache, CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from l2m_plugin.eval import BenchmarkDataError, get_benchmark, make_matcher
from l2m_plugin.eval.megadepth import SCENES, read_scene_info
from l2m_plugin.eval.zeb import parse_zeb_line
from l2m_plugin.testing import benchmarks as fx

from .conftest import REPO, SHARED_DATA

MEGA_INDEX = SHARED_DATA / "megadepth1500" / "scene_info"
SCANNET_INDEX = SHARED_DATA / "scannet1500"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found (tests expect ../shared/data beside the repo; set L2M_SHARED_DATA)")
    return path


# ---------------------------------------------------------------- fixtures (written once per module)
@pytest.fixture(scope="module")
def mega_root(tmp_path_factory) -> Path:
    return fx.write_megadepth_fixture(tmp_path_factory.mktemp("mega"), _need(MEGA_INDEX), pairs_per_scene=1)


@pytest.fixture(scope="module")
def scannet_root(tmp_path_factory) -> Path:
    return fx.write_scannet_fixture(tmp_path_factory.mktemp("scannet"), _need(SCANNET_INDEX), num_pairs=4)


@pytest.fixture(scope="module")
def zeb_root(tmp_path_factory) -> Path:
    return fx.write_zeb_fixture(tmp_path_factory.mktemp("zeb"), _need(SCANNET_INDEX))


@pytest.fixture(scope="module")
def hp_root(tmp_path_factory) -> Path:
    return fx.write_hpatches_fixture(tmp_path_factory.mktemp("hpatches"))


@pytest.fixture(scope="module")
def mega_runs(mega_root, tmp_path_factory):
    """Oracle and SIFT matches of the MegaDepth fixture (matched once, evaluated by several tests)."""
    bench = get_benchmark("megadepth1500", mega_root)
    out = tmp_path_factory.mktemp("mega_out")
    for m in ("oracle", "sift"):
        bench.predict(make_matcher(m, bench), out / m, progress=False)
    return bench, out


# ---------------------------------------------------------------- loaders on the official lists
def test_megadepth_loader_reads_the_official_scene_info(tmp_path):
    bench = get_benchmark("megadepth1500", tmp_path, conf={"data": {"index_dir": str(_need(MEGA_INDEX))}})
    pairs = bench.pairs()
    assert len(pairs) == 1500
    assert {s: sum(p.subset == s for p in pairs) for s in SCENES} == dict.fromkeys(SCENES, 300)
    info = read_scene_info(MEGA_INDEX / "0022_0.5_0.7.npz")
    (i, j), overlap, _ = info["pair_infos"][7]
    p = [q for q in pairs if q.subset == "0022_0.5_0.7"][7]
    assert (p.name0, p.name1) == (info["image_paths"][i], info["image_paths"][j])
    assert p.name0.startswith("Undistorted_SfM/0022/images/")
    assert np.allclose(p.T_0to1, info["poses"][j] @ np.linalg.inv(info["poses"][i]), atol=1e-12)
    assert np.array_equal(p.K1, info["intrinsics"][j]) and p.info["overlap"] == pytest.approx(overlap)
    # images missing under the data root: the error names one and the README
    with pytest.raises(BenchmarkDataError, match=r"1500|missing.*README"):
        bench.check_images(pairs)
    with pytest.raises(BenchmarkDataError, match="--index-dir"):
        get_benchmark("megadepth1500", tmp_path).pairs()


def test_scannet_loader_reads_the_official_lists(tmp_path):
    bench = get_benchmark("scannet1500", tmp_path, conf={"data": {"index_dir": str(_need(SCANNET_INDEX))}})
    pairs = bench.pairs()
    assert len(pairs) == 1500 and len({p.subset for p in pairs}) == 100
    with np.load(SCANNET_INDEX / "test.npz") as t:
        name, rel = t["name"][20], t["rel_pose"][20]
    with np.load(SCANNET_INDEX / "intrinsics.npz") as k:
        K = k[f"scene{name[0]:04d}_{name[1]:02d}"]
    p = pairs[20]
    assert p.name0 == f"scene{name[0]:04d}_{name[1]:02d}/color/{name[2]}.jpg"  # LoFTR's layout (no scans_test/)
    assert np.allclose(p.T_0to1[:3], rel.reshape(3, 4)) and np.array_equal(p.T_0to1[3], [0, 0, 0, 1])
    assert np.array_equal(p.K0, K) and p.depth1.endswith(f"depth/{name[3]}.png")
    (tmp_path / "scans_test").mkdir()
    roma = get_benchmark("scannet1500", tmp_path, conf={"data": {"index_dir": str(SCANNET_INDEX)}})
    assert roma.pairs()[20].name0 == "scans_test/" + p.name0


def test_zeb_pair_files_follow_gim_naming(tmp_path):
    K = "500 0 320 0 500 240 0 0 1"
    T = "1 0 0 0.5 0 1 0 0 0 0 1 0 0 0 0 1"
    (tmp_path / "gl3d").mkdir()
    (tmp_path / "kitti").mkdir()
    (tmp_path / "gl3d" / "abc_0001.txt").write_text(f"00000006.png 00000008.png 0.3 0.3 {K} {K} {T}\n")
    (tmp_path / "gl3d" / "abc_0002.txt").write_text(f"00000006.png 00000008.png 0.3 0.3 {K} {K} {T}\n")  # duplicate
    (tmp_path / "kitti" / "drive_9-0001.txt").write_text(f"000005.png 000006.png 0.4 0.4 {K} {K} {T}\n")
    pairs = get_benchmark("zeb", tmp_path).pairs()
    assert [(p.name0, p.name1) for p in pairs] == [
        ("gl3d/abc_00000006.png", "gl3d/abc_00000008.png"),
        ("kitti/drive_9-000005.png", "kitti/drive_9-000006.png"),
    ]
    assert pairs[0].T_0to1[0, 3] == 0.5 and pairs[0].K1[1, 2] == 240 and pairs[1].info["covisible0"] == 0.4
    with pytest.raises(BenchmarkDataError, match="38 tokens, this one has 37"):
        parse_zeb_line("a b " + " ".join(["1"] * 35), "x.txt")
    with pytest.raises(BenchmarkDataError, match="no ZEB sub-set"):
        get_benchmark("zeb", tmp_path / "gl3d").pairs()


def test_hpatches_loader_skips_the_listed_sequences(hp_root):
    bench = get_benchmark("hpatches", hp_root)
    pairs = bench.pairs()
    assert len(pairs) == 10 and not any("v_talent" in p.name0 for p in pairs)
    assert {p.subset for p in pairs} == {"illumination", "viewpoint"}
    H = np.loadtxt(hp_root / "hpatches-sequences-release" / "v_fixture" / "H_1_4")
    assert np.array_equal([p for p in pairs if p.name1.endswith("v_fixture/4.ppm")][0].H_0to1, H)
    # RoMa's script defines the skip list but never applies it: data.skip=[] reproduces that
    assert len(get_benchmark("hpatches", hp_root, conf={"data": {"skip": []}}).pairs()) == 15


def test_megadepth_fixture_is_the_official_list_at_the_listed_paths(mega_root):
    bench = get_benchmark("megadepth1500", mega_root)
    official = get_benchmark("megadepth1500", mega_root, conf={"data": {"index_dir": str(MEGA_INDEX)}})
    by_names = {(p.name0, p.name1): p for p in official.pairs()}
    pairs = bench.pairs()
    assert len(pairs) == 5 and {p.subset for p in pairs} == set(SCENES)
    from PIL import Image

    for p in pairs:
        ref = by_names[(p.name0, p.name1)]
        assert np.array_equal(p.T_0to1, ref.T_0to1) and np.array_equal(p.K0, ref.K0)
        w, h = Image.open(mega_root / p.name0).size
        assert (w, h) == (round(2 * p.K0[0, 2]), round(2 * p.K0[1, 2]))
    bench.check_images(pairs)  # all there
    with open(mega_root / "scene_info" / f"{SCENES[0]}.npz", "rb") as f:
        assert set(pickle.load(f)) == {"image_paths", "depth_paths", "intrinsics", "poses", "pair_infos"}


# ---------------------------------------------------------------- end to end
def test_oracle_scores_perfectly_and_sift_lower_on_megadepth(mega_runs):
    bench, out = mega_runs
    oracle = bench.evaluate(out / "oracle", progress=False)
    sift = bench.evaluate(out / "sift", progress=False)
    assert oracle["headline"]["AUC@5"] >= 0.95 and oracle["num_missing"] == 0
    assert oracle["metrics"]["num_samples"] == 5 * 5  # 5 pairs x 5 RANSAC runs (RoMa protocol)
    assert 0 < sift["headline"]["AUC@5"] < oracle["headline"]["AUC@5"]
    assert sift["headline"]["AUC@20"] > 0.3
    loftr = get_benchmark("megadepth1500", bench.data_root, protocol="loftr").evaluate(out / "oracle", progress=False)
    assert loftr["headline"]["AUC@5"] >= 0.95 and loftr["metrics"]["num_samples"] == 5
    assert Path(oracle["paths"]["json"]) != Path(loftr["paths"]["json"])  # one summary per eval conf


def test_scannet_oracle_needs_romas_half_pixel_offset(scannet_root, tmp_path):
    bench = get_benchmark("scannet1500", scannet_root)
    bench.predict(make_matcher("oracle", bench), tmp_path / "oracle", progress=False)
    bench.predict(make_matcher("sift", bench), tmp_path / "sift", progress=False)
    res = bench.evaluate(tmp_path / "oracle", progress=False)
    assert res["headline"]["AUC@5"] >= 0.95
    assert 0 < bench.evaluate(tmp_path / "sift", progress=False)["headline"]["AUC@5"] < res["headline"]["AUC@5"]

    def mean_err(offset):
        b = get_benchmark("scannet1500", scannet_root, conf={"eval": {"pixel_offset": offset}})
        return np.mean([r["err"] for p in b.evaluate(tmp_path / "oracle", progress=False)["pairs"] for r in p["runs"]])

    # the intrinsics put pixel centres on integers: the wrong offset doubles, then quadruples the error
    assert mean_err(-0.5) < 0.6 * mean_err(0.0) and mean_err(0.0) < 0.8 * mean_err(0.5)
    # RoMa's duplicated last run, only on request
    compat = get_benchmark("scannet1500", scannet_root, conf={"eval": {"compat_duplicate_last_run": True}})
    assert compat.evaluate(tmp_path / "oracle", progress=False)["metrics"]["num_samples"] == 4 * 6
    assert res["metrics"]["num_samples"] == 4 * 5


def test_hpatches_oracle_and_sift(hp_root, tmp_path):
    bench = get_benchmark("hpatches", hp_root)
    for m in ("oracle", "sift"):
        bench.predict(make_matcher(m, bench), tmp_path / m, progress=False)
    oracle = bench.evaluate(tmp_path / "oracle", progress=False)
    sift = bench.evaluate(tmp_path / "sift", progress=False)
    assert oracle["headline"]["AUC@3px"] >= 0.95 and oracle["metrics"]["mean_corner_error_px"] < 0.2
    assert 0 < sift["headline"]["AUC@3px"] < oracle["headline"]["AUC@3px"]


def test_zeb_has_no_oracle_and_scores_sift_per_subset(zeb_root, tmp_path):
    bench = get_benchmark("zeb", zeb_root)
    with pytest.raises(ValueError, match="oracle matcher is not available"):
        make_matcher("oracle", bench)
    bench.predict(make_matcher("sift", bench), tmp_path / "sift", progress=False)
    s = bench.evaluate(tmp_path / "sift", progress=False)
    assert s["metrics"]["num_subsets"] == 2 and s["metrics"]["num_samples"] == 4  # one run per pair
    h = s["headline"]
    assert h["mean"] == pytest.approx((h["GL3"] + h["KIT"]) / 2) and h["BLE"] is None
    assert 0 < h["mean"] <= 1


# ---------------------------------------------------------------- cache, resume, failures
class _Counting:
    """Wraps a pair matcher: counts calls, optionally fails on one pair."""

    def __init__(self, inner, fail_on: str | None = None):
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, n0, n1):
        self.calls += 1
        if self.fail_on and self.fail_on in n0:
            raise RuntimeError("simulated failure")
        return self.inner(n0, n1)


def test_predict_resumes_refuses_changed_settings_and_isolates_failures(hp_root, tmp_path):
    bench = get_benchmark("hpatches", hp_root)
    m = _Counting(make_matcher("oracle", bench), fail_on="i_fixture")
    bench.predict(m, tmp_path / "run", progress=False)
    assert m.calls == 10
    failures = json.loads((tmp_path / "run" / "failures.json").read_text())
    assert len(failures) == 5 and all("simulated failure" in v for v in failures.values())
    s = bench.evaluate(tmp_path / "run", progress=False)
    assert s["num_missing"] == 5 and sum(r.get("missing", False) for r in s["pairs"]) == 5
    assert s["headline"]["AUC@10px"] == pytest.approx(0.5, abs=0.01)  # half the pairs failed
    m.fail_on = None
    bench.predict(m, tmp_path / "run", progress=False)  # only the 5 failed pairs are matched again
    assert m.calls == 15
    assert bench.evaluate(tmp_path / "run", progress=False)["num_missing"] == 0
    other = get_benchmark("hpatches", hp_root, conf={"predict": {"num_matches": 100}})
    with pytest.raises(ValueError, match="--overwrite"):
        other.predict(make_matcher("oracle", other), tmp_path / "run", progress=False)
    other.predict(make_matcher("oracle", other), tmp_path / "run", overwrite=True, progress=False)
    with pytest.raises(FileNotFoundError, match="run the prediction first"):
        bench.evaluate(tmp_path / "nothing")


# ---------------------------------------------------------------- the command line
def _bench_cli(*args) -> int:
    from l2m_plugin.cli import main

    return main(["bench", *map(str, args), "--quiet"])


def test_cli_runs_every_benchmark_on_its_fixture(mega_root, scannet_root, zeb_root, hp_root, tmp_path, capsys):
    for name, root, matcher in (
        ("megadepth1500", mega_root, "oracle"),
        ("scannet1500", scannet_root, "sift"),
        ("zeb", zeb_root, "sift"),
        ("hpatches", hp_root, "sift"),
    ):
        assert _bench_cli(name, "--data-root", root, "--matcher", matcher, "--out", tmp_path) == 0
        paths = capsys.readouterr().out.split()
        summary = json.loads(Path(paths[0]).read_text())
        assert summary["benchmark"] == name and summary["num_missing"] == 0
        assert all(v is None or 0 <= v <= 1 for v in summary["headline"].values())
        md = Path(paths[1]).read_text()
        assert f"**{matcher}** (this run)" in md
        published = REPO / "l2m_plugin" / "eval" / "published" / f"{name}.json"
        if published.is_file():  # the published rows sit under ours
            first = json.loads(published.read_text())["entries"][0]["method"]
            assert first in md
    mega = json.loads(next((tmp_path / "megadepth1500" / "oracle" / "eval").glob("roma-*.json")).read_text())
    assert mega["headline"]["AUC@5"] >= 0.95


def test_cli_eval_only_changes_the_protocol_without_matching(hp_root, tmp_path, capsys):
    assert _bench_cli("hpatches", "--data-root", hp_root, "--matcher", "sift", "--out", tmp_path) == 0
    first = capsys.readouterr().out.split()[0]
    cache = tmp_path / "hpatches" / "sift" / "pair_matches.h5"
    stamp = cache.stat().st_mtime_ns
    rc = _bench_cli("hpatches", "--data-root", hp_root, "--matcher", "sift", "--out", tmp_path,
                    "--eval-only", "--set", "eval.ransac_threshold_px=1.0")  # fmt: skip
    second = capsys.readouterr().out.split()[0]
    assert rc == 0 and second != first and cache.stat().st_mtime_ns == stamp
    assert json.loads(Path(second).read_text())["eval_conf"]["ransac_threshold_px"] == 1.0
    # another predict setting is refused, and says how to proceed
    rc = _bench_cli("hpatches", "--data-root", hp_root, "--matcher", "sift", "--out", tmp_path, "--num-matches", "10")
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert _bench_cli("hpatches", "--data-root", tmp_path / "none", "--matcher", "sift", "--out", tmp_path) == 2
    assert "no HPatches sequences" in capsys.readouterr().err
    assert _bench_cli("hpatches", "--data-root", hp_root, "--set", "eval.no_such_key=1", "--out", tmp_path) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_cli_l2m_weights_on_a_benchmark(official_checkpoint, hp_root, tmp_path, capsys):
    """`--matcher l2m` with checkpoint files (random weights in the official layout, tiny resolution)."""
    ckpt, enc = official_checkpoint
    rc = _bench_cli("hpatches", "--data-root", hp_root, "--matcher", "l2m", "--weights", ckpt, "--encoder-weights", enc,
                    "--coarse-res", "140", "--upsample-res", "0", "--num-matches", "300", "--max-pairs", "2",
                    "--out", tmp_path)  # fmt: skip
    assert rc == 0
    s = json.loads(Path(capsys.readouterr().out.split()[0]).read_text())
    assert s["num_pairs"] == 2 and s["num_missing"] == 0 and s["num_pairs_official"] == 10
    settings = s["predict"]["matcher"]
    assert settings["matcher"] == "dense" and Path(ckpt).name in settings["weights"]
    assert settings["config"]["coarse_res"] in (140, [140, 140]) and settings["num_matches"] == 300
    assert all(0 < r["num_matches"] <= 300 for r in s["pairs"])


def test_kornia_matchers_load_local_weights_and_fail_clearly(hp_root, tmp_path):
    import kornia.feature as KF
    import torch

    bench = get_benchmark("hpatches", hp_root)
    torch.save(KF.DISK().state_dict(), tmp_path / "disk.pt")
    m = make_matcher("disk", bench, weights=str(tmp_path / "disk.pt"), resize=320)
    p = bench.pairs()[0]
    k0, k1, s = m(p.name0, p.name1)
    w, h = m.image(p.name0).size
    assert len(k0) == len(k1) == len(s) > 10
    assert (k0 >= 0).all() and (k0[:, 0] <= w).all() and (k0[:, 1] <= h).all()
    with pytest.raises(RuntimeError, match="offline, pass a local checkpoint"):
        make_matcher("loftr", bench, weights=str(tmp_path / "missing.pt"))


def test_roma_resampling_stores_independent_draws(mega_root, mega_runs, tmp_path):
    """predict.samples_per_pair=5 keeps five draws; the RoMa protocol gives run r the r-th draw."""
    from l2m_plugin.formats.pair_store import PairMatchStore

    bench = get_benchmark("megadepth1500", mega_root, conf={"predict": {"samples_per_pair": 5}})
    bench.predict(make_matcher("oracle", bench), tmp_path / "oracle5", max_pairs=1, progress=False)
    p = bench.pairs()[0]
    store = PairMatchStore(tmp_path / "oracle5" / "pair_matches.h5", read_only=True)
    stored = store.read_all(p.name0, p.name1)
    k0, idx = stored["keypoints0"], stored["sample_index"]
    assert len(k0) == 25000 and np.array_equal(np.bincount(idx), [5000] * 5)
    # the first draw is the single draw of a samples_per_pair=1 cache
    single, _, _ = PairMatchStore(mega_runs[1] / "oracle" / "pair_matches.h5", read_only=True).read(p.name0, p.name1)
    assert np.array_equal(k0[idx == 0], single)
    assert not np.array_equal(k0[idx == 1], single)
    rec = bench.evaluate(tmp_path / "oracle5", max_pairs=1, progress=False)["pairs"][0]
    assert rec["num_draws"] == 5 and rec["num_matches"] == 5000
    assert len({r["err"] for r in rec["runs"]}) == 5  # five different match sets, five estimates
    # SIFT is deterministic: one set is stored and serves every run
    bench.predict(make_matcher("sift", bench), tmp_path / "sift5", max_pairs=1, progress=False)
    store = PairMatchStore(tmp_path / "sift5" / "pair_matches.h5", read_only=True)
    assert "sample_index" not in store.read_all(p.name0, p.name1)


def test_scannet_intrinsics_follow_the_image_size(tmp_path):
    bench = get_benchmark("scannet1500", tmp_path, conf={"data": {"index_dir": str(_need(SCANNET_INDEX))}})
    K = bench.pairs()[0].K0
    assert bench.image_K(K, (640, 480)) is K
    K2 = bench.image_K(K, (1280, 960))  # the same camera, twice the pixels (centres on integers)
    assert K2[0, 0] == pytest.approx(2 * K[0, 0]) and K2[1, 1] == pytest.approx(2 * K[1, 1])
    assert K2[0, 2] == pytest.approx(2 * (K[0, 2] + 0.5) - 0.5) and K2[1, 2] == pytest.approx(2 * (K[1, 2] + 0.5) - 0.5)


def test_summaries_of_different_settings_never_overwrite_each_other(hp_root, tmp_path):
    bench = get_benchmark("hpatches", hp_root)
    bench.predict(make_matcher("oracle", bench), tmp_path, progress=False)
    paths = {
        bench.evaluate(tmp_path, progress=False)["paths"]["json"],
        bench.evaluate(tmp_path, max_pairs=5, progress=False)["paths"]["json"],
        get_benchmark("hpatches", hp_root, conf={"data": {"skip": []}}).evaluate(tmp_path, progress=False)["paths"]["json"],
    }
    assert len(paths) == 3 and all(Path(p).is_file() for p in paths)
