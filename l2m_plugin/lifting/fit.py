"""Fit a feature-Gaussian field to the views of one lifted photo (L2M stage 1, FiT3D lifting).

L2M (ICCV 2025, Sec. 3.2) makes its encoder 3D-aware the way FiT3D (Yue et al., ECCV 2024,
"Improving 2D Feature Representations by 3D-Aware Fine-Tuning") does, with views
synthesised from one photo instead of a captured scene: Gaussians carrying a colour and
a low-dimensional feature are fitted so that, rendered into every view, their colours
reproduce the view (L1 + D-SSIM, the 3DGS photometric loss) and their up-projected
features reproduce the frozen encoder's features of that view (L1). Each Gaussian holds
one feature for all views, so the rendered features are a multi-view-consistent version
of the encoder's: they are the regression targets of the encoder's fine-tuning.

Differences from FiT3D, chosen for single photos on a CPU:
- The Gaussians start on the exact surface (the depth that made the views), one per
  ``stride`` x ``stride`` block of the source view; there is no densification or
  pruning (3DGS adaptive density control): the geometry is known, only appearance,
  features and small geometric corrections are fitted.
- The features start from a PCA of the source view's encoder features (the up-projector
  from its basis and mean), so a few hundred Adam iterations suffice.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from l2m_plugin.coords import index_to_pixel, pixel_to_index
from l2m_plugin.lifting.gaussians import FeatureField, FeatureGaussians
from l2m_plugin.lifting.rasterize import FixedBlend, blend_weights
from l2m_plugin.lifting.views import SceneViews

__all__ = ["FitConfig", "FittedScene", "fit_scene", "scale_intrinsics", "texture_weights"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_scene` (defaults: ours, for CPU; sources in comments).

    Attributes:
        stride: one Gaussian per ``stride`` x ``stride`` block of the source view.
        feature_dim: feature channels per Gaussian (FiT3D: a few dozen, up-projected).
        feature_stride: the Gaussians' features come from a texture of latent features
            every ``feature_stride`` source pixels (bilinear; :class:`FeatureField`).
            ``None``: the encoder's cell size in the source view (``W / w``), so the field
            has as many feature unknowns as one view has feature cells, and V views
            over-determine it: the fit is their consensus. 0: a free feature per
            Gaussian (FiT3D; with many more Gaussians than cells it can reproduce each
            view's features separately, i.e. no consensus, unless there are many views).
        render_scale: render size / view size (the colour loss runs at that size).
        feature_render_factor: render cells per encoder feature cell along each axis; the
            rendered, up-projected features are average-pooled by it to the encoder's grid.
            The render size is the feature grid times this factor (``render_scale`` is then
            only used for the colour loss when both are set: the larger size wins).
        iters: Adam iterations.
        lr_means: position step per unit of scene depth (3DGS: 1.6e-4 x scene extent).
        lr_scales, lr_quats, lr_opacity: 3DGS's values (5e-3, 1e-3, 5e-2).
        lr_colors: for the sigmoid-parametrised colour (ours; 3DGS: 2.5e-3 on SH).
        lr_features, lr_upproject: ours.
        lambda_dssim: weight of D-SSIM in the colour loss (3DGS: 0.2).
        color_weight, feature_weight: weights of the two losses.
        valid_alpha: rendered opacity (pooled to the feature grid) above which a target
            cell is kept.
        fit_geometry: also fit positions, scales, rotations and opacities (full 3DGS
            fitting through the rasteriser at every iteration). ``False`` (default) keeps
            the initial geometry, which is exact for synthesised views: every view's
            rendering is then a fixed sparse blend of the Gaussians' colours and features
            (:func:`~l2m_plugin.lifting.rasterize.blend_weights`, computed once), and only
            colours, features and the up-projector are fitted: the same optimum for those,
            about two orders of magnitude faster on a CPU.
        backend: rasteriser (``auto``: gsplat on CUDA, the reference elsewhere).
    """

    stride: int = 4
    feature_dim: int = 32
    feature_stride: int | None = None
    render_scale: float = 0.25
    feature_render_factor: int = 4
    iters: int = 150
    lr_means: float = 1.6e-4
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 5e-2
    lr_colors: float = 1e-2
    lr_features: float = 0.1
    lr_upproject: float = 1e-2
    lambda_dssim: float = 0.2
    color_weight: float = 1.0
    feature_weight: float = 1.0
    valid_alpha: float = 0.9
    fit_geometry: bool = False
    backend: str = "auto"

    def __post_init__(self):
        if self.feature_stride is not None and self.feature_stride < 0:
            raise ValueError(f"FitConfig.feature_stride must be None or >= 0, got {self.feature_stride}")
        if self.stride < 1 or self.feature_dim < 1 or self.iters < 0 or self.feature_render_factor < 1:
            raise ValueError("FitConfig: stride, feature_dim and feature_render_factor must be >= 1, iters >= 0")
        if not 0.0 < self.render_scale <= 1.0:
            raise ValueError(f"FitConfig.render_scale must be in (0, 1], got {self.render_scale}")
        if self.backend not in ("auto", "torch", "gsplat"):
            raise ValueError(f"FitConfig.backend must be auto, torch or gsplat, got {self.backend!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> FitConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown FitConfig keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FittedScene:
    """The result of :func:`fit_scene`.

    Attributes:
        targets: (V, C, h, w) float32, the up-projected rendered features of each view
            on the encoder's feature grid: the stage-1 regression targets.
        valid: (V, h, w) bool, cells covered by the field (pooled rendered opacity >
            ``valid_alpha``) and by the view's surface mask.
        field: the fitted :class:`FeatureField` (on the CPU).
        stats: losses before and after fitting (``feature_l1_init``, ``feature_l1``,
            ``color_l1_init``, ``color_l1``, ``psnr``), ``gaussians``, ``iters``, ``seconds``.
    """

    targets: torch.Tensor
    valid: torch.Tensor
    field: FeatureField
    stats: dict


def scale_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """Intrinsics of an image resized by (sx, sy) in the COLMAP pixel convention (pixel
    corners at integers): focal lengths and principal point scale alike. K: (..., 3, 3)."""
    S = torch.diag(torch.tensor([sx, sy, 1.0], dtype=K.dtype, device=K.device))
    return S @ K


def _masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over channels and the cells where mask (N, 1, H, W) is True."""
    m = mask.to(a.dtype)
    return ((a - b).abs() * m).sum() / (m.sum() * a.shape[1]).clamp_min(1.0)


def texture_weights(uv: torch.Tensor, size: tuple[int, int], stride: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """Bilinear weights of points on a grid of latent cells laid over an image.

    The grid has ``(ceil(H / stride), ceil(W / stride))`` cells; cell (i, j) is centred at
    ``((j + 0.5) * stride, (i + 0.5) * stride)`` (COLMAP pixels), points beyond the outer
    centres take the border cells' values.

    Args:
        uv: (N, 2) pixel coordinates in the image.
        size: (W, H) of the image.
        stride: pixels per cell.
    Returns:
        ``(weights, (gh, gw))``: (N, gh * gw) sparse CSR, rows summing to 1; the grid shape.
    """
    W, H = size
    gw, gh = max(1, math.ceil(W / stride)), max(1, math.ceil(H / stride))
    x = pixel_to_index(uv[:, 0].double() / stride).clamp(0, gw - 1)
    y = pixel_to_index(uv[:, 1].double() / stride).clamp(0, gh - 1)
    x0, y0 = x.floor().clamp(max=max(gw - 2, 0)), y.floor().clamp(max=max(gh - 2, 0))
    fx, fy = (x - x0).clamp(0, 1), (y - y0).clamp(0, 1)
    x1, y1 = (x0 + 1).clamp(max=gw - 1), (y0 + 1).clamp(max=gh - 1)
    n = torch.arange(uv.shape[0]).repeat(4)
    cols = torch.cat([(yy * gw + xx).long() for yy, xx in ((y0, x0), (y0, x1), (y1, x0), (y1, x1))])
    vals = torch.cat(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)).float()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        m = torch.sparse_coo_tensor(torch.stack((n, cols)), vals, (uv.shape[0], gh * gw)).coalesce()
        return m.to_sparse_csr(), (gh, gw)


def _pca_init(field: FeatureField, feats0: torch.Tensor, size0: tuple[int, int], points: torch.Tensor) -> None:
    """Start the features from a PCA of the source view's encoder features (C, h, w): the
    up-projector gets the basis and mean, each feature unknown (a Gaussian, or a latent
    texture cell, at source pixel ``points`` (M, 2)) the projection of the feature there
    (bilinear, align_corners=False: the map covers the image)."""
    g = field.gaussians
    C, h, w = feats0.shape
    X = feats0.reshape(C, -1).T.double()  # (h*w, C)
    mean = X.mean(0)
    k = min(g.feature_dim, C, X.shape[0])
    _, _, V = torch.linalg.svd(X - mean, full_matrices=False)
    basis = V[:k].T  # (C, k)
    with torch.no_grad():
        W0, H0 = size0
        grid = torch.stack((2 * points[:, 0] / W0 - 1, 2 * points[:, 1] / H0 - 1), -1).float()[None, None]
        f = F.grid_sample(feats0[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        f = f[0, :, 0].T.double()  # (M, C)
        target = g.features if field.latent is None else field.latent
        target.zero_()
        target[:, :k] = ((f - mean) @ basis).float()
        field.upproject.weight.zero_()
        field.upproject.weight[:, :k, 0, 0] = basis.float()
        field.upproject.bias.copy_(mean.float())


def fit_scene(views: SceneViews, target_features: torch.Tensor, conf: FitConfig | None = None) -> FittedScene:
    """Fit a :class:`FeatureField` to the views and render its features into each.

    Args:
        views: :class:`SceneViews` (V views of size (W, H)); view 0 is the source.
        target_features: (V, C, h, w) float, the frozen encoder's features of each view
            (the features of the view's image, on the encoder's own grid, cells covering
            the image: cell (i, j) centred at ((j + 0.5) W / w, (i + 0.5) H / h)).
        conf: :class:`FitConfig`.
    Returns:
        :class:`FittedScene` with targets on the same (h, w) grid.
    Raises:
        ValueError: mismatching shapes.
    """
    with warnings.catch_warnings():  # torch's sparse CSR support is flagged "beta"
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return _fit_scene(views, target_features, conf)


def _fit_scene(views: SceneViews, target_features: torch.Tensor, conf: FitConfig | None = None) -> FittedScene:
    import time

    from kornia.losses import ssim_loss

    conf = conf or FitConfig()
    t0 = time.perf_counter()
    V = views.num_views
    W, H = views.size
    tf = target_features.detach().float().cpu()
    if tf.ndim != 4 or tf.shape[0] != V:
        raise ValueError(f"target_features must be (V={V}, C, h, w), got {tuple(tf.shape)}")
    C, h, w = tf.shape[1:]
    r = int(conf.feature_render_factor)
    rh, rw = h * r, w * r
    ch, cw = max(1, round(H * conf.render_scale)), max(1, round(W * conf.render_scale))
    if (ch, cw) != (rh, rw):
        logger.debug("colour rendered at the feature render size %dx%d (render_scale gives %dx%d)", rw, rh, cw, ch)
    Ks = torch.from_numpy(views.Ks).float()
    Kr = scale_intrinsics(Ks, rw / W, rh / H)
    viewmats = torch.from_numpy(views.T_0to).float()

    images = torch.from_numpy(views.images).permute(0, 3, 1, 2).float() / 255.0
    rgb_t = F.interpolate(images, size=(rh, rw), mode="area")
    mask = torch.from_numpy(views.masks)[:, None].float()
    mask_r = F.interpolate(mask, size=(rh, rw), mode="area") > 0.5
    mask_f = F.interpolate(mask, size=(h, w), mode="area") > 0.5

    gaussians = FeatureGaussians.from_depth(views.images[0], views.depth0, views.Ks[0], stride=conf.stride,
                                            feature_dim=conf.feature_dim)  # fmt: skip
    with torch.no_grad():
        p = gaussians.means.double() @ Ks[0].double().T
        uv = (p[:, :2] / p[:, 2:3]).float()  # each Gaussian's source pixel
    fstride = conf.feature_stride if conf.feature_stride is not None else W / w
    texture = None
    if fstride:
        texture, (gh, gw) = texture_weights(uv, (W, H), fstride)
        jj, ii = torch.meshgrid(torch.arange(gw), torch.arange(gh), indexing="xy")
        points = torch.stack((index_to_pixel(jj.reshape(-1)) * fstride, index_to_pixel(ii.reshape(-1)) * fstride), -1).float()
    else:
        points = uv
    field = FeatureField(gaussians, C, texture)
    _pca_init(field, tf[0], (W, H), points)

    extent = float(gaussians.means[:, 2].detach().median())
    g = gaussians
    groups = [
        {"params": [g.color_logits], "lr": conf.lr_colors},
        {"params": [g.features if field.latent is None else field.latent], "lr": conf.lr_features},
        {"params": list(field.upproject.parameters()), "lr": conf.lr_upproject},
    ]
    if conf.fit_geometry:
        groups += [
            {"params": [g.means], "lr": conf.lr_means * extent},
            {"params": [g.log_scales], "lr": conf.lr_scales},
            {"params": [g.quats], "lr": conf.lr_quats},
            {"params": [g.opacity_logits], "lr": conf.lr_opacity},
        ]

        def render():
            out = g.render(viewmats, Kr, rw, rh, backend=conf.backend, features=field.gaussian_features())
            return out["rgb"], F.avg_pool2d(out["alpha"], r), F.avg_pool2d(out["features"], r)
    else:

        for p in (g.means, g.log_scales, g.quats, g.opacity_logits):
            p.requires_grad_(False)
        with torch.no_grad():
            a = g.activated()
            blend = blend_weights(a["means"], a["quats"], a["scales"], a["opacities"], viewmats, Kr, rw, rh)
            # the r x r average pooling to the feature grid, folded into the blend (both linear)
            coo = blend.to_sparse_coo().coalesce()
            pix, col = coo.indices()
            vv, rem = pix // (rh * rw), pix % (rh * rw)
            cell = (vv * h + (rem // rw) // r) * w + (rem % rw) // r
            pooled = torch.sparse_coo_tensor(torch.stack((cell, col)), coo.values() / (r * r), (V * h * w, len(g)))
            pooled = pooled.coalesce()
            mats = {"rgb": (coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr())}
            if texture is None:
                mats["feat"] = (pooled.to_sparse_csr(), pooled.t().coalesce().to_sparse_csr())
            else:  # feature cells x latent cells: small, dense
                feat_mat = (pooled.to_sparse_csr() @ texture.to_dense()).to_dense()
            alpha_f = (pooled @ torch.ones(len(g), 1)).reshape(V, h, w, 1).permute(0, 3, 1, 2)

        def render():
            rgb = FixedBlend.apply(torch.sigmoid(g.color_logits), *mats["rgb"])
            if texture is None:
                feat = FixedBlend.apply(g.features, *mats["feat"])
            else:
                feat = feat_mat @ field.latent
            rgb = rgb.reshape(V, rh, rw, 3).permute(0, 3, 1, 2)
            return rgb, alpha_f, feat.reshape(V, h, w, -1).permute(0, 3, 1, 2)

    opt = torch.optim.Adam(groups, eps=1e-15)

    def losses():
        rgb, alpha_f, feat_lo = render()
        target = torch.where(mask_r, rgb_t, rgb.detach())  # no colour loss off the surface
        l1c = _masked_l1(rgb, rgb_t, mask_r)
        dssim = ssim_loss(rgb, target, window_size=5)  # kornia: (1 - SSIM) / 2, mean
        color = (1 - conf.lambda_dssim) * l1c + conf.lambda_dssim * dssim
        # the up-projection is linear: pooling before it is the same as after
        feat = field.upproject(feat_lo)
        fmask = mask_f & (alpha_f > 0.5)
        lf = _masked_l1(feat, tf, fmask)
        return conf.color_weight * color + conf.feature_weight * lf, l1c, lf, rgb, feat, alpha_f

    stats: dict = {"gaussians": len(gaussians), "iters": int(conf.iters), "render_size": [rw, rh],
                   "feature_unknowns": int(len(gaussians) if field.latent is None else field.latent.shape[0])}
    for it in range(int(conf.iters) + 1):
        loss, l1c, lf, rgb, feat, alpha_f = losses()
        if it == 0:
            stats.update(color_l1_init=float(l1c.detach()), feature_l1_init=float(lf.detach()))
        if it == int(conf.iters):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = (((rgb - rgb_t) ** 2) * mask_r).sum() / (mask_r.sum() * 3).clamp_min(1)
        stats.update(color_l1=float(l1c.detach()), feature_l1=float(lf.detach()), psnr=float(-10 * torch.log10(mse.clamp_min(1e-12))))
        valid = (alpha_f[:, 0] > conf.valid_alpha) & mask_f[:, 0]
        stats["valid_share"] = float(valid.float().mean())
    stats["seconds"] = time.perf_counter() - t0
    field.requires_grad_(False)
    stats["fit_geometry"] = bool(conf.fit_geometry)
    return FittedScene(targets=feat.detach().float(), valid=valid, field=field, stats=stats)
