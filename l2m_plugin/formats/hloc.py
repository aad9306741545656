"""hloc's HDF5 files: ``features.h5`` and ``matches.h5``, as hloc's ``reconstruction`` /
``triangulation`` read them.

- ``features.h5`` (hloc's local-feature file): group per image name with
  ``keypoints`` (M, 2) float32 and ``image_size`` (2,) int (W, H).
- ``matches.h5`` (hloc's match file): group :func:`pair_key` with ``matches0`` (M0,)
  int32 (index into image 1's keypoints or -1) and ``matching_scores0`` (M0,) float32.

Keypoints cross this module in COLMAP pixel coordinates (centres at i + 0.5) and are stored
in hloc's (centres at i): the conversion is :mod:`l2m_plugin.coords`'s, done here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from l2m_plugin.coords import hloc_to_pixel, pixel_to_hloc
from l2m_plugin.files import atomic_path

__all__ = ["pair_key", "write_features", "write_matches", "read_features", "read_matches"]


def pair_key(name0: str, name1: str) -> str:
    """hloc's h5 key of a pair (``hloc.utils.io.names_to_pair``): ``/`` in names becomes ``-``."""
    return "/".join((name0.replace("/", "-"), name1.replace("/", "-")))


def write_features(
    path: str | Path, keypoints: Mapping[str, np.ndarray], sizes: Mapping[str, tuple[int, int]]
) -> Path:
    """Write hloc's ``features.h5`` (atomically).

    Args:
        keypoints: ``{name: (M, 2)}`` in COLMAP pixel coordinates (stored in hloc's).
        sizes: ``{name: (W, H)}``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, kp in keypoints.items():
            g = f.create_group(name)
            g.create_dataset("keypoints", data=pixel_to_hloc(np.asarray(kp, np.float32).reshape(-1, 2)))
            g.create_dataset("image_size", data=np.asarray(sizes[name], np.int64))
    return path


def write_matches(
    path: str | Path,
    matches: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    num_keypoints: Mapping[str, int],
) -> Path:
    """Write hloc's ``matches.h5`` (atomically).

    Args:
        matches: ``{(name0, name1): (idx (M, 2) int, scores (M,))}`` keypoint index pairs.
        num_keypoints: keypoint count per image (length of ``matches0``).
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for (n0, n1), (idx, scores) in matches.items():
            m0 = np.full(num_keypoints[n0], -1, np.int32)
            s0 = np.zeros(num_keypoints[n0], np.float32)
            idx = np.asarray(idx, np.int64).reshape(-1, 2)
            m0[idx[:, 0]] = idx[:, 1]
            s0[idx[:, 0]] = np.asarray(scores, np.float32)
            g = f.create_group(pair_key(n0, n1))
            g.create_dataset("matches0", data=m0)
            g.create_dataset("matching_scores0", data=s0)
    return path


def read_features(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: keypoints (M, 2) float32}`` from a ``features.h5``, in COLMAP pixel coordinates;
    names may be nested."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "keypoints" in obj:
                out[name] = hloc_to_pixel(obj["keypoints"][()])

        f.visititems(visit)
    return out


def read_matches(path: str | Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """``(idx (M, 2) int, scores (M,))`` of a pair from a ``matches.h5`` (either stored order)."""
    with h5py.File(path, "r") as f:
        key, rev = pair_key(name0, name1), False
        if key not in f:
            key, rev = pair_key(name1, name0), True
        m0, s0 = f[key]["matches0"][()], f[key]["matching_scores0"][()]
    i0 = np.flatnonzero(m0 >= 0)
    idx = np.stack((i0, m0[i0]), axis=1)
    return (idx[:, ::-1] if rev else idx), s0[i0]
