#!/usr/bin/env python
"""Nearest-neighbour PCK of encoder features on held-out synthetic pairs (L2M stage 1's target).

For each ``--weights`` and each ``--synth`` folder (``l2m-synth`` pairs made from photos
*not* used in training), :func:`l2m_plugin.eval.features.feature_nn_pck` computes the
encoder's features at one pyramid level (``--level``, default 16: the coarse features)
for both images, takes for every image-0 feature cell with ground truth its nearest
neighbour (cosine similarity) among all image-1 cells, and scores that cell's centre
against the exact ground-truth warp: error in pixels of the original image 1, PCK at
``--thresholds`` (default 8, 16, 32 px), pooled over all points and averaged per pair,
plus mutual nearest neighbours. Two reference rows per folder: perfect features (the
nearest image-1 cell centre to the ground truth) and a random cell (chance). The full
protocol is in the module docstring of ``l2m_plugin/eval/features.py``.

Weights: a registry name (``l2m-tiny``, the default), a checkpoint path, or
``random:<preset>`` (``random:tiny``): a random-initialised network of that
``l2m_plugin.config.PRESETS`` architecture, ``torch.manual_seed(--seed)``, as a floor.

Example (2 weights x 2 folders of 111 pairs, under a minute on 2 cores)::

    python benchmarks/feature_pck.py --weights random:tiny --weights l2m-tiny \\
        --synth outputs/synth/heldout_l2m --synth outputs/synth/heldout_hard \\
        --out outputs/feature_pck

Prints Markdown tables and writes ``feature_pck.json`` and ``feature_pck.md`` to ``--out``
(each written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", action="append", default=None,
                   help="registry name, checkpoint path or random:<preset> (repeatable; default: l2m-tiny)")  # fmt: skip
    p.add_argument("--synth", type=Path, action="append", required=True, help="l2m-synth folder (repeatable)")
    p.add_argument("--level", type=int, default=16, help="encoder pyramid level: 1, 2, 4, 8 or 16 (coarse)")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="evaluation size (default: each image's size rounded to the level's stride)")  # fmt: skip
    p.add_argument("--thresholds", type=float, nargs="+", default=None, help="PCK thresholds in original pixels")
    p.add_argument("--max-pairs", type=int, default=None, help="first N pairs (sorted ids) of each folder")
    p.add_argument("--max-points", type=int, default=None, help="at most N query cells per pair")
    p.add_argument("--seed", type=int, default=0, help="seed of random:<preset> weights and of --max-points draws")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("outputs/feature_pck"), help="folder for feature_pck.json/.md")
    return p.parse_args(argv)


def load_weights(spec: str, seed: int):
    """An :class:`~l2m_plugin.L2M` for a ``--weights`` value (see the module docstring)."""
    from l2m_plugin import L2M

    if spec.startswith("random:"):
        from l2m_plugin.config import PRESETS
        from l2m_plugin.testing.random_init import random_matcher

        preset = spec.split(":", 1)[1]
        if preset not in PRESETS:
            raise ValueError(f"--weights {spec}: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return random_matcher(PRESETS[preset], seed=seed)
    return L2M.from_pretrained(spec)


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}"


def report(res: dict) -> str:
    """Markdown tables of a results dict (as written to feature_pck.json)."""
    ts = [f"{t:g}" for t in res["thresholds_px"]]
    rows = res["results"]
    head = "| weights | data | pairs | points | mean px | median px | " + " | ".join(f"PCK@{t} %" for t in ts) + " |"
    sep = "|---|---|---:|---:|---:|---:|" + "---:|" * len(ts)
    lines = [
        f"### Feature nearest-neighbour PCK, level {res['level']} (pooled over points)",
        "",
        "Errors and thresholds in pixels of the original image 1. Reference rows: perfect features "
        "(the image-1 cell centre nearest to the ground truth) and a uniformly random image-1 cell.",
        "",
        head,
        sep,
    ]
    refs = {}
    for row in rows:
        r = row["result"]
        lines.append(
            f"| {row['weights']} | {row['data']} | {r['pairs']} | {r['points']} | {r['mean_px']:.1f} | "
            f"{r['median_px']:.1f} | " + " | ".join(_pct(r["pck"][t]) for t in ts) + " |"
        )
        refs.setdefault((row["data"], tuple(round(c, 1) for c in r["cell_px"])), r)
    for (data, cell), r in refs.items():
        cell_s = f"{cell[0]:g} px" if cell[0] == cell[1] else f"{cell[0]:g} x {cell[1]:g} px"
        lines.append(
            f"| perfect features ({cell_s} cells) | {data} | {r['pairs']} | {r['points']} | "
            f"{r['ceiling_mean_px']:.1f} | - | " + " | ".join(_pct(r["ceiling_pck"][t]) for t in ts) + " |"
        )
        lines.append(
            f"| random cell | {data} | {r['pairs']} | {r['points']} | - | - | "
            + " | ".join(_pct(r["chance_pck"][t]) for t in ts) + " |"
        )  # fmt: skip
    lines += [
        "",
        "### Per-pair means and mutual nearest neighbours",
        "",
        "| weights | data | per-pair mean px | per-pair median px | "
        + " | ".join(f"per-pair PCK@{t} %" for t in ts)
        + " | mutual NN % | "
        + " | ".join(f"mutual PCK@{t} %" for t in ts)
        + " |",
        "|---|---|---:|---:|" + "---:|" * (2 * len(ts) + 1),
    ]
    for row in rows:
        r = row["result"]
        pp, mu = r["per_pair_mean"], r["mutual"]
        lines.append(
            f"| {row['weights']} | {row['data']} | {pp['mean_px']:.1f} | {pp['median_px']:.1f} | "
            + " | ".join(_pct(pp["pck"][t]) for t in ts)
            + f" | {_pct(mu['share'])} | "
            + " | ".join(_pct(mu["pck"][t]) for t in ts)
            + " |"
        )
    return "\n".join(lines)



def main(argv=None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    from l2m_plugin.eval.features import DEFAULT_THRESHOLDS_PX, feature_nn_pck, iter_synth_pairs
    from l2m_plugin.files import atomic_text

    for d in args.synth:
        if not d.is_dir():
            print(f"feature_pck.py: error: --synth {d} is not a folder", file=sys.stderr)
            return 2
    weights = args.weights or ["l2m-tiny"]
    thresholds = tuple(args.thresholds) if args.thresholds else DEFAULT_THRESHOLDS_PX
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "level": args.level,
        "size": args.size,
        "thresholds_px": list(thresholds),
        "max_pairs": args.max_pairs,
        "max_points": args.max_points,
        "seed": args.seed,
        "results": [],
    }
    t0 = time.perf_counter()
    for spec in weights:
        model = load_weights(spec, args.seed)
        arch = model.config.arch if isinstance(model.config.arch, str) else "custom"
        for d in args.synth:
            r = feature_nn_pck(
                model, iter_synth_pairs(d, args.max_pairs), level=args.level, size=args.size,
                thresholds_px=thresholds, max_points=args.max_points,
                generator=torch.Generator().manual_seed(args.seed),
            )  # fmt: skip
            res["results"].append(
                {"weights": spec, "weights_name": model.weights_name, "arch": arch, "data": d.name, "synth": str(d), "result": r}
            )
            print(f"{spec} on {d.name}: {r['pairs']} pairs, {r['points']} points, {r['seconds']} s", file=sys.stderr)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    md = report(res)
    print(md)
    atomic_text(args.out / "feature_pck.json", json.dumps(res, indent=2))
    atomic_text(args.out / "feature_pck.md", md + "\n")
    print(f"wrote {args.out / 'feature_pck.json'} and {args.out / 'feature_pck.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
