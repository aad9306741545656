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

Scale search (``MatcherConfig.covisible_scales``): when the scale change is beyond what the
network matches at all (a close-up of a portal against a view of the whole church), the
first pass finds no co-visible region to crop. Each factor ``s`` adds first passes in which
one image (each of the two in turn) is shrunk by ``s`` into the middle of a canvas of the
coarse size, filled with ImageNet's mean colour (0 after normalisation). The candidate
with the highest mean certainty over the shrunk image's content (over the whole image for
the plain pass, the larger of the two images' means) gives the boxes. This is the image
pyramid of classical matchers reduced to the coarse search; the crop pass then matches at
the full input size as before.

Zoom search (``MatcherConfig.covisible_zooms``): shrinking the close-up only goes so far,
because the distant view keeps its detail at the coarse size's resolution (a portal a tenth
of the image wide is 40 px of a 384-px input). Each factor ``z`` adds first passes in which
one image (each in turn) is cut into overlapping tiles of ``1/z`` its size
(:func:`zoom_tiles`) and each tile is matched against the other image whole, so the tile's
content reaches the network ``z`` times larger. It runs only on the pairs where a shrunk
candidate beat the plain pass (the sign of a scale change beyond the network's range), so
pairs without one keep the scale search's result and cost. A tile candidate scores like the
plain pass (the larger of the two images' mean certainty: both show their whole content)
and competes with the plain and shrunk candidates.

Coordinates: normalised (x, y) in [-1, 1], pixel centres at ``2 (i + 0.5) / W - 1``
(:mod:`l2m_plugin.coords`); boxes are integer pixel ranges ``[x0, x1) x [y0, y1)`` of the
full-resolution input tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from l2m_plugin.coords import normalized_grid, normalized_to_pixel, pixel_to_normalized

__all__ = ["covisible_box", "crop_to_full", "shrink_to_canvas", "zoom_tile_count", "zoom_tiles", "covisible_pass"]

#: fewest confident output cells a box is estimated from; fewer: no second pass
MIN_POINTS = 32

#: fill of the canvas around a shrunk image (ImageNet mean RGB, in [0, 1]): 0 after the
#: matcher's normalisation
CANVAS_FILL = (0.485, 0.456, 0.406)


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


def shrink_to_canvas(image: torch.Tensor, factor: float, size: tuple[int, int]):
    """An image shrunk by ``factor`` into the middle of a ``size`` canvas.

    Args:
        image: (1, 3, H, W) float RGB in [0, 1], any size.
        factor: > 1; the content is ``round(h / factor) x round(w / factor)`` pixels.
        size: (h, w) of the canvas (the matcher's coarse size: it is not resized again).
    Returns:
        ``(canvas (1, 3, h, w), (x0, y0, cw, ch))``: the content's top-left pixel corner and
        size in canvas pixels (bilinear, antialiased resize; :data:`CANVAS_FILL` around it).
    Raises:
        ValueError: ``factor <= 1``.
    Source: ours (one level of an image pyramid, padded to the matcher's fixed input size).
    """
    if not factor > 1:
        raise ValueError(f"a shrink factor must be > 1, got {factor}")
    h, w = size
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    canvas = image.new_tensor(CANVAS_FILL).view(1, 3, 1, 1).expand(1, 3, h, w).clone()
    small = F.interpolate(
        image.float(), size=(ch, cw), mode="bilinear", align_corners=False, antialias=True
    )
    canvas[:, :, y0 : y0 + ch, x0 : x0 + cw] = small.clamp(0, 1).to(canvas.dtype)
    return canvas, (x0, y0, cw, ch)


def _tiles_per_axis(factor: float) -> int:
    return math.ceil(2 * factor - 1 - 1e-9)


def zoom_tile_count(factor: float) -> int:
    """Tiles per image of the zoom search at ``factor`` (> 1): ``ceil(2 factor - 1)**2``, e.g.
    9 for 2 (what :func:`zoom_tiles` returns for any image size)."""
    return _tiles_per_axis(factor) ** 2


def zoom_tiles(size: tuple[int, int], factor: float) -> list[tuple[int, int, int, int]]:
    """The tiles of the zoom search: overlapping boxes of ``1/factor`` an image's size.

    Args:
        size: (W, H) of the image in pixels.
        factor: > 1; each tile is ``round(W / factor) x round(H / factor)`` pixels.
    Returns:
        ``ceil(2 factor - 1)**2`` pixel boxes ``(x0, y0, x1, y1)`` (``[x0, x1) x [y0, y1)``),
        row by row, their corners evenly spaced from the image's top-left to its
        bottom-right tile: for ``factor = 2`` a 3 x 3 grid, half a tile apart.
    Raises:
        ValueError: ``factor <= 1``.
    Source: ours (the tiles of a sliding window over the image at ``factor`` times the
    coarse resolution).
    """
    if not factor > 1:
        raise ValueError(f"a zoom factor must be > 1, got {factor}")
    w, h = size
    tw, th = max(1, round(w / factor)), max(1, round(h / factor))
    n = _tiles_per_axis(factor)
    xs = [round(k * (w - tw) / (n - 1)) for k in range(n)]
    ys = [round(k * (h - th) / (n - 1)) for k in range(n)]
    return [(x, y, x + tw, y + th) for y in ys for x in xs]


def _tile_to_image(pts: torch.Tensor, box, size: tuple[int, int]) -> torch.Tensor:
    """Normalised tile (x, y) -> normalised coordinates of the whole image (pixel-exact)."""
    x0, y0, x1, y1 = box
    w, h = size
    px = normalized_to_pixel(pts, x1 - x0, y1 - y0) + pts.new_tensor([x0, y0])
    return pixel_to_normalized(px, w, h)


def _canvas_to_image(pts: torch.Tensor, place, size: tuple[int, int]) -> torch.Tensor:
    """Normalised canvas (x, y) -> normalised coordinates of the shrunk image (pixel-exact)."""
    x0, y0, cw, ch = place
    h, w = size
    px = normalized_to_pixel(pts, w, h) - pts.new_tensor([x0, y0])
    return pixel_to_normalized(px, cw, ch)


def _confident_points(out: dict, j: int, thresh: float):
    """``(pts0 (N, 2), pts1 (N, 2))``: the normalised point pairs of pass ``out``'s pair ``j``
    whose certainty is >= ``thresh``, both directions when symmetric."""
    g = normalized_grid(*out["warp0"].shape[1:3], device=out["warp0"].device)
    ok0 = out["certainty0"][j] >= thresh
    pts0, pts1 = [g[ok0]], [out["warp0"][j][ok0]]
    if "warp1" in out:
        g1 = normalized_grid(*out["warp1"].shape[1:3], device=out["warp1"].device)
        ok1 = out["certainty1"][j] >= thresh
        pts1.append(g1[ok1])
        pts0.append(out["warp1"][j][ok1])
    return torch.cat(pts0), torch.cat(pts1)


def _scale_search(first: dict, i: int, image0, image1, match_once, scales, size, thresh, zooms=()):
    """The confident point pairs of the best first-pass candidate of pair ``i`` (module
    docstring): ``(pts0 (N, 2), pts1 (N, 2), choice)`` normalised in the full images, with
    ``choice`` None (plain pass), ``(side, factor)`` (image ``side`` shrunk) or
    ``(side, factor, box)`` (the tile ``box`` of image ``side`` at zoom ``factor``), and
    whether the zoom search ran."""
    sym = "warp1" in first
    means = [first["certainty0"][i].float().mean()]
    if sym:
        means.append(first["certainty1"][i].float().mean())
    best = (float(max(means)), None, first, i, None)
    x = (image0[i : i + 1], image1[i : i + 1])
    for factor in scales:
        for side in (0, 1) if sym else (0,):
            canvas, place = shrink_to_canvas(x[side], float(factor), size)
            other = x[1 - side]  # match_once resizes it to the coarse size
            out = match_once(*((canvas, other) if side == 0 else (other, canvas)))
            gs = normalized_grid(*out[f"certainty{side}"].shape[1:3], device=canvas.device)
            inside = (_canvas_to_image(gs, place, size).abs() <= 1).all(-1)
            score = float(out[f"certainty{side}"][0][inside].float().mean())
            if score > best[0]:
                best = (score, (side, float(factor)), out, 0, place)
    if best[1] is None:  # the plain pass won: no sign of a scale change beyond the network's range
        zooms = ()
    for factor in zooms:
        for side in (0, 1) if sym else (0,):
            full = (int(x[side].shape[-1]), int(x[side].shape[-2]))
            for box in zoom_tiles(full, float(factor)):
                tile = x[side][:, :, box[1] : box[3], box[0] : box[2]]
                out = match_once(*((tile, x[1]) if side == 0 else (x[0], tile)))
                score = max(float(out[f"certainty{k}"][0].float().mean()) for k in ((0, 1) if sym else (0,)))
                if score > best[0]:
                    best = (score, (side, float(factor), box), out, 0, None)
    _, choice, out, j, place = best
    pts0, pts1 = _confident_points(out, j, thresh)
    if choice is not None:  # canvas / tile -> image coordinates; drop points off the content
        both = [pts0, pts1]
        if len(choice) == 2:
            both[choice[0]] = _canvas_to_image(both[choice[0]], place, size)
        else:
            whole = (int(x[choice[0]].shape[-1]), int(x[choice[0]].shape[-2]))
            both[choice[0]] = _tile_to_image(both[choice[0]], choice[2], whole)
        keep = (both[choice[0]].abs() <= 1).all(-1)
        pts0, pts1 = both[0][keep], both[1][keep]
    return pts0, pts1, choice, bool(zooms)


def covisible_pass(
    first: dict,
    image0: torch.Tensor,
    image1: torch.Tensor,
    match_once: Callable[[torch.Tensor, torch.Tensor], dict],
    *,
    thresh: float,
    margin: float,
    scales: tuple[float, ...] = (),
    coarse_size: tuple[int, int] | None = None,
    zooms: tuple[float, ...] = (),
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
        scales: shrink factors (> 1) of the scale search (module docstring); () = none.
            Each adds one pass per image (two when symmetric) to every pair.
        coarse_size: (h, w) the candidates are built at (the matcher's ``coarse_res``);
            needed when ``scales`` is not empty.
        zooms: zoom factors (> 1) of the zoom search (module docstring; :func:`zoom_tiles`);
            () = none. Each adds ``ceil(2 z - 1)**2`` passes per image (all tiles of both
            images when symmetric) to the pairs where a shrunk candidate of ``scales`` beat
            the plain pass; needs ``scales``.
    Returns:
        a new output dict (same keys, shapes and dtypes as ``first``) with
        ``covisible_boxes``: per pair ``(box0, box1)`` pixel boxes, or None where the
        first pass was kept (too few confident cells, or boxes covering >= 90% of both
        images); with ``scales``, also ``covisible_scales``: per pair None
        (the plain first pass gave the boxes), ``(side, factor)``: image ``side`` shrunk by
        ``factor`` did, or ``(side, factor, box)``: the tile ``box`` (pixels) of image
        ``side`` at zoom ``factor`` did; with ``zooms``, also ``covisible_zoom_searched``:
        per pair whether its tiles were matched.
    Raises:
        ValueError: ``scales`` without ``coarse_size``, ``zooms`` without ``scales``, or a
            factor <= 1 (:func:`shrink_to_canvas`, :func:`zoom_tiles`).
    """
    scales, zooms = tuple(scales), tuple(zooms)
    if zooms and not scales:
        raise ValueError("covisible_pass: zooms need scales (the zoom search runs where a shrunk image wins)")
    if scales and coarse_size is None:
        raise ValueError("covisible_pass: scales need coarse_size (the matcher's coarse_res)")
    out = dict(first)
    sym = "warp1" in first
    keys = ["warp0", "certainty0"] + (["warp1", "certainty1"] if sym else [])
    for k in keys:
        out[k] = first[k].clone()
    b, ho, wo, _ = first["warp0"].shape
    size0 = (int(image0.shape[-1]), int(image0.shape[-2]))
    size1 = (int(image1.shape[-1]), int(image1.shape[-2]))
    boxes, choices, zoomed = [], [], []
    for i in range(b):
        if scales:
            pts0, pts1, choice, searched = _scale_search(
                first, i, image0, image1, match_once, scales, coarse_size, thresh, zooms
            )
            choices.append(choice)
            zoomed.append(searched)
        else:
            pts0, pts1 = _confident_points(first, i, thresh)
        box0 = covisible_box(pts0, size0, margin)
        box1 = covisible_box(pts1, size1, margin)
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
    if scales:
        out["covisible_scales"] = choices
    if zooms:
        out["covisible_zoom_searched"] = zoomed
    return out
