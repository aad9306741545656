"""Coordinate conventions: the one place where pixel centres are decided.

Three coordinate frames are used in l2m_plugin, and every conversion between
them goes through this module.

``normalized``
    RoMa / ``torch.nn.functional.grid_sample(align_corners=False)`` coordinates:
    x and y in [-1, 1], where -1 and +1 are the outer *edges* of the image, so
    the centre of pixel column ``i`` of an image of width ``W`` is at
    ``(2 * i + 1) / W - 1``. Dense warps (``warp0``/``warp1``) use this frame.

``pixel``
    COLMAP's convention: continuous pixel coordinates in which the top-left
    corner of the image is (0, 0) and the centre of pixel (i, j) is at
    (i + 0.5, j + 0.5). ``L2M.sample`` returns keypoints in this frame; it is
    what RoMa's ``to_pixel_coordinates`` returns and what COLMAP databases store.

``hloc``
    hloc / OpenCV convention: the centre of pixel (i, j) is at (i, j), so
    ``hloc = pixel - 0.5``. Used at the hloc and OpenCV boundaries, and as the
    *index* frame of rasterisers (pixel (i, j) covers [i - 0.5, i + 0.5)); the names
    :func:`index_to_pixel` / :func:`pixel_to_index` say that use.

Every ``+ 0.5`` / ``- 0.5`` between these frames is written here and only here
(``tests/test_layers.py`` checks it).

It also maps points between an image's *stored* pixel grid and its *upright*
grid (after applying the EXIF orientation tag, values 1-8 of the EXIF 2.3
specification, as ``PIL.ImageOps.exif_transpose`` does). The matcher always
looks at the upright image; keypoints are returned in the stored grid by
default, which is the grid COLMAP keeps keypoints and cameras in (COLMAP reads
EXIF orientation only to run its detectors upright, colmap/colmap PR #4122).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "normalized_grid",
    "pixel_arange",
    "pixel_mgrid",
    "index_to_pixel",
    "pixel_to_index",
    "MID_GREY",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "pixel_to_hloc",
    "hloc_to_pixel",
    "upright_size",
    "stored_to_upright",
    "upright_to_stored",
]


def normalized_grid(
    height: int, width: int, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Normalised coordinates of every pixel centre of a ``height`` x ``width`` grid.

    Returns:
        (height, width, 2) tensor, last axis (x, y), values
        ``linspace(-1 + 1/n, 1 - 1/n, n)`` along each axis (pixel centres,
        ``align_corners=False``), exactly as RoMa's ``get_grid`` builds them.
    """
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def normalized_to_pixel(coords: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Normalised (x, y) in [-1, 1] to COLMAP pixel coordinates (centres at i + 0.5).

    Args:
        coords: (..., 2) tensor, last axis (x, y), any float dtype.
        width, height: size in pixels of the image the coordinates refer to.
    Returns:
        (..., 2) tensor of the same dtype: ``x_px = (x + 1) * width / 2``.
    """
    scale = coords.new_tensor([width / 2.0, height / 2.0])
    return (coords + 1.0) * scale


def pixel_to_normalized(coords: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Inverse of :func:`normalized_to_pixel`: ``x = 2 * x_px / width - 1``."""
    scale = coords.new_tensor([2.0 / width, 2.0 / height])
    return coords * scale - 1.0


def pixel_to_hloc(coords):
    """COLMAP pixel coordinates (centres at i + 0.5) to hloc's / OpenCV's (centres at i):
    subtract 0.5. Any array type (tensor, ndarray, float); same type and dtype out."""
    return coords - 0.5


def hloc_to_pixel(coords):
    """hloc / OpenCV coordinates (centres at i) to COLMAP pixel coordinates (centres at
    i + 0.5): add 0.5. Any array type; same type and dtype out."""
    return coords + 0.5


def index_to_pixel(index):
    """The COLMAP pixel coordinate of the centre of pixel (row or column) ``index``: index + 0.5.
    Accepts integer or float indices (a float index is a position in the index frame)."""
    return index + 0.5


def pixel_to_index(coords):
    """COLMAP pixel coordinates to the index frame (centre of pixel i at i), e.g. for
    ``floor``/``round`` to the pixel that holds a point, or ``grid_sample(align_corners=True)``."""
    return coords - 0.5


def pixel_arange(n: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """(n,) tensor of the pixel-centre coordinates 0.5, 1.5, ..., n - 0.5 (COLMAP frame)."""
    return torch.arange(n, dtype=dtype, device=device) + 0.5


def pixel_mgrid(height: int, width: int, stride: int = 1) -> np.ndarray:
    """(2, h, w) float64 array ``(y, x)`` of pixel-centre coordinates in the COLMAP frame, every
    ``stride`` pixels: ``np.mgrid[0:height:stride, 0:width:stride] + 0.5``."""
    return np.mgrid[0:height:stride, 0:width:stride].astype(np.float64) + 0.5


#: The middle of the [0, 1] intensity range (contrast changes pivot on it); not a coordinate.
MID_GREY = 0.5


def _check_orientation(orientation: int) -> int:
    orientation = int(orientation)
    if orientation not in range(1, 9):
        raise ValueError(
            f"EXIF orientation must be an integer in 1..8, got {orientation}; "
            "use 1 for images without an orientation tag."
        )
    return orientation


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) of the upright image for a stored image of ``width`` x ``height``."""
    return (height, width) if _check_orientation(orientation) >= 5 else (width, height)


def stored_to_upright(
    coords: torch.Tensor, width: int, height: int, orientation: int
) -> torch.Tensor:
    """Map continuous pixel coordinates from the stored grid to the upright grid.

    Args:
        coords: (..., 2) pixel coordinates (x, y) in the *stored* image, COLMAP
            convention (corner at 0, centres at i + 0.5).
        width, height: size of the stored image in pixels.
        orientation: EXIF orientation tag, 1..8.
    Returns:
        (..., 2) coordinates in the upright image (``PIL.ImageOps.exif_transpose``).
    Raises:
        ValueError: orientation outside 1..8.
    """
    o = _check_orientation(orientation)
    x, y = coords[..., 0], coords[..., 1]
    W, H = float(width), float(height)
    if o == 1:
        u, v = x, y
    elif o == 2:  # mirrored horizontally
        u, v = W - x, y
    elif o == 3:  # rotated 180
        u, v = W - x, H - y
    elif o == 4:  # mirrored vertically
        u, v = x, H - y
    elif o == 5:  # transposed
        u, v = y, x
    elif o == 6:  # displayed after a 90 degree clockwise rotation
        u, v = H - y, x
    elif o == 7:  # transversed
        u, v = H - y, W - x
    else:  # 8: displayed after a 90 degree counter-clockwise rotation
        u, v = y, W - x
    return torch.stack((u, v), dim=-1)


def upright_to_stored(
    coords: torch.Tensor, width: int, height: int, orientation: int
) -> torch.Tensor:
    """Inverse of :func:`stored_to_upright`.

    Args:
        coords: (..., 2) pixel coordinates (x, y) in the *upright* image.
        width, height: size of the *stored* image in pixels.
        orientation: EXIF orientation tag, 1..8.
    Returns:
        (..., 2) coordinates in the stored image grid.
    """
    o = _check_orientation(orientation)
    u, v = coords[..., 0], coords[..., 1]
    W, H = float(width), float(height)
    if o == 1:
        x, y = u, v
    elif o == 2:
        x, y = W - u, v
    elif o == 3:
        x, y = W - u, H - v
    elif o == 4:
        x, y = u, H - v
    elif o == 5:
        x, y = v, u
    elif o == 6:
        x, y = v, H - u
    elif o == 7:
        x, y = W - v, H - u
    else:
        x, y = W - v, u
    return torch.stack((x, y), dim=-1)
