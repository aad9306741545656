#!/usr/bin/env python
"""Outliers or imprecision? The epipolar error of a pose benchmark's cached matches.

Reads the ``pair_matches.h5`` that ``l2m bench colmap`` writes into its run folder
(``OUT/colmap/TAG/``) and the COLMAP model the benchmark used, and measures each match's
distance to the model's epipolar lines (:func:`l2m_plugin.geometry.epipolar_distance`: the
larger of the two images' point-to-line distances, in pixels of the model's cameras, after
the benchmark's own undistortion of the keypoints, ``ColmapPoseBenchmark.undistort``; F from
the model's poses and ``K``, :func:`~l2m_plugin.geometry.fundamental_from_pose`). Prints, per
run: the share of matches within 0.5 / 1 / 5 px, the median error of those within 5 px (the
precision of the inliers), and the same by certainty bin (the stored scores). A reference
model made by SIFT favours SIFT's keypoints (README, "Synthetic homographies ... any COLMAP
model").

    python benchmarks/match_epipolar_error.py --images ../shared/data/sacre_coeur/mapping \\
        --model REF/sparse RUNS/bench/colmap/colmap/TAG_A RUNS/bench/colmap/colmap/TAG_B
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

BINS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 0.97), (0.97, 0.99), (0.99, 1.01))


def summarize(err: np.ndarray) -> dict:
    """Share within 0.5 / 1 / 5 px and the median of the errors within 5 px, of (N,) errors."""
    if not len(err):
        return {"matches": 0}
    inl = err[err < 5]
    return {
        "matches": int(len(err)),
        "within_0.5px": float((err < 0.5).mean()),
        "within_1px": float((err < 1).mean()),
        "within_5px": float((err < 5).mean()),
        "median_px_within_5px": float(np.median(inl)) if len(inl) else float("nan"),
    }


def run_errors(run_dir: Path, bench) -> tuple[np.ndarray, np.ndarray]:
    """(errors (N,), scores (N,)) of every cached match of ``bench``'s pairs in ``run_dir``.

    ``bench``: the :class:`~l2m_plugin.eval.colmap_pose.ColmapPoseBenchmark` of the run (its
    image folder and model). The matches are read as the benchmark's evaluation reads them
    (:class:`~l2m_plugin.formats.pair_store.PairMatchStore`: COLMAP pixels, the stored image
    sizes); keypoints the camera model cannot undistort are left out.

    Raises:
        FileNotFoundError: no ``pair_matches.h5`` in ``run_dir``.
        KeyError: a benchmark pair is missing from it (the run was made on another model).
    """
    import torch

    from l2m_plugin.formats.pair_store import PairMatchStore, pair_store_path
    from l2m_plugin.geometry import epipolar_distance, fundamental_from_pose

    path = pair_store_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (pass the folder an `l2m bench colmap` run wrote)")
    store = PairMatchStore(path, read_only=True)
    sizes = store.image_sizes()
    errs, scores = [], []
    for p in bench.load_pairs():
        if (p.name0, p.name1) not in store:
            raise KeyError(f"{path} has no matches of the pair {p.name0} / {p.name1}: a run on another model?")
        k0, k1, sc = store.read(p.name0, p.name1)
        k0 = bench.undistort(p.name0, k0, sizes[p.name0])
        k1 = bench.undistort(p.name1, k1, sizes[p.name1])
        keep = np.isfinite(k0).all(1) & np.isfinite(k1).all(1)
        Fm = fundamental_from_pose(torch.from_numpy(p.K0), torch.from_numpy(p.K1), torch.from_numpy(p.T_0to1))
        errs.append(epipolar_distance(torch.from_numpy(k0[keep]), torch.from_numpy(k1[keep]), Fm).numpy())
        scores.append(sc[keep])
    return np.concatenate(errs), np.concatenate(scores)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run folders of `l2m bench colmap` (hold pair_matches.h5)")
    p.add_argument("--images", type=Path, required=True, help="the image folder of the benchmark")
    p.add_argument("--model", type=Path, required=True, help="the COLMAP model of the benchmark")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from l2m_plugin.eval.colmap_pose import ColmapPoseBenchmark

    bench = ColmapPoseBenchmark(args.images, conf={"data": {"model": str(args.model)}})
    res = {}
    for run in args.runs:
        err, sc = run_errors(run, bench)
        r = summarize(err)
        r["by_certainty"] = {f"{lo}-{hi}": summarize(err[(sc >= lo) & (sc < hi)]) for lo, hi in BINS}
        res[str(run)] = r
        print(
            f"{run.name}: {r['matches']} matches, within 0.5 / 1 / 5 px {100 * r['within_0.5px']:.1f}% / "
            f"{100 * r['within_1px']:.1f}% / {100 * r['within_5px']:.1f}%; median of those within 5 px "
            f"{r['median_px_within_5px']:.2f} px"
        )
        for k, b in r["by_certainty"].items():
            if b["matches"]:
                print(f"  certainty {k}: {b['matches']} matches, within 5 px {100 * b['within_5px']:.1f}%, "
                      f"median within 5 px {b['median_px_within_5px']:.2f} px")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
