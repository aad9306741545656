"""``benchmarks/match_epipolar_error.py`` (epipolar error of a colmap benchmark run's cached matches), and
the bad input of it and of ``benchmarks/inference_cost.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2m_plugin.eval import get_benchmark
from l2m_plugin.formats.pair_store import STORE_NAME, PairMatchStore
from l2m_plugin.geometry import epipolar_distance, fundamental_from_pose
from l2m_plugin.testing.benchmarks import write_colmap_fixture

from .conftest import benchmark_script


def _write_run(run, bench, shift=0.0):
    """The model's own observations of every benchmark pair, stored as ``l2m bench colmap`` stores matches."""
    run.mkdir(parents=True)
    store = PairMatchStore(run / STORE_NAME)
    for p in bench.load_pairs():
        k0, k1 = bench.ground_truth_matches(p)
        size0, size1 = (tuple(p.info[f"camera_size{i}"]) for i in (0, 1))
        store.write(p.name0, p.name1, k0, k1 + [shift, 0.0], np.linspace(0.0, 1.0, len(k0)), size0, size1)


def test_exact_matches_have_no_epipolar_error_and_shifted_ones_do(tmp_path):
    # exact observations through a SIMPLE_RADIAL camera (k = 0.05): near 0 only after the
    # benchmark's undistortion; 20 px along x moves most points far off their epipolar line
    root = write_colmap_fixture(tmp_path / "fx")
    bench = get_benchmark("colmap", root / "images", conf={"data": {"model": str(root / "sparse")}})
    _write_run(tmp_path / "exact", bench)
    _write_run(tmp_path / "shifted", bench, shift=20.0)
    mod = benchmark_script("match_epipolar_error")
    res = mod.main([str(tmp_path / "exact"), str(tmp_path / "shifted"), "--images", str(root / "images"),
                    "--model", str(root / "sparse")])  # fmt: skip
    exact, shifted = res[str(tmp_path / "exact")], res[str(tmp_path / "shifted")]
    assert exact["matches"] > 500 and exact["within_0.5px"] == 1.0 and exact["median_px_within_5px"] < 1e-3
    assert shifted["within_5px"] < 0.5
    bins = exact["by_certainty"]
    assert sum(b["matches"] for b in bins.values()) == exact["matches"]
    # without the undistortion the same exact matches are off by up to several pixels
    p = bench.load_pairs()[0]
    k0, k1 = bench.ground_truth_matches(p)
    Fm = fundamental_from_pose(torch.from_numpy(p.K0), torch.from_numpy(p.K1), torch.from_numpy(p.T_0to1))
    assert epipolar_distance(torch.from_numpy(k0), torch.from_numpy(k1), Fm).max() > 0.5


def test_bad_input_is_refused_with_the_argument_named(tmp_path):
    root = write_colmap_fixture(tmp_path / "fx")
    mod = benchmark_script("match_epipolar_error")
    with pytest.raises(FileNotFoundError, match="pair_matches.h5: not found"):
        mod.main([str(tmp_path / "empty"), "--images", str(root / "images"), "--model", str(root / "sparse")])
    cost = benchmark_script("inference_cost")
    with pytest.raises(SystemExit, match="--b 'upsample_res': expected FIELD=VALUE"):
        cost.main(["--images", str(root / "images"), "--b", "upsample_res"])
    assert cost._overrides(["upsample_res=null", "covisible_scales=[2, 3]"], "--a") == {
        "upsample_res": None, "covisible_scales": [2, 3]}
