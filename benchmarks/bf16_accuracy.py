#!/usr/bin/env python
"""How far the bfloat16 mode's warp moves from float32, with *trained* weights.

``benchmarks/speed.py`` measures the bfloat16 error with random weights (the only L2M++
weights available offline), whose chaotic outputs amplify rounding. This script runs a
trained checkpoint (default: l2m-tiny, shipped with the package) in float32 and in bfloat16
autocast on real pairs and reports the end-point error of ``warp0`` between the two, in pixels
of image 1, where the float32 certainty is above ``--certainty`` (as speed.py does).

Example::

    python benchmarks/bf16_accuracy.py --pairs-dir ../shared/data/pairs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="registry name or checkpoint (default: l2m-tiny)")
    p.add_argument("--pairs-dir", type=Path, required=True, help="folder of <name>_A / <name>_B pairs")
    p.add_argument("--certainty", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from l2m_plugin.hardware import cpu_bf16_support
    from l2m_plugin.io import list_images
    from l2m_plugin.models.matcher import load_matcher
    from l2m_plugin.weights import DEFAULT_WEIGHTS

    if cpu_bf16_support() == "none":
        print("this CPU has no bfloat16 instructions: the bfloat16 mode runs float32 here", file=sys.stderr)
        return 2
    weights = args.weights or DEFAULT_WEIGHTS
    models = {dt: load_matcher(weights, dtype=dt) for dt in ("float32", "bfloat16")}
    names = list_images(args.pairs_dir)
    print(f"weights: {models['float32'].weights_name}, config {models['float32'].config.to_dict()}")
    print(f"| pair | pixels (certainty > {args.certainty:.2f}) | EPE mean | median | p95 | > 0.5 px | certainty max diff |")
    print("|---|---|---|---|---|---|---|")
    for a in [n for n in names if n.rsplit(".", 1)[0].endswith("_A")]:
        stem = a.rsplit("_", 1)[0]
        b = next(n for n in names if n.startswith(stem + "_B."))
        with torch.inference_mode():
            out = {dt: m.match(str(args.pairs_dir / a), str(args.pairs_dir / b)) for dt, m in models.items()}
        ref, low = out["float32"], out["bfloat16"]
        w1, h1 = ref["size1"]
        scale = torch.tensor([w1 / 2, h1 / 2])
        mask = ref["certainty0"][0] > args.certainty
        epe = ((low["warp0"][0] - ref["warp0"][0]) * scale).norm(dim=-1)[mask].numpy()
        cdiff = float((low["certainty0"] - ref["certainty0"]).abs().max())
        if not len(epe):
            print(f"| {stem} | 0 | - | - | - | - | {cdiff:.3f} |")
            continue
        print(
            f"| {stem} | {len(epe)} | {epe.mean():.3f} px | {np.median(epe):.3f} px | "
            f"{np.percentile(epe, 95):.3f} px | {100 * (epe > 0.5).mean():.1f}% | {cdiff:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
