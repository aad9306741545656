"""``l2m reconstruct``: images to a COLMAP model with dense matches (no hloc needed).

Stages (each timed in ``summary.json``):

1. ``images``: list the folder (nested folders allowed), read every image's size;
   unreadable images are reported and skipped;
2. ``pairs``: exhaustive, ``sequential:K``, ``retrieval:K`` (GeM-pooled DINOv2 features
   of the L2M encoder) or an hloc pairs file; written to ``pairs.txt``;
3. ``matching``: each pair matched and appended to ``pair_matches.h5`` (resume: pairs
   already there are skipped; an interruption keeps every finished pair; a failing
   pair is reported and the others go on);
4. ``tracks``: per-pair matches quantised into shared keypoints
   (:mod:`l2m_plugin.sfm.tracks`; by distance, or by grid cells with ``cell_size``), written
   as hloc's ``features.h5``/``matches.h5``;
5. ``database``: COLMAP database via pycolmap (``database.db``);
6. verification: pycolmap two-view geometric verification;
7. mapping: pycolmap incremental mapping; the largest model in ``sfm/``. Steps 6-7 run at
   ``mapper_tries`` COLMAP seeds (3 by default; side by side on several cores) and the best
   model is kept (:func:`~l2m_plugin.sfm.colmap.map_tries`); timed together as
   ``verification_and_mapping``, each try in ``summary["model"]["tries"]``;
8. outputs: ``summary.json`` and ``reconstruction.png`` (top view of cameras and points).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from l2m_plugin.files import atomic_json
from l2m_plugin.formats.colmap_model import poses_by_name
from l2m_plugin.formats.hloc import write_features, write_matches
from l2m_plugin.formats.pair_store import STORE_NAME, PairMatchStore
from l2m_plugin.formats.pairs_txt import write_pairs
from l2m_plugin.io import ImageLoadError, file_fingerprint, list_images, load_image
from l2m_plugin.sfm.colmap import (
    DEFAULT_MAPPER_TRIES,
    import_into_database,
    map_tries,
    rotation_errors,
)
from l2m_plugin.sfm.pairs import parse_pairs_spec
from l2m_plugin.sfm.tracks import DEFAULT_MERGE_RADIUS, Tracks, build_tracks
from l2m_plugin.viz import draw_reconstruction

__all__ = ["reconstruct", "match_pairs", "merge_rule", "write_tracks", "OutputWriteError"]


class OutputWriteError(OSError):
    """The pair-match store could not be written (e.g. a full disk): matching stops at once, and
    every pair finished before is kept (each was written and closed before the next began)."""

log = logging.getLogger(__name__)


def _tqdm(iterable, **kw):
    from tqdm.auto import tqdm

    return tqdm(iterable, **kw)


@contextmanager
def _timed(timings: dict, stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - t0, 3)


def _order_for_cache(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs grouped by their first image (stable), so encoder features are reused while hot."""
    first_seen: dict[str, int] = {}
    for a, b in pairs:
        first_seen.setdefault(a, len(first_seen))
        first_seen.setdefault(b, len(first_seen))
    return sorted(
        pairs,
        key=lambda p: (
            min(first_seen[p[0]], first_seen[p[1]]),
            max(first_seen[p[0]], first_seen[p[1]]),
        ),
    )


def match_pairs(
    pair_matcher,
    pairs: Sequence[tuple[str, str]],
    store: PairMatchStore,
    *,
    progress: bool = True,
    on_failure: Callable[[tuple[str, str], Exception], None] | None = None,
    fingerprints: Mapping[str, str] | None = None,
) -> dict:
    """Match the pairs not yet in ``store`` and append each as soon as it is done.

    Args:
        pair_matcher: :class:`~l2m_plugin.matching.dense.DensePairMatcher` or
            :class:`~l2m_plugin.matching.dense.SiftPairMatcher`.
        pairs: image-name pairs.
        store: the raw match file (resume state).
        progress: show a progress bar (stderr).
        on_failure: called with the pair and the exception of a failed pair.
        fingerprints: ``{name: io.file_fingerprint}`` of the images: a stored pair counts as
            done only if its images still have that content (a replaced photo is matched again);
            None: stored pairs count by name.
    Returns:
        dict: ``matched`` (new pairs), ``skipped`` (already stored), ``failed``
        ({"name0 name1": message}), ``failed_images`` ({name: message}).
    Raises:
        KeyboardInterrupt: passed on; every pair finished before it is in ``store``.
        OutputWriteError: ``store`` cannot be written (full disk): raised at the first such
            pair, instead of going on with a damaged file.
    """
    if fingerprints is None:
        todo = [p for p in pairs if p not in store]
    else:
        done = store.current(pairs, fingerprints)
        todo = [p for p in pairs if p not in done]
    report = {"matched": 0, "skipped": len(pairs) - len(todo), "failed": {}, "failed_images": {}}
    todo = _order_for_cache(todo)
    remaining: dict[str, int] = {}
    for a, b in todo:
        remaining[a] = remaining.get(a, 0) + 1
        remaining[b] = remaining.get(b, 0) + 1
    bar = _tqdm(todo, desc="matching pairs", unit="pair", disable=not progress)
    for a, b in bar:
        bad = [n for n in (a, b) if n in report["failed_images"]]
        if bad:
            report["failed"][f"{a} {b}"] = f"image {bad[0]} is unreadable"
        else:
            try:
                k0, k1, s = pair_matcher(a, b)
                size0, size1 = pair_matcher.image(a).stored_size, pair_matcher.image(b).stored_size
                fp = (fingerprints[a], fingerprints[b]) if fingerprints is not None else None
                try:
                    store.write(a, b, k0, k1, s, size0, size1, fingerprints=fp)
                except (OSError, RuntimeError) as exc:  # full disk, lost mount: stop, keep what is done
                    raise OutputWriteError(
                        f"could not write {store.path} ({type(exc).__name__}: {exc}); the {len(store)} pairs "
                        "finished before are kept. Free space (or fix the folder) and rerun the same command "
                        "to resume"
                    ) from exc
                report["matched"] += 1
            except ImageLoadError as exc:
                name = a if str(a) in str(exc) else b
                report["failed_images"][name] = str(exc)
                report["failed"][f"{a} {b}"] = str(exc)
                log.error("unreadable image, skipping its pairs: %s", exc)
            except OutputWriteError:
                raise
            except (RuntimeError, ValueError, OSError) as exc:
                report["failed"][f"{a} {b}"] = f"{type(exc).__name__}: {exc}"
                log.error("pair %s %s failed: %s", a, b, exc)
                if on_failure is not None:
                    on_failure((a, b), exc)
        for n in (a, b):
            remaining[n] -= 1
            if remaining[n] == 0:
                pair_matcher.forget(n)
    return report


def _read_sizes(image_dir: Path, names: Sequence[str], progress: bool) -> tuple[dict, dict, dict]:
    """Stored (W, H) and content fingerprint of every readable image; ``{name: message}`` for
    unreadable ones."""
    sizes, fingerprints, bad = {}, {}, {}
    for n in _tqdm(names, desc="reading images", unit="img", disable=not progress):
        try:
            sizes[n] = load_image(image_dir / n, exif=False).stored_size
            fingerprints[n] = file_fingerprint(image_dir / n)
        except (ImageLoadError, OSError) as exc:
            bad[n] = str(exc)
            log.error("skipping unreadable image: %s", exc)
    return sizes, fingerprints, bad


def merge_rule(cell_size: float | None = None, merge_radius: float | None = None) -> dict:
    """The track-building rule of ``l2m reconstruct`` / ``l2m merge`` as ``build_tracks`` keywords.

    ``cell_size`` alone: hloc's grid (one keypoint per cell); otherwise merging by distance,
    ``merge_radius`` or :data:`~l2m_plugin.sfm.tracks.DEFAULT_MERGE_RADIUS` pixels.

    Returns:
        ``{"cell_size": float | None, "merge_radius": float | None}``, exactly one set.
    Raises:
        ValueError: both given (they are two rules), or the given one <= 0.
    """
    if cell_size is not None and merge_radius is not None:
        raise ValueError(
            f"cell_size={cell_size} and merge_radius={merge_radius} are two track-building rules "
            "(grid cells or distance): give one of them"
        )
    if cell_size is not None:
        if not cell_size > 0:
            raise ValueError(f"cell_size must be > 0, got {cell_size}")
        return {"cell_size": float(cell_size), "merge_radius": None}
    radius = DEFAULT_MERGE_RADIUS if merge_radius is None else merge_radius
    if not radius > 0:
        raise ValueError(f"merge_radius must be > 0, got {radius}")
    return {"cell_size": None, "merge_radius": float(radius)}


def write_tracks(
    out: Path, raw: Sequence[tuple], sizes: dict[str, tuple[int, int]], names: Sequence[str], *,
    cell_size: float | None = None, merge_radius: float | None = None, subpixel: bool = False,
) -> Tracks:  # fmt: skip
    """Per-pair matches to shared keypoints (:func:`~l2m_plugin.sfm.tracks.build_tracks`), written
    as hloc's ``out/features.h5`` and ``out/matches.h5``.

    Args:
        raw: ``(name0, name1, kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` in COLMAP pixel coordinates.
        sizes: ``{name: (W, H)}`` of the stored images.
        names: the images of the model (an image without matches gets 0 keypoints).
        cell_size, merge_radius: the merge rule (:func:`merge_rule`).
    Returns:
        the :class:`~l2m_plugin.sfm.tracks.Tracks`.
    Raises:
        ValueError: both ``cell_size`` and ``merge_radius`` given, or one <= 0.
    """
    rule = merge_rule(cell_size, merge_radius)
    tracks = build_tracks(raw, {n: sizes[n] for n in names}, subpixel=subpixel, **rule)
    for n in names:
        tracks.keypoints.setdefault(n, np.zeros((0, 2), np.float32))
    write_features(out / "features.h5", {n: tracks.keypoints[n] for n in names}, sizes)
    write_matches(out / "matches.h5", tracks.matches, {n: len(tracks.keypoints[n]) for n in names})
    return tracks


def reconstruct(
    image_dir: str | Path,
    out_dir: str | Path,
    pair_matcher,
    *,
    pairs: str = "exhaustive",
    cell_size: float | None = None,
    merge_radius: float | None = None,
    subpixel: bool = False,
    camera_mode: str = "auto",
    camera_model: str = "SIMPLE_RADIAL",
    camera_params: str | None = None,
    refine_intrinsics: bool = True,
    ransac_max_error: float = 4.0,
    mapper_options: dict | None = None,
    reference: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    fast_mapping: bool = False,
    mapper_tries: int = DEFAULT_MAPPER_TRIES,
) -> dict:
    """Run the whole pipeline (see the module docstring) and return the summary.

    Args:
        image_dir: folder of images (searched recursively).
        out_dir: output folder: ``pairs.txt``, ``pair_matches.h5``, ``features.h5``,
            ``matches.h5``, ``database.db``, ``sfm/`` (COLMAP model, binary),
            ``summary.json``, ``reconstruction.png``.
        pair_matcher: :class:`~l2m_plugin.matching.dense.DensePairMatcher` or
            :class:`~l2m_plugin.matching.dense.SiftPairMatcher`.
        pairs: ``exhaustive`` | ``sequential:K`` | ``retrieval:K`` | pairs-file path.
        cell_size, merge_radius, subpixel: track building
            (:func:`~l2m_plugin.sfm.tracks.build_tracks`; the rule: :func:`merge_rule`).
        camera_mode, camera_model, camera_params: COLMAP cameras (see
            :func:`~l2m_plugin.sfm.colmap.import_into_database`).
        refine_intrinsics: let bundle adjustment refine focal length / distortion.
        ransac_max_error: two-view verification threshold in pixels.
        mapper_options: extra ``pycolmap.IncrementalPipelineOptions`` fields.
        reference: a COLMAP model (folder) of the same images: per-image rotation
            errors (degrees, after global rotation alignment) go into the summary.
        overwrite: discard matches from earlier runs (else they are reused when the
            matcher settings are the same, and refused when they differ).
        seed: COLMAP's random seed (two-view verification and mapping; the matcher has its own).
        progress: progress bars on stderr.
        fast_mapping: map with every core; faster, but two runs on the same matches may
            differ (the default maps on one thread: repeatable).
        mapper_tries: verify and map this many times, at COLMAP seeds ``seed``, ``seed + 1``,
            ...; the model with the most trusted images, then the lowest reprojection error,
            is kept (:func:`~l2m_plugin.sfm.colmap.map_tries`); every try is in
            ``summary["model"]["tries"]``.
    Returns:
        the summary dict (also written to ``summary.json``).
    Raises:
        FileNotFoundError: missing image folder / no images / missing pairs file.
        ValueError: bad pairs spec, duplicate image names, both ``cell_size`` and
            ``merge_radius``, or stored matches from another matcher setting (without
            ``overwrite``).
    """
    import torch

    rule = merge_rule(cell_size, merge_radius)  # refused before any matching
    if int(mapper_tries) < 1:
        raise ValueError(f"mapper_tries must be >= 1, got {mapper_tries}")

    image_dir, out = Path(image_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    summary: dict = {"image_dir": str(image_dir), "matcher": pair_matcher.settings()}

    with _timed(timings, "images"):
        names = list_images(image_dir)
        sizes, fingerprints, bad = _read_sizes(image_dir, names, progress)
        names = [n for n in names if n in sizes]
    summary["skipped_images"] = dict(bad)
    if len(names) < 2:
        raise ValueError(f"fewer than 2 readable images in {image_dir} (unreadable: {sorted(bad)})")

    with _timed(timings, "pairs"):
        pair_list = parse_pairs_spec(
            pairs, names, descriptors_fn=lambda: pair_matcher.global_descriptors(names)
        )
        write_pairs(out / "pairs.txt", pair_list)
    summary["pairs"] = {"spec": pairs, "num_pairs": len(pair_list)}

    store = PairMatchStore(out / STORE_NAME, pair_matcher.settings(), overwrite=overwrite,
                           defaults=getattr(pair_matcher, "settings_defaults", dict)())
    with _timed(timings, "matching"):
        report = match_pairs(pair_matcher, pair_list, store, progress=progress, fingerprints=fingerprints)
    summary["matching"] = {
        "new_pairs": report["matched"],
        "reused_pairs": report["skipped"],
        "failed_pairs": report["failed"],
        "encoder_passes": pair_matcher.num_encoder_passes,
        # the dense warp's float sums, hence the drawn matches, depend on the thread count
        "torch_threads": torch.get_num_threads(),
    }
    for n, msg in report["failed_images"].items():
        summary["skipped_images"][n] = msg
    names = [n for n in names if n not in report["failed_images"]]

    with _timed(timings, "tracks"):
        wanted = {frozenset(p) for p in pair_list}
        raw = [
            (a, b, k0, k1, s)
            for a, b, k0, k1, s in store.items()
            if frozenset((a, b)) in wanted
            and a in sizes
            and b in sizes
            and a in names
            and b in names
        ]
        tracks = write_tracks(out, raw, sizes, names, subpixel=subpixel, **rule)
        lengths = tracks.track_lengths()
    summary["tracks"] = {
        "rule": "grid" if rule["merge_radius"] is None else "radius",
        "cell_size_px": rule["cell_size"] if rule["merge_radius"] is None else None,
        "merge_radius_px": rule["merge_radius"],
        "subpixel": subpixel,
        "keypoints": int(sum(len(k) for k in tracks.keypoints.values())),
        "matches": int(sum(len(m[0]) for m in tracks.matches.values())),
        "raw_matches": int(sum(len(r[4]) for r in raw)),
        "candidate_tracks": int(len(lengths)),
        "candidate_mean_track_length": float(lengths.mean()) if len(lengths) else 0.0,
    }

    with _timed(timings, "database"):
        import_into_database(
            out / "database.db", image_dir, names, tracks.keypoints, tracks.matches,
            camera_mode=camera_mode, camera_model=camera_model, camera_params=camera_params,
        )  # fmt: skip
    with _timed(timings, "verification_and_mapping"):  # wall time; tries may run side by side
        rec, tries = map_tries(
            out / "database.db", image_dir, out / "sfm", names, seeds=[seed + k for k in range(mapper_tries)],
            max_error=ransac_max_error, refine_intrinsics=refine_intrinsics, options=mapper_options,
            num_threads=-1 if fast_mapping else 1,
        )  # fmt: skip
    chosen = next(t for t in tries if t["chosen"])
    summary["verification"] = chosen["verification"]
    summary["model"] = {k: v for k, v in chosen.items() if k not in ("seed", "chosen", "verification", "timings_s")}
    summary["model"]["colmap_seed"] = chosen["seed"]
    summary["model"]["path"] = str(out / "sfm") if rec is not None else None
    summary["model"]["tries"] = [
        {k: t[k] for k in ("seed", "chosen", "registered_images", "suspect_images", "points3D",
                           "mean_track_length", "mean_reprojection_error_px", "timings_s", "error") if k in t}
        for t in tries
    ]  # fmt: skip
    if reference is not None and rec is not None:
        import pycolmap

        def rotations(model: pycolmap.Reconstruction) -> dict[str, np.ndarray]:
            return {n: R for n, (R, _) in poses_by_name(model).items()}

        refp = rotations(pycolmap.Reconstruction(str(reference)))
        est = rotations(rec)
        errs = rotation_errors(est, refp)
        if len(tries) > 1:  # for the record only: the choice never sees the reference
            for t in summary["model"]["tries"]:
                if not t["registered_images"]:
                    continue
                if t["chosen"]:  # the kept model, already compared
                    e = errs
                else:  # the others, read back from their folders
                    other = pycolmap.Reconstruction(str(out / "sfm" / "tries" / f"seed_{t['seed']}"))
                    e = rotation_errors(rotations(other), refp)
                t["max_rotation_error_deg"] = max(e.values()) if e else None
        summary["reference"] = {
            "path": str(reference),
            "rotation_error_deg": errs,
            "max_rotation_error_deg": max(errs.values()) if errs else None,
            "missing": sorted(set(refp) - set(est)),
        }
    if rec is not None:
        draw_reconstruction(
            rec,
            out / "reconstruction.png",
            title=f"{summary['model']['registered_images']}/{len(names)} images, {summary['model']['points3D']} points",
        )
        summary["picture"] = str(out / "reconstruction.png")
    summary["timings_s"] = timings
    atomic_json(out / "summary.json", summary)
    return summary
