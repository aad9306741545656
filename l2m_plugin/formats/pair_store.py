"""The pair-match store ``pair_matches.h5``: raw matches of image pairs, the unit of resume,
sharding and benchmark caches (``l2m reconstruct``, ``l2m match-pairs``, ``l2m bench``).

Layout: group :func:`~l2m_plugin.formats.hloc.pair_key` ``(name0, name1)`` (hloc's
``names_to_pair``) with ``keypoints0`` (N, 2) float32, ``keypoints1`` (N, 2) float32 (stored
in hloc's pixel convention, centres at i), ``scores`` (N,) float32 (raw certainty) and any
extra per-match datasets; attributes ``name0``, ``name1``, ``size0``, ``size1`` (W, H) and
``complete``. Root attribute ``matcher``: JSON of the settings of the matcher that filled it.

The Python side speaks COLMAP pixel coordinates (centres at i + 0.5) like every other part
of the package: :class:`PairMatchStore` converts on write and read (:mod:`l2m_plugin.coords`).
Benchmark caches written before this name existed are ``matches.h5``:
:func:`pair_store_path` finds them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import h5py
import numpy as np

from l2m_plugin.coords import hloc_to_pixel, pixel_to_hloc
from l2m_plugin.files import atomic_path, config_diff
from l2m_plugin.formats.hloc import pair_key

__all__ = ["STORE_NAME", "PairMatchStore", "merge_pair_files", "pair_store_path"]

log = logging.getLogger(__name__)

#: the store's file name in an output folder
STORE_NAME = "pair_matches.h5"
_OLD_BENCH_NAME = "matches.h5"  # benchmark caches before 2026-12-05


def pair_store_path(folder: str | Path) -> Path:
    """``folder/pair_matches.h5``, or an existing ``folder/matches.h5`` pair store of a
    benchmark cache written under the old name (recognised by its ``matcher`` attribute)."""
    folder = Path(folder)
    new, old = folder / STORE_NAME, folder / _OLD_BENCH_NAME
    if not new.exists() and old.is_file():
        try:
            with h5py.File(old, "r") as f:
                if "matcher" in f.attrs:
                    return old
        except OSError:
            pass
    return new


class PairMatchStore:
    """Append-only store of raw pair matches (``pair_matches.h5``), for resume and shards.

    Each pair is written and the file closed before the next pair is matched, so an
    interrupted run keeps every finished pair. A file whose matcher settings differ
    from ``matcher`` is refused (``ValueError``) unless ``overwrite=True``, which
    deletes it.

    Args:
        path: the h5 file.
        matcher: JSON-serialisable settings of the matcher that fills it (compared on reopen).
        overwrite: start from scratch.
        read_only: open an existing file without modifying it (``write`` is then refused).
        defaults: dotted settings keys -> their value in a file written before the key existed
            (:func:`l2m_plugin.files.config_diff`; a dense matcher's ``settings_defaults()``):
            such a file is not refused for lacking a field that keeps the old behaviour.
    """

    def __init__(self, path: str | Path, matcher: Mapping | None = None, overwrite: bool = False,
                 read_only: bool = False, defaults: Mapping | None = None):  # fmt: skip
        self.path = Path(path)
        self.matcher = dict(matcher or {})
        self.read_only = read_only
        if read_only:
            try:
                with h5py.File(self.path, "r") as f:
                    self._done = self._complete_keys(f)
            except OSError as e:
                raise ValueError(f"{self.path} is not a readable HDF5 file ({e})") from e
            return
        if overwrite and self.path.exists():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with h5py.File(self.path, "a") as f:
                stored = f.attrs.get("matcher")
                if stored is None:
                    f.attrs["matcher"] = json.dumps(self.matcher, sort_keys=True)
                elif matcher is not None and (
                    diff := config_diff(json.loads(stored), json.loads(json.dumps(self.matcher)),
                                        defaults=json.loads(json.dumps(dict(defaults or {}))))
                ):  # fmt: skip
                    raise ValueError(
                        f"{self.path} holds matches of another matcher setting ({'; '.join(diff)}); "
                        "use --overwrite to recompute them, or another output folder"
                    )
                self._done = self._complete_keys(f)
        except OSError as e:
            raise ValueError(
                f"{self.path} is not a readable HDF5 file ({e}); delete it or use --overwrite"
            ) from e

    @staticmethod
    def _complete_keys(f: h5py.File) -> set[str]:
        done = set()
        for a in f:
            for b in f[a]:
                if f[a][b].attrs.get("complete", False):
                    done.add(f"{a}/{b}")
        return done

    def set_shard(self, shard: int, num_shards: int, pairs) -> None:
        """Record that this file is shard ``shard`` of ``num_shards`` of the pair list ``pairs``
        (its SHA-1 and length), so that :func:`merge_pair_files` can refuse an incomplete set."""
        digest = hashlib.sha1("\n".join(f"{a} {b}" for a, b in pairs).encode()).hexdigest()
        info = {"shard": int(shard), "num_shards": int(num_shards), "pairs_sha1": digest, "num_pairs": len(pairs)}
        with h5py.File(self.path, "a") as f:
            old = f.attrs.get("shard_info")
            if old is not None and json.loads(old) != info:
                raise ValueError(
                    f"{self.path} is shard {json.loads(old)['shard']}/{json.loads(old)['num_shards']} of another "
                    f"pair list or split; use --overwrite or another --out"
                )
            f.attrs["shard_info"] = json.dumps(info, sort_keys=True)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        return pair_key(*pair) in self._done or pair_key(pair[1], pair[0]) in self._done

    def __len__(self) -> int:
        return len(self._done)

    def write(
        self, name0: str, name1: str, kpts0: np.ndarray, kpts1: np.ndarray, scores: np.ndarray,
        size0: tuple[int, int], size1: tuple[int, int], extra: Mapping[str, np.ndarray] | None = None,
        fingerprints: tuple[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Store one pair; replaces an incomplete earlier write of the pair.

        Args:
            kpts0, kpts1: (N, 2) COLMAP pixel coordinates (centres at i + 0.5) of the stored images.
            scores: (N,) raw certainty.
            size0, size1: (W, H) of the stored images.
            extra: more per-match datasets, e.g. ``sample_index``.
            fingerprints: :func:`l2m_plugin.io.file_fingerprint` of the two image files, kept
                so that :meth:`current` can tell a pair of a replaced photo.
        """
        if self.read_only:
            raise ValueError(f"{self.path} was opened read-only")
        key = pair_key(name0, name1)
        with h5py.File(self.path, "a") as f:
            if key in f:
                del f[key]
            g = f.create_group(key)
            g.create_dataset("keypoints0", data=pixel_to_hloc(np.asarray(kpts0, np.float32).reshape(-1, 2)))
            g.create_dataset("keypoints1", data=pixel_to_hloc(np.asarray(kpts1, np.float32).reshape(-1, 2)))
            g.create_dataset("scores", data=np.asarray(scores, np.float32).reshape(-1))
            for k, v in (extra or {}).items():
                g.create_dataset(k, data=np.asarray(v))
            g.attrs["name0"], g.attrs["name1"] = name0, name1
            g.attrs["size0"], g.attrs["size1"] = (
                np.asarray(size0, np.int64),
                np.asarray(size1, np.int64),
            )
            if fingerprints is not None:
                g.attrs["fingerprint0"], g.attrs["fingerprint1"] = fingerprints
            g.attrs["complete"] = True
            f.flush()
        self._done.add(key)

    def current(self, pairs, fingerprints: Mapping[str, str]) -> set[tuple[str, str]]:
        """The pairs of ``pairs`` stored with the images' present content: complete, and written
        with the same :func:`~l2m_plugin.io.file_fingerprint` as ``fingerprints[name]`` (a pair
        written without fingerprints, by an older version, counts as stale)."""
        out = set()
        with h5py.File(self.path, "r") as f:
            for a, b in pairs:
                for n0, n1 in ((a, b), (b, a)):
                    key = pair_key(n0, n1)
                    if key in self._done:
                        g = f[key]
                        stored = (g.attrs.get("fingerprint0"), g.attrs.get("fingerprint1"))
                        if stored == (fingerprints.get(n0), fingerprints.get(n1)):
                            out.add((a, b))
                        break
        return out

    def read(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(kpts0, kpts1, scores)`` of a pair in the asked order (swapped if stored reversed)."""
        d = self.read_all(name0, name1)
        return d["keypoints0"], d["keypoints1"], d["scores"]

    def read_all(self, name0: str, name1: str) -> dict[str, np.ndarray]:
        """Every dataset of a stored pair in one file access: ``keypoints0``/``keypoints1``
        (COLMAP pixel coordinates) in the asked order (swapped if stored reversed), ``scores`` and any ``extra``
        datasets written with the pair (per match, unaffected by the order)."""
        with h5py.File(self.path, "r") as f:
            key = pair_key(name0, name1)
            swapped = key not in f
            g = f[pair_key(name1, name0) if swapped else key]
            d = {k: g[k][()] for k in g}
        d["keypoints0"], d["keypoints1"] = hloc_to_pixel(d["keypoints0"]), hloc_to_pixel(d["keypoints1"])
        if swapped:
            d["keypoints0"], d["keypoints1"] = d["keypoints1"], d["keypoints0"]
        return d

    def items(self) -> Iterable[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
        """All complete pairs as ``(name0, name1, kpts0, kpts1, scores)`` (COLMAP pixel coordinates)."""
        with h5py.File(self.path, "r") as f:
            for key in sorted(self._done):
                g = f[key]
                yield (
                    str(g.attrs["name0"]),
                    str(g.attrs["name1"]),
                    hloc_to_pixel(g["keypoints0"][()]),
                    hloc_to_pixel(g["keypoints1"][()]),
                    g["scores"][()],
                )

    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """``{name: (W, H)}`` of every image in a stored pair."""
        sizes = {}
        with h5py.File(self.path, "r") as f:
            for key in self._done:
                g = f[key]
                for i in (0, 1):
                    sizes[str(g.attrs[f"name{i}"])] = tuple(int(v) for v in g.attrs[f"size{i}"])
        return sizes


def _check_shard_set(inputs: list[Path], allow_partial: bool) -> None:
    infos = {}
    for p in inputs:
        try:
            with h5py.File(p, "r") as f:
                raw = f.attrs.get("shard_info")
        except OSError as e:
            raise ValueError(f"{p} is not a readable HDF5 file ({e})") from e
        if raw is not None:
            infos[p] = json.loads(raw)
    if not infos:
        return
    lists = {(i["num_shards"], i["pairs_sha1"]) for i in infos.values()}
    if len(lists) > 1:
        raise ValueError("the shards come from different pair lists or splits: "
                         + ", ".join(f"{p} ({i['shard']}/{i['num_shards']})" for p, i in infos.items()))  # fmt: skip
    n = next(iter(lists))[0]
    missing = sorted(set(range(n)) - {i["shard"] for i in infos.values()})
    if missing and not allow_partial:
        raise ValueError(
            f"shards {', '.join(f'{k}/{n}' for k in missing)} of {n} are missing (given: "
            f"{', '.join(str(p) for p in inputs)}); pass them all, or --allow-partial to merge what is there"
        )


def merge_pair_files(inputs: Iterable[str | Path], output: str | Path, allow_partial: bool = False) -> int:
    """Merge shard files of :class:`PairMatchStore` into one (atomically). Returns the pair count.

    Shards written by ``l2m match-pairs --shard i/N`` record i/N and their pair list: a set
    with a shard missing is refused unless ``allow_partial``.

    Raises:
        FileNotFoundError: a missing input.
        ValueError: shards from different matcher settings, pair lists or splits, a missing
            shard (without ``allow_partial``), or a pair present in two shards with different
            matches.
    """
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.is_file():
            raise FileNotFoundError(f"shard file {p} does not exist")
    _check_shard_set(inputs, allow_partial)
    output = Path(output)
    matcher = None
    n = 0
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
        for p in inputs:
            with h5py.File(p, "r") as f:
                m = f.attrs.get("matcher")
                if matcher is None:
                    matcher = m
                    out.attrs["matcher"] = m if m is not None else "{}"
                elif m != matcher:
                    raise ValueError(
                        f"{p} was matched with other settings ({m}) than {inputs[0]} ({matcher})"
                    )
                for key in PairMatchStore._complete_keys(f):
                    if key in out:
                        if not np.array_equal(out[key]["keypoints0"][()], f[key]["keypoints0"][()]):
                            raise ValueError(
                                f"pair {key} is in several shards with different matches"
                            )
                        continue
                    f.copy(f[key], out.require_group(key.split("/")[0]), name=key.split("/")[1])
                    n += 1
    return n
