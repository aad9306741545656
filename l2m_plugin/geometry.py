"""Two-view geometry on calibrated pinhole cameras: warps from depth, epipolar geometry.

Conventions (the project's, see :mod:`l2m_plugin.coords`):

- pixel coordinates are COLMAP's: the top-left image corner is (0, 0) and the
  centre of pixel (row i, column j) is (j + 0.5, i + 0.5);
- intrinsics ``K`` (3, 3) map camera coordinates to those pixel coordinates
  (a centred principal point is (W / 2, H / 2));
- poses are world-to-camera 4 x 4 matrices; ``T_0to1 = T_w2c1 @ inv(T_w2c0)``
  maps camera-0 coordinates to camera-1 coordinates (LoFTR's and RoMa's ``T_0to1``);
- depth is the z coordinate in the camera frame (not the ray length), 0 or
  non-finite where there is no surface;
- warps are normalised coordinates in [-1, 1] of the *other* image
  (:func:`l2m_plugin.coords.pixel_to_normalized`).

This module is shared by the oracle matcher (:mod:`l2m_plugin.matching.oracle`), the SfM
tests and the stage-2 training data (pairs whose correspondences are exact by
construction, L2M paper Sec. 3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from l2m_plugin.coords import (
    normalized_grid,
    normalized_to_pixel,
    pixel_to_hloc,
    pixel_to_normalized,
)

__all__ = ["warp_from_depth", "fundamental_from_pose", "epipolar_distance", "to_hloc_intrinsics"]


def _batched(x: torch.Tensor, ndim: int, name: str) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == ndim - 1:
        x = x[None]
    if x.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim - 1} or {ndim} dimensions, got shape {tuple(x.shape)}"
        )
    return x


def warp_from_depth(
    depth0: torch.Tensor,
    K0: torch.Tensor,
    K1: torch.Tensor,
    T_0to1: torch.Tensor,
    *,
    size1: tuple[int, int] | None = None,
    depth1: torch.Tensor | None = None,
    rel_depth_tol: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where every pixel centre of image 0 lands in image 1, given depth and relative pose.

    Args:
        depth0: (B, H0, W0) or (H0, W0) float z-depth of image 0 at its pixel centres;
            <= 0 or non-finite marks pixels without a surface.
        K0: (B, 3, 3) or (3, 3) intrinsics of image 0 *in the pixel grid of depth0*.
        K1: (B, 3, 3) or (3, 3) intrinsics of image 1 in the pixel grid of ``size1``.
        T_0to1: (B, 4, 4) or (4, 4) camera-0 to camera-1 rigid transform.
        size1: (W1, H1) of image 1 in pixels; default: ``depth1``'s size, else depth0's.
        depth1: optional (B, H1, W1) depth of image 1 for the covisibility test:
            a pixel is kept only if the depth of image 1 at its projection (nearest
            pixel) agrees with the projected depth within ``rel_depth_tol`` (relative).
        rel_depth_tol: relative depth tolerance of that test.
    Returns:
        ``(warp, valid)``: warp (B, H0, W0, 2) in depth0's float dtype, normalised (x, y) in image 1
        (unclamped; meaningless where not valid); valid (B, H0, W0) bool: depth0 > 0,
        the point is in front of camera 1, projects inside image 1 and (with
        ``depth1``) is not occluded.
    Raises:
        ValueError: inconsistent shapes.
    """
    depth0 = _batched(depth0, 3, "depth0")
    if not depth0.is_floating_point():
        depth0 = depth0.float()
    b, h0, w0 = depth0.shape
    K0 = _batched(K0, 3, "K0").to(depth0).expand(b, 3, 3)
    K1 = _batched(K1, 3, "K1").to(depth0).expand(b, 3, 3)
    T = _batched(T_0to1, 3, "T_0to1").to(depth0).expand(b, 4, 4)
    if depth1 is not None:
        depth1 = _batched(depth1, 3, "depth1").to(depth0)
        if depth1.shape[0] != b:
            raise ValueError(f"depth1 batch {depth1.shape[0]} != depth0 batch {b}")
        if size1 is not None and tuple(size1) != (depth1.shape[2], depth1.shape[1]):
            raise ValueError(
                f"size1 {tuple(size1)} disagrees with depth1's (W, H) {(depth1.shape[2], depth1.shape[1])}"
            )
        size1 = (depth1.shape[2], depth1.shape[1])
    w1, h1 = size1 if size1 is not None else (w0, h0)

    grid = normalized_grid(h0, w0, device=depth0.device, dtype=depth0.dtype)  # (H0, W0, 2)
    pix = normalized_to_pixel(grid.reshape(-1, 2), w0, h0)  # pixel centres, COLMAP convention
    homog = torch.cat((pix, torch.ones_like(pix[:, :1])), dim=1)  # (N, 3)
    rays = torch.einsum("bij,nj->bni", torch.linalg.inv(K0), homog)  # z = 1
    z0 = depth0.reshape(b, -1, 1)
    pts0 = rays * z0
    pts1 = pts0 @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]
    z1 = pts1[..., 2]
    proj = pts1 @ K1.transpose(1, 2)
    uv1 = proj[..., :2] / proj[..., 2:].clamp(min=1e-8)
    warp = pixel_to_normalized(uv1, w1, h1).reshape(b, h0, w0, 2)
    valid = torch.isfinite(z0[..., 0]) & (z0[..., 0] > 0) & (z1 > 1e-6)
    valid = (
        valid.reshape(b, h0, w0) & (warp.abs() <= 1).all(dim=-1) & torch.isfinite(warp).all(dim=-1)
    )
    if depth1 is not None:
        sampled = F.grid_sample(
            depth1[:, None], warp.nan_to_num(0.0).clamp(-1, 1), mode="nearest", align_corners=False
        )[:, 0]
        z1 = z1.reshape(b, h0, w0)
        consistent = (sampled - z1).abs() <= rel_depth_tol * z1.abs()
        valid = valid & consistent & (sampled > 0)
    return warp, valid


def fundamental_from_pose(K0: torch.Tensor, K1: torch.Tensor, T_0to1: torch.Tensor) -> torch.Tensor:
    """Fundamental matrix with ``x1^T F x0 = 0`` for homogeneous pixel coordinates.

    The pixel convention of ``x0``/``x1`` is the one of ``K0``/``K1`` (COLMAP's for the
    project's intrinsics; see :func:`to_hloc_intrinsics` for hloc/OpenCV/kornia's).

    Args:
        K0, K1: (3, 3) or (B, 3, 3) intrinsics.
        T_0to1: (4, 4) or (B, 4, 4) camera-0 to camera-1 transform.
    Returns:
        F: same batch shape as the inputs, (.., 3, 3), dtype of ``T_0to1``; computed by
        :func:`kornia.geometry.epipolar.fundamental_from_essential` on E = [t]x R.
    """
    from kornia.geometry.epipolar import essential_from_Rt, fundamental_from_essential

    squeeze = T_0to1.ndim == 2
    T = _batched(T_0to1, 3, "T_0to1")
    K0 = _batched(K0, 3, "K0").to(T)
    K1 = _batched(K1, 3, "K1").to(T)
    # kornia's essential_from_Rt(R1, t1, R2, t2) is the E of camera 2 relative to camera 1.
    eye = torch.eye(3, dtype=T.dtype, device=T.device).expand_as(T[:, :3, :3])
    zero = torch.zeros_like(T[:, :3, 3:])
    E = essential_from_Rt(eye, zero, T[:, :3, :3], T[:, :3, 3:])
    Fm = fundamental_from_essential(E, K0, K1)
    return Fm[0] if squeeze else Fm


def epipolar_distance(kpts0: torch.Tensor, kpts1: torch.Tensor, Fm: torch.Tensor) -> torch.Tensor:
    """Point-to-epipolar-line distance in pixels, the larger of the two images'.

    Args:
        kpts0, kpts1: (N, 2) pixel coordinates (same convention as ``Fm``).
        Fm: (3, 3) fundamental matrix, ``x1^T F x0 = 0``.
    Returns:
        (N,) max(dist(x1, F x0), dist(x0, F^T x1)) in pixels, in Fm's dtype.
    """
    Fm = Fm.to(torch.float64) if Fm.dtype != torch.float64 else Fm
    x0 = torch.cat((kpts0.to(Fm), torch.ones_like(kpts0[:, :1], dtype=Fm.dtype)), dim=1)
    x1 = torch.cat((kpts1.to(Fm), torch.ones_like(kpts1[:, :1], dtype=Fm.dtype)), dim=1)
    l1 = x0 @ Fm.T  # lines in image 1
    l0 = x1 @ Fm  # lines in image 0
    num = (x1 * l1).sum(dim=1).abs()
    d1 = num / l1[:, :2].norm(dim=1).clamp(min=1e-12)
    d0 = num / l0[:, :2].norm(dim=1).clamp(min=1e-12)
    return torch.maximum(d0, d1)


def to_hloc_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Intrinsics for pixel centres on integer coordinates (hloc, OpenCV, kornia).

    ``K`` is in COLMAP's convention (centres at i + 0.5); the result has its principal
    point shifted by -0.5 px in x and y, so it projects to ``colmap_pixel - 0.5``.
    """
    K = K.clone()
    K[..., :2, 2] = pixel_to_hloc(K[..., :2, 2])
    return K
