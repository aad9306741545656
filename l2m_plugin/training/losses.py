"""RoMa's training losses for the coarse-to-fine matcher.

Source: RoMa (Edstedt et al., CVPR 2024, Sec. 3.6 and Sec. 4), code
``romatch/losses/robust_loss.py`` (``RobustLosses``), with the settings of
``experiments/train_roma_outdoor.py``; L2M stage 2 trains its decoder with the same
objective on synthetic pairs (L2M, ICCV 2025, Sec. 3.3). Per scale s in 16, 8, 4, 2, 1,
on the s-strided grid of image 0:

* ground truth: the warp and its validity at the scale's pixel centres (RoMa
  recomputes them from depth at each scale; here they are bilinearly sampled from the
  full-resolution warp, and a pixel is valid only where all four neighbours are,
  which keeps depth edges out), :func:`gt_at_scale`;
* locality (scales <= ``local_largest_scale`` = 8): a pixel counts only if the previous
  (coarser) scale's end-point error there is below ``local_dist[s] * s * 2 / 512``
  (normalised units; RoMa's constants are for 512 px), so each refiner is trained
  within its capture range;
* target probability ``prob`` = valid (and local); it is also the certainty target:
  binary cross-entropy of the certainty logits against ``prob`` over all pixels;
* scale 16 (the coarse matcher): cross-entropy of the anchor logits ``gm_cls`` against
  the anchor nearest to the ground truth (the R x R cell containing it) where
  ``prob``, plus ``ce_weight`` times the BCE of ``gm_certainty``;
* scale 8 of the dual-softmax matcher (``arch.coarse_matcher == "dual_softmax"``, not in
  RoMa): the negative log of the dual-softmax assignment at the image-1 cell that contains
  the ground truth (LoFTR's coarse loss, Sun et al. CVPR 2021 Eq. 4, without the focal
  term), over valid pixels whose match lies inside image 1, times ``coarse_weight``; plus
  ``ce_weight`` times the BCE of ``gm_certainty``;
* every scale: robust regression of the refined warp where ``prob``: a generalised
  Charbonnier of the end-point error ``x`` (normalised units),
  ``cs**a * ((x / cs)**2 + 1)**(a / 2)`` with ``cs = c * s``; here minus its value at
  ``x = 0`` (``cs**a``, a constant: same gradients), so the loss is 0 at the ground
  truth; plus ``ce_weight`` times the certainty BCE;
* total = sum over scales of ``scale_weights[s]`` times those terms.

RoMa outdoor: ``ce_weight=0.01``, ``alpha=0.5``, ``c=1e-4``, ``local_dist={1: 4, 2: 4,
4: 8, 8: 8}``, ``local_largest_scale=8``, all scale weights 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from l2m_plugin.coords import normalized_grid

__all__ = ["LossConfig", "RobustLoss", "gt_at_scale", "anchor_targets", "cell_targets", "charbonnier"]


@dataclass(frozen=True)
class LossConfig:
    """Constants of :class:`RobustLoss` (RoMa outdoor's values by default; see the module docstring).

    Attributes:
        ce_weight: weight of every certainty BCE.
        alpha: Charbonnier exponent (a float, or ``{scale: alpha}``).
        c: Charbonnier scale per unit of scale, in normalised coordinates.
        local_dist: ``{scale: d}``: the previous scale's error must be < ``d * scale * 2 / 512``.
        local_largest_scale: locality applies at scales <= this.
        scale_weights: ``{scale: weight}``.
        valid_thresh: a pixel counts where ``prob`` > this (RoMa: 0.99).
        coarse_weight: weight of the dual-softmax matcher's assignment loss.
    """

    ce_weight: float = 0.01
    alpha: float | dict = 0.5
    c: float = 1e-4
    local_dist: dict = field(default_factory=lambda: {1: 4.0, 2: 4.0, 4: 8.0, 8: 8.0})
    local_largest_scale: int = 8
    scale_weights: dict = field(default_factory=lambda: {16: 1.0, 8: 1.0, 4: 1.0, 2: 1.0, 1: 1.0})
    valid_thresh: float = 0.99
    coarse_weight: float = 1.0

    @classmethod
    def from_dict(cls, d: dict) -> LossConfig:
        """From a plain dict (YAML): dict keys of ``local_dist``/``scale_weights``/``alpha`` become ints.

        Raises:
            ValueError: unknown fields.
        """
        names = set(cls.__dataclass_fields__)
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown loss fields {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        for k in ("local_dist", "scale_weights", "alpha"):
            if isinstance(d.get(k), dict):
                d[k] = {int(s): float(v) for s, v in d[k].items()}
        return cls(**d)


@torch.no_grad()
def gt_at_scale(warp: torch.Tensor, valid: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth warp and validity on an h x w grid from the full-resolution ones.

    Args:
        warp: (B, H, W, 2) normalised warp (any value where invalid; non-finite allowed).
        valid: (B, H, W) bool.
        h, w: the scale's grid.
    Returns:
        ``(warp_s (B, h, w, 2) float32, valid_s (B, h, w) bool)``: bilinear samples at
        the grid's pixel centres (``align_corners=False``); valid where the bilinear
        weight of valid pixels is >= 0.999 (all contributing pixels valid).
        Invalid entries of ``warp_s`` are 0.
    """
    B, H, W, _ = warp.shape
    valid_f = valid.float()
    warp = torch.where(valid[..., None], warp.float(), torch.zeros((), device=warp.device)).nan_to_num(0.0)
    if (H, W) == (h, w):
        return warp, valid_f >= 0.5
    grid = normalized_grid(h, w, device=warp.device)[None].expand(B, h, w, 2)
    ws = F.grid_sample(warp.permute(0, 3, 1, 2), grid, mode="bilinear", align_corners=False)
    vs = F.grid_sample(valid_f[:, None], grid, mode="bilinear", align_corners=False)[:, 0] >= 0.999
    ws = ws.permute(0, 2, 3, 1)
    return torch.where(vs[..., None], ws, torch.zeros((), device=ws.device)), vs


def anchor_targets(warp: torch.Tensor, res: int) -> torch.Tensor:
    """Index of the anchor nearest to each warp (RoMa ``gm_cls_loss``'s ``GT``).

    Anchors are the centres of an ``res x res`` grid over [-1, 1]^2, anchor ``k`` at
    cell (x = k % res, y = k // res) (:func:`l2m_plugin.models.decoder.anchors_to_warp`);
    the nearest centre of a regular grid is the cell containing the point, clamped to
    the grid for points outside it.

    Args:
        warp: (..., 2) normalised (x, y).
        res: R.
    Returns:
        (...) int64 indices in [0, R*R).
    """
    return cell_targets(warp, res, res)


def cell_targets(warp: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Row-major index of the cell of an h x w grid over image 1 that contains each warp.

    Args:
        warp: (..., 2) normalised (x, y); points outside [-1, 1] are clamped to the border cells.
        h, w: the grid (the dual-softmax matcher's image-1 cells).
    Returns:
        (...) int64 indices in [0, h*w).
    """
    cx = ((warp[..., 0] + 1) * (w / 2)).floor().clamp(0, w - 1).long()
    cy = ((warp[..., 1] + 1) * (h / 2)).floor().clamp(0, h - 1).long()
    return cy * w + cx


def charbonnier(x: torch.Tensor, scale: int, alpha: float, c: float) -> torch.Tensor:
    """RoMa's generalised Charbonnier ``cs**a * ((x/cs)**2 + 1)**(a/2)`` minus its minimum ``cs**a``.

    Args:
        x: end-point errors (normalised units), any shape.
        scale: the decoder scale s (``cs = c * s``).
    Returns:
        same shape, >= 0, 0 where x = 0.
    """
    cs = c * scale
    return cs**alpha * (((x / cs) ** 2 + 1) ** (alpha / 2) - 1)


class RobustLoss(nn.Module):
    """RoMa's ``RobustLosses`` (module docstring), on the output of :meth:`L2M.forward_train`.

    ``forward(out, warp, valid)``:
        out: ``{scale: {"flow": (N, 2, h, w), "certainty": (N, 1, h, w), ["gm_cls",
            "gm_certainty"]}}``, scales coarse to fine (16 first);
        warp: (N, H, W, 2) ground-truth warp at the training size; valid: (N, H, W) bool.
    Returns:
        ``(total, stats)``: the scalar loss (float32, differentiable) and a dict of
        float components: ``gm_cls_16``, ``gm_certainty_16``, ``regression_<s>``,
        ``certainty_<s>``, ``valid_fraction_<s>`` (fraction of pixels supervised),
        and at scale 1 ``epe_px`` (mean end-point error in pixels over valid pixels)
        and ``pck_1px`` (fraction of them within 1 px).
    """

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        self.config = config or LossConfig()

    def _alpha(self, scale: int) -> float:
        a = self.config.alpha
        return float(a[scale]) if isinstance(a, dict) else float(a)

    def forward(self, out: dict, warp: torch.Tensor, valid: torch.Tensor):
        cfg = self.config
        total = torch.zeros((), device=warp.device)
        stats: dict[str, float] = {}
        prev_epe = None
        for scale in sorted(out, reverse=True):
            o = out[scale]
            flow, cert = o["flow"].float(), o["certainty"].float()
            h, w = flow.shape[-2:]
            x2, ok = gt_at_scale(warp, valid, h, w)
            epe = (flow.permute(0, 2, 3, 1) - x2).norm(dim=-1)
            prob = ok.float()
            if prev_epe is not None and scale <= cfg.local_largest_scale:
                near = F.interpolate(prev_epe[:, None], size=(h, w), mode="nearest-exact")[:, 0]
                prob = prob * (near < (2 / 512) * cfg.local_dist[scale] * scale).float()
            mask = prob > cfg.valid_thresh
            weight = float(cfg.scale_weights.get(scale, 1.0))
            if "gm_cls" in o:
                logits = o["gm_cls"].float()
                res = round(logits.shape[1] ** 0.5)
                target = anchor_targets(x2, res)
                ce = F.cross_entropy(logits, target, reduction="none")[mask]
                cls_loss = ce.mean() if ce.numel() else logits.sum() * 0.0
                gm_cert = F.binary_cross_entropy_with_logits(o["gm_certainty"].float()[:, 0], prob)
                total = total + weight * (cls_loss + cfg.ce_weight * gm_cert)
                stats[f"gm_cls_{scale}"] = float(cls_loss.detach())
                stats[f"gm_certainty_{scale}"] = float(gm_cert.detach())
            if "ds_log_p" in o:
                log_p = o["ds_log_p"].float()
                target = cell_targets(x2, h, w).flatten(1)  # image 1 has image 0's training size
                inside = ok & (x2.abs() < 1).all(dim=-1)
                nll = -log_p.gather(2, target[..., None])[..., 0][inside.flatten(1)]
                ds_loss = nll.mean() if nll.numel() else log_p.sum() * 0.0
                gm_cert = F.binary_cross_entropy_with_logits(o["gm_certainty"].float()[:, 0], prob)
                total = total + weight * (cfg.coarse_weight * ds_loss + cfg.ce_weight * gm_cert)
                stats[f"ds_nll_{scale}"] = float(ds_loss.detach())
                stats[f"gm_certainty_{scale}"] = float(gm_cert.detach())
            reg = charbonnier(epe[mask], scale, self._alpha(scale), cfg.c)
            reg_loss = reg.mean() if reg.numel() else flow.sum() * 0.0
            cert_loss = F.binary_cross_entropy_with_logits(cert[:, 0], prob)
            total = total + weight * (reg_loss + cfg.ce_weight * cert_loss)
            stats[f"regression_{scale}"] = float(reg_loss.detach())
            stats[f"certainty_{scale}"] = float(cert_loss.detach())
            stats[f"valid_fraction_{scale}"] = float(mask.float().mean())
            if scale == 1:
                with torch.no_grad():
                    px = (flow.permute(0, 2, 3, 1) - x2) * flow.new_tensor([w / 2, h / 2])
                    e = px.norm(dim=-1)[ok]
                    stats["epe_px"] = float(e.mean()) if e.numel() else float("nan")
                    stats["pck_1px"] = float((e < 1).float().mean()) if e.numel() else float("nan")
            prev_epe = epe.detach()
        stats["loss"] = float(total.detach())
        return total, stats
