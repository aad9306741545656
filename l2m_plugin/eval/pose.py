"""Relative-pose benchmarks: the protocol shared by MegaDepth-1500, ScanNet-1500 and ZEB.

Per pair and per run (RoMa's ``megadepth_benchmark.py`` / ``scannet_benchmark.py``):

1. keypoints (cached in the images' own pixel grid, COLMAP convention) are moved to
   the protocol's *frame*: scaled by ``frame_size / long side`` (``frame="long_side"``),
   ``frame_size / short side`` (``"short_side"``) or kept (``"original"``), and
   ``pixel_offset`` is added (RoMa's ScanNet protocol uses -0.5, i.e. pixel centres on
   integers, the convention of ScanNet's intrinsics); ``K`` is scaled the same way;
2. the matches are shuffled (RANSAC depends on their order);
3. :func:`~l2m_plugin.eval.estimation.estimate_relative_pose` (OpenCV essential
   matrix, threshold ``ransac_threshold_px`` in that frame / mean focal, every
   solution tried with ``recoverPose``);
4. error = max(rotation error, translation angle folded to min(t, 180 - t));
   a failed estimate scores ``failure_error_deg``.

Every run is one sample of the AUC (RoMa: 5 runs per pair). Matches are drawn once
per pair by default (DKM's way); RoMa's MegaDepth script draws new matches for each
run: ``predict.samples_per_pair=5`` stores five draws and ``resample_per_run=True``
(set by the MegaDepth ``roma`` protocol) gives run r the r-th draw. RoMa's ScanNet script
appends each pair's last run a second time; ``compat_duplicate_last_run=True``
reproduces that, off by default.
"""

from __future__ import annotations

import numpy as np

from l2m_plugin.eval.base import Benchmark, BenchmarkPair, pair_rng
from l2m_plugin.eval.estimation import estimate_relative_pose
from l2m_plugin.eval.metrics import pose_auc, relative_pose_error
from l2m_plugin.geometry import warp_from_depth

__all__ = ["PoseBenchmark", "to_frame"]

#: the eval keys every pose benchmark has (each benchmark sets the defaults of its protocols)
POSE_EVAL_DEFAULTS = {
    "frame": "original",  # original | long_side | short_side
    "frame_size": 0,  # pixels of that side when frame != original
    "pixel_offset": 0.0,  # added to keypoints in the frame (RoMa ScanNet: -0.5)
    "ransac_threshold_px": 0.5,
    "ransac_conf": 0.99999,
    "focal_mode": "mean4",  # mean4 (RoMa) | loftr
    "runs": 5,
    "failure_error_deg": 90.0,
    "auc_thresholds": [5, 10, 20],
    "compat_duplicate_last_run": False,
    "resample_per_run": False,  # run r uses draw r of the cache (needs predict.samples_per_pair > 1)
    "seed": 0,
}


def to_frame(kpts: np.ndarray, K: np.ndarray, size: tuple[int, int], conf: dict) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, 2) COLMAP pixels and K (3, 3) of an image of ``size`` (W, H) in the protocol's frame."""
    w, h = size
    if conf["frame"] == "original":
        s = 1.0
    elif conf["frame"] == "long_side":
        s = conf["frame_size"] / max(w, h)
    elif conf["frame"] == "short_side":
        s = conf["frame_size"] / min(w, h)
    else:
        raise ValueError(f"eval.frame must be original, long_side or short_side, got {conf['frame']!r}")
    K = np.asarray(K, np.float64).copy()
    K[:2] *= s
    return np.asarray(kpts, np.float64) * s + conf["pixel_offset"], K


class PoseBenchmark(Benchmark):
    """Base of the relative-pose benchmarks; subclasses provide the loader and protocols."""

    columns = ["AUC@5", "AUC@10", "AUC@20"]
    #: 0.5 when the data set's intrinsics put pixel centres on integers, 0 for COLMAP's convention
    intrinsics_centre: float = 0.0
    #: (W, H) the listed intrinsics are for, when the data set fixes it (ScanNet: 640 x 480)
    intrinsics_size: tuple[int, int] | None = None

    def image_K(self, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The listed ``K`` rescaled to an image of ``size`` (W, H) when the data set's
        intrinsics are for another size (``intrinsics_size``); else ``K`` unchanged."""
        ref = self.intrinsics_size
        if ref is None or tuple(size) == tuple(ref):
            return K
        K = np.asarray(K, np.float64).copy()
        K[:2, 2] += self.intrinsics_centre
        K[0] *= size[0] / ref[0]
        K[1] *= size[1] / ref[1]
        K[:2, 2] -= self.intrinsics_centre
        return K

    def read_depth(self, rel: str) -> np.ndarray:
        """(H, W) float32 z-depth of a listed depth file, 0 where unknown (data sets with depth)."""
        raise NotImplementedError

    def ground_truth_warp(self, pair: BenchmarkPair, size0, size1):
        """Ground-truth warps both ways from the pair's depth maps (for the oracle matcher).

        ``read_depth`` gives (H, W) z-depth at any resolution; K is rescaled to the
        depth grid, with ``intrinsics_centre`` added to its principal point to reach
        COLMAP's convention (0.5 when the data set puts pixel centres on integers).
        Returns warps (H, W, 2) normalised in the other image and validity masks
        (depth > 0, inside the other image, not occluded there).
        """
        import torch

        self.require_ground_truth()
        d0, d1 = self.read_depth(pair.depth0), self.read_depth(pair.depth1)
        K0 = _to_depth_grid(self.image_K(pair.K0, size0), self.intrinsics_centre, size0, d0.shape)
        K1 = _to_depth_grid(self.image_K(pair.K1, size1), self.intrinsics_centre, size1, d1.shape)
        T = np.asarray(pair.T_0to1, np.float64)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).double()  # noqa: E731
        w0, v0 = warp_from_depth(t(d0), t(K0), t(K1), t(T), depth1=t(d1)[None])
        w1, v1 = warp_from_depth(t(d1), t(K1), t(K0), t(np.linalg.inv(T)), depth1=t(d0)[None])
        return w0[0].float().clamp(-1, 1), v0[0], w1[0].float().clamp(-1, 1), v1[0]

    def evaluate_pair(self, pair: BenchmarkPair, kpts0, kpts1, scores, size0, size1, sample_index=None) -> dict:
        c = self.conf["eval"]
        k0, K0 = to_frame(kpts0, self.image_K(pair.K0, size0), size0, c)
        k1, K1 = to_frame(kpts1, self.image_K(pair.K1, size1), size1, c)
        if sample_index is None:
            sample_index = np.zeros(len(k0), np.int16)
        num_draws = int(sample_index.max()) + 1 if len(sample_index) else 1
        rng = pair_rng(c["seed"], pair.index)
        runs = []
        for r in range(int(c["runs"])):
            sel = sample_index == ((r % num_draws) if c["resample_per_run"] else 0)
            a, b = k0[sel], k1[sel]
            perm = rng.permutation(len(a))
            est = estimate_relative_pose(
                a[perm], b[perm], K0, K1, c["ransac_threshold_px"],
                conf=c["ransac_conf"], focal_mode=c["focal_mode"], seed=int(rng.integers(2**31 - 1)),
            )  # fmt: skip
            if est is None:
                runs.append(self._failed_run())
                continue
            R, t, inl = est
            err_t, err_R = relative_pose_error(pair.T_0to1, R, t)
            runs.append({"err_R": err_R, "err_t": err_t, "err": max(err_t, err_R), "inliers": int(inl.sum()), "failed": False})
        return {"num_matches": int((sample_index == 0).sum()), "num_draws": num_draws, "runs": runs}

    def _failed_run(self) -> dict:
        f = float(self.conf["eval"]["failure_error_deg"])
        return {"err_R": f, "err_t": f, "err": f, "inliers": 0, "failed": True}

    def failed_pair(self, pair: BenchmarkPair) -> dict:
        return {"num_matches": 0, "runs": [self._failed_run() for _ in range(int(self.conf["eval"]["runs"]))]}

    def _errors(self, records: list[dict]) -> np.ndarray:
        errs = []
        for r in records:
            e = [run["err"] for run in r["runs"]]
            if self.conf["eval"]["compat_duplicate_last_run"] and e:
                e.append(e[-1])
            errs.extend(e)
        return np.asarray(errs, np.float64)

    def summarize(self, records: list[dict], pairs: list[BenchmarkPair]) -> dict:
        th = list(self.conf["eval"]["auc_thresholds"])
        errs = self._errors(records)
        aucs = pose_auc(errs, th)
        metrics = {f"AUC@{t:g}": a for t, a in zip(th, aucs, strict=True)}
        metrics.update({f"acc@{t:g}": float(np.mean(errs < t)) for t in th})
        runs = [run for r in records for run in r["runs"]]
        metrics["num_samples"] = len(errs)
        metrics["failed_runs"] = int(sum(run["failed"] for run in runs))
        metrics["mean_num_matches"] = float(np.mean([r["num_matches"] for r in records])) if records else 0.0
        metrics["mean_inliers"] = float(np.mean([run["inliers"] for run in runs])) if runs else 0.0
        per_subset = {}
        for s in dict.fromkeys(r["subset"] for r in records):
            e = self._errors([r for r in records if r["subset"] == s])
            per_subset[s] = {f"AUC@{t:g}": a for t, a in zip(th, pose_auc(e, th), strict=True)}
            per_subset[s]["num_pairs"] = sum(r["subset"] == s for r in records)
        metrics["per_subset"] = per_subset
        return metrics


def _to_depth_grid(K: np.ndarray, centre: float, image_size, depth_shape) -> np.ndarray:
    """K in COLMAP convention, rescaled from an image of ``image_size`` (W, H) to a depth map of ``depth_shape`` (H, W)."""
    K = np.asarray(K, np.float64).copy()
    K[:2, 2] += centre
    K[0] *= depth_shape[1] / image_size[0]
    K[1] *= depth_shape[0] / image_size[1]
    return K
