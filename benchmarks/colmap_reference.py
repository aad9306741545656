"""A reference COLMAP model for an image folder, from pycolmap's own SIFT pipeline.

``l2m bench colmap --images DIR --model OUT/sparse`` needs a COLMAP model of the images;
this script makes one where there is none (e.g. ``../shared/data/sacre_coeur/mapping``):

    python benchmarks/colmap_reference.py IMAGE_DIR OUT_DIR
    l2m bench colmap --images IMAGE_DIR --model OUT_DIR/sparse --matcher sift

Steps, all pycolmap defaults except the thread counts (1: repeatable, and this machine
is shared): ``pycolmap.extract_features`` (COLMAP's SIFT, CPU; one camera per image,
SIMPLE_RADIAL, focal from EXIF or 1.2 x max side), ``pycolmap.match_exhaustive``
(mutual nearest neighbours + ratio test, two-view geometric verification),
``pycolmap.incremental_mapping`` (``num_threads=1``, ``random_seed=0``). The largest
model (most registered images) is written to ``OUT_DIR/sparse`` (binary) and, for
reading, ``OUT_DIR/sparse_txt``; ``OUT_DIR/reference.json`` has its statistics.

Caveat: such a reference favours SIFT. Its poses are fitted to COLMAP's SIFT keypoints,
and only pairs that SIFT matched well enough share 3D points, so the pair list and the
ground truth are both biased towards what SIFT finds; another matcher's AUC on it is a
lower bound relative to SIFT's. Use a reference built from other data (more images,
another matcher, or a laser scan) to compare matchers fairly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def _count_images(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT COUNT(*) FROM images").fetchone()[0])


def build_reference(image_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False):
    """Run extraction, exhaustive matching and incremental mapping; return the written model folder.

    Raises:
        FileExistsError: ``out_dir/sparse`` exists and not ``overwrite``.
        RuntimeError: the mapper registered no model.
    """
    import pycolmap

    image_dir, out = Path(image_dir), Path(out_dir)
    if (out / "sparse").exists() and not overwrite:
        raise FileExistsError(f"{out / 'sparse'} exists; pass --overwrite to rebuild it")
    for p in ("database.db", "models", "sparse", "sparse_txt"):
        q = out / p
        if q.is_dir():
            shutil.rmtree(q)
        elif q.exists():
            q.unlink()
    out.mkdir(parents=True, exist_ok=True)
    db = out / "database.db"
    t0 = time.perf_counter()
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 1
    pycolmap.extract_features(db, image_dir, extraction_options=extraction, device=pycolmap.Device.cpu)
    t1 = time.perf_counter()
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = 1
    pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
    t2 = time.perf_counter()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = 1
    opts.random_seed = 0
    (out / "models").mkdir()
    models = pycolmap.incremental_mapping(db, image_dir, out / "models", options=opts)
    t3 = time.perf_counter()
    if not models:
        raise RuntimeError(f"pycolmap registered no model from {image_dir}")
    best = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
    for d in ("sparse", "sparse_txt"):
        (out / d).mkdir()
    best.write(out / "sparse")
    best.write_text(out / "sparse_txt")
    stats = {
        "images": str(image_dir),
        "num_images": _count_images(db),
        "registered_images": int(best.num_reg_images()),
        "points3D": int(best.num_points3D()),
        "mean_track_length": float(best.compute_mean_track_length()),
        "mean_reprojection_error_px": float(best.compute_mean_reprojection_error()),
        "num_models": len(models),
        "seconds": {"extract": t1 - t0, "match": t2 - t1, "map": t3 - t2},
        "pycolmap": pycolmap.__version__,
        "options": "pycolmap defaults; num_threads=1 (extraction, matching, mapping), mapper random_seed=0",
    }
    (out / "reference.json").write_text(json.dumps(stats, indent=2))
    return out / "sparse", stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", help="image folder")
    ap.add_argument("out", help="output folder: database.db, sparse/ (binary), sparse_txt/, reference.json")
    ap.add_argument("--overwrite", action="store_true", help="rebuild an existing reference")
    args = ap.parse_args(argv)
    try:
        path, stats = build_reference(args.images, args.out, overwrite=args.overwrite)
    except (FileExistsError, RuntimeError) as e:
        print(f"colmap_reference: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2), file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
