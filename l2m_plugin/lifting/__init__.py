"""Lifting single photos to 3D feature-Gaussian fields: the data of L2M stage 1.

L2M (ICCV 2025, Sec. 3.2) makes its encoder 3D-aware from single-view images: a photo is
lifted with its depth, novel views are synthesised, a field of 3D Gaussians carrying
low-dimensional features is fitted to the frozen encoder's features of every view
(FiT3D, Yue et al. ECCV 2024), and the features rendered from it become the encoder's
fine-tuning targets (:mod:`l2m_plugin.training.stage1`).

- :func:`rasterize_gaussians` ``(means, quats, scales, opacities, colors, viewmats, Ks,
  width, height) -> (render_colors, render_alphas, meta)``: 3DGS EWA splatting with the
  semantics of ``gsplat.rasterization`` (gsplat 1.5.3); a differentiable pure-PyTorch
  reference (``backend="torch"``, used on the CPU) or gsplat's CUDA kernels;
  :func:`blend_weights`, the same compositing as a sparse matrix (fixed geometry);
  :func:`project_gaussians`: the EWA projection on its own; :func:`quat_to_rotmat`;
- :func:`synthesize_views` / :class:`SceneViews`: several views of one lifted photo;
- :class:`FeatureGaussians`, :class:`FeatureField`: the field and its up-projector;
- :func:`fit_scene`, :class:`FitConfig`, :class:`FittedScene`: fitting and rendering targets;
- :func:`lift_photos`, :class:`LiftedViews`: lifted scenes on disk and their data set.

Conventions of :mod:`l2m_plugin.geometry`: COLMAP pixels (centre of pixel (row i, column
j) at (j + 0.5, i + 0.5)), world = camera 0 of the source photo, ``T_0to[v]`` camera 0 ->
camera v, z-depth in the depth map's units.
"""

from l2m_plugin.lifting.dataset import LiftedViews, encoder_level_features, lift_photos
from l2m_plugin.lifting.fit import FitConfig, FittedScene, fit_scene, scale_intrinsics
from l2m_plugin.lifting.gaussians import FeatureField, FeatureGaussians
from l2m_plugin.lifting.rasterize import (
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    BACKENDS,
    TRANSMITTANCE_MIN,
    Projection,
    RasterBackendError,
    blend_weights,
    project_gaussians,
    quat_to_rotmat,
    rasterize_gaussians,
)
from l2m_plugin.lifting.views import SceneViews, synthesize_views

__all__ = [
    "ALPHA_MAX",
    "ALPHA_THRESHOLD",
    "BACKENDS",
    "Projection",
    "RasterBackendError",
    "TRANSMITTANCE_MIN",
    "rasterize_gaussians",
    "blend_weights",
    "project_gaussians",
    "quat_to_rotmat",
    "SceneViews",
    "synthesize_views",
    "FeatureGaussians",
    "FeatureField",
    "FitConfig",
    "FittedScene",
    "fit_scene",
    "scale_intrinsics",
    "lift_photos",
    "LiftedViews",
    "encoder_level_features",
]
