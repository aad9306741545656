"""The SIFT pair matcher (OpenCV): the classical baseline, through the same pair-matcher
interface as the dense matcher (:class:`l2m_plugin.matching.PairMatcher`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l2m_plugin.coords import hloc_to_pixel
from l2m_plugin.io import LoadedImage, load_image

__all__ = ["SiftPairMatcher"]


class SiftPairMatcher:
    """OpenCV SIFT + ratio test + mutual check, through the same pipeline as dense matches.

    Keypoints are detected once per image on the stored (not EXIF-rotated) grayscale
    image; OpenCV's coordinates (centres on integers) are shifted by +0.5 to COLMAP's.
    Score = 1 - (best distance / second-best distance).

    Args:
        image_dir: the image folder.
        max_features: keypoints per image (strongest first).
        ratio: Lowe's ratio-test threshold.
    """

    def __init__(self, image_dir: str | Path, *, max_features: int = 8000, ratio: float = 0.8):
        self.image_dir = Path(image_dir)
        self.max_features = max_features
        self.ratio = ratio
        self._feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._images: dict[str, LoadedImage] = {}
        self.num_encoder_passes = 0

    def settings(self) -> dict:
        return {"matcher": "sift", "max_features": self.max_features, "ratio": self.ratio}

    def image(self, name: str) -> LoadedImage:
        if name not in self._images:
            self._images[name] = load_image(self.image_dir / name, exif=False)
        return self._images[name]

    def features(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(keypoints (M, 2) COLMAP pixels, descriptors (M, 128) float32)``, cached."""
        if name not in self._feats:
            import cv2

            gray = np.asarray(self.image(name).image.convert("L"))
            sift = cv2.SIFT_create(nfeatures=self.max_features)
            kps, desc = sift.detectAndCompute(gray, None)
            xy = hloc_to_pixel(np.array([k.pt for k in kps], np.float32).reshape(-1, 2))
            desc = np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32)
            self._feats[name] = (xy, desc)
            self.num_encoder_passes += 1
        return self._feats[name]

    def forget(self, name: str) -> None:
        """Drop an image's decoded pixels and SIFT features (when it has no more pairs)."""
        self._images.pop(name, None)
        self._feats.pop(name, None)

    def global_descriptors(self, names):
        raise ValueError(
            "retrieval pairs need the L2M encoder; with --matcher sift use exhaustive, sequential:K or a pairs file"
        )

    def __call__(self, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import cv2

        (k0, d0), (k1, d1) = self.features(name0), self.features(name1)
        if len(k0) < 2 or len(k1) < 2:
            return (
                np.zeros((0, 2), np.float32),
                np.zeros((0, 2), np.float32),
                np.zeros(0, np.float32),
            )
        bf = cv2.BFMatcher(cv2.NORM_L2)
        fwd = bf.knnMatch(d0, d1, k=2)
        bwd = bf.knnMatch(d1, d0, k=1)
        best10 = {m[0].queryIdx: m[0].trainIdx for m in bwd if m}
        i0, i1, s = [], [], []
        for pair in fwd:
            if len(pair) < 2:
                continue
            a, b = pair
            if a.distance < self.ratio * b.distance and best10.get(a.trainIdx) == a.queryIdx:
                i0.append(a.queryIdx)
                i1.append(a.trainIdx)
                s.append(1.0 - a.distance / max(b.distance, 1e-12))
        i0, i1 = np.asarray(i0, np.int64), np.asarray(i1, np.int64)
        return k0[i0], k1[i1], np.asarray(s, np.float32)

    def close(self) -> None:
        self._feats.clear()
