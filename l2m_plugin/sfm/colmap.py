"""COLMAP through pycolmap: database import, two-view geometric verification, incremental mapping.

All estimation is pycolmap's (COLMAP's RANSAC, verification and mapper); this module
only moves our keypoints and matches into a COLMAP database and reads results back.

pycolmap 4.x quietly drops image pairs whose two-view geometry has configuration
``UNDEFINED`` when it builds the scene graph (which is what writing raw matches as
"verified" without a model produces, as hloc's ``triangulation.import_matches`` does
with ``skip_geometric_verification``). Here every pair goes through
``pycolmap.geometric_verification``, which assigns a real configuration, and
:func:`verification_report` counts the pairs per configuration so a pair that
would be dropped is visible in ``summary.json`` instead of silently missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycolmap

__all__ = [
    "import_into_database",
    "verify_pairs",
    "verification_report",
    "run_mapping",
    "map_tries",
    "try_rank",
    "DEFAULT_MAPPER_TRIES",
    "model_statistics",
    "rotation_errors",
]

log = logging.getLogger(__name__)

#: Verification-and-mapping tries of ``l2m reconstruct`` (:func:`map_tries`): three seeds kept
#: every Sacre-Coeur model within 2 deg of the reference (15 of 15) where single seeds failed 13
#: times in 45 (README, section "Mapping tries").
DEFAULT_MAPPER_TRIES = 3


def _camera_mode(mode: str) -> pycolmap.CameraMode:
    try:
        return getattr(pycolmap.CameraMode, mode.upper())
    except AttributeError:
        raise ValueError(
            f"camera mode must be one of auto, single, per_folder, per_image; got {mode!r}"
        ) from None


def import_into_database(
    database: str | Path,
    image_dir: str | Path,
    names: Sequence[str],
    keypoints: Mapping[str, np.ndarray],
    matches: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    *,
    camera_mode: str = "auto",
    camera_model: str = "SIMPLE_RADIAL",
    camera_params: str | None = None,
) -> dict[str, int]:
    """Create a fresh COLMAP database with images, keypoints and raw matches.

    Images, cameras, rigs and frames are created by ``pycolmap.import_images``
    (prior focal length from EXIF, else 1.2 x the longer side).

    Args:
        database: database path (replaced if it exists).
        image_dir: image folder.
        names: image names to import (relative to ``image_dir``).
        keypoints: ``{name: (M, 2)}`` COLMAP pixel coordinates (centres at i + 0.5).
        matches: ``{(name0, name1): ((K, 2) keypoint indices, scores)}``.
        camera_mode: ``auto`` | ``single`` | ``per_folder`` | ``per_image``.
        camera_model, camera_params: COLMAP camera model and optional known parameters
            as a comma-separated string (e.g. ``"fx,fy,cx,cy"`` for PINHOLE).
    Returns:
        ``{name: image_id}``.
    """
    database = Path(database)
    if database.exists():
        database.unlink()
    database.parent.mkdir(parents=True, exist_ok=True)
    pycolmap.Database.open(database).close()  # import_images needs an existing database
    options = pycolmap.ImageReaderOptions()
    options.camera_model = camera_model
    if camera_params:
        options.camera_params = camera_params
    pycolmap.import_images(
        database, image_dir, _camera_mode(camera_mode), image_names=list(names), options=options
    )
    db = pycolmap.Database.open(database)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        missing = [n for n in names if n not in ids]
        if missing:
            raise RuntimeError(f"pycolmap did not import {missing[:3]} (unreadable by COLMAP?)")
        for name in names:
            kp = np.asarray(keypoints.get(name, np.zeros((0, 2))), np.float32).reshape(-1, 2)
            db.write_keypoints(ids[name], kp)
        for (n0, n1), (idx, _) in matches.items():
            idx = np.asarray(idx, np.uint32).reshape(-1, 2)
            if len(idx):
                db.write_matches(ids[n0], ids[n1], idx)
    finally:
        db.close()
    return ids


def verify_pairs(
    database: str | Path, *, max_error: float = 4.0, min_num_inliers: int = 15, seed: int = 0
) -> None:
    """Two-view geometric verification of every matched pair (``pycolmap.geometric_verification``).

    Args:
        max_error: RANSAC threshold in pixels.
        min_num_inliers: fewer inliers leave the pair unverified.
        seed: RANSAC seed (deterministic runs).
    """
    opts = pycolmap.TwoViewGeometryOptions()
    opts.ransac.max_error = max_error
    opts.ransac.random_seed = seed
    opts.min_num_inliers = min_num_inliers
    pycolmap.geometric_verification(database, two_view_geometry_options=opts)


def verification_report(database: str | Path) -> dict:
    """Counts of matched pairs by two-view configuration, and pairs COLMAP will use.

    Returns:
        dict with ``matched_pairs``, ``verified_pairs`` (configuration not UNDEFINED or
        DEGENERATE, >= 1 inlier), ``configurations`` ({name: count}) and
        ``undefined_with_inliers`` (pairs pycolmap 4.x would silently ignore).
    """
    db = pycolmap.Database.open(database)
    try:
        matched = db.num_matched_image_pairs()
        pair_ids, geoms = db.read_two_view_geometries()
    finally:
        db.close()
    configs: Counter = Counter()
    verified = undefined = 0
    for g in geoms:
        name = pycolmap.TwoViewGeometryConfiguration(int(g.config)).name
        configs[name] += 1
        n_in = len(g.inlier_matches)
        if name in ("UNDEFINED",) and n_in:
            undefined += 1
        elif name not in ("UNDEFINED", "DEGENERATE") and n_in:
            verified += 1
    if undefined:
        log.warning(
            "%d pairs have inliers but an UNDEFINED two-view geometry: pycolmap 4.x ignores them",
            undefined,
        )
    return {
        "matched_pairs": int(matched),
        "verified_pairs": verified,
        "configurations": dict(configs),
        "undefined_with_inliers": undefined,
    }


def run_mapping(
    database: str | Path,
    image_dir: str | Path,
    output: str | Path,
    *,
    seed: int = 0,
    num_threads: int = 1,
    refine_intrinsics: bool = True,
    options: Mapping | None = None,
) -> pycolmap.Reconstruction | None:
    """Incremental mapping; the largest model is written to ``output`` (binary) and returned.

    Every model pycolmap finds is kept under ``output/models/<k>``. Returns None (and
    writes nothing at ``output``) when no model could be initialised.

    Args:
        seed: mapper random seed.
        num_threads: mapper threads. The default, 1, makes mapping repeatable: the same
            matches give the same model (with more threads pycolmap's bundle adjustment and
            registration order vary from run to run; -1 uses every core).
        refine_intrinsics: refine focal length and distortion in bundle adjustment
            (turn off for known, exact intrinsics).
        options: extra ``IncrementalPipelineOptions`` fields, e.g. ``{"min_model_size": 3}``.
    """
    output = Path(output)
    models_dir = output / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.random_seed = seed
    opts.num_threads = num_threads
    opts.mapper.random_seed = seed
    if not refine_intrinsics:
        opts.ba_refine_focal_length = False
        opts.ba_refine_extra_params = False
        opts.mapper.abs_pose_refine_focal_length = False
        opts.mapper.abs_pose_refine_extra_params = False
    for key, value in (options or {}).items():
        target = opts
        *path, last = key.split(".")
        for p in path:
            target = getattr(target, p, None)
        if target is None or not hasattr(target, last):
            raise ValueError(f"unknown mapper option {key!r} (a field of pycolmap.IncrementalPipelineOptions, e.g. mapper.init_min_tri_angle)")
        try:
            setattr(target, last, value)
        except TypeError as exc:
            raise ValueError(f"mapper option {key}={value!r}: {exc}") from None
    models = pycolmap.incremental_mapping(database, image_dir, models_dir, options=opts)
    if not models:
        return None
    best = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    _write_model(output, best)
    return best


def _write_model(output: Path, rec: pycolmap.Reconstruction | None) -> None:
    """Replace the binary model at ``output`` by ``rec`` (only remove it when ``rec`` is None)."""
    for f in ("cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"):
        (output / f).unlink(missing_ok=True)
    if rec is not None:
        rec.write(output)


def try_rank(stats: Mapping) -> tuple:
    """Sort key of a mapping try (larger is better), from its :func:`model_statistics`.

    In order: more trusted images (registered and not suspect, see :func:`suspect_images`),
    then fewer suspect images, then a lower mean reprojection error. Only the model's own
    statistics are used, never a reference. Our rule (README, section "Mapping tries": read
    off one seed study, then tested on 45 new models).

    Args:
        stats: needs ``registered_images`` (int), ``suspect_images`` (dict) and
            ``mean_reprojection_error_px`` (float pixels, or None for an empty model).
    Returns:
        ``(trusted images, -suspect images, -error px)``; a try without a model is
        ``(0, 0, -inf)``.
    Raises:
        KeyError: a key above is missing.
    """
    suspect = len(stats["suspect_images"])
    error = stats["mean_reprojection_error_px"]
    return (stats["registered_images"] - suspect, -suspect, -(error if error is not None else np.inf))


def map_tries(
    database: str | Path,
    image_dir: str | Path,
    output: str | Path,
    names: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    max_error: float = 4.0,
    num_threads: int = 1,
    refine_intrinsics: bool = True,
    options: Mapping | None = None,
    workers: int | None = None,
) -> tuple[pycolmap.Reconstruction | None, list[dict]]:
    """Two-view verification and incremental mapping of one database at several COLMAP seeds;
    the best model (:func:`try_rank`) is written to ``output`` and returned.

    Both steps draw random samples: verification's RANSAC decides which matches of a pair
    are inliers, the mapper's the initial pair and each registration. On photos without an
    EXIF focal length (COLMAP starts at 1.2 x the image size) some seeds leave a camera's
    intrinsics in a wrong minimum, its pose degrees off or its parameters out of COLMAP's own
    bounds. Trying a few seeds and keeping the model with the most trusted images, then the
    lowest reprojection error, avoids most of them (README, section "Mapping tries").

    ``database`` holds keypoints and matches, not yet verified. With one seed it is verified
    in place and mapped into ``output`` (:func:`verify_pairs`, :func:`run_mapping`). With more,
    try ``k`` verifies a copy, ``output/tries/seed_<seed>/database.db``, and maps it into that
    folder (kept, for inspection); the kept try's database then replaces ``database`` and its
    model is written to ``output``.

    Args:
        names: the images that were to be mapped (for the statistics).
        seeds: COLMAP seeds, one try each, in this order (ties keep the first).
        max_error: verification's RANSAC threshold in pixels.
        num_threads, refine_intrinsics, options: as :func:`run_mapping`.
        workers: tries run at once. Default: one per CPU core (at most one per seed) when
            each try maps on one thread (``num_threads=1``; each try is repeatable, so the
            result is the same as one after the other), else 1. Memory grows with it.
    Returns:
        ``(model or None, tries)``: ``tries[k]`` is the :func:`model_statistics` of try ``k``
        plus ``seed``, ``chosen`` (bool), ``verification`` (:func:`verification_report`) and
        ``timings_s`` (``verification``, ``mapping``); a try that raised has no model and an
        ``error`` string, and the others go on.
    Raises:
        ValueError: no seed, or a repeated seed.
        the first try's exception, when every try raised (e.g. an unknown mapper option).
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"mapping tries: give distinct seeds, got {seeds}")
    database, output = Path(database), Path(output)
    if (output / "tries").exists():  # an earlier run's tries
        shutil.rmtree(output / "tries")

    def one(s: int) -> tuple[pycolmap.Reconstruction | None, dict, Exception | None]:
        folder = output if len(seeds) == 1 else output / "tries" / f"seed_{s}"
        db = database
        t0 = t1 = time.perf_counter()
        try:
            if len(seeds) > 1:
                folder.mkdir(parents=True)
                db = folder / "database.db"
                shutil.copyfile(database, db)
            verify_pairs(db, max_error=max_error, seed=s)
            t1 = time.perf_counter()
            rec = run_mapping(db, image_dir, folder, seed=s, num_threads=num_threads,
                              refine_intrinsics=refine_intrinsics, options=options)  # fmt: skip
            report, error = verification_report(db), None
        except Exception as exc:  # this try fails; the others go on
            rec, report, error = None, {}, exc
        timings = {"verification": t1 - t0, "mapping": time.perf_counter() - t1}
        info = {"seed": s, "chosen": False, **model_statistics(rec, names), "verification": report,
                "timings_s": timings}  # fmt: skip
        if error is not None:
            info["error"] = f"{type(error).__name__}: {error}"
        return rec, info, error

    if workers is None:  # one-thread tries side by side (pycolmap releases the GIL)
        workers = min(len(seeds), os.cpu_count() or 1) if num_threads == 1 else 1
    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = list(pool.map(one, seeds))
    errors = [d[2] for d in done if d[2] is not None]
    if len(errors) == len(done):  # every try failed (e.g. a bad mapper option): the first error
        raise errors[0]
    for d in done:
        if d[2] is not None:
            log.warning("mapping try at seed %d failed (%s); the other tries go on", d[1]["seed"], d[1]["error"])
    models, tries = [d[0] for d in done], [d[1] for d in done]
    best = max(range(len(seeds)), key=lambda k: (try_rank(tries[k]), -k))
    tries[best]["chosen"] = True
    if len(seeds) > 1:
        shutil.copyfile(output / "tries" / f"seed_{seeds[best]}" / "database.db", database)
        _write_model(output, models[best])
    return models[best], tries


def suspect_images(rec: pycolmap.Reconstruction) -> dict[str, str]:
    """Registered images of ``rec`` whose pose is not trustworthy, ``{name: reason}`` (see
    :func:`model_statistics`)."""
    defaults = pycolmap.IncrementalPipelineOptions()
    out = {}
    for i in rec.reg_image_ids():
        im = rec.images[i]
        cam = rec.cameras[im.camera_id]
        reasons = []
        if im.num_points3D == 0:
            reasons.append("observes no 3D point")
        if cam.has_bogus_params(
            defaults.min_focal_length_ratio, defaults.max_focal_length_ratio, defaults.max_extra_param
        ):
            params = ", ".join(f"{v:.4g}" for v in cam.params)
            reasons.append(f"camera parameters out of COLMAP's bounds ({cam.model.name}: {params})")
        if reasons:
            out[im.name] = "; ".join(reasons)
    return dict(sorted(out.items()))


def model_statistics(rec: pycolmap.Reconstruction | None, names: Sequence[str]) -> dict:
    """Registered images, 3D points, mean track length and mean reprojection error of a model.

    ``suspect_images`` (``{name: reason}``) lists registered images whose pose is not to be
    trusted although ``registered_images`` counts them: pycolmap can keep an image registered
    after bundle adjustment has driven its camera to nonsense (seen: focal lengths of -2,800
    and 6,000,000 px, radial distortion of -14,000,000). The reasons: it observes no 3D point,
    or its camera has what COLMAP calls bogus parameters (``Camera.has_bogus_params`` with the
    mapper's defaults: focal length outside 0.1-10 times the image size, or an extra parameter
    such as distortion beyond 1 in magnitude).
    """
    if rec is None:
        return {
            "registered_images": 0,
            "num_images": len(names),
            "registered": [],
            "suspect_images": {},
            "unregistered": list(names),
            "points3D": 0,
            "mean_track_length": 0.0,
            "mean_reprojection_error_px": None,
            "mean_observations_per_image": 0.0,
        }
    reg = sorted(rec.images[i].name for i in rec.reg_image_ids())
    return {
        "registered_images": len(reg),
        "num_images": len(names),
        "registered": reg,
        "suspect_images": suspect_images(rec),
        "unregistered": sorted(set(names) - set(reg)),
        "points3D": int(rec.num_points3D()),
        "mean_track_length": float(rec.compute_mean_track_length()) if rec.num_points3D() else 0.0,
        "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error())
        if rec.num_points3D()
        else None,
        "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image())
        if reg
        else 0.0,
    }


def rotation_errors(
    estimated: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Per-image rotation error in degrees after the best global rotation alignment.

    The two models live in different world frames; the world rotation ``A`` minimising
    ``sum_i |R_est_i A - R_ref_i|_F^2`` (chordal L2 mean, projected on SO(3)) is
    applied, then the error of image i is the angle of ``R_ref_i^T R_est_i A``.

    Args:
        estimated, reference: ``{name: R_cam_from_world (3, 3)}``; common names only.
    Returns:
        ``{name: degrees}`` for the images in both.
    """
    common = sorted(set(estimated) & set(reference))
    if not common:
        return {}
    M = sum(estimated[n].T @ reference[n] for n in common)
    U, _, Vt = np.linalg.svd(M)
    A = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    out = {}
    for n in common:
        R = reference[n].T @ estimated[n] @ A
        out[n] = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))
    return out
