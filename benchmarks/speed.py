#!/usr/bin/env python
"""CPU speed and peak memory of ``l2m_plugin`` next to romatch 0.1.2, same weights, same inputs.

Both implementations compute the same function here: ``l2m_plugin`` runs the
``"romatch"`` preset (ImageNet normalisation, RoMa displacement scaling, Cholesky
GP solve) at the requested resolutions, and romatch's ``roma_model`` is built
from the very same random weights. What is timed, per implementation:

* ``match``: ``L2M.match(path0, path1)`` / ``RegressionMatcher.match(path0, path1)``
  (image loading and resizing included, as a user calls it);
* ``sample``: ``L2M.sample(out, num=N, generator=...)`` /
  ``RegressionMatcher.sample(warp, certainty, num=N)`` followed by
  ``to_pixel_coordinates`` (our ``sample`` returns pixel keypoints, so romatch's
  conversion is counted too; it costs next to nothing).

How: the parent process draws one random checkpoint (``torch.manual_seed(seed)``,
``L2M(config)``, random BatchNorm running statistics) and writes it in the
official two-file layout (``save_official_layout``) to a temporary directory. Each
implementation then runs in its own child process (this script re-invoked with a
hidden ``--child`` flag) that loads only what it needs from those files, so its
peak RSS (``ru_maxrss``) is its own: the l2m child through
``l2m_plugin.weights.load_matcher``, the romatch child through ``torch.load`` +
``roma_model``. Memory is reported three ways: RSS right after loading the model,
the whole-process peak, and the peak during the timed ``match`` + ``sample`` runs
alone (the kernel's peak counter is reset after loading by writing ``5`` to
``/proc/self/clear_refs``; romatch's loading briefly holds both a randomly
initialised model and the loaded state dict, which the whole-process peak
includes and the inference peak does not). Each child saves its dense output of the last run; the parent
compares them (max |difference| of warp and certainty in both directions).

Example (a few minutes, ~7 GB per child at the defaults)::

    python benchmarks/speed.py --json /tmp/speed.json
    python benchmarks/speed.py --coarse-res 224 --upsample-res 0 --runs 1 --warmup 0   # quick
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_DEFAULT_PAIRS = Path(__file__).resolve().parents[1].parent / "shared/data/pairs"
_DEFAULT_SFM = Path(__file__).resolve().parents[1].parent / "shared/data/sacre_coeur/mapping"
_IMPLS = ("l2m", "romatch")
_LABELS = {"l2m": "l2m_plugin", "romatch": "romatch"}


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time match + sample of l2m_plugin and romatch 0.1.2 on CPU, on the same random "
        "weights and images, each in its own process (clean peak RSS), and check that the outputs agree.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--image0", type=Path, default=_DEFAULT_PAIRS / "sacre_coeur_A.jpg", help="first image"
    )
    p.add_argument(
        "--image1", type=Path, default=_DEFAULT_PAIRS / "sacre_coeur_B.jpg", help="second image"
    )
    p.add_argument(
        "--coarse-res", type=int, default=560, help="coarse resolution (square, multiple of 14)"
    )
    p.add_argument(
        "--upsample-res",
        type=int,
        default=864,
        help="upsampling-pass resolution (square, multiple of 8); 0 = none",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--runs", type=int, default=3, help="timed runs (medians are reported)")
    p.add_argument("--num-matches", type=int, default=5000, help="matches drawn by sample")
    p.add_argument(
        "--only",
        choices=("both", "l2m", "romatch"),
        default="both",
        help="which implementation(s) to run",
    )
    p.add_argument(
        "--l2m-dtypes",
        default="float32",
        help="comma-separated l2m_plugin modes to time (float32 = exact; bfloat16 / float16 = autocast); "
        "each non-float32 mode gets its warp end-point error against l2m_plugin float32 (or romatch)",
    )
    p.add_argument(
        "--memory-budget-gb",
        type=float,
        default=None,
        help="l2m_plugin's MatcherConfig.memory_budget_gb (refiners in bands of rows; same output)",
    )
    p.add_argument(
        "--sample-sizes",
        default="5000,20000,100000",
        help="comma-separated numbers of matches at which the l2m float32 child times sample() "
        "with the grid and the exact density (the exact one only up to --exact-max); empty: skip",
    )
    p.add_argument(
        "--exact-max", type=int, default=20000, help="largest num for the exact (quadratic) density"
    )
    p.add_argument(
        "--sfm-images",
        type=str,
        default=str(_DEFAULT_SFM),
        help="SfM row: exhaustive pairs of this folder matched as `l2m reconstruct` does (default model, "
        "encode once, sample, tracks), exact vs grid density; '' to skip",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and of sampling")
    # Internal: run one implementation in this process (used by the parent).
    p.add_argument("--child", choices=_IMPLS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.l2m_dtypes = [d.strip() for d in args.l2m_dtypes.split(",") if d.strip()]
    try:
        args.sample_sizes = [int(v) for v in args.sample_sizes.split(",") if v.strip()]
    except ValueError:
        p.error(f"--sample-sizes takes comma-separated integers, got {args.sample_sizes!r}")
    bad = [d for d in args.l2m_dtypes if d not in ("float32", "bfloat16", "float16")]
    if bad or not args.l2m_dtypes:
        p.error(f"--l2m-dtypes takes float32, bfloat16, float16; got {args.l2m_dtypes}")
    if args.coarse_res <= 0 or args.coarse_res % 14:
        p.error(f"--coarse-res must be a positive multiple of 14, got {args.coarse_res}")
    if args.upsample_res < 0 or args.upsample_res % 8:
        p.error(f"--upsample-res must be 0 or a positive multiple of 8, got {args.upsample_res}")
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.num_matches < 1:
        p.error("--runs, --threads and --num-matches must be >= 1 and --warmup >= 0")
    for im in (args.image0, args.image1):
        if not im.is_file():
            p.error(f"image not found: {im}")
    return args


def _config(args):
    from l2m_plugin.config import PRESETS

    return PRESETS["romatch"].replace(
        coarse_res=args.coarse_res,
        upsample_res=args.upsample_res or None,
        dtype=args.dtype,
        memory_budget_gb=args.memory_budget_gb,
    )


def _key(impl: str, dtype: str) -> str:
    """Result key: ``romatch``, ``l2m`` (float32) or ``l2m-<dtype>``."""
    return impl if impl == "romatch" or dtype == "float32" else f"l2m-{dtype}"


def _label(key: str) -> str:
    return _LABELS.get(key, key.replace("l2m-", "l2m_plugin "))


def _rss_now_gib() -> float:
    """Current resident set size (VmRSS) in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM, which ``ru_maxrss`` reads) to the current
    RSS, so that the peak of inference alone can be read later. False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _log(impl: str, msg: str) -> None:
    print(f"[{impl}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- parent
def _make_checkpoint(args, workdir: Path) -> tuple[Path, Path]:
    """Random weights (seeded) in the official layout: matcher file + DINOv2 file."""
    import torch

    from l2m_plugin import L2M
    from l2m_plugin.weights import save_official_layout

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    model = L2M(_config(args))
    # Random BatchNorm running statistics (fresh ones are 0 / 1, which would hide
    # any mix-up of mean and variance between the two implementations).
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    paths = save_official_layout(model, workdir / "matcher.pth", workdir / "encoder.pth")
    del model
    gc.collect()
    print(
        f"random checkpoint (seed {args.seed}) written in {time.perf_counter() - t:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return paths


def _run_child(args, impl: str, workdir: Path, dtype: str = "float32") -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child", impl,
        "--workdir", str(workdir),
        "--image0", str(args.image0),
        "--image1", str(args.image1),
        "--coarse-res", str(args.coarse_res),
        "--upsample-res", str(args.upsample_res),
        "--threads", str(args.threads),
        "--warmup", str(args.warmup),
        "--runs", str(args.runs),
        "--num-matches", str(args.num_matches),
        "--seed", str(args.seed),
        "--dtype", dtype,
        "--sample-sizes", ",".join(map(str, args.sample_sizes)),
        "--exact-max", str(args.exact_max),
        "--sfm-images", "",
    ] + (["--memory-budget-gb", str(args.memory_budget_gb)] if args.memory_budget_gb else [])  # fmt: skip
    subprocess.run(cmd, check=True)
    with open(workdir / f"{_key(impl, dtype)}.json") as f:
        return json.load(f)


def _compare(workdir: Path) -> dict:
    import torch

    a = torch.load(workdir / "l2m_out.pt", weights_only=True)
    b = torch.load(workdir / "romatch_out.pt", weights_only=True)
    diffs = {}
    for k in ("warp0", "warp1", "certainty0", "certainty1"):
        if a[k].shape != b[k].shape:
            diffs[k] = {"error": f"shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"}
            continue
        d = (a[k].double() - b[k].double()).abs()
        diffs[k] = {"max_abs": d.max().item(), "mean_abs": d.mean().item()}
    return diffs


def _epe(workdir: Path, key: str, ref: str, sizes: dict) -> dict:
    """Warp end-point error (pixels of the original target image) of ``key`` against ``ref``,
    where the reference certainty exceeds 0.5 (both directions pooled)."""
    import numpy as np
    import torch

    a = torch.load(workdir / f"{key}_out.pt", weights_only=True)
    b = torch.load(workdir / f"{ref}_out.pt", weights_only=True)
    errs = []
    for d, (w, h) in (("0", sizes["size1"]), ("1", sizes["size0"])):
        scale = torch.tensor([w / 2, h / 2], dtype=torch.float64)
        e = ((a[f"warp{d}"].double() - b[f"warp{d}"].double()) * scale).norm(dim=-1)
        errs.append(e[b[f"certainty{d}"] > 0.5])
    e = torch.cat(errs)
    if e.numel() == 0:
        return {"reference": ref, "pixels": 0}
    return {
        "reference": ref,
        "pixels": int(e.numel()),
        "mean_px": e.mean().item(),
        "median_px": e.median().item(),
        "p95_px": float(np.percentile(e.numpy(), 95)),  # torch.quantile is limited to 2^24 values
        "frac_over_0.5px": (e > 0.5).double().mean().item(),
    }


def _fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def _report(
    args,
    settings: dict,
    results: dict,
    diffs: dict | None,
    epes: dict | None = None,
    sfm: list | None = None,
) -> tuple[str, dict]:
    lines = [
        f"Settings: coarse {args.coarse_res}x{args.coarse_res}, upsample "
        + (f"{args.upsample_res}x{args.upsample_res}" if args.upsample_res else "none")
        + f", symmetric, l2m_plugin modes {'/'.join(args.l2m_dtypes)}"
        + (f" (memory budget {args.memory_budget_gb} GiB)" if args.memory_budget_gb else "")
        + f", romatch float32, {args.threads} threads, {args.warmup} warm-up + {args.runs} timed runs "
        f"(medians), {args.num_matches} matches, seed {args.seed}",
        f"Images: {settings['image0']} ({settings['size0'][0]}x{settings['size0'][1]}), "
        f"{settings['image1']} ({settings['size1'][0]}x{settings['size1'][1]})",
        f"Date: {settings['date']}; CPU: {settings['cpu']} ({settings['cpu_count']} logical cores); "
        f"torch {settings['torch']}; romatch {settings['romatch']}; Python {settings['python']}",
        "",
        "| impl | match s | sample s | total s | RSS after load GiB | peak RSS GiB | peak RSS in match+sample GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for impl in results:
        r = results[impl]
        lines.append(
            f"| {_label(impl)} | {_fmt(r['match_s'])} | {_fmt(r['sample_s'], 3)} | {_fmt(r['total_s'])} | "
            f"{_fmt(r['load_rss_gib'])} | {_fmt(r['peak_rss_gib'])} | "
            f"{_fmt(r['infer_peak_rss_gib']) if r['infer_peak_rss_gib'] is not None else 'n/a'} |"
        )
    ratios = {}
    if "l2m" in results and "romatch" in results:
        a, b = results["l2m"], results["romatch"]
        ratios = {
            "match_time": a["match_s"] / b["match_s"],
            "sample_time": a["sample_s"] / b["sample_s"],
            "total_time": a["total_s"] / b["total_s"],
            "peak_rss": a["peak_rss_gib"] / b["peak_rss_gib"],
        }
        if a["infer_peak_rss_gib"] is not None and b["infer_peak_rss_gib"] is not None:
            ratios["infer_peak_rss"] = a["infer_peak_rss_gib"] / b["infer_peak_rss_gib"]
        lines += [
            "",
            f"l2m / romatch time: {ratios['total_time']:.2f} (match {ratios['match_time']:.2f}, "
            f"sample {ratios['sample_time']:.2f})",
            f"l2m / romatch peak memory: {ratios['peak_rss']:.2f}"
            + (
                f" (whole process; match+sample only: {ratios['infer_peak_rss']:.2f})"
                if "infer_peak_rss" in ratios
                else " (whole process)"
            ),
        ]
    for key in results:
        if key.startswith("l2m-") and "romatch" in results:
            a, b = results[key], results["romatch"]
            r = {
                "total_time": a["total_s"] / b["total_s"],
                "peak_rss": a["peak_rss_gib"] / b["peak_rss_gib"],
            }
            ratios[key] = r
            lines.append(
                f"{_label(key)} / romatch time: {r['total_time']:.2f} (speed-up {1 / r['total_time']:.2f}x), "
                f"peak memory: {r['peak_rss']:.2f}"
            )
    if epes:
        lines += [
            "",
            "Warp end-point error where the reference certainty > 0.5 (pixels of the original images):",
            "",
        ]
        lines += [
            "| mode | reference | pixels | mean px | median px | p95 px | share > 0.5 px |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for key, e in epes.items():
            if e.get("pixels"):
                lines.append(
                    f"| {_label(key)} | {_label(e['reference'])} | {e['pixels']} | {e['mean_px']:.3f} | "
                    f"{e['median_px']:.3f} | {e['p95_px']:.3f} | {e['frac_over_0.5px']:.3f} |"
                )
    sweep = results.get("l2m", {}).get("sampling")
    if sweep:
        lines += [
            "",
            "sample() on the l2m_plugin float32 output, by density estimate (l2m_plugin.sampling):",
            "",
        ]
        lines += ["| matches | exact s | grid s | exact / grid |", "|---:|---:|---:|---:|"]
        for r in sweep:
            ex = r.get("exact_s")
            lines.append(
                f"| {r['num']} | {_fmt(ex, 3) if ex is not None else 'not run (quadratic)'} | {_fmt(r['grid_s'], 3)} | "
                + (f"{ex / r['grid_s']:.1f}x |" if ex is not None else "|")
            )
    if sfm:
        lines += ["", f"SfM matching as `l2m reconstruct` (default model, {sfm[0]['pairs']} exhaustive pairs of "
                  f"{args.sfm_images}, encode once, sample({args.num_matches}), tracks):", ""]  # fmt: skip
        lines += [
            "| density | match + sample s | tracks s | pairs per minute |",
            "|---|---:|---:|---:|",
        ]
        for r in sfm:
            lines.append(
                f"| {r['density']} | {_fmt(r['match_s'], 1)} | {_fmt(r['tracks_s'], 1)} | {_fmt(r['pairs_per_min'], 1)} |"
            )
        ratios["sfm_pairs_per_min"] = sfm[-1]["pairs_per_min"] / sfm[0]["pairs_per_min"]
        lines.append(f"grid / exact pairs per minute: {ratios['sfm_pairs_per_min']:.2f}x")
    if diffs:
        lines += ["", "Equivalence (last run, l2m_plugin vs romatch):", ""]
        lines += ["| output | max abs diff | mean abs diff |", "|---|---:|---:|"]
        for k, d in diffs.items():
            if "error" in d:
                lines.append(f"| {k} | {d['error']} | |")
            else:
                lines.append(f"| {k} | {d['max_abs']:.3g} | {d['mean_abs']:.3g} |")
    return "\n".join(lines), ratios


def _parent(args) -> None:
    import importlib.metadata as md

    import torch
    from PIL import Image

    impls = _IMPLS if args.only == "both" else (args.only,)
    settings = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "romatch": md.version("romatch"),
        "python": platform.python_version(),
        "image0": str(args.image0),
        "image1": str(args.image1),
        "size0": Image.open(args.image0).size,
        "size1": Image.open(args.image1).size,
        "coarse_res": args.coarse_res,
        "upsample_res": args.upsample_res or None,
        "threads": args.threads,
        "warmup": args.warmup,
        "runs": args.runs,
        "num_matches": args.num_matches,
        "seed": args.seed,
        "l2m_config": _config(args).to_dict(),
    }
    with tempfile.TemporaryDirectory(prefix="l2m_speed_") as tmp:
        workdir = Path(tmp)
        _make_checkpoint(args, workdir)
        results = {}
        for impl in impls:
            for dtype in args.l2m_dtypes if impl == "l2m" else ["float32"]:
                results[_key(impl, dtype)] = _run_child(args, impl, workdir, dtype)
        diffs = _compare(workdir) if "l2m" in results and "romatch" in results else None
        ref = "l2m" if "l2m" in results else ("romatch" if "romatch" in results else None)
        epes = {k: _epe(workdir, k, ref, settings) for k in results if k.startswith("l2m-") and ref}
    sfm = _sfm_rows(args) if args.sfm_images else None
    table, ratios = _report(args, settings, results, diffs, epes, sfm)
    print(table, flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(
                {
                    "settings": settings,
                    "results": results,
                    "ratios": ratios,
                    "equivalence": diffs,
                    "end_point_error": epes,
                    "sfm": sfm,
                    "table": table,
                },
                f,
                indent=2,
            )
        print(f"\nresults written to {args.json}", file=sys.stderr)


# ---------------------------------------------------------------------------- children
def _load_info(impl: str, t0: float) -> dict:
    """Time and memory of building the model from the checkpoint files."""
    info = {
        "load_s": time.perf_counter() - t0,
        "load_rss_gib": _rss_now_gib(),
        "load_peak_rss_gib": _peak_rss_gib(),
        "infer_peak_is_separate": _reset_peak_rss(),
    }
    _log(
        impl,
        f"model loaded in {info['load_s']:.1f} s, RSS {info['load_rss_gib']:.2f} GiB, peak {info['load_peak_rss_gib']:.2f} GiB",
    )
    return info


def _time_loop(impl: str, args, match_fn, sample_fn) -> tuple[dict, object]:
    match_t, sample_t = [], []
    out = None
    for i in range(args.warmup + args.runs):
        gc.collect()
        t0 = time.perf_counter()
        out = match_fn()
        t1 = time.perf_counter()
        kpts = sample_fn(out)
        t2 = time.perf_counter()
        timed = i >= args.warmup
        if timed:
            match_t.append(t1 - t0)
            sample_t.append(t2 - t1)
        _log(
            impl,
            f"{'run' if timed else 'warm-up'} {i - args.warmup + 1 if timed else i + 1}: match {t1 - t0:.2f} s, "
            f"sample {t2 - t1:.3f} s ({kpts} matches), RSS {_rss_now_gib():.2f} GiB, peak {_peak_rss_gib():.2f} GiB",
        )
    totals = [m + s for m, s in zip(match_t, sample_t, strict=True)]
    return {
        "infer_peak_rss_gib": _peak_rss_gib(),
        "match_s": statistics.median(match_t),
        "sample_s": statistics.median(sample_t),
        "total_s": statistics.median(totals),
        "match_runs_s": match_t,
        "sample_runs_s": sample_t,
    }, out


def _child_l2m(args, workdir: Path) -> tuple[dict, dict]:
    import torch

    from l2m_plugin.models.matcher import load_matcher

    t = time.perf_counter()
    model = load_matcher(
        workdir / "matcher.pth", encoder_weights=workdir / "encoder.pth", config=_config(args)
    )
    load = _load_info("l2m", t)

    def sample(out):
        kp = model.sample(
            out, num=args.num_matches, generator=torch.Generator().manual_seed(args.seed)
        )
        return len(kp["keypoints0"])

    stats, out = _time_loop(
        _key("l2m", args.dtype), args, lambda: model.match(args.image0, args.image1), sample
    )
    dense = {
        k: out[k][0].float().contiguous() for k in ("warp0", "warp1", "certainty0", "certainty1")
    }
    if args.dtype == "float32" and args.sample_sizes:
        stats["sampling"] = _sample_sweep(model, out, args)
    return {**load, **stats}, dense


def _sample_sweep(model, out, args) -> list[dict]:
    """sample() time per number of matches and density estimate, on one dense output."""
    import torch

    rows = []
    for num in args.sample_sizes:
        row = {"num": num}
        for density in ("grid", "exact"):
            if density == "exact" and num > args.exact_max:
                continue
            gc.collect()
            t = time.perf_counter()
            kp = model.sample(
                out, num=num, generator=torch.Generator().manual_seed(args.seed), density=density
            )
            row[f"{density}_s"] = time.perf_counter() - t
            row[f"{density}_matches"] = len(kp["keypoints0"])
            _log("l2m", f"sample({num}, density={density}): {row[f'{density}_s']:.3f} s")
        rows.append(row)
    return rows


def _sfm_rows(args) -> list[dict]:
    """Matching throughput of ``l2m reconstruct``'s first stages on ``args.sfm_images``
    (exhaustive pairs, the default model, every image encoded once, ``sample``, then track
    building), with the exact density (before issue 17) and the grid one (after)."""
    import torch

    from l2m_plugin.config import PRESETS
    from l2m_plugin.formats.pair_store import PairMatchStore
    from l2m_plugin.io import list_images, load_image
    from l2m_plugin.matching.dense import DensePairMatcher
    from l2m_plugin.models.matcher import load_matcher
    from l2m_plugin.sfm.pairs import exhaustive_pairs
    from l2m_plugin.sfm.pipeline import match_pairs, write_tracks

    torch.set_num_threads(args.threads)
    image_dir = Path(args.sfm_images)
    names = list_images(image_dir)
    sizes = {n: load_image(image_dir / n).size for n in names}
    pairs = exhaustive_pairs(names)
    rows = []
    for density in ("exact", "grid"):
        model = load_matcher(
            config=PRESETS["l2m-tiny"].replace(sample_density=density), progress=False
        )
        with tempfile.TemporaryDirectory(prefix="l2m_speed_sfm_") as tmp:
            pm = DensePairMatcher(model, image_dir, num_matches=args.num_matches, seed=args.seed)
            store = PairMatchStore(Path(tmp) / "pair_matches.h5", pm.settings())
            t = time.perf_counter()
            match_pairs(pm, pairs, store, progress=False)
            t_match = time.perf_counter() - t
            t = time.perf_counter()
            write_tracks(Path(tmp), list(store.items()), sizes, names, cell_size=4.0)
            t_tracks = time.perf_counter() - t
        total = t_match + t_tracks
        rows.append(
            {
                "density": density,
                "pairs": len(pairs),
                "match_s": t_match,
                "tracks_s": t_tracks,
                "pairs_per_min": 60 * len(pairs) / total,
            }  # fmt: skip
        )
        print(f"SfM ({density} density): {len(pairs)} pairs, match+sample {t_match:.1f} s, tracks {t_tracks:.1f} s, "
              f"{rows[-1]['pairs_per_min']:.1f} pairs/min", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def _child_romatch(args, workdir: Path) -> tuple[dict, dict]:
    import torch
    from PIL import Image
    from romatch.models.model_zoo.roma_models import roma_model

    c, u = args.coarse_res, args.upsample_res
    t = time.perf_counter()
    matcher_sd = torch.load(workdir / "matcher.pth", map_location="cpu", weights_only=True)
    dino_sd = torch.load(workdir / "encoder.pth", map_location="cpu", weights_only=True)
    model = roma_model(
        resolution=(c, c),
        upsample_preds=bool(u),
        weights=matcher_sd,
        dinov2_weights=dino_sd,
        device="cpu",
        use_custom_corr=False,
        upsample_res=(u, u) if u else None,
        symmetric=True,
    )
    del matcher_sd, dino_sd
    gc.collect()
    model.eval()
    load = _load_info("romatch", t)
    (w_a, h_a), (w_b, h_b) = Image.open(args.image0).size, Image.open(args.image1).size

    def sample(out):
        warp, certainty = out
        torch.manual_seed(args.seed)  # romatch samples from the global generator
        matches, _ = model.sample(warp, certainty, num=args.num_matches)
        kpts_a, _ = model.to_pixel_coordinates(matches, h_a, w_a, h_b, w_b)
        return len(kpts_a)

    stats, (warp, cert) = _time_loop(
        "romatch",
        args,
        lambda: model.match(str(args.image0), str(args.image1), device="cpu"),
        sample,
    )
    # romatch: warp (1, H, 2W, 4) = [A->B | B->A] side by side, (xA, yA, xB, yB); certainty (1, H, 2W).
    w = cert.shape[-1] // 2
    dense = {
        "warp0": warp[0, :, :w, 2:].contiguous(),
        "warp1": warp[0, :, w:, :2].contiguous(),
        "certainty0": cert[0, :, :w].contiguous(),
        "certainty1": cert[0, :, w:].contiguous(),
    }
    return {**load, **stats}, dense


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    stats, dense = (_child_l2m if args.child == "l2m" else _child_romatch)(args, args.workdir)
    # Whole-process peak: the larger of the load-time peak and the peak since the reset.
    stats["peak_rss_gib"] = max(stats["load_peak_rss_gib"], stats["infer_peak_rss_gib"])
    if not stats["infer_peak_is_separate"]:  # counter not reset: the inference peak is unknown
        stats["infer_peak_rss_gib"] = None
    key = _key(args.child, args.dtype)
    torch.save(dense, args.workdir / f"{key}_out.pt")
    stats["wall_s"] = time.perf_counter() - t
    stats["dtype"] = args.dtype
    with open(args.workdir / f"{key}.json", "w") as f:
        json.dump(stats, f, indent=2)


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.child is None:
        _parent(args)
    else:
        _child(args)


if __name__ == "__main__":
    main()
