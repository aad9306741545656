"""Image pairs: exhaustive, sequential, retrieval, or a pairs file (:mod:`l2m_plugin.formats.pairs_txt`).

Image *names* are paths relative to the image folder with ``/`` separators (nested
folders allowed), as in hloc and COLMAP. Pairs files use hloc's format: one pair per
line, two names separated by a space; ``#`` starts a comment.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from l2m_plugin.formats.pairs_txt import dedupe_pairs, read_pairs

__all__ = [
    "exhaustive_pairs",
    "sequential_pairs",
    "retrieval_pairs",
    "shard_pairs",
    "parse_pairs_spec",
]

log = logging.getLogger(__name__)

def exhaustive_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """All N (N - 1) / 2 unordered pairs, in name order."""
    return list(itertools.combinations(names, 2))


def sequential_pairs(names: Sequence[str], k: int) -> list[tuple[str, str]]:
    """Each image with its next ``k`` images in name order (videos, walks)."""
    if k < 1:
        raise ValueError(f"sequential:K needs K >= 1, got {k}")
    return [
        (names[i], names[j])
        for i in range(len(names))
        for j in range(i + 1, min(i + 1 + k, len(names)))
    ]


def retrieval_pairs(names: Sequence[str], descriptors: np.ndarray, k: int) -> list[tuple[str, str]]:
    """Each image with its ``k`` most similar images by global descriptor (cosine), deduplicated.

    Args:
        names: N image names.
        descriptors: (N, D) float global descriptors (any scale; normalised here).
        k: neighbours per image (clipped to N - 1).
    """
    if k < 1:
        raise ValueError(f"retrieval:K needs K >= 1, got {k}")
    d = np.asarray(descriptors, dtype=np.float64)
    if d.shape[0] != len(names):
        raise ValueError(f"{d.shape[0]} descriptors for {len(names)} images")
    d = d / np.linalg.norm(d, axis=1, keepdims=True).clip(1e-12)
    sim = d @ d.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(names) - 1)
    pairs = []
    for i in range(len(names)):
        for j in np.argsort(-sim[i], kind="stable")[:k]:
            pairs.append(tuple(sorted((names[i], names[int(j)]))))
    return sorted(dedupe_pairs(pairs))


def shard_pairs(
    pairs: Sequence[tuple[str, str]], shard: int, num_shards: int
) -> list[tuple[str, str]]:
    """The pairs of shard ``shard`` (0-based) of ``num_shards``: every num_shards-th pair.

    Interleaving balances the work when pairs are sorted by image. The shards of a
    list are disjoint and together cover it.
    """
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be i/N with 0 <= i < N, got {shard}/{num_shards}")
    return list(pairs[shard::num_shards])


def parse_pairs_spec(spec: str, names: Sequence[str], descriptors_fn=None) -> list[tuple[str, str]]:
    """Pairs from a spec: ``exhaustive``, ``sequential:K``, ``retrieval:K`` or a pairs-file path.

    Args:
        spec: the spec string.
        names: image names.
        descriptors_fn: callable returning (N, D) global descriptors of ``names``
            (needed for ``retrieval:K`` only).
    Raises:
        ValueError: malformed spec (the message lists the accepted forms).
    """
    kind, _, arg = spec.partition(":")
    if spec == "exhaustive":
        return exhaustive_pairs(names)
    if kind in ("sequential", "retrieval"):
        try:
            k = int(arg)
        except ValueError:
            raise ValueError(f"--pairs {spec!r}: K must be an integer, e.g. {kind}:5") from None
        if kind == "sequential":
            return sequential_pairs(names, k)
        if descriptors_fn is None:
            raise ValueError("retrieval pairs need global descriptors (an L2M encoder)")
        return retrieval_pairs(names, descriptors_fn(), k)
    if Path(spec).is_file():
        return read_pairs(spec, names)
    raise ValueError(
        f"--pairs {spec!r} is neither 'exhaustive', 'sequential:K', 'retrieval:K' nor an existing pairs file"
    )
