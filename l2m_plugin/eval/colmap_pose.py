"""Any COLMAP model as a relative-pose benchmark (LoFTR's protocol, AUC@5/10/20 deg).

``l2m bench colmap --images DIR --model SPARSE_DIR``: ``DIR`` holds the images the model
was made from (names as in the model); ``SPARSE_DIR`` is a COLMAP model, text or binary
(read with ``pycolmap.Reconstruction``). A folder without a model gets one from
``benchmarks/colmap_reference.py`` (pycolmap's own SIFT pipeline: such a reference
favours SIFT, whose keypoints made it).

Pairs: every two registered images that see at least ``data.min_shared_points`` common
3D points, the most shared first (ties by name); ``--max-pairs N`` keeps the first N.
Within a pair the names are in sorted order.

Ground truth: ``T_0to1 = cam1_from_world @ inv(cam0_from_world)`` (4 x 4, the model's
units), ``K0``/``K1`` from ``Camera.calibration_matrix()`` (COLMAP pixels: centres at
i + 0.5, the convention of the cached keypoints), image sizes from the model's cameras.
Distortion: for camera models other than SIMPLE_PINHOLE / PINHOLE the keypoints are
undistorted through pycolmap's camera model before the estimation
(``K @ camera.cam_from_img(kpts)``: the ideal pinhole pixel with the same ``K``); a
keypoint the model cannot undistort is dropped. Images stored at another size than the
model's camera get their keypoints rescaled to the camera's size first (exact for a
plain resize).

Protocol ``loftr`` (the only one; :mod:`.pose`): original resolution, no pixel offset,
``cv2.findEssentialMat`` with RANSAC threshold 0.5 px / mean(fx0, fy1, fx0, fy1),
prob 0.99999, every solution checked with ``recoverPose`` (cheirality), one run per
pair; error = max(rotation angle error, translation direction angle error folded to
min(t, 180 - t)); a failed estimate scores ``inf``. Reported: AUC@5/10/20 deg,
``pairs_below_10deg`` (pairs whose error is < 10 deg; the median over runs with
``eval.runs`` > 1), and the usual pose-benchmark statistics.

Oracle: :meth:`ColmapPoseBenchmark.ground_truth_matches`, the model's own observations
of the 3D points both images see (its 2D keypoints in both images), so it scores as
well as the model is self-consistent (AUC@5 near 100 on a good model).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from l2m_plugin.eval.base import BenchmarkDataError, BenchmarkPair
from l2m_plugin.eval.pose import POSE_EVAL_DEFAULTS, PoseBenchmark
from l2m_plugin.formats.colmap_model import poses_by_name

__all__ = ["ColmapPoseBenchmark", "PINHOLE_MODELS"]

#: camera models without distortion (keypoints used as they are)
PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


class ColmapPoseBenchmark(PoseBenchmark):
    """A COLMAP model's image pairs as a relative-pose benchmark (module docstring).

    Args (besides :class:`~l2m_plugin.eval.base.Benchmark`'s): ``data_root`` is the image
    folder; ``conf["data"]["model"]`` the COLMAP model folder (required);
    ``conf["data"]["min_shared_points"]`` the pair threshold (default 30).
    Raises (from :meth:`pairs`):
        BenchmarkDataError: no model given, unreadable, or no pair with enough shared points.
    """

    name = "colmap"
    has_ground_truth = True  # the model's poses, intrinsics and observations
    intrinsics_centre = 0.0  # COLMAP's own convention
    columns = ["AUC@5", "AUC@10", "AUC@20"]
    default_conf = {
        "data": {"model": None, "min_shared_points": 30},
        "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1},
        "eval": dict(POSE_EVAL_DEFAULTS),
    }
    protocols = {
        "loftr": {"frame": "original", "pixel_offset": 0.0, "ransac_threshold_px": 0.5, "ransac_conf": 0.99999,
                  "focal_mode": "loftr", "runs": 1, "failure_error_deg": float("inf")},
    }  # fmt: skip

    def __init__(self, data_root, conf=None, protocol=None):
        super().__init__(data_root, conf=conf, protocol=protocol)
        self._rec = None
        self._by_name: dict[str, int] = {}
        self._obs: dict[str, dict[int, np.ndarray]] = {}

    def reconstruction(self):
        """The ``pycolmap.Reconstruction`` of ``data.model`` (read once)."""
        import pycolmap

        if self._rec is None:
            model = self.conf["data"]["model"]
            if not model:
                raise BenchmarkDataError("the colmap benchmark needs a COLMAP model: --model SPARSE_DIR (conf data.model)")
            if not Path(model).is_dir():
                raise BenchmarkDataError(f"COLMAP model folder {model} does not exist")
            try:
                self._rec = pycolmap.Reconstruction(str(model))
            except Exception as e:  # pycolmap raises ValueError / RuntimeError on a bad folder
                raise BenchmarkDataError(f"cannot read a COLMAP model (cameras, images, points3D .txt or .bin) from {model}: {e}") from e
            self._by_name = {self._rec.images[i].name: i for i in self._rec.reg_image_ids()}
        return self._rec

    def load_pairs(self) -> list[BenchmarkPair]:

        rec = self.reconstruction()
        reg = set(rec.reg_image_ids())
        shared: dict[tuple[int, int], int] = {}
        for p in rec.points3D.values():
            ids = sorted({el.image_id for el in p.track.elements} & reg)
            for a, b in combinations(ids, 2):
                shared[(a, b)] = shared.get((a, b), 0) + 1
        need = int(self.conf["data"]["min_shared_points"])
        poses = poses_by_name(rec)

        def T(name):
            R, t = poses[name]
            M = np.eye(4)
            M[:3, :3], M[:3, 3] = R, t
            return M

        cand = []
        for (a, b), n in shared.items():
            if n < need:
                continue
            n0, n1 = sorted((rec.images[a].name, rec.images[b].name))
            cand.append((-n, n0, n1))
        if not cand:
            raise BenchmarkDataError(
                f"no pair of the {len(reg)} registered images of {self.conf['data']['model']} shares "
                f">= {need} 3D points (conf data.min_shared_points)"
            )
        pairs = []
        for neg, n0, n1 in sorted(cand):
            c0, c1 = rec.images[self._by_name[n0]].camera, rec.images[self._by_name[n1]].camera
            pairs.append(BenchmarkPair(
                n0, n1, "colmap", len(pairs),
                K0=np.asarray(c0.calibration_matrix(), np.float64), K1=np.asarray(c1.calibration_matrix(), np.float64),
                T_0to1=T(n1) @ np.linalg.inv(T(n0)),
                info={"shared_points": -neg, "camera_size0": [c0.width, c0.height], "camera_size1": [c1.width, c1.height]},
            ))  # fmt: skip
        return pairs

    # ------------------------------------------------------------------ ground truth
    def _observations(self, name: str) -> dict[int, np.ndarray]:
        """{point3D_id: (2,) COLMAP pixel} of one image (its first observation of each point)."""
        if name not in self._obs:
            self.reconstruction()
            obs = {}
            for p in self._rec.images[self._by_name[name]].points2D:
                if p.has_point3D() and p.point3D_id not in obs:
                    obs[p.point3D_id] = np.asarray(p.xy, np.float64)
            self._obs[name] = obs
        return self._obs[name]

    def ground_truth_matches(self, pair: BenchmarkPair) -> tuple[np.ndarray, np.ndarray]:
        """The model's observations of the 3D points both images see: ``(kpts0, kpts1)``
        (M, 2) float64 COLMAP pixels at the model's camera size (the oracle matcher)."""
        o0, o1 = self._observations(pair.name0), self._observations(pair.name1)
        ids = sorted(set(o0) & set(o1))
        if not ids:
            return np.zeros((0, 2)), np.zeros((0, 2))
        return np.stack([o0[i] for i in ids]), np.stack([o1[i] for i in ids])

    def ground_truth_warp(self, pair, size0, size1):
        raise ValueError("the colmap benchmark has sparse ground truth only (ground_truth_matches), no dense warp")

    # ------------------------------------------------------------------ evaluate
    def undistort(self, name: str, kpts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Keypoints (N, 2) COLMAP pixels of the stored image of ``size`` (W, H) -> ideal pinhole
        pixels of the model's camera (same ``K``); NaN where the camera model cannot undistort."""
        self.reconstruction()
        cam = self._rec.images[self._by_name[name]].camera
        k = np.asarray(kpts, np.float64).reshape(-1, 2)
        if tuple(size) != (cam.width, cam.height):
            k = k * (cam.width / size[0], cam.height / size[1])
        if cam.model.name in PINHOLE_MODELS or not len(k):
            return k
        xy = np.asarray(cam.cam_from_img(k), np.float64).reshape(-1, 2)
        K = np.asarray(cam.calibration_matrix(), np.float64)
        return np.c_[xy, np.ones(len(xy))] @ K[:2].T

    def evaluate_pair(self, pair: BenchmarkPair, kpts0, kpts1, scores, size0, size1, sample_index=None) -> dict:
        k0 = self.undistort(pair.name0, kpts0, size0)
        k1 = self.undistort(pair.name1, kpts1, size1)
        keep = np.isfinite(k0).all(1) & np.isfinite(k1).all(1)
        if sample_index is not None:
            sample_index = sample_index[keep]
        cam0, cam1 = tuple(pair.info["camera_size0"]), tuple(pair.info["camera_size1"])
        rec = super().evaluate_pair(pair, k0[keep], k1[keep], scores[keep], cam0, cam1, sample_index=sample_index)
        rec["dropped"] = int((~keep).sum())
        rec["shared_points"] = pair.info["shared_points"]
        return rec

    def summarize(self, records: list[dict], pairs: list[BenchmarkPair]) -> dict:
        metrics = super().summarize(records, pairs)
        per_pair = [float(np.median([run["err"] for run in r["runs"]])) for r in records if r["runs"]]
        metrics["pairs_below_10deg"] = int(sum(e < 10 for e in per_pair))
        metrics["num_pairs"] = len(records)
        metrics["median_error_deg"] = float(np.median(per_pair)) if per_pair else None
        return metrics

    def table_note(self, metrics: dict) -> str:
        return f"; {metrics['pairs_below_10deg']} of {metrics['num_pairs']} pairs below 10 deg"
