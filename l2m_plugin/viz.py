"""Pictures of a match: sparse matches as lines and both dense certainty maps.

Uses Pillow and OpenCV's colour maps only (no matplotlib).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from l2m_plugin.formats.colmap_model import poses_by_name
from l2m_plugin.io import write_png

__all__ = ["draw_matches", "draw_reconstruction"]


def _fit_height(im: Image.Image, height: int) -> tuple[Image.Image, float]:
    s = height / im.height
    return im.resize((max(1, round(im.width * s)), height), Image.BICUBIC), s


def _certainty_overlay(im: Image.Image, cert: np.ndarray) -> Image.Image:
    heat = cv2.applyColorMap((np.clip(cert, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    heat = cv2.resize(heat[:, :, ::-1], im.size, interpolation=cv2.INTER_LINEAR)
    gray = np.asarray(im.convert("L").convert("RGB"), dtype=np.float32)
    return Image.fromarray((0.35 * gray + 0.65 * heat).astype(np.uint8))


def draw_matches(
    image0: Image.Image,
    image1: Image.Image,
    keypoints0: torch.Tensor | np.ndarray,
    keypoints1: torch.Tensor | np.ndarray,
    certainty: torch.Tensor | np.ndarray,
    certainty0: torch.Tensor | np.ndarray | None = None,
    certainty1: torch.Tensor | np.ndarray | None = None,
    path: str | os.PathLike | None = None,
    max_lines: int = 300,
    height: int = 480,
    title: str = "",
    seed: int = 0,
) -> Image.Image:
    """Side-by-side picture: matches on top, dense certainty maps below.

    Args:
        image0, image1: the upright RGB images the keypoints refer to.
        keypoints0, keypoints1: (N, 2) pixel coordinates in those images (COLMAP
            convention, centres at i + 0.5).
        certainty: (N,) certainty of each match in [0, 1]; lines are coloured by it
            (red 0 to green 1).
        certainty0, certainty1: optional (H, W) dense certainty maps of each image.
        path: where to write the PNG (atomically), if given.
        max_lines: at most this many matches are drawn (a seeded random subset).
    Returns:
        The picture as a PIL image.
    """
    k0 = np.asarray(
        keypoints0.cpu() if hasattr(keypoints0, "cpu") else keypoints0, dtype=np.float64
    )
    k1 = np.asarray(
        keypoints1.cpu() if hasattr(keypoints1, "cpu") else keypoints1, dtype=np.float64
    )
    c = np.asarray(certainty.cpu() if hasattr(certainty, "cpu") else certainty, dtype=np.float64)
    a, s0 = _fit_height(image0, height)
    b, s1 = _fit_height(image1, height)
    rows = 2 if certainty0 is not None and certainty1 is not None else 1
    canvas = Image.new("RGB", (a.width + b.width, height * rows + 24), "white")
    canvas.paste(a, (0, 24))
    canvas.paste(b, (a.width, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 6), title or f"{len(k0)} matches (showing up to {max_lines})", fill="black")
    idx = np.random.default_rng(seed).permutation(len(k0))[:max_lines]
    for i in idx:
        x0, y0 = k0[i] * s0
        x1, y1 = k1[i] * s1
        g = float(np.clip(c[i], 0, 1))
        color = (int(255 * (1 - g)), int(255 * g), 0)
        draw.line([(x0, y0 + 24), (x1 + a.width, y1 + 24)], fill=color, width=1)
        draw.ellipse([x0 - 2, y0 + 22, x0 + 2, y0 + 26], outline=color)
        draw.ellipse([x1 + a.width - 2, y1 + 22, x1 + a.width + 2, y1 + 26], outline=color)
    if rows == 2:

        def to_np(t):
            return t.float().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)

        canvas.paste(_certainty_overlay(a, to_np(certainty0)), (0, height + 24))
        canvas.paste(_certainty_overlay(b, to_np(certainty1)), (a.width, height + 24))
        draw.text((4, height + 28), "certainty0", fill="white")
        draw.text((a.width + 4, height + 28), "certainty1", fill="white")
    if path is not None:
        write_png(path, canvas)
    return canvas


def draw_reconstruction(rec, path: str | os.PathLike, *, title: str = "", size: int = 900) -> Path:
    """Top view of a COLMAP model: 3D points (their colours) and cameras (red, with viewing direction).

    "Up" in the picture is the cameras' mean viewing direction; the view looks down
    along the cameras' mean down axis (their +y), so for photos taken upright the
    picture is a map of the scene.

    Args:
        rec: ``pycolmap.Reconstruction``.
        path: PNG file to write (atomically).
        title: text drawn at the top.
        size: side of the square picture in pixels.
    Returns:
        the path written.
    """

    poses = [(R, -R.T @ t) for R, t in poses_by_name(rec).values()]
    pts = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
    cols = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)
    canvas = Image.new("RGB", (size, size), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    if poses:
        down = np.mean([R.T @ np.array([0.0, 1.0, 0.0]) for R, _ in poses], axis=0)
        down /= max(np.linalg.norm(down), 1e-12)
        fwd = np.mean([R.T @ np.array([0.0, 0.0, 1.0]) for R, _ in poses], axis=0)
        fwd -= down * (fwd @ down)
        if np.linalg.norm(fwd) < 1e-9:
            fwd = np.cross(down, [1.0, 0.0, 0.0])
        fwd /= np.linalg.norm(fwd)
        right = np.cross(down, fwd)
        centres = np.array([c for _, c in poses])
        proj = lambda x: np.stack((x @ right, -(x @ fwd)), axis=-1)  # noqa: E731
        p2, c2 = proj(pts), proj(centres)
        ref = np.concatenate((p2, c2)) if len(p2) else c2
        lo = np.percentile(ref, 2, axis=0) if len(p2) > 50 else ref.min(0)
        hi = np.percentile(ref, 98, axis=0) if len(p2) > 50 else ref.max(0)
        lo, hi = np.minimum(lo, c2.min(0)), np.maximum(hi, c2.max(0))
        span = max(float((hi - lo).max()), 1e-9)
        margin = 0.06 * size
        to_px = lambda q: (q - (lo + hi) / 2) / span * (size - 2 * margin) + size / 2  # noqa: E731
        for (x, y), c in zip(to_px(p2), cols, strict=True):
            draw.rectangle((float(x), float(y), float(x) + 1, float(y) + 1), fill=tuple(int(v) for v in c))
        arrow = 0.04 * span
        for (R, c), (x, y) in zip(poses, to_px(c2), strict=True):
            d = proj((c + arrow * (R.T @ np.array([0.0, 0.0, 1.0])))[None])[0]
            dx, dy = to_px(d[None])[0]
            draw.line((float(x), float(y), float(dx), float(dy)), fill=(255, 80, 80), width=2)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(255, 60, 60))
    if title:
        draw.text((10, 8), title, fill=(235, 235, 235))
    return write_png(path, canvas)
