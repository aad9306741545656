"""A second matching pass on the co-visible crops of a pair: scale normalisation at test time.

A dense matcher at a fixed input size sees a pair with a large scale change (image 1 a
2x zoom into image 0) at two very different scales: the region both images show fills
image 1 but a quarter of image 0, at a quarter of the coarse grid's cells. The second
pass (``MatcherConfig.covisible_crop``) crops each image to the box its confident matches
of the first pass cover, grows the box by ``covisible_margin`` of its size per side, and
matches the two crops at the full input size, so both images show the co-visible region
at nearly the same scale. The crop pass's warp and certainty are then sampled back onto
the first pass's output grid; outside the box of image 0 (resp. 1) the certainty is 0.

This is the overlap-cropping idea of OETR (Chen et al., "Guide Local Feature Matching by
Overlap Estimation", AAAI 2022), with the first dense pass as the overlap estimator.

Coordinates: normalised (x, y) in [-1, 1], pixel centres at ``2 (i + 0.5) / W - 1``
(:mod:`l2m_plugin.coords`); boxes are integer pixel ranges ``[x0, x1) x [y0, y1)`` of the
full-resolution input tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from l2m_plugin.coords import normalized_grid, normalized_to_pixel

__all__ = ["covisible_box", "crop_to_full", "covisible_pass"]

#: fewest confident output cells a box is estimated from; fewer: no second pass
MIN_POINTS = 32


def covisible_box(
    points: torch.Tensor, size: tuple[int, int], margin: float, quantile: float = 0.02
):
    """The pixel box around the co-visible points of one image.

    Args:
        points: (N, 2) normalised (x, y) in [-1, 1]: where the confident matches lie.
        size: (W, H) of the image in pixels.
        margin: growth of the box per side, as a fraction of its width / height.
        quantile: the box spans the ``quantile`` to ``1 - quantile`` quantiles of the
            points along each axis (robust to a few stray matches).
    Returns:
        ``(x0, y0, x1, y1)`` ints, ``0 <= x0 < x1 <= W``, at least 1/8 of each side wide;
        or None when ``N < MIN_POINTS``.
    """
    if points.shape[0] < MIN_POINTS:
        return None
    w, h = size
    q = torch.tensor([quantile, 1 - quantile], dtype=torch.float32, device=points.device)
    lo_hi = torch.quantile(points.float(), q, dim=0)  # (2, 2): rows lo / hi, columns x / y
    box = []
    for axis, side in ((0, w), (1, h)):
        lo, hi = ((lo_hi[:, axis] + 1) / 2 * side).tolist()
        grow = margin * (hi - lo)
        lo, hi = lo - grow, hi + grow
        short = side / 8 - (hi - lo)
        if short > 0:
            lo, hi = lo - short / 2, hi + short / 2
        box.append((max(0, int(lo)), min(side, int(-(-hi // 1)))))
    (x0, x1), (y0, y1) = box
    return x0, y0, x1, y1


def crop_to_full(warp: torch.Tensor, certainty: torch.Tensor, box_a, box_b, size_a, size_b, out_hw):
    """Sample a crop pass's output back onto the full image's output grid.

    Args:
        warp: (h, w, 2) normalised warp from crop A into crop B.
        certainty: (h, w) in [0, 1].
        box_a, box_b: the crops' pixel boxes ``(x0, y0, x1, y1)`` in images A and B.
        size_a, size_b: (W, H) of the full images A and B.
        out_hw: (H_o, W_o) of the full output grid of image A.
    Returns:
        ``(warp (H_o, W_o, 2) normalised in full image B, certainty (H_o, W_o))``;
        certainty 0 outside box A (bilinear sampling of both inside it).
    """
    ho, wo = out_hw
    g = normalized_grid(ho, wo, device=warp.device)
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box_a, box_b
    wa, ha = size_a
    wb, hb = size_b
    # full-A normalised -> pixel -> crop-A normalised
    px, py = normalized_to_pixel(g, wa, ha).unbind(-1)
    cx = (px - ax0) / (ax1 - ax0) * 2 - 1
    cy = (py - ay0) / (ay1 - ay0) * 2 - 1
    inside = (cx.abs() <= 1) & (cy.abs() <= 1)
    loc = torch.stack((cx, cy), dim=-1)[None]
    stack = torch.cat((warp.permute(2, 0, 1), certainty[None]), 0)[None].float()
    s = F.grid_sample(stack, loc, mode="bilinear", padding_mode="border", align_corners=False)[0]
    # crop-B normalised -> pixel -> full-B normalised
    wx = ((s[0] + 1) / 2 * (bx1 - bx0) + bx0) / wb * 2 - 1
    wy = ((s[1] + 1) / 2 * (by1 - by0) + by0) / hb * 2 - 1
    return torch.stack((wx, wy), dim=-1), s[2] * inside


def covisible_pass(
    first: dict,
    image0: torch.Tensor,
    image1: torch.Tensor,
    match_once: Callable[[torch.Tensor, torch.Tensor], dict],
    *,
    thresh: float,
    margin: float,
) -> dict:
    """Match the co-visible crops of each pair again and return the first pass's output
    format on its grid (see the module docstring).

    Args:
        first: the first pass's output (``warp0`` (B, H_o, W_o, 2), ``certainty0``, and
            ``warp1`` / ``certainty1`` when symmetric).
        image0, image1: (B, 3, H_i, W_i) float RGB in [0, 1], the images the boxes are
            cut from (full resolution; their pixel grids define the boxes).
        match_once: ``(crop0 (1, 3, h0, w0), crop1 (1, 3, h1, w1)) -> output dict``: one
            matching pass (it resizes the crops to the coarse size).
        thresh: first-pass certainty at or above which a cell counts as co-visible.
        margin: box growth per side (fraction of the box size).
    Returns:
        a new output dict (same keys, shapes and dtypes as ``first``) with
        ``covisible_boxes``: per pair ``(box0, box1)`` pixel boxes, or None where the
        first pass was kept (too few confident cells, or boxes covering >= 90% of both
        images).
    """
    out = dict(first)
    sym = "warp1" in first
    keys = ["warp0", "certainty0"] + (["warp1", "certainty1"] if sym else [])
    for k in keys:
        out[k] = first[k].clone()
    b, ho, wo, _ = first["warp0"].shape
    g = normalized_grid(ho, wo, device=first["warp0"].device)
    size0 = (int(image0.shape[-1]), int(image0.shape[-2]))
    size1 = (int(image1.shape[-1]), int(image1.shape[-2]))
    boxes = []
    for i in range(b):
        ok0 = first["certainty0"][i] >= thresh
        pts0, pts1 = [g[ok0]], [first["warp0"][i][ok0]]
        if sym:
            ok1 = first["certainty1"][i] >= thresh
            pts1.append(g[ok1])
            pts0.append(first["warp1"][i][ok1])
        box0 = covisible_box(torch.cat(pts0), size0, margin)
        box1 = covisible_box(torch.cat(pts1), size1, margin)
        if (
            box0 is None
            or box1 is None
            or all(
                (bx[2] - bx[0]) * (bx[3] - bx[1]) >= 0.9 * s[0] * s[1]
                for bx, s in ((box0, size0), (box1, size1))
            )
        ):
            boxes.append(None)
            continue
        c0 = image0[i : i + 1, :, box0[1] : box0[3], box0[0] : box0[2]]
        c1 = image1[i : i + 1, :, box1[1] : box1[3], box1[0] : box1[2]]
        crop = match_once(c0, c1)
        w, c = crop_to_full(
            crop["warp0"][0], crop["certainty0"][0], box0, box1, size0, size1, (ho, wo)
        )
        out["warp0"][i], out["certainty0"][i] = (
            w.to(out["warp0"].dtype),
            c.to(out["certainty0"].dtype),
        )
        if sym:
            hw1 = tuple(first["warp1"].shape[1:3])
            w, c = crop_to_full(
                crop["warp1"][0], crop["certainty1"][0], box1, box0, size1, size0, hw1
            )
            out["warp1"][i], out["certainty1"][i] = (
                w.to(out["warp1"].dtype),
                c.to(out["certainty1"].dtype),
            )
        boxes.append((box0, box1))
    out["covisible_boxes"] = boxes
    return out
