"""Rasterise 3D Gaussians (3DGS EWA splatting) in plain PyTorch, or with gsplat on CUDA.

:func:`rasterize_gaussians` has the inputs and outputs of ``gsplat.rasterization``
(gsplat 1.5.3, the reference whose behaviour is matched) restricted to what the lifting
code needs: one batch, pinhole cameras, post-activation colours of any channel count D
(no spherical harmonics, ``render_mode="RGB"``, ``rasterize_mode="classic"``, no
background, unpacked per-camera metadata). ``backend="torch"`` is a differentiable
reference that runs anywhere (the CPU fitting code uses it); ``backend="gsplat"`` calls
gsplat's CUDA kernels; ``"auto"`` picks gsplat when every tensor is on CUDA and gsplat
imports. The model is 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023) with the EWA
projection of Zwicker et al. (IEEE Vis 2001).

Conventions. ``viewmats`` map world to camera coordinates (x right, y down, z forward,
OpenCV/COLMAP); ``Ks`` map camera coordinates to pixels; pixel (row i, column j) has its
centre at (j + 0.5, i + 0.5) (COLMAP convention, :mod:`l2m_plugin.geometry`). Only
``fx = K[0,0]``, ``fy = K[1,1]``, ``cx = K[0,2]``, ``cy = K[1,2]`` are read (gsplat
ignores the skew too). Quaternions are (w, x, y, z) and are normalised here; scales are
standard deviations (linear, not log); opacities are in [0, 1] (after the sigmoid).

The facts below were read from the gsplat 1.5.3 wheel (paths under ``gsplat/``, line
numbers of that version) and are what both backends do.

Projection (per camera c and Gaussian n, :func:`project_gaussians`)
    ``Sigma = R S S^T R^T`` with R the rotation of the normalised quaternion and
    S = diag(scales) (``cuda/include/Utils.cuh`` ``quat_to_rotmat`` l.142,
    ``quat_scale_to_covar_preci`` l.191); camera frame ``t = W[:3,:3] mean + W[:3,3]``,
    ``Sigma_c = W[:3,:3] Sigma W[:3,:3]^T``; ``mean2d = (fx tx/tz + cx, fy ty/tz + cy)``
    (not clamped); ``cov2d = J Sigma_c J^T + eps2d I`` with the perspective Jacobian
    ``J = [[fx/tz, 0, -fx u/tz], [0, fy/tz, -fy v/tz]]`` where ``u = clamp(tx/tz,
    -(cx/fx + 0.3 tan_x), (width - cx)/fx + 0.3 tan_x)``, ``tan_x = 0.5 width / fx``, and v
    the same with (y, cy, fy, height): the ray direction is clamped to 1.3 times the field
    of view before it enters the Jacobian (``persp_proj`` l.498-537). eps2d is added to
    the diagonal (``add_blur`` l.381) and the opacity is not compensated: gsplat only
    multiplies by the compensation with ``rasterize_mode="antialiased"``
    (``rendering.py`` l.424, l.453). ``conic = cov2d^-1``, stored as its upper triangle
    (a, b, c). Culled (``radii == 0``, ``cuda/csrc/ProjectionEWA3DGSFused.cu``):
    ``tz < near_plane`` or ``tz > far_plane`` (l.72); ``det(cov2d) <= 0`` (l.155);
    ``opacity < 1/255`` (l.171); both radii ``<= radius_clip`` (l.186); the box entirely
    off the image, ``mean2d.x + r_x <= 0`` or ``mean2d.x - r_x >= width`` or the same in y
    (l.193). Radii are per axis in gsplat >= 1.5, not ``ceil(3 sqrt(lambda_max))`` as in
    earlier versions: ``r_x = ceil(k sqrt(cov2d[0,0]))``, ``r_y = ceil(k sqrt(cov2d[1,1]))``
    with the opacity-aware extent ``k = min(3.33, sqrt(2 ln(255 opacity)))`` (l.164-184;
    3.33 when no opacity is given), the bounding box of the ellipse where the Gaussian's
    alpha reaches 1/255.

Rasterisation (per pixel centre p, ``cuda/csrc/RasterizeToPixels3DGSFwd.cu``)
    Pixel (row i, column j) is evaluated at ``p = (j + 0.5, i + 0.5)`` (l.62-63).
    ``alpha = min(0.999, opacity exp(-sigma))``, ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``,
    ``(dx, dy) = mean2d - p`` (l.144-148); a Gaussian is skipped where ``alpha < 1/255``
    (``ALPHA_THRESHOLD``, ``cuda/include/Common.h`` l.54) or ``sigma < 0`` (l.149).
    Gaussians are composited front to back by camera z (``cuda/csrc/IntersectTile.cu``
    sorts (image, tile, depth) keys with a stable radix sort, l.98-108, l.317: ties keep
    the input order), ``C = sum_k c_k alpha_k T_k``, ``T_k = prod_{i<k} (1 - alpha_i)``.
    Early termination (l.153-156): the first Gaussian with ``T_k (1 - alpha_k) <= 1e-4``
    does *not* contribute and ends the pixel. ``render_alphas = 1 - T_final`` (l.178); no
    background is added (l.182). gsplat evaluates a Gaussian on whole 16 x 16 tiles that
    its box touches, but its alpha reaches 1/255 only inside the box, so only the box
    matters. The backward pass has no gradient through the 0.999 clamp
    (``RasterizeToPixels3DGSBwd.cu`` l.222) nor through any of the integer decisions.

Torch backend (how). Visible (camera, Gaussian) entries are ordered by (camera, depth,
index). Without autograd: each entry enumerates, row by row of its box, the pixel centres
inside the ellipse where its alpha can reach 1/255 (closed form in float64, with a 1e-4
margin on the exponent); the pairs are stably sorted by pixel (so by depth inside a
pixel); alpha, the 1/255 cut and the exclusive transmittance (a segmented cumulative sum
of ``log(1 - alpha)`` in float64: the global cumsum minus its value at the segment
start) decide which pairs contribute, and the others are dropped. With autograd, on the
contributing pairs only: alpha (hand-written backward), the transmittance (hand-written
backward, one reverse cumulative sum), and the colour sum as one sparse CSR matrix
product (backward: a CSR product with A^T and a sampled dense-dense product). Memory and
time grow with the number of candidate pairs (the total footprint, about 1.3x the
contributing pairs); no per-pair copy of the D colour channels is made. Gradients reach
means, quats, scales, opacities, colours, viewmats and Ks.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from l2m_plugin.coords import index_to_pixel, pixel_to_index

__all__ = [
    "blend_weights",
    "ALPHA_MAX",
    "ALPHA_THRESHOLD",
    "BACKENDS",
    "RasterBackendError",
    "Projection",
    "TRANSMITTANCE_MIN",
    "project_gaussians",
    "quat_to_rotmat",
    "rasterize_gaussians",
]

logger = logging.getLogger(__name__)

#: smallest alpha that contributes to a pixel (gsplat ``ALPHA_THRESHOLD``, Common.h)
ALPHA_THRESHOLD = 1.0 / 255.0
#: alpha of one Gaussian at one pixel is clamped to this (RasterizeToPixels3DGSFwd.cu)
ALPHA_MAX = 0.999
#: a pixel stops before the Gaussian that would bring its transmittance to <= this
TRANSMITTANCE_MIN = 1e-4
#: cap of the opacity-aware box extent, in standard deviations (ProjectionEWA3DGSFused.cu)
_EXTEND_MAX = 3.33
#: the clamped ray direction may leave the field of view by this fraction (Utils.cuh)
_FOV_MARGIN = 0.3

BACKENDS = ("auto", "torch", "gsplat")


class RasterBackendError(RuntimeError):
    """The requested rasterisation backend cannot run on these inputs (how to fix: inside)."""


class Projection(NamedTuple):
    """EWA projection of N Gaussians into C cameras (output of :func:`project_gaussians`).

    Entries of culled (camera, Gaussian) pairs (``radii == 0``) are zero here (gsplat
    leaves them uninitialised).

    Attributes:
        means_cam: (C, N, 3) Gaussian centres in camera coordinates.
        means2d: (C, N, 2) projected centres in pixels (x, y), pixel centres at +0.5.
        covars2d: (C, N, 2, 2) image-plane covariances in pixels^2, eps2d included.
        conics: (C, N, 3) upper triangle (a, b, c) of ``covars2d^-1``.
        depths: (C, N) camera z of the centres.
        radii: (C, N, 2) int32 box half-sizes (x, y) in pixels; (0, 0) = culled.
    """

    means_cam: Tensor
    means2d: Tensor
    covars2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(..., 4) quaternions (w, x, y, z), any non-zero norm -> (..., 3, 3) rotation matrices.

    The quaternion is normalised first (as gsplat's ``quat_to_rotmat``); a zero quaternion
    gives NaN.
    """
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Projection:
    """EWA-project 3D Gaussians into pinhole cameras, with gsplat's culling and radii.

    Formulas (gsplat 1.5.3 ``projection_ewa_3dgs_fused_fwd_kernel`` and ``persp_proj``):

    - ``Sigma = R(q) diag(s)^2 R(q)^T``; camera frame ``t = Rw mean + tw``,
      ``Sigma_c = Rw Sigma Rw^T`` with ``[Rw | tw] = viewmat[:3]``;
    - ``mean2d = (fx t_x / t_z + cx, fy t_y / t_z + cy)`` (pixels; pixel centres at +0.5);
    - ``cov2d = J Sigma_c J^T + eps2d I``, ``J = [[fx/t_z, 0, -fx u/t_z],
      [0, fy/t_z, -fy v/t_z]]``, ``u = clamp(t_x/t_z, -(cx/fx + 0.3 tan_x),
      (width - cx)/fx + 0.3 tan_x)``, ``tan_x = 0.5 width/fx`` (v likewise in y);
    - ``conic = cov2d^-1`` as (a, b, c) = ([0,0], [0,1], [1,1]);
    - radii ``(ceil(k sqrt(cov2d[0,0])), ceil(k sqrt(cov2d[1,1])))``,
      ``k = min(3.33, sqrt(2 ln(255 opacity)))``, or ``k = 3.33`` without ``opacities``;
    - culled (radii 0, other outputs 0): ``t_z < near_plane``, ``t_z > far_plane``,
      ``det(cov2d) <= 0``, ``opacity < 1/255``, both radii ``<= radius_clip``, box off
      the image.

    Args:
        means: (N, 3) world coordinates.
        quats: (N, 4) rotations (w, x, y, z), normalised here.
        scales: (N, 3) standard deviations along the rotated axes (linear).
        viewmats: (C, 4, 4) world-to-camera transforms.
        Ks: (C, 3, 3) pinhole intrinsics in pixels (skew ignored).
        width, height: image size in pixels (the clamp and the off-image test use it).
        opacities: optional (N,) opacities in [0, 1] for the opacity-aware radii and cull.
        near_plane, far_plane: camera-z range kept.
        eps2d: low-pass variance (pixels^2) added to the diagonal of ``cov2d``.
        radius_clip: Gaussians whose radii are both ``<= radius_clip`` are culled.

    Returns:
        :class:`Projection`; differentiable w.r.t. every floating input except through
        the radii (integers).
    """
    C = viewmats.shape[0]
    N = means.shape[0]
    Rw = viewmats[:, :3, :3]
    tw = viewmats[:, :3, 3]
    means_cam = torch.einsum("cij,nj->cni", Rw, means) + tw[:, None, :]  # (C, N, 3)
    M = quat_to_rotmat(quats) * scales[:, None, :]  # R diag(s), (N, 3, 3)
    covar = M @ M.transpose(-1, -2)
    covar_c = torch.einsum("cij,njk,clk->cnil", Rw, covar, Rw)  # (C, N, 3, 3)

    x, y, z = means_cam.unbind(-1)
    in_range = (z >= near_plane) & (z <= far_plane)
    zs = torch.where(in_range, z, torch.ones_like(z))  # safe divisor for culled entries
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = torch.minimum(torch.maximum(x / zs, -(cx / fx + _FOV_MARGIN * tan_x)),
                      (width - cx) / fx + _FOV_MARGIN * tan_x)  # fmt: skip
    v = torch.minimum(torch.maximum(y / zs, -(cy / fy + _FOV_MARGIN * tan_y)),
                      (height - cy) / fy + _FOV_MARGIN * tan_y)  # fmt: skip
    zero = torch.zeros_like(zs)
    J = torch.stack((fx / zs, zero, -fx * u / zs, zero, fy / zs, -fy * v / zs), dim=-1).reshape(
        C, N, 2, 3
    )
    cov2d = J @ covar_c @ J.transpose(-1, -2)
    eye = torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    cov2d = cov2d + eps2d * eye
    means2d = torch.stack((fx * x / zs + cx, fy * y / zs + cy), dim=-1)

    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det = a * c - b * b
    ok = in_range & (det > 0)
    dets = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack((c / dets, -b / dets, a / dets), dim=-1)

    with torch.no_grad():
        extend = torch.full_like(z, _EXTEND_MAX)
        if opacities is not None:
            op = opacities.detach().to(z.dtype).expand(C, N)
            ok = ok & (op >= ALPHA_THRESHOLD)
            extend = torch.minimum(
                extend, torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
            )
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        ok = ok & ((rx > radius_clip) | (ry > radius_clip))
        mx, my = means2d.detach().unbind(-1)
        ok = ok & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack((rx, ry), dim=-1).to(torch.int32) * ok[..., None]

    keep = ok[..., None]
    return Projection(
        means_cam=means_cam,
        means2d=means2d * keep,
        covars2d=cov2d * keep[..., None],
        conics=conics * keep,
        depths=z * ok,
        radii=radii,
    )


class _Composite(torch.autograd.Function):
    """``out = A @ colors`` for the sparse (pixels x visible Gaussians) weight matrix A.

    A is given twice: by rows sorted by pixel (CSR of A, values ``w``) and by rows sorted
    by visible Gaussian (CSR of A^T, values ``w[perm]``); backward is ``A^T @ grad`` for the
    colours and the sampled product ``(grad @ colors^T)[pattern of A]`` for ``w``.
    """

    @staticmethod
    def forward(ctx, w, colors_v, crow_pix, col_v, crow_v, col_pix, perm, n_pix):
        V = colors_v.shape[0]
        A = _csr(crow_pix, col_v, w, (n_pix, V))
        ctx.save_for_backward(w, colors_v, crow_pix, col_v, crow_v, col_pix, perm)
        ctx.n_pix = n_pix
        return A @ colors_v

    @staticmethod
    def backward(ctx, grad):
        w, colors_v, crow_pix, col_v, crow_v, col_pix, perm = ctx.saved_tensors
        n_pix, V = ctx.n_pix, colors_v.shape[0]
        grad = grad.contiguous()
        grad_w = grad_colors = None
        if ctx.needs_input_grad[0]:
            pattern = _csr(crow_pix, col_v, torch.zeros_like(w), (n_pix, V))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
                grad_w = torch.sparse.sampled_addmm(
                    pattern, grad, colors_v.t().contiguous(), beta=0.0
                ).values()
        if ctx.needs_input_grad[1]:
            At = _csr(crow_v, col_pix, w.index_select(0, perm), (V, n_pix))
            grad_colors = At @ grad
        return grad_w, grad_colors, None, None, None, None, None, None


def _log_transmittance(alpha: Tensor, seg_first: Tensor) -> tuple[Tensor, Tensor]:
    """float64 ``(log T_k, log(1 - alpha_k))``, ``T_k = prod_{i<k} (1 - alpha_i)`` per segment.

    The pairs are sorted by pixel, then front to back; ``seg_first`` is the first position
    of every pair's segment. A global cumulative sum of ``log(1 - alpha)`` minus its value
    at the segment start (float64: the global sum grows with the number of pairs).
    """
    log_t = torch.log1p(-alpha.to(torch.float64))
    excl = torch.cumsum(log_t, 0) - log_t
    excl -= excl.index_select(0, seg_first)
    return excl, log_t


class _Transmittance(torch.autograd.Function):
    """Exclusive transmittance ``T_k`` of every pair (:func:`_log_transmittance`).

    Backward: ``dL/dalpha_i = -1/(1 - alpha_i) sum_{k > i, same segment} g_k T_k``, the
    inner sum from one cumulative sum: ``cs[last(i)] - cs[i]``.
    """

    @staticmethod
    def forward(ctx, alpha, seg_first, seg_last):
        T = torch.exp(_log_transmittance(alpha, seg_first)[0]).to(alpha.dtype)
        ctx.save_for_backward(alpha, T, seg_last)
        return T

    @staticmethod
    def backward(ctx, grad_T):
        alpha, T, seg_last = ctx.saved_tensors
        cs = torch.cumsum((grad_T * T).to(torch.float64), 0)
        r = cs.index_select(0, seg_last) - cs
        return (r / (alpha.to(torch.float64) - 1.0)).to(alpha.dtype), None, None


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _crow(rows_sorted: Tensor, n_rows: int) -> Tensor:
    counts = torch.bincount(rows_sorted, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows_sorted.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


def _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                     near_plane, far_plane, eps2d, radius_clip, weights_only=False):  # fmt: skip
    C, N = viewmats.shape[0], means.shape[0]
    H, W = height, width
    D = colors.shape[-1]
    dev, dt = means.device, means.dtype
    proj = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, opacities=opacities,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
    )  # fmt: skip

    # Visible (camera, Gaussian) entries in (camera, depth, input index) order.
    with torch.no_grad():
        visible = (proj.radii > 0).all(-1)
        cam_v, g_v = visible.nonzero(as_tuple=True)  # (c, n) lexicographic
        order = torch.sort(proj.depths.detach()[cam_v, g_v], stable=True).indices
        order = order[torch.sort(cam_v[order], stable=True).indices]
        cam_v, g_v = cam_v[order], g_v[order]
        flat_v = cam_v * N + g_v
        V = cam_v.numel()

    m2d = proj.means2d.reshape(C * N, 2).index_select(0, flat_v)
    con = proj.conics.reshape(C * N, 3).index_select(0, flat_v)
    op_v = opacities.index_select(0, g_v)
    params_t = torch.cat((m2d.t(), con.t(), op_v[None]), dim=0)  # (6, V): mx my a b c o

    n_pix = C * H * W
    with torch.no_grad():
        # 1. candidate pairs, grouped by entry; stably sorted by pixel they stay in
        #    (depth, index) order inside every pixel
        pv, pcol, prow = _enumerate_pairs(params_t.detach(), proj.radii[cam_v, g_v], W, H)
        ppix = (cam_v.index_select(0, pv) * H + prow) * W + pcol
        del pcol, prow
        if n_pix < 2**31:
            ppix = ppix.to(torch.int32)  # sorts twice as fast
        ppix, perm = torch.sort(ppix, stable=True)
        ppix = ppix.to(torch.int64)
        pv = pv.index_select(0, perm)
        del perm
        # 2. alpha, the 1/255 cut and early termination decide which pairs contribute
        px, py = _pixel_centres(ppix, W, H, dt)
        alpha, _ = _alpha(params_t.detach().index_select(1, pv), px, py)
        crow = _crow(ppix, n_pix)
        log_T, log_t = _log_transmittance(alpha, crow.index_select(0, ppix))
        keep = ((alpha > 0) & (log_T + log_t > math.log(TRANSMITTANCE_MIN))).nonzero()[:, 0]
        n_candidates = pv.numel()
        pv, ppix, px, py = (t.index_select(0, keep) for t in (pv, ppix, px, py))
        del alpha, log_T, log_t, keep
        # 3. segments of the contributing pairs; the same pairs grouped by entry (A^T)
        crow_pix = _crow(ppix, n_pix)
        seg_first = crow_pix.index_select(0, ppix)
        seg_last = crow_pix.index_select(0, ppix + 1) - 1
        pv_by_v, perm_v = torch.sort(pv.to(torch.int32), stable=True)
        crow_v = _crow(pv_by_v.to(torch.int64), V)
        ppix_by_v = ppix.index_select(0, perm_v)

    # Differentiable part, on the contributing pairs only (dropped pairs have alpha 0 or
    # lie behind the termination point: they change no T of a contributing pair).
    alpha = _PairAlpha.apply(params_t, pv, px, py)
    w = alpha * _Transmittance.apply(alpha, seg_first, seg_last)
    if weights_only:  # rows: pixels (sorted), columns: Gaussians (one camera per row: no duplicates)
        return _csr(crow_pix, g_v.index_select(0, pv), w.detach(), (n_pix, N))

    if colors.dim() == 2:
        colors_v = colors.index_select(0, g_v)
    else:
        colors_v = colors.reshape(C * N, D).index_select(0, flat_v)
    render = _Composite.apply(w, colors_v, crow_pix, pv, crow_v, ppix_by_v, perm_v, n_pix)
    alphas = torch.zeros(n_pix, dtype=dt, device=dev).index_add(0, ppix, w)
    n_pairs = pv.numel()
    logger.debug(
        "torch rasterizer: %d cameras, %d visible entries, %d candidate pairs, %d contributing",
        C, V, n_candidates, n_pairs,
    )  # fmt: skip
    meta = {
        "radii": proj.radii,
        "means2d": proj.means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": opacities.expand(C, N),
        "visible": visible,
        "n_pairs": n_pairs,
        "width": width,
        "height": height,
        "n_cameras": C,
        "backend": "torch",
    }
    return render.reshape(C, H, W, D), alphas.reshape(C, H, W, 1), meta


def _alpha(q: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
    """gsplat's alpha of pair parameters ``q`` (6, P) = (mx, my, a, b, c, opacity) at (px, py).

    ``alpha = min(0.999, o exp(-sigma))``, set to 0 where gsplat skips the Gaussian
    (``alpha < 1/255`` or ``sigma < 0``). Returns (alpha, exp(-sigma)).
    """
    mx, my, a, b, c, o = q.unbind(0)
    dx = mx - px
    dy = my - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    vis = torch.exp(-sigma)
    alpha = torch.clamp(o * vis, max=ALPHA_MAX)
    return alpha * ((alpha >= ALPHA_THRESHOLD) & (sigma >= 0)), vis


class _PairAlpha(torch.autograd.Function):
    """alpha of every (pixel, visible entry) pair from the (6, V) entry parameters.

    Forward: :func:`_alpha` of ``params_t[:, pv]`` at pixel centres (px, py). Backward (by
    hand): ``dalpha/do = exp(-sigma)``, ``dalpha/dsigma = -o exp(-sigma)`` where the
    0.999 clamp is inactive and the pair is not skipped (zero elsewhere), with
    ``dsigma/d(mx, my) = (a dx + b dy, b dx + c dy)`` and
    ``dsigma/d(a, b, c) = (dx^2/2, dx dy, dy^2/2)``, summed per entry.
    """

    @staticmethod
    def forward(ctx, params_t, pv, px, py):
        alpha, vis = _alpha(params_t.index_select(1, pv), px, py)
        ctx.save_for_backward(params_t, pv, px, py, alpha, vis)
        return alpha

    @staticmethod
    def backward(ctx, grad):
        params_t, pv, px, py, alpha, vis = ctx.saved_tensors
        mx, my, a, b, c, o = params_t.index_select(1, pv).unbind(0)
        dx = mx - px
        dy = my - py
        g_o = grad * vis * ((alpha > 0) & (o * vis <= ALPHA_MAX))
        g_sigma = -(g_o * o)
        per_pair = (
            g_sigma * (a * dx + b * dy),
            g_sigma * (b * dx + c * dy),
            0.5 * g_sigma * dx * dx,
            g_sigma * dx * dy,
            0.5 * g_sigma * dy * dy,
            g_o,
        )
        V = params_t.shape[1]
        grad_params = torch.stack(
            [torch.zeros(V, dtype=g.dtype, device=g.device).index_add_(0, pv, g) for g in per_pair]
        )
        return grad_params, None, None, None


def _pixel_centres(pix: Tensor, W: int, H: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Centres (x, y) = (j + 0.5, i + 0.5) of flat pixel ids ``(c * H + i) * W + j``."""
    p = pix.to(torch.float64)
    rows = torch.floor((2 * p + 1) / (2 * W))  # c * H + i (exact: the ids are integers < 2^53)
    x = index_to_pixel(p - rows * W)
    y = index_to_pixel(rows - torch.floor((2 * rows + 1) / (2 * H)) * H)
    return x.to(dtype), y.to(dtype)


def _enumerate_pairs(params: Tensor, radii: Tensor, W: int, H: int) -> tuple[Tensor, ...]:
    """Pixels where each visible entry (``params`` (6, V)) may reach alpha >= 1/255.

    For every pixel row of the entry's box, the columns whose centres lie in the ellipse
    ``sigma <= ln(255 opacity) + 1e-4`` (float64; the 1e-4 margin covers rounding of the
    float32 alpha), clipped to the box and the image. Returns (entry, column, row) int64
    arrays grouped by entry (non-decreasing entry), rows then columns increasing.
    """
    dev = params.device
    mx, my, a, b, c, op = params.to(torch.float64).unbind(0)
    V = params.shape[1]
    rad = radii.to(torch.float64)
    # box of pixel centres j + 0.5 in [mx - rx, mx + rx], i + 0.5 in [my - ry, my + ry]
    j0 = torch.ceil(pixel_to_index(mx - rad[:, 0])).clamp_min(0)
    j1 = torch.floor(pixel_to_index(mx + rad[:, 0])).clamp_max(W - 1)
    i0 = torch.ceil(pixel_to_index(my - rad[:, 1])).clamp_min(0)
    i1 = torch.floor(pixel_to_index(my + rad[:, 1])).clamp_max(H - 1)
    ny = (i1 - i0 + 1).clamp_min(0).to(torch.int64)
    # rows
    rv = torch.repeat_interleave(torch.arange(V, device=dev), ny)
    first = (torch.cumsum(ny, 0) - ny).index_select(0, rv)
    row = i0.index_select(0, rv) + (torch.arange(len(rv), device=dev) - first)
    # columns of the row inside the ellipse 0.5 a dx^2 + b dx dy + 0.5 c dy^2 <= L
    a_r, b_r, c_r, mx_r = (t.index_select(0, rv) for t in (a, b, c, mx))
    L = torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD).index_select(0, rv) + 1e-4
    dy = my.index_select(0, rv) - index_to_pixel(row)
    half = torch.sqrt((2.0 * a_r * L - (a_r * c_r - b_r * b_r) * dy * dy).clamp_min(0)) / a_r
    centre = mx_r + b_r * dy / a_r  # x where sigma is smallest on this row
    lo = torch.maximum(torch.ceil(pixel_to_index(centre - half)), j0.index_select(0, rv))
    hi = torch.minimum(torch.floor(pixel_to_index(centre + half)), j1.index_select(0, rv))
    nx = (hi - lo + 1).clamp_min(0).to(torch.int64)
    # pixels
    pr = torch.repeat_interleave(torch.arange(len(rv), device=dev), nx)
    first = (torch.cumsum(nx, 0) - nx).index_select(0, pr)
    col = lo.to(torch.int64).index_select(0, pr) + (torch.arange(len(pr), device=dev) - first)
    return rv.index_select(0, pr), col, row.to(torch.int64).index_select(0, pr)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                      near_plane, far_plane, eps2d, radius_clip):  # fmt: skip
    tensors = (means, quats, scales, opacities, colors, viewmats, Ks)
    if not all(t.is_cuda for t in tensors):
        raise RasterBackendError(
            "backend='gsplat' needs every input tensor on a CUDA device (got "
            + ", ".join(sorted({str(t.device) for t in tensors}))
            + "): move means, quats, scales, opacities, colors, viewmats and Ks to CUDA, "
            "or use backend='torch' (or 'auto')"
        )
    try:
        import gsplat
    except ImportError as exc:
        raise RasterBackendError(
            f"backend='gsplat' needs the gsplat package ({exc}): pip install gsplat "
            "(a CUDA build of torch is required), or use backend='torch'"
        ) from exc
    dt = means.dtype
    f32 = [t.float() for t in tensors]  # gsplat's kernels are float32
    render, alphas, meta = gsplat.rasterization(
        *f32, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, radius_clip=radius_clip,
        sh_degree=None, packed=False, render_mode="RGB", rasterize_mode="classic",
    )  # fmt: skip
    meta = dict(meta)
    meta["visible"] = (meta["radii"] > 0).all(-1)
    meta["backend"] = "gsplat"
    return render.to(dt), alphas.to(dt), meta


def _gsplat_importable() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def blend_weights(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
) -> Tensor:
    """The compositing weights of :func:`rasterize_gaussians` as a sparse matrix (no gradient).

    For fixed geometry a rendering is linear in the colours: ``w[p, n] = alpha_n(p)
    T_n(p)`` (alpha and transmittance of Gaussian n at pixel p, with the 1/255 cut and
    early termination of gsplat), so for (N, D) colours
    ``rasterize_gaussians(...)[0].reshape(C * H * W, D) == blend_weights(...) @ colors``
    and ``render_alphas.reshape(-1) == blend_weights(...).sum(1)``. Fitting only colours
    or features through it costs one sparse product per iteration
    (:func:`l2m_plugin.lifting.fit_scene` with ``fit_geometry=False``).

    Args: as :func:`rasterize_gaussians`, without colours (the pure-PyTorch reference on
    the tensors' device; gsplat does not expose its weights).
    Returns:
        (C * H * W, N) sparse CSR tensor of the means' dtype; row ``(c * H + i) * W + j``
        is pixel (row i, column j) of camera c.
    Raises:
        ValueError: as :func:`rasterize_gaussians`.
    """
    colors = torch.zeros(means.shape[0], 1, dtype=means.dtype, device=means.device)
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    with torch.no_grad():
        return _rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
                                near_plane, far_plane, eps2d, radius_clip, weights_only=True)  # fmt: skip


def rasterize_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, dict]:
    """Render N 3D Gaussians into C pinhole cameras, as ``gsplat.rasterization`` does.

    Same semantics as gsplat 1.5.3 ``rasterization(..., sh_degree=None, packed=False,
    render_mode="RGB", rasterize_mode="classic", backgrounds=None)`` (formulas and
    thresholds: the module docstring). Pixel (row i, column j) is evaluated at its centre
    (j + 0.5, i + 0.5).

    Args:
        means: (N, 3) float world coordinates.
        quats: (N, 4) rotations (w, x, y, z), not necessarily normalised (non-zero).
        scales: (N, 3) standard deviations (linear, world units).
        opacities: (N,) in [0, 1].
        colors: (N, D) or per camera (C, N, D) features, any D >= 1.
        viewmats: (C, 4, 4) world-to-camera transforms (OpenCV: x right, y down, z forward).
        Ks: (C, 3, 3) intrinsics in pixels (skew ignored).
        width, height: image size in pixels.
        near_plane, far_plane: camera-z range of the Gaussian centres kept.
        eps2d: low-pass variance (pixels^2) added to every projected covariance.
        radius_clip: Gaussians whose radii are both ``<= radius_clip`` pixels are culled.
        backend: "torch" (differentiable pure-PyTorch reference, any device), "gsplat"
            (gsplat's CUDA kernels; inputs are cast to float32 and outputs back), or
            "auto" (gsplat when every tensor is on CUDA and gsplat imports, else torch).

    Returns:
        ``(render_colors, render_alphas, meta)``: (C, H, W, D) accumulated colours
        (no background), (C, H, W, 1) accumulated opacity ``1 - T_final``, and a dict
        with (both backends) ``radii`` (C, N, 2) int32 box half-sizes (0 = culled),
        ``means2d`` (C, N, 2) pixels, ``depths`` (C, N) camera z, ``conics`` (C, N, 3)
        upper triangle (a, b, c) of the inverse 2D covariance (eps2d included),
        ``opacities`` (C, N), ``visible`` (C, N) bool (``(radii > 0).all(-1)``),
        ``width``, ``height``, ``n_cameras``, ``backend`` ("torch" or "gsplat"); culled
        entries of ``means2d``/``depths``/``conics`` are 0 (torch) or garbage (gsplat).
        The torch backend adds ``n_pairs`` (contributing (pixel, Gaussian) pairs); gsplat
        adds its own keys (tiles, intersections).

    Raises:
        ValueError: bad shapes, mixed dtypes, or an unknown backend.
        RasterBackendError: backend="gsplat" with tensors off CUDA or gsplat missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    args = (means, quats, scales, opacities, colors, viewmats, Ks, int(width), int(height),
            near_plane, far_plane, eps2d, radius_clip)  # fmt: skip
    if backend == "auto":
        on_cuda = all(t.is_cuda for t in args[:7])
        backend = "gsplat" if on_cuda and _gsplat_importable() else "torch"
    if backend == "gsplat":
        return _rasterize_gsplat(*args)
    return _rasterize_torch(*args)


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height):
    if means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be (N, 3), got {tuple(means.shape)}")
    N = means.shape[0]
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be (C, 4, 4), got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    expected = {
        "quats": (quats, (N, 4)),
        "scales": (scales, (N, 3)),
        "opacities": (opacities, (N,)),
        "Ks": (Ks, (C, 3, 3)),
    }
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {shape} for N={N}, C={C}, got {tuple(t.shape)}")
    if (
        not (
            (colors.dim() == 2 and colors.shape[0] == N)
            or (colors.dim() == 3 and colors.shape[:2] == (C, N))
        )
        or colors.shape[-1] < 1
    ):
        raise ValueError(
            f"colors must be (N, D) or (C, N, D) with D >= 1, got {tuple(colors.shape)}"
        )
    for name, t in (("quats", quats), ("scales", scales), ("opacities", opacities),
                    ("colors", colors), ("viewmats", viewmats), ("Ks", Ks)):  # fmt: skip
        if t.dtype != means.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, means {means.dtype}: use one dtype")
    if means.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"means must be float32 or float64, got {means.dtype}")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be >= 1, got {width} x {height}")


class FixedBlend(torch.autograd.Function):
    """``W @ x`` for a fixed sparse CSR ``W`` with its transpose precomputed: the backward
    pass is the sparse product ``W^T @ grad`` (torch's generic sparse backward converts the
    matrix at every call, about 10x slower on a CPU)."""

    @staticmethod
    def forward(ctx, x, W, Wt):
        ctx.Wt = Wt
        return W @ x

    @staticmethod
    def backward(ctx, grad):
        return ctx.Wt @ grad.contiguous(), None, None
