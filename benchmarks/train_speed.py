"""Speed of the training step of an architecture on CPU: parameters, forward and train-step time.

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --arch tiny --size 320 --batch 8 --threads 1

Prints one line per setting: the parameter count, the time of ``forward_train`` without
gradients (the training-size forward of the whole network, non-symmetric) and of one
full training step (forward, RoMa's loss, backward, AdamW), median of ``--repeat`` runs
after one warm-up, in float32 and (where the CPU has bf16 instructions) bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--size", type=int, nargs="+", default=[320])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from l2m_plugin import L2M, MatcherConfig
    from l2m_plugin.coords import normalized_grid
    from l2m_plugin.training.losses import RobustLoss

    for size in args.size:
        torch.manual_seed(0)
        cfg = MatcherConfig(arch=args.arch, coarse_res=size, upsample_res=None, normalize=True, gp_solve="cholesky")
        model = L2M(cfg).train()
        n = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = RobustLoss()
        b = args.batch
        x0, x1 = torch.rand(b, 3, size, size), torch.rand(b, 3, size, size)
        warp = (normalized_grid(size, size) * 0.9)[None].expand(b, size, size, 2).contiguous()
        valid = torch.ones(b, size, size, dtype=torch.bool)
        data = {"image0": x0, "image1": x1}
        for dtype in args.dtypes:
            res = _measure(model, opt, loss_fn, data, warp, valid, dtype, args.repeat)
            print(f"arch={args.arch} size={size} batch={b} threads={args.threads} dtype={dtype} "
                  f"params={n} forward={res['forward']:.2f}s train_step={res['train_step']:.2f}s "
                  f"steps/s={1 / res['train_step']:.3f}", flush=True)


def _measure(model, opt, loss_fn, data, warp, valid, dtype: str, repeat: int) -> dict[str, float]:
    """Median seconds of a no-grad forward and of a training step (one warm-up each)."""

    def autocast():
        if dtype == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fwd():
        with torch.no_grad(), autocast():
            model.forward_train(data)

    def step():
        with autocast():
            out = model.forward_train(data)
        loss, _ = loss_fn(out, warp, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()

    res = {}
    for name, fn in (("forward", fwd), ("train_step", step)):
        fn()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        res[name] = statistics.median(ts)
    return res


if __name__ == "__main__":
    main()
