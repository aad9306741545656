"""One synthetic training pair from one image and its depth (L2M paper Sec. 3.3).

Pipeline of :func:`synthesize_pair`, every random draw from one ``numpy`` Generator in a
fixed order (same seed and inputs = same pair):

1. intrinsics (:func:`sample_intrinsics`), 2. a camera motion with enough overlap
(:func:`sample_motion`), 3. lifting and z-buffer rendering with exact warps
(:mod:`l2m_plugin.synthesis.mesh`), 4. relighting of each view with its own lights,
5. hole filling of image 1, 6. photometric jitter of each view
(:mod:`l2m_plugin.synthesis.appearance`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from l2m_plugin.coords import pixel_mgrid
from l2m_plugin.synthesis import appearance
from l2m_plugin.synthesis.config import SynthConfig
from l2m_plugin.synthesis.errors import SynthesisError
from l2m_plugin.synthesis.mesh import (
    RasterBudgetError,
    lift,
    project,
    rasterize,
    sample_image,
    warps,
)

__all__ = [
    "SynthPair",
    "sample_intrinsics",
    "sample_motion",
    "rotation_from_axis_angle",
    "covisible_fraction",
    "synthesize_pair",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthPair:
    """A synthetic pair with exact dense correspondences.

    Attributes (H, W = the size of both images; conventions of :mod:`l2m_plugin.geometry`):
        image0: (H, W, 3) uint8 RGB, the source photo with its own appearance change.
        image1: (H, W, 3) uint8 RGB, the rendered novel view, holes filled.
        K0, K1: (3, 3) float64 intrinsics, COLMAP pixels (centres at j + 0.5, i + 0.5).
        T_0to1: (4, 4) float64 rigid transform, camera-0 coordinates -> camera-1.
        depth0, depth1: (H, W) float32 z-depth in scene units, 0 = no surface (sky, holes,
            inpainted pixels).
        valid0, valid1: (H, W) bool, an exact correspondence exists (visible in the other
            view, inside it, not inpainted).
        warp0, warp1: (H, W, 2) float32 normalised coordinates ([-1, 1],
            ``align_corners=False``) of each pixel centre in the other image; 2.0 where
            not valid.
        hole1: (H, W) bool, pixels of image 1 filled by inpainting.
        info: what was drawn (focal length, motion model and parameters, lights, tries,
            covisible share).
    """

    image0: np.ndarray
    image1: np.ndarray
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray
    depth0: np.ndarray
    depth1: np.ndarray
    valid0: np.ndarray
    valid1: np.ndarray
    warp0: np.ndarray
    warp1: np.ndarray
    hole1: np.ndarray
    info: dict = field(default_factory=dict)

    def geometry(self) -> dict[str, np.ndarray]:
        """The arrays of ``geometry.npz`` (format "l2m-synth" version 1), with their dtypes."""
        return {
            "K0": self.K0.astype(np.float64),
            "K1": self.K1.astype(np.float64),
            "T_0to1": self.T_0to1.astype(np.float64),
            "depth0": self.depth0.astype(np.float32),
            "depth1": self.depth1.astype(np.float32),
            "valid0": self.valid0.astype(bool),
            "valid1": self.valid1.astype(bool),
            "warp0": self.warp0.astype(np.float32),
            "warp1": self.warp1.astype(np.float32),
        }


def rotation_from_axis_angle(rotvec) -> np.ndarray:
    """(3,) axis-angle vector in radians -> (3, 3) rotation matrix (Rodrigues)."""
    v = np.asarray(rotvec, np.float64).reshape(3)
    a = float(np.linalg.norm(v))
    if a < 1e-15:
        return np.eye(3)
    k = v / a
    Kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * Kx + (1 - np.cos(a)) * (Kx @ Kx)


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    """``sign * U(lo, hi)`` with a fair random sign (the authors' ``rand_tensor``)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return sign * float(rng.uniform(lo, hi))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_intrinsics(size: tuple[int, int], conf, rng: np.random.Generator):
    """Intrinsics of both views.

    ``f0 = U(focal_range) * max(W, H)`` (authors' ``get_data.py``: f = U(0.45, 0.75) x the
    square image side), ``f1 = f0 * zoom`` with zoom log-uniform in ``zoom_range``;
    principal point at the image centre (W / 2, H / 2) in COLMAP pixels.

    Args:
        size: (W, H).
        conf: :class:`~l2m_plugin.synthesis.config.CameraConf`.
    Returns:
        ``(K0, K1, info)``: (3, 3) float64 each and a dict with ``focal0``, ``zoom``.
    """
    w, h = size
    f0 = float(rng.uniform(*conf.focal_range)) * max(w, h)
    lo, hi = conf.zoom_range
    zoom = _log_uniform(rng, lo, hi) if hi > lo else float(lo)

    def K(f):
        return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])

    return K(f0), K(f0 * zoom), {"focal0": f0, "zoom": zoom}


def _rot_xyz(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Rx(pitch) @ Ry(yaw), angles in radians."""
    cp, sp, cy, sy, cr, sr = (np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw),
                              np.cos(roll), np.sin(roll))  # fmt: skip
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Rz @ Rx @ Ry


def sample_motion(depth: np.ndarray, conf, rng: np.random.Generator):
    """Draw one relative pose ``T_0to1`` (X1 = R X0 + t).

    "l2m" model (the authors' ``get_rand_ext``): each translation component
    ``sign * U(range) * ref`` and each axis-angle component ``sign * U(rotation_deg)``,
    ``ref`` the ``depth_reference_percentile`` of the depth (the near surface, 1.0 for the
    built-in depth sources, so the authors' units).

    "orbit" model: camera 1 turns about the pivot ``P = (0, 0, d)``, ``d`` the median depth
    of the central half of the image, by yaw and pitch (random signs), rolls, and sits at
    ``s * d`` from it (``s`` log-uniform in ``orbit_distance_scale``), plus a translation
    jitter: ``X1 = R (X0 - P) + (0, 0, s d) + j``.

    Args:
        depth: (H, W) z-depth of image 0 (0 = none).
        conf: :class:`~l2m_plugin.synthesis.config.MotionConf`.
    Returns:
        ``(T_0to1, info)``: (4, 4) float64 and a dict with the model and its parameters
        (angles in degrees).
    Raises:
        SynthesisError: the depth map has no positive value.
    """
    z = np.asarray(depth, np.float64)
    pos = z[z > 0]
    if pos.size == 0:
        raise SynthesisError("the depth map has no positive value: nothing to lift")
    T = np.eye(4)
    if rng.random() < conf.orbit_probability:
        h, w = z.shape
        centre = z[h // 4 : h - h // 4, w // 4 : w - w // 4]
        d = float(np.median(centre[centre > 0])) if (centre > 0).any() else float(np.median(pos))
        yaw = _signed(rng, *conf.orbit_yaw_deg)
        pitch = _signed(rng, *conf.orbit_pitch_deg)
        roll = _signed(rng, *conf.orbit_roll_deg)
        s = _log_uniform(rng, *conf.orbit_distance_scale)
        jit = rng.uniform(-1, 1, 3) * conf.orbit_translation_jitter * d
        R = _rot_xyz(*np.deg2rad([pitch, yaw, roll]))
        P = np.array([0.0, 0.0, d])
        T[:3, :3] = R
        T[:3, 3] = np.array([0.0, 0.0, s * d]) - R @ P + jit
        info = {"model": "orbit", "yaw_deg": yaw, "pitch_deg": pitch, "roll_deg": roll,
                "distance_scale": s, "pivot_depth": d}  # fmt: skip
    else:
        ref = float(np.percentile(pos, conf.depth_reference_percentile))
        t = np.array([_signed(rng, *conf.translation_x), _signed(rng, *conf.translation_y),
                      _signed(rng, *conf.translation_z)]) * ref  # fmt: skip
        rotvec_deg = np.array([_signed(rng, *conf.rotation_deg) for _ in range(3)])
        T[:3, :3] = rotation_from_axis_angle(np.deg2rad(rotvec_deg))
        T[:3, 3] = t
        info = {"model": "l2m", "rotvec_deg": rotvec_deg.tolist(), "translation": t.tolist(),
                "depth_reference": ref}  # fmt: skip
    info["rotation_deg"] = float(
        np.rad2deg(np.arccos(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1)))
    )
    return T, info


def covisible_fraction(depth, K0, K1, T_0to1, size1, near_clip: float = 0.01, stride: int = 4):
    """Cheap overlap estimate of a motion, before rendering it.

    The smaller of: the share of image 0's pixels with depth (every ``stride``-th pixel)
    that land inside image 1 in front of it, and the share of image 1's ``2 * stride``-px
    cells that receive at least one of them. Both ignore occlusion and holes between
    landing points, so it bounds the rendered overlap from above (roughly); used to redraw
    motions that leave too little overlap without rasterising them.
    """
    z = np.asarray(depth, np.float64)[::stride, ::stride]
    h, w = np.asarray(depth).shape
    ys, xs = pixel_mgrid(h, w, stride)
    m = z > 0
    if not m.any():
        return 0.0
    pix = np.stack((xs[m], ys[m], np.ones(m.sum())), 1)
    X0 = (pix @ np.linalg.inv(K0).T) * z[m][:, None]
    X1 = X0 @ T_0to1[:3, :3].T + T_0to1[:3, 3]
    zf = X1[:, 2]
    uv = (X1 @ np.asarray(K1).T)[:, :2] / np.where(zf > 1e-12, zf, 1e-12)[:, None]
    w1, h1 = size1
    ok = (zf > near_clip) & (uv[:, 0] >= 0) & (uv[:, 0] < w1) & (uv[:, 1] >= 0) & (uv[:, 1] < h1)
    cell = 2 * stride
    gw, gh = -(-w1 // cell), -(-h1 // cell)
    hit = np.zeros(gh * gw, bool)
    hit[(uv[ok, 1] // cell).astype(int) * gw + (uv[ok, 0] // cell).astype(int)] = True
    return float(min(ok.mean(), hit.mean()))


def _check_inputs(image, depth):
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be a (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")
    z = np.asarray(depth, dtype=np.float64)
    if z.shape != img.shape[:2]:
        raise ValueError(f"depth must have the image's shape {img.shape[:2]}, got {z.shape}")
    if min(z.shape) < 8:
        raise ValueError(f"image is too small to synthesise a view: {z.shape[1]}x{z.shape[0]}")
    return img, np.where(np.isfinite(z) & (z > 0), z, 0.0)


def synthesize_pair(
    image: np.ndarray,
    depth: np.ndarray,
    conf: SynthConfig | None = None,
    rng: np.random.Generator | int | None = None,
    *,
    sky_mask: np.ndarray | None = None,
    K0: np.ndarray | None = None,
) -> SynthPair:
    """Make a training pair from one image and its depth (L2M Sec. 3.3).

    Args:
        image: (H, W, 3) uint8 RGB, image 0.
        depth: (H, W) float z-depth of image 0 in scene units (near surface ~1; see
            :mod:`l2m_plugin.synthesis.depth`), at the pixel centres; <= 0 or non-finite =
            no surface.
        conf: :class:`SynthConfig` (default: the authors' ranges).
        rng: ``numpy.random.Generator`` or an int seed (default: seed 0).
        sky_mask: optional (H, W) bool, True = sky: those pixels get no depth, hence no
            correspondences (and are holes in image 1).
        K0: optional (3, 3) intrinsics of image 0 (COLMAP pixels) instead of sampling the
            focal length: several views of one lifted scene share it
            (:func:`l2m_plugin.lifting.synthesize_views`). Image 1 keeps the sampled zoom
            (``K1 = K0`` with both focal lengths times the zoom). The random stream is the
            same with or without it.
    Returns:
        :class:`SynthPair`.
    Raises:
        ValueError: bad shapes or dtypes.
        SynthesisError: no pixel with depth, or no motion could be rendered.
        BackendUnavailableError: ``inpaint.method='diffusers'`` without diffusers/weights.
    """
    conf = conf if conf is not None else SynthConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
    img, z = _check_inputs(image, depth)
    if sky_mask is not None:
        sky = np.asarray(sky_mask, bool)
        if sky.shape != z.shape:
            raise ValueError(f"sky_mask must have shape {z.shape}, got {sky.shape}")
        z = np.where(sky, 0.0, z)
    if (z > 0).sum() < 16:
        raise SynthesisError("fewer than 16 pixels have depth (all sky or invalid?): no pair")
    h, w = z.shape
    K0_drawn, K1, cam_info = sample_intrinsics((w, h), conf.camera, rng)
    if K0 is None:
        K0 = K0_drawn
    else:
        K0 = np.asarray(K0, np.float64)
        if K0.shape != (3, 3) or not np.isfinite(K0).all() or K0[0, 0] <= 0 or K0[1, 1] <= 0:
            raise ValueError(f"K0 must be a finite (3, 3) intrinsic matrix with positive focal lengths, got {K0!r}")
        K1 = K0.copy()
        K1[0, 0] *= cam_info["zoom"]
        K1[1, 1] *= cam_info["zoom"]
        cam_info["focal0"] = float(K0[0, 0])
    mesh = lift(img, z, K0, max_rel_depth_jump=conf.mesh.max_rel_depth_jump)
    if len(mesh.faces) == 0:
        raise SynthesisError("the depth map has no continuous surface (every triangle dropped)")
    mc = conf.motion
    raster_kw = {"near_clip": conf.mesh.near_clip,
                 "max_candidates_per_pixel": conf.mesh.max_candidates_per_pixel}  # fmt: skip
    best, accepted = None, None
    for attempt in range(mc.max_tries):
        T, info = sample_motion(z, mc, rng)
        cov = covisible_fraction(z, K0, K1, T, (w, h), conf.mesh.near_clip)
        info.update(tries=attempt + 1, covisible_estimate=cov)
        if cov < mc.min_covisible and best is not None and cov <= best[0]:
            continue  # the estimate bounds the overlap from above: cannot beat the best
        try:
            raster = rasterize(mesh, K1, T, (w, h), **raster_kw)
        except RasterBudgetError as exc:
            logger.debug("motion redrawn: %s", exc)
            continue
        # both sides must overlap: image 0 pixels landing in view 1, and view 1 pixels
        # showing the surface (not holes)
        cov = min(cov, 1.0 - float(raster.hole.double().mean()))
        info["covisible"] = cov
        if best is None or cov > best[0]:
            best = (cov, T, raster, info)
        if cov >= mc.min_covisible:
            accepted = (T, raster, info)
            break
    if accepted is None:
        if best is None:
            raise SynthesisError(
                f"no renderable camera motion in {mc.max_tries} tries (the camera came too "
                "close to a surface each time); lower the translation ranges"
            )
        cov, T, raster, info = best
        logger.info("no motion reached motion.min_covisible=%.2f in %d tries; keeping the best "
                    "(%.2f)", mc.min_covisible, mc.max_tries, cov)  # fmt: skip
        accepted = (T, raster, info)
    T, raster, info = accepted
    wp = warps(mesh, raster, K1, T, near_clip=conf.mesh.near_clip,
               visibility_rel_tol=conf.mesh.visibility_rel_tol)  # fmt: skip
    hole1 = raster.hole.numpy()
    uv0 = project(raster.points0, torch.from_numpy(K0))[0].numpy()  # image-1 pixel -> image 0 px

    # appearance: each view its own lights; shading lives on the surface (camera-0 frame)
    rc = conf.relight
    surface = z > 0
    pts0 = normals = None
    centre1 = -T[:3, :3].T @ T[:3, 3]
    texture0 = img.astype(np.float32)
    texture1 = img.astype(np.float32)
    lights_info = []
    for view, eye in ((0, np.zeros(3)), (1, centre1)):
        if rng.random() >= rc.probability:
            lights_info.append(None)
            continue
        if pts0 is None:
            pts0 = appearance.backproject(z, K0)
            normals = appearance.normals_from_depth(z, K0)
        lights = appearance.sample_lights(rc, rng)
        diffuse, spec = appearance.shade(pts0, normals, lights, eye=eye)
        relit = appearance.relight(img, diffuse, spec, lights, mask=surface)
        if view == 0:
            texture0 = relit
        else:
            texture1 = relit
        lights_info.append(len(lights["positions"]))
    image0 = np.clip(np.rint(texture0), 0, 255).astype(np.uint8)
    image1 = sample_image(texture1, uv0, ~hole1)
    image1 = np.clip(np.rint(image1), 0, 255).astype(np.uint8)
    image1 = appearance.inpaint(image1, hole1, conf.inpaint, seed=int(rng.integers(2**31 - 1)))
    image0 = appearance.photometric_jitter(image0, conf.jitter, rng)
    image1 = appearance.photometric_jitter(image1, conf.jitter, rng)

    valid0, valid1 = wp["valid0"].numpy(), wp["valid1"].numpy()
    depth1 = np.where(hole1, 0.0, raster.depth.numpy()).astype(np.float32)
    info = {**cam_info, **info, "lights": lights_info, "valid0_share": float(valid0.mean()),
            "hole1_share": float(hole1.mean()), "candidates": raster.candidates}  # fmt: skip
    return SynthPair(
        image0=image0,
        image1=image1,
        K0=K0,
        K1=K1,
        T_0to1=T,
        depth0=z.astype(np.float32),
        depth1=depth1,
        valid0=valid0,
        valid1=valid1,
        warp0=wp["warp0"].numpy().astype(np.float32),
        warp1=wp["warp1"].numpy().astype(np.float32),
        hole1=hole1,
        info=info,
    )
