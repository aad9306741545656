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

__all__ = ["draw_matches"]


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
    k0 = np.asarray(keypoints0.cpu() if hasattr(keypoints0, "cpu") else keypoints0, dtype=np.float64)
    k1 = np.asarray(keypoints1.cpu() if hasattr(keypoints1, "cpu") else keypoints1, dtype=np.float64)
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
            return (t.float().cpu().numpy() if torch.is_tensor(t) else np.asarray(t))
        canvas.paste(_certainty_overlay(a, to_np(certainty0)), (0, height + 24))
        canvas.paste(_certainty_overlay(b, to_np(certainty1)), (a.width, height + 24))
        draw.text((4, height + 28), "certainty0", fill="white")
        draw.text((a.width + 4, height + 28), "certainty1", fill="white")
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial.png")
        canvas.save(tmp)
        os.replace(tmp, path)
    return canvas
