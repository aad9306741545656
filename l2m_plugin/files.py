"""Files: atomic writes, JSON Lines records, and the guard that compares a folder's saved
configuration with the one of a new run.

Every output of the package is written through :func:`atomic_path` (or one of its
wrappers): the data goes to ``<name>.partial<suffix>`` beside the target and is renamed
over it only when complete, so a crash or a refusal leaves either the old file or the new
one, never a half-written file, and no ``.partial`` file is left behind on an error.

A core module: it imports nothing else of ``l2m_plugin``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "partial_path",
    "atomic_path",
    "atomic_dir",
    "atomic_json",
    "atomic_text",
    "read_jsonl",
    "append_jsonl",
    "repair_jsonl",
    "config_diff",
    "LockedError",
    "exclusive_lock",
]

logger = logging.getLogger(__name__)


def partial_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_path` writes ``path`` before renaming it: ``<name>.partial<suffix>``
    in the same folder (the suffix is kept so that writers choosing a format by suffix, such
    as Pillow or OpenCV, still work)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path to write, renamed onto ``path`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and the
    exception propagates; ``path`` keeps its previous content.

    Args:
        path: the final file.
        mkdir: create the parent folder first.
    Yields:
        the temporary :class:`~pathlib.Path` (:func:`partial_path`).
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write a folder atomically: yields an empty temporary folder ``<name>.tmp-<pid>``, which
    replaces ``path`` (an existing one is deleted first) on success and is deleted on error."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically. Returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (UTF-8, trailing newline) atomically. Returns ``path``."""
    return atomic_text(path, json.dumps(data, indent=2) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON Lines file, in order; [] when the file does not exist.

    A last line cut by a crash is ignored with a warning (the record it held was not
    finished).

    Raises:
        ValueError: a corrupt line other than the last one (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                logger.warning("%s: ignoring an unfinished last line", path)
                continue
            raise ValueError(f"{path} line {i + 1} is not valid JSON: {line[:80]!r}") from None
    return records


def append_jsonl(path: str | os.PathLike, record: Mapping) -> None:
    """Append one record as a line and flush it to disk (``fsync``) before returning."""
    line = json.dumps(dict(record), sort_keys=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl(path: str | os.PathLike) -> None:
    """Drop a partial last line (no trailing newline) that a crash left in a JSON Lines file."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        logger.warning("%s: removing an unfinished last line", path)
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping) and d:
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(
    saved: Mapping,
    now: Mapping,
    ignore: frozenset[str] | set[str] = frozenset(),
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """The keys in which a folder's saved configuration and a new run's differ.

    The one comparison behind every "this folder holds a run of another configuration"
    refusal (``l2m synth``, ``l2m train``, pair-match stores).

    Args:
        saved, now: nested mappings (resolved configurations).
        ignore: dotted keys (``"train.out"``) that may differ between runs of one folder.
        defaults: dotted keys -> the value a key missing from ``saved`` had: a field added
            to a configuration after the folder was written, whose default keeps the old
            behaviour, then compares equal to that default.
    Returns:
        ``["key: saved -> now", ...]`` for the differing dotted keys, sorted; [] when equal.
    """
    fa, fb = _flat(saved), _flat(now)
    for k, v in (defaults or {}).items():
        if k not in fa and k in fb:
            fa[k] = v
    keys = sorted((set(fa) | set(fb)) - set(ignore))
    return [f"{k}: {fa.get(k, '<unset>')!r} -> {fb.get(k, '<unset>')!r}" for k in keys if fa.get(k) != fb.get(k)]


class LockedError(RuntimeError):
    """Another live process holds the lock of an output."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "this output") -> Iterator[Path]:
    """Hold ``path`` (a lock file holding the owner's pid) while writing ``what``.

    A lock left by a process that no longer runs (killed) is taken over.

    Raises:
        LockedError: a live process holds the lock (the message names it and the pid).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise LockedError(
                    f"{what} is being written by process {pid} (lock file {path}); wait for it to finish, "
                    "or use another output. Delete the lock file only if that process is gone."
                ) from None
            logger.warning("%s: taking over a lock left by a process that no longer runs", path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise LockedError(f"could not take the lock {path}")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
