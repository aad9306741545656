"""HPatches sequences: homography estimation, mean corner error, AUC@3/5/10 px.

On-disk layout (``benchmarks/hpatches/README.md``)::

    DATA_ROOT/hpatches-sequences-release/<seq>/1.ppm ... 6.ppm, H_1_2 ... H_1_6
    (or DATA_ROOT itself being hpatches-sequences-release/)

116 sequences (57 illumination ``i_*``, 59 viewpoint ``v_*``), five pairs each
(1-2 ... 1-6). ``H_1_k`` maps image 1 to image k in HPatches' pixel convention
(pixel centres on integers).

Protocol ``dkm`` (default; DKM's and RoMa's ``HpatchesHomogBenchmark``): matches at
the matcher's own resolution, keypoints mapped to full-resolution pixels and
shifted by -0.5 (HPatches' convention), ``cv2.findHomography`` with RANSAC,
threshold 3 px x (short side of image k / 480), conf 0.99999; error = mean
distance of the four image-1 corners (0, 0), (0, h-1), (w-1, 0), (w-1, h-1)
mapped by the estimated and the true homography, divided by (short side / 480),
i.e. in pixels of image k resized to a 480-px short side (LoFTR resizes the images
to that size instead; ``normalize_short_side=0`` gives raw full-resolution
pixels). No estimate scores DKM's fallback (every corner sent to (0, 0)). AUC by the pose-AUC
trapezoid over thresholds 1..10 px; AUC@3/5/10 reported.

Skipped sequences (``skip``): the eight of LoFTR / Patch2Pix / DKM, whose images
are larger than 1,200 px: i_contruction, i_crownnight, i_dc, i_pencils,
i_whitebuilding, v_artisans, v_astronautis, v_talent. That leaves 108 sequences,
540 pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l2m_plugin.coords import (
    hloc_to_pixel,
    normalized_grid,
    normalized_to_pixel,
    pixel_to_hloc,
    pixel_to_normalized,
)
from l2m_plugin.eval.base import Benchmark, BenchmarkDataError, BenchmarkPair, pair_rng
from l2m_plugin.eval.estimation import estimate_homography
from l2m_plugin.eval.metrics import homography_corner_error, pose_auc

__all__ = ["HPatches", "SKIP_SEQUENCES", "dkm_corner_error"]

SKIP_SEQUENCES = [
    "i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
    "v_artisans", "v_astronautis", "v_talent",
]  # fmt: skip


def dkm_corner_error(kpts0, kpts1, H_gt: np.ndarray, size0, size1, conf, pair_index: int) -> tuple[float, bool]:
    """DKM's HPatches homography error of one pair's matches (shared by :class:`HPatches` and
    :class:`~l2m_plugin.eval.homography.HomographyBenchmark`).

    Args:
        kpts0, kpts1: (N, 2) COLMAP pixel coordinates (pixel centres at i + 0.5); shifted by
            ``conf["pixel_offset"]`` (DKM: -0.5, pixel centres on integers) before the estimate.
        H_gt: (3, 3) true homography in that shifted convention.
        size0, size1: (W, H) of the images in pixels.
        conf: the ``eval`` conf: ``pixel_offset``, ``ransac_threshold_px``, ``ransac_conf``,
            ``normalize_short_side`` (errors and the threshold scale with image 1's short side
            over it; 0 / None: no scaling), ``seed``.
        pair_index: seeds the RANSAC with ``pair_rng(conf["seed"], pair_index)``.
    Returns:
        ``(mean corner error of the estimate in normalised pixels (inf without one), failed)``;
        OpenCV errors on degenerate input count as no estimate (DKM).
    """
    (w0, h0), (w1, h1) = size0, size1
    norm = min(w1, h1) / conf["normalize_short_side"] if conf["normalize_short_side"] else 1.0
    k0 = np.asarray(kpts0, np.float64) + conf["pixel_offset"]
    k1 = np.asarray(kpts1, np.float64) + conf["pixel_offset"]
    seed = int(pair_rng(conf["seed"], pair_index).integers(2**31 - 1))
    try:
        H = estimate_homography(k0, k1, conf["ransac_threshold_px"] * norm, conf=conf["ransac_conf"], seed=seed)
    except Exception:  # OpenCV errors on degenerate input count as no estimate (DKM)
        H = None
    return homography_corner_error(H, np.asarray(H_gt, np.float64), w0, h0) / norm, H is None


class HPatches(Benchmark):
    """HPatches homography benchmark (see the module docstring)."""

    name = "hpatches"
    has_ground_truth = True  # homographies
    columns = ["AUC@3px", "AUC@5px", "AUC@10px"]
    default_conf = {
        "data": {"skip": list(SKIP_SEQUENCES)},
        "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1},
        "eval": {
            "pixel_offset": -0.5,
            "ransac_threshold_px": 3.0,
            "ransac_conf": 0.99999,
            "normalize_short_side": 480,
            "auc_thresholds": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "seed": 0,
        },
    }
    protocols = {"dkm": {}}

    def seq_root(self) -> Path:
        for c in (self.data_root / "hpatches-sequences-release", self.data_root):
            if c.is_dir() and any((p / "H_1_2").is_file() for p in c.iterdir() if p.is_dir()):
                return c
        raise BenchmarkDataError(
            f"no HPatches sequences (folders with 1.ppm ... 6.ppm and H_1_2 ... H_1_6) under {self.data_root}; "
            "see benchmarks/hpatches/README.md"
        )

    def load_pairs(self) -> list[BenchmarkPair]:
        root = self.seq_root()
        rel = root.relative_to(self.data_root)
        skip = set(self.conf["data"]["skip"])
        pairs = []
        for seq in sorted(p.name for p in root.iterdir() if p.is_dir()):
            if seq in skip:
                continue
            for k in range(2, 7):
                hfile = root / seq / f"H_1_{k}"
                if not hfile.is_file():
                    raise BenchmarkDataError(f"{hfile} is missing (every sequence has H_1_2 ... H_1_6)")
                pairs.append(
                    BenchmarkPair(
                        name0=str(rel / seq / "1.ppm"), name1=str(rel / seq / f"{k}.ppm"),
                        subset="illumination" if seq.startswith("i_") else "viewpoint",
                        index=len(pairs), H_0to1=np.loadtxt(hfile).reshape(3, 3), info={"sequence": seq},
                    )
                )  # fmt: skip
        return pairs

    def ground_truth_warp(self, pair: BenchmarkPair, size0, size1):
        """Warps from the homography, at full resolution (COLMAP convention in and out)."""
        import torch

        def warp(H, src, dst):
            w, h = src
            g = normalized_grid(h, w, dtype=torch.float64)
            p = pixel_to_hloc(normalized_to_pixel(g.reshape(-1, 2), w, h))
            q = torch.cat((p, torch.ones_like(p[:, :1])), 1) @ torch.from_numpy(H).T
            q = q[:, :2] / q[:, 2:]
            n = pixel_to_normalized(hloc_to_pixel(q), *dst).reshape(h, w, 2)
            return n.float().clamp(-1, 1), (n.abs() <= 1).all(-1)

        H = np.asarray(pair.H_0to1, np.float64)
        w0, v0 = warp(H, size0, size1)
        w1, v1 = warp(np.linalg.inv(H), size1, size0)
        return w0, v0, w1, v1

    def evaluate_pair(self, pair: BenchmarkPair, kpts0, kpts1, scores, size0, size1, sample_index=None) -> dict:
        c = self.conf["eval"]
        if sample_index is not None:  # DKM estimates once per pair: the first draw
            kpts0, kpts1 = kpts0[sample_index == 0], kpts1[sample_index == 0]
        err, failed = dkm_corner_error(kpts0, kpts1, pair.H_0to1, size0, size1, c, pair.index)
        return {"num_matches": len(kpts0), "error_px": err, "failed": failed}

    def failed_pair(self, pair: BenchmarkPair) -> dict:
        return {"num_matches": 0, "error_px": float("inf"), "failed": True}

    def summarize(self, records: list[dict], pairs: list[BenchmarkPair]) -> dict:
        th = list(self.conf["eval"]["auc_thresholds"])
        errs = np.array([r["error_px"] for r in records], np.float64)
        aucs = dict(zip(th, pose_auc(errs, th), strict=True))
        metrics = {f"AUC@{t:g}px": a for t, a in aucs.items()}
        metrics["mean_corner_error_px"] = float(np.mean(errs[np.isfinite(errs)])) if np.isfinite(errs).any() else None
        metrics["failed"] = int(sum(r["failed"] for r in records))
        for s in ("illumination", "viewpoint"):
            e = np.array([r["error_px"] for r in records if r["subset"] == s], np.float64)
            if len(e):
                metrics[s] = {f"AUC@{t:g}px": a for t, a in zip(th, pose_auc(e, th), strict=True)}
        return metrics
