#!/usr/bin/env python
"""What an inference setting costs: ``L2M.match`` per pair under two configs of one model.

Two matchers from the same weights (default: the shipped ``l2m-tiny``): its stored config with the
``--a`` overrides and with the ``--b`` overrides (``FIELD=VALUE``, the value in YAML, e.g.
``covisible_scales=[]``, ``upsample_res=null``). They run interleaved, pair by pair, over the
exhaustive pairs of an image folder (default: the 10 Sacre-Coeur photos, 45 pairs), so both see
the same machine load. Prints the median and mean seconds per pair of each and the ratio of the
means (a search that runs on some pairs only moves the mean, not the median); with the scale or
zoom search on, also how often it chose a shrunk image or a tile.

    # the scale search (README, "Scale search before the crop pass")
    python benchmarks/inference_cost.py --a "covisible_scales=[]" "covisible_zooms=[]" --b "covisible_zooms=[]" \
        --threads 1     # about 4 min on 2 cores (the zoom search needs the scale search: off in both)
    # the upsampling pass and the sampling cutoff (README, "Upsampling pass and sampling cutoff")
    python benchmarks/inference_cost.py --a upsample_res=null sample_cutoff=false --threads 1
    # the zoom search (README, "Zoom search")
    python benchmarks/inference_cost.py --a "covisible_zooms=[]" --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

_DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/sacre_coeur/mapping"


def _overrides(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected FIELD=VALUE, e.g. upsample_res=null")
        out[key] = yaml.safe_load(value)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=_DEFAULT_DIR)
    p.add_argument("--weights", default="l2m-tiny")
    p.add_argument("--a", nargs="*", default=[], metavar="FIELD=VALUE", help="overrides of config A")
    p.add_argument("--b", nargs="*", default=[], metavar="FIELD=VALUE", help="overrides of config B")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-pairs", type=int, default=0, help="0: all pairs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    over = {"a": _overrides(args.a, "--a"), "b": _overrides(args.b, "--b")}
    if args.threads:
        torch.set_num_threads(args.threads)

    from l2m_plugin.io import list_images
    from l2m_plugin.matching.build import build_matcher

    names = list_images(args.images)
    pairs = list(itertools.combinations(names, 2))[: args.max_pairs or None]
    matchers = {k: build_matcher(args.weights, **v) for k, v in over.items()}
    times: dict[str, list[float]] = {"a": [], "b": []}
    shrunk, zoomed = {"a": 0, "b": 0}, {"a": 0, "b": 0}
    for a, b in pairs:
        for key, m in matchers.items():
            t = time.perf_counter()
            out = m.match(args.images / a, args.images / b)
            times[key].append(time.perf_counter() - t)
            choice = out.get("covisible_scales", [None])[0]
            shrunk[key] += choice is not None and len(choice) == 2  # (side, factor)
            zoomed[key] += choice is not None and len(choice) == 3  # (side, factor, tile)
    res = {
        "weights": args.weights,
        "overrides": over,
        "pairs": len(pairs),
        "threads": torch.get_num_threads(),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "mean_s": {k: statistics.fmean(v) for k, v in times.items()},
        "pairs_with_a_shrunk_candidate_chosen": shrunk,
        "pairs_with_a_tile_chosen": zoomed,
    }
    res["ratio_b_to_a"] = res["mean_s"]["b"] / res["mean_s"]["a"]
    print(
        f"{len(pairs)} pairs, {res['threads']} thread(s), seconds per pair (median / mean): "
        f"A {over['a']} {res['median_s']['a']:.2f} / {res['mean_s']['a']:.2f}, "
        f"B {over['b']} {res['median_s']['b']:.2f} / {res['mean_s']['b']:.2f} ({res['ratio_b_to_a']:.2f}x the mean); "
        f"a shrunk image chosen for {shrunk['a']} / {shrunk['b']} pairs, a tile for {zoomed['a']} / {zoomed['b']}"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
