"""Turning per-pair matches into per-image keypoints that form multi-view tracks.

Dense matchers return, for every pair, matches at arbitrary sub-pixel positions: the
same scene point seen in image A gets slightly different coordinates in pair (A, B)
and in pair (A, C), so COLMAP would see unrelated keypoints and build two-view
tracks only: pairs look good but only two images register. The fix, following
hloc's ``match_dense`` quantisation with one change:

1. every observation (a match end point in an image) falls into a square cell of
   ``cell_size`` pixels of that image's grid;
2. each occupied cell becomes one keypoint, placed at its *most confident*
   observation (hloc keeps the first / the cell centre), or with ``subpixel=True``
   at the certainty-weighted mean of the cell's observations;
3. every pair match is re-expressed between cell keypoints; duplicates keep their
   highest score and each keypoint is matched at most once per pair (greedy by
   score, which is mutual one-to-one), as COLMAP's track building expects.

Observations of one scene point from different pairs now share a keypoint, and
COLMAP links them into one track.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEFAULT_CELL_SIZE", "Tracks", "build_tracks", "one_to_one"]


@dataclass
class Tracks:
    """Keypoints per image and index matches per pair.

    Attributes:
        keypoints: ``{name: (M, 2) float32}`` COLMAP pixel coordinates (centres at i + 0.5).
        scores: ``{name: (M,) float32}`` best observation certainty of each keypoint.
        matches: ``{(name0, name1): ((K, 2) int64 keypoint indices, (K,) float32 scores)}``.
    """

    keypoints: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    matches: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def track_lengths(self) -> np.ndarray:
        """Sizes of the connected components of the match graph over keypoints (>= 2 each).

        An upper bound of COLMAP's track lengths (before verification splits them).
        """
        offsets, n = {}, 0
        for name, kp in self.keypoints.items():
            offsets[name] = n
            n += len(kp)
        parent = np.arange(n)

        def find(x):
            root = x
            while parent[root] != root:
                root = parent[root]
            while parent[x] != root:
                parent[x], x = root, parent[x]
            return root

        for (a, b), (idx, _) in self.matches.items():
            for i, j in idx:
                ri, rj = find(offsets[a] + int(i)), find(offsets[b] + int(j))
                if ri != rj:
                    parent[ri] = rj
        roots = np.array([find(i) for i in range(n)], dtype=np.int64)
        used = np.zeros(n, bool)
        for (a, b), (idx, _) in self.matches.items():
            used[offsets[a] + idx[:, 0]] = True
            used[offsets[b] + idx[:, 1]] = True
        counts = np.bincount(roots[used], minlength=n)
        return counts[counts >= 2]


def one_to_one(i0: np.ndarray, i1: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of a greedy one-to-one subset by decreasing score (each i0 and each i1 once).

    Equal scores are broken by input order (stable). Returns indices into the inputs.
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    used0: set[int] = set()
    used1: set[int] = set()
    for k in order:
        a, b = int(i0[k]), int(i1[k])
        if a in used0 or b in used1:
            continue
        used0.add(a)
        used1.add(b)
        keep.append(k)
    return np.asarray(keep, dtype=np.int64)


DEFAULT_CELL_SIZE = 2.0
"""Default cell side in pixels of :func:`build_tracks` and ``l2m reconstruct``: the
``cell_size`` of the ``l2m-tiny`` hloc conf. A keypoint moves an observation by at most
``cell_size / sqrt(2)`` px; on Sacre-Coeur with l2m-tiny, 2 px gave a 0.99 px reprojection error
at a mean track length of 3.42, where 4 px gave 1.31 px at 3.96 (README, "l2m-tiny")."""


def build_tracks(
    pair_matches: Iterable[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
    image_sizes: Mapping[str, tuple[int, int]],
    cell_size: float = DEFAULT_CELL_SIZE,
    subpixel: bool = False,
    min_score: float = 0.0,
) -> Tracks:
    """Quantise pair matches into shared keypoints (see the module docstring).

    Args:
        pair_matches: ``(name0, name1, kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` per
            pair, COLMAP pixel coordinates.
        image_sizes: ``{name: (W, H)}``; observations outside the image are dropped.
        cell_size: cell side in pixels (> 0). Observations closer than this may merge.
        subpixel: place each keypoint at the score-weighted mean of its cell's
            observations instead of the most confident one.
        min_score: matches with a lower score are dropped first.
    Returns:
        :class:`Tracks` (keypoints in COLMAP pixel coordinates).
    Raises:
        ValueError: ``cell_size`` <= 0, or a pair names an image without a size.
    """
    if cell_size <= 0:
        raise ValueError(f"cell_size must be > 0, got {cell_size}")
    pairs = []
    obs: dict[str, list] = {}  # name -> list of (cells, scores, xy)
    for n0, n1, k0, k1, s in pair_matches:
        for n in (n0, n1):
            if n not in image_sizes:
                raise ValueError(f"pair ({n0}, {n1}) names image {n!r} without a known size")
        k0 = np.asarray(k0, np.float64).reshape(-1, 2)
        k1 = np.asarray(k1, np.float64).reshape(-1, 2)
        s = np.asarray(s, np.float64).reshape(-1)
        ok = s >= min_score
        cells = []
        for n, k in ((n0, k0), (n1, k1)):
            w, h = image_sizes[n]
            ok &= (
                (k[:, 0] >= 0)
                & (k[:, 0] < w)
                & (k[:, 1] >= 0)
                & (k[:, 1] < h)
                & np.isfinite(k).all(1)
            )
        for n, k in ((n0, k0), (n1, k1)):
            w, _ = image_sizes[n]
            ncols = int(np.ceil(w / cell_size))
            c = np.floor(np.nan_to_num(k[:, 1]) / cell_size).astype(np.int64) * ncols + np.floor(
                np.nan_to_num(k[:, 0]) / cell_size
            ).astype(np.int64)
            cells.append(c)
            obs.setdefault(n, []).append((c[ok], s[ok], k[ok]))
        pairs.append((n0, n1, cells[0][ok], cells[1][ok], s[ok]))

    tracks = Tracks()
    cell_to_kp: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in image_sizes:
        if name not in obs:
            continue
        c = np.concatenate([o[0] for o in obs[name]])
        s = np.concatenate([o[1] for o in obs[name]])
        xy = np.concatenate([o[2] for o in obs[name]])
        if len(c) == 0:
            continue
        order = np.lexsort((-s, c))  # by cell, best score first
        c, s, xy = c[order], s[order], xy[order]
        first = np.ones(len(c), bool)
        first[1:] = c[1:] != c[:-1]
        ucells = c[first]
        if subpixel:
            seg = np.cumsum(first) - 1
            wsum = np.bincount(seg, weights=s + 1e-12)
            pos = (
                np.stack([np.bincount(seg, weights=(s + 1e-12) * xy[:, d]) for d in range(2)], 1)
                / wsum[:, None]
            )
        else:
            pos = xy[first]
        tracks.keypoints[name] = pos.astype(np.float32)
        tracks.scores[name] = s[first].astype(np.float32)
        cell_to_kp[name] = (ucells, np.arange(len(ucells)))

    for n0, n1, c0, c1, s in pairs:
        if len(s) == 0:
            tracks.matches[(n0, n1)] = (np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
            continue
        i0 = np.searchsorted(cell_to_kp[n0][0], c0)
        i1 = np.searchsorted(cell_to_kp[n1][0], c1)
        keep = one_to_one(i0, i1, s)
        idx = np.stack((i0[keep], i1[keep]), 1).astype(np.int64)
        order = np.argsort(idx[:, 0], kind="stable")
        tracks.matches[(n0, n1)] = (idx[order], s[keep][order].astype(np.float32))
    return tracks
