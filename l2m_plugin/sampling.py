"""Drawing sparse matches from a dense warp (RoMa's "threshold_balanced" sampling).

Source: romatch 0.1.2 ``RegressionMatcher.sample`` and ``utils/kde.py``:
candidates are drawn without replacement with probability proportional to the
certainty (certainties above ``sample_thresh`` count as 1), four times as many as
requested; then a Gaussian kernel density (std 0.1 in the 4-d space of normalised
match coordinates) is estimated over the candidates and the final matches are
drawn with probability ``1 / (1 + density)``, candidates with density < 10
getting 1e-7. Differences from the reference, on purpose: the density is computed
in float32 (the reference uses float16 and a full N x N matrix), and the returned
score is the raw certainty, not the thresholded one. Optional, off by default (the
reference's rule): ``cutoff`` draws only candidates above ``sample_thresh``
(``MatcherConfig.sample_cutoff``), for a network whose certainty below the threshold
is not near 0 (l2m-tiny: README, "Upsampling pass and sampling cutoff").

Two estimates of that density, the same function up to a small, measured error:

* ``"exact"`` (:func:`kde`): all candidates against all candidates, in row chunks.
  Quadratic: on 2 cores (Intel Xeon, ``benchmarks/speed.py``) 5,000 matches
  (20,000 candidates) cost 4.5 s, 20,000 matches 72 s; 100,000 would take about
  half an hour.
* ``"grid"`` (:func:`grid_kde`, the default): the candidates are spread on a
  regular 4-d grid (cell = std / 2) by multilinear ("cloud-in-cell") weights,
  the grid is smoothed by a separable Gaussian (one small matrix product per
  axis), and the smoothed grid is read back at each candidate by multilinear
  interpolation (0.09 s, 0.11 s and 0.26 s for 5,000, 20,000 and 100,000 matches,
  same machine). Linear in the number of candidates plus a fixed cost for the
  grid (about 2.6 million cells for coordinates in [-1, 1]; candidates more than
  a quarter of the image outside [-1, 1] are summed exactly instead). Spreading and
  reading back each blur by a triangle of variance cell^2 / 6, so the Gaussian on
  the grid has variance std^2 - cell^2 / 3 and the same integral as the exact
  kernel; each point's own term (1) is then put back exactly: the result
  approximates the exact density with a median relative error of about 0.6% and a
  maximum under 5%. The selection probabilities
  ``1 / (1 + density)`` then differ from the exact ones by a total variation
  distance of about 0.004: 300 draws of 1,000 matches do not tell the two apart
  (chi-square two-sample test, p about 0.5) where they reject a kernel only 5%
  wider (p about 1e-42) (``tests/test_sampling.py``; README "Speed" has the pose
  and homography AUCs of both on the benchmarks).
"""

from __future__ import annotations

import itertools
import math

import torch

from l2m_plugin.config import DENSITY_METHODS
from l2m_plugin.coords import normalized_grid, normalized_to_pixel

__all__ = ["kde", "kde_between", "grid_kde", "balanced_sample", "sample_matches"]


def kde(x: torch.Tensor, std: float = 0.1, chunk: int | None = None) -> torch.Tensor:
    """Gaussian kernel density of each row of ``x`` among all rows (exact, quadratic cost).

    Args:
        x: (N, D) float points.
        std: kernel standard deviation, in the units of ``x``.
        chunk: rows processed at once (bounds memory to ``chunk * N`` floats);
            None: as many as fit in 2**26 floats (256 MiB).
    Returns:
        (N,) float32 ``sum_j exp(-|x_i - x_j|^2 / (2 std^2))`` (includes j = i);
        romatch 0.1.2 ``utils/kde.py`` in float32.
    """
    return kde_between(x, x, std, chunk)


def _corner_weights(frac: torch.Tensor, corner: tuple[int, ...]) -> torch.Tensor:
    """Multilinear weight of one grid corner for each point: (N, D) fractions -> (N,)."""
    w = frac[:, 0] if corner[0] else 1.0 - frac[:, 0]
    for k in range(1, frac.shape[1]):
        w = w * (frac[:, k] if corner[k] else 1.0 - frac[:, k])
    return w


def grid_kde(
    x: torch.Tensor,
    std: float = 0.1,
    cell: float = 0.5,
    truncate: float = 4.0,
    box: float = 1.5,
) -> torch.Tensor:
    """Gaussian kernel density of each row of ``x`` among all rows, on a grid (linear cost).

    Approximates :func:`kde` (same kernel, same unnormalised scale: an isolated
    point has density 1); the method and its accuracy are in the module docstring.

    Args:
        x: (N, D) float points, D <= 4 (D = 4 for matches: normalised x0, y0, x1, y1).
        std: kernel standard deviation, in the units of ``x``.
        cell: grid spacing as a fraction of ``std`` (0.5: a relative error of at
            most about 5%; smaller is more accurate and costs cell^-D more).
        truncate: the smoothing kernel is cut at this many standard deviations.
        box: the grid covers the bounding box of the points inside
            [-box, box]^D (at most (2 box / (cell std) + 2)^D cells: 14.8 million,
            59 MB, at the defaults). Points outside it (warps that leave image 1
            by more than a quarter of its size, rare among candidates) are summed
            exactly against all points, at a cost of N per such point.
    Returns:
        (N,) float32 densities, ``sum_j exp(-|x_i - x_j|^2 / (2 std^2))`` up to the
        grid's error (exact for the term j = i).
    Raises:
        ValueError: ``x`` not (N, D) with N >= 1 and D <= 4, or ``std``, ``cell``
            or ``box`` out of range.
    """
    if x.ndim != 2 or x.shape[0] == 0 or not 1 <= x.shape[1] <= 4:
        raise ValueError(f"x must be (N, D) with N >= 1 and 1 <= D <= 4, got {tuple(x.shape)}")
    if not (std > 0 and 0 < cell < 1.5 and box > 0):
        raise ValueError(
            f"std and box must be > 0 and cell in (0, 1.5), got {std}, {box} and {cell}"
        )
    x = x.float()
    inside = ((x >= -box) & (x <= box)).all(dim=1)
    out = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    if inside.any():
        out[inside] = _grid_density(x[inside], std, std * cell, truncate)
    if not inside.all():  # exact sums for the outside points, and their share of the inside ones
        far, near = x[~inside], x[inside]
        out[~inside] = kde_between(far, x, std)
        if len(near):
            out[inside] += kde_between(near, far, std)
    return out


def kde_between(
    x: torch.Tensor, y: torch.Tensor, std: float = 0.1, chunk: int | None = None
) -> torch.Tensor:
    """Gaussian kernel sums of each row of ``x`` over the rows of ``y`` (exact, cost N * M).

    Args:
        x: (N, D) float points; y: (M, D) float points, same D and device.
        std: kernel standard deviation, in the units of the points.
        chunk: rows of ``x`` processed at once (memory ``chunk * M`` floats);
            None: as many as fit in 2**26 floats (256 MiB).
    Returns:
        (N,) float32 ``sum_j exp(-|x_i - y_j|^2 / (2 std^2))``.
    Raises:
        RuntimeError: (from ``torch.cdist``) ``x`` and ``y`` differ in D.
    """
    x, y = x.float(), y.float()
    if chunk is None:
        chunk = max(1, 2**26 // max(1, y.shape[0]))
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], chunk):
        d2 = torch.cdist(x[i : i + chunk], y).square_()
        out[i : i + chunk] = d2.mul_(-1.0 / (2 * std**2)).exp_().sum(dim=-1)
    return out


def _grid_density(x: torch.Tensor, std: float, h: float, truncate: float) -> torch.Tensor:
    """The grid estimate of :func:`grid_kde` for points in a bounded box, spacing ``h``."""
    n, d = x.shape
    lo = x.min(dim=0).values
    # +2 cells per axis: one for the upper corner of the last cell, one for round-off
    sizes = [int(s / h) + 2 for s in (x.max(dim=0).values - lo).tolist()]
    u = (x - lo) / h
    i0 = u.floor().clamp_(min=0)
    frac = u - i0
    strides = [math.prod(sizes[k + 1 :]) for k in range(d)]
    base = (i0.long() * torch.tensor(strides, device=x.device)).sum(dim=1)
    corners = list(itertools.product((0, 1), repeat=d))
    offsets = [sum(c * s for c, s in zip(corner, strides, strict=True)) for corner in corners]
    weights = [_corner_weights(frac, corner) for corner in corners]  # spreading and reading back
    grid = torch.zeros(math.prod(sizes), dtype=torch.float32, device=x.device)
    for w, off in zip(weights, offsets, strict=True):
        grid.index_add_(0, base + off, w)
    # Gaussian in grid units, narrowed by the two triangle blurs (variance 1/6 each)
    # and scaled so that its integral is the exact kernel's: sqrt(2 pi) * std.
    s = std / h
    s_grid = math.sqrt(s * s - 1.0 / 3.0)
    radius = math.ceil(truncate * s_grid)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    scale = s * math.sqrt(2 * math.pi) / float(torch.exp(-taps.square() / (2 * s_grid**2)).sum())
    grid = grid.view(sizes)
    for k in range(d):  # zero padding is exact: there is no mass outside the box
        idx = torch.arange(sizes[k], dtype=torch.float32, device=x.device)
        diff = idx[:, None] - idx[None, :]
        kernel = torch.exp(-diff.square() / (2 * s_grid**2)) * (diff.abs() <= radius) * scale
        grid = (grid.movedim(k, -1) @ kernel).movedim(-1, k)
    grid = grid.reshape(-1)
    out = torch.zeros(n, dtype=torch.float32, device=x.device)
    for w, off in zip(weights, offsets, strict=True):
        out += w * grid[base + off]
    # Each point's own term went through the grid too, where it is worth between about
    # 0.85 and 1.19 depending on its place in its cell; replace it by the exact 1.
    g0, g1 = scale, scale * math.exp(-1.0 / (2 * s_grid**2))
    own = (g0 * (frac.square() + (1 - frac).square()) + 2 * g1 * frac * (1 - frac)).prod(dim=1)
    return out - own + 1.0


def balanced_sample(
    matches: torch.Tensor,
    certainty: torch.Tensor,
    num: int,
    sample_thresh: float = 0.05,
    balanced: bool = True,
    generator: torch.Generator | None = None,
    density: str = "grid",
    cutoff: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num`` matches from dense candidates.

    Args:
        matches: (N, 4) normalised (x0, y0, x1, y1).
        certainty: (N,) certainty in [0, 1].
        num: number of matches to return (fewer if fewer candidates have
            non-zero certainty).
        sample_thresh: certainties above it are treated as 1 for the draw.
        balanced: apply the density balancing step.
        generator: torch.Generator for reproducible draws (same generator state,
            same matches).
        density: ``"grid"`` (:func:`grid_kde`, linear cost) or ``"exact"``
            (:func:`kde`, quadratic, RoMa's estimate); module docstring.
        cutoff: draw only candidates with certainty above ``sample_thresh`` (RoMa
            draws the others too, in proportion to their certainty).
    Returns:
        ``(matches (M, 4), certainty (M,))`` with M <= num; the certainty is raw.
    Raises:
        ValueError: ``num`` < 1, mismatched shapes or an unknown ``density``.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if density not in DENSITY_METHODS:
        raise ValueError(f"density must be one of {DENSITY_METHODS}, got {density!r}")
    if matches.ndim != 2 or matches.shape[1] != 4 or certainty.shape != matches.shape[:1]:
        raise ValueError(
            f"expected matches (N, 4) and certainty (N,), got {tuple(matches.shape)} and {tuple(certainty.shape)}"
        )
    weights = certainty.float().clone()
    if cutoff:
        weights[weights <= sample_thresh] = 0.0
    weights[weights > sample_thresh] = 1.0
    n_valid = int((weights > 0).sum())
    if n_valid == 0:
        return matches[:0], certainty[:0]
    expansion = 4 if balanced else 1
    idx = torch.multinomial(
        weights, min(expansion * num, n_valid), replacement=False, generator=generator
    )
    cand, cand_cert = matches[idx], certainty[idx]
    if not balanced:
        return cand, cand_cert
    dens = grid_kde(cand, std=0.1) if density == "grid" else kde(cand, std=0.1)
    p = 1.0 / (dens + 1.0)
    p[dens < 10] = 1e-7
    keep = torch.multinomial(p, min(num, len(cand)), replacement=False, generator=generator)
    return cand[keep], cand_cert[keep]


def sample_matches(
    out: dict,
    num: int,
    sample_thresh: float = 0.05,
    *,
    generator: torch.Generator | None = None,
    batch_index: int = 0,
    frame: str = "stored",
    balanced: bool = True,
    density: str = "grid",
    cutoff: bool = False,
) -> dict:
    """Sparse matches from a dense matcher's output (the body of ``L2M.sample``).

    Args:
        out: dict with ``warp0`` (B, H, W, 2), ``certainty0`` (B, H, W), optional
            ``warp1``/``certainty1`` (symmetric), ``size0``/``size1`` (W, H) of the
            images in pixels, optional ``images`` (two :class:`~l2m_plugin.io.LoadedImage`).
        num, sample_thresh, generator, balanced, density, cutoff: see :func:`balanced_sample`.
        batch_index: which pair of the batch.
        frame: ``"stored"`` (keypoints in the stored pixel grid, before EXIF
            orientation, when ``out["images"]`` is present) or ``"upright"``.
    Returns:
        dict: ``keypoints0``, ``keypoints1`` (M, 2) float32 COLMAP pixel coordinates
        (centres at i + 0.5) and ``certainty`` (M,) float32 raw certainty.
    Raises:
        ValueError: unknown frame or num < 1.
    """
    if frame not in ("stored", "upright"):
        raise ValueError(f"frame must be 'stored' or 'upright', got {frame!r}")
    warp0, cert0 = out["warp0"][batch_index], out["certainty0"][batch_index]
    h, w = warp0.shape[:2]
    grid = normalized_grid(h, w, device=warp0.device)
    matches = [torch.cat((grid, warp0), dim=-1).reshape(-1, 4)]
    certs = [cert0.reshape(-1)]
    if "warp1" in out:
        warp1, cert1 = out["warp1"][batch_index], out["certainty1"][batch_index]
        grid1 = normalized_grid(*warp1.shape[:2], device=warp1.device)
        matches.append(torch.cat((warp1, grid1), dim=-1).reshape(-1, 4))
        certs.append(cert1.reshape(-1))
    m, c = balanced_sample(
        torch.cat(matches), torch.cat(certs), num, sample_thresh, balanced, generator, density, cutoff
    )
    (w0, h0), (w1, h1) = out["size0"], out["size1"]
    k0 = normalized_to_pixel(m[:, :2].float(), w0, h0)
    k1 = normalized_to_pixel(m[:, 2:].float(), w1, h1)
    if frame == "stored" and "images" in out:
        k0 = out["images"][0].to_stored(k0)
        k1 = out["images"][1].to_stored(k1)
    return {"keypoints0": k0, "keypoints1": k1, "certainty": c.float()}
