"""hloc's pairs file (``pairs.txt``): one pair per line, two image names separated by a space;
``#`` starts a comment. Image names are paths relative to the image folder with ``/``
separators, as in hloc and COLMAP."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from l2m_plugin.files import atomic_text

__all__ = ["read_pairs", "write_pairs", "dedupe_pairs"]

log = logging.getLogger(__name__)


def dedupe_pairs(pairs) -> list[tuple[str, str]]:
    """The pairs without self-pairs (logged) and repeats in either order, first occurrence kept."""
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
    return dedupe_pairs(pairs)


def write_pairs(path: str | Path, pairs: Sequence[tuple[str, str]]) -> Path:
    """Write pairs in hloc's format (atomically)."""
    return atomic_text(path, "".join(f"{a} {b}\n" for a, b in pairs))
