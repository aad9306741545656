"""Training pairs with dense ground truth: synthetic pairs (L2M stage 2) and MegaDepth (RoMa).

Every data set returns items with the same keys, at the training size (H, W):

================  ==================  =================================================
key               shape, dtype        meaning
================  ==================  =================================================
``image0/1``      (3, H, W) float32   RGB in [0, 1]
``warp0``         (H, W, 2) float32   for each pixel centre of image 0, its match in
                                      image 1 in normalised coordinates (x, y) in [-1, 1]
                                      (``align_corners=False``, :mod:`l2m_plugin.coords`);
                                      arbitrary where ``valid0`` is False
``valid0``        (H, W) bool         image 0 pixels with a (covisible) match
``warp1/valid1``  likewise            image 1 -> image 0
``K0``, ``K1``    (3, 3) float64      intrinsics in the pixels of the training size,
                                      COLMAP convention (pixel centres at i + 0.5)
``T_0to1``        (4, 4) float64      camera-0 to camera-1 coordinates
``id``            str                 the pair's name
================  ==================  =================================================

Resizing to the training size: images with PIL bicubic (:func:`l2m_plugin.io.resize_to_tensor`,
as at inference), warps and validity masks with nearest-exact sampling (each output
pixel takes the value of the input pixel whose centre is nearest: warp *values* are
normalised coordinates of the other image, hence independent of either image's
resolution; the position error is at most half an input pixel), and intrinsics by
``diag(W'/W, H'/H, 1) @ K`` (exact in the COLMAP convention, where the image corner is 0).

Augmentation (optional): ``hflip`` flips both images of a pair left-right with that
probability, as RoMa's ``use_horizontal_flip_aug``: warps become ``(-x, y)`` at the
mirrored pixel, the masks are mirrored, ``K <- [[-1, 0, W], [0, 1, 0], [0, 0, 1]] @ K``
(a negative focal length: the world and ``T_0to1`` are unchanged). The random draws
of an item come from the key the sampler gives it (:class:`StepSampler`), so the data
of every step depends only on the seed and the step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from l2m_plugin.config import as_pair
from l2m_plugin.eval.megadepth import read_scene_info
from l2m_plugin.formats.synth_pairs import FORMAT as _GENERATOR_FORMAT
from l2m_plugin.formats.synth_pairs import VERSION as _GENERATOR_VERSION
from l2m_plugin.geometry import warp_from_depth
from l2m_plugin.io import resize_to_tensor
from l2m_plugin.synthesis import list_pairs
from l2m_plugin.synthesis.generate import list_source_images, split_images
from l2m_plugin.synthesis.homography import (
    HomographyConfig,
    homography_warp,
    random_homography_pair,
)

__all__ = [
    "DataError",
    "SynthPairs",
    "HomographyPairs",
    "ConcatPairs",
    "MegaDepthPairs",
    "StepSampler",
    "resize_pair_geometry",
    "hflip_item",
    "SYNTH_FORMAT",
    "SYNTH_VERSION",
]

logger = logging.getLogger(__name__)

#: ``synth_conf.yaml`` must say ``format: l2m-synth`` and ``version: 1``: the generator's own
#: constants (:mod:`l2m_plugin.formats.synth_pairs`), so reader and writer cannot drift apart.
SYNTH_FORMAT, SYNTH_VERSION = _GENERATOR_FORMAT, _GENERATOR_VERSION


class DataError(ValueError):
    """A training data set is missing, malformed or of an unknown format (the message names the file)."""


def _size(size) -> tuple[int, int]:
    try:
        h, w = as_pair(size, "size")
    except ValueError:
        raise DataError(f"size must be an int or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise DataError(f"size must be positive, got {size!r}")
    return h, w


def _read_rgb(path: Path, size: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from exc
    return resize_to_tensor(im, size)


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, C) or (H, W) tensor resized by nearest-exact sampling (pixel centres)."""
    if tuple(x.shape[:2]) == tuple(size):
        return x
    squeeze = x.ndim == 2
    t = x[..., None] if squeeze else x
    dtype = t.dtype
    t = F.interpolate(t.permute(2, 0, 1)[None].float(), size=size, mode="nearest-exact")[0].permute(1, 2, 0)
    t = t.to(dtype)
    return t[..., 0] if squeeze else t


def resize_pair_geometry(item: dict, size: tuple[int, int]) -> dict:
    """Resize an item's warps, masks and intrinsics (in place) to ``size`` (H, W).

    ``warp0``/``valid0`` are read on image 0's grid and ``warp1``/``valid1`` on image
    1's (they may differ in size before the call). Images are not touched.
    """
    h, w = size
    for i in (0, 1):
        hi, wi = item[f"valid{i}"].shape
        item[f"warp{i}"] = _resize_nearest(item[f"warp{i}"], size)
        item[f"valid{i}"] = _resize_nearest(item[f"valid{i}"], size)
        S = torch.diag(torch.tensor([w / wi, h / hi, 1.0], dtype=torch.float64))
        item[f"K{i}"] = S @ item[f"K{i}"]
    return item


def hflip_item(item: dict) -> dict:
    """Mirror both images of an item left-right, consistently with its geometry (see module docstring)."""
    out = dict(item)
    for i in (0, 1):
        w = item[f"image{i}"].shape[-1]
        out[f"image{i}"] = item[f"image{i}"].flip(-1)
        warp = item[f"warp{i}"].flip(1).clone()
        warp[..., 0] = -warp[..., 0]
        out[f"warp{i}"] = warp
        out[f"valid{i}"] = item[f"valid{i}"].flip(1)
        M = torch.tensor([[-1.0, 0.0, w], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        out[f"K{i}"] = M @ item[f"K{i}"]
    return out


def _key(key) -> tuple[int, int | None]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), None


class _PairDataset(Dataset):
    """Shared item logic: augmentation seeded by the sampler's key."""

    def __init__(self, size, hflip: float = 0.0, seed: int = 0):
        self.size = _size(size)
        if not 0.0 <= float(hflip) <= 1.0:
            raise DataError(f"hflip must be a probability in [0, 1], got {hflip}")
        self.hflip = float(hflip)
        self.seed = int(seed)

    def _load(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key) -> dict:
        """``dataset[i]`` or ``dataset[(i, aug_seed)]`` (the form :class:`StepSampler` yields)."""
        index, aug_seed = _key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"pair index {index} out of range [0, {len(self)})")
        item = self._load(index)
        rng = np.random.default_rng([self.seed, index] if aug_seed is None else [self.seed, aug_seed])
        if self.hflip and rng.random() < self.hflip:
            item = hflip_item(item)
        return item


class SynthPairs(_PairDataset):
    """Synthetic pairs written by the L2M stage-2 data generator (format ``l2m-synth``, version 1).

    Layout under ``root``::

        synth_conf.yaml      the generator's resolved config: format: l2m-synth, version: 1
        pairs.jsonl          one JSON object per finished pair: {"id", "source", "size": [W, H], "depth_source"}
        pairs/<id>/image0.png, image1.png     uint8 RGB, same H x W
        pairs/<id>/geometry.npz               K0, K1 (3, 3) float64 (COLMAP pixels); T_0to1 (4, 4) float64;
                                              depth0, depth1 (H, W) float32 (0 = none); valid0, valid1
                                              (H, W) bool; warp0, warp1 (H, W, 2) float32 normalised
                                              (arbitrary where invalid)

    Args:
        root: the generator's output folder, or a list of them (their pairs are
            concatenated in the order given, e.g. one set per synthesis preset).
        size: training (height, width) (int: square); see the module docstring for
            how images, warps and intrinsics are resized.
        hflip: probability of mirroring a pair (module docstring).
        seed: seeds the augmentation (with the sampler's per-item key).
        ids: only these pair ids (default: every line of ``pairs.jsonl`` whose folder exists).
    Items: see the module docstring. Pairs listed but missing on disk are skipped
    with a warning (the generator may still be writing).
    Raises:
        DataError: missing ``synth_conf.yaml`` / ``pairs.jsonl``, another format or
            version, a malformed line, or no pair at all.
    """

    def __init__(self, root, size=(320, 320), *, hflip: float = 0.0, seed: int = 0, ids=None):
        super().__init__(size, hflip, seed)
        roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
        if not roots:
            raise DataError("data.root is an empty list: give one or more l2m-synth folders")
        self.root = roots[0]
        self.roots = roots
        self.synth_conf = None
        records = []
        for r in roots:
            conf, recs = self._read_root(r, ids)
            self.synth_conf = self.synth_conf or conf
            records += [(r, rec) for rec in recs]
        self.records = records

    @staticmethod
    def _read_root(root: Path, ids) -> tuple[dict, list[dict]]:
        """``(synth_conf, finished pair records)`` of one generator folder."""
        conf_path, list_path = root / "synth_conf.yaml", root / "pairs.jsonl"
        if not conf_path.is_file() or not list_path.is_file():
            raise DataError(
                f"{root} is not a synthetic pair set: expected {conf_path.name} and {list_path.name} "
                "(the stage-2 data generator's output folder; pass data.root=THAT_FOLDER)"
            )
        from omegaconf import OmegaConf

        try:
            conf = OmegaConf.to_container(OmegaConf.load(conf_path))
        except Exception as exc:  # omegaconf / yaml raise several types
            raise DataError(f"cannot read {conf_path} ({type(exc).__name__}: {exc})") from exc
        fmt, version = (conf or {}).get("format"), (conf or {}).get("version")
        if fmt != SYNTH_FORMAT or version != SYNTH_VERSION:
            raise DataError(
                f"{conf_path} says format={fmt!r}, version={version!r}; this loader reads "
                f"format={SYNTH_FORMAT!r}, version={SYNTH_VERSION}"
            )
        wanted = None if ids is None else set(ids)
        records, missing = [], 0

        # the generator's own reader: a last line cut by a crash is an unfinished pair (skipped),
        # so a folder that is still being written (or was interrupted) can be trained on
        try:
            listed = list_pairs(root)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        for n, rec in enumerate(listed, 1):
            try:
                pid = str(rec["id"])
            except (KeyError, TypeError) as exc:
                raise DataError(f"{list_path}: record {n} is not a pair record with an 'id' ({exc!r})") from exc
            if wanted is not None and pid not in wanted:
                continue
            d = root / "pairs" / pid
            if not all((d / f).is_file() for f in ("image0.png", "image1.png", "geometry.npz")):
                missing += 1
                continue
            records.append(rec)
        if missing:
            logger.warning("%s: %d listed pairs have no complete folder under pairs/ and are skipped", list_path, missing)
        if not records:
            raise DataError(f"{list_path} lists no complete pair under {root / 'pairs'}")
        return conf, records

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> dict:
        root, rec = self.records[index]
        d = root / "pairs" / str(rec["id"])
        try:
            with np.load(d / "geometry.npz") as g:
                geo = {k: g[k] for k in ("K0", "K1", "T_0to1", "warp0", "warp1", "valid0", "valid1")}
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{d / 'geometry.npz'} is unreadable or lacks a key ({type(exc).__name__}: {exc})") from exc
        item = {
            "image0": _read_rgb(d / "image0.png", self.size),
            "image1": _read_rgb(d / "image1.png", self.size),
            "warp0": torch.from_numpy(np.ascontiguousarray(geo["warp0"], np.float32)),
            "warp1": torch.from_numpy(np.ascontiguousarray(geo["warp1"], np.float32)),
            "valid0": torch.from_numpy(np.asarray(geo["valid0"], bool)),
            "valid1": torch.from_numpy(np.asarray(geo["valid1"], bool)),
            "K0": torch.from_numpy(np.asarray(geo["K0"], np.float64)),
            "K1": torch.from_numpy(np.asarray(geo["K1"], np.float64)),
            "T_0to1": torch.from_numpy(np.asarray(geo["T_0to1"], np.float64)),
        }
        item = resize_pair_geometry(item, self.size)
        item["id"] = str(rec["id"])
        return item


class HomographyPairs(_PairDataset):
    """Planar pairs made on the fly: two random homographic views of one photo
    (:func:`l2m_plugin.synthesis.homography.random_homography_pair`), with exact warps.

    They add what the 3D pairs of ``l2m synth`` lack: scale changes up to 2x, in-plane
    rotation and strong photometric change (issue #14 of this project; SuperPoint's
    homographic adaptation). Item ``i`` uses photo ``i % len(photos)``; the homography
    is drawn from the sampler's key, so every pass over the data sees new pairs.

    Args:
        images: folder of photos (listed as ``l2m synth`` lists them).
        size: training (height, width).
        split: "train" (default), "heldout" or "all": the ``l2m synth --split`` rule, so
            training never sees the held-out photos of the benchmarks.
        holdout_every: that rule's period (photo ``j`` of the sorted listing is held out
            when ``j % holdout_every == 0``; 10, as ``l2m synth``).
        length: items per pass (default: one per photo).
        config: :class:`~l2m_plugin.synthesis.homography.HomographyConfig`.
        max_side: photos are shrunk (area) so that their shorter side is at most this
            (speed; views are at most ``size``).
        hflip, seed: as :class:`SynthPairs`.
    Items: the module docstring's keys. ``K0``, ``K1`` and ``T_0to1`` are NaN (a
    homography pair has no camera); ``H_0to1`` (3, 3) float64 maps image 0's COLMAP
    pixels to image 1's.
    Raises:
        DataError: no photo in ``images`` for that split.
    """

    def __init__(self, images, size=(256, 256), *, split: str = "train", length: int | None = None,
                 config=None, max_side: int = 512, hflip: float = 0.0, seed: int = 0, holdout_every: int = 10):  # fmt: skip
        super().__init__(size, hflip, seed)

        self.images = Path(images)
        try:
            names = split_images(list_source_images(self.images), split, holdout_every)
        except FileNotFoundError as exc:
            raise DataError(f"data.homography.images: {exc}") from exc
        if not names:
            raise DataError(f"{self.images} has no photo in split {split!r}")
        self.names = names
        self.length = int(length) if length else len(names)
        self.config = config or HomographyConfig()
        self.max_side = int(max_side)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        index, aug_seed = _key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"pair index {index} out of range [0, {len(self)})")
        rng = np.random.default_rng([self.seed, 7, index] if aug_seed is None else [self.seed, 7, aug_seed])
        item = self._make(index % len(self.names), rng)
        if self.hflip and rng.random() < self.hflip:
            item = hflip_item(item)
        return item

    def _photo(self, name: str) -> np.ndarray:
        from PIL import Image

        path = self.images / name
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                s = self.max_side / min(im.size)
                if s < 1:
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BOX)
                return np.asarray(im)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from exc

    def _make(self, photo_index: int, rng: np.random.Generator) -> dict:

        pair = random_homography_pair(self._photo(self.names[photo_index]), self.size, rng, self.config)
        H = pair.H_0to1
        w0, v0 = homography_warp(H, self.size, self.size)
        w1, v1 = homography_warp(np.linalg.inv(H), self.size, self.size)
        nan3 = torch.full((3, 3), float("nan"), dtype=torch.float64)
        return {
            "image0": torch.from_numpy(pair.image0).permute(2, 0, 1).float() / 255,
            "image1": torch.from_numpy(pair.image1).permute(2, 0, 1).float() / 255,
            "warp0": torch.from_numpy(w0), "warp1": torch.from_numpy(w1),
            "valid0": torch.from_numpy(v0), "valid1": torch.from_numpy(v1),
            "K0": nan3, "K1": nan3.clone(), "T_0to1": torch.full((4, 4), float("nan"), dtype=torch.float64),
            "H_0to1": torch.from_numpy(H),
            "id": f"homography:{self.names[photo_index]}",
        }  # fmt: skip


class ConcatPairs(torch.utils.data.Dataset):
    """Several pair data sets as one (items keep their own keys; :class:`StepSampler`'s
    ``(index, position)`` keys are passed through, so augmentation stays reproducible).
    Only the keys every data set has are returned (``H_0to1`` is dropped when mixed)."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key) -> dict:
        index, aug = _key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"pair index {index} out of range [0, {len(self)})")
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        local = index - int(self.offsets[k])
        item = self.datasets[k][local if aug is None else (local, aug)]
        item.pop("H_0to1", None)
        return item


class MegaDepthPairs(_PairDataset):
    """MegaDepth training pairs with warps from depth (RoMa's ``MegadepthScene``, ``romatch/datasets/megadepth.py``).

    Reads scene-info files in either layout: RoMa's ``prep_scene_info/*.npy``
    (``image_paths``, ``depth_paths``, ``intrinsics``, ``poses``, ``pairs`` (N, 2),
    ``overlaps`` (N,)) or LoFTR's / MegaDepth-1500's ``*.npz`` pickles (``pair_infos``:
    ((i, j), overlap, central_matches)), read by
    :func:`l2m_plugin.eval.megadepth.read_scene_info`. Paths inside are relative to
    ``data_root``; depth maps are MegaDepth h5 files (dataset ``depth``, 0 = none).

    Per item: both images resized to ``size`` (PIL bicubic), both depth maps resized
    nearest-exact, intrinsics scaled, and ``warp0``/``warp1`` computed by
    :func:`l2m_plugin.geometry.warp_from_depth` with the other image's depth as the
    covisibility test (relative depth error <= ``rel_depth_tol``; RoMa's
    ``relative_depth_error_threshold`` = 0.05).

    Args:
        data_root: MegaDepth root (``Undistorted_SfM/``, ``phoenix/...``).
        scene_info: a scene-info file, a folder of them (``*.npy`` and ``*.npz``) or a list of files.
        size: training (height, width).
        min_overlap, max_overlap: keep pairs with min_overlap < overlap < max_overlap
            (RoMa trains on 0.01 and 0.35 lower bounds, ``train_roma_outdoor.py``).
        max_pairs_per_scene: keep the first N pairs of each scene (None: all).
        rel_depth_tol: covisibility tolerance.
        hflip, seed: augmentation (module docstring).
    Raises:
        DataError: no scene-info file, unknown layout, no pair in the overlap range.
    """

    def __init__(self, data_root, scene_info, size=(560, 560), *, min_overlap: float = 0.0,
                 max_overlap: float = 1.0, max_pairs_per_scene: int | None = None,
                 rel_depth_tol: float = 0.05, hflip: float = 0.0, seed: int = 0):  # fmt: skip
        super().__init__(size, hflip, seed)

        self.data_root = Path(data_root)
        self.rel_depth_tol = float(rel_depth_tol)
        if isinstance(scene_info, (str, Path)) and Path(scene_info).is_dir():
            files = sorted(p for p in Path(scene_info).iterdir() if p.suffix in (".npy", ".npz"))
        elif isinstance(scene_info, (str, Path)):
            files = [Path(scene_info)]
        else:
            files = [Path(p) for p in scene_info]
        if not files:
            raise DataError(f"no MegaDepth scene-info file (*.npy, *.npz) in {scene_info}")
        self.scenes, self.pairs = [], []
        for f in files:
            if not f.is_file():
                raise DataError(f"MegaDepth scene-info file {f} does not exist")
            try:
                info = read_scene_info(f)
            except Exception as exc:  # BenchmarkDataError and friends
                raise DataError(str(exc)) from exc
            if "pairs" in info and "overlaps" in info:
                cand = [((int(i), int(j)), float(o)) for (i, j), o in zip(info["pairs"], info["overlaps"], strict=True)]
            elif "pair_infos" in info:
                cand = [((int(p[0][0]), int(p[0][1])), float(p[1])) for p in info["pair_infos"]]
            else:
                raise DataError(f"{f}: neither RoMa's 'pairs'/'overlaps' nor LoFTR's 'pair_infos' in the scene info")
            cand = [c for c in cand if min_overlap < c[1] < max_overlap]
            if max_pairs_per_scene is not None:
                cand = cand[: int(max_pairs_per_scene)]
            s = len(self.scenes)
            self.scenes.append({k: info[k] for k in ("image_paths", "depth_paths", "intrinsics", "poses")} | {"file": f})
            self.pairs += [(s, i, j, o) for (i, j), o in cand]
        if not self.pairs:
            raise DataError(f"no pair with {min_overlap} < overlap < {max_overlap} in {[str(f) for f in files]}")

    def __len__(self) -> int:
        return len(self.pairs)

    def _depth(self, rel: str) -> torch.Tensor:
        import h5py

        path = self.data_root / str(rel)
        try:
            with h5py.File(path, "r") as f:
                return torch.from_numpy(np.asarray(f["depth"][()], np.float32))
        except (OSError, KeyError) as exc:
            raise DataError(f"cannot read MegaDepth depth {path} (an h5 file with dataset 'depth'): {exc}") from exc

    def _load(self, index: int) -> dict:
        from PIL import Image

        s, i, j, _ = self.pairs[index]
        sc = self.scenes[s]
        h, w = self.size
        item: dict = {}
        depths = []
        for k, idx in enumerate((i, j)):
            path = self.data_root / str(sc["image_paths"][idx])
            try:
                with Image.open(path) as im:
                    wi, hi = im.size
                    im = im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read image {path} ({exc})") from exc
            item[f"image{k}"] = resize_to_tensor(im, self.size)
            S = torch.diag(torch.tensor([w / wi, h / hi, 1.0], dtype=torch.float64))
            item[f"K{k}"] = S @ torch.as_tensor(np.asarray(sc["intrinsics"][idx], np.float64)).reshape(3, 3)
            depths.append(_resize_nearest(self._depth(sc["depth_paths"][idx]), self.size))
        T0 = np.asarray(sc["poses"][i], np.float64)
        T1 = np.asarray(sc["poses"][j], np.float64)
        T = torch.from_numpy(T1 @ np.linalg.inv(T0))
        item["T_0to1"] = T
        d0, d1 = depths[0].double(), depths[1].double()
        w0, v0 = warp_from_depth(d0, item["K0"], item["K1"], T, depth1=d1, rel_depth_tol=self.rel_depth_tol)
        w1, v1 = warp_from_depth(d1, item["K1"], item["K0"], torch.linalg.inv(T), depth1=d0, rel_depth_tol=self.rel_depth_tol)
        item.update(warp0=w0[0].float(), valid0=v0[0], warp1=w1[0].float(), valid1=v1[0])
        item["id"] = f"{Path(sc['file']).stem}:{i}-{j}"
        return item


class StepSampler(torch.utils.data.Sampler):
    """Batches indexed by training step: what step ``t`` reads depends only on ``seed`` and ``t``.

    The data are an endless stream of epochs, each a permutation of the items drawn
    from ``torch.Generator().manual_seed(seed * 1_000_003 + epoch)``; step ``t`` takes
    stream positions ``[t * B * world_size, (t + 1) * B * world_size)`` and rank ``r``
    the ``r``-th block of ``B`` of them (DistributedSampler's partition of a global
    batch, without padding, continuing across epoch ends). Each element is
    ``(index, position)``: the dataset seeds the item's augmentation with the stream
    position, so a resumed run (``start_step``) reads the same items with the same
    augmentation as an uninterrupted one.

    Args:
        num_items: data set length.
        batch_size: per process.
        seed: data-order seed.
        rank, world_size: this process and the number of processes.
        start_step: the first step to yield.
        steps: stop after this step index (exclusive); None: endless.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_step: int = 0, steps: int | None = None):  # fmt: skip
        if num_items < 1 or batch_size < 1:
            raise ValueError(f"need num_items >= 1 and batch_size >= 1, got {num_items}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        self.n, self.bs, self.seed = num_items, batch_size, seed
        self.rank, self.world = rank, world_size
        self.start, self.steps = start_step, steps
        self._perm: tuple[int, torch.Tensor] | None = None

    def _perm_of(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """The ``(index, position)`` list of this rank at ``step``."""
        first = (step * self.world + self.rank) * self.bs
        out = []
        for pos in range(first, first + self.bs):
            epoch, off = divmod(pos, self.n)
            out.append((int(self._perm_of(epoch)[off]), pos))
        return out

    def __iter__(self):
        step = self.start
        while self.steps is None or step < self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StepSampler (steps=None) has no length")
        return max(0, self.steps - self.start)
