"""Drawing sparse matches from a dense warp (RoMa's "threshold_balanced" sampling).

Source: romatch 0.1.2 ``RegressionMatcher.sample`` and ``utils/kde.py``:
candidates are drawn without replacement with probability proportional to the
certainty (certainties above ``sample_thresh`` count as 1), four times as many as
requested; then a Gaussian kernel density (std 0.1 in the 4-d space of normalised
match coordinates) is estimated over the candidates and the final matches are
drawn with probability ``1 / (1 + density)``, candidates with density < 10
getting 1e-7. Differences from the reference, on purpose: the density is computed
in float32 in row chunks (the reference uses float16 and a full N x N matrix),
and the returned score is the raw certainty, not the thresholded one.
"""

from __future__ import annotations

import torch

from l2m_plugin.coords import normalized_grid, normalized_to_pixel

__all__ = ["kde", "balanced_sample", "sample_matches"]


def kde(x: torch.Tensor, std: float = 0.1, chunk: int = 4096) -> torch.Tensor:
    """Gaussian kernel density of each row of ``x`` among all rows.

    Args:
        x: (N, D) float points.
        std: kernel standard deviation, in the units of ``x``.
        chunk: rows processed at once (bounds memory to ``chunk * N`` floats).
    Returns:
        (N,) float32 ``sum_j exp(-|x_i - x_j|^2 / (2 std^2))`` (includes j = i).
    """
    x = x.float()
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], chunk):
        d2 = torch.cdist(x[i : i + chunk], x).square_()
        out[i : i + chunk] = d2.mul_(-1.0 / (2 * std**2)).exp_().sum(dim=-1)
    return out


def balanced_sample(
    matches: torch.Tensor,
    certainty: torch.Tensor,
    num: int,
    sample_thresh: float = 0.05,
    balanced: bool = True,
    generator: torch.Generator | None = None,
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
    Returns:
        ``(matches (M, 4), certainty (M,))`` with M <= num; the certainty is raw.
    Raises:
        ValueError: ``num`` < 1 or mismatched shapes.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if matches.ndim != 2 or matches.shape[1] != 4 or certainty.shape != matches.shape[:1]:
        raise ValueError(
            f"expected matches (N, 4) and certainty (N,), got {tuple(matches.shape)} and {tuple(certainty.shape)}"
        )
    weights = certainty.float().clone()
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
    density = kde(cand, std=0.1)
    p = 1.0 / (density + 1.0)
    p[density < 10] = 1e-7
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
) -> dict:
    """Sparse matches from a dense matcher's output (the body of ``L2M.sample``).

    Args:
        out: dict with ``warp0`` (B, H, W, 2), ``certainty0`` (B, H, W), optional
            ``warp1``/``certainty1`` (symmetric), ``size0``/``size1`` (W, H) of the
            images in pixels, optional ``images`` (two :class:`~l2m_plugin.io.LoadedImage`).
        num, sample_thresh, generator, balanced: see :func:`balanced_sample`.
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
        torch.cat(matches), torch.cat(certs), num, sample_thresh, balanced, generator
    )
    (w0, h0), (w1, h1) = out["size0"], out["size1"]
    k0 = normalized_to_pixel(m[:, :2].float(), w0, h0)
    k1 = normalized_to_pixel(m[:, 2:].float(), w1, h1)
    if frame == "stored" and "images" in out:
        k0 = out["images"][0].to_stored(k0)
        k1 = out["images"][1].to_stored(k1)
    return {"keypoints0": k0, "keypoints1": k1, "certainty": c.float()}
