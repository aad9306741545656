"""Nearest-neighbour correspondence accuracy of encoder features (multi-view consistency).

L2M's stage 1 fine-tunes the matcher's encoder so that its features are 3D-aware: the
features of a surface point should agree across views. This module measures that
directly, without the decoder: on view pairs with exact ground-truth warps (the
``l2m-synth`` format, :mod:`l2m_plugin.formats.synth_pairs`), how often is the nearest
neighbour of an image-0 feature in image 1 at the right place?

Protocol (:func:`feature_nn_pck`), for each pair:

1. **Input size.** Both images are resized to the evaluation size: ``size`` (height,
   width) if given, else each image's own size rounded to the nearest multiple of the
   level's stride (:func:`eval_size`; at least one stride). An :class:`~l2m_plugin.L2M`
   prepares its input with its own :meth:`~l2m_plugin.L2M.preprocess` (torch bicubic
   antialiased resize, colour order, ImageNet mean/std when ``config.normalize``), in
   float32, batch of 1, under ``torch.no_grad`` in eval mode.
2. **Features.** The encoder's level ``level`` (1, 2, 4, 8: the CNN pyramid; 16: the
   coarse features, stride 16 for a CNN coarse encoder, 14 for a ViT), (1, C, h, w),
   L2-normalised over channels. Feature cell (i, j) of an image evaluated at H_e x W_e
   covers the pixels [j * W_e / w, (j + 1) * W_e / w) x [i * H_e / h, (i + 1) * H_e / h);
   its centre is pixel ((j + 0.5) * W_e / w, (i + 0.5) * H_e / h) (COLMAP convention,
   :mod:`l2m_plugin.coords`), i.e. the normalised point :func:`~l2m_plugin.coords.normalized_grid`
   ``(h, w)[i, j]``; the feature map must tile the input exactly (H_e % h == W_e % w == 0).
3. **Queries and ground truth.** The cell centres of image 0, as normalised points, are
   located in the pair's *original* image-0 grid, where ``warp0`` and ``valid0`` are
   sampled **bilinearly** (``grid_sample``, ``align_corners=False``). A cell is a query
   only if every pixel of ``valid0`` with a bilinear weight above 1e-4 is valid (the
   bilinearly sampled validity is > 1 - 1e-4), so no ground truth is interpolated from
   a pixel without a correspondence. Its ground truth is the sampled ``warp0``: a
   normalised point of image 1. With ``max_points``, at most that many queries per pair
   are kept, drawn uniformly without replacement with ``generator``.
4. **Prediction.** The nearest neighbour of the query feature among *all* feature cells
   of image 1 (maximum cosine similarity; ties go to the first cell in row-major order).
   The predicted location is that cell's centre.
5. **Error.** The distance between prediction and ground truth **in pixels of the
   original image 1** (each axis scaled by original / evaluation size; the same as the
   distance at the evaluation size when no resizing happens). PCK@t is the share of
   queries with error <= t, thresholds in original image-1 pixels.

Also reported: the *ceiling* (the error of the best possible cell: the distance from the
ground truth to the nearest image-1 cell centre, which perfect features reach), the
*chance* level (the expected PCK of a uniformly random image-1 cell), and *mutual*
nearest neighbours (the query's match in image 1 has the query as its own nearest
neighbour among all image-0 cells): their share and their PCK.

Aggregation: pooled over all queries of all pairs (each point counts once: ``mean_px``,
``median_px``, ``pck``), and per pair then averaged over the pairs that have queries
(``per_pair_mean``; ``median_px`` there is the mean of the per-pair medians).

``benchmarks/feature_pck.py`` runs it on ``l2m-synth`` folders for several weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from l2m_plugin.coords import normalized_grid, normalized_to_pixel
from l2m_plugin.formats.synth_pairs import list_pairs, read_pair
from l2m_plugin.models.features import check_model, encode_level, eval_size, is_l2m, level_stride

__all__ = [
    "DEFAULT_THRESHOLDS_PX",
    "feature_nn_errors",
    "feature_nn_pck",
    "iter_synth_pairs",
]

#: PCK thresholds in pixels of the original image 1: half a cell, one cell and two cells
#: of stride-16 features (on 384-px pairs a cell is 16 px; the nearest cell centre is at
#: most 8 * sqrt(2) = 11.3 px from any point, so PCK@8 of perfect features is about 79%).
DEFAULT_THRESHOLDS_PX: tuple[float, ...] = (8.0, 16.0, 32.0)

_VALID_EPS = 1e-4
_CHUNK = 1 << 22  # elements of one similarity block (16 MiB in float32)


def _to_image(x: Any, name: str) -> torch.Tensor:
    """(H, W, 3) uint8 or float [0, 1] array/tensor -> (1, 3, H, W) float32 in [0, 1]."""
    t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) RGB image, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise ValueError(f"{name} must be uint8 or float in [0, 1], got {t.dtype}")
    return t.permute(2, 0, 1)[None].contiguous()


def _check_pair(pair: Any, k: int) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(pair, Mapping):
        raise TypeError(f"pairs[{k}] must be a dict with image0, image1, warp0, valid0, got {type(pair).__name__}")
    pid = str(pair.get("id", k))
    for key in ("image0", "image1", "warp0", "valid0"):
        if key not in pair:
            raise KeyError(f"pair {pid!r} lacks {key!r} (needs image0, image1, warp0, valid0)")
    im0 = _to_image(pair["image0"], f"pair {pid!r}: image0")
    im1 = _to_image(pair["image1"], f"pair {pid!r}: image1")
    warp = torch.as_tensor(np.asarray(pair["warp0"])) if not torch.is_tensor(pair["warp0"]) else pair["warp0"]
    valid = torch.as_tensor(np.asarray(pair["valid0"])) if not torch.is_tensor(pair["valid0"]) else pair["valid0"]
    h0, w0 = im0.shape[-2:]
    if tuple(warp.shape) != (h0, w0, 2) or not warp.is_floating_point():
        raise ValueError(f"pair {pid!r}: warp0 must be a float ({h0}, {w0}, 2) array (image0's grid), got {tuple(warp.shape)} {warp.dtype}")
    if tuple(valid.shape) != (h0, w0):
        raise ValueError(f"pair {pid!r}: valid0 must be ({h0}, {w0}) (image0's grid), got {tuple(valid.shape)}")
    return pid, im0, im1, warp.float(), valid.bool()


def _check_size(size: Any, stride: int | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be None or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be two positive integers (height, width), got {size!r}")
    if stride is not None and (h % stride or w % stride):
        raise ValueError(f"size must be multiples of the level's stride {stride}, got {size!r}")
    return h, w


def _check_thresholds(thresholds_px: Iterable[float]) -> tuple[float, ...]:
    try:
        ts = tuple(float(t) for t in thresholds_px)
    except (TypeError, ValueError):
        raise ValueError(f"thresholds_px must be positive numbers, got {thresholds_px!r}") from None
    if not ts or not all(math.isfinite(t) and t > 0 for t in ts):
        raise ValueError(f"thresholds_px must be a non-empty sequence of positive numbers, got {thresholds_px!r}")
    return ts


def _argmax_sim(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax of ``q @ keys.T`` in blocks of rows. (Q,) int64."""
    if q.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    rows = max(1, _CHUNK // max(1, keys.shape[0]))
    return torch.cat([(q[i : i + rows] @ keys.T).argmax(dim=1) for i in range(0, q.shape[0], rows)])


def _cell_centres(h: int, w: int) -> torch.Tensor:
    """(h * w, 2) normalised centres of an h x w feature grid, row-major."""
    return normalized_grid(h, w).reshape(-1, 2)


def feature_nn_errors(
    feat0: torch.Tensor,
    feat1: torch.Tensor,
    warp0: torch.Tensor,
    valid0: torch.Tensor,
    size1: tuple[int, int],
    *,
    thresholds_px: Iterable[float] = DEFAULT_THRESHOLDS_PX,
    max_points: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Steps 3-5 of the protocol (module docstring) for one pair of feature maps.

    Args:
        feat0, feat1: (C, h0, w0) and (C, h1, w1) float features of image 0 and image 1
            (any scale: they are L2-normalised here); each grid tiles its image.
        warp0: (H0, W0, 2) float, for each pixel of the original image 0 its match in
            image 1, normalised (x, y) (``align_corners=False``); values where not valid
            are ignored (NaN allowed).
        valid0: (H0, W0) bool, True where ``warp0`` holds.
        size1: (W1, H1) of the original image 1 in pixels (errors are in these pixels).
        thresholds_px: PCK thresholds in original image-1 pixels (for ``chance``).
        max_points: keep at most this many queries, drawn with ``generator``.
        generator: torch generator for that draw (default: a fresh one seeded 0).
    Returns:
        dict of CPU tensors over the Q queries, row-major order of image 0's cells:
        ``query`` (Q,) int64 cell indices; ``error_px`` (Q,) float32 distance of the
        nearest-neighbour cell centre to the ground truth; ``ceiling_px`` (Q,) float32
        distance of the nearest image-1 cell centre; ``mutual`` (Q,) bool;
        ``chance`` (Q, T) float32 share of image-1 cell centres within each threshold;
        ``gt`` (Q, 2) float32 the ground truth of each query, normalised (x, y) in image 1
        (``align_corners=False``).
    Raises:
        ValueError: inconsistent shapes or bad ``max_points``.
    """
    ts = _check_thresholds(thresholds_px)
    if feat0.ndim != 3 or feat1.ndim != 3 or feat0.shape[0] != feat1.shape[0]:
        raise ValueError(
            f"feat0 and feat1 must be (C, h, w) with the same C, got {tuple(feat0.shape)} and {tuple(feat1.shape)}"
        )
    if warp0.ndim != 3 or warp0.shape[-1] != 2 or tuple(valid0.shape) != tuple(warp0.shape[:2]):
        raise ValueError(f"warp0 must be (H, W, 2) and valid0 (H, W), got {tuple(warp0.shape)} and {tuple(valid0.shape)}")
    if max_points is not None and (int(max_points) != max_points or max_points < 1):
        raise ValueError(f"max_points must be None or a positive integer, got {max_points!r}")
    w1_px, h1_px = (float(s) for s in size1)
    _, h0, w0 = feat0.shape
    _, h1, w1 = feat1.shape
    f0 = F.normalize(feat0.float().reshape(feat0.shape[0], -1).T, dim=1)  # (N0, C)
    f1 = F.normalize(feat1.float().reshape(feat1.shape[0], -1).T, dim=1)  # (N1, C)

    # Ground truth at image 0's cell centres: bilinear warp, strict bilinear validity.
    grid0 = normalized_grid(h0, w0)[None]  # (1, h0, w0, 2)
    valid_f = valid0.float()
    warp_clean = torch.where(valid0[..., None], warp0.float(), torch.zeros(()))
    gt = F.grid_sample(warp_clean.permute(2, 0, 1)[None], grid0, mode="bilinear", align_corners=False, padding_mode="border")
    ok = F.grid_sample(valid_f[None, None], grid0, mode="bilinear", align_corners=False, padding_mode="zeros")
    ok = ok[0, 0].reshape(-1) > 1.0 - _VALID_EPS
    gt = gt[0].permute(1, 2, 0).reshape(-1, 2)
    query = ok.nonzero()[:, 0]
    if max_points is not None and query.numel() > max_points:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        keep = torch.randperm(query.numel(), generator=gen)[: int(max_points)]
        query = query[keep.sort().values]
    gt_px = normalized_to_pixel(gt[query], w1_px, h1_px)  # (Q, 2)
    centres1_px = normalized_to_pixel(_cell_centres(h1, w1), w1_px, h1_px)  # (N1, 2)

    nn01 = _argmax_sim(f0[query], f1)  # (Q,)
    back = _argmax_sim(f1[nn01], f0)  # (Q,)
    error = (centres1_px[nn01] - gt_px).norm(dim=1)
    ceiling = torch.empty(query.numel())
    chance = torch.empty(query.numel(), len(ts))
    tt = torch.tensor(ts)
    rows = max(1, _CHUNK // max(1, centres1_px.shape[0]))
    for i in range(0, query.numel(), rows):
        d = torch.cdist(gt_px[i : i + rows], centres1_px)  # (q, N1)
        ceiling[i : i + rows] = d.min(dim=1).values
        chance[i : i + rows] = (d[..., None] <= tt).float().mean(dim=1)
    return {"query": query, "error_px": error, "ceiling_px": ceiling, "mutual": back == query, "chance": chance,
            "gt": gt[query]}  # fmt: skip


def _pck(err: torch.Tensor, ts: tuple[float, ...]) -> dict[str, float]:
    return {f"{t:g}": float((err <= t).float().mean()) if err.numel() else float("nan") for t in ts}


def _summary(r: Mapping[str, torch.Tensor], ts: tuple[float, ...]) -> dict[str, Any]:
    err, mutual = r["error_px"], r["mutual"]
    n = int(err.numel())
    return {
        "points": n,
        "mean_px": float(err.mean()) if n else float("nan"),
        "median_px": float(err.median()) if n else float("nan"),
        "pck": _pck(err, ts),
        "ceiling_mean_px": float(r["ceiling_px"].mean()) if n else float("nan"),
        "ceiling_pck": _pck(r["ceiling_px"], ts),
        "chance_pck": {f"{t:g}": float(r["chance"][:, k].mean()) if n else float("nan") for k, t in enumerate(ts)},
        "mutual": {
            "share": float(mutual.float().mean()) if n else float("nan"),
            "points": int(mutual.sum()),
            "pck": _pck(err[mutual], ts),
        },
    }


def feature_nn_pck(
    model: Any,
    pairs: Iterable[Mapping[str, Any]],
    *,
    level: int = 16,
    size: tuple[int, int] | None = None,
    thresholds_px: Iterable[float] = DEFAULT_THRESHOLDS_PX,
    max_points: int | None = None,
    generator: torch.Generator | None = None,
    per_pair: bool = True,
    progress: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Nearest-neighbour PCK of an encoder's features under ground-truth warps (module docstring).

    Args:
        model: an :class:`~l2m_plugin.L2M` (its encoder, with its own preprocessing), or a
            callable encoder taking (1, 3, H, W) float32 RGB in [0, 1] at the evaluation
            size and returning ``{level: (1, C, h, w)}`` or a (1, C, h, w) tensor (for
            tests and other encoders; it normalises its input itself). Not a bare
            ``model.encoder``: that raises TypeError.
        pairs: iterable of dicts with ``image0``, ``image1`` (H, W, 3) uint8 (or float in
            [0, 1]) RGB arrays or tensors, ``warp0`` (H0, W0, 2) float normalised
            coordinates in image 1 (``align_corners=False``: the centre of pixel column j
            is ``(2 j + 1) / W - 1``), ``valid0`` (H0, W0) bool; optional ``id``. The
            ``l2m-synth`` reader :func:`~l2m_plugin.synthesis.read_pair` gives these
            (:func:`iter_synth_pairs`).
        level: encoder pyramid level (default 16, the coarse features).
        size: evaluation (height, width) for both images; must be a multiple of the
            level's stride for an L2M. ``None``: each image's own size rounded to the
            stride (:func:`eval_size`) for an L2M, its own size for a callable.
        thresholds_px: PCK thresholds in pixels of the original image 1
            (default :data:`DEFAULT_THRESHOLDS_PX`: 8, 16, 32).
        max_points: at most this many queries per pair (default: every valid cell).
        generator: torch generator for that subsampling (default: seeded 0).
        per_pair: include the per-pair rows in the result.
        progress: called as ``progress(k, pair_id)`` after each pair.
    Returns:
        dict (JSON-serialisable): ``level``, ``thresholds_px``, ``pairs``,
        ``pairs_without_points``, ``points``, ``mean_px``, ``median_px`` (original
        image-1 pixels), ``pck`` {"8": share in [0, 1], ...}, ``ceiling_mean_px``,
        ``ceiling_pck``, ``chance_pck``, ``mutual`` {``share``, ``points``, ``pck``}
        (all pooled over points), ``per_pair_mean`` {``mean_px``, ``median_px``, ``pck``,
        ``mutual_share``} (mean over pairs with points), ``cell_px`` [x, y] mean size of an
        image-1 feature cell in original pixels, ``eval_sizes`` (the distinct (H, W) used),
        ``seconds`` and, with ``per_pair``, ``per_pair`` rows {``id``, ``points``,
        ``mean_px``, ``median_px``, ``pck``, ``mutual_share``}.
    Raises:
        TypeError: ``model`` is not usable, a pair is not a dict.
        KeyError: a pair lacks a key (message names it).
        ValueError: bad ``level``, ``size``, ``thresholds_px``, ``max_points``, shapes, or no pairs.
    """
    t_start = time.perf_counter()
    check_model(model)
    ts = _check_thresholds(thresholds_px)
    if not isinstance(level, int) or isinstance(level, bool):
        raise ValueError(f"level must be an int pyramid level, got {level!r}")
    stride = level_stride(model, level) if is_l2m(model) else None
    size = _check_size(size, stride)
    if max_points is not None and (not isinstance(max_points, int) or max_points < 1):
        raise ValueError(f"max_points must be None or a positive integer, got {max_points!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    results, rows, sizes, cells = [], [], set(), []
    n_pairs = 0
    for k, pair in enumerate(pairs):
        pid, im0, im1, warp0, valid0 = _check_pair(pair, k)
        n_pairs += 1
        feats = []
        for im in (im0, im1):
            h, w = im.shape[-2:]
            s = size or (eval_size(h, w, stride) if stride else (h, w))
            f = encode_level(model, im, s, level)
            fh, fw = f.shape[-2:]
            if s[0] % fh or s[1] % fw:
                raise ValueError(
                    f"pair {pid!r}: the level-{level} feature map {fh}x{fw} does not tile the "
                    f"{s[0]}x{s[1]} input; pass a size that is a multiple of the encoder's stride"
                )
            feats.append(f[0])
            sizes.add(tuple(s))
        h1_px, w1_px = im1.shape[-2:]
        r = feature_nn_errors(
            feats[0], feats[1], warp0, valid0, (w1_px, h1_px),
            thresholds_px=ts, max_points=max_points, generator=gen,
        )  # fmt: skip
        cells.append((w1_px / feats[1].shape[-1], h1_px / feats[1].shape[-2]))
        results.append(r)
        s = _summary(r, ts)
        rows.append({"id": pid, "points": s["points"], "mean_px": s["mean_px"], "median_px": s["median_px"],
                     "pck": s["pck"], "mutual_share": s["mutual"]["share"]})  # fmt: skip
        if progress is not None:
            progress(k, pid)
    if n_pairs == 0:
        raise ValueError("pairs is empty: nothing to evaluate")

    pooled = {key: torch.cat([r[key] for r in results]) for key in ("error_px", "ceiling_px", "mutual", "chance")}
    out: dict[str, Any] = {"level": level, "thresholds_px": list(ts), "pairs": n_pairs}
    with_points = [row for row in rows if row["points"]]
    out["pairs_without_points"] = n_pairs - len(with_points)
    out.update(_summary(pooled, ts))

    def _mean(values):
        return float(np.mean(values)) if values else float("nan")

    out["per_pair_mean"] = {
        "mean_px": _mean([row["mean_px"] for row in with_points]),
        "median_px": _mean([row["median_px"] for row in with_points]),
        "pck": {key: _mean([row["pck"][key] for row in with_points]) for key in out["pck"]},
        "mutual_share": _mean([row["mutual_share"] for row in with_points]),
    }
    out["cell_px"] = [float(np.mean([c[0] for c in cells])), float(np.mean([c[1] for c in cells]))]
    out["eval_sizes"] = sorted([list(s) for s in sizes])
    out["seconds"] = round(time.perf_counter() - t_start, 2)
    if per_pair:
        out["per_pair"] = rows
    return out


def iter_synth_pairs(root: str | os.PathLike, max_pairs: int | None = None) -> Iterator[dict[str, Any]]:
    """The pairs of an ``l2m-synth`` folder in sorted id order, as :func:`feature_nn_pck` takes them.

    Args:
        root: a folder written by ``l2m synth``.
        max_pairs: the first this many ids only.
    Yields:
        :func:`~l2m_plugin.synthesis.read_pair` dicts with ``id`` added.
    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: it lists no pairs.
    """

    if not os.path.isdir(root):
        raise FileNotFoundError(f"l2m-synth folder {root} does not exist")
    ids = sorted(rec["id"] for rec in list_pairs(root))
    if not ids:
        raise ValueError(f"{root} lists no pairs (pairs.jsonl empty or missing)")
    for pid in ids[:max_pairs] if max_pairs is not None else ids:
        pair = read_pair(root, pid)
        pair["id"] = pid
        yield pair
