"""Pair matchers for the benchmarks, all with one interface (see :mod:`l2m_plugin.eval.base`).

- ``l2m``: :class:`l2m_plugin.matching.dense.DensePairMatcher` (any L2M weights; each
  image encoded once);
- ``sift``: :class:`l2m_plugin.matching.dense.SiftPairMatcher` (OpenCV SIFT, ratio test,
  mutual check);
- ``oracle``: :class:`GroundTruthPairMatcher`, matches sampled from the ground-truth
  warp (depth + poses, or the homography) or from a benchmark's exact sparse
  correspondences (a COLMAP model's shared observations), to validate a harness end to end;
- ``random``: :class:`RandomPairMatcher`, uniform random keypoints in both images (the
  floor every metric must show: about 0);
- ``loftr`` / ``disk``: :class:`KorniaPairMatcher` (kornia's LoFTR, or DISK with
  mutual nearest neighbours), with weights from a local file or kornia's download.

Every matcher returns ``(kpts0, kpts1, scores)``: (N, 2) float32 COLMAP pixel
coordinates (pixel centres at i + 0.5) in the images as stored (no EXIF rotation:
the benchmarks' intrinsics and homographies refer to the stored grid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from l2m_plugin.coords import hloc_to_pixel
from l2m_plugin.io import LoadedImage, load_image
from l2m_plugin.matching.dense import pair_seed
from l2m_plugin.sampling import sample_matches

__all__ = ["GroundTruthPairMatcher", "KorniaPairMatcher", "RandomPairMatcher"]


class _ImageCache:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._images: dict[str, LoadedImage] = {}

    def image(self, name: str) -> LoadedImage:
        if name not in self._images:
            self._images[name] = load_image(self.root / name, exif=False)
        return self._images[name]

    def forget(self, name: str) -> None:
        self._images.pop(name, None)

    def close(self) -> None:
        self._images.clear()


class GroundTruthPairMatcher(_ImageCache):
    """The oracle: ``num_matches`` matches drawn from a benchmark's ground truth.

    Args:
        benchmark: a :class:`~l2m_plugin.eval.base.Benchmark` with ground truth:
            ``ground_truth_warp`` (depth maps and poses, or homographies), or
            ``ground_truth_matches(pair) -> (kpts0, kpts1)`` (exact sparse
            correspondences in COLMAP pixels, e.g. a COLMAP model's shared observations),
            which takes precedence.
        num_matches: matches per pair, drawn uniformly among the pixels where the
            ground truth is valid (both directions), or among the sparse
            correspondences without replacement (all of them when there are fewer).
        seed: sampling seed (per pair: :func:`l2m_plugin.matching.dense.pair_seed`).
    Raises:
        ValueError: the benchmark has no ground truth (ZEB).
    """

    def __init__(self, benchmark, num_matches: int = 5000, seed: int = 0):
        benchmark.require_ground_truth()
        super().__init__(benchmark.image_root)
        self.benchmark = benchmark
        self.num_matches = num_matches
        self.seed = seed
        self._pairs = {(p.name0, p.name1): p for p in benchmark.pairs()}

    def settings(self) -> dict:
        return {"matcher": "oracle", "num_matches": self.num_matches, "seed": self.seed}

    def __call__(self, name0: str, name1: str):
        return self.match_samples(name0, name1, 1)[0]

    def match_samples(self, name0: str, name1: str, num_samples: int):
        """``num_samples`` independent draws from the ground truth (the first is ``__call__``'s)."""
        pair = self._pairs[(name0, name1)]
        if hasattr(self.benchmark, "ground_truth_matches"):
            return self._sparse_samples(pair, num_samples)
        s0, s1 = self.image(name0).size, self.image(name1).size
        w0, v0, w1, v1 = self.benchmark.ground_truth_warp(pair, s0, s1)
        out = {
            "warp0": w0[None], "certainty0": v0[None].float(),
            "warp1": w1[None], "certainty1": v1[None].float(),
            "size0": s0, "size1": s1,
        }  # fmt: skip
        g = torch.Generator().manual_seed(pair_seed(self.seed, name0, name1))
        draws = []
        for _ in range(num_samples):
            # uniform over the valid pixels (no density balancing: the ground truth has no clusters to undo)
            m = sample_matches(out, self.num_matches, 0.5, generator=g, balanced=False)
            draws.append(tuple(m[k].numpy().astype(np.float32) for k in ("keypoints0", "keypoints1", "certainty")))
        return draws

    def _sparse_samples(self, pair, num_samples: int):
        k0, k1 = self.benchmark.ground_truth_matches(pair)
        rng = np.random.default_rng(pair_seed(self.seed, pair.name0, pair.name1))
        draws = []
        for _ in range(num_samples):
            sel = rng.permutation(len(k0))[: self.num_matches]
            draws.append((k0[sel].astype(np.float32), k1[sel].astype(np.float32), np.ones(len(sel), np.float32)))
        return draws


class RandomPairMatcher(_ImageCache):
    """Uniform random keypoints in both images, paired at random: the chance level of a metric.

    Args:
        image_root: the benchmark's image folder (read for the image sizes only).
        num_matches: matches per pair.
        seed: per pair :func:`l2m_plugin.matching.dense.pair_seed`.
    Returns (``__call__``): (N, 2) float32 COLMAP pixels uniform in [0, W] x [0, H] of
    each image, scores uniform in [0, 1).
    """

    def __init__(self, image_root, num_matches: int = 5000, seed: int = 0):
        super().__init__(image_root)
        self.num_matches = int(num_matches)
        self.seed = seed

    def settings(self) -> dict:
        return {"matcher": "random", "num_matches": self.num_matches, "seed": self.seed}

    def __call__(self, name0: str, name1: str):
        rng = np.random.default_rng(pair_seed(self.seed, name0, name1))
        (w0, h0), (w1, h1) = self.image(name0).size, self.image(name1).size
        n = self.num_matches
        k0 = rng.uniform(0, 1, (n, 2)) * (w0, h0)
        k1 = rng.uniform(0, 1, (n, 2)) * (w1, h1)
        return k0.astype(np.float32), k1.astype(np.float32), rng.uniform(0, 1, n).astype(np.float32)


class KorniaPairMatcher(_ImageCache):
    """kornia's LoFTR, or DISK + mutual nearest neighbours, on the benchmark images.

    Args:
        data_root: the benchmark's image root.
        kind: ``"loftr"`` or ``"disk"``.
        weights: a local checkpoint (a state dict, or kornia's download format with
            ``state_dict`` / ``extractor``), or a kornia pretrained name (``outdoor``
            / ``indoor`` for LoFTR, ``depth`` / ``epipolar`` for DISK), downloaded
            into the torch hub cache (fails offline with a clear error).
        resize: long side in pixels the image is resized to (LoFTR: 840 on MegaDepth,
            640 on ScanNet; DISK: 1024), rounded down to a multiple of 8 (16 for DISK).
        max_keypoints: DISK keypoints per image.
        device: torch device.
    Raises:
        RuntimeError: the weights cannot be loaded (message names the file or URL).
    """

    def __init__(self, data_root, kind: str = "loftr", weights: str = "outdoor", *, resize: int = 840,
                 max_keypoints: int = 2048, device: str = "cpu"):  # fmt: skip
        super().__init__(data_root)
        import kornia.feature as KF

        if kind not in ("loftr", "disk"):
            raise ValueError(f"kind must be 'loftr' or 'disk', got {kind!r}")
        self.kind, self.weights, self.resize = kind, str(weights), int(resize)
        self.max_keypoints = max_keypoints
        self.device = torch.device(device)
        local = Path(self.weights).expanduser()
        try:
            if local.is_file():
                sd = torch.load(local, map_location="cpu", weights_only=True)
                sd = sd.get("state_dict", sd.get("extractor", sd)) if isinstance(sd, dict) else sd
                self.model = KF.LoFTR(pretrained=None) if kind == "loftr" else KF.DISK()
                self.model.load_state_dict(sd)
            elif kind == "loftr":
                self.model = KF.LoFTR(pretrained=self.weights)
            else:
                self.model = KF.DISK.from_pretrained(self.weights)
        except Exception as e:
            raise RuntimeError(
                f"could not load {kind} weights {self.weights!r} ({e}); offline, pass a local checkpoint file"
            ) from e
        self.model = self.model.eval().to(self.device)

    def settings(self) -> dict:
        return {"matcher": self.kind, "weights": self.weights, "resize": self.resize, "max_keypoints": self.max_keypoints}

    def _tensor(self, name: str, gray: bool) -> tuple[torch.Tensor, tuple[float, float]]:
        im = self.image(name).image
        w, h = im.size
        mult = 8 if self.kind == "loftr" else 16
        s = self.resize / max(w, h)
        nw, nh = max(mult, int(w * s) // mult * mult), max(mult, int(h * s) // mult * mult)
        im = im.resize((nw, nh), resample=3)
        if gray:
            im = im.convert("L")
        x = torch.from_numpy(np.asarray(im, np.float32) / 255.0)
        x = x[None] if gray else x.permute(2, 0, 1)
        return x[None].to(self.device), (w / nw, h / nh)

    @torch.inference_mode()
    def __call__(self, name0: str, name1: str):
        if self.kind == "loftr":
            (x0, s0), (x1, s1) = self._tensor(name0, True), self._tensor(name1, True)
            out = self.model({"image0": x0, "image1": x1})
            k0, k1, c = out["keypoints0"], out["keypoints1"], out["confidence"]
            # kornia's LoFTR keypoints have pixel centres at i + 0.5 (COLMAP frame, see
            # l2m_plugin.integrations.kornia), so scaling the axes maps them exactly.
        else:
            import kornia.feature as KF

            (x0, s0), (x1, s1) = self._tensor(name0, False), self._tensor(name1, False)
            f0, f1 = self.model(torch.cat((x0, x1)), n=self.max_keypoints, pad_if_not_divisible=True)
            dist, idx = KF.match_mnn(f0.descriptors, f1.descriptors)
            # DISK keypoints are pixel indices (centres on integers), to COLMAP's convention
            k0 = hloc_to_pixel(f0.keypoints[idx[:, 0]])
            k1 = hloc_to_pixel(f1.keypoints[idx[:, 1]])
            c = 1.0 - dist[:, 0]
        k0 = (k0.cpu().double() * torch.tensor(s0, dtype=torch.float64)).numpy().astype(np.float32)
        k1 = (k1.cpu().double() * torch.tensor(s1, dtype=torch.float64)).numpy().astype(np.float32)
        return k0, k1, c.float().cpu().numpy()
