"""Lifting: 3D Gaussian fields fitted to a few views, and the rasteriser that renders them.

- :func:`rasterize_gaussians` ``(means, quats, scales, opacities, colors, viewmats, Ks,
  width, height) -> (render_colors, render_alphas, meta)``: 3DGS EWA splatting with the
  semantics of ``gsplat.rasterization`` (gsplat 1.5.3); a differentiable pure-PyTorch
  reference (``backend="torch"``, used on the CPU) or gsplat's CUDA kernels;
- :func:`project_gaussians`: the EWA projection (2D means, covariances, conics, depths,
  radii, culling) on its own; :func:`quat_to_rotmat`.

Conventions are those of :mod:`l2m_plugin.geometry`: COLMAP pixels (centre of pixel (row
i, column j) at (j + 0.5, i + 0.5)), world-to-camera ``viewmats`` (x right, y down, z
forward), quaternions (w, x, y, z).
"""

from .rasterize import (
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    BACKENDS,
    TRANSMITTANCE_MIN,
    Projection,
    RasterBackendError,
    project_gaussians,
    quat_to_rotmat,
    rasterize_gaussians,
)

__all__ = [
    "ALPHA_MAX",
    "ALPHA_THRESHOLD",
    "BACKENDS",
    "Projection",
    "RasterBackendError",
    "TRANSMITTANCE_MIN",
    "project_gaussians",
    "quat_to_rotmat",
    "rasterize_gaussians",
]
