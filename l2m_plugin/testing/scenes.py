"""Synthetic multi-view scenes with exact depth and poses, for testing matchers and SfM.

A scene is a textured room corner (back wall, floor, left wall) with a textured box
standing in it, rendered by exact ray casting through calibrated pinhole cameras on
an arc. Each :class:`View` carries its RGB image, z-depth at every pixel centre, the
intrinsics and the world-to-camera pose, in the conventions of
:mod:`l2m_plugin.geometry` (COLMAP pixels: centres at i + 0.5).

Used by the oracle matcher (:mod:`l2m_plugin.matching.oracle`) to prove that every adapter
(hloc, kornia, ``l2m reconstruct``) maps coordinates correctly: the oracle's matches
are exact, so any convention error shows up as epipolar error or pose error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from l2m_plugin.coords import pixel_arange
from l2m_plugin.geometry import fundamental_from_pose, to_hloc_intrinsics

__all__ = ["View", "SyntheticScene", "make_scene"]


@dataclass
class View:
    """One rendered camera.

    Attributes:
        name: image file name (e.g. ``"view_000.png"``).
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 z-depth (scene units) at pixel centres, 0 = no surface.
        K: (3, 3) float64 intrinsics, COLMAP pixel convention (centres at i + 0.5).
        T_w2c: (4, 4) float64 world-to-camera transform.
    """

    name: str
    image: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    T_w2c: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) in pixels."""
        return self.image.shape[1], self.image.shape[0]


@dataclass
class SyntheticScene:
    """A list of :class:`View` of one static scene."""

    views: list[View]

    def view(self, name: str) -> View:
        """The view called ``name``; KeyError if there is none."""
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"no view named {name!r}; views: {[v.name for v in self.views]}")

    def write_images(self, directory: str | Path) -> list[Path]:
        """Write every view's image losslessly as ``directory/<name>`` (PNG); returns the paths."""
        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for v in self.views:
            path = directory / v.name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(v.image).save(path)
            paths.append(path)
        return paths

    def relative_pose(self, name0: str, name1: str) -> np.ndarray:
        """``T_0to1`` (4, 4) float64: camera-0 coordinates to camera-1 coordinates."""
        return self.view(name1).T_w2c @ np.linalg.inv(self.view(name0).T_w2c)

    def fundamental(self, name0: str, name1: str, convention: str = "colmap") -> np.ndarray:
        """Fundamental matrix (3, 3) float64 with ``x1^T F x0 = 0`` for homogeneous pixels.

        Args:
            convention: ``"colmap"`` (pixel centres at i + 0.5) or ``"hloc"`` (centres on
                integer coordinates: hloc, OpenCV, kornia).
        """

        if convention not in ("colmap", "hloc"):
            raise ValueError(f"convention must be 'colmap' or 'hloc', got {convention!r}")
        K0 = torch.from_numpy(self.view(name0).K)
        K1 = torch.from_numpy(self.view(name1).K)
        if convention == "hloc":
            K0, K1 = to_hloc_intrinsics(K0), to_hloc_intrinsics(K1)
        T = torch.from_numpy(self.relative_pose(name0, name1))
        return fundamental_from_pose(K0, K1, T).numpy()


# (axis, value, (lo_a, hi_a), (lo_b, hi_b)): the rectangle {p[axis] = value} with the two
# other coordinates (in increasing axis order) inside the bounds. World frame: x right,
# y down, z forward (the cameras' frame at identity rotation).
_ROOM = [
    (2, 9.0, (-6.0, 6.0), (-5.0, 2.0)),  # back wall
    (1, 2.0, (-6.0, 6.0), (-2.0, 9.0)),  # floor
    (0, -4.0, (-5.0, 2.0), (-2.0, 9.0)),  # left wall
    (0, 5.0, (-5.0, 2.0), (-2.0, 9.0)),  # right wall
]


def _box(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float]) -> list:
    return [
        (0, x[0], y, z), (0, x[1], y, z),
        (1, y[0], x, z), (1, y[1], x, z),
        (2, z[0], x, y), (2, z[1], x, y),
    ]  # fmt: skip


def _texture(rng: np.random.Generator, size: int = 768) -> torch.Tensor:
    """(3, size, size) float texture: smooth multi-scale colour noise plus sharp shapes."""
    tex = torch.zeros(3, size, size)
    for cells in (4, 16, 64):
        noise = torch.from_numpy(rng.random((1, 3, cells, cells), dtype=np.float32))
        tex += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0] / 3
    for _ in range(260):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(3, 14)
        colour = torch.from_numpy(rng.random(3, dtype=np.float32))[:, None, None]
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
        yy, xx = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
        if rng.random() < 0.5:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        else:
            mask = ((xx - cx).abs() < r) & ((yy - cy).abs() < r * rng.uniform(0.4, 1.0))
        tex[:, y0:y1, x0:x1] = torch.where(mask, colour, tex[:, y0:y1, x0:x1])
    return tex.clamp(0, 1)


def _look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack((x, y, z))
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ centre
    return T


def _render(quads, textures, K, T_w2c, size, supersample: int = 2):
    """Ray-cast the quads; returns (image (H, W, 3) uint8, depth (H, W) float32)."""
    w, h = size
    R = torch.from_numpy(T_w2c[:3, :3])
    c = torch.from_numpy(-T_w2c[:3, :3].T @ T_w2c[:3, 3])
    Kinv = torch.from_numpy(np.linalg.inv(K))

    def cast(us: torch.Tensor, vs: torch.Tensor):
        pix = torch.stack((us, vs, torch.ones_like(us)), dim=-1).double()
        rays_c = pix @ Kinv.T  # z = 1 in camera frame: ray parameter t is the z-depth
        rays_w = rays_c @ R  # R^T applied to row vectors
        best_t = torch.full(us.shape, float("inf"), dtype=torch.float64)
        colour = torch.zeros((*us.shape, 3), dtype=torch.float32)
        for (axis, value, ra, rb), tex in zip(quads, textures, strict=True):
            a_ax, b_ax = [i for i in range(3) if i != axis]
            d = rays_w[..., axis]
            t = (value - c[axis]) / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
            p = c + t[..., None] * rays_w
            pa, pb = p[..., a_ax], p[..., b_ax]
            hit = (
                (t > 1e-6)
                & (pa >= ra[0])
                & (pa <= ra[1])
                & (pb >= rb[0])
                & (pb <= rb[1])
                & (t < best_t)
            )
            if not hit.any():
                continue
            # Texture coordinates: one texture tile per 4 scene units, repeated.
            ga = ((pa - ra[0]) / 4.0 % 1.0) * 2 - 1
            gb = ((pb - rb[0]) / 4.0 % 1.0) * 2 - 1
            g = torch.stack((ga, gb), dim=-1).float()[None]
            sampled = F.grid_sample(tex[None], g, mode="bilinear", align_corners=False)[0]
            colour = torch.where(hit[..., None], sampled.permute(1, 2, 0), colour)
            best_t = torch.where(hit, t, best_t)
        return colour, best_t

    s = supersample
    offs = pixel_arange(s) / s
    xs = (torch.arange(w, dtype=torch.float64)[:, None] + offs[None]).reshape(-1)
    ys = (torch.arange(h, dtype=torch.float64)[:, None] + offs[None]).reshape(-1)
    vv, uu = torch.meshgrid(ys, xs, indexing="ij")
    colour, _ = cast(uu, vv)
    colour = colour.reshape(h, s, w, s, 3).mean(dim=(1, 3))
    vc, uc = torch.meshgrid(
        pixel_arange(h),
        pixel_arange(w),
        indexing="ij",
    )
    _, depth = cast(uc, vc)
    depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
    image = (colour.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return image, depth.float().numpy()


def make_scene(
    num_views: int = 5, size: tuple[int, int] = (320, 240), seed: int = 0
) -> SyntheticScene:
    """Render ``num_views`` views of a textured room corner with a box in it.

    Cameras stand on an arc of about 40 degrees (about 1.5 scene units apart end to
    end, 6-9 units from the walls), look at the box with a little random jitter,
    and share one pinhole camera with focal length 0.9 W and a principal point
    3 px off the image centre (so that half-pixel convention errors are visible).

    Args:
        num_views: number of cameras (>= 2).
        size: (W, H) of every image in pixels.
        seed: seeds the textures and the camera jitter.
    Returns:
        :class:`SyntheticScene` with views named ``view_000.png``, ``view_001.png``, ...
    """
    if num_views < 2:
        raise ValueError(f"num_views must be >= 2, got {num_views}")
    w, h = size
    rng = np.random.default_rng(seed)
    quads = (
        _ROOM
        + _box((-1.0, 1.0), (0.4, 2.0), (4.0, 5.5))
        + _box((1.8, 3.0), (-0.8, 2.0), (6.0, 7.0))
    )
    textures = [_texture(rng) for _ in quads]
    K = np.array([[0.9 * w, 0.0, w / 2 + 3.0], [0.0, 0.9 * w, h / 2 - 2.0], [0.0, 0.0, 1.0]])
    target = np.array([0.0, 0.8, 5.0])
    views = []
    for i, angle in enumerate(np.linspace(-20, 20, num_views)):
        a = np.deg2rad(angle)
        centre = target + 5.5 * np.array([np.sin(a), 0.0, -np.cos(a)]) + np.array([0.0, -1.2, 0.0])
        centre = centre + rng.normal(0, 0.05, 3)
        T = _look_at(centre, target + rng.normal(0, 0.15, 3))
        image, depth = _render(quads, textures, K, T, size)
        views.append(View(name=f"view_{i:03d}.png", image=image, depth=depth, K=K.copy(), T_w2c=T))
    return SyntheticScene(views)
