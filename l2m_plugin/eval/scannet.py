"""ScanNet-1500 (SuperGlue's test split as packaged by LoFTR: 100 scenes x 15 pairs).

On-disk layout (``benchmarks/scannet1500/README.md``)::

    DATA_ROOT/scans_test/scene0707_00/color/15.jpg   (RoMa's layout), or
    DATA_ROOT/scene0707_00/color/15.jpg              (LoFTR's layout)
    .../scene0707_00/depth/15.png                    uint16 millimetres, oracle only
    INDEX_DIR/test.npz, INDEX_DIR/intrinsics.npz     (../shared/data/scannet1500)

``test.npz``: ``name`` (1500, 4) [scene, sub-scene, frame0, frame1] and
``rel_pose`` (1500, 12) row-major 3 x 4 ``T_0to1``; ``intrinsics.npz``: per scene
``K`` (3, 3) for the 640 x 480 images, pixel centres on integers. Images of
another size (e.g. ScanNet's raw 1296 x 968 colour frames resized by someone) get
K rescaled to their size; RoMa reads ``intrinsic/intrinsic_color.txt`` instead.

Protocol ``roma`` (default, RoMa's ``ScanNetBenchmark``): keypoints in a frame whose
short side is 480 px, then -0.5 px (``pixel_offset``), threshold 0.5 px / mean focal,
conf 0.99999, 5 shuffled runs, failures 90 degrees. RoMa's script appends each
pair's last run a second time (6 samples per pair, the last one doubled):
``compat_duplicate_last_run=True`` reproduces it; it is off by default.
Protocol ``loftr``: 640 x 480 frame, no offset, LoFTR's focal mean, 1 run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l2m_plugin.eval.base import BenchmarkDataError, BenchmarkPair
from l2m_plugin.eval.pose import POSE_EVAL_DEFAULTS, PoseBenchmark

__all__ = ["ScanNet1500"]


class ScanNet1500(PoseBenchmark):
    """ScanNet-1500 relative pose, AUC@5/10/20 (see the module docstring)."""

    name = "scannet1500"
    has_ground_truth = True  # depth PNGs + poses
    intrinsics_centre = 0.5  # K's pixel centres on integers
    intrinsics_size = (640, 480)  # intrinsics.npz is for these; other image sizes get K rescaled
    default_conf = {
        "data": {"index_dir": None, "layout": "auto"},  # layout: auto | roma (scans_test/) | loftr
        "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1},
        "eval": dict(POSE_EVAL_DEFAULTS),
    }
    protocols = {
        "roma": {"frame": "short_side", "frame_size": 480, "pixel_offset": -0.5, "focal_mode": "mean4",
                 "runs": 5, "failure_error_deg": 90.0},
        "loftr": {"frame": "original", "pixel_offset": 0.0, "focal_mode": "loftr", "runs": 1,
                  "failure_error_deg": float("inf")},
    }  # fmt: skip

    def index_dir(self) -> Path:
        cand = [self.conf["data"]["index_dir"]] if self.conf["data"]["index_dir"] else [
            self.data_root, self.data_root / "scannet_test_1500", self.data_root / "scannet1500",
        ]  # fmt: skip
        for c in cand:
            if (Path(c) / "test.npz").is_file() and (Path(c) / "intrinsics.npz").is_file():
                return Path(c)
        raise BenchmarkDataError(
            f"ScanNet-1500 test.npz / intrinsics.npz not found in {', '.join(map(str, cand))}; "
            "pass --index-dir ../shared/data/scannet1500"
        )

    def _prefix(self) -> str:
        layout = self.conf["data"]["layout"]
        if layout == "roma" or (layout == "auto" and (self.data_root / "scans_test").is_dir()):
            return "scans_test/"
        if layout in ("loftr", "auto"):
            return ""
        raise ValueError(f"data.layout must be auto, roma or loftr, got {layout!r}")

    def load_pairs(self) -> list[BenchmarkPair]:
        d = self.index_dir()
        with np.load(d / "test.npz") as t:
            names, rel = t["name"], t["rel_pose"]
        with np.load(d / "intrinsics.npz") as i:
            intr = {k: np.asarray(i[k], np.float64) for k in i.files}
        pre = self._prefix()
        pairs = []
        for (scene, sub, f0, f1), T in zip(names, rel, strict=True):
            sname = f"scene{int(scene):04d}_{int(sub):02d}"
            if sname not in intr:
                raise BenchmarkDataError(f"{d / 'intrinsics.npz'} has no intrinsics for {sname}")
            T_0to1 = np.eye(4)
            T_0to1[:3] = np.asarray(T, np.float64).reshape(3, 4)
            pairs.append(
                BenchmarkPair(
                    name0=f"{pre}{sname}/color/{int(f0)}.jpg", name1=f"{pre}{sname}/color/{int(f1)}.jpg",
                    subset=sname, index=len(pairs), K0=intr[sname].copy(), K1=intr[sname].copy(),
                    T_0to1=T_0to1,
                    depth0=f"{pre}{sname}/depth/{int(f0)}.png", depth1=f"{pre}{sname}/depth/{int(f1)}.png",
                )
            )  # fmt: skip
        return pairs

    def read_depth(self, rel: str) -> np.ndarray:
        """(H, W) float32 depth in metres from ScanNet's uint16 millimetre PNG (0 = none)."""
        from PIL import Image

        path = self.data_root / rel
        if not path.is_file():
            raise BenchmarkDataError(f"depth map {path} is missing (the oracle needs ScanNet's depth PNGs)")
        return np.asarray(Image.open(path), np.float32) / 1000.0
