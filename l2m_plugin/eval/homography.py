"""Synthetic homography pairs from held-out photos: match reprojection error, PCK, corner AUC.

Data: the photos under ``data_root`` (``l2m bench homography --data-root DIR``), listed
by :func:`l2m_plugin.synthesis.generate.source_listing`, the sorted listing ``l2m synth``
uses, and split by the same rule: with ``data.split="heldout"`` (default) photo ``j`` of
that listing is used when ``j % data.holdout_every == 0`` (``l2m synth --split heldout``),
so a matcher trained on ``l2m synth --split train`` pairs never saw these photos.

Pairs: for photo ``j`` (its index in the full sorted listing),
:func:`l2m_plugin.synthesis.homography.random_homography_pair` (default
:class:`~l2m_plugin.synthesis.homography.HomographyConfig`: scale 0.5-2x, rotation up to
30 deg, perspective, independent photometric change) at ``data.size`` = (H, W) with
``numpy.random.default_rng([data.seed, j])`` (:func:`~l2m_plugin.eval.base.pair_rng`).
Each photo gives two pairs, interleaved in the list (so ``--max-pairs`` keeps both groups):

- ``homography``: (image0, image1) with the drawn ``H_0to1``;
- ``identity``: (image0, image0), ``H = I``: a matcher must return (nearly) zero error and
  a high certainty on an unchanged image.

The generated images are written once (PNG, atomically; a rerun reuses them) into
``data.cache_dir/<hash>/`` (the hash covers the photo folder, the listing, the split, the
size, the seed and the generator's ranges; ``l2m bench`` sets ``cache_dir`` to
``OUT/homography/images``, shared by every matcher)::

    <hash>/settings.json                 what the images were generated from
    <hash>/<jjjj>-<photo>/image0.png     (H, W) RGB
    <hash>/<jjjj>-<photo>/image1.png
    <hash>/<jjjj>-<photo>/pair.json      photo, index, H_0to1 (3 x 3, COLMAP pixels:
                                         pixel centres at i + 0.5), scale, rotation_deg

Metrics, per pair from the cached matches (COLMAP pixels), then per group:

- reprojection error ``e = ||H(kpts0) - kpts1||`` in pixels of image 1: per pair its mean
  and median; ``mean_error_px`` / ``median_error_px`` are their means over the pairs with
  matches;
- ``PCK@{1,3,5}px``: the fraction of all matches of the group with ``e < t`` (pooled), and
  ``PCK@tpx_per_pair``: its mean over pairs (a pair without matches scores 0);
- ``AUC@{3,5,10}px``: HPatches' corner-error protocol (:mod:`.hpatches`, ``dkm``): keypoints
  shifted by -0.5 (pixel centres on integers), ``cv2.findHomography`` RANSAC at
  3 px x (short side / 480), conf 0.99999, mean corner error against the true ``H``
  (in that convention) divided by (short side / 480); AUC over 1..10 px;
- ``num_matches``, ``median_score``: median over pairs of each pair's median certainty.

The table's columns are the ``homography`` group's AUC@3/5/10px and pooled PCK@1/3/5px;
the ``identity`` group's median error and score are in its title and in ``metrics``.
``metrics["by_scale"]`` holds the same metrics of the ``homography`` group split by the
pair's scale change (:data:`SCALE_BINS`: below 0.8x, 0.8-1.25x, above 1.25x; empty bins are
left out), and the table's note gives each bin's corner AUC@5px: where a matcher's error is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from l2m_plugin.eval.base import Benchmark, BenchmarkDataError, BenchmarkPair, pair_rng
from l2m_plugin.eval.hpatches import HPatches, dkm_corner_error
from l2m_plugin.eval.metrics import pose_auc
from l2m_plugin.files import atomic_json
from l2m_plugin.io import ImageLoadError, load_image, write_png
from l2m_plugin.synthesis.generate import RunSettings, source_listing
from l2m_plugin.synthesis.homography import (
    HomographyConfig,
    homography_warp,
    random_homography_pair,
)

__all__ = ["HomographyBenchmark", "reprojection_errors"]

GROUPS = ("homography", "identity")
PCK_THRESHOLDS = (1, 3, 5)
#: bins of the pair's scale change (``pair.json``'s ``scale``: > 1 = image 1 zoomed in) for
#: ``metrics["by_scale"]``: (label, low, high), low <= scale < high
SCALE_BINS = (("<0.8x", 0.0, 0.8), ("0.8-1.25x", 0.8, 1.25), (">1.25x", 1.25, float("inf")))


def reprojection_errors(H_0to1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray) -> np.ndarray:
    """``||H(kpts0) - kpts1||`` (N,) in pixels of image 1.

    Args:
        H_0to1: (3, 3) homography on COLMAP pixels.
        kpts0, kpts1: (N, 2) COLMAP pixel coordinates in image 0 and image 1.
    Returns:
        (N,) float64; ``inf`` where ``H`` sends a point to or behind the line at infinity.
    """
    k0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    k1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    p = np.c_[k0, np.ones(len(k0))] @ np.asarray(H_0to1, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        q = p[:, :2] / p[:, 2:]
        e = np.linalg.norm(q - k1, axis=1)
    return np.where((p[:, 2] > 0) & np.isfinite(e), e, np.inf)


class HomographyBenchmark(Benchmark):
    """Synthetic homography pairs of held-out photos (see the module docstring).

    ``data`` conf: ``split`` (all | train | heldout), ``holdout_every``, ``max_images``
    (first M photos of the split), ``size`` [H, W], ``seed``, ``cache_dir`` (None:
    ``outputs/bench/homography/images``, the default of ``l2m bench --out``).
    """

    name = "homography"
    has_ground_truth = True  # exact homographies
    columns = ["AUC@3px", "AUC@5px", "AUC@10px", "PCK@1px", "PCK@3px", "PCK@5px"]
    default_conf = {
        "data": {
            "split": "heldout",
            "holdout_every": 10,
            "max_images": None,
            "size": [480, 640],
            "seed": 0,
            "cache_dir": None,
        },
        "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1},
        # HPatches' DKM protocol for the corner error, plus the PCK thresholds
        "eval": {**copy.deepcopy(HPatches.default_conf["eval"]), "pck_thresholds": list(PCK_THRESHOLDS)},
    }
    protocols = {"dkm": {}}

    # ------------------------------------------------------------------ data
    def _listing(self) -> tuple[list[str], dict[str, int]]:
        """(photos of the split, {photo: index in the full sorted listing})."""
        d = self.conf["data"]
        try:
            full = source_listing(RunSettings(images=str(self.data_root), depth="synthetic"))
            names = source_listing(RunSettings(images=str(self.data_root), depth="synthetic", split=d["split"],
                                               holdout_every=int(d["holdout_every"]), max_images=d["max_images"]))  # fmt: skip
        except FileNotFoundError as e:
            raise BenchmarkDataError(f"homography benchmark: {e} (pass --data-root, a folder of photos)") from e
        return names, {n: j for j, n in enumerate(full)}

    def _generator_settings(self) -> dict:
        d = self.conf["data"]
        names, index = self._listing()
        return {
            "generator": "l2m_plugin.synthesis.homography.random_homography_pair",
            "config": asdict(HomographyConfig()),
            "photos": str(self.data_root.resolve()),
            "listing": [[index[n], n] for n in names],
            "size": [int(v) for v in d["size"]],
            "seed": int(d["seed"]),
        }

    @property
    def image_root(self) -> Path:
        """``cache_dir/<hash of the generation settings>``: where the generated pairs are."""
        if getattr(self, "_image_root", None) is None:
            base = self.conf["data"]["cache_dir"] or "outputs/bench/homography/images"
            h = hashlib.sha1(json.dumps(self._generator_settings(), sort_keys=True).encode()).hexdigest()[:10]
            self._image_root = Path(base) / h
        return self._image_root

    def load_pairs(self) -> list[BenchmarkPair]:
        """Generate (or reuse) one pair per photo of the split; two list entries per photo."""
        settings = self._generator_settings()
        if not settings["listing"]:
            raise BenchmarkDataError(f"no photos in split {self.conf['data']['split']!r} of {self.data_root}")
        root = self.image_root
        root.mkdir(parents=True, exist_ok=True)
        atomic_json(root / "settings.json", {k: v for k, v in settings.items() if k != "listing"}
                     | {"num_photos": len(settings["listing"])})  # fmt: skip
        size = tuple(settings["size"])
        pairs = []
        for j, photo in tqdm(settings["listing"], desc="homography: pairs", unit="photo", leave=False,
                             disable=len(settings["listing"]) < 20):  # fmt: skip
            folder = f"{j:04d}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(photo).with_suffix("").as_posix())
            meta_path = root / folder / "pair.json"
            if meta_path.is_file() and (root / folder / "image0.png").is_file() and (root / folder / "image1.png").is_file():
                meta = json.loads(meta_path.read_text())
            else:
                try:
                    rgb = np.asarray(load_image(self.data_root / photo).image)
                except ImageLoadError as e:
                    raise BenchmarkDataError(f"cannot read photo {photo}: {e}") from e
                pair = random_homography_pair(rgb, size, pair_rng(settings["seed"], j), HomographyConfig())
                (root / folder).mkdir(exist_ok=True)
                write_png(root / folder / "image0.png", pair.image0)
                write_png(root / folder / "image1.png", pair.image1)
                meta = {"photo": photo, "index": j, "size": list(size), "H_0to1": pair.H_0to1.tolist(),
                        "scale": pair.scale, "rotation_deg": pair.rotation_deg}  # fmt: skip
                atomic_json(meta_path, meta)  # written last: marks the pair complete
            n0, n1 = f"{folder}/image0.png", f"{folder}/image1.png"
            info = {"photo": photo, "photo_index": j, "scale": meta["scale"], "rotation_deg": meta["rotation_deg"]}
            H = np.asarray(meta["H_0to1"], np.float64)
            pairs.append(BenchmarkPair(n0, n1, "homography", len(pairs), H_0to1=H, info=info))
            pairs.append(BenchmarkPair(n0, n0, "identity", len(pairs), H_0to1=np.eye(3), info=info))
        return pairs

    def ground_truth_warp(self, pair: BenchmarkPair, size0, size1):
        """Exact warps both ways from ``H_0to1`` (:func:`~l2m_plugin.synthesis.homography.homography_warp`;
        sizes (W, H)); returns torch tensors as :meth:`Benchmark.ground_truth_warp` documents."""
        H = np.asarray(pair.H_0to1, np.float64)
        (w0, h0), (w1, h1) = size0, size1
        a, va = homography_warp(H, (h0, w0), (h1, w1))
        b, vb = homography_warp(np.linalg.inv(H), (h1, w1), (h0, w0))
        t = torch.from_numpy
        return t(a), t(va), t(b), t(vb)

    # ------------------------------------------------------------------ evaluate
    def evaluate_pair(self, pair: BenchmarkPair, kpts0, kpts1, scores, size0, size1, sample_index=None) -> dict:
        c = self.conf["eval"]
        if sample_index is not None:  # one estimate per pair, as HPatches: the first draw
            keep = sample_index == 0
            kpts0, kpts1, scores = kpts0[keep], kpts1[keep], scores[keep]
        H = np.asarray(pair.H_0to1, np.float64)
        e = reprojection_errors(H, kpts0, kpts1)
        n = len(e)
        rec = {
            "num_matches": n,
            "mean_error_px": float(np.mean(e)) if n else None,
            "median_error_px": float(np.median(e)) if n else None,
            "median_score": float(np.median(scores)) if n else None,
            "num_below": {f"{t:g}": int(np.sum(e < t)) for t in c["pck_thresholds"]},
        }
        # the true H in the estimate's convention: T(offset) H T(-offset) (offset -0.5: pixel
        # centres on integers, l2m_plugin.synthesis.homography.to_opencv)
        o = float(c["pixel_offset"])
        T = lambda d: np.array([[1, 0, d], [0, 1, d], [0, 0, 1.0]])  # noqa: E731
        err, failed = dkm_corner_error(kpts0, kpts1, T(o) @ H @ T(-o), size0, size1, c, pair.index)
        rec["corner_error_px"], rec["failed"] = err, failed
        return rec

    def failed_pair(self, pair: BenchmarkPair) -> dict:
        c = self.conf["eval"]
        return {"num_matches": 0, "mean_error_px": None, "median_error_px": None, "median_score": None,
                "num_below": {f"{t:g}": 0 for t in c["pck_thresholds"]}, "corner_error_px": float("inf"),
                "failed": True}  # fmt: skip

    def _group(self, records: list[dict]) -> dict:
        c = self.conf["eval"]
        th = list(c["auc_thresholds"])
        n = np.array([r["num_matches"] for r in records], np.float64)
        m = {"num_pairs": len(records), "mean_num_matches": float(n.mean()), "pairs_without_matches": int((n == 0).sum())}
        has = [r for r in records if r["num_matches"]]
        mean = lambda k: float(np.mean([r[k] for r in has])) if has else None  # noqa: E731
        m["mean_error_px"] = mean("mean_error_px")
        m["median_error_px"] = mean("median_error_px")
        m["median_score"] = float(np.median([r["median_score"] for r in has])) if has else None
        for t in c["pck_thresholds"]:
            below = np.array([r["num_below"][f"{t:g}"] for r in records], np.float64)
            m[f"PCK@{t:g}px"] = float(below.sum() / n.sum()) if n.sum() else 0.0
            m[f"PCK@{t:g}px_per_pair"] = float(np.mean(np.divide(below, n, out=np.zeros_like(below), where=n > 0)))
        errs = np.array([r["corner_error_px"] for r in records], np.float64)
        m.update({f"AUC@{t:g}px": a for t, a in zip(th, pose_auc(errs, th), strict=True)})
        fin = np.isfinite(errs)
        m["mean_corner_error_px"] = float(errs[fin].mean()) if fin.any() else None
        m["failed"] = int(sum(r["failed"] for r in records))
        return m

    def summarize(self, records: list[dict], pairs: list[BenchmarkPair]) -> dict:
        groups = {g: self._group([r for r in records if r["subset"] == g]) for g in GROUPS if any(r["subset"] == g for r in records)}
        head = groups.get("homography") or {}
        metrics = {k: head.get(k, float("nan")) for k in self.columns}
        metrics["groups"] = groups
        scale = {p.index: float(p.info["scale"]) for p in pairs if "scale" in p.info}
        homog = [r for r in records if r["subset"] == "homography" and r["index"] in scale]
        metrics["by_scale"] = {}
        for label, lo, hi in SCALE_BINS:
            sel = [r for r in homog if lo <= scale[r["index"]] < hi]
            if sel:
                metrics["by_scale"][label] = self._group(sel)
        return metrics

    def table_note(self, metrics: dict) -> str:
        note = ""
        ident = metrics["groups"].get("identity")
        if ident and ident["median_error_px"] is not None:
            note = (f"; identity pairs: median error {ident['median_error_px']:.3f} px, "
                    f"median score {ident['median_score']:.3f}, {ident['mean_num_matches']:.0f} matches")  # fmt: skip
        bins = metrics.get("by_scale") or {}
        if bins:
            note += "; corner AUC@5px by scale change: " + ", ".join(
                f"{label} {100 * m['AUC@5px']:.1f} ({m['num_pairs']} pairs)" for label, m in bins.items()
            )
        return note
