"""``l2m synth``: the resumable run that fills an "l2m-synth" folder (format:
:mod:`l2m_plugin.formats.synth_pairs`) with novel-view pairs of single photos.

Pair ids are ``<image index:06d>_<k:02d>``, the image index being the position of the
image in the sorted recursive listing of ``--images``. Each pair's random stream is
seeded by ``(seed, image index, k)``, so a resumed or partial run makes the same pairs.
A pair's files are written into ``pairs/<id>.tmp-<pid>/`` and renamed into place with
``os.replace``; only then is its line appended to ``pairs.jsonl``. One process writes an
output folder at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from l2m_plugin.coords import index_to_pixel, normalized_to_pixel
from l2m_plugin.files import append_jsonl, config_diff, repair_jsonl
from l2m_plugin.formats.synth_pairs import (
    CONF_NAME,
    FAIL_NAME,
    FORMAT,
    PAIRS_NAME,
    VERSION,
    list_pairs,
    read_pair,
    write_pair,
)
from l2m_plugin.io import ImageLoadError, list_images, load_image, write_png
from l2m_plugin.synthesis.appearance import DiffusersInpainter
from l2m_plugin.synthesis.config import SynthConfig, config_to_dict
from l2m_plugin.synthesis.depth import (
    TransformersDepth,
    depth_file_for,
    disparity_to_depth,
    load_depth_file,
    normalize_depth,
    resize_depth,
    synthetic_depth,
)
from l2m_plugin.synthesis.errors import (
    BackendUnavailableError,
    ConfigMismatchError,
    DepthFileError,
    SynthesisError,
)
from l2m_plugin.synthesis.pair import synthesize_pair
from l2m_plugin.viz import draw_matches

__all__ = [
    "parse_size",
    "prepare_image",
    "load_segmenter",
    "list_source_images",
    "write_samples",
    "RunSettings",
    "run_synthesis",
]

logger = logging.getLogger(__name__)

#: smallest accepted short side of a source image, in pixels
MIN_SOURCE_SIDE = 32


# --------------------------------------------------------------------------------------
# sizes and inputs


def parse_size(value) -> tuple[str, tuple[int, ...]]:
    """``"512"`` (long side) or ``"640x480"`` (W x H) -> ("long", (512,)) / ("wh", (640, 480)).

    Raises:
        ValueError: anything else, or sizes below 16 px.
    """
    s = str(value).strip().lower()
    try:
        if "x" in s:
            w, h = (int(v) for v in s.split("x"))
            if min(w, h) < 16:
                raise ValueError
            return "wh", (w, h)
        n = int(s)
        if n < 16:
            raise ValueError
        return "long", (n,)
    except ValueError:
        raise ValueError(
            f"size must be a long side in pixels (e.g. 512) or WxH (e.g. 640x480), both >= 16; "
            f"got {value!r}"
        ) from None


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = arr.shape[:2]
    interp = cv2.INTER_AREA if size[0] * size[1] < w * h else cv2.INTER_CUBIC
    return cv2.resize(arr, size, interpolation=interp)


def prepare_image(image: np.ndarray, size, depth: np.ndarray | None = None):
    """Resize (and for WxH, centre-crop) an image and optionally its depth/disparity map.

    ``"512"``: the long side becomes 512, aspect kept (sides rounded). ``"640x480"``: scaled
    to cover 640 x 480, then centre-cropped (the authors resize the short side and
    centre-crop a square). A depth map of another resolution is first resized to the
    image's (its aspect ratio must agree within 3 %).

    Args:
        image: (H, W, 3) uint8 RGB.
        size: as for :func:`parse_size`.
        depth: optional (h, w) float map (NaN = missing).
    Returns:
        ``(image, depth)``: (H', W', 3) uint8 and (H', W') float32 or None.
    Raises:
        ValueError: the image's short side is below 32 px, or the depth aspect differs.
    """
    kind, vals = parse_size(size)
    h, w = image.shape[:2]
    if min(h, w) < MIN_SOURCE_SIDE:
        raise ValueError(f"image is {w}x{h} pixels, too small (short side < {MIN_SOURCE_SIDE})")
    if depth is not None and depth.shape != (h, w):
        dh, dw = depth.shape
        if abs(dw / dh - w / h) > 0.03 * (w / h):
            raise ValueError(
                f"depth map is {dw}x{dh} but the image is {w}x{h}: the aspect ratios differ; "
                "the depth map must be computed on this image"
            )

        depth = resize_depth(depth, (w, h))
    if kind == "long":
        s = vals[0] / max(w, h)
        tw, th = max(1, round(w * s)), max(1, round(h * s))
        x0 = y0 = 0
        cw, ch = tw, th
    else:
        cw, ch = vals
        s = max(cw / w, ch / h)
        tw, th = max(cw, round(w * s)), max(ch, round(h * s))
        x0, y0 = (tw - cw) // 2, (th - ch) // 2
    img = _resize(image, (tw, th))[y0 : y0 + ch, x0 : x0 + cw]
    if depth is not None:

        depth = resize_depth(depth, (tw, th))[y0 : y0 + ch, x0 : x0 + cw]
    return np.ascontiguousarray(img), depth


def load_segmenter(spec: str | None):
    """Import a sky segmenter ``"package.module:function"`` (None -> None).

    The callable takes an (H, W, 3) uint8 RGB image and returns an (H, W) bool mask,
    True = sky.

    Raises:
        ValueError: malformed spec, or the module / attribute cannot be imported.
    """
    if not spec:
        return None
    import importlib

    mod, sep, attr = str(spec).partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"sky.segmenter must be 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import sky.segmenter {spec!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"sky.segmenter {spec!r} is not callable")
    return fn


def _sky_mask(fn, image: np.ndarray) -> np.ndarray:
    m = np.asarray(fn(image))
    if m.shape != image.shape[:2]:
        raise ValueError(f"the sky segmenter returned shape {m.shape}, expected {image.shape[:2]}")
    return m.astype(bool)


# --------------------------------------------------------------------------------------
# the run


def list_source_images(root: str | os.PathLike) -> list[str]:
    """Sorted ``/``-separated paths relative to ``root`` of its images, recursively
    (:func:`l2m_plugin.io.list_images`, the one image listing; hidden files skipped).

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no image.
    """
    return list_images(root, check_hloc_keys=False)


@dataclass(frozen=True)
class RunSettings:
    """Inputs of one ``l2m synth`` run (the ``run`` section of ``synth_conf.yaml``).

    Attributes:
        images: folder of photos (searched recursively, sorted).
        depth: "synthetic", "transformers", or a folder of depth/disparity files mirroring
            ``images`` (``a/b.jpg`` -> ``a/b.npy`` or ``a/b.png``).
        pairs_per_image: pairs made from each image (k = 0 .. N-1).
        size: "512" (long side) or "640x480" (W x H, centre crop).
        max_images: only the first M images of the sorted listing (None: all).
        seed: base seed; pair ``(i, k)`` uses ``numpy.random.default_rng([seed, i, k])``.
        split: "all", "train" or "heldout": image ``j`` of the sorted listing is held
            out when ``j % holdout_every == 0``, so a training set and an evaluation set
            made from one folder never share a photo (applied before ``max_images``).
        holdout_every: see ``split`` (10: every tenth photo is held out).
    """

    images: str
    depth: str
    pairs_per_image: int = 1
    size: str = "512"
    max_images: int | None = None
    seed: int = 0
    split: str = "all"
    holdout_every: int = 10

    def __post_init__(self):
        parse_size(self.size)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every must be >= 2, got {self.holdout_every}")
        if self.pairs_per_image < 1 or self.pairs_per_image > 100:
            raise ValueError(f"pairs_per_image must be in 1..100, got {self.pairs_per_image}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")


SPLITS = ("all", "train", "heldout")


def split_images(names: list[str], split: str, holdout_every: int = 10) -> list[str]:
    """The images of ``split`` ("all", "train", "heldout"): image ``j`` of ``names`` is
    held out when ``j % holdout_every == 0`` (see :class:`RunSettings`)."""
    if split == "all":
        return list(names)
    held = split == "heldout"
    return [n for j, n in enumerate(names) if (j % holdout_every == 0) == held]


def source_listing(settings: RunSettings) -> list[str]:
    """The photos of a run, relative to ``settings.images``: the sorted listing, without a
    depth folder nested inside it, then ``split`` and ``max_images`` (in that order).

    Raises:
        FileNotFoundError: the image folder or the depth folder does not exist, or no image.
    """
    images = Path(settings.images)
    names = list_source_images(images)
    if settings.depth not in ("synthetic", "transformers") and not Path(settings.depth).is_dir():
        raise FileNotFoundError(
            f"depth folder {settings.depth} does not exist; pass a folder of .npy/.png "
            "disparity maps mirroring --images, 'synthetic' or 'transformers'"
        )
    if settings.depth not in ("synthetic", "transformers"):
        try:  # a depth folder inside the image folder: its PNGs are not photos
            inner = Path(settings.depth).resolve().relative_to(images.resolve()).as_posix()
            names = [n for n in names if not n.startswith(inner + "/")]
        except ValueError:
            pass
    names = split_images(names, settings.split, settings.holdout_every)
    if settings.max_images is not None:
        names = names[: settings.max_images]
    return names


class SourceLoader:
    """Reads one source photo of a run at the run's size, with its depth and sky mask
    (shared by ``l2m synth`` and stage-1 lifting, :mod:`l2m_plugin.lifting.dataset`).

    Args:
        settings: :class:`RunSettings` (``images``, ``depth``, ``size``).
        conf: :class:`SynthConfig` (depth conversion, sky segmenter, transformers model).
    Raises:
        BackendUnavailableError: ``depth="transformers"`` without the package / weights.
        ValueError: a bad sky segmenter.
    """

    def __init__(self, settings: RunSettings, conf: SynthConfig):

        self.settings, self.conf = settings, conf
        self.images = Path(settings.images)
        self.segmenter = load_segmenter(conf.sky.segmenter)
        self.estimator = None
        if settings.depth == "transformers":
            self.estimator = TransformersDepth(conf.depth.model, conf.depth.device)

    def load(self, rel: str):
        """``(image, depth, sky, depth_source)`` of photo ``rel``: (H, W, 3) uint8 RGB at the
        run's size; (H, W) float32 z-depth in scene units, or None for ``"synthetic"`` (the
        caller draws it with its own generator); (H, W) bool sky mask or None; the depth
        source string of ``pairs.jsonl``.

        Raises:
            l2m_plugin.io.ImageLoadError, DepthFileError, ValueError, OSError: unreadable
            inputs (the message names the file).
        """

        img_full = np.asarray(load_image(self.images / rel).image)
        raw, depth_source = _depth_for(self.settings, self.conf, self.images, rel, img_full, self.estimator)
        img, raw = prepare_image(img_full, self.settings.size, raw)
        depth = None
        if raw is not None:
            kind = self.estimator.output if self.estimator is not None else self.conf.depth.file_kind
            depth = _to_scene_depth(raw, self.conf, kind)
        sky = _sky_mask(self.segmenter, img) if self.segmenter is not None else None
        return img, depth, sky, depth_source


#: run settings that may change between runs of one output folder (they only select pairs)
_FREE_RUN_KEYS = ("images", "pairs_per_image", "max_images")


def _resolved(settings: RunSettings, conf: SynthConfig) -> dict:
    run = dict(settings.__dict__)
    run["size"] = str(run["size"])
    if run["depth"] not in ("synthetic", "transformers"):
        run["depth"] = str(Path(run["depth"]).resolve())
    run["images"] = str(Path(run["images"]).resolve())
    return {"format": FORMAT, "version": VERSION, "run": run, "synth": config_to_dict(conf)}


def _check_conf(out: Path, resolved: dict, overwrite: bool) -> None:
    from omegaconf import OmegaConf

    path = out / CONF_NAME
    if overwrite:
        for name in (CONF_NAME, PAIRS_NAME, FAIL_NAME, "samples.png"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "pairs", ignore_errors=True)
        return
    if not path.is_file():
        if (out / PAIRS_NAME).is_file():
            raise ConfigMismatchError(
                f"{out} has {PAIRS_NAME} but no {CONF_NAME}: cannot tell how its pairs were "
                "made; use another --out or --overwrite"
            )
        return
    saved = OmegaConf.to_container(OmegaConf.load(path))
    if saved.get("format") != FORMAT or saved.get("version") != VERSION:
        raise ConfigMismatchError(
            f"{path} is not an {FORMAT} version {VERSION} configuration "
            f"(format {saved.get('format')!r}, version {saved.get('version')!r}); "
            "use another --out or --overwrite"
        )
    diffs = config_diff(saved, resolved, ignore={f"run.{k}" for k in _FREE_RUN_KEYS})
    if diffs:
        shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
        raise ConfigMismatchError(
            f"{out} was made with another configuration ({shown}). Rerun with the same "
            "settings to resume, use another --out, or pass --overwrite to delete its pairs "
            "and start again"
        )


def _depth_for(settings, conf, names_root, rel, img_full, estimator):
    """Per-image depth (None for synthetic) in scene units at the source resolution, and
    its source string for pairs.jsonl."""

    if settings.depth == "synthetic":
        return None, "synthetic"
    if settings.depth == "transformers":
        return estimator(img_full), f"transformers:{conf.depth.model}"
    path = depth_file_for(rel, settings.depth, names_root)
    raw = load_depth_file(path)
    return raw, f"file:{path.relative_to(settings.depth).as_posix()}"


def _to_scene_depth(raw: np.ndarray, conf: SynthConfig, kind: str) -> np.ndarray:

    dc = conf.depth
    if kind == "disparity":
        return disparity_to_depth(raw, near=dc.near, far=dc.far, percentiles=dc.percentiles)
    return normalize_depth(raw, near=dc.near, far=dc.far)


def write_samples(root: str | os.PathLike, num: int = 3, matches: int = 150) -> Path | None:
    """Draw the first ``num`` finished pairs with ground-truth correspondences.

    Uses :func:`l2m_plugin.viz.draw_matches` (lines from valid pixels of image 0 to
    ``warp0``), one row per pair, written atomically to ``root/samples.png``.

    Returns:
        the path, or None when there is no pair.
    """
    import torch
    from PIL import Image

    root = Path(root)
    records = list_pairs(root)[:num]
    rows = []
    for i, rec in enumerate(records):
        p = read_pair(root, rec["id"])
        iy, ix = np.nonzero(p["valid0"])
        rng = np.random.default_rng(i)
        sel = rng.permutation(len(iy))[:matches]
        k0 = np.stack((index_to_pixel(ix[sel]), index_to_pixel(iy[sel])), 1)
        h, w = p["valid0"].shape
        k1 = normalized_to_pixel(torch.from_numpy(p["warp0"][iy[sel], ix[sel]]).double(), w, h)
        title = (f"{rec['id']} {rec['source']} ({rec['depth_source']}): {len(iy)} valid pixels "
                 f"in image 0, {int(p['valid1'].sum())} in image 1")  # fmt: skip
        rows.append(draw_matches(Image.fromarray(p["image0"]), Image.fromarray(p["image1"]),
                                 k0, k1.numpy(), np.ones(len(sel)), height=360, title=title,
                                 max_lines=matches))  # fmt: skip
    if not rows:
        return None
    width = max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    return write_png(root / "samples.png", canvas)


def run_synthesis(
    settings: RunSettings,
    out: str | os.PathLike,
    conf: SynthConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Make ``pairs_per_image`` pairs per image into ``out`` (resumable; see module docs).

    Args:
        settings: :class:`RunSettings`.
        out: output folder (created).
        conf: :class:`SynthConfig` (default: the "l2m" preset).
        overwrite: delete an earlier run's outputs in ``out`` and start again.
        progress: tqdm progress bar on stderr.
    Returns:
        summary dict: ``written`` (new pairs), ``skipped`` (already done), ``failed``
        (list of failure records), ``total`` (pairs in pairs.jsonl), ``samples`` (path or
        None), ``seconds_per_pair`` (mean over the new pairs).
    Raises:
        FileNotFoundError: ``images`` or the depth folder does not exist, or has no image.
        ConfigMismatchError: ``out`` holds a run with other settings (and not ``overwrite``),
            or the image listing no longer matches the finished pairs.
        BackendUnavailableError: the transformers depth source or the diffusers inpainter
            was selected but is not installed / has no local weights.
        ValueError: bad sky segmenter.
    """
    import time

    from tqdm import tqdm

    conf = conf if conf is not None else SynthConfig()
    images = Path(settings.images)
    names = source_listing(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = _resolved(settings, conf)
    _check_conf(out, resolved, overwrite)
    loader = SourceLoader(settings, conf)
    if conf.inpaint.method == "diffusers":
        DiffusersInpainter.get(conf.inpaint.model, conf.inpaint.device)
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(resolved), out / CONF_NAME)
    pairs_dir = out / "pairs"
    pairs_dir.mkdir(exist_ok=True)
    for stale in pairs_dir.glob("*.tmp-*"):
        logger.info("removing unfinished pair folder %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    repair_jsonl(out / PAIRS_NAME)
    done = {}
    for rec in list_pairs(out):
        done[rec["id"]] = rec
        idx = int(rec["id"].split("_")[0])
        if idx < len(names) and names[idx] != rec["source"]:
            raise ConfigMismatchError(
                f"pair {rec['id']} in {out / PAIRS_NAME} was made from {rec['source']!r}, but "
                f"image {idx} of {images} is now {names[idx]!r}: the image folder changed. Use "
                "another --out or --overwrite"
            )
    n_pairs = settings.pairs_per_image
    summary = {"written": 0, "skipped": 0, "failed": [], "seconds": 0.0}
    bar = tqdm(total=len(names) * n_pairs, disable=not progress, desc="l2m synth", unit="pair")

    def fail(rel, idx, pair_id, exc):
        rec = {"source": rel, "index": idx, "id": pair_id, "error": f"{type(exc).__name__}: {exc}"}
        logger.warning("skipped %s%s: %s", rel, f" pair {pair_id}" if pair_id else "", rec["error"])
        append_jsonl(out / FAIL_NAME, rec)
        summary["failed"].append(rec)

    for idx, rel in enumerate(names):
        ids = [f"{idx:06d}_{k:02d}" for k in range(n_pairs)]
        todo = [k for k, i in enumerate(ids) if i not in done]
        summary["skipped"] += n_pairs - len(todo)
        bar.update(n_pairs - len(todo))
        if not todo:
            continue
        try:
            img, depth, sky, depth_source = loader.load(rel)
        except (ImageLoadError, DepthFileError, SynthesisError, ValueError, OSError) as exc:
            fail(rel, idx, None, exc)
            bar.update(len(todo))
            continue
        h, w = img.shape[:2]
        for k in todo:
            pair_id = ids[k]
            t0 = time.perf_counter()
            rng = np.random.default_rng([settings.seed, idx, k])
            try:
                z = depth if depth is not None else synthetic_depth((w, h), rng, conf.depth, img)
                pair = synthesize_pair(img, z, conf, rng, sky_mask=sky)
                write_pair(out, pair_id, pair)
            except (MemoryError, BackendUnavailableError):
                raise
            except Exception as exc:  # one bad pair must not stop a long run
                logger.debug("pair %s failed", pair_id, exc_info=True)
                fail(rel, idx, pair_id, exc)
                bar.update(1)
                continue
            record = {"id": pair_id, "source": rel, "size": [w, h], "depth_source": depth_source}
            append_jsonl(out / PAIRS_NAME, record)
            summary["written"] += 1
            summary["seconds"] += time.perf_counter() - t0
            bar.update(1)
    bar.close()
    summary["total"] = len(list_pairs(out))
    summary["samples"] = write_samples(out) if summary["total"] else None
    summary["seconds_per_pair"] = summary["seconds"] / max(summary["written"], 1)
    return summary
