"""Planar pairs with exact ground truth: two random homographic views of one photo.

Both images are crops of the same source photo through a random quadrilateral each
(the "homographic adaptation" of SuperPoint, DeTone et al. 2018, and the homography
pairs mixed into the L2M/RoMa-style training by many dense matchers): image ``i`` is
``warpPerspective(photo, A_i)``, where ``A_i`` maps the quadrilateral ``Q_i`` of the
photo onto the output rectangle; the pair's homography is ``H_0to1 = A_1 A_0^-1``. Both
images are fully covered by the photo (no black borders), and the ground truth is
exact wherever image 0's pixel lands inside image 1.

Conventions (:mod:`l2m_plugin.coords`): every homography here maps COLMAP pixel
coordinates (top-left image corner at (0, 0), pixel centres at i + 0.5); OpenCV's
``warpPerspective`` works on pixel indices (centres at i), so its matrix is
``T(-0.5) A T(+0.5)`` (:func:`to_opencv`).

Parameters of :class:`HomographyConfig` (scale change, in-plane rotation, perspective,
photometric change) are drawn from a ``numpy.random.Generator``: the same seed gives
the same pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from l2m_plugin.coords import MID_GREY, pixel_mgrid

__all__ = [
    "HomographyConfig",
    "HomographyPair",
    "random_homography_pair",
    "homography_warp",
    "to_opencv",
    "photometric_change",
]


@dataclass(frozen=True)
class HomographyConfig:
    """Ranges of a random homography pair (:func:`random_homography_pair`).

    Attributes:
        scale: (lo, hi): the scale change between the views (size of image 0's
            quadrilateral over image 1's, so > 1 means image 1 is zoomed in),
            log-uniform; the defaults give 0.5x to 2x.
        rotation_deg: in-plane rotation of image 1 relative to image 0, uniform in
            [-rotation_deg, rotation_deg] degrees.
        perspective: each corner of each quadrilateral moves by up to this fraction
            of the quadrilateral's side (uniform per coordinate): perspective and shear.
        min_side: the smaller quadrilateral's side is at least this fraction of the
            photo's shorter side (bounds the upsampling of the source).
        photometric: apply :func:`photometric_change` to each image independently.
        max_tries: redraws before falling back to the largest feasible pair.
    """

    scale: tuple[float, float] = (0.5, 2.0)
    rotation_deg: float = 30.0
    perspective: float = 0.1
    min_side: float = 0.3
    photometric: bool = True
    max_tries: int = 50


@dataclass(frozen=True)
class HomographyPair:
    """A synthetic planar pair.

    Attributes:
        image0, image1: (H, W, 3) uint8 RGB.
        H_0to1: (3, 3) float64: COLMAP pixels of image 0 to COLMAP pixels of image 1.
        scale: the drawn scale change; rotation_deg: the drawn in-plane rotation.
    """

    image0: np.ndarray
    image1: np.ndarray
    H_0to1: np.ndarray
    scale: float
    rotation_deg: float


def to_opencv(A: np.ndarray) -> np.ndarray:
    """A homography on COLMAP pixels (centres at i + 0.5) as OpenCV's ``warpPerspective`` wants it
    (pixel indices, centres at i): ``T(-0.5) @ A @ T(+0.5)``."""
    T = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    Ti = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    return Ti @ np.asarray(A, np.float64) @ T


def _quad(rng: np.random.Generator, centre, side: float, aspect: float, angle: float, persp: float) -> np.ndarray:
    """Corners (4, 2) (top-left, top-right, bottom-right, bottom-left) of a rotated, jittered rectangle."""
    w, h = side * aspect, side
    base = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    base = base + rng.uniform(-persp, persp, size=(4, 2)) * side
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s], [s, c]])
    return base @ R.T + np.asarray(centre, np.float64)


def _rect_to_quad(quad: np.ndarray, width: int, height: int) -> np.ndarray:
    """The homography (3, 3) that maps the output rectangle [0, W] x [0, H] onto ``quad``."""
    import cv2

    rect = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    return cv2.getPerspectiveTransform(rect, quad.astype(np.float32)).astype(np.float64)


def _inside(quad: np.ndarray, W: int, H: int) -> bool:
    return bool((quad[:, 0] >= 0).all() and (quad[:, 0] <= W).all() and (quad[:, 1] >= 0).all() and (quad[:, 1] <= H).all())


def random_homography_pair(
    photo: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    config: HomographyConfig | None = None,
) -> HomographyPair:
    """Two views of ``photo`` related by a random homography (module docstring).

    Args:
        photo: (H, W, 3) uint8 RGB source photo (any size; the views are resampled
            from it with bilinear interpolation, area-averaged when shrinking by more
            than 2x).
        size: (height, width) of both output images in pixels.
        rng: the random source (``np.random.default_rng(seed)``).
        config: ranges (default :class:`HomographyConfig`).
    Returns:
        :class:`HomographyPair`; ``H_0to1`` maps image 0's COLMAP pixels to image 1's.
    Raises:
        ValueError: ``photo`` is not (H, W, 3) uint8 or ``size`` is not positive.
    """
    import cv2

    cfg = config or HomographyConfig()
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"photo must be an (H, W, 3) uint8 RGB array, got {photo.shape} {photo.dtype}")
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be a positive (height, width), got {size}")
    PH, PW = photo.shape[:2]
    aspect = w / h
    lo, hi = math.log(cfg.scale[0]), math.log(cfg.scale[1])
    short = min(PH, PW / aspect)
    best = None
    for attempt in range(cfg.max_tries):
        scale = math.exp(rng.uniform(lo, hi))
        rot = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
        base_angle = rng.uniform(-math.pi, math.pi) * 0.05  # a little absolute tilt of view 0
        # sides of the two quadrilaterals (in photo pixels): the larger as large as fits
        big = short * rng.uniform(0.55, 0.95) / (1 + 2 * cfg.perspective) / max(1.0, abs(math.sin(rot)) * aspect + abs(math.cos(rot)))
        s0, s1 = (big, big / scale) if scale >= 1 else (big * scale, big)
        if min(s0, s1) < cfg.min_side * short * 0.5 and attempt < cfg.max_tries - 1:
            continue
        # the smaller view's centre lies inside the larger one's central part
        c0 = np.array([rng.uniform(0.3, 0.7) * PW, rng.uniform(0.3, 0.7) * PH])
        off = rng.uniform(-0.2, 0.2, size=2) * max(s0, s1)
        c1 = c0 + off
        q0 = _quad(rng, c0, s0, aspect, base_angle, cfg.perspective)
        q1 = _quad(rng, c1, s1, aspect, base_angle + rot, cfg.perspective)
        if _inside(q0, PW, PH) and _inside(q1, PW, PH):
            best = (q0, q1, scale, math.degrees(rot))
            break
    if best is None:  # fall back: both views centred, no rotation, the given scale bound
        scale = 1.0
        side = short * 0.8
        c = np.array([PW / 2, PH / 2])
        q0 = _quad(rng, c, side, aspect, 0.0, 0.0)
        best = (q0, q0.copy(), scale, 0.0)
    q0, q1, scale, rot_deg = best
    A0 = np.linalg.inv(_rect_to_quad(q0, w, h))  # photo -> image 0
    A1 = np.linalg.inv(_rect_to_quad(q1, w, h))  # photo -> image 1
    views = []
    for A, q in ((A0, q0), (A1, q1)):
        src = photo
        side = math.dist(q[0], q[1])
        shrink = side / w
        M = A
        if shrink > 2:  # pre-shrink (area) to avoid aliasing, then warp
            f = 1.0 / math.floor(shrink / 1.5)
            src = cv2.resize(photo, (max(1, round(PW * f)), max(1, round(PH * f))), interpolation=cv2.INTER_AREA)
            S = np.diag([src.shape[1] / PW, src.shape[0] / PH, 1.0])  # photo -> shrunk photo
            M = A @ np.linalg.inv(S)
        views.append(cv2.warpPerspective(src, to_opencv(M), (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    if cfg.photometric:
        views = [photometric_change(v, rng) for v in views]
    H = A1 @ np.linalg.inv(A0)
    return HomographyPair(views[0], views[1], H / H[2, 2], float(scale), float(rot_deg))


def homography_warp(H_0to1: np.ndarray, size0: tuple[int, int], size1: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Dense warp of a homography.

    Args:
        H_0to1: (3, 3) homography on COLMAP pixels.
        size0, size1: (height, width) of images 0 and 1.
    Returns:
        ``(warp0, valid0)``: (h0, w0, 2) float32 normalised coordinates in image 1 of
        every pixel centre of image 0, and (h0, w0) bool: lands inside image 1 in front
        of the camera (positive projective depth).
    """
    h0, w0 = size0
    h1, w1 = size1
    ys, xs = pixel_mgrid(h0, w0)
    p = np.stack((xs, ys, np.ones_like(xs)), -1) @ np.asarray(H_0to1, np.float64).T
    z = p[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = p[..., 0] / z, p[..., 1] / z
    valid = (z > 0) & (x >= 0) & (x <= w1) & (y >= 0) & (y <= h1)
    warp = np.stack((2 * x / w1 - 1, 2 * y / h1 - 1), -1)
    warp = np.where(valid[..., None], warp, 0.0).astype(np.float32)
    return warp, valid


def photometric_change(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, gamma, colour balance, blur and noise (uint8 RGB in, out).

    Args:
        image: (H, W, 3) uint8.
        rng: the random source.
        strength: scales every range (0: identity).
    Returns:
        (H, W, 3) uint8.
    """
    import cv2

    x = image.astype(np.float32) / 255.0
    s = float(strength)
    gamma = math.exp(rng.uniform(-0.5, 0.5) * s)
    x = np.power(np.clip(x, 0, 1), gamma)
    gain = 1 + rng.uniform(-0.4, 0.4) * s
    bias = rng.uniform(-0.15, 0.15) * s
    colour = 1 + rng.uniform(-0.12, 0.12, size=3) * s
    x = (x - MID_GREY) * gain + MID_GREY + bias
    x = x * colour
    if rng.random() < 0.3 * s:
        k = int(rng.choice([3, 5]))
        x = cv2.GaussianBlur(x, (k, k), 0)
    if rng.random() < 0.5 * s:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03) * s, size=x.shape).astype(np.float32)
    return ((np.clip(x, 0, 1) * 510 + 1) // 2).astype(np.uint8)  # x * 255 rounded half up
