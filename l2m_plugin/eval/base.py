"""The benchmark framework: pairs, cached predictions, evaluation from the cache.

A benchmark (glue-factory's ``eval`` pattern) is a class with

- ``default_conf``: ``data`` (where the official files are), ``predict`` (what
  determines the matches: number of matches, seed) and ``eval`` (the protocol:
  frame, pixel offset, RANSAC, runs, ...), plus named ``protocols`` that override
  ``eval`` (e.g. ``"roma"``, ``"loftr"``);
- a loader, :meth:`Benchmark.pairs`, for the official on-disk layout;
- :meth:`Benchmark.predict`, which runs a pair matcher and caches its matches in
  ``pair_matches.h5`` (pair by pair, resumable; a cache made with other matcher or
  ``predict`` settings is refused unless ``overwrite=True``);
- :meth:`Benchmark.evaluate`, which reads only that cache and writes a summary JSON
  and a markdown table beside the published numbers. Another RANSAC threshold or
  another number of runs costs no matching.

Pair matchers are objects with ``settings() -> dict``, ``image(name)`` (a
:class:`~l2m_plugin.io.LoadedImage`), ``__call__(name0, name1) -> (kpts0, kpts1,
scores)`` (COLMAP pixel coordinates in the stored images: pixel centres at
i + 0.5), ``forget(name)`` and ``close()``: the SfM matchers of
:mod:`l2m_plugin.matching.dense` and those of :mod:`l2m_plugin.matching.baselines`.
They read the images by name under :attr:`Benchmark.image_root`: the data root,
except for benchmarks that generate their images (``homography`` writes them into a
cache folder beside its outputs).

Output folder of one matcher on one benchmark::

    OUT/pair_matches.h5         the pair-match store (:mod:`l2m_plugin.formats.pair_store`):
                                keypoints0/1, scores, sizes, [sample_index when
                                predict.samples_per_pair > 1]; caches from before
                                2026-12-05 are OUT/matches.h5 and are still read
    OUT/predict_conf.json       benchmark, data root, matcher settings, predict conf, torch threads
    OUT/failures.json           pairs whose matching raised (retried on the next run)
    OUT/eval/<protocol>-<hash>.json   summary (metrics, eval conf, per-pair errors); the hash
                                      covers the eval and data conf and max_pairs
    OUT/eval/<protocol>-<hash>.md     the table, with the published numbers
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from omegaconf import OmegaConf

from l2m_plugin.files import atomic_json, atomic_text
from l2m_plugin.formats.pair_store import PairMatchStore, pair_store_path

__all__ = ["BenchmarkPair", "Benchmark", "BenchmarkDataError", "find_published", "markdown_table"]

log = logging.getLogger(__name__)

#: the published numbers of each benchmark, shipped with the package (``<name>.json``)
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"


class BenchmarkDataError(FileNotFoundError):
    """The data set is not where the benchmark looks, or not in the documented layout."""


@dataclass
class BenchmarkPair:
    """One evaluation pair.

    Attributes:
        name0, name1: image paths relative to the data root (the cache keys).
        subset: scene or sub-set name (per-subset metrics).
        index: position in the official pair list.
        K0, K1: (3, 3) float64 intrinsics in pixels, in the convention the data set
            uses (see each benchmark's ``pixel_offset``); None for homography benchmarks.
        T_0to1: (4, 4) float64, camera 0 -> camera 1 (metres or data-set units).
        H_0to1: (3, 3) float64 homography image 0 -> image 1 (HPatches convention).
        depth0, depth1: depth-map paths relative to the data root (oracle), if any.
        info: anything else of the official list (overlap, ...).
    """

    name0: str
    name1: str
    subset: str
    index: int
    K0: np.ndarray | None = None
    K1: np.ndarray | None = None
    T_0to1: np.ndarray | None = None
    H_0to1: np.ndarray | None = None
    depth0: str | None = None
    depth1: str | None = None
    info: dict = field(default_factory=dict)


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def find_published(name: str, path: str | Path | None = None) -> dict | None:
    """The published numbers of benchmark ``name`` (``l2m_plugin/eval/published/<name>.json``,
    installed with the package) or of the file ``path``; None if absent."""
    p = Path(path) if path is not None else PUBLISHED_DIR / f"{name}.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def markdown_table(title: str, columns: Sequence[str], ours: Mapping[str, Sequence[float]], published: dict | None) -> str:
    """A markdown table: our rows (fractions, shown as percentages) then the published rows."""
    lines = [f"### {title}", "", "| method | " + " | ".join(columns) + " | source |"]
    lines.append("|---" * (len(columns) + 2) + "|")
    for label, values in ours.items():
        cells = [f"{100 * v:.1f}" if v is not None and math.isfinite(v) else "-" for v in values]
        lines.append(f"| **{label}** (this run) | " + " | ".join(cells) + " | |")
    for e in (published or {}).get("entries", []):
        vals = e.get("values")
        cells = ["-" if v is None else f"{v:.1f}" for v in (vals or [None] * len(columns))]
        lines.append(f"| {e['method']} | " + " | ".join(cells) + f" | {e.get('source', '')} |")
    if published and published.get("notes"):
        lines += ["", published["notes"]]
    return "\n".join(lines) + "\n"


class Benchmark:
    """Base class of the benchmarks (see the module docstring).

    Args:
        data_root: folder of the data set in its official layout (each benchmark's
            README in ``benchmarks/<name>/`` says how to obtain it).
        conf: overrides of :attr:`default_conf` (nested dict or OmegaConf), applied
            after ``protocol``.
        protocol: name of a preset in :attr:`protocols` (default: the first one).
    Raises:
        ValueError: unknown protocol or configuration key.
    """

    name: ClassVar[str] = ""
    default_conf: ClassVar[dict] = {"data": {}, "predict": {"num_matches": 5000, "seed": 0, "samples_per_pair": 1}, "eval": {}}
    protocols: ClassVar[dict[str, dict]] = {}
    #: metric names of the headline table, in order
    columns: ClassVar[list[str]] = []
    #: ground-truth depth + poses or homographies exist (the oracle matcher can run)
    has_ground_truth: ClassVar[bool] = False

    def __init__(self, data_root: str | Path, conf: Mapping | None = None, protocol: str | None = None):
        self.data_root = Path(data_root)
        if protocol is None:
            protocol = next(iter(self.protocols), None)
        if protocol is not None and protocol not in self.protocols:
            raise ValueError(f"unknown protocol {protocol!r} for {self.name}; choose from {sorted(self.protocols)}")
        self.protocol = protocol
        base = OmegaConf.create(self.default_conf)
        OmegaConf.set_struct(base, True)
        try:
            merged = OmegaConf.merge(base, {"eval": self.protocols.get(protocol, {})}, conf or {})
        except Exception as e:  # omegaconf.errors.ConfigKeyError and friends
            raise ValueError(f"bad configuration for benchmark {self.name}: {e}") from e
        self.conf = OmegaConf.to_container(merged, resolve=True)
        self._pairs: list[BenchmarkPair] | None = None

    # ------------------------------------------------------------------ data
    @property
    def image_root(self) -> Path:
        """The folder the pair names are relative to (what the pair matchers read): the data
        root, unless the benchmark generates its images elsewhere."""
        return self.data_root

    def load_pairs(self) -> list[BenchmarkPair]:
        """Read the official pair list (subclasses)."""
        raise NotImplementedError

    def pairs(self) -> list[BenchmarkPair]:
        """The evaluation pairs in the official order (loaded once)."""
        if self._pairs is None:
            self._pairs = self.load_pairs()
        return self._pairs

    def check_images(self, pairs: Sequence[BenchmarkPair]) -> None:
        """Raise :class:`BenchmarkDataError` naming the first missing images."""
        missing = sorted({n for p in pairs for n in (p.name0, p.name1) if not (self.image_root / n).is_file()})
        if missing:
            raise BenchmarkDataError(
                f"{len(missing)} image(s) of {self.name} are missing under {self.image_root}, e.g. "
                f"{missing[0]}; see benchmarks/{self.name}/README.md for the layout, or pass the right --data-root"
            )

    def require_ground_truth(self) -> None:
        """Raise ValueError unless the data set has ground-truth depth or homographies."""
        if not self.has_ground_truth:
            raise ValueError(
                f"{self.name} has no ground-truth depth or homographies, so the oracle matcher is not available"
            )

    def ground_truth_warp(self, pair: BenchmarkPair, size0: tuple[int, int], size1: tuple[int, int]):
        """Dense ground truth for the oracle matcher (subclasses with depth or homographies).

        Returns ``(warp0 (H0, W0, 2), valid0 (H0, W0), warp1, valid1)`` torch tensors,
        warps normalised in the other image (COLMAP pixel convention).
        Raises:
            ValueError: the data set has none (:meth:`require_ground_truth`).
        """
        self.require_ground_truth()
        raise NotImplementedError(f"{type(self).__name__} sets has_ground_truth but has no ground_truth_warp")

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        matcher,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        max_pairs: int | None = None,
        progress: bool = True,
    ) -> Path:
        """Match every pair not yet in ``out_dir/pair_matches.h5`` (resumable) and return that path.

        A pair whose matching raises is logged and listed in ``failures.json``; the
        other pairs go on, and it is retried by the next call.

        Args:
            matcher: a pair matcher (module docstring) whose image folder is :attr:`image_root`.
            out_dir: output folder of this matcher on this benchmark.
            overwrite: delete a cache made with other settings instead of refusing it.
            max_pairs: only the first N pairs of the official list (quick runs).
        Raises:
            ValueError: the cache holds another matcher's or another setting's matches.
            BenchmarkDataError: images missing.
        """
        import torch
        from tqdm import tqdm

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs = self.pairs()[:max_pairs] if max_pairs else self.pairs()
        self.check_images(pairs)
        settings = {"benchmark": self.name, "matcher": matcher.settings(), "predict": self.conf["predict"]}
        defaults = {f"matcher.{k}": v for k, v in getattr(matcher, "settings_defaults", dict)().items()}
        store = PairMatchStore(pair_store_path(out_dir), settings, overwrite=overwrite, defaults=defaults)
        # torch_threads: the dense warp's float sums (hence the drawn matches) depend on it.
        atomic_json(
            out_dir / "predict_conf.json",
            {**settings, "data_root": str(self.data_root), "image_root": str(self.image_root), "data": self.conf["data"],
             "torch_threads": torch.get_num_threads()},
        )  # fmt: skip
        todo, seen = [], set()
        for p in pairs:
            if (p.name0, p.name1) in store or (p.name0, p.name1) in seen:
                continue
            seen.add((p.name0, p.name1))
            todo.append(p)
        last_use = {}
        for i, p in enumerate(todo):
            last_use[p.name0] = last_use[p.name1] = i
        failures: dict[str, str] = {}
        n_samples = int(self.conf["predict"].get("samples_per_pair", 1))
        for i, p in enumerate(tqdm(todo, desc=f"{self.name}: matching", disable=not progress, unit="pair")):
            try:
                if n_samples > 1 and hasattr(matcher, "match_samples"):
                    draws = matcher.match_samples(p.name0, p.name1, n_samples)
                else:  # deterministic matchers (SIFT, LoFTR, DISK): one set serves every run
                    draws = [matcher(p.name0, p.name1)]
                k0, k1, s = (np.concatenate([d[i] for d in draws]) for i in range(3))
                index = np.concatenate([np.full(len(d[0]), j, np.int16) for j, d in enumerate(draws)])
                size0, size1 = matcher.image(p.name0).size, matcher.image(p.name1).size
                store.write(
                    p.name0, p.name1, k0.reshape(-1, 2), k1.reshape(-1, 2), s, size0, size1,
                    extra={"sample_index": index} if len(draws) > 1 else None,
                )  # fmt: skip
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # one failing pair must not discard the others
                log.error("%s: pair %s / %s failed: %r", self.name, p.name0, p.name1, e)
                failures[f"{p.name0} {p.name1}"] = repr(e)
            for n in (p.name0, p.name1):
                if last_use[n] == i:
                    matcher.forget(n)
        atomic_json(out_dir / "failures.json", failures)
        return store.path

    # ------------------------------------------------------------------ evaluate
    def evaluate_pair(self, pair: BenchmarkPair, kpts0: np.ndarray, kpts1: np.ndarray, scores: np.ndarray,
                      size0: tuple[int, int], size1: tuple[int, int], sample_index: np.ndarray | None = None) -> dict:  # fmt: skip
        """Errors of one pair from its cached matches (COLMAP pixels; subclasses).

        ``sample_index`` (N,) tells which independent draw each match belongs to when
        the cache holds ``predict.samples_per_pair`` > 1 draws; None: one draw.
        """
        raise NotImplementedError

    def failed_pair(self, pair: BenchmarkPair) -> dict:
        """The record of a pair with no cached matches (counted as a failure)."""
        raise NotImplementedError

    def summarize(self, records: list[dict], pairs: list[BenchmarkPair]) -> dict:
        """Metrics from the per-pair records (subclasses)."""
        raise NotImplementedError

    def table_note(self, metrics: dict) -> str:
        """Text appended to the table title (e.g. ZEB run on fewer than 12 sub-sets)."""
        return ""

    def headline(self, metrics: dict) -> list[float]:
        """The values of :attr:`columns` (fractions)."""
        return [metrics[c] for c in self.columns]

    def evaluate(
        self,
        out_dir: str | Path,
        *,
        max_pairs: int | None = None,
        label: str | None = None,
        published: str | Path | None = None,
        progress: bool = True,
    ) -> dict:
        """Evaluate the cached matches of ``out_dir`` with the current ``eval`` conf.

        Reads only ``out_dir/pair_matches.h5``; pairs missing from it count as failures
        (and are reported as ``num_missing``). Writes
        ``out_dir/eval/<protocol>-<hash>.json`` and ``.md`` (hash of the eval and data
        conf and ``max_pairs``: another setting never overwrites a summary).

        Returns:
            the summary dict: ``metrics``, ``headline`` (``columns`` -> value),
            ``eval_conf``, ``num_pairs``, ``num_missing``, ``paths``, ``pairs``
            (per-pair records).
        Raises:
            FileNotFoundError: no cache (run :meth:`predict` first).
        """
        from tqdm import tqdm

        out_dir = Path(out_dir)
        cache = pair_store_path(out_dir)
        if not cache.is_file():
            raise FileNotFoundError(f"{cache} does not exist: run the prediction first (l2m bench without --eval-only)")
        store = PairMatchStore(cache, read_only=True)
        pairs = self.pairs()[:max_pairs] if max_pairs else self.pairs()
        sizes = store.image_sizes()
        records, missing = [], 0
        for p in tqdm(pairs, desc=f"{self.name}: evaluating", disable=not progress, unit="pair"):
            if (p.name0, p.name1) in store:
                d = store.read_all(p.name0, p.name1)
                rec = self.evaluate_pair(
                    p, d["keypoints0"], d["keypoints1"], d["scores"], sizes[p.name0], sizes[p.name1],
                    sample_index=d.get("sample_index"),
                )  # fmt: skip
            else:
                missing += 1
                rec = self.failed_pair(p)
                rec["missing"] = True
            rec.update(name0=p.name0, name1=p.name1, subset=p.subset, index=p.index)
            records.append(rec)
        metrics = self.summarize(records, pairs)
        head = dict(zip(self.columns, self.headline(metrics), strict=True))
        # the summary's name changes with everything that changes its numbers
        conf_hash = _hash({"eval": self.conf["eval"], "data": self.conf["data"], "max_pairs": max_pairs})
        stem = f"{self.protocol or 'default'}-{conf_hash}"
        eval_dir = out_dir / "eval"
        eval_dir.mkdir(exist_ok=True)
        try:
            matcher_settings = json.loads((out_dir / "predict_conf.json").read_text())
        except (OSError, ValueError):
            matcher_settings = None
        label = label or out_dir.name
        total = len(self.pairs())
        partial = f" (partial: {len(pairs)} of {total} pairs)" if len(pairs) < total else ""
        partial += self.table_note(metrics)
        md = markdown_table(
            f"{self.name}, protocol {self.protocol}{partial}", self.columns, {label: head.values()},
            find_published(self.name, published),
        )  # fmt: skip
        summary = {
            "benchmark": self.name,
            "protocol": self.protocol,
            "headline": head,
            "metrics": metrics,
            "num_pairs": len(pairs),
            "num_pairs_official": total,
            "num_missing": missing,
            "eval_conf": self.conf["eval"],
            "predict": matcher_settings,
            "paths": {"json": str(eval_dir / f"{stem}.json"), "markdown": str(eval_dir / f"{stem}.md")},
            "pairs": records,
        }
        atomic_json(eval_dir / f"{stem}.json", summary)
        atomic_text(eval_dir / f"{stem}.md", md)
        summary["markdown"] = md
        return summary


# ---------------------------------------------------------------------- shared helpers
def pair_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of one pair's RANSAC runs (independent of evaluation order)."""
    return np.random.default_rng([int(seed), int(index)])
