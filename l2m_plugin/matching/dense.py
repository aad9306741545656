"""The dense pair matcher for SfM and benchmarks (L2M, or any dense matcher such as the oracle).

It produces, for a pair of image names, ``(kpts0 (N, 2), kpts1 (N, 2), scores (N,))``
in COLMAP pixel coordinates of the *stored* images (centres at i + 0.5, before EXIF
orientation), which is where COLMAP keeps keypoints. The SfM pipeline then turns
them into tracks (:mod:`l2m_plugin.sfm.tracks`).

The dense matcher encodes each image once: its encoder features (DINOv2 + VGG
pyramid at the coarse and the upsampling resolution) are kept in an LRU cache
with a memory budget; features pushed out of memory go to a disk cache and are
read back, never recomputed, so N images cost N encoder passes whatever the pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from l2m_plugin.io import LoadedImage, load_image, resize_to_tensor
from l2m_plugin.models.covisible import zoom_tile_count

__all__ = ["DensePairMatcher", "pair_seed"]

log = logging.getLogger(__name__)


def _nbytes(feats) -> int:
    if torch.is_tensor(feats):
        return feats.numel() * feats.element_size()
    if isinstance(feats, dict):
        return sum(_nbytes(v) for v in feats.values())
    return 0


def _to(feats, device):
    if torch.is_tensor(feats):
        return feats.to(device)
    if isinstance(feats, dict):
        return {k: _to(v, device) for k, v in feats.items()}
    return feats


def pair_seed(seed: int, name0: str, name1: str) -> int:
    """A per-pair seed, independent of the order in which pairs are processed."""
    return (seed * 1_000_003 + zlib.crc32(f"{name0}\0{name1}".encode())) % (2**63)


class DensePairMatcher:
    """Match image pairs with a dense matcher, encoding each image once.

    Args:
        matcher: an :class:`~l2m_plugin.models.matcher.L2M` (uses ``encode`` /
            ``match_features``) or any module with L2M's ``forward``/``sample``
            interface (e.g. :class:`~l2m_plugin.matching.oracle.OracleMatcher`; then each pair
            runs ``forward`` on the full-resolution images).
        image_dir: the image folder.
        num_matches: matches sampled per pair (balanced sampling).
        seed: sampling seed (per pair: see :func:`pair_seed`).
        exif: apply EXIF orientation before matching (keypoints are returned in the
            stored frame either way).
        memory_budget_gb: encoder features kept in memory; beyond it they spill to
            ``cache_dir``.
        cache_dir: disk cache for spilled features (default: a temporary folder).
    """

    def __init__(
        self,
        matcher,
        image_dir: str | Path,
        *,
        num_matches: int = 5000,
        seed: int = 0,
        exif: bool = True,
        memory_budget_gb: float = 4.0,
        cache_dir: str | Path | None = None,
    ):
        self.matcher = matcher
        self.image_dir = Path(image_dir)
        self.num_matches = num_matches
        self.seed = seed
        self.exif = exif
        self.memory_budget = int(memory_budget_gb * 2**30)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._tmp = None
        self._mem: OrderedDict[str, dict] = OrderedDict()
        self._on_disk: set[str] = set()
        self._images: dict[str, LoadedImage] = {}
        self.num_encoder_passes = 0
        self.can_encode = hasattr(matcher, "encode") and hasattr(matcher, "match_features")

    def settings(self) -> dict:
        """What determines the matches (stored with them; a change refuses resuming)."""
        cfg = getattr(self.matcher, "config", None)
        return {
            "matcher": "dense",
            "weights": str(getattr(self.matcher, "weights_name", type(self.matcher).__name__)),
            "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None,
            "num_matches": self.num_matches,
            "seed": self.seed,
            "exif": self.exif,
        }

    def settings_defaults(self) -> dict:
        """``{"config.FIELD": default}`` of every matcher-config field (JSON values): a store
        written before a field existed is compared as if it held the default, which keeps the
        old behaviour (:class:`~l2m_plugin.formats.pair_store.PairMatchStore` ``defaults``)."""
        cfg = getattr(self.matcher, "config", None)
        if not dataclasses.is_dataclass(cfg):
            return {}
        out = {}
        for f in dataclasses.fields(cfg):
            if f.default is not dataclasses.MISSING:
                out[f"config.{f.name}"] = json.loads(json.dumps(f.default, default=str))
        return out

    # ---------------------------------------------------------------- images
    def image(self, name: str) -> LoadedImage:
        """The loaded image (cached; ``ImageLoadError`` names the file if unreadable)."""
        if name not in self._images:
            self._images[name] = load_image(self.image_dir / name, exif=self.exif)
        return self._images[name]

    def _tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        im = self.image(name).image
        cfg = getattr(self.matcher, "config", None)
        device = self.matcher.device
        if cfg is None:
            x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
            return x.to(device), None
        x = resize_to_tensor(im, cfg.coarse_res)[None].to(device)
        up = (
            resize_to_tensor(im, cfg.upsample_res)[None].to(device)
            if cfg.upsample_res is not None
            else None
        )
        return x, up

    # ---------------------------------------------------------------- feature cache
    def _disk_path(self, name: str) -> Path:
        if self._cache_dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="l2m_features_")
            self._cache_dir = Path(self._tmp.name)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        return self._cache_dir / (hashlib.sha1(name.encode()).hexdigest() + ".pt")

    def features(self, name: str) -> dict:
        """Encoder features of one image (computed once; LRU in memory, spilled to disk)."""
        if name in self._mem:
            self._mem.move_to_end(name)
            return self._mem[name]
        if name in self._on_disk:
            feats = _to(torch.load(self._disk_path(name), weights_only=True), self.matcher.device)
        else:
            x, up = self._tensors(name)
            with torch.inference_mode():
                feats = self.matcher.encode(x, up)
            feats["size"] = self.image(name).size
            self.num_encoder_passes += 1
        self._mem[name] = feats
        self._evict(keep=name)
        return feats

    def _evict(self, keep: str) -> None:
        total = sum(_nbytes(f) for f in self._mem.values())
        while total > self.memory_budget and len(self._mem) > 2:
            name, feats = next(iter(self._mem.items()))
            if name == keep:
                self._mem.move_to_end(name)
                continue
            if name not in self._on_disk:
                torch.save(_to(feats, "cpu"), self._disk_path(name))
                self._on_disk.add(name)
            del self._mem[name]
            total -= _nbytes(feats)

    def forget(self, name: str) -> None:
        """Drop an image's decoded pixels and in-memory features (when it has no more pairs)."""
        self._mem.pop(name, None)
        self._images.pop(name, None)

    def global_descriptors(self, names: list[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised global descriptors for retrieval.

        GeM pooling (p = 3) of the encoder's DINOv2 patch features (stride 14, the
        ``16`` level), then L2 normalisation: no extra network. Encodes the images
        into the same cache used for matching.
        """
        if not self.can_encode:
            raise ValueError("retrieval pairs need an L2M encoder (the matcher has no encode())")
        out = []
        for name in names:
            coarse = self.features(name)["coarse"]
            f = coarse[max(coarse)].float()  # 16 (DINOv2), or 8 for a network without stride-16 features
            d = f.clamp(min=1e-6).pow(3).mean(dim=(-2, -1)).pow(1 / 3)[0]
            out.append(torch.nn.functional.normalize(d, dim=0).cpu().numpy())
        return np.stack(out)

    # ---------------------------------------------------------------- matching
    @torch.inference_mode()
    def __call__(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Match one pair: ``(kpts0, kpts1, scores)`` COLMAP pixels in the stored images."""
        return self.match_samples(name0, name1, 1)[0]

    @torch.inference_mode()
    def match_samples(self, name0: str, name1: str, num_samples: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``num_samples`` independent draws of ``num_matches`` from one dense match of the pair.

        The first draw is what :meth:`__call__` returns (one generator, seeded by
        :func:`pair_seed`, drawn from in sequence). RoMa's MegaDepth benchmark draws
        new matches for each of its RANSAC runs.
        """
        ims = (self.image(name0), self.image(name1))
        if self.can_encode:
            out = self.matcher.match_features(self.features(name0), self.features(name1))
            cfg = getattr(self.matcher, "config", None)
            if getattr(cfg, "covisible_crop", False):  # the second pass, on crops of the full images
                full = [resize_to_tensor(im.image, im.image.size[::-1])[None].to(self.matcher.device) for im in ims]
                out = self.matcher.covisible_pass(out, *full)
                self.num_encoder_passes += sum(bx is not None for bx in out["covisible_boxes"]) * 2
                sides = 2 if "warp1" in out else 1  # the scale search: one pass per factor and side
                self.num_encoder_passes += len(getattr(cfg, "covisible_scales", ())) * sides * 2
                tiles = sum(zoom_tile_count(z) for z in getattr(cfg, "covisible_zooms", ()))
                self.num_encoder_passes += tiles * sides * 2 * sum(out.get("covisible_zoom_searched", ()))
        else:
            (x0, _), (x1, _) = self._tensors(name0), self._tensors(name1)
            out = self.matcher({"image0": x0, "image1": x1})
            self.num_encoder_passes += 2
        out["size0"], out["size1"] = ims[0].size, ims[1].size
        out["images"] = ims
        g = torch.Generator(device="cpu").manual_seed(pair_seed(self.seed, name0, name1))
        if out["warp0"].device.type != "cpu":
            out = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in out.items()}
        draws = []
        for _ in range(num_samples):
            m = self.matcher.sample(out, self.num_matches, generator=g)
            draws.append((
                m["keypoints0"].cpu().numpy().astype(np.float32),
                m["keypoints1"].cpu().numpy().astype(np.float32),
                m["certainty"].cpu().numpy().astype(np.float32),
            ))  # fmt: skip
        return draws

    def close(self) -> None:
        self._mem.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
