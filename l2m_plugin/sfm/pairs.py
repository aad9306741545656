"""Image lists and image pairs: exhaustive, sequential, retrieval, or a pairs file.

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

__all__ = [
    "IMAGE_EXTENSIONS",
    "list_images",
    "pair_key",
    "exhaustive_pairs",
    "sequential_pairs",
    "retrieval_pairs",
    "read_pairs",
    "write_pairs",
    "shard_pairs",
    "parse_pairs_spec",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def pair_key(name0: str, name1: str) -> str:
    """hloc's h5 key of a pair (``hloc.utils.io.names_to_pair``): ``/`` in names becomes ``-``."""
    return "/".join((name0.replace("/", "-"), name1.replace("/", "-")))


def _check_unique_keys(names: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for n in names:
        k = n.replace("/", "-")
        if k in seen and seen[k] != n:
            raise ValueError(
                f"image names {seen[k]!r} and {n!r} collide in hloc's h5 layout (which replaces '/' with '-'): "
                "rename one of the files"
            )
        if k in seen:
            raise ValueError(f"image name {n!r} is listed twice: image names must be unique")
        seen[k] = n


def list_images(image_dir: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """Sorted image names under ``image_dir`` (recursive; by extension, case-insensitive).

    Args:
        image_dir: folder of images; sub-folders are searched too.
        names: optional explicit list of names (checked to exist) instead of a search.
    Returns:
        list of names relative to ``image_dir``, ``/``-separated.
    Raises:
        FileNotFoundError: ``image_dir`` missing, no images, or a listed name missing.
        ValueError: two names that hloc's h5 layout cannot tell apart (``a/b.jpg`` and
            ``a-b.jpg``), or a name listed twice.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if names is None:
        found = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(s.startswith(".") for s in p.relative_to(root).parts)
        ]
        names = sorted(found)
        if not names:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    else:
        names = list(names)
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} listed images are not in {root}, e.g. {missing[:3]}"
            )
    _check_unique_keys(names)
    return names


def _dedupe(pairs) -> list[tuple[str, str]]:
    out, seen = [], set()
    for a, b in pairs:
        if a == b:
            log.warning("skipping pair of an image with itself: %s", a)
            continue
        key = frozenset((a, b))
        if key in seen:
            continue
        seen.add(key)
        out.append((a, b))
    return out


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
    return sorted(_dedupe(pairs))


def read_pairs(path: str | Path, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Read an hloc pairs file; duplicates (in either order) and self-pairs are dropped.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a malformed line (names the line number), or a name not in ``names``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file {path} does not exist")
    known = set(names) if names is not None else None
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{lineno}: expected two image names separated by a space, got {line!r}"
            )
        if known is not None:
            for n in parts:
                if n not in known:
                    raise ValueError(f"{path}:{lineno}: image {n!r} is not in the image folder")
        pairs.append((parts[0], parts[1]))
    return _dedupe(pairs)


def write_pairs(path: str | Path, pairs: Sequence[tuple[str, str]]) -> Path:
    """Write pairs in hloc's format (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    tmp.replace(path)
    return path


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
