"""hloc integration: L2M as a dense matcher of ``hloc.match_dense``, and SfM with pycolmap 4.

hloc (github.com/cvg/Hierarchical-Localization) is not on PyPI and is not a
dependency of l2m_plugin; install it next to it::

    git clone https://github.com/cvg/Hierarchical-Localization
    pip install --no-deps -e Hierarchical-Localization

Usage::

    from hloc import match_dense, pairs_from_exhaustive
    from l2m_plugin.integrations import hloc as l2m_hloc

    l2m_hloc.register()                      # adds hloc.matchers.l2m and the confs below
    pairs_from_exhaustive.main(pairs, image_list=names)
    # "l2m-tiny": the model shipped with the package (offline); "l2m": the authors' L2M++
    features, matches = match_dense.main(match_dense.confs["l2m-tiny"], pairs, images, export_dir=out)
    rec = l2m_hloc.reconstruction(out / "sfm", images, pairs, features, matches)

Conventions at this boundary (hloc's ``match_dense`` contract, hloc commit c13273b):

- hloc keypoints (``features.h5`` ``<name>/keypoints``, the raw dense matches
  ``matches.h5`` ``<pair>/keypoints0|1``) are (N, 2) float32 (x, y) with pixel
  centres at *integer* coordinates; l2m_plugin's keypoints (``L2M.sample``,
  COLMAP databases) have them at i + 0.5. The adapter subtracts 0.5
  (:func:`l2m_plugin.coords.pixel_to_hloc`); hloc adds it back when importing into
  COLMAP (``hloc.triangulation.import_features``).
- hloc reads images with ``cv2.IMREAD_IGNORE_ORIENTATION``: keypoints are in the
  stored pixel grid of the files, as COLMAP expects.
- pair groups in ``matches.h5`` are named ``hloc.utils.parsers.names_to_pair(name0, name1)``
  (``"name0/name1"`` with ``/`` inside names replaced by ``-``).

pycolmap 4.x: ``hloc.reconstruction.main`` works as is with its default geometric
verification (``pycolmap.verify_matches`` labels every verified pair). With
``skip_geometric_verification=True`` hloc writes ``pycolmap.TwoViewGeometry(inlier_matches=m)``,
whose configuration is ``UNDEFINED``; COLMAP 4 skips such geometries when it builds
the correspondence graph (log: "two-view geometries with UNDEFINED configuration
(written by an outdated producer); they are skipped"), so mapping ends with "No
images with matches" / "Failed to create any sparse model" and hloc returns None.
``hloc.triangulation.main`` (known poses) is hit harder: its default pose-based
verification writes UNDEFINED geometries too, so it returns a model with 0 points and
no error; only ``estimate_two_view_geometries=True`` (``pycolmap.verify_matches``)
works. :func:`reconstruction` and :func:`triangulation` are hloc's pipelines with these
cases fixed by :func:`label_undefined_two_view_geometries`; nothing in hloc is patched
(``register`` only adds a matcher module and confs), so hloc's own functions behave
exactly as upstream.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

__all__ = [
    "CONFS",
    "INSTALL_HINT",
    "register",
    "reconstruction",
    "triangulation",
    "label_undefined_two_view_geometries",
]

INSTALL_HINT = (
    "hloc is not on PyPI: git clone https://github.com/cvg/Hierarchical-Localization "
    "&& pip install --no-deps -e Hierarchical-Localization"
)

_MATCHERS_DIR = Path(__file__).resolve().with_name("hloc_matchers")

#: ``hloc.match_dense`` confs added by :func:`register`. ``max_error`` / ``cell_size``
#: drive hloc's keypoint quantisation (``match_dense.assign_keypoints``): raw dense
#: keypoints are binned in cells of ``cell_size`` pixels, each cell keeps one keypoint
#: (the score-weighted most frequent position on a ``max_error`` pixel grid), so that
#: matches of different pairs share keypoints and form tracks; then (``max_kps`` set,
#: hloc's default) every raw keypoint is reassigned to the nearest kept keypoint within
#: ``max_error`` pixels, its match being dropped if there is none. Keypoints thus move
#: by at most ``max_error`` px; ``max_error = cell_size = 0`` keeps them exact (and
#: shares a keypoint only between bit-identical positions). The network resizes its
#: input to ``coarse_res`` / ``upsample_res`` itself, so ``dfactor`` is 1 (no extra
#: resampling by hloc).
CONFS: dict[str, dict[str, Any]] = {
    # L2M++ (the authors' weights, downloaded once). Small scenes, best quality: 864 x 864
    # dense output, 5000 matches per pair, keypoints on a 1-pixel grid of the original image.
    "l2m": {
        "output": "matches-l2m",
        "model": {"name": "l2m", "weights": "l2mpp-v2", "max_num_matches": 5000},
        "preprocessing": {"grayscale": False, "resize_max": 1024, "dfactor": 1},
        "max_error": 1,
        "cell_size": 1,
    },
    # l2m-tiny, shipped with the package (offline); the config stored with it
    # (PRESETS["l2m-tiny"], configs/matcher/l2m_tiny.yaml: 384 px, co-visible crop pass,
    # sample_thresh 0.5).
    "l2m-tiny": {
        "output": "matches-l2m-tiny",
        "model": {"name": "l2m", "weights": "l2m-tiny", "max_num_matches": 5000},
        "preprocessing": {"grayscale": False, "resize_max": 1024, "dfactor": 1},
        "max_error": 2,
        "cell_size": 2,
    },
    # L2M++ (downloaded once), lighter: 448 / 640 passes (about half the compute), 2000
    # matches per pair, coarser cells (more keypoints shared between pairs, fewer per image).
    "l2m-fast": {
        "output": "matches-l2m-fast",
        "model": {
            "name": "l2m",
            "weights": "l2mpp-v2",
            "coarse_res": 448,
            "upsample_res": 640,
            "max_num_matches": 2000,
        },
        "preprocessing": {"grayscale": False, "resize_max": 800, "dfactor": 1},
        "max_error": 2,
        "cell_size": 4,
    },
}


def _import_hloc():
    try:
        import hloc.match_dense as match_dense
        import hloc.matchers as matchers
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    return matchers, match_dense


def register() -> list[str]:
    """Make ``{"model": {"name": "l2m", ...}}`` usable in ``hloc.match_dense`` (idempotent).

    Appends this package's ``hloc_matchers`` folder to ``hloc.matchers.__path__``
    (once), so ``hloc.utils.base_model.dynamic_load(hloc.matchers, "l2m")`` imports
    ``hloc.matchers.l2m`` (:class:`~l2m_plugin.integrations.hloc_matchers.l2m.L2MDense`)
    without editing hloc, and adds deep copies of :data:`CONFS` to
    ``hloc.match_dense.confs`` where no conf of that name exists yet (a conf already
    there, e.g. edited by the user, is left alone).

    Returns:
        The names of the confs now available (``["l2m", "l2m-tiny", "l2m-fast"]``).
    Raises:
        ImportError: hloc is not installed (the message says how to install it).
    """
    matchers, match_dense = _import_hloc()
    folder = str(_MATCHERS_DIR)
    if folder not in list(matchers.__path__):
        matchers.__path__.append(folder)
    for name, conf in CONFS.items():
        match_dense.confs.setdefault(name, copy.deepcopy(conf))
    return list(CONFS)


def label_undefined_two_view_geometries(database_path, config=None) -> int:
    """Give every ``UNDEFINED`` two-view geometry of a COLMAP database a configuration.

    COLMAP / pycolmap 4 ignore two-view geometries whose configuration is
    ``UNDEFINED`` (what hloc writes for unverified matches). This rewrites them
    with the same inlier matches and ``config`` (default ``UNCALIBRATED``: the
    weakest claim, no intrinsics or pose assumed; no F, E or pose is stored). The
    incremental mapper estimates the geometry of its initial pair itself, so
    nothing else of the two-view geometry is needed. No estimation is done here.

    Args:
        database_path: path of the COLMAP database.
        config: a ``pycolmap.TwoViewGeometryConfiguration`` (default ``UNCALIBRATED``).
    Returns:
        The number of geometries rewritten.
    """
    import pycolmap

    if config is None:
        config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
    undefined = pycolmap.TwoViewGeometryConfiguration.UNDEFINED
    n = 0
    with pycolmap.Database.open(database_path) as db:
        pair_ids, geometries = db.read_two_view_geometries()
        for pair_id, tvg in zip(pair_ids, geometries, strict=True):
            if tvg.config != undefined:
                continue
            id0, id1 = pycolmap.pair_id_to_image_pair(pair_id)
            db.update_two_view_geometry(
                id0, id1, pycolmap.TwoViewGeometry(config=config, inlier_matches=tvg.inlier_matches)
            )
            n += 1
    return n


def reconstruction(
    sfm_dir,
    image_dir,
    pairs,
    features,
    matches,
    *,
    camera_mode=None,
    verbose: bool = False,
    skip_geometric_verification: bool = False,
    min_match_score: float | None = None,
    image_list: list[str] | None = None,
    image_options: dict[str, Any] | None = None,
    mapper_options: dict[str, Any] | None = None,
):
    """``hloc.reconstruction.main`` that also works with pycolmap 4 when verification is skipped.

    Runs hloc's own steps in hloc's order (``create_empty_db``, ``import_images``,
    ``import_features``, ``import_matches``, ``estimation_and_geometric_verification``
    i.e. ``pycolmap.verify_matches``, ``run_reconstruction`` i.e.
    ``pycolmap.incremental_mapping``); the only addition is that with
    ``skip_geometric_verification=True`` the ``UNDEFINED`` two-view geometries hloc
    writes are labelled by :func:`label_undefined_two_view_geometries`, since COLMAP 4
    would otherwise ignore every pair. Verification and mapping are pycolmap's.

    Args:
        sfm_dir: output folder (``database.db``, ``models/``, and the largest model's
            ``cameras.bin`` / ``images.bin`` / ``points3D.bin`` / ``frames.bin`` / ``rigs.bin``).
        image_dir: folder of the images named in ``pairs``.
        pairs: text file, one ``name0 name1`` pair per line.
        features, matches: ``hloc.match_dense.main``'s outputs (``features.h5`` with
            hloc-convention keypoints; ``matches.h5`` with ``matches0`` per pair).
        camera_mode: ``pycolmap.CameraMode`` (default ``AUTO``).
        verbose, min_match_score, image_list, image_options, mapper_options: as in
            ``hloc.reconstruction.main``.
        skip_geometric_verification: use all matches as inliers (no RANSAC).
    Returns:
        The largest ``pycolmap.Reconstruction``, or None when pycolmap built none.
    Raises:
        ImportError: hloc is not installed. FileNotFoundError: a missing input file.
    """
    _import_hloc()
    import pycolmap
    from hloc import logger
    from hloc import reconstruction as hrec
    from hloc import triangulation as htri

    sfm_dir, image_dir = Path(sfm_dir), Path(image_dir)
    pairs, features, matches = Path(pairs), Path(features), Path(matches)
    for path in (pairs, features, matches):
        if not path.exists():
            raise FileNotFoundError(f"hloc reconstruction input not found: {path}")
    if camera_mode is None:
        camera_mode = pycolmap.CameraMode.AUTO
    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, sfm_dir / "colmap.LOG.")

    hrec.create_empty_db(database)
    hrec.import_images(image_dir, database, camera_mode, image_list, image_options)
    image_ids = hrec.get_image_ids(database)
    with pycolmap.Database.open(database) as db:
        htri.import_features(image_ids, db, features)
        htri.import_matches(
            image_ids, db, pairs, matches, min_match_score, skip_geometric_verification
        )
    if skip_geometric_verification:
        n = label_undefined_two_view_geometries(database)
        logger.info(f"Labelled {n} unverified two-view geometries for pycolmap 4.")
    else:
        htri.estimation_and_geometric_verification(database, pairs, verbose)
    rec = hrec.run_reconstruction(sfm_dir, database, image_dir, verbose, mapper_options)
    if rec is not None:
        logger.info(f"Reconstruction statistics:\n{rec.summary()}")
    return rec


def triangulation(
    sfm_dir,
    reference_model,
    image_dir,
    pairs,
    features,
    matches,
    *,
    skip_geometric_verification: bool = False,
    estimate_two_view_geometries: bool = False,
    min_match_score: float | None = None,
    verbose: bool = False,
    mapper_options: dict[str, Any] | None = None,
):
    """``hloc.triangulation.main`` (3D points from known poses) that works with pycolmap 4.

    Runs hloc's steps in hloc's order (``create_db_from_model``, ``import_features``,
    ``import_matches``, then either ``estimation_and_geometric_verification``, i.e.
    ``pycolmap.verify_matches``, when ``estimate_two_view_geometries``, or hloc's
    pose-based ``geometric_verification`` (epipolar error against the reference poses,
    no RANSAC), then ``run_triangulation``, i.e. ``pycolmap.triangulate_points``). hloc's
    pose-based verification and ``skip_geometric_verification`` write ``UNDEFINED``
    two-view geometries, which pycolmap 4 ignores (0 points triangulated); they are
    labelled by :func:`label_undefined_two_view_geometries` before triangulation.

    Args:
        sfm_dir: output folder (``database.db`` and the triangulated model).
        reference_model: folder of a COLMAP model with the known cameras and poses
            (image names as in ``pairs``).
        image_dir, pairs, features, matches: as in :func:`reconstruction`.
        skip_geometric_verification, estimate_two_view_geometries, min_match_score,
        verbose, mapper_options: as in ``hloc.triangulation.main``.
    Returns:
        The triangulated ``pycolmap.Reconstruction``.
    Raises:
        ImportError: hloc is not installed. FileNotFoundError: a missing input.
    """
    _import_hloc()
    import pycolmap
    from hloc import logger
    from hloc import triangulation as htri

    sfm_dir, reference_model = Path(sfm_dir), Path(reference_model)
    pairs, features, matches = Path(pairs), Path(features), Path(matches)
    for path in (reference_model, pairs, features, matches):
        if not path.exists():
            raise FileNotFoundError(f"hloc triangulation input not found: {path}")
    sfm_dir.mkdir(parents=True, exist_ok=True)
    database = sfm_dir / "database.db"
    reference = pycolmap.Reconstruction(reference_model)

    image_ids = htri.create_db_from_model(reference, database)
    with pycolmap.Database.open(database) as db:
        htri.import_features(image_ids, db, features)
        htri.import_matches(
            image_ids, db, pairs, matches, min_match_score, skip_geometric_verification
        )
    if not skip_geometric_verification:
        if estimate_two_view_geometries:
            htri.estimation_and_geometric_verification(database, pairs, verbose)
        else:
            with pycolmap.Database.open(database) as db:
                htri.geometric_verification(image_ids, reference, db, features, pairs, matches)
    n = label_undefined_two_view_geometries(database)
    if n:
        logger.info(f"Labelled {n} UNDEFINED two-view geometries for pycolmap 4.")
    rec = htri.run_triangulation(
        sfm_dir, database, Path(image_dir), reference, verbose, mapper_options
    )
    logger.info(f"Finished the triangulation with statistics:\n{rec.summary()}")
    return rec
