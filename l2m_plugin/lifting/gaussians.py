"""A field of 3D Gaussians that carry a colour and a low-dimensional feature vector.

The representation of 3D Gaussian splatting (Kerbl et al., SIGGRAPH 2023) with FiT3D's
feature channels (Yue et al., ECCV 2024): each Gaussian has a mean, an anisotropic scale,
a rotation, an opacity, an RGB colour and ``feature_dim`` feature channels, and the field
is rendered by :func:`~l2m_plugin.lifting.rasterize.rasterize_gaussians` (gsplat on CUDA,
the reference rasteriser elsewhere). A learned 1x1 up-projection (:class:`FeatureField`)
maps rendered features to the encoder's width, as FiT3D's up-projector does.

Coordinates: the world frame is the source camera's (camera 0), z forward, in the depth
map's units; pixels in COLMAP convention (centre of pixel (i, j) at (j + 0.5, i + 0.5)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from l2m_plugin.coords import index_to_pixel
from l2m_plugin.lifting.rasterize import FixedBlend, rasterize_gaussians

__all__ = ["FeatureGaussians", "FeatureField"]


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class FeatureGaussians(nn.Module):
    """N Gaussians with colour and features; every attribute is a trained parameter.

    Parameters (activations as in 3DGS): ``means`` (N, 3) world units; ``log_scales``
    (N, 3), scales = exp; ``quats`` (N, 4) (w, x, y, z), normalised by the rasteriser;
    ``opacity_logits`` (N,), opacity = sigmoid; ``color_logits`` (N, 3), RGB in [0, 1] =
    sigmoid; ``features`` (N, feature_dim), unconstrained.
    """

    def __init__(self, means: torch.Tensor, scales: torch.Tensor, colors: torch.Tensor,
                 feature_dim: int, opacity: float = 0.8) -> None:  # fmt: skip
        super().__init__()
        n = means.shape[0]
        if means.shape != (n, 3) or scales.shape not in ((n,), (n, 3)) or colors.shape != (n, 3):
            raise ValueError(f"means (N, 3), scales (N,) or (N, 3), colors (N, 3); got {tuple(means.shape)}, "
                             f"{tuple(scales.shape)}, {tuple(colors.shape)}")  # fmt: skip
        if not 0.0 < opacity < 1.0:
            raise ValueError(f"opacity must be in (0, 1), got {opacity}")
        scales = scales if scales.ndim == 2 else scales[:, None].expand(n, 3)
        f32 = dict(dtype=torch.float32)
        self.means = nn.Parameter(means.to(**f32).clone())
        self.log_scales = nn.Parameter(scales.to(**f32).clamp_min(1e-8).log())
        quats = torch.zeros(n, 4, **f32)
        quats[:, 0] = 1.0
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(torch.full((n,), _logit(opacity), **f32))
        c = colors.to(**f32).clamp(1e-3, 1 - 1e-3)
        self.color_logits = nn.Parameter(torch.log(c / (1 - c)))
        self.features = nn.Parameter(torch.zeros(n, int(feature_dim), **f32))

    @classmethod
    def from_depth(cls, image: np.ndarray, depth: np.ndarray, K: np.ndarray, *, stride: int = 4,
                   feature_dim: int = 16, opacity: float = 0.8, scale_factor: float = 1.0) -> FeatureGaussians:  # fmt: skip
        """Gaussians at the back-projected centres of every ``stride``-th pixel with depth.

        A Gaussian sits at the 3D point of the centre of the ``stride`` x ``stride`` block
        it stands for (pixel (i, j) of the block grid: image point ``(stride * (j + 0.5),
        stride * (i + 0.5))``, depth sampled there), is isotropic with standard deviation
        ``scale_factor * stride * z / f`` (the block's footprint at that depth), has the
        block's mean colour and zero features.

        Args:
            image: (H, W, 3) uint8 RGB of the source view.
            depth: (H, W) float z-depth (<= 0: no surface, no Gaussian).
            K: (3, 3) intrinsics of the source view (COLMAP pixels).
        Raises:
            ValueError: bad shapes, or no pixel with depth.
        """
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        z = torch.from_numpy(np.asarray(depth, np.float32))[None, None]
        if img.shape[-2:] != z.shape[-2:]:
            raise ValueError(f"depth {tuple(z.shape[-2:])} and image {tuple(img.shape[-2:])} sizes differ")
        s = int(stride)
        h, w = z.shape[-2] // s, z.shape[-1] // s
        if h < 1 or w < 1:
            raise ValueError(f"stride {s} is larger than the image {tuple(z.shape[-2:])}")
        colors = F.adaptive_avg_pool2d(img[..., : h * s, : w * s], (h, w))[0].permute(1, 2, 0).reshape(-1, 3)
        # depth at the block centre (nearest pixel; an even stride has no centre pixel: the
        # block's median keeps depth edges sharp)
        zb = z[..., : h * s, : w * s].reshape(h, s, w, s).permute(0, 2, 1, 3).reshape(h, w, s * s)
        valid_px = zb > 0
        zc = torch.where(valid_px, zb, torch.nan).nanmedian(dim=-1).values
        zc = torch.nan_to_num(zc, nan=0.0).reshape(-1)
        keep = zc > 0
        if not bool(keep.any()):
            raise ValueError("no pixel has depth > 0: nothing to lift")
        jj, ii = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
        u = index_to_pixel(jj.reshape(-1).double()) * s
        v = index_to_pixel(ii.reshape(-1).double()) * s
        Kt = torch.as_tensor(np.asarray(K, np.float64))
        x = (u - Kt[0, 2]) / Kt[0, 0]
        y = (v - Kt[1, 2]) / Kt[1, 1]
        zd = zc.double()
        means = torch.stack((x * zd, y * zd, zd), -1)[keep]
        scales = (float(scale_factor) * s * zd / Kt[0, 0])[keep]
        return cls(means.float(), scales.float(), colors[keep], feature_dim, opacity)

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def activated(self) -> dict[str, torch.Tensor]:
        """The rasteriser's inputs: means, quats, scales, opacities (N,), colors (N, 3)."""
        return {
            "means": self.means,
            "quats": self.quats,
            "scales": self.log_scales.exp(),
            "opacities": torch.sigmoid(self.opacity_logits),
            "colors": torch.sigmoid(self.color_logits),
        }

    def render(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int, *,
               backend: str = "auto", with_features: bool = True,
               features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Render colour (and features) for C cameras in one pass.

        Args:
            viewmats: (C, 4, 4) world(camera 0)-to-camera transforms (``T_0to``).
            Ks: (C, 3, 3) intrinsics of the render size (COLMAP pixels).
            width, height: render size in pixels.
        Returns:
            ``rgb`` (C, 3, H, W) in [0, 1] over a black background, ``alpha`` (C, 1, H, W),
            and with ``with_features`` ``features`` (C, feature_dim, H, W).
        ``features``: (N, F) per-Gaussian features to render instead of ``self.features``
        (:class:`FeatureField` with a feature texture).
        """

        a = self.activated()
        feats = self.features if features is None else features
        colors = torch.cat((a["colors"], feats), 1) if with_features else a["colors"]
        out, alpha, _ = rasterize_gaussians(
            a["means"], a["quats"], a["scales"], a["opacities"], colors, viewmats.float(), Ks.float(),
            int(width), int(height), backend=backend,
        )  # fmt: skip
        out = out.permute(0, 3, 1, 2)
        res = {"rgb": out[:, :3], "alpha": alpha.permute(0, 3, 1, 2)}
        if with_features:
            res["features"] = out[:, 3:]
        return res


class FeatureField(nn.Module):
    """:class:`FeatureGaussians` plus FiT3D's up-projection of rendered features, and
    optionally a feature texture.

    ``upproject`` is a 1x1 convolution ``feature_dim -> out_dim`` (a per-scene linear map;
    FiT3D learns a small up-projector jointly with the Gaussians): rendered low-dimensional
    features become features of the encoder's width.

    With ``texture`` (a sparse (N, L) matrix, rows summing to 1) the Gaussians carry no
    features of their own: a Gaussian's feature is ``texture @ latent``, an interpolation
    of L latent features laid on the source view at the encoder's resolution
    (:func:`~l2m_plugin.lifting.fit.texture_weights`). Far fewer unknowns than Gaussians
    makes the fit a consensus of the views instead of a per-view copy (see
    :func:`~l2m_plugin.lifting.fit_scene`).
    """

    def __init__(self, gaussians: FeatureGaussians, out_dim: int, texture: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gaussians = gaussians
        self.upproject = nn.Conv2d(gaussians.feature_dim, int(out_dim), 1)
        self.texture = texture
        self.latent = None
        if texture is not None:
            if texture.shape[0] != len(gaussians):
                raise ValueError(f"texture must be (N={len(gaussians)}, L), got {tuple(texture.shape)}")
            self.latent = nn.Parameter(torch.zeros(texture.shape[1], gaussians.feature_dim))
            self._texture_t = texture.to_sparse_coo().t().coalesce().to_sparse_csr()
            gaussians.features.requires_grad_(False)

    def gaussian_features(self) -> torch.Tensor:
        """(N, feature_dim): each Gaussian's feature (its own, or from the texture)."""
        if self.texture is None:
            return self.gaussians.features

        return FixedBlend.apply(self.latent, self.texture, self._texture_t)

    def forward(self, viewmats, Ks, width: int, height: int, *, backend: str = "auto") -> dict[str, torch.Tensor]:
        """:meth:`FeatureGaussians.render` plus ``encoder_features`` (C, out_dim, H, W) =
        the up-projected rendered features (not divided by alpha: zero far from the surface)."""
        out = self.gaussians.render(viewmats, Ks, width, height, backend=backend, features=self.gaussian_features())
        out["encoder_features"] = self.upproject(out["features"])
        return out
