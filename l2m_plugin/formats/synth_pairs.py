"""The on-disk format "l2m-synth" (version 1) of synthetic training pairs: writer and reader.
The generator that fills it is :mod:`l2m_plugin.synthesis.generate` (``l2m synth``).


Layout (the training loader depends on it; do not change without bumping ``version``)::

    OUT/
      synth_conf.yaml        resolved configuration: format, version, run, synth
      pairs.jsonl            one line per finished pair:
                             {"id", "source" (image path relative to --images),
                              "size": [W, H], "depth_source"}
      failures.jsonl         one line per skipped image or pair: {"source", "index",
                             "id" (null for a whole image), "error"}; failed images are
                             retried by every rerun (one line per attempt)
      pairs/<id>/image0.png  uint8 RGB H x W: the photo after resizing/cropping and its
                             own appearance change
      pairs/<id>/image1.png  uint8 RGB H x W: the rendered novel view, holes filled
      pairs/<id>/geometry.npz  np.savez_compressed: K0, K1 (3, 3) float64; T_0to1 (4, 4)
                             float64; depth0, depth1 (H, W) float32 (0 = no surface);
                             valid0, valid1 (H, W) bool; warp0, warp1 (H, W, 2) float32
                             normalised coordinates in the other image, 2.0 where invalid
      samples.png            a few pairs with ground-truth correspondences

Conventions are those of :mod:`l2m_plugin.geometry` (COLMAP pixel centres at i + 0.5,
``T_0to1`` camera 0 -> camera 1, z-depth, ``align_corners=False`` normalised warps).

Pair ids and the order in which a run writes files: :mod:`l2m_plugin.synthesis.generate`.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from l2m_plugin.files import atomic_dir, read_jsonl

__all__ = ["FORMAT", "VERSION", "GEOMETRY_KEYS", "CONF_NAME", "PAIRS_NAME", "FAIL_NAME", "write_pair", "read_pair", "list_pairs"]

FORMAT = "l2m-synth"
VERSION = 1
GEOMETRY_KEYS = ("K0", "K1", "T_0to1", "depth0", "depth1", "valid0", "valid1", "warp0", "warp1")
#: file names in an "l2m-synth" folder
CONF_NAME, PAIRS_NAME, FAIL_NAME = "synth_conf.yaml", "pairs.jsonl", "failures.jsonl"


def _write_png(path: Path, rgb: np.ndarray) -> None:
    # OpenCV's PNG writer, as the pairs were always written (the files stay byte-identical)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")


def write_pair(root: str | os.PathLike, pair_id: str, pair) -> Path:
    """Write one pair's files atomically to ``root/pairs/<pair_id>/``.

    Args:
        pair: an object with ``image0``, ``image1`` ((H, W, 3) uint8 RGB) and ``geometry()``
            (a dict of the :data:`GEOMETRY_KEYS` arrays), e.g. a
            :class:`~l2m_plugin.synthesis.pair.SynthPair`.

    Files go to ``pairs/<pair_id>.tmp-<pid>/`` first, which is then renamed into place
    (an existing ``pairs/<pair_id>/`` from an unfinished run is replaced). Does not touch
    ``pairs.jsonl``.

    Returns:
        the pair's folder.
    """
    final = Path(root) / "pairs" / pair_id
    with atomic_dir(final) as tmp:
        _write_png(tmp / "image0.png", pair.image0)
        _write_png(tmp / "image1.png", pair.image1)
        np.savez_compressed(tmp / "geometry.npz", **pair.geometry())
    return final


def read_pair(root: str | os.PathLike, pair_id: str) -> dict[str, np.ndarray]:
    """Read one pair of an "l2m-synth" folder.

    Args:
        root: the output folder of ``l2m synth``.
        pair_id: an id from :func:`list_pairs`.
    Returns:
        dict of numpy arrays: ``image0``, ``image1`` (H, W, 3) uint8 RGB and the
        :data:`GEOMETRY_KEYS` of ``geometry.npz`` with their stored dtypes.
    Raises:
        FileNotFoundError: the pair's folder or one of its files is missing.
        ValueError: a file is unreadable or ``geometry.npz`` lacks a key.
    """
    d = Path(root) / "pairs" / pair_id
    if not d.is_dir():
        raise FileNotFoundError(f"pair {pair_id!r} not found: {d} does not exist")
    out = {}
    for name in ("image0", "image1"):
        p = d / f"{name}.png"
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing")
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{p} is not a readable PNG")
        out[name] = np.ascontiguousarray(bgr[..., ::-1])
    g = d / "geometry.npz"
    if not g.is_file():
        raise FileNotFoundError(f"{g} is missing")
    with np.load(g, allow_pickle=False) as z:
        missing = [k for k in GEOMETRY_KEYS if k not in z.files]
        if missing:
            raise ValueError(f"{g} lacks {missing}; is it an l2m-synth version {VERSION} pair?")
        out.update({k: z[k] for k in GEOMETRY_KEYS})
    return out


def list_pairs(root: str | os.PathLike) -> list[dict]:
    """Finished pairs of an "l2m-synth" folder, in the order they were written.

    Returns:
        the records of ``pairs.jsonl``: dicts with ``id``, ``source``, ``size`` [W, H] and
        ``depth_source``; [] when there is none.
    Raises:
        ValueError: a corrupt line other than a truncated last one.
    """
    return read_jsonl(Path(root) / PAIRS_NAME)
