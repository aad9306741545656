"""The correspondences of one image pair that ``l2m match`` writes (``correspondences.h5``;
``matches.h5`` before 2026-12-05: same layout, still read by :func:`read_correspondences`).

Layout (HDF5, written atomically: a temporary file is renamed into place):

=================  ==========  ====================================================
dataset            shape       meaning
=================  ==========  ====================================================
``keypoints0``     (N, 2) f4   pixel (x, y) in image 0, COLMAP convention: top-left
                               corner (0, 0), pixel centres at i + 0.5, in the
                               *stored* pixel grid of the file (before EXIF rotation)
``keypoints1``     (N, 2) f4   same for image 1; row i matches row i of keypoints0
``certainty``      (N,) f4     raw matcher certainty in [0, 1]
``image_size0``    (2,) i8     (width, height) of image 0 as stored
``image_size1``    (2,) i8     (width, height) of image 1 as stored
=================  ==========  ====================================================

Attributes: ``image0``, ``image1`` (paths), ``weights`` (model that ran),
``config`` (JSON of the resolved :class:`~l2m_plugin.config.MatcherConfig`),
``seed``, ``num_matches`` (requested), ``pixel_convention``, ``frame``,
``l2m_plugin_version``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from l2m_plugin.files import atomic_path

__all__ = ["FILE_NAME", "PIXEL_CONVENTION", "write_correspondences", "read_correspondences"]

#: the file name ``l2m match`` writes
FILE_NAME = "correspondences.h5"

PIXEL_CONVENTION = "COLMAP: top-left image corner at (0, 0), pixel centres at (i + 0.5, j + 0.5)"


def write_correspondences(path: str | os.PathLike, matches: dict[str, Any], attrs: dict[str, Any]) -> Path:
    """Write ``keypoints0``, ``keypoints1``, ``certainty``, ``image_size0/1`` and attributes.

    Args:
        path: output ``.h5`` file (parent folders are created).
        matches: arrays or tensors with the shapes in the module docstring.
        attrs: JSON-serialisable values (dicts are stored as JSON strings).
    Raises:
        ValueError: keypoint arrays of different lengths or wrong shapes.
    """
    path = Path(path)
    arrays = {k: np.asarray(matches[k].cpu() if hasattr(matches[k], "cpu") else matches[k]) for k in
              ("keypoints0", "keypoints1", "certainty", "image_size0", "image_size1")}
    n = len(arrays["keypoints0"])
    if arrays["keypoints0"].shape != (n, 2) or arrays["keypoints1"].shape != (n, 2) or arrays["certainty"].shape != (n,):
        raise ValueError(
            "matches need keypoints0 (N,2), keypoints1 (N,2), certainty (N,); got "
            f"{arrays['keypoints0'].shape}, {arrays['keypoints1'].shape}, {arrays['certainty'].shape}"
        )
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for k in ("keypoints0", "keypoints1", "certainty"):
            f.create_dataset(k, data=arrays[k].astype(np.float32))
        for k in ("image_size0", "image_size1"):
            f.create_dataset(k, data=arrays[k].astype(np.int64))
        f.attrs["pixel_convention"] = PIXEL_CONVENTION
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
    return path


def read_correspondences(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`write_correspondences`: arrays plus ``attrs`` (config parsed from JSON)."""
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {k: f[k][()] for k in f.keys()}
        attrs = dict(f.attrs)
    if "config" in attrs:
        attrs["config"] = json.loads(attrs["config"])
    out["attrs"] = attrs
    return out
