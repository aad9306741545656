"""Depth for lifting a photo: precomputed disparity/depth files, a ``transformers`` depth
estimator (optional), or a seeded synthetic scene depth for offline use.

All sources return z-depth in *scene units*: the near end of the scene is at
``depth.near`` (1.0) and nothing is farther than ``depth.far`` (100.0). The authors'
generator (Sharpiless/L2M ``get_data.py``, checked at commit d13402c) min-max normalises
the Depth Anything V2 disparity to [0, 1], adds 0.001 and inverts it (depth 1 to ~900);
their relighting script (``relight.py``) clips the normalised disparity at 0.01 (depth 1
to 100). Here the normalisation uses percentiles instead of min/max, so a few outlier
pixels do not set the scale (see :func:`disparity_to_depth`). Camera translations are
expressed in the same units (near surface at 1), as in the authors' generator.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import cv2
import numpy as np

from l2m_plugin.coords import pixel_mgrid
from l2m_plugin.synthesis.config import DepthConf
from l2m_plugin.synthesis.errors import BackendUnavailableError, DepthFileError

__all__ = [
    "DEPTH_EXTENSIONS",
    "disparity_to_depth",
    "normalize_depth",
    "load_depth_file",
    "depth_file_for",
    "resize_depth",
    "synthetic_depth",
    "TransformersDepth",
]

logger = logging.getLogger(__name__)

#: depth/disparity file extensions, in the order they are looked for
DEPTH_EXTENSIONS = (".npy", ".png")


def _percentile_range(values: np.ndarray, percentiles, what: str) -> tuple[float, float]:
    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
    lo, hi = np.percentile(values, [lo_p, hi_p])
    if not hi - lo > 1e-12 * max(abs(hi), 1.0):
        raise ValueError(
            f"the {what} map is constant (percentiles {lo_p}-{hi_p} both {lo:.6g}): "
            "it has no depth structure to lift; check the file or use another depth source"
        )
    return float(lo), float(hi)


def disparity_to_depth(
    disparity: np.ndarray,
    *,
    near: float = 1.0,
    far: float = 100.0,
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> np.ndarray:
    """Relative inverse depth (Depth Anything V2 style) to z-depth in scene units.

    ``d = clip((disparity - P_lo) / (P_hi - P_lo), 0, 1)`` with ``P_lo``, ``P_hi`` the
    ``percentiles`` of the finite values; then ``1 / depth = 1 / far + d * (1 / near -
    1 / far)``, so the nearest 1 % of pixels sit at ``near``, the farthest 1 % (sky in
    Depth Anything's output, which is ~0 there) at ``far``, and depth is affine-invariant
    to the input's unknown scale and shift.

    Args:
        disparity: (H, W) float, larger = nearer; non-finite = no surface.
        near, far: scene-unit depth range, ``0 < near < far``.
        percentiles: (lo, hi) in [0, 100].
    Returns:
        (H, W) float32 depth in [near, far], 0 where the input is not finite.
    Raises:
        ValueError: bad range, no finite value, or a constant map.
    """
    disp = np.asarray(disparity, dtype=np.float64)
    if disp.ndim != 2:
        raise ValueError(f"disparity must have shape (H, W), got {disp.shape}")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    finite = np.isfinite(disp)
    if not finite.any():
        raise ValueError("the disparity map has no finite value")
    lo, hi = _percentile_range(disp[finite], percentiles, "disparity")
    d = np.clip((np.where(finite, disp, lo) - lo) / (hi - lo), 0.0, 1.0)
    depth = 1.0 / (1.0 / far + d * (1.0 / near - 1.0 / far))
    return np.where(finite, depth, 0.0).astype(np.float32)


def normalize_depth(
    depth: np.ndarray,
    *,
    near: float = 1.0,
    far: float = 100.0,
    percentile: float = 1.0,
) -> np.ndarray:
    """Depth of unknown scale (metric or relative) to scene units.

    Scales so that the ``percentile``-th percentile of the positive finite values is at
    ``near`` and clips at ``far``.

    Args:
        depth: (H, W) float z-depth; <= 0 or non-finite = no surface.
    Returns:
        (H, W) float32, 0 where there is no surface.
    Raises:
        ValueError: no positive finite value, or a bad range.
    """
    z = np.asarray(depth, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {z.shape}")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    ok = np.isfinite(z) & (z > 0)
    if not ok.any():
        raise ValueError("the depth map has no positive finite value")
    ref = float(np.percentile(z[ok], percentile))
    out = np.clip(z / ref * near, near, far)
    return np.where(ok, out, 0.0).astype(np.float32)


def load_depth_file(path: str | os.PathLike) -> np.ndarray:
    """Read a depth or disparity map file as float.

    Args:
        path: ``.npy`` (2-D float or integer array, or (1, H, W) / (H, W, 1)) or ``.png``
            (16-bit: value / 65535, as the authors' ``disparity_to_tensor``; 8-bit:
            value / 255, a warning is logged as it has only 256 levels).
    Returns:
        (H, W) float32 array as stored (no normalisation).
    Raises:
        DepthFileError: missing, unreadable, wrong shape, or an unsupported extension;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DepthFileError(f"depth file {path} does not exist")
    ext = path.suffix.lower()
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DepthFileError(
                f"cannot read depth file {path} as a numpy array ({exc}); re-export it with "
                "np.save(path, disparity.astype(np.float32))"
            ) from exc
        arr = np.squeeze(arr)
        if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.number) and arr.dtype != bool):
            raise DepthFileError(
                f"depth file {path} holds a {arr.dtype} array of shape {arr.shape}; "
                "expected a 2-D (H, W) float array"
            )
        return arr.astype(np.float32)
    if ext == ".png":
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise DepthFileError(f"cannot read depth file {path}: not a readable PNG")
        if arr.ndim == 3:
            if not (np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2])):
                raise DepthFileError(
                    f"depth file {path} is a colour PNG; expected a single-channel 16-bit "
                    "(or 8-bit) grey PNG of disparity"
                )
            arr = arr[..., 0]
        if arr.dtype == np.uint16:
            return (arr.astype(np.float64) / 65535.0).astype(np.float32)
        if arr.dtype == np.uint8:
            logger.warning("depth file %s is 8-bit: only 256 disparity levels", path)
            return (arr.astype(np.float64) / 255.0).astype(np.float32)
        raise DepthFileError(f"depth file {path} has unsupported PNG dtype {arr.dtype}")
    raise DepthFileError(
        f"depth file {path} has extension {ext!r}; supported: {', '.join(DEPTH_EXTENSIONS)}"
    )


def depth_file_for(image_rel: str, depth_dir: str | os.PathLike, image_dir=None) -> Path:
    """The depth file of an image: same relative path, extension ``.npy`` or ``.png``.

    ``a/b.jpg`` -> ``DEPTH_DIR/a/b.npy``, else ``DEPTH_DIR/a/b.png``.

    Raises:
        DepthFileError: neither exists; the message names the image and both candidates.
    """
    stem = Path(image_rel).with_suffix("")
    tried = [Path(depth_dir) / (str(stem) + ext) for ext in DEPTH_EXTENSIONS]
    for p in tried:
        if p.is_file():
            return p
    img = Path(image_dir) / image_rel if image_dir is not None else Path(image_rel)
    raise DepthFileError(
        f"no depth file for image {img}: looked for {' and '.join(map(str, tried))}. "
        "Depth files mirror the image folder with the extension replaced by .npy or .png "
        "(e.g. from Depth Anything V2), or use --depth synthetic"
    )


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) depth or disparity map to ``size`` = (W, H).

    Area averaging when shrinking, bilinear when enlarging; non-finite values are taken
    as missing (the result is NaN where the nearest input sample is missing).
    """
    w, h = size
    arr = np.asarray(depth, dtype=np.float32)
    if arr.shape == (h, w):
        return arr
    bad = ~np.isfinite(arr)
    filled = np.where(bad, np.nanmedian(np.where(bad, np.nan, arr)) if (~bad).any() else 0, arr)
    interp = cv2.INTER_AREA if w * h < arr.size else cv2.INTER_LINEAR
    out = cv2.resize(filled.astype(np.float32), (w, h), interpolation=interp)
    if bad.any():
        badr = cv2.resize(bad.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        out[badr] = np.nan
    return out


# --------------------------------------------------------------------------------------
# synthetic depth


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W) float64 smooth noise in about [-1, 1]: a ``cells`` grid upsampled bicubically."""
    w, h = size
    gw = max(2, round(cells * w / max(w, h)) + 1)
    gh = max(2, round(cells * h / max(w, h)) + 1)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float64)


def _layout_depth(kind: str, size, rng: np.random.Generator, conf) -> np.ndarray:
    """Depth of an empty scene from a layout prior, camera frame (x right, y down, z forward).

    The rays use a nominal focal length of 0.6 x the long side; only the shape matters
    (the pair's own focal length is sampled separately).
    """
    w, h = size
    f = 0.6 * max(w, h)
    ys, xs = pixel_mgrid(h, w)
    rx, ry = (xs - w / 2) / f, (ys - h / 2) / f  # ray direction (rx, ry, 1)
    far = float(conf.far)
    big = np.full((h, w), np.inf)

    def plane(n, d):
        """Depth (ray parameter, z) where the ray meets n . X = d; inf where it never does."""
        den = n[0] * rx + n[1] * ry + n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = d / den
        return np.where((den * np.sign(d) > 1e-9) & (z > 0), z, big)

    def tilt(deg_range):
        return np.deg2rad(rng.uniform(*deg_range))

    if kind == "ground":
        # ground plane below a horizon, backdrop of far structures above it
        hor = h * rng.uniform(0.25, 0.65)  # horizon row
        pitch = np.arctan((hor - h / 2) / f)
        cam_h = rng.uniform(1.0, 3.0)
        n = np.array([0.0, np.cos(pitch), -np.sin(pitch)])  # horizon: ry = tan(pitch)
        z = plane(n, cam_h)
        # skyline: a far, fronto-parallel-ish band of buildings / hills above the horizon
        skyline = far * rng.uniform(0.2, 0.6)
        z = np.minimum(z, np.full_like(z, skyline))
        if rng.random() < 0.5:  # a wall on one side (street / canyon)
            side = rng.choice([-1.0, 1.0])
            yaw = tilt((-20, 20))
            nw = np.array([side * np.cos(yaw), 0.0, np.sin(yaw)])
            z = np.minimum(z, plane(nw, rng.uniform(1.5, 6.0)))
    elif kind == "room":
        # inside a box: floor, ceiling, side walls, back wall (all planes of a room)
        hw, hh = rng.uniform(1.5, 4.0), rng.uniform(1.2, 2.0)
        yaw, pitch = tilt((-30, 30)), tilt((-10, 10))
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        Rw = Rx @ Ry  # room axes in camera frame
        back = rng.uniform(3.0, 9.0)
        off = rng.uniform(-0.5, 0.5, 3) * np.array([hw, hh * 0.5, 0.0])
        z = big
        for axis, dist in ((0, hw + off[0]), (0, -hw + off[0]), (1, hh + off[1]),
                           (1, -hh + off[1]), (2, back)):  # fmt: skip
            n = Rw[:, axis]
            z = np.minimum(z, plane(n, dist))
    elif kind == "facade":
        # one large slanted plane (building front, wall, table top seen at an angle)
        yaw, pitch = tilt((-55, 55)), tilt((-35, 35))
        n = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
        z = plane(n, rng.uniform(2.0, 8.0))
    else:  # "object": a rounded blob in front of a background plane
        yaw = tilt((-30, 30))
        n = np.array([np.sin(yaw), 0.0, np.cos(yaw)])
        z = plane(n, rng.uniform(4.0, 12.0))
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        r = rng.uniform(0.2, 0.45) * min(w, h)
        dist = ((xs - cx) ** 2 + (ys - cy) ** 2) / r**2
        zc = rng.uniform(1.2, 3.0)
        bulge = zc - rng.uniform(0.2, 0.8) * np.sqrt(np.clip(1 - dist, 0, 1)) * zc * 0.5
        z = np.where(dist < 1, np.minimum(z, bulge), z)
    return np.minimum(z, far)


def _image_segments(image: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """(h, w) int32 labels at <= 160 px: connected regions of a k-means colour quantisation."""
    h, w = image.shape[:2]
    s = min(1.0, 160 / max(h, w))
    small = cv2.resize(image, (max(2, round(w * s)), max(2, round(h * s))), cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (5, 5), 0)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0)
    cv2.setRNGSeed(int(rng.integers(2**31 - 1)))
    _, lbl, _ = cv2.kmeans(lab, k, None, crit, 1, cv2.KMEANS_PP_CENTERS)
    lbl = cv2.medianBlur(lbl.reshape(small.shape[:2]).astype(np.uint8), 5)
    out = np.zeros(small.shape[:2], np.int32)
    nxt = 0
    for c in range(k):
        n, comp = cv2.connectedComponents((lbl == c).astype(np.uint8), connectivity=4)
        out = np.where(comp > 0, comp + nxt, out)
        nxt += n
    return out


def _random_shape(size, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: a superellipse, a rectangle or a thresholded noise blob."""
    w, h = size
    ys, xs = pixel_mgrid(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.15, 1.0) * h
    ax, ay = rng.uniform(0.06, 0.35) * w, rng.uniform(0.08, 0.5) * h
    kind = rng.integers(3)
    if kind == 0:
        p = rng.uniform(1.5, 6.0)
        return (np.abs((xs - cx) / ax) ** p + np.abs((ys - cy) / ay) ** p) < 1
    if kind == 1:
        ang = rng.uniform(-0.3, 0.3)
        u = (xs - cx) * np.cos(ang) + (ys - cy) * np.sin(ang)
        v = -(xs - cx) * np.sin(ang) + (ys - cy) * np.cos(ang)
        return (np.abs(u) < ax) & (np.abs(v) < ay)
    d = ((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2
    return d + 0.6 * _smooth_noise(rng, size, int(rng.integers(3, 8))) < 1


def synthetic_depth(size: tuple[int, int], rng: np.random.Generator, conf=None, image=None):
    """A random but plausible scene depth map, for training without a depth estimator.

    Built in four steps, all drawn from ``rng`` (same seed and inputs = same depth):

    1. layout prior from the image rows/columns (``conf.layouts`` weights): ``ground``
       (ground plane below a random horizon, far skyline band, sometimes a side wall),
       ``room`` (the inside of a rotated box: floor, ceiling, walls, back wall),
       ``facade`` (one plane slanted up to 55 degrees), ``object`` (a rounded blob in
       front of a background plane);
    2. low-frequency multiplicative noise ``exp(a * noise)`` with ``a`` in
       ``conf.noise_amplitude`` on a coarse grid of ``conf.noise_cells`` cells;
    3. ``conf.num_layers`` occluding layers: fronto-parallel (or slightly slanted) planar
       pieces at ``conf.layer_depth_ratio`` times the depth behind them, shaped as
       superellipses, rectangles or noise blobs, or (with probability
       ``conf.image_layer_probability``, when ``image`` is given) as colour segments of
       the image, so that some depth edges follow image edges. Layers replace the
       depth where they are nearer (``min``), which makes real occlusion boundaries;
    4. scaling so that the 1st percentile is at ``conf.near`` and clipping at ``conf.far``.

    Args:
        size: (W, H) in pixels.
        rng: ``numpy.random.Generator``.
        conf: :class:`l2m_plugin.synthesis.config.DepthConf` (default: its defaults).
        image: optional (H, W, 3) uint8 image for image-shaped layers.
    Returns:
        (H, W) float32 z-depth in [near, far], no zeros.
    """

    conf = conf if conf is not None else DepthConf()
    sconf = conf.synthetic
    w, h = (int(v) for v in size)
    if w < 2 or h < 2:
        raise ValueError(f"size must be (W, H) with W, H >= 2, got {size}")
    names = list(sconf.layouts.keys())
    p = np.array([float(sconf.layouts[n]) for n in names])
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(
            f"depth.synthetic.layouts weights must be >= 0, not all 0: {sconf.layouts}"
        )
    kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    if kind not in ("ground", "room", "facade", "object"):
        raise ValueError(f"unknown synthetic layout {kind!r}; use ground, room, facade or object")
    z = _layout_depth(kind, (w, h), rng, conf)
    amp = rng.uniform(*sconf.noise_amplitude)
    cells = int(rng.integers(sconf.noise_cells[0], sconf.noise_cells[1] + 1))
    z = z * np.exp(amp * _smooth_noise(rng, (w, h), cells))
    segments = None
    n_layers = int(rng.integers(sconf.num_layers[0], sconf.num_layers[1] + 1))
    ys, xs = pixel_mgrid(h, w)
    for _ in range(n_layers):
        if image is not None and rng.random() < sconf.image_layer_probability:
            if segments is None:
                segments = _image_segments(np.asarray(image, np.uint8), rng, 6)
            ids, counts = np.unique(segments, return_counts=True)
            frac = counts / segments.size
            ok = ids[(frac > 0.01) & (frac < 0.3)]
            if len(ok):  # the segment, upsampled smoothly to the full size
                seg = (segments == rng.choice(ok)).astype(np.float32)
                mask = cv2.resize(seg, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
            else:
                mask = _random_shape((w, h), rng)
        else:
            mask = _random_shape((w, h), rng)
        if mask.sum() < 16:
            continue
        behind = float(np.median(z[mask]))
        zl = behind * rng.uniform(*sconf.layer_depth_ratio)
        # a gentle slant (at most ~15 % depth change across the layer)
        gx, gy = rng.uniform(-0.15, 0.15, 2) * zl / np.array([w, h])
        mx, my = xs[mask].mean(), ys[mask].mean()
        layer = zl + gx * (xs - mx) + gy * (ys - my)
        z = np.where(mask, np.minimum(z, np.maximum(layer, 1e-3)), z)
    ref = float(np.percentile(z, 1.0))
    z = np.clip(z / ref * conf.near, conf.near, conf.far)
    return z.astype(np.float32)


# --------------------------------------------------------------------------------------
# transformers backend


class TransformersDepth:
    """Monocular depth with a Hugging Face ``transformers`` depth-estimation pipeline.

    The default model, ``depth-anything/Depth-Anything-V2-Small-hf``, returns relative
    inverse depth (disparity), as the authors' generator uses (Depth Anything V2); it is
    mapped to scene depth with :func:`disparity_to_depth`. Nothing is downloaded: the
    weights must already be in the Hugging Face cache (``local_files_only=True``).

    Args:
        model: Hugging Face model id or local folder.
        device: "cpu", "cuda", ...
        output: "disparity" (Depth Anything, DPT) or "depth" (metric models).
    Raises:
        BackendUnavailableError: ``transformers`` is not installed, or the weights are not
            available locally; the message names the package / model and the fix.
    """

    def __init__(self, model: str, device: str = "cpu", output: str = "disparity"):
        if output not in ("disparity", "depth"):
            raise ValueError(f"output must be 'disparity' or 'depth', got {output!r}")
        self.pipe = _transformers_pipeline(model, device)
        self.output = output

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (H, W) float32 raw model output at the image size."""
        import torch
        from PIL import Image

        out = self.pipe(Image.fromarray(np.asarray(image, np.uint8)))
        pred = out["predicted_depth"]
        pred = pred if torch.is_tensor(pred) else torch.as_tensor(np.asarray(pred))
        pred = pred.float().reshape(1, 1, *pred.shape[-2:])
        h, w = image.shape[:2]
        pred = torch.nn.functional.interpolate(pred, size=(h, w), mode="bilinear")
        return pred[0, 0].cpu().numpy()


@functools.lru_cache(maxsize=2)
def _transformers_pipeline(model: str, device: str):
    try:
        import transformers
    except ImportError as exc:
        raise BackendUnavailableError(
            "depth source 'transformers' needs the 'transformers' package, which is not "
            "installed: pip install transformers (and put the weights of "
            f"{model!r} in the Hugging Face cache), or use precomputed depth files "
            "(--depth DIR) or --depth synthetic"
        ) from exc
    try:  # processor and model from the local cache only: nothing is downloaded
        processor = transformers.AutoImageProcessor.from_pretrained(model, local_files_only=True)
        net = transformers.AutoModelForDepthEstimation.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackendUnavailableError(
            f"the depth model {model!r} is not available locally ({exc}). Download it once "
            f"with `huggingface-cli download {model}` (or set depth.model to a local folder)"
        ) from exc
    return transformers.pipeline(
        "depth-estimation", model=net, image_processor=processor, device=device
    )
