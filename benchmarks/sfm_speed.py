#!/usr/bin/env python
"""SfM matching cost: every image encoded once (``DensePairMatcher``) against matching each pair
independently (``L2M.match`` per pair, two encoder passes each), on the same images and weights.

Runs both on the exhaustive pairs of an image folder (default: the 10 Sacre-Coeur photos,
45 pairs) with seeded random weights (BatchNorm calibrated on two of the images), and prints the time per pair, the encoder passes and
the speed-up. Both produce the same dense outputs (tests/test_matcher_api.py checks
``match_features(encode(a), encode(b)) == forward``).

    python benchmarks/sfm_speed.py --coarse-res 224 --upsample-res 0      # a few minutes
    python benchmarks/sfm_speed.py                                         # 560 / 864: hours on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

_DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/sacre_coeur/mapping"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=_DEFAULT_DIR)
    p.add_argument("--coarse-res", type=int, default=560)
    p.add_argument("--upsample-res", type=int, default=864, help="0: no upsampling pass")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-matches", type=int, default=5000)
    p.add_argument("--max-images", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from l2m_plugin.config import PRESETS
    from l2m_plugin.io import list_images
    from l2m_plugin.matching.dense import DensePairMatcher
    from l2m_plugin.testing.random_init import random_matcher

    names = list_images(args.images)[: args.max_images]
    pairs = list(itertools.combinations(names, 2))
    cfg = PRESETS["romatch"].replace(coarse_res=args.coarse_res, upsample_res=args.upsample_res or None)
    # seeded random weights, BatchNorm calibrated on two of the images (well-conditioned GP)
    model = random_matcher(cfg, seed=0, calibration_images=(args.images / names[0], args.images / names[1]))

    t = time.perf_counter()
    pm = DensePairMatcher(model, args.images, num_matches=args.num_matches)
    for a, b in pairs:
        pm(a, b)
    once = time.perf_counter() - t
    passes = pm.num_encoder_passes

    t = time.perf_counter()
    with torch.inference_mode():
        for a, b in pairs:
            out = model.match(args.images / a, args.images / b)
            model.sample(out, args.num_matches, generator=torch.Generator().manual_seed(0))
    indep = time.perf_counter() - t

    print(f"{len(names)} images, {len(pairs)} exhaustive pairs, coarse {cfg.coarse_res}, upsample {cfg.upsample_res}, "
          f"{args.threads} threads, {args.num_matches} matches")  # fmt: skip
    print("| mode | encoder passes | total s | s per pair |\n|---|---:|---:|---:|")
    print(f"| each image encoded once (l2m reconstruct) | {passes} | {once:.1f} | {once / len(pairs):.2f} |")
    print(f"| each pair matched independently | {2 * len(pairs)} | {indep:.1f} | {indep / len(pairs):.2f} |")
    print(f"speed-up: {indep / once:.2f}x")


if __name__ == "__main__":
    main()
