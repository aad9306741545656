#!/usr/bin/env python
"""What the scale search costs: ``L2M.match`` per pair with and without ``covisible_scales``.

Two matchers from the same weights (default: the shipped ``l2m-tiny``): its config as it is, and
the same config with ``covisible_scales`` set to ``--scales`` (``[]``: none). They run
interleaved, pair by pair, over the exhaustive pairs of an image folder (default: the 10
Sacre-Coeur photos, 45 pairs), so both see the same machine load. Prints the median seconds per
pair of each, their ratio, and how often the search chose a shrunk candidate.

    python benchmarks/scale_search_cost.py --threads 1                  # about 4 min on 2 cores
    python benchmarks/scale_search_cost.py --scales 2 --max-pairs 10    # quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

_DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/sacre_coeur/mapping"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=_DEFAULT_DIR)
    p.add_argument("--weights", default="l2m-tiny")
    p.add_argument(
        "--scales", type=float, nargs="*", default=[2.0], help="the searched shrink factors"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-pairs", type=int, default=0, help="0: all pairs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from l2m_plugin.io import list_images
    from l2m_plugin.matching.build import build_matcher

    names = list_images(args.images)
    pairs = list(itertools.combinations(names, 2))[: args.max_pairs or None]
    plain = build_matcher(args.weights, covisible_scales=())
    search = build_matcher(args.weights, covisible_scales=tuple(args.scales))
    if not plain.config.covisible_crop:
        raise SystemExit(
            f"{args.weights}: its config has covisible_crop off; the scale search needs it"
        )
    times = {"plain": [], "search": []}
    chosen = 0
    for a, b in pairs:
        for key, m in (("plain", plain), ("search", search)):
            t = time.perf_counter()
            out = m.match(args.images / a, args.images / b)
            times[key].append(time.perf_counter() - t)
            if key == "search":
                chosen += out.get("covisible_scales", [None])[0] is not None
    res = {
        "weights": args.weights,
        "scales": list(search.config.covisible_scales),
        "pairs": len(pairs),
        "threads": torch.get_num_threads(),
        "median_s_plain": statistics.median(times["plain"]),
        "median_s_search": statistics.median(times["search"]),
        "pairs_with_a_shrunk_candidate_chosen": chosen,
    }
    res["ratio"] = res["median_s_search"] / res["median_s_plain"]
    print(
        f"{len(pairs)} pairs, {res['threads']} thread(s): {res['median_s_plain']:.2f} s per pair without the "
        f"scale search, {res['median_s_search']:.2f} s with scales {res['scales']} ({res['ratio']:.2f}x); "
        f"a shrunk candidate chosen for {chosen} pairs"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
