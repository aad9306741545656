"""Pair matchers: objects that match two images of a folder by name.

A pair matcher has ``settings() -> dict`` (what determines its matches, saved with them),
``image(name)`` (a :class:`~l2m_plugin.io.LoadedImage`), ``__call__(name0, name1) ->
(kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` in COLMAP pixel coordinates of the stored images
(centres at i + 0.5), ``forget(name)`` (drop an image's cached data) and ``close()``
(:class:`PairMatcher`). The SfM pipeline and the benchmarks take any of them:

- :class:`~l2m_plugin.matching.dense.DensePairMatcher`: L2M (or any dense matcher), each
  image encoded once;
- :class:`~l2m_plugin.matching.sift.SiftPairMatcher`: OpenCV SIFT;
- :mod:`~l2m_plugin.matching.baselines`: ground truth (oracle), random keypoints, kornia's
  LoFTR / DISK;
- :class:`~l2m_plugin.matching.oracle.OracleMatcher`: a dense matcher with L2M's interface
  that returns the ground-truth warp of a synthetic scene.

:func:`~l2m_plugin.matching.build.build_matcher` builds the dense matcher for every entry
point (CLI, hloc, kornia).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from l2m_plugin.io import LoadedImage

__all__ = ["PairMatcher"]


@runtime_checkable
class PairMatcher(Protocol):
    """The interface of a pair matcher (see the package docstring)."""

    def settings(self) -> dict: ...

    def image(self, name: str) -> LoadedImage: ...

    def __call__(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def forget(self, name: str) -> None: ...

    def close(self) -> None: ...
