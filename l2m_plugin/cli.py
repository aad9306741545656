"""The ``l2m`` command line.

Subcommands:
    ``l2m match IMAGE0 IMAGE1 --out DIR``  match two images, write correspondences.h5 and matches.png
    ``l2m make-checkpoint --out DIR``       random-init weights in the official file layout
    ``l2m weights``                         list the weights registry and what is cached
    ``l2m reconstruct IMAGE_DIR OUT_DIR``   images -> COLMAP model (pairs, matching, tracks, pycolmap)
    ``l2m match-pairs IMAGE_DIR --out F``   match one shard (``--shard i/N``) of a pairs list
    ``l2m merge SHARD.h5... --out DIR``     combine shards for ``reconstruct`` and hloc
    ``l2m bench NAME --data-root DIR``      MegaDepth-1500 / ScanNet-1500 / ZEB / HPatches / homography / colmap
                                            (cached, resumable)
    ``l2m synth --images DIR --depth D --out DIR``  synthetic training pairs from single photos (resumable)
    ``l2m train stage1 --conf YAML [k=v]``  L2M stage 1: the 3D-aware encoder from lifted photos (resumable)
    ``l2m train stage2 --conf YAML [k=v]``  L2M stage-2 training (resumable; torchrun for several processes)

Progress and the model that ran go to stderr; the paths written go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from l2m_plugin import __version__
from l2m_plugin import io as l2m_io
from l2m_plugin.config import PRESETS, MatcherConfig
from l2m_plugin.eval import BenchmarkDataError, get_benchmark, make_matcher
from l2m_plugin.files import LockedError, exclusive_lock
from l2m_plugin.formats.correspondences import FILE_NAME as CORRESPONDENCES
from l2m_plugin.formats.correspondences import write_correspondences
from l2m_plugin.formats.pair_store import STORE_NAME, PairMatchStore, merge_pair_files
from l2m_plugin.formats.pairs_txt import write_pairs
from l2m_plugin.io import ImageLoadError, file_fingerprint, list_images
from l2m_plugin.matching.build import build_matcher
from l2m_plugin.matching.dense import DensePairMatcher
from l2m_plugin.matching.sift import SiftPairMatcher
from l2m_plugin.sfm.colmap import DEFAULT_MAPPER_TRIES
from l2m_plugin.sfm.pairs import parse_pairs_spec, shard_pairs
from l2m_plugin.sfm.pipeline import (
    OutputWriteError,
    match_pairs,
    merge_rule,
    reconstruct,
    write_tracks,
)
from l2m_plugin.sfm.tracks import DEFAULT_MERGE_RADIUS
from l2m_plugin.synthesis import SynthesisError
from l2m_plugin.synthesis.config import load_config
from l2m_plugin.synthesis.errors import BackendUnavailableError, ConfigMismatchError
from l2m_plugin.synthesis.generate import RunSettings, run_synthesis
from l2m_plugin.testing.random_init import random_matcher
from l2m_plugin.training import DataError, TrainConfigError, load_conf
from l2m_plugin.training.stage1 import Stage1Trainer, load_stage1_conf
from l2m_plugin.training.trainer import Trainer
from l2m_plugin.viz import draw_matches
from l2m_plugin.weights import (
    DEFAULT_WEIGHTS,
    REGISTRY,
    ArchitectureMismatchError,
    WeightsError,
    cache_path,
    save_checkpoint,
    save_official_layout,
)

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


# ---------------------------------------------------------------------- argument types
# argparse calls these while parsing, so a bad value is refused before any work starts.

#: the most matches one pair may ask for: balanced sampling draws 4x as many candidates
#: and estimates their density (linear cost on a grid, l2m_plugin.sampling: 100k in about
#: a second on 2 CPU cores; RoMa's exact estimate, sample_density: exact, is quadratic)
MAX_NUM_MATCHES = 100_000


def _int_at_least(low: int, what: str = ""):
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{what}, got {v}")
        return v

    return parse


def _num_matches(value: str) -> int:
    v = _int_at_least(1)(value)
    if v > MAX_NUM_MATCHES:
        raise argparse.ArgumentTypeError(
            f"{v} is above {MAX_NUM_MATCHES}: balanced sampling draws 4x as many candidates from the "
            "dense warp (1.5 million pixels at 864 x 864, both directions), so beyond that the matches "
            "only repeat the same pixels; ask for at most 100000"
        )
    return v


def _positive_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return v


def _resolution(allow_none: bool):
    def parse(value: str) -> str:
        try:
            r = _res(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N or HxW in pixels, e.g. 560 or 560x784; got {value!r}") from None
        if r is None and not allow_none:
            raise argparse.ArgumentTypeError(f"must be a positive size (N or HxW), got {value!r}")
        if r is not None and min(r if isinstance(r, tuple) else (r,)) <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
        return value

    return parse


def _device(value: str) -> str:
    import torch

    try:
        dev = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {value!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value!r} asked for, but torch sees no CUDA GPU here: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{value!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"device {value!r} is not supported: use cpu, cuda or cuda:N")
    return value


def _camera_model(value: str) -> str:
    import pycolmap

    names = sorted(m.name for m in pycolmap.CameraModelId.__members__.values() if m.name != "INVALID")
    if value not in names:
        raise argparse.ArgumentTypeError(f"unknown COLMAP camera model {value!r}; choose from {', '.join(names)}")
    return value


def _preset_yaml(name: str) -> str | None:
    """``configs/matcher/<name>.yaml`` of a preset in this checkout (None when absent)."""
    path = Path(__file__).resolve().parents[1] / "configs" / "matcher" / f"{name.replace('-', '_')}.yaml"
    if not path.is_file():
        return None
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _arch_mismatch_message(exc, args: argparse.Namespace) -> str:
    """An ArchitectureMismatchError in terms of the flags: three lines, what to pass instead."""
    source = f"--config {args.config}" if args.config else f"--preset {args.preset}"
    fixes = []
    if exc.presets:
        yaml = _preset_yaml(exc.presets[0])
        fixes.append(f"--preset {exc.presets[0]}" + (f" (= --config {yaml})" if yaml else ""))
    fixes.append("no --config/--preset (the weights' own config)")
    lines = [
        f"{source} is for arch {exc.config_arch}, but the weights {exc.weights!r} are arch "
        f"{exc.weights_arch}; nothing of the config was applied.",
        "  instead: " + " or ".join(fixes),
    ]
    if exc.weights_for_config:
        lines.append(f"  or, for arch {exc.config_arch}: --weights {' / '.join(exc.weights_for_config)}")
    return "\n".join(lines)


def _output_folder_problem(folder: Path, flag: str) -> str | None:
    """Why ``folder`` cannot take outputs (an existing file, or not writable), or None."""
    if folder.exists() and not folder.is_dir():
        return f"{flag} {folder} is an existing file, not a folder: choose a folder"
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{flag} {folder}: {probe} is not writable; choose a folder you can write to"
    return None


def _load_model(args: argparse.Namespace, progress: _Progress, prog: str):
    """The L2M model the matcher flags ask for, or None after printing the error."""
    overrides = {}
    if args.coarse_res is not None:
        overrides["coarse_res"] = _res(args.coarse_res)
    if args.upsample_res is not None:
        overrides["upsample_res"] = _res(args.upsample_res)
    if args.dtype:
        overrides["dtype"] = args.dtype
    if args.weights is None:
        args.weights = DEFAULT_WEIGHTS
        progress(f"no --weights given: using {DEFAULT_WEIGHTS!r}, the small model shipped with l2m_plugin "
                 "(trained here from single photos; each match less precise than SIFT's: see the README; "
                 "`--weights l2mpp-v2` for the authors' L2M++)")  # fmt: skip
    progress(f"loading weights {args.weights!r}" + (f" + encoder {args.encoder_weights!r}" if args.encoder_weights else ""))
    try:
        model = build_matcher(args.weights, preset=args.preset, config=args.config,
                              encoder_weights=args.encoder_weights, device=args.device,
                              trust_checkpoint=args.trust_checkpoint, **overrides)  # fmt: skip
    except ArchitectureMismatchError as exc:
        print(f"{prog}: error: {_arch_mismatch_message(exc, args)}", file=sys.stderr)
        return None
    except (WeightsError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    cfg = model.config
    progress(
        f"model: {model.weights_name} (arch {cfg.arch_name}, coarse {cfg.coarse_res}, "
        f"upsample {cfg.upsample_res}, dtype {cfg.dtype}, device {args.device})"
    )
    return model


def _cmd_match(args: argparse.Namespace) -> int:
    import torch

    progress = _Progress(args.quiet)
    out_dir = Path(args.out)
    problem = _output_folder_problem(out_dir, "--out")
    if problem:
        print(f"l2m match: error: {problem}", file=sys.stderr)
        return 2
    for flag, image in (("IMAGE0", args.image0), ("IMAGE1", args.image1)):
        if not Path(image).is_file():
            what = "is a folder, not an image file" if Path(image).is_dir() else "not found"
            print(f"l2m match: error: {flag} {image}: {what}", file=sys.stderr)
            return 2
    model = _load_model(args, progress, "l2m match")
    if model is None:
        return 2
    cfg = model.config
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

    attrs = {
        # file names that are not valid UTF-8 (HDF5 strings must be) keep their bytes as \xNN
        "image0": os.fsencode(args.image0).decode("utf-8", "backslashreplace"),
        "image1": os.fsencode(args.image1).decode("utf-8", "backslashreplace"),
        "weights": model.weights_name,
        "config": cfg.to_dict(),
        "seed": args.seed,
        "num_matches": args.num_matches,
        "frame": "stored (before EXIF orientation)",
        "exif_orientation0": im0.orientation,
        "exif_orientation1": im1.orientation,
        "l2m_plugin_version": __version__,
    }
    h5_path = write_correspondences(out_dir / CORRESPONDENCES, stored, attrs)
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
    if len(c) < args.num_matches and cfg.sample_cutoff:
        progress(f"{len(c)} of {args.num_matches}: only pixels whose certainty is above sample_thresh "
                 f"({cfg.sample_thresh}) are drawn (sample_cutoff), and this pair has few")  # fmt: skip
    print(h5_path)
    print(out_dir / "matches.png")
    return 0


def _cmd_make_checkpoint(args: argparse.Namespace) -> int:
    progress = _Progress(args.quiet)
    problem = _output_folder_problem(Path(args.out), "--out")
    if problem:
        print(f"l2m make-checkpoint: error: {problem}", file=sys.stderr)
        return 2
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
    for e in REGISTRY.values():
        p = cache_path(e)
        if e.packaged is not None:
            state = "packaged" if p.is_file() else "missing"
            default = " (default)" if e.name == DEFAULT_WEIGHTS else ""
            print(f"{e.name:18s} {e.kind:8s} {state:8s} shipped with the package{default}\n{'':36s}file: {p}")
            continue
        state = "missing"
        if p.is_file():
            state = "cached" if e.size is None or p.stat().st_size == e.size else "broken"
        print(f"{e.name:18s} {e.kind:8s} {state:8s} {e.url}\n{'':36s}cache: {p}")
        if state == "broken":
            print(f"{'':36s}{p.stat().st_size} bytes, expected {e.size}: delete it to download again")
    return 0


def _pair_matcher(args: argparse.Namespace, image_dir: Path, progress: _Progress, prog: str):
    """The SfM pair matcher the flags ask for (L2M, or OpenCV SIFT), or None after an error."""

    if args.matcher == "sift":
        progress(f"matcher: OpenCV SIFT ({args.sift_features} features, ratio test {args.sift_ratio})")
        return SiftPairMatcher(image_dir, max_features=args.sift_features, ratio=args.sift_ratio)
    model = _load_model(args, progress, prog)
    if model is None:
        return None
    return DensePairMatcher(
        model, image_dir, num_matches=args.num_matches, seed=args.seed, exif=not args.no_exif,
        memory_budget_gb=args.memory_budget_gb,
    )  # fmt: skip


def _parse_shard(value: str) -> tuple[int, int]:
    if value == "env":  # torchrun / torch.distributed launchers set RANK and WORLD_SIZE
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except (KeyError, ValueError):
            raise argparse.ArgumentTypeError("--shard env needs RANK and WORLD_SIZE in the environment (set by torchrun)") from None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be i/N (e.g. 0/4), got {value!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/N needs 0 <= i < N, got {value!r}")
    return i, n


def _mapper_option(value: str) -> tuple[str, object]:
    """``KEY=VALUE`` of pycolmap.IncrementalPipelineOptions (dotted keys; bool / int / float / str)."""
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--mapper needs KEY=VALUE, e.g. mapper.init_min_tri_angle=4; got {value!r}")
    low = raw.strip().lower()
    if low in ("true", "false"):
        return key, low == "true"
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    progress = _Progress(args.quiet)
    image_dir, out = Path(args.image_dir), Path(args.out_dir)
    if not image_dir.is_dir():
        what = "is a file, not a folder of images" if image_dir.exists() else "does not exist"
        print(f"l2m reconstruct: error: image folder {image_dir} {what}", file=sys.stderr)
        return 2
    problem = _output_folder_problem(out, "OUT_DIR")
    if problem:
        print(f"l2m reconstruct: error: {problem}", file=sys.stderr)
        return 2
    pm = _pair_matcher(args, image_dir, progress, "l2m reconstruct")
    if pm is None:
        return 2
    progress(f"reconstructing {image_dir} -> {out} (pairs: {args.pairs})")
    try:
        summary = reconstruct(
            image_dir, out, pm, pairs=args.pairs, cell_size=args.cell_size, merge_radius=args.merge_radius,
            subpixel=args.subpixel,
            camera_mode=args.camera_mode, camera_model=args.camera_model, camera_params=args.camera_params,
            refine_intrinsics=not args.fixed_intrinsics, ransac_max_error=args.ransac_max_error,
            reference=args.reference, overwrite=args.overwrite, seed=args.seed if args.mapper_seed is None else args.mapper_seed,
            progress=not args.quiet,
            mapper_options=dict(args.mapper) or None, fast_mapping=args.fast_mapping,
            mapper_tries=args.mapper_tries,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, ImageLoadError, AttributeError, OutputWriteError) as exc:
        print(f"l2m reconstruct: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if hasattr(pm, "close"):
            pm.close()
    m = summary["model"]
    msg = f"registered {m['registered_images']}/{m['num_images']} images, {m['points3D']} points"
    if m["points3D"]:
        msg += f", mean track length {m['mean_track_length']:.2f}, reprojection error {m['mean_reprojection_error_px']:.2f} px"
    progress(msg)
    if len(m["tries"]) > 1:
        progress("mapper tries (seed: registered, suspect, error): " + "; ".join(
            f"{t['seed']}: " + (f"failed ({t['error']})" if "error" in t else
                                f"{t['registered_images']}, {len(t['suspect_images'])}, "
                                + (f"{t['mean_reprojection_error_px']:.3f} px" if t["mean_reprojection_error_px"] is not None else "-"))
            + (" (kept)" if t["chosen"] else "")
            for t in m["tries"]
        ))  # fmt: skip
    for name, why in m["suspect_images"].items():
        progress(f"warning: {name} is registered but its pose is not trustworthy: {why}")
    for name, why in summary["skipped_images"].items():
        progress(f"skipped {name}: {why}")
    if "reference" in summary:
        progress(f"max rotation error vs reference: {summary['reference']['max_rotation_error_deg']:.3f} deg")
    print(out / "summary.json")
    if m["path"]:
        print(m["path"])
    return 0 if m["registered_images"] else 1


def _cmd_match_pairs(args: argparse.Namespace) -> int:
    progress = _Progress(args.quiet)
    image_dir = Path(args.image_dir)
    if args.device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per torchrun process
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        names = list_images(image_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"l2m match-pairs: error: {exc}", file=sys.stderr)
        return 2
    pm = _pair_matcher(args, image_dir, progress, "l2m match-pairs")
    if pm is None:
        return 2
    try:
        pairs = parse_pairs_spec(args.pairs, names, descriptors_fn=lambda: pm.global_descriptors(names))
        i, n = args.shard
        mine = shard_pairs(pairs, i, n)
        args.out = args.out.replace("{rank}", str(i))
        problem = _output_folder_problem(Path(args.out).parent, "--out's folder")
        if problem or Path(args.out).is_dir():
            raise ValueError(problem or f"--out {args.out} is a folder; give the shard's .h5 file")
    except (FileNotFoundError, ValueError) as exc:
        print(f"l2m match-pairs: error: {exc}", file=sys.stderr)
        return 2
    try:
        with exclusive_lock(args.out + ".lock", args.out):
            store = PairMatchStore(args.out, pm.settings(), overwrite=args.overwrite,
                                   defaults=getattr(pm, "settings_defaults", dict)())
            store.set_shard(i, n, pairs)
            fingerprints = {m: file_fingerprint(image_dir / m) for m in sorted({x for p in mine for x in p})}
            progress(f"shard {i}/{n}: {len(mine)} of {len(pairs)} pairs -> {args.out}")
            report = match_pairs(pm, mine, store, progress=not args.quiet, fingerprints=fingerprints)
    except (FileNotFoundError, ValueError, OSError, LockedError) as exc:
        print(f"l2m match-pairs: error: {exc}", file=sys.stderr)
        return 2
    progress(f"matched {report['matched']} new pairs, {report['skipped']} already done, {len(report['failed'])} failed")
    for pair, why in report["failed"].items():
        progress(f"failed: {pair}: {why}")
    print(args.out)
    return 0 if not report["failed"] else 1


def _cmd_merge(args: argparse.Namespace) -> int:
    progress = _Progress(args.quiet)
    out = Path(args.out)
    try:
        rule = merge_rule(args.cell_size, args.merge_radius)  # refused before any merging
        n = merge_pair_files(args.shards, out / STORE_NAME, allow_partial=args.allow_partial)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"l2m merge: error: {exc}", file=sys.stderr)
        return 2
    store = PairMatchStore(out / STORE_NAME)
    sizes = store.image_sizes()
    items = list(store.items())
    write_pairs(out / "pairs.txt", [(a, b) for a, b, *_ in items])
    names = sorted(sizes)
    write_tracks(out, items, sizes, names, **rule)
    progress(f"merged {len(args.shards)} shards: {n} pairs, {len(names)} images")
    for f in (STORE_NAME, "pairs.txt", "features.h5", "matches.h5"):
        print(out / f)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    prog = "l2m bench"
    progress = _Progress(args.quiet)
    conf = {"predict": {"num_matches": args.num_matches, "seed": args.seed}, "data": {}}
    if args.index_dir:
        conf["data"]["index_dir"] = args.index_dir
    if args.model:
        conf["data"]["model"] = args.model
    if args.name == "homography":  # generated images: one cache beside the outputs, shared by every matcher
        conf["data"]["cache_dir"] = str(Path(args.out) / "homography" / "images")
    try:
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(args.set))
        bench = get_benchmark(args.name, args.data_root, conf=conf, protocol=args.protocol)
        pairs = bench.pairs()
    except (BenchmarkDataError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) / bench.name / (args.tag or args.matcher)
    n = min(len(pairs), args.max_pairs) if args.max_pairs else len(pairs)
    progress(f"{bench.name}: {n} of {len(pairs)} pairs, protocol {bench.protocol}, output {out_dir}")
    if not args.eval_only:
        model = None
        if args.matcher == "l2m":
            model = _load_model(args, progress, prog)
            if model is None:
                return 2
        try:
            matcher = make_matcher(args.matcher, bench, model=model, weights=args.weights, resize=args.resize,
                                   device=args.device, memory_budget_gb=args.memory_budget_gb)  # fmt: skip
            bench.predict(matcher, out_dir, overwrite=args.overwrite, max_pairs=args.max_pairs, progress=not args.quiet)
        except (BenchmarkDataError, ValueError, RuntimeError) as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    try:
        summary = bench.evaluate(out_dir, max_pairs=args.max_pairs, label=args.tag or args.matcher,
                                 published=args.published, progress=not args.quiet)  # fmt: skip
    except FileNotFoundError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if summary["num_missing"]:
        progress(f"{summary['num_missing']} pairs have no matches (counted as failures; see {out_dir / 'failures.json'})")
    if not args.quiet:
        print(summary["markdown"], file=sys.stderr)
    print(summary["paths"]["json"])
    print(summary["paths"]["markdown"])
    return 0 if summary["num_missing"] < summary["num_pairs"] else 1


def _cmd_synth(args: argparse.Namespace) -> int:
    """Novel-view training pairs in the "l2m-synth" format (l2m_plugin.formats.synth_pairs)."""

    prog = "l2m synth"
    progress = _Progress(args.quiet)
    problem = _output_folder_problem(Path(args.out), "--out")
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        conf = load_config(args.preset, args.set)
        settings = RunSettings(images=args.images, depth=args.depth, pairs_per_image=args.pairs_per_image,
                               size=args.size, max_images=args.max_images, seed=args.seed,
                               split=args.split, holdout_every=args.holdout_every)  # fmt: skip
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    progress(f"{args.images} -> {args.out}: {args.pairs_per_image} pairs per image, depth {args.depth}, "
             f"size {args.size}, preset {args.preset}, seed {args.seed}")  # fmt: skip
    try:
        summary = run_synthesis(settings, args.out, conf, overwrite=args.overwrite, progress=not args.quiet)
    except (FileNotFoundError, ConfigMismatchError, BackendUnavailableError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    progress(f"wrote {summary['written']} new pairs ({summary['seconds_per_pair']:.2f} s/pair), "
             f"{summary['skipped']} already done, {len(summary['failed'])} failed"
             + (f" (see {Path(args.out) / 'failures.jsonl'})" if summary["failed"] else ""))  # fmt: skip
    print(Path(args.out) / "pairs.jsonl")
    if summary["samples"]:
        print(summary["samples"])
    return 0 if summary["total"] or not summary["failed"] else 1
def _cmd_train(args: argparse.Namespace) -> int:
    """``l2m train stage1`` / ``stage2``: load the YAML and overrides, run, print model.pth."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[l2m %(asctime)s] %(message)s", stream=sys.stderr)
    overrides = list(args.overrides)
    if args.stop_at is not None:
        overrides.append(f"train.stop_at={args.stop_at}")
    stage = args.train_command
    try:
        if stage == "stage1":
            path = Stage1Trainer(load_stage1_conf(args.conf, overrides), overwrite=args.overwrite).run()
        else:
            path = Trainer(load_conf(args.conf, overrides), overwrite=args.overwrite).run()
    except (TrainConfigError, DataError, WeightsError, SynthesisError, OSError) as exc:
        print(f"l2m train {stage}: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0


def _add_matcher_flags(p: argparse.ArgumentParser, sfm: bool = False) -> None:
    if sfm:
        p.add_argument("--matcher", default="l2m", choices=["l2m", "sift"], help="dense L2M, or OpenCV SIFT through the same pipeline")
        p.add_argument("--sift-features", type=int, default=8000)
        p.add_argument("--sift-ratio", type=float, default=0.8)
        p.add_argument("--memory-budget-gb", type=_positive_float, default=4.0, help="encoder features kept in memory (the rest spill to disk)")
    p.add_argument("--weights", default=None,
                   help="registry name (see `l2m weights`) or checkpoint path; default: l2m-tiny, shipped with "
                        "the package (works offline; l2mpp-v2 is the authors' L2M++, downloaded once)")  # fmt: skip
    p.add_argument("--encoder-weights", default=None, help="ViT weights for official-layout matchers (name or path)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a --weights file that holds pickled Python objects (loading runs code: only for "
                        "files you trust; registry names are trusted)")

    by_arch: dict[str, list[str]] = {}
    for name, conf in PRESETS.items():
        by_arch.setdefault(conf.arch_name, []).append(name)
    p.add_argument("--preset", default=None, choices=list(PRESETS), metavar="NAME",
                   help="inference config (l2m_plugin.PRESETS), for weights of its arch: "
                        + "; ".join(f"arch {a}: {', '.join(n)}" for a, n in by_arch.items())
                        + ". Default: the config stored with / named by the weights")  # fmt: skip
    p.add_argument("--config", default=None,
                   help="matcher config YAML instead of --preset (configs/matcher/*.yaml; its arch must be the "
                        "weights'); the flags below override it")  # fmt: skip
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--coarse-res", type=_resolution(False), default=None, help="e.g. 560 or 560x784 (multiples of 14)")
    p.add_argument("--upsample-res", type=_resolution(True), default=None, help="e.g. 864, 864x1152 or 0 for none (multiples of 8)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--num-matches", type=_num_matches, default=5000, help=f"matches sampled per pair (at most {MAX_NUM_MATCHES})")
    p.add_argument("--seed", type=_int_at_least(0), default=0)
    p.add_argument("--threads", type=_int_at_least(0, " (0: torch's default)"), default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-exif", action="store_true", help="ignore EXIF orientation")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2m", description="L2M / L2M++ dense feature matching.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("match", help="match two images; write correspondences.h5 and matches.png")
    m.add_argument("image0")
    m.add_argument("image1")
    m.add_argument("--out", required=True, help="output folder")
    _add_matcher_flags(m)
    m.set_defaults(func=_cmd_match)

    c = sub.add_parser("make-checkpoint", help="write random-init weights in the official file layout (for offline tests)")
    c.add_argument("--out", required=True)
    c.add_argument("--layout", default="lightning", choices=["lightning", "official", "l2m_plugin"])
    c.add_argument("--encoder", default="vitl14", choices=["vitl14", "vitb14", "vits14"])
    c.add_argument("--seed", type=_int_at_least(0), default=0)
    c.add_argument("--calibrate-on", nargs=2, metavar=("IMAGE0", "IMAGE1"), default=None,
                   help="set BatchNorm statistics from these images (unit-scale activations)")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_make_checkpoint)

    r = sub.add_parser("reconstruct", help="images -> COLMAP model with dense matches (pycolmap; no hloc needed)")
    r.add_argument("image_dir")
    r.add_argument("out_dir")
    r.add_argument("--pairs", default="exhaustive", help="exhaustive | sequential:K | retrieval:K | an hloc pairs file")
    _add_track_flags(r)
    r.add_argument("--subpixel", action="store_true", help="keypoint at the certainty-weighted mean of its group")
    r.add_argument("--camera-mode", default="auto", choices=["auto", "single", "per_folder", "per_image"])
    r.add_argument("--camera-model", type=_camera_model, default="SIMPLE_RADIAL")
    r.add_argument("--camera-params", default=None, help="known intrinsics, comma-separated (e.g. PINHOLE fx,fy,cx,cy)")
    r.add_argument("--fixed-intrinsics", action="store_true", help="do not refine the intrinsics in bundle adjustment")
    r.add_argument("--ransac-max-error", type=float, default=4.0, help="two-view verification threshold (px)")
    r.add_argument("--reference", default=None, help="COLMAP model of the same images: per-image rotation errors in the summary")
    r.add_argument("--mapper", type=_mapper_option, action="append", default=[], metavar="KEY=VALUE",
                   help="pycolmap IncrementalPipelineOptions field, repeatable "
                        "(e.g. triangulation.ignore_two_view_tracks=false mapper.init_min_tri_angle=4)")
    r.add_argument("--mapper-seed", type=_int_at_least(0), default=None,
                   help="COLMAP's random seed (verification, mapping) apart from --seed, the matches' sampling "
                        "seed: re-map the same matches to see how stable the model is")
    r.add_argument("--mapper-tries", type=_int_at_least(1), default=DEFAULT_MAPPER_TRIES, metavar="N",
                   help="verify and map N times (COLMAP seeds S, S+1, ..., S: --mapper-seed, else --seed) and keep "
                        "the model with the most trusted images, then the lowest reprojection error "
                        f"(default {DEFAULT_MAPPER_TRIES}; 1: one try)")
    r.add_argument("--overwrite", action="store_true", help="recompute matches from an earlier run")
    r.add_argument("--fast-mapping", action="store_true",
                   help="map with every CPU core: faster, but not repeatable (default: one thread, same matches -> same model)")
    _add_matcher_flags(r, sfm=True)
    r.set_defaults(func=_cmd_reconstruct)

    mp = sub.add_parser("match-pairs", help="match one shard of a pairs list into an h5 file (for many machines / GPUs)")
    mp.add_argument("image_dir")
    mp.add_argument("--pairs", default="exhaustive", help="exhaustive | sequential:K | retrieval:K | an hloc pairs file")
    mp.add_argument("--out", required=True, help="the shard's h5 file (resumable); '{rank}' is replaced by the shard index")
    mp.add_argument("--shard", type=_parse_shard, default=(0, 1), help="i/N: this process matches every N-th pair from the i-th; 'env': i/N from RANK/WORLD_SIZE (torchrun)")
    mp.add_argument("--overwrite", action="store_true")
    _add_matcher_flags(mp, sfm=True)
    mp.set_defaults(func=_cmd_match_pairs)

    g = sub.add_parser("merge", help="merge shard h5 files into pair_matches.h5 + hloc's features.h5 / matches.h5")
    g.add_argument("shards", nargs="+")
    g.add_argument("--out", required=True, help="output folder (usable as `l2m reconstruct`'s OUT_DIR)")
    _add_track_flags(g)
    g.add_argument("--allow-partial", action="store_true", help="merge even if shards of the i/N set are missing")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=_cmd_merge)

    b = sub.add_parser("bench", help="run a benchmark (megadepth1500, scannet1500, zeb, hpatches, homography, colmap): "
                       "match, cache, evaluate")  # fmt: skip
    b.add_argument("name", choices=["megadepth1500", "scannet1500", "zeb", "hpatches", "homography", "colmap"])
    b.add_argument("--data-root", "--images", dest="data_root", required=True,
                   help="the data set in its official layout (benchmarks/<name>/README.md); homography: a folder of "
                        "photos (l2m synth's listing and --split); colmap: the model's image folder")  # fmt: skip
    b.add_argument("--index-dir", default=None, help="folder of the official pair lists (MegaDepth scene info, ScanNet test.npz)")
    b.add_argument("--model", default=None, help="colmap: the COLMAP model folder (text or binary; conf data.model)")
    b.add_argument("--matcher", default="l2m", choices=["l2m", "sift", "oracle", "random", "loftr", "disk"],
                   help="oracle: ground-truth matches; random: uniform random keypoints (chance level)")
    b.add_argument("--protocol", default=None, help="protocol preset (megadepth1500/scannet1500: roma | loftr; zeb: gim; "
                                                    "hpatches, homography: dkm; colmap: loftr)")  # fmt: skip
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a conf entry, repeatable (e.g. eval.ransac_threshold_px=1.0, eval.runs=1, data.skip=[])")
    b.add_argument("--out", default="outputs/bench", help="output root; matches go to OUT/NAME/TAG/")
    b.add_argument("--tag", default=None, help="name of this run's folder (default: the matcher name)")
    b.add_argument("--resize", type=int, default=None, help="loftr/disk: long side of the input images")
    b.add_argument("--max-pairs", type=int, default=None, help="only the first N pairs of the official list")
    b.add_argument("--eval-only", action="store_true", help="evaluate the cached matches, match nothing")
    b.add_argument("--published", default=None, help="published.json to compare with (default: l2m_plugin/eval/published/NAME.json)")
    b.add_argument("--memory-budget-gb", type=_positive_float, default=4.0)
    b.add_argument("--overwrite", action="store_true", help="replace a cache made with other settings")
    _add_matcher_flags(b)
    b.set_defaults(func=_cmd_bench, weights=None)

    sy = sub.add_parser("synth", help="synthetic training pairs (novel views with exact warps) from single photos")
    sy.add_argument("--images", required=True, help="folder of photos (recursive)")
    sy.add_argument("--depth", required=True, help="folder of disparity/depth files mirroring --images "
                    "(a/b.jpg -> a/b.npy or a/b.png), 'synthetic' (offline), or 'transformers' (Depth Anything V2)")
    sy.add_argument("--out", required=True, help="output folder (l2m-synth format; resumable)")
    sy.add_argument("--pairs-per-image", type=int, default=1)
    sy.add_argument("--size", default="512", help="long side in pixels (e.g. 512) or WxH with a centre crop (e.g. 640x480)")
    sy.add_argument("--max-images", type=int, default=None, help="only the first M images of the sorted listing")
    sy.add_argument("--split", default="all", choices=["all", "train", "heldout"],
                    help="photo j of the sorted listing is held out when j %% HOLDOUT_EVERY == 0: "
                         "'train' and 'heldout' sets from one folder never share a photo")  # fmt: skip
    sy.add_argument("--holdout-every", type=int, default=10, help="see --split")
    sy.add_argument("--seed", type=_int_at_least(0), default=0)
    sy.add_argument("--preset", default="l2m", choices=["l2m", "hard"], help="the authors' ranges, or wider motion/appearance change")
    sy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a synthesis config entry, repeatable (e.g. motion.rotation_deg=[5,15], inpaint.method=opencv-ns)")
    sy.add_argument("--overwrite", action="store_true", help="delete an earlier run with other settings in --out")
    sy.add_argument("--threads", type=_int_at_least(0, " (0: torch's default)"), default=0, help="torch CPU threads (0: torch default)")
    sy.add_argument("--quiet", action="store_true")
    sy.set_defaults(func=_cmd_synth)
    tr = sub.add_parser("train", help="train a matcher (stage1: the 3D-aware encoder; stage2: the decoder on dense pairs)")
    trs = tr.add_subparsers(dest="train_command", required=True)
    def train_parser(stage, help_, description, example_conf, example_overrides, overwrite_help):
        t = trs.add_parser(stage, help=help_, description=description)
        t.add_argument("--conf", default=None, help=f"training YAML (e.g. {example_conf})")
        t.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help=f"config overrides, e.g. {example_overrides} train.out=DIR train.steps=100")
        t.add_argument("--overwrite", action="store_true", help=overwrite_help)
        t.add_argument("--stop-at", type=_int_at_least(1), default=None, help="stop with a checkpoint after this step (resume later)")
        t.set_defaults(func=_cmd_train)

    train_parser("stage1", "make the encoder 3D-aware: lift single photos to feature-Gaussian fields, "
                 "fine-tune the encoder on their rendered features; resumes a run of the same config",
                 "Writes train.out/{config.yaml,fields/,log.csv,checkpoints/,model.pth}; "
                 "prints model.pth's path (the matcher with the fine-tuned encoder).",
                 "configs/train/stage1_tiny.yaml", "data.images=DIR",
                 "delete the run in train.out (fields too) and start again")  # fmt: skip
    train_parser("stage2", "train the matcher on dense pairs (synthetic or MegaDepth); resumes a run of the same config",
                 "Writes train.out/{config.yaml,log.csv,checkpoints/,model.pth}; prints model.pth's path.",
                 "configs/train/stage2_tiny.yaml", "data.root=DIR",
                 "delete the run in train.out (of any configuration) and start again")  # fmt: skip

    w = sub.add_parser("weights", help="list the weights registry and the cache")
    w.set_defaults(func=_cmd_weights)
    return p


#: what an interrupted command keeps, and how it resumes (Ctrl-C message)
_RESUME = {
    "reconstruct": "every finished pair is in OUT_DIR/pair_matches.h5; rerun the same command to resume",
    "match-pairs": "every finished pair is in the --out file; rerun the same command to resume",
    "synth": "every finished pair is in --out (pairs.jsonl); rerun the same command to resume",
    "bench": "every finished pair is in the run's pair_matches.h5; rerun the same command to resume",
    "train": "the last checkpoint is in train.out/checkpoints; rerun the same command to resume",
}


def _add_track_flags(p: argparse.ArgumentParser) -> None:
    """``--merge-radius`` / ``--cell-size``: the two track-building rules (one at a time)."""
    p.add_argument("--merge-radius", type=float, default=None, metavar="PX",
                   help=f"merge each image's match end points closer than PX into one keypoint "
                        f"(default {DEFAULT_MERGE_RADIUS})")
    p.add_argument("--cell-size", type=float, default=None, metavar="PX",
                   help="instead: one keypoint per PX x PX grid cell (hloc's rule; 2 was the default until 2026-12-06)")


def main(argv: list[str] | None = None) -> int:
    """Run one ``l2m`` command. Ctrl-C ends it with one line saying what was kept (exit 130)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):  # every command with --threads, whatever its matcher
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        kept = _RESUME.get(args.command, "no output was written (outputs are written atomically)")
        print(f"\nl2m {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
