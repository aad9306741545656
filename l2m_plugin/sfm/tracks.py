"""Turning per-pair matches into per-image keypoints that form multi-view tracks.

Dense matchers return, for every pair, matches at arbitrary sub-pixel positions: the
same scene point seen in image A gets slightly different coordinates in pair (A, B)
and in pair (A, C), so COLMAP would see unrelated keypoints and build two-view
tracks only: pairs look good but only two images register. The fix:

1. every observation (a match end point in an image) is grouped with the nearby
   observations of the same image, by one of two rules:
   - **by distance** (``merge_radius``; the default of ``l2m reconstruct``): in decreasing
     certainty an observation starts a group unless one starts within ``merge_radius``
     pixels, and every observation joins the nearest start (:func:`cluster_by_radius`);
   - **by grid cell** (``cell_size``; hloc's ``match_dense`` quantisation): one group per
     square cell of ``cell_size`` pixels;
2. each group becomes one keypoint, placed at its start (distance) or its *most confident*
   observation (grid; hloc keeps the first / the cell centre), or with ``subpixel=True``
   at the certainty-weighted mean of the group's observations;
3. every pair match is re-expressed between keypoints; duplicates keep their highest
   score and each keypoint is matched at most once per pair (greedy by score, which is
   mutual one-to-one), as COLMAP's track building expects.

Observations of one scene point from different pairs now share a keypoint, and COLMAP
links them into one track. The grid moves an observation by up to ``cell_size * sqrt(2)``
and splits two observations 0.1 px apart when a cell border falls between them; the
distance rule moves none by more than ``merge_radius``, wherever it lies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_CELL_SIZE",
    "DEFAULT_MERGE_RADIUS",
    "Tracks",
    "build_tracks",
    "cluster_by_radius",
    "one_to_one",
]


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


def cluster_by_radius(xy: np.ndarray, scores: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy clustering of one image's observations by distance, most confident first.

    In decreasing score (ties: input order) an observation becomes a cluster *centre* unless
    a centre already lies within ``radius``; then every other observation joins its nearest
    centre (one exists within ``radius`` by construction), so no observation is moved by more
    than ``radius``. This is the sequential "leader" rule, computed here in parallel rounds: an
    undecided observation that outranks all its undecided neighbours is a centre, and its
    neighbours are then members (the lexicographically first maximal independent set: the same
    result). Cost: the pairs of observations within ``radius`` of each other (grid hashing).

    Args:
        xy: ``(N, 2)`` float positions (pixels, any convention).
        scores: ``(N,)`` certainties; higher is more confident.
        radius: merge distance in pixels (> 0); observations closer than this may merge.
    Returns:
        ``labels (N,) int64`` (cluster index per observation, clusters numbered by their
        centre's input order) and ``centres (C,) int64`` (the index of each cluster's centre).
    Raises:
        ValueError: ``radius`` <= 0 or non-finite positions.
    """
    if not radius > 0:
        raise ValueError(f"merge radius must be > 0, got {radius}")
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    n = len(xy)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not np.isfinite(xy).all():
        raise ValueError("cluster_by_radius: positions must be finite")
    i, j = _neighbour_pairs(xy, radius)
    rank = np.empty(n, np.int64)
    rank[np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")] = np.arange(n)
    state = np.zeros(n, np.int8)  # 0 undecided, 1 centre, 2 member
    pi, pj = i, j
    while True:
        live = (state[pi] == 0) & (state[pj] == 0)
        pi, pj = pi[live], pj[live]
        undecided = state == 0
        best = np.full(n, n, np.int64)  # the best (lowest) rank among undecided neighbours
        if len(pi):
            starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])  # pi is sorted
            best[pi[starts]] = np.minimum.reduceat(rank[pj], starts)
        centre = undecided & (rank < best)
        state[centre] = 1
        joined = centre[pj] & (state[pi] == 0)
        state[pi[joined]] = 2
        if not (state == 0).any():
            break
    centres = np.flatnonzero(state == 1)
    labels = np.full(n, -1, np.int64)
    labels[centres] = np.arange(len(centres))
    link = (state[i] == 2) & (state[j] == 1)
    mi, mj = i[link], j[link]
    d = ((xy[mi] - xy[mj]) ** 2).sum(1)
    order = np.lexsort((rank[mj], d, mi))  # per member: nearest centre (ties: the better one)
    mi, mj = mi[order], mj[order]
    first = np.ones(len(mi), bool)
    first[1:] = mi[1:] != mi[:-1]
    labels[mi[first]] = labels[mj[first]]
    return labels, centres


def _neighbour_pairs(xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs ``(i, j)``, ``i != j``, of points at most ``radius`` apart (grid hashing),
    sorted by ``i``."""
    cell = np.floor(xy / radius).astype(np.int64)
    cell -= cell.min(0)
    ncols = int(cell[:, 0].max()) + 3  # a one-cell border: neighbour keys never wrap a row
    key = (cell[:, 1] + 1) * ncols + cell[:, 0] + 1
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    idx = np.arange(len(xy))
    out_i, out_j = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            q = key + dy * ncols + dx
            lo = np.searchsorted(sorted_key, q, "left")
            cnt = np.searchsorted(sorted_key, q, "right") - lo
            total = int(cnt.sum())
            if total == 0:
                continue
            within = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            out_i.append(np.repeat(idx, cnt))
            out_j.append(order[np.repeat(lo, cnt) + within])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    keep = (i != j) & (((xy[i] - xy[j]) ** 2).sum(1) <= radius * radius)
    i, j = i[keep], j[keep]
    order = np.argsort(i, kind="stable")
    return i[order], j[order]


DEFAULT_CELL_SIZE = 2.0
"""Cell side in pixels of :func:`build_tracks`'s grid rule (``merge_radius=None``): the
``cell_size`` of the ``l2m-tiny`` hloc conf, and ``l2m reconstruct --cell-size``'s usual value. A
keypoint moves an observation by up to ``cell_size * sqrt(2)`` px (two opposite corners)."""

DEFAULT_MERGE_RADIUS = 1.25
"""Merge distance in pixels of :func:`build_tracks`'s radius rule, the default of ``l2m
reconstruct`` (README, "Track building by distance"): no observation moves by more than this."""


def build_tracks(
    pair_matches: Iterable[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
    image_sizes: Mapping[str, tuple[int, int]],
    cell_size: float | None = DEFAULT_CELL_SIZE,
    subpixel: bool = False,
    min_score: float = 0.0,
    *,
    merge_radius: float | None = None,
) -> Tracks:
    """Merge pair matches into shared keypoints (see the module docstring).

    Two rules group one image's observations into keypoints: the grid (``merge_radius=None``,
    hloc's): one keypoint per ``cell_size`` cell; or by distance (``merge_radius`` set; then
    ``cell_size`` is not used): :func:`cluster_by_radius`, which moves no observation by more
    than ``merge_radius``.

    Args:
        pair_matches: ``(name0, name1, kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` per
            pair, COLMAP pixel coordinates.
        image_sizes: ``{name: (W, H)}``; observations outside the image are dropped.
        cell_size: grid cell side in pixels (> 0). Observations closer than this may merge.
        subpixel: place each keypoint at the score-weighted mean of its group's
            observations instead of the most confident one (grid) or the centre (distance).
        min_score: matches with a lower score are dropped first.
        merge_radius: merge by distance (pixels, > 0) instead of by grid cells.
    Returns:
        :class:`Tracks` (keypoints in COLMAP pixel coordinates).
    Raises:
        ValueError: ``cell_size`` or ``merge_radius`` <= 0, or a pair names an image without a size.
    """
    if merge_radius is None and not (cell_size is not None and cell_size > 0):
        raise ValueError(f"cell_size must be > 0, got {cell_size}")
    if merge_radius is not None and not merge_radius > 0:
        raise ValueError(f"merge_radius must be > 0, got {merge_radius}")
    pairs = []
    obs: dict[str, list] = {}  # name -> list of (scores, xy) of the kept observations
    count: dict[str, int] = {}  # name -> number of its observations so far
    for n0, n1, k0, k1, s in pair_matches:
        for n in (n0, n1):
            if n not in image_sizes:
                raise ValueError(f"pair ({n0}, {n1}) names image {n!r} without a known size")
        k0 = np.asarray(k0, np.float64).reshape(-1, 2)
        k1 = np.asarray(k1, np.float64).reshape(-1, 2)
        s = np.asarray(s, np.float64).reshape(-1)
        ok = s >= min_score
        for n, k in ((n0, k0), (n1, k1)):
            w, h = image_sizes[n]
            ok &= (
                (k[:, 0] >= 0)
                & (k[:, 0] < w)
                & (k[:, 1] >= 0)
                & (k[:, 1] < h)
                & np.isfinite(k).all(1)
            )
        rows = []
        for n, k in ((n0, k0), (n1, k1)):
            start = count.get(n, 0)
            obs.setdefault(n, []).append((s[ok], k[ok]))
            count[n] = start + int(ok.sum())
            rows.append(np.arange(start, count[n]))
        pairs.append((n0, n1, rows[0], rows[1], s[ok]))

    tracks = Tracks()
    labels: dict[str, np.ndarray] = {}  # name -> keypoint index of each observation
    for name in image_sizes:
        if name not in obs:
            continue
        s = np.concatenate([o[0] for o in obs[name]])
        xy = np.concatenate([o[1] for o in obs[name]])
        if len(s) == 0:
            continue
        if merge_radius is None:
            lab, rep = _group_by_cell(xy, s, cell_size, image_sizes[name][0])
        else:
            lab, rep = cluster_by_radius(xy, s, merge_radius)
        if subpixel:
            w = s + 1e-12
            wsum = np.bincount(lab, weights=w, minlength=len(rep))
            pos = np.stack(
                [np.bincount(lab, weights=w * xy[:, d], minlength=len(rep)) for d in range(2)], 1
            ) / wsum[:, None]
        else:
            pos = xy[rep]
        best = np.zeros(len(rep))
        np.maximum.at(best, lab, s)
        tracks.keypoints[name] = pos.astype(np.float32)
        tracks.scores[name] = best.astype(np.float32)
        labels[name] = lab

    for n0, n1, r0, r1, s in pairs:
        if len(s) == 0:
            tracks.matches[(n0, n1)] = (np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
            continue
        i0, i1 = labels[n0][r0], labels[n1][r1]
        keep = one_to_one(i0, i1, s)
        idx = np.stack((i0[keep], i1[keep]), 1).astype(np.int64)
        order = np.argsort(idx[:, 0], kind="stable")
        tracks.matches[(n0, n1)] = (idx[order], s[keep][order].astype(np.float32))
    return tracks


def _group_by_cell(
    xy: np.ndarray, scores: np.ndarray, cell_size: float, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """hloc's grid rule: ``labels (N,)`` (one group per occupied cell, ordered by cell) and the
    index of each group's most confident observation (ties: input order)."""
    ncols = int(np.ceil(width / cell_size))
    cells = np.floor(xy[:, 1] / cell_size).astype(np.int64) * ncols + np.floor(
        xy[:, 0] / cell_size
    ).astype(np.int64)
    order = np.lexsort((-scores, cells))  # by cell, best score first
    first = np.ones(len(order), bool)
    first[1:] = cells[order][1:] != cells[order][:-1]
    labels = np.empty(len(order), np.int64)
    labels[order] = np.cumsum(first) - 1
    return labels, order[first]
