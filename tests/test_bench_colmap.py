"""``l2m bench colmap``: pairs from a COLMAP model, LoFTR's protocol, oracle ~100, random ~0."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from l2m_plugin.eval import BenchmarkDataError, get_benchmark, make_matcher
from l2m_plugin.testing.benchmarks import write_colmap_fixture

from .conftest import REPO, SHARED_DATA

MAUPERTUIS = SHARED_DATA / "colmap_maupertuis"
SACRE_COEUR = SHARED_DATA / "sacre_coeur" / "mapping"


def _bench(root, **data):
    return get_benchmark("colmap", root / "images", conf={"data": {"model": str(root / "sparse"), **data},
                                                          "predict": {"num_matches": 300}})  # fmt: skip


def _run(bench, out, matchers=("oracle", "random")):
    res = {}
    for m in matchers:
        bench.predict(make_matcher(m, bench), out / m, progress=False)
        res[m] = bench.evaluate(out / m, progress=False)
    return res


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    """4 images, 200 points, a SIMPLE_RADIAL camera (k = 0.05), exact observations."""
    return write_colmap_fixture(tmp_path_factory.mktemp("colmap_fx"))


def test_pairs_most_shared_first_with_the_models_poses(fixture_root, tmp_path):
    import pycolmap

    bench = _bench(fixture_root)
    pairs = bench.pairs()
    assert len(pairs) == 6 and all(p.name0 < p.name1 for p in pairs)
    shared = [p.info["shared_points"] for p in pairs]
    assert shared == sorted(shared, reverse=True) and min(shared) >= 30
    rec = pycolmap.Reconstruction(str(fixture_root / "sparse"))
    # T_0to1 maps the 3D points from camera 0 to camera 1 (checked on the pinhole projections)
    p = pairs[0]
    im0 = next(i for i in rec.images.values() if i.name == p.name0)
    X = np.array([rec.points3D[pt.point3D_id].xyz for pt in im0.points2D if pt.has_point3D()])
    R0, t0 = im0.cam_from_world().rotation.matrix(), im0.cam_from_world().translation
    im1 = next(i for i in rec.images.values() if i.name == p.name1)
    R1, t1 = im1.cam_from_world().rotation.matrix(), im1.cam_from_world().translation
    c0 = X @ R0.T + t0
    assert np.allclose(c0 @ p.T_0to1[:3, :3].T + p.T_0to1[:3, 3], X @ R1.T + t1, atol=1e-9)
    with pytest.raises(BenchmarkDataError, match="min_shared_points"):
        _bench(fixture_root, min_shared_points=10_000).pairs()
    with pytest.raises(BenchmarkDataError, match="--model"):
        get_benchmark("colmap", fixture_root / "images").pairs()
    with pytest.raises(BenchmarkDataError, match="does not exist"):
        _bench(tmp_path).pairs()


def test_undistortion_gives_the_pinhole_projections(fixture_root):
    import pycolmap

    bench = _bench(fixture_root)
    rec = pycolmap.Reconstruction(str(fixture_root / "sparse"))
    im = rec.images[1]
    cam = im.camera
    assert cam.model.name == "SIMPLE_RADIAL" and cam.params[3] == 0.05
    obs = np.array([pt.xy for pt in im.points2D])
    X = np.array([rec.points3D[pt.point3D_id].xyz for pt in im.points2D])
    p = X @ im.cam_from_world().rotation.matrix().T + im.cam_from_world().translation
    pinhole = p[:, :2] / p[:, 2:] * cam.params[0] + cam.params[1:3]
    assert np.abs(obs - pinhole).max() > 5  # the distortion is not negligible ...
    und = bench.undistort(im.name, obs, (cam.width, cam.height))
    assert np.abs(und - pinhole).max() < 1e-6  # ... and undistortion removes it exactly
    half = bench.undistort(im.name, obs / 2, (cam.width // 2, cam.height // 2))  # images stored at half size
    assert np.abs(half - pinhole).max() < 1e-6


def test_oracle_scores_100_and_random_0_on_exact_observations(fixture_root, tmp_path):
    res = _run(_bench(fixture_root), tmp_path)
    o, r = res["oracle"]["metrics"], res["random"]["metrics"]
    for k in ("AUC@5", "AUC@10", "AUC@20"):
        assert o[k] >= 0.999, (k, o[k])
        assert r[k] <= 0.01, (k, r[k])
    assert o["pairs_below_10deg"] == 6 and r["pairs_below_10deg"] == 0
    assert o["mean_num_matches"] == 200  # every shared observation (fewer than num_matches)
    assert "6 of 6 pairs below 10 deg" in res["oracle"]["markdown"]


def test_maupertuis_oracle_is_as_good_as_the_model_and_random_is_0(tmp_path):
    """On a real SfM model the oracle's matches carry the model's residuals (0.34 px mean
    reprojection error): every pair stays far below 10 deg, but AUC@5 is not 100."""
    if not (MAUPERTUIS / "reconstruction" / "images.txt").is_file():
        pytest.skip(f"{MAUPERTUIS} not found (tests expect ../shared/data beside the repo; set L2M_SHARED_DATA)")
    bench = get_benchmark("colmap", MAUPERTUIS / "images", conf={"data": {"model": str(MAUPERTUIS / "reconstruction")},
                                                                 "predict": {"num_matches": 2000}})  # fmt: skip
    assert [p.info["shared_points"] for p in bench.pairs()] == [912, 741, 714, 560, 535, 497]
    res = _run(bench, tmp_path)
    o, r = res["oracle"]["metrics"], res["random"]["metrics"]
    assert o["pairs_below_10deg"] == 6 and o["median_error_deg"] < 1.5
    assert o["AUC@5"] > 0.8 and o["AUC@20"] > 0.95
    assert r["AUC@20"] == 0.0 and r["pairs_below_10deg"] == 0


def test_cli_runs_the_colmap_benchmark(fixture_root, tmp_path):
    import torch

    from l2m_plugin.cli import main

    threads = torch.get_num_threads()
    try:
        rc = main(["bench", "colmap", "--images", str(fixture_root / "images"), "--model", str(fixture_root / "sparse"),
                   "--matcher", "oracle", "--max-pairs", "2", "--out", str(tmp_path), "--quiet", "--threads", "1"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole process
    assert rc == 0
    summary = json.loads(next((tmp_path / "colmap" / "oracle" / "eval").glob("loftr-*.json")).read_text())
    assert summary["num_pairs"] == 2 and summary["headline"]["AUC@5"] >= 0.999
    # The thread count changes a dense matcher's drawn matches (README, "Phase 4 measured"): it is recorded.
    assert summary["predict"]["torch_threads"] == 1
    assert summary["eval_conf"]["focal_mode"] == "loftr" and summary["eval_conf"]["runs"] == 1
    assert main(["bench", "colmap", "--images", str(fixture_root / "images"), "--out", str(tmp_path), "--quiet"]) == 2


def test_reference_script_refuses_to_overwrite(tmp_path):
    (tmp_path / "sparse").mkdir()
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "colmap_reference.py"), str(tmp_path), str(tmp_path)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "--overwrite" in r.stderr


@pytest.mark.slow
def test_reference_script_on_sacre_coeur(tmp_path):
    """pycolmap's SIFT pipeline registers the 10 Sacre-Coeur images (about 25 s on one core)."""
    if not SACRE_COEUR.is_dir():
        pytest.skip(f"{SACRE_COEUR} not found (tests expect ../shared/data beside the repo)")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "colmap_reference.py"), str(SACRE_COEUR), str(tmp_path)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((tmp_path / "reference.json").read_text())
    assert stats["registered_images"] == 10
    bench = get_benchmark("colmap", SACRE_COEUR, conf={"data": {"model": str(tmp_path / "sparse")}})
    res = _run(bench, tmp_path / "out", ("oracle",))
    assert res["oracle"]["metrics"]["AUC@20"] > 0.9
