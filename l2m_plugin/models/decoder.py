"""The RoMa-architecture decoder used by L2M / L2M++.

Components (RoMa, Edstedt et al. CVPR 2024, Sec. 3; code ``romatch/models/matcher.py``
and ``romatch/models/transformer/__init__.py``; L2M inherits them, ICCV 2025 Sec. 3.3):

* :class:`GPMatcher`: Gaussian-process coarse matcher with a cosine kernel
  (temperature T = 0.2) regressing a 512-d Fourier embedding of image-1 coordinates.
* :class:`CoordinateClassifier`: 5 transformer blocks classifying every coarse
  pixel over 64 x 64 anchors (+1 certainty logit).
* :class:`ConvRefiner`: depth-wise conv refiners with local correlation and a
  displacement embedding, predicting a displacement and a certainty residual.
* :class:`Decoder`: runs them coarse to fine over scales 16, 8, 4, 2, 1.
* :class:`DualSoftmaxMatcher` (ours, not in RoMa; the ``tiny-ds`` architecture): in place
  of the GP and the classifier, LoFTR-style (Sun et al., CVPR 2021, Sec. 3.2-3.3)
  self/cross attention over the stride-8 features, a dual-softmax assignment and a
  soft-argmax in the 3 x 3 cells around the best match; the refiners then run at 8, 4, 2, 1.

All warps are in normalised coordinates (see :mod:`l2m_plugin.coords`); all
certainties here are logits. Module and parameter names follow RoMa's so its
checkpoints load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from l2m_plugin.config import ARCH_PRESETS
from l2m_plugin.coords import normalized_grid, pixel_to_index
from l2m_plugin.models.fused import can_fold, run_layers

__all__ = [
    "cosine_kernel",
    "GPMatcher",
    "TransformerBlock",
    "CoordinateClassifier",
    "anchors_to_warp",
    "local_correlation",
    "ConvRefiner",
    "sine_position_encoding",
    "DualSoftmaxMatcher",
    "Decoder",
]


def _grid_bchw(b: int, h: int, w: int, device) -> torch.Tensor:
    """(b, 2, h, w) normalised pixel-centre coordinates (x, y)."""
    return normalized_grid(h, w, device=device).permute(2, 0, 1)[None].expand(b, 2, h, w)


def cosine_kernel(x: torch.Tensor, y: torch.Tensor, T: float, eps: float = 1e-6) -> torch.Tensor:
    """Cosine-similarity kernel ``exp((cos(x, y) - 1) / T)``.

    Args:
        x: (B, N, D), y: (B, M, D) float32 features.
    Returns:
        (B, N, M) kernel matrix (RoMa's ``CosKernel``).
    """
    c = torch.einsum("bnd,bmd->bnm", x, y) / (
        x.norm(dim=-1)[..., None] * y.norm(dim=-1)[:, None] + eps
    )
    return ((c - 1.0) / T).exp()


class GPMatcher(nn.Module):
    """Gaussian-process regression of image-1 coordinate embeddings onto image 0.

    ``forward(f0, f1)`` with f0 (B, C, H0, W0), f1 (B, C, H1, W1) returns the
    posterior mean (B, gp_dim, H0, W0) of ``cos(8 pi * pos_conv(xy1))`` with kernel
    noise 0.1. ``solve`` selects the linear solve: ``"cholesky"`` (romatch 0.1.2 in
    eval mode) or ``"inverse"`` (the L2M fork, which always inverts ``K_yy``); both
    compute the same function up to float round-off.
    """

    def __init__(self, gp_dim: int = 512, T: float = 0.2, sigma_noise: float = 0.1, solve: str = "cholesky"):
        super().__init__()
        if solve not in ("cholesky", "inverse"):
            raise ValueError(f"gp solve must be 'cholesky' or 'inverse', got {solve!r}")
        self.pos_conv = nn.Conv2d(2, gp_dim, 1, 1)
        self.T = T
        self.sigma_noise = sigma_noise
        self.solve = solve
        self.dim = gp_dim

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=f0.device.type, enabled=False):
            return self._posterior(f0, f1)

    def _posterior(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        b, _, h0, w0 = f0.shape
        _, _, h1, w1 = f1.shape
        emb = torch.cos(8 * math.pi * self.pos_conv(_grid_bchw(b, h1, w1, f1.device)))
        x = f0.float().flatten(2).transpose(1, 2)
        y = f1.float().flatten(2).transpose(1, 2)
        emb = emb.flatten(2).transpose(1, 2)
        K_yy = cosine_kernel(y, y, self.T)
        K_xy = cosine_kernel(x, y, self.T)
        K_yy = K_yy + self.sigma_noise * torch.eye(h1 * w1, device=f0.device)[None]
        if self.solve == "cholesky":
            L = torch.linalg.cholesky(K_yy)
            mu = K_xy @ torch.cholesky_solve(emb, L, upper=False)
        else:
            mu = K_xy.matmul(torch.linalg.inv(K_yy).matmul(emb))
        return mu.transpose(1, 2).reshape(b, self.dim, h0, w0)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-5, no qkv bias, no layer scale).

    Matches the DINOv2 ``Block`` as RoMa instantiates it for its coordinate decoder.
    Input and output: (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CoordinateClassifier(nn.Module):
    """Transformer that classifies each coarse pixel over ``res x res`` anchors.

    ``forward(gp_posterior, features)`` with both (B, C_i, H, W) returns
    ``(logits (B, res*res, H, W), certainty logit (B, 1, H, W))``. No positional
    encoding is added (RoMa: ``pos_enc=False``).
    """

    def __init__(self, dim: int = 1024, depth: int = 5, num_heads: int = 8, res: int = 64):
        super().__init__()
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads) for _ in range(depth)])
        self.to_out = nn.Linear(dim, res * res + 1)
        self.hidden_dim = dim
        self.out_dim = res * res + 1

    def forward(self, gp_posterior: torch.Tensor, features: torch.Tensor):
        x = torch.cat((gp_posterior, features), dim=1)
        B, C, H, W = x.shape
        z = self.to_out(self.blocks(x.flatten(2).transpose(1, 2)))
        out = z.transpose(1, 2).reshape(B, self.out_dim, H, W)
        return out[:, :-1], out[:, -1:]


def anchors_to_warp(logits: torch.Tensor) -> torch.Tensor:
    """Soft-argmax over the 4 neighbours of the most likely anchor (RoMa's ``cls_to_flow_refine``).

    Args:
        logits: (B, R*R, H, W) anchor logits; anchor k sits at the centre of cell
            (k % R, k // R) of an R x R grid over [-1, 1]^2.
    Returns:
        (B, 2, H, W) warp in normalised coordinates. As in the reference, the
        "left/right" neighbours are the flat indices k -+ 1 (which wrap across rows)
        and all indices are clamped to [0, R*R - 1].
    """
    B, C, H, W = logits.shape
    res = round(math.sqrt(C))
    anchors = normalized_grid(res, res, device=logits.device, dtype=torch.float32).reshape(C, 2)
    prob = logits.softmax(dim=1)
    mode = prob.max(dim=1).indices
    index = torch.stack((mode - 1, mode, mode + 1, mode - res, mode + res), dim=1).clamp(0, C - 1)
    neighbours = torch.gather(prob, dim=1, index=index)  # (B, 5, H, W)
    coords = anchors[index]  # (B, 5, H, W, 2)
    flow = (neighbours[..., None] * coords).sum(dim=1) / neighbours.sum(dim=1)[..., None]
    return flow.permute(0, 3, 1, 2)


def local_correlation(
    f0: torch.Tensor, f1: torch.Tensor, warp: torch.Tensor, radius: int, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Correlation of each image-0 feature with a (2r+1)^2 window around its warp in image 1.

    Args:
        f0, f1: (B, C, H, W) features at one scale (image 1 sampled bilinearly,
            zero padding, ``align_corners=False``).
        warp: (B, 2, H, W) normalised coordinates in image 1.
        radius: r; window offsets are ``linspace(-2r/H, 2r/H, 2r+1)`` (one
            pixel step) in y and likewise in x.
        size: (H, W) of the full feature map when ``f0`` / ``warp`` are a band of
            its rows (tiled refinement); default: ``f0``'s size.
    Returns:
        (B, (2r+1)^2, H, W): ``<f0, f1(warp + offset)> / sqrt(C)``, window index
        row-major over (dy, dx), as RoMa's ``local_correlation``.

    When image 1's map has the size of image 0's (always so in the matcher: both
    images are resized to the same resolution), the window's offsets are whole pixels
    of image 1, so every window position shares the bilinear weights of the warp
    itself. The correlation is then taken with the (2r+2)^2 integer pixels around
    the warp (one gather of feature rows and one batched matrix product per chunk
    of pixels) and blended with those four weights: the same function as RoMa's
    (2r+1)^2 bilinear samples of all C channels, with about a quarter of the memory
    traffic (sums reordered: float32 differences ~1e-5 relative). Other sizes use the
    sampling loop.
    """
    B, C, h, w = f0.shape
    H, W = size if size is not None else (h, w)
    if tuple(f1.shape[-2:]) != (H, W):
        return _local_correlation_sampled(f0, f1, warp, radius, H, W)
    k, n = 2 * radius + 1, 2 * radius + 2
    # pixel coordinates in f1 with centres on integers (grid_sample's unnormalisation)
    x = pixel_to_index((warp[:, 0].float() + 1) * (W / 2))
    y = pixel_to_index((warp[:, 1].float() + 1) * (H / 2))
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    # Pad by n zeros on every side: a window that needs clamping lies wholly outside
    # the image, and the clamped one then reads only padding (zero padding, as RoMa).
    hp, wp = H + 2 * n, W + 2 * n
    table = F.pad(f1, (n, n, n, n)).permute(0, 2, 3, 1).reshape(B * hp * wp, C)
    xi = (x0 - radius + n).clamp(0, wp - n).long()
    yi = (y0 - radius + n).clamp(0, hp - n).long()
    batch = torch.arange(B, device=f0.device).view(B, 1, 1) * (hp * wp)
    start = (batch + yi * wp + xi).reshape(-1)
    offsets = (torch.arange(n, device=f0.device).view(n, 1) * wp + torch.arange(n, device=f0.device)).reshape(-1)
    rows0 = (f0 / C**0.5).permute(0, 2, 3, 1).reshape(B * h * w, C, 1).to(table.dtype)
    ci = torch.empty(B * h * w, n * n, dtype=torch.float32, device=f0.device)
    chunk = max(1, (1 << 22) // (n * n * C))  # about 4M gathered values at a time
    with torch.no_grad():
        for a in range(0, B * h * w, chunk):
            idx = (start[a : a + chunk, None] + offsets).reshape(-1)
            window = table.index_select(0, idx).view(-1, n * n, C)
            ci[a : a + chunk] = torch.bmm(window, rows0[a : a + chunk])[..., 0].float()
        ci = ci.view(B, h, w, n, n)
        fx, fy = fx[..., None, None], fy[..., None, None]
        corr = (1 - fy) * ((1 - fx) * ci[..., :-1, :-1] + fx * ci[..., :-1, 1:]) + fy * (
            (1 - fx) * ci[..., 1:, :-1] + fx * ci[..., 1:, 1:]
        )
    return corr.reshape(B, h, w, k * k).permute(0, 3, 1, 2).to(f0.dtype).contiguous()


def _local_correlation_sampled(f0, f1, warp, radius: int, H: int, W: int) -> torch.Tensor:
    """:func:`local_correlation` by (2r+1)^2 bilinear samples of image 1 (any sizes)."""
    B, C = f0.shape[:2]
    k = 2 * radius + 1
    dy = torch.linspace(-2 * radius / H, 2 * radius / H, k, device=f0.device)
    dx = torch.linspace(-2 * radius / W, 2 * radius / W, k, device=f0.device)
    gy, gx = torch.meshgrid(dy, dx, indexing="ij")
    window = torch.stack((gx, gy), dim=-1).reshape(k * k, 2).to(warp.dtype)
    base = warp.permute(0, 2, 3, 1)
    f0 = f0 / C**0.5
    corr = f0.new_empty(B, k * k, *f0.shape[-2:])
    with torch.no_grad():
        for j in range(k * k):
            sampled = F.grid_sample(f1, base + window[j], padding_mode="zeros", align_corners=False)
            corr[:, j] = (f0 * sampled).sum(dim=1)
    return corr


class ConvRefiner(nn.Module):
    """One refinement level: features of both images, the sampled image-1 features,
    a displacement embedding and (optionally) local correlation, through a depth-wise
    conv stack; outputs a displacement (2 channels, in units of ``4 / scale`` pixels
    of the full-resolution grid) and a certainty-logit residual.

    ``forward(f0, f1, warp, scale_factor, tile_bytes=None)``: f0, f1 (B, C, H, W), warp
    (B, 2, H, W) normalised; returns ``(delta (B, 2, H, W), certainty (B, 1, H, W))``.
    ``tile_bytes`` bounds the working memory: the conv stack then runs on bands of
    rows with a halo of :attr:`halo` rows on each side (its receptive field), so
    every output pixel sees the same inputs as in one pass (same output up to
    float round-off).
    ``scale_factor`` multiplies the displacement before its embedding
    (``40 / 32 * scale_factor * (warp - grid)``): see ``MatcherConfig.displacement_scale``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        displacement_emb_dim: int,
        local_corr_radius: int | None = None,
        kernel_size: int = 5,
        hidden_blocks: int = 8,
        out_dim: int = 3,
    ):
        super().__init__()
        self.block1 = self._block(in_dim, hidden_dim, kernel_size)
        self.hidden_blocks = nn.Sequential(
            *[self._block(hidden_dim, hidden_dim, kernel_size) for _ in range(hidden_blocks)]
        )
        self.out_conv = nn.Conv2d(hidden_dim, out_dim, 1, 1, 0)
        self.disp_emb = nn.Conv2d(2, displacement_emb_dim, 1, 1, 0)
        self.local_corr_radius = local_corr_radius

    @staticmethod
    def _block(in_dim: int, out_dim: int, kernel_size: int) -> nn.Sequential:
        if out_dim % in_dim:
            raise ValueError("depth-wise block needs out_dim divisible by in_dim")
        return nn.Sequential(
            nn.Conv2d(in_dim, out_dim, kernel_size, 1, kernel_size // 2, groups=in_dim),
            nn.BatchNorm2d(out_dim, momentum=0.01),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, 1, 1, 0),
        )

    @property
    def halo(self) -> int:
        """Rows each side of a band that the conv stack's receptive field reaches."""
        return (1 + len(self.hidden_blocks)) * (self.block1[0].kernel_size[0] // 2)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, warp: torch.Tensor, scale_factor: float = 1.0,
                tile_bytes: float | None = None):  # fmt: skip
        b, _, h, w = f0.shape
        rows = h
        if tile_bytes:
            # about six live (B, C, rows, W) float32 maps inside the conv stack
            per_row = 6 * 4 * b * w * self.block1[0].out_channels
            rows = max(1, int(tile_bytes // per_row) - 2 * self.halo)
        if rows >= h:
            return self._band(f0, f1, warp, scale_factor, 0, h)
        deltas, certs = [], []
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            a0, a1 = max(0, y0 - self.halo), min(h, y1 + self.halo)
            d, c = self._band(f0, f1, warp, scale_factor, a0, a1)
            deltas.append(d[:, :, y0 - a0 : y1 - a0])
            certs.append(c[:, :, y0 - a0 : y1 - a0])
        return torch.cat(deltas, dim=2), torch.cat(certs, dim=2)

    def _band(self, f0, f1, warp, scale_factor: float, a0: int, a1: int):
        """The refinement of rows ``a0:a1`` (zero padding at the band's edges)."""
        b, _, h, w = f0.shape
        f0, warp = f0[:, :, a0:a1], warp[:, :, a0:a1]
        f1_at_warp = F.grid_sample(f1, warp.permute(0, 2, 3, 1), align_corners=False)
        displacement = warp - _grid_bchw(b, h, w, f0.device)[:, :, a0:a1]
        parts = [f0, f1_at_warp, self.disp_emb(40 / 32 * scale_factor * displacement)]
        if self.local_corr_radius:
            parts.append(local_correlation(f0, f1, warp, self.local_corr_radius, size=(h, w)))
        # channels-last: the depth-wise convolutions run about 1.5x faster on CPU, same numbers;
        # not when training: their backward pass is then 1.5-2.5x slower (measured on CPU).
        # Each part is written straight into the channels-last input (one pass, not a
        # concatenation and then a layout copy).
        if torch.is_grad_enabled():
            d = torch.cat(parts, dim=1)
        else:
            dtype = parts[0].dtype
            for p in parts[1:]:
                dtype = torch.promote_types(dtype, p.dtype)
            d = torch.empty(
                (b, sum(p.shape[1] for p in parts), a1 - a0, w), dtype=dtype, device=f0.device,
                memory_format=torch.channels_last,
            )  # fmt: skip
            c0 = 0
            for p in parts:
                d[:, c0 : c0 + p.shape[1]].copy_(p)
                c0 += p.shape[1]
        del parts, f1_at_warp
        fold = can_fold(self)  # inference: BatchNorm folded into the depth-wise convs (models.fused)
        for block in (self.block1, *self.hidden_blocks):
            d = run_layers(d, block, fold)
        d = self.out_conv(d.float())
        return d[:, :-1], d[:, -1:]


def sine_position_encoding(dim: int, h: int, w: int, device=None) -> torch.Tensor:
    """LoFTR's 2D sine position encoding of cell indices (LoFTR ``PositionEncodingSine``).

    Args:
        dim: channels (a multiple of 4).
        h, w: the grid.
    Returns:
        (1, dim, h, w) float32: channels ``4k..4k+3`` are ``sin(x f_k), cos(x f_k),
        sin(y f_k), cos(y f_k)`` with x, y the 1-based cell indices and
        ``f_k = 10000^(-2k / (dim / 2))``. It depends on cell indices, not on the image
        size, so a network trained at one resolution runs at another.
    """
    if dim % 4:
        raise ValueError(f"position encoding needs dim divisible by 4, got {dim}")
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32)[None].expand(h, w)
    freq = torch.exp(torch.arange(0, dim // 2, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / (dim // 2)))
    f = freq[:, None, None]
    pe = torch.stack((torch.sin(x * f), torch.cos(x * f), torch.sin(y * f), torch.cos(y * f)), dim=1)
    return pe.reshape(1, dim, h, w)


class _AttentionBlock(nn.Module):
    """Pre-norm multi-head linear attention of ``x`` to ``source`` plus an MLP (self-attention
    when ``source`` is ``x``). Input and output (B, N, dim).

    Linear attention (Katharopoulos et al. 2020, as LoFTR uses it): ``phi(q) (phi(k)^T v) /
    (phi(q) . sum phi(k))`` with ``phi = elu + 1``: O(N d^2) instead of O(N^2 d), so it
    costs little at any resolution."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, 2 * dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        xn = self.norm1(x)
        sn = xn if source is x else self.norm1(source)
        q = F.elu(self.q(xn).reshape(B, N, h, C // h)) + 1  # LoFTR's linear attention:
        k, v = self.kv(sn).reshape(B, sn.shape[1], 2, h, C // h).unbind(2)  # phi(x) = elu(x) + 1
        k = F.elu(k) + 1
        kv = torch.einsum("bmhd,bmhe->bhde", k, v)
        z = 1 / (torch.einsum("bnhd,bhd->bnh", q, k.sum(dim=1)) + 1e-6)
        out = torch.einsum("bnhd,bhde,bnh->bnhe", q, kv, z).reshape(B, N, C)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class DualSoftmaxMatcher(nn.Module):
    """Coarse matching at stride 8 by a dual-softmax assignment (ours; LoFTR's coarse stage).

    ``forward(f0, f1)`` with f0 (B, C, H0, W0) and f1 (B, C, H1, W1) (the projected
    stride-8 features) adds :func:`sine_position_encoding`, runs ``depth`` pairs of
    self-attention (each image) and cross-attention (each to the other) linear-attention
    blocks, and scores
    every cell pair ``S_ij = <f0_i, f1_j> / (C T)``. The assignment is
    ``P = softmax_j(S) * softmax_i(S)`` (LoFTR Eq. 3).

    Returns ``(warp, certainty, log_p)``:
        warp: (B, 2, H0, W0) normalised coordinates in image 1: for each cell of image 0,
            the row-softmax-weighted mean of the cell centres in the 3 x 3 neighbourhood of
            its best match ``argmax_j P_ij`` (sub-cell accuracy);
        certainty: (B, 1, H0, W0) logit of ``max_j P_ij`` (clamped to [1e-4, 1 - 1e-4]);
        log_p: (B, H0*W0, H1*W1) float32 ``log P`` for the training loss
            (:class:`~l2m_plugin.training.losses.RobustLoss`). Cells are row-major.
    """

    def __init__(self, dim: int, depth: int = 4, num_heads: int = 4, temperature: float = 0.1):
        super().__init__()
        self.self_blocks = nn.ModuleList([_AttentionBlock(dim, num_heads) for _ in range(depth)])
        self.cross_blocks = nn.ModuleList([_AttentionBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.temperature = temperature
        self.dim = dim

    def forward(self, f0: torch.Tensor, f1: torch.Tensor):
        b, c, h0, w0 = f0.shape
        h1, w1 = f1.shape[-2:]
        x = (f0 + sine_position_encoding(c, h0, w0, f0.device).to(f0.dtype)).flatten(2).transpose(1, 2)
        y = (f1 + sine_position_encoding(c, h1, w1, f1.device).to(f1.dtype)).flatten(2).transpose(1, 2)
        for sa, ca in zip(self.self_blocks, self.cross_blocks, strict=True):
            x, y = sa(x, x), sa(y, y)
            x, y = ca(x, y), ca(y, x)
        x, y = self.norm(x).float(), self.norm(y).float()
        with torch.autocast(device_type=f0.device.type, enabled=False):
            sim = torch.einsum("bnc,bmc->bnm", x, y) / (c * self.temperature)
            log_row = sim.log_softmax(dim=2)
            log_p = log_row + sim.log_softmax(dim=1)
            best = log_p.argmax(dim=2)  # (b, n)
            # 3 x 3 neighbourhood of the best cell in image 1 (clamped at the borders)
            by, bx = best // w1, best % w1
            d = torch.arange(-1, 2, device=f0.device)
            ny = (by[..., None, None] + d[:, None]).clamp(0, h1 - 1).expand(-1, -1, 3, 3)
            nx = (bx[..., None, None] + d[None, :]).clamp(0, w1 - 1).expand(-1, -1, 3, 3)
            idx = (ny * w1 + nx).reshape(b, h0 * w0, 9)
            weights = torch.gather(log_row, 2, idx).softmax(dim=2)
            cx = (2 * nx.reshape(b, -1, 9).float() + 1) / w1 - 1
            cy = (2 * ny.reshape(b, -1, 9).float() + 1) / h1 - 1
            warp = torch.stack(((weights * cx).sum(-1), (weights * cy).sum(-1)), dim=1).reshape(b, 2, h0, w0)
            p_max = log_p.gather(2, best[..., None])[..., 0].exp().clamp(1e-4, 1 - 1e-4)
            certainty = torch.logit(p_max).reshape(b, 1, h0, w0)
        return warp, certainty, log_p


def _refiner_specs(arch) -> dict[str, dict]:
    """ConvRefiner arguments per scale from an ArchConfig: the input is both projected
    feature maps, the displacement embedding and the local correlation; the hidden
    width equals the input width (depth-wise stack), as in RoMa's ``roma_model()``."""
    specs = {}
    for s, proj, emb, r in zip(Decoder.scales, arch.proj_dims, arch.disp_emb_dims, arch.corr_radii, strict=True):
        if s not in arch.scales:
            continue
        in_dim = 2 * proj + emb + ((2 * r + 1) ** 2 if r else 0)
        specs[s] = dict(
            in_dim=in_dim, hidden_dim=in_dim, displacement_emb_dim=emb, local_corr_radius=r or None,
            kernel_size=arch.refiner_kernel, hidden_blocks=arch.refiner_blocks,
        )  # fmt: skip
    return specs


class Decoder(nn.Module):
    """Coarse-to-fine decoder over scales 16, 8, 4, 2, 1 (RoMa's ``Decoder``), or 8, 4, 2, 1
    with the dual-softmax coarse matcher (``arch.coarse_matcher``).

    Args:
        vit_dim: channels of the coarse (key 16) features (1024 for ViT-L/14).
        gp_solve: see :class:`GPMatcher`.
        arch: :class:`~l2m_plugin.config.ArchConfig` with the widths (default: the
            ``roma`` preset, RoMa's ``roma_model()`` numbers).

    ``forward(f0, f1, scale_factor, init=None, tile_bytes=None, return_gm=False, detach=True)``:
        f0, f1: dicts ``{scale: (B, C_s, H_s, W_s)}`` from :class:`~l2m_plugin.models.encoder.Encoder`.
            ``f1=None``: ``f0`` is a symmetric batch (images 0, then images 1) and the
            other side is that batch with its halves swapped, taken after the
            per-sample projection (one projection and no second copy of the
            encoder features; the same numbers as passing the swapped batch).
        init: ``None`` for the coarse pass (scales 16..1); for the upsampling pass a
            tuple ``(warp (B,2,h,w), certainty logits (B,1,h,w))`` from the coarse
            pass, resized to scale 8, and only scales 8..1 run.
        tile_bytes: working-memory bound of each refiner (see :class:`ConvRefiner`).
        return_gm: also return, at scale 16, the coarse matcher's anchor logits
            ``"gm_cls"`` (B, R*R, H16, W16) and its certainty logits before refinement
            ``"gm_certainty"`` (B, 1, H16, W16) (RoMa's training outputs ``gm_cls`` /
            ``gm_certainty``); with the dual-softmax matcher, at scale 8, ``"ds_log_p"``
            (B, H8*W8, H8*W8) and ``"gm_certainty"`` (:class:`DualSoftmaxMatcher`). The
            other outputs are the same with or without them.
        detach: cut the gradient between scales (RoMa trains with ``detach=True``: each
            refiner learns from its own loss only); no effect on the numbers.
    Returns:
        dict ``{scale: {"flow": (B,2,H_s,W_s) normalised warp, "certainty": (B,1,H_s,W_s) logits}}``.
    """

    scales = ("16", "8", "4", "2", "1")

    def __init__(self, vit_dim: int = 1024, gp_solve: str = "cholesky", arch=None):
        super().__init__()

        arch = arch or ARCH_PRESETS["roma"]
        self.scales = arch.scales
        gp_dim, feat_dim = arch.gp_dim, arch.proj_dims[0]
        if arch.coarse_matcher == "gp":
            self.embedding_decoder = CoordinateClassifier(
                gp_dim + feat_dim, depth=arch.cls_depth, num_heads=arch.cls_heads, res=arch.anchor_res
            )
            self.gps = nn.ModuleDict({"16": GPMatcher(gp_dim, T=0.2, solve=gp_solve)})
        else:
            self.dual_softmax = DualSoftmaxMatcher(
                arch.proj_dims[1], depth=arch.ds_depth, num_heads=arch.ds_heads, temperature=arch.ds_temperature
            )
        in_dims = (vit_dim, *reversed(arch.cnn_channels))  # scales 16, 8, 4, 2, 1
        self.proj = nn.ModuleDict(
            {
                s: nn.Sequential(nn.Conv2d(i, o, 1, 1), nn.BatchNorm2d(o))
                for s, i, o in zip(Decoder.scales, in_dims, arch.proj_dims, strict=True)
                if s in self.scales
            }
        )
        self.conv_refiner = nn.ModuleDict({s: ConvRefiner(**spec) for s, spec in _refiner_specs(arch).items()})
        self.refine_init = 4

    def forward(self, f0: dict, f1: dict, scale_factor: float = 1.0, init=None, tile_bytes: float | None = None,
                return_gm: bool = False, detach: bool = True) -> dict:  # fmt: skip
        # the upsampling pass (init) starts at scale 8: below the GP's 16, or at the
        # dual-softmax matcher's own scale without matching again
        scales = self.scales if init is None else tuple(s for s in self.scales if s != "16")
        sizes = {s: f0[s].shape[-2:] for s in f0}
        h, w = sizes[1]
        b = f0[1].shape[0]
        first = int(scales[0])
        if init is None:
            flow = _grid_bchw(b, *sizes[first], f0[1].device)
            certainty = None
        else:
            flow = F.interpolate(init[0], size=sizes[first], mode="bilinear", align_corners=False)
            certainty = F.interpolate(init[1], size=sizes[first], mode="bilinear", align_corners=False)
        out: dict = {}
        for s in scales:
            ins = int(s)
            # (not folded: the GP and the anchor classifier end in an argmax that the
            # smallest change of round-off can flip at a near-tie, away from romatch)
            a = self.proj[s](f0[ins].float())
            if f1 is None:  # symmetric batch [images 0, images 1]: the other side is the swap
                half = a.shape[0] // 2
                c = torch.cat((a[half:], a[:half]))
            else:
                c = self.proj[s](f1[ins].float())
            gm = {}
            if init is None and s == self.scales[0]:
                if s == "16":
                    posterior = self.gps[s](a, c)
                    logits, certainty = self.embedding_decoder(posterior, a)
                    flow = anchors_to_warp(logits)
                    if return_gm:
                        gm = {"gm_cls": logits, "gm_certainty": certainty}
                else:
                    flow, certainty, log_p = self.dual_softmax(a, c)
                    if return_gm:
                        gm = {"ds_log_p": log_p, "gm_certainty": certainty}
            delta, delta_cert = self.conv_refiner[s](a, c, flow, scale_factor=scale_factor, tile_bytes=tile_bytes)
            displacement = ins * torch.stack(
                (delta[:, 0].float() / (self.refine_init * w), delta[:, 1].float() / (self.refine_init * h)),
                dim=1,
            )
            flow = flow + displacement
            certainty = certainty + delta_cert
            out[ins] = {"flow": flow, "certainty": certainty, **gm}
            if s != "1":
                nxt = sizes[ins // 2]
                flow = F.interpolate(flow, size=nxt, mode="bilinear")
                certainty = F.interpolate(certainty, size=nxt, mode="bilinear")
                if detach:
                    flow, certainty = flow.detach(), certainty.detach()
        return out
