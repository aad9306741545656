"""MegaDepth-1500 (LoFTR's test split: 5 scene-info files, 1500 pairs of scenes 0015 and 0022).

On-disk layout (``benchmarks/megadepth1500/README.md``)::

    DATA_ROOT/Undistorted_SfM/0015/images/*.jpg                 images (as listed)
    DATA_ROOT/phoenix/S6/zl548/MegaDepth_v1/0015/dense0/depths/*.h5   depth ("depth"), oracle only
    INDEX_DIR/0015_0.1_0.3.npz ... 0022_0.5_0.7.npz              scene info (pickled dicts)

The scene-info files (``../shared/data/megadepth1500/scene_info``) are pickles
despite ``.npz``: ``image_paths``, ``depth_paths``, ``intrinsics`` (3, 3) at the
original resolution, COLMAP pixel convention, ``poses`` (4, 4) world-to-camera,
``pair_infos`` ((i, j), overlap, central_matches).

Protocols (``eval`` conf, see :mod:`l2m_plugin.eval.pose`):

- ``roma`` (default; RoMa/DKM ``MegadepthDenseBenchmark``): keypoints in a frame
  whose long side is 1200 px, no pixel offset, threshold 0.5 px / mean focal
  (fx, fy of both images, in that frame), conf 0.99999, 5 shuffled runs per pair,
  a failed estimate counts as 90 degrees; RoMa draws 5000 new matches for each
  run: with ``predict.samples_per_pair=5`` run r uses the r-th draw, with the
  default (1, DKM's way) all runs share one draw;
- ``loftr``: original resolution, 0.5 px / mean(fx0, fy1, fx0, fy1), one run, a
  failed estimate counts as infinite error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l2m_plugin.eval.base import BenchmarkDataError, BenchmarkPair
from l2m_plugin.eval.pose import POSE_EVAL_DEFAULTS, PoseBenchmark

__all__ = ["MegaDepth1500", "SCENES", "read_scene_info"]

SCENES = ["0015_0.1_0.3", "0015_0.3_0.5", "0022_0.1_0.3", "0022_0.3_0.5", "0022_0.5_0.7"]


def read_scene_info(path: str | Path) -> dict:
    """One scene-info file as a dict of arrays/lists (``allow_pickle=True``: they are pickles)."""
    path = Path(path)
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError) as e:
        raise BenchmarkDataError(f"{path} is not a readable MegaDepth scene-info file ({e})") from e
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            obj = {k: obj[k] for k in obj.files}
    elif isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise BenchmarkDataError(f"{path} is not a MegaDepth scene-info file (expected a pickled dict)")
    return obj


class MegaDepth1500(PoseBenchmark):
    """MegaDepth-1500 relative pose, AUC@5/10/20 (see the module docstring)."""

    name = "megadepth1500"
    has_ground_truth = True  # depth h5 files + poses
    intrinsics_centre = 0.0  # K's pixel centres at i + 0.5 (COLMAP, from the D2-Net undistortion)
    default_conf = {
        "data": {"index_dir": None, "scenes": SCENES},
        "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1},
        "eval": dict(POSE_EVAL_DEFAULTS),
    }
    protocols = {
        "roma": {"frame": "long_side", "frame_size": 1200, "pixel_offset": 0.0, "focal_mode": "mean4",
                 "runs": 5, "failure_error_deg": 90.0, "resample_per_run": True},
        "loftr": {"frame": "original", "pixel_offset": 0.0, "focal_mode": "loftr", "runs": 1,
                  "failure_error_deg": float("inf")},
    }  # fmt: skip

    def index_dir(self) -> Path:
        cand = [self.conf["data"]["index_dir"]] if self.conf["data"]["index_dir"] else [
            self.data_root / "megadepth_test_1500_scene_info",
            self.data_root / "scene_info",
            self.data_root,
        ]  # fmt: skip
        for c in cand:
            if (Path(c) / f"{self.conf['data']['scenes'][0]}.npz").is_file():
                return Path(c)
        raise BenchmarkDataError(
            f"MegaDepth-1500 scene-info files ({self.conf['data']['scenes'][0]}.npz, ...) not found in "
            f"{', '.join(map(str, cand))}; pass --index-dir ../shared/data/megadepth1500/scene_info"
        )

    def load_pairs(self) -> list[BenchmarkPair]:
        d = self.index_dir()
        pairs = []
        for scene in self.conf["data"]["scenes"]:
            info = read_scene_info(d / f"{scene}.npz")
            for (i, j), overlap, *_ in info["pair_infos"]:
                i, j = int(i), int(j)
                T0 = np.asarray(info["poses"][i], np.float64)
                T1 = np.asarray(info["poses"][j], np.float64)
                pairs.append(
                    BenchmarkPair(
                        name0=str(info["image_paths"][i]), name1=str(info["image_paths"][j]),
                        subset=scene, index=len(pairs),
                        K0=np.asarray(info["intrinsics"][i], np.float64).copy(),
                        K1=np.asarray(info["intrinsics"][j], np.float64).copy(),
                        T_0to1=T1 @ np.linalg.inv(T0),
                        depth0=str(info["depth_paths"][i]), depth1=str(info["depth_paths"][j]),
                        info={"overlap": float(overlap)},
                    )
                )  # fmt: skip
        return pairs

    def read_depth(self, rel: str) -> np.ndarray:
        """(H, W) float32 depth of a listed depth file (MegaDepth h5, dataset ``depth``; 0 = none)."""
        import h5py

        path = self.data_root / rel
        if not path.is_file():
            raise BenchmarkDataError(f"depth map {path} is missing (the oracle needs MegaDepth's depth h5 files)")
        with h5py.File(path, "r") as f:
            return np.asarray(f["depth"][()], np.float32)
