"""Benchmark harnesses: MegaDepth-1500, ScanNet-1500, ZEB, HPatches, synthetic homographies
of held-out photos and any COLMAP model, under stated protocols.

Usage::

    from l2m_plugin.eval import get_benchmark, make_matcher
    bench = get_benchmark("megadepth1500", "data/megadepth", protocol="roma",
                          conf={"data": {"index_dir": "../shared/data/megadepth1500/scene_info"}})
    matcher = make_matcher("sift", bench)
    bench.predict(matcher, "outputs/bench/megadepth1500/sift")       # cached, resumable
    summary = bench.evaluate("outputs/bench/megadepth1500/sift")     # reads only the cache

:func:`feature_nn_pck` (:mod:`.features`) scores an encoder's features alone: nearest-neighbour
PCK under ground-truth warps (``benchmarks/feature_pck.py``).

The command line is ``l2m bench NAME --data-root DIR --matcher ...``. Each benchmark's
README in ``benchmarks/<name>/`` gives the data layout, the protocol table and the
published numbers (``l2m_plugin/eval/published/<name>.json``).
"""

from __future__ import annotations

from l2m_plugin.eval.base import Benchmark, BenchmarkDataError, BenchmarkPair
from l2m_plugin.eval.colmap_pose import ColmapPoseBenchmark
from l2m_plugin.eval.features import feature_nn_pck
from l2m_plugin.eval.homography import HomographyBenchmark
from l2m_plugin.eval.hpatches import HPatches
from l2m_plugin.eval.megadepth import MegaDepth1500
from l2m_plugin.eval.scannet import ScanNet1500
from l2m_plugin.eval.zeb import ZEB
from l2m_plugin.matching.baselines import (
    GroundTruthPairMatcher,
    KorniaPairMatcher,
    RandomPairMatcher,
)
from l2m_plugin.matching.dense import DensePairMatcher
from l2m_plugin.matching.sift import SiftPairMatcher

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkDataError",
    "BenchmarkPair",
    "get_benchmark",
    "make_matcher",
    "MegaDepth1500",
    "ScanNet1500",
    "ZEB",
    "HPatches",
    "HomographyBenchmark",
    "ColmapPoseBenchmark",
    "feature_nn_pck",
]

BENCHMARKS: dict[str, type[Benchmark]] = {
    "megadepth1500": MegaDepth1500,
    "scannet1500": ScanNet1500,
    "zeb": ZEB,
    "hpatches": HPatches,
    "homography": HomographyBenchmark,
    "colmap": ColmapPoseBenchmark,
}


def get_benchmark(name: str, data_root, conf=None, protocol: str | None = None) -> Benchmark:
    """Construct a benchmark by name (``BENCHMARKS``); ValueError names the choices."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    return BENCHMARKS[name](data_root, conf=conf, protocol=protocol)


def make_matcher(kind: str, bench: Benchmark, *, model=None, weights: str | None = None,
                 resize: int | None = None, device: str = "cpu", memory_budget_gb: float = 4.0):  # fmt: skip
    """A pair matcher over ``bench.image_root``: ``l2m`` (needs ``model``), ``sift``, ``oracle``,
    ``random`` (uniform random keypoints: chance level), ``loftr`` or ``disk`` (kornia;
    ``weights``: local file or kornia pretrained name).

    Uses ``bench.conf["predict"]`` for the number of matches and the seed.
    """
    p = bench.conf["predict"]
    if kind == "l2m":

        if model is None:
            raise ValueError("matcher 'l2m' needs a model (L2M.from_pretrained(...))")
        return DensePairMatcher(model, bench.image_root, num_matches=p["num_matches"], seed=p["seed"],
                                exif=False, memory_budget_gb=memory_budget_gb)  # fmt: skip
    if kind == "sift":

        return SiftPairMatcher(bench.image_root)
    if kind == "oracle":

        return GroundTruthPairMatcher(bench, p["num_matches"], p["seed"])
    if kind == "random":

        return RandomPairMatcher(bench.image_root, p["num_matches"], p["seed"])
    if kind in ("loftr", "disk"):

        default_w = {"loftr": "outdoor", "disk": "depth"}[kind]
        default_r = {"loftr": 840, "disk": 1024}[kind]
        return KorniaPairMatcher(bench.image_root, kind, weights or default_w, resize=resize or default_r, device=device)
    raise ValueError(f"unknown matcher {kind!r}; choose from l2m, sift, oracle, random, loftr, disk")
