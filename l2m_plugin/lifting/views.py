"""Several synthetic views of one photo lifted with its depth: the input of a feature field.

L2M's stage 1 (ICCV 2025, Sec. 3.2) lifts a single photo to 3D with a depth map, renders
novel views of it, and fits a 3D feature-Gaussian field to those views (FiT3D, Yue et
al. ECCV 2024, does the same with real multi-view scenes). The views come from the
stage-2 generator (:func:`l2m_plugin.synthesis.synthesize_pair`): one focal length for
the source camera, one sampled camera motion, zoom, relighting and jitter per view, so
the views differ in viewpoint and appearance but show one surface.

Conventions are those of :mod:`l2m_plugin.geometry`: COLMAP pixels (the centre of pixel
(row i, column j) at (j + 0.5, i + 0.5)), ``T_0to[v]`` maps camera-0 (source) coordinates
to camera v, z-depth in scene units (near surface ~1) with 0 = no surface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from l2m_plugin.synthesis import SynthConfig, synthesize_pair
from l2m_plugin.synthesis.pair import sample_intrinsics

__all__ = ["SceneViews", "synthesize_views"]

logger = logging.getLogger(__name__)


@dataclass
class SceneViews:
    """V views of one lifted photo; view 0 is the source photo itself (no appearance change).

    Attributes (H, W: the size of every view):
        images: (V, H, W, 3) uint8 RGB.
        Ks: (V, 3, 3) float64 intrinsics, COLMAP pixels.
        T_0to: (V, 4, 4) float64, camera-0 -> camera-v (``T_0to[0]`` is the identity).
        masks: (V, H, W) bool, the pixel shows the lifted surface (not an inpainted hole,
            not sky, not a pixel without depth).
        depth0: (H, W) float32 z-depth of the source view (0 = no surface).
        info: per-view records of what was drawn (from the generator).
    """

    images: np.ndarray
    Ks: np.ndarray
    T_0to: np.ndarray
    masks: np.ndarray
    depth0: np.ndarray
    info: list

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of every view."""
        return int(self.images.shape[2]), int(self.images.shape[1])


def synthesize_views(image: np.ndarray, depth: np.ndarray, num_views: int, conf=None, rng=None, *,
                     sky_mask: np.ndarray | None = None) -> SceneViews:  # fmt: skip
    """The source photo plus ``num_views - 1`` novel views of its lifted surface.

    The source focal length is drawn once (``conf.camera.focal_range``, as the generator
    does); each novel view then draws its own motion, zoom, lights and jitter through
    :func:`~l2m_plugin.synthesis.synthesize_pair` with that ``K0``, so every view is a
    rendering of the same mesh.

    Args:
        image: (H, W, 3) uint8 RGB.
        depth: (H, W) float z-depth at the pixel centres (<= 0 or non-finite: no surface).
        num_views: V >= 2, the source included.
        conf: :class:`~l2m_plugin.synthesis.SynthConfig` (default: the ``l2m`` preset).
        rng: ``numpy.random.Generator`` or int seed (default 0).
        sky_mask: optional (H, W) bool, True = sky (no surface).
    Returns:
        :class:`SceneViews`.
    Raises:
        ValueError: ``num_views < 2`` or bad shapes.
        l2m_plugin.synthesis.SynthesisError: no surface, or no view could be rendered.
    """

    if int(num_views) < 2:
        raise ValueError(f"num_views must be >= 2 (the source and at least one novel view), got {num_views}")
    conf = conf if conf is not None else SynthConfig()
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng or 0)
    img = np.asarray(image)
    z = np.asarray(depth, np.float32)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if z.shape != img.shape[:2]:
        raise ValueError(f"depth must have the image's shape {img.shape[:2]}, got {z.shape}")
    h, w = z.shape
    K0, _, cam = sample_intrinsics((w, h), conf.camera, rng)
    z = np.where(np.isfinite(z) & (z > 0), z, 0.0).astype(np.float32)
    if sky_mask is not None:
        z = np.where(np.asarray(sky_mask, bool), 0.0, z).astype(np.float32)
    images, Ks, Ts, masks, info = [img], [K0], [np.eye(4)], [z > 0], [{"view": 0, **cam}]
    for v in range(1, int(num_views)):
        pair = synthesize_pair(img, z, conf, rng, K0=K0)
        images.append(pair.image1)
        Ks.append(pair.K1)
        Ts.append(pair.T_0to1)
        masks.append(pair.depth1 > 0)
        info.append({"view": v, **{k: pair.info[k] for k in ("zoom", "model", "covisible") if k in pair.info}})
    return SceneViews(
        images=np.stack(images), Ks=np.stack(Ks).astype(np.float64), T_0to=np.stack(Ts).astype(np.float64),
        masks=np.stack(masks), depth0=z, info=info,
    )  # fmt: skip
