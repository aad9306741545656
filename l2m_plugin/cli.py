"""The ``l2m`` command line.

Subcommands:
    ``l2m match IMAGE0 IMAGE1 --out DIR``  match two images, write matches.h5 and matches.png
    ``l2m make-checkpoint --out DIR``       random-init weights in the official file layout
    ``l2m weights``                         list the weights registry and what is cached

Progress and the model that ran go to stderr; the paths written go to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


class _Progress:
    """Step messages with elapsed time on stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[l2m {time.perf_counter() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _res(value: str) -> int | tuple[int, int] | None:
    if value.lower() in ("0", "none"):
        return None
    if "x" in value:
        h, w = value.lower().split("x")
        return int(h), int(w)
    return int(value)


def _cmd_match(args: argparse.Namespace) -> int:
    import torch

    from . import io as l2m_io
    from .config import PRESETS, MatcherConfig
    from .matches_io import write_matches
    from .viz import draw_matches
    from .weights import WeightsError, load_matcher

    progress = _Progress(args.quiet)
    out_dir = Path(args.out)
    overrides = {}
    if args.coarse_res is not None:
        overrides["coarse_res"] = _res(args.coarse_res)
    if args.upsample_res is not None:
        overrides["upsample_res"] = _res(args.upsample_res)
    if args.dtype:
        overrides["dtype"] = args.dtype
    config = PRESETS[args.preset] if args.preset else None
    if args.config:
        try:
            config = MatcherConfig.from_yaml(args.config)
        except (OSError, ValueError) as exc:
            print(f"l2m match: error: {exc}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    progress(f"loading weights {args.weights!r}" + (f" + encoder {args.encoder_weights!r}" if args.encoder_weights else ""))
    try:
        model = load_matcher(args.weights, config=config, encoder_weights=args.encoder_weights, device=args.device, **overrides)
    except (WeightsError, ValueError) as exc:
        print(f"l2m match: error: {exc}", file=sys.stderr)
        return 2
    cfg = model.config
    progress(
        f"model: {model.weights_name} (encoder {cfg.encoder}, coarse {cfg.coarse_res}, "
        f"upsample {cfg.upsample_res}, dtype {cfg.dtype}, device {args.device})"
    )
    progress(f"matching {args.image0} <-> {args.image1}")
    try:
        out = model.match(args.image0, args.image1, exif=not args.no_exif)
    except l2m_io.ImageLoadError as exc:
        print(f"l2m match: error: {exc}", file=sys.stderr)
        return 2
    progress(f"sampling {args.num_matches} matches (seed {args.seed})")
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    m = model.sample(out, num=args.num_matches, generator=gen, frame="upright")
    im0, im1 = out["images"]
    stored = {
        "keypoints0": im0.to_stored(m["keypoints0"].cpu()),
        "keypoints1": im1.to_stored(m["keypoints1"].cpu()),
        "certainty": m["certainty"].cpu(),
        "image_size0": im0.stored_size,
        "image_size1": im1.stored_size,
    }
    from . import __version__

    attrs = {
        "image0": str(args.image0),
        "image1": str(args.image1),
        "weights": model.weights_name,
        "config": cfg.to_dict(),
        "seed": args.seed,
        "num_matches": args.num_matches,
        "frame": "stored (before EXIF orientation)",
        "exif_orientation0": im0.orientation,
        "exif_orientation1": im1.orientation,
        "l2m_plugin_version": __version__,
    }
    h5_path = write_matches(out_dir / "matches.h5", stored, attrs)
    c = m["certainty"]
    title = (
        f"{model.weights_name}: {len(c)} matches, certainty median {float(c.median()) if len(c) else 0:.3f}"
    )
    draw_matches(
        im0.image, im1.image, m["keypoints0"], m["keypoints1"], c,
        out["certainty0"][0], out["certainty1"][0] if "certainty1" in out else None,
        path=out_dir / "matches.png", title=title, seed=args.seed,
    )
    with open(out_dir / "config.json", "w") as f:
        json.dump(attrs, f, indent=2)
    progress(f"wrote {len(c)} matches")
    print(h5_path)
    print(out_dir / "matches.png")
    return 0


def _cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from .config import MatcherConfig
    from .random_init import random_matcher
    from .weights import save_checkpoint, save_official_layout

    progress = _Progress(args.quiet)
    progress(f"building a randomly initialised {args.encoder} matcher (seed {args.seed})"
             + (f", BatchNorm calibrated on {args.calibrate_on}" if args.calibrate_on else ""))
    model = random_matcher(MatcherConfig(encoder=args.encoder), seed=args.seed, calibration_images=args.calibrate_on)
    out = Path(args.out)
    if args.layout == "l2m_plugin":
        paths = [save_checkpoint(model, out / "l2m_random.pt")]
    else:
        lightning = args.layout == "lightning"
        name = "l2m++_560x560v2.pth.ckpt" if lightning else "l2m++_560x560.pth"
        paths = list(save_official_layout(model, out / name, out / "dinov2l_distilled.pth", lightning=lightning))
    progress("done; random weights match nothing meaningful: they exercise the loading and matching code only")
    for p in paths:
        print(p)
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from .weights import REGISTRY, cache_path

    for e in REGISTRY.values():
        p = cache_path(e)
        print(f"{e.name:18s} {e.kind:8s} {'cached' if p.is_file() else 'missing':8s} {e.url}\n{'':36s}cache: {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2m", description="L2M / L2M++ dense feature matching.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("match", help="match two images; write matches.h5 and matches.png")
    m.add_argument("image0")
    m.add_argument("image1")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--weights", default="l2mpp-v2", help="registry name (see `l2m weights`) or checkpoint path")
    m.add_argument("--encoder-weights", default=None, help="ViT weights for official-layout matchers (name or path)")
    m.add_argument("--preset", default=None, choices=["l2m", "l2m-fork-defaults", "romatch"], help="config preset")
    m.add_argument("--config", default=None, help="matcher config YAML (e.g. configs/matcher/l2m.yaml); flags below override it")
    m.add_argument("--device", default="cpu")
    m.add_argument("--coarse-res", default=None, help="e.g. 560 or 560x784 (multiples of 14)")
    m.add_argument("--upsample-res", default=None, help="e.g. 864, 864x1152 or 0 for none (multiples of 8)")
    m.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    m.add_argument("--num-matches", type=int, default=5000)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    m.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_cmd_match)

    c = sub.add_parser("make-checkpoint", help="write random-init weights in the official file layout (for offline tests)")
    c.add_argument("--out", required=True)
    c.add_argument("--layout", default="lightning", choices=["lightning", "official", "l2m_plugin"])
    c.add_argument("--encoder", default="vitl14", choices=["vitl14", "vitb14", "vits14"])
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--calibrate-on", nargs=2, metavar=("IMAGE0", "IMAGE1"), default=None,
                   help="set BatchNorm statistics from these images (unit-scale activations)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_make_checkpoint)

    w = sub.add_parser("weights", help="list the weights registry and the cache")
    w.set_defaults(func=_cmd_weights)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
