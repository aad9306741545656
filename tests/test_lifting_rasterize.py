"""The 3D Gaussian rasteriser (l2m_plugin.lifting): gsplat 1.5.3 semantics, in numbers.

References used here, each independent of the code under test: closed forms for one or
two Gaussians (EWA projection, pixel-centre evaluation, front-to-back compositing), and
``_naive_render``, a per-pixel loop written from gsplat's kernel description (module
docstring of l2m_plugin.lifting.rasterize) that evaluates every Gaussian at every pixel.
"""

from __future__ import annotations

import math

import pytest
import torch

from l2m_plugin.lifting import (
    ALPHA_THRESHOLD,
    RasterBackendError,
    project_gaussians,
    quat_to_rotmat,
    rasterize_gaussians,
)

F64 = torch.float64


def _K(f, cx, cy, C=1, dtype=F64):
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(C, 3, 3).clone()


def _eye(C=1, dtype=F64):
    return torch.eye(4, dtype=dtype).expand(C, 4, 4).clone()


def _rot(axis, angle):
    """Rodrigues rotation matrix (float64)."""
    k = torch.tensor(axis, dtype=F64)
    k = k / k.norm()
    Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=F64)
    return torch.eye(3, dtype=F64) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def _quat(axis, angle, norm=1.0):
    k = torch.tensor(axis, dtype=F64)
    k = k / k.norm()
    return norm * torch.cat(
        (torch.tensor([math.cos(angle / 2)], dtype=F64), math.sin(angle / 2) * k)
    )


def _look(R, t):
    V = torch.eye(4, dtype=F64)
    V[:3, :3], V[:3, 3] = R, torch.as_tensor(t, dtype=F64)
    return V


def _random_scene(N, C, W, H, D, seed, dtype=F64, opacity=(0.05, 0.95), scale=1.0):
    """N Gaussians in a unit cube 4 units in front of C cameras looking at it."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g, dtype=F64) * 2 - 1) + torch.tensor(
        [0.0, 0.0, 4.0], dtype=F64
    )
    quats = torch.randn(N, 4, generator=g, dtype=F64)
    scales = scale * (0.03 + 0.12 * torch.rand(N, 3, generator=g, dtype=F64))
    lo, hi = opacity
    opacities = lo + (hi - lo) * torch.rand(N, generator=g, dtype=F64)
    colors = torch.rand(N, D, generator=g, dtype=F64)
    views = []
    for c in range(C):
        R = _rot((0.2, 1.0, 0.1 * c), 0.15 * c)
        centre = torch.tensor([0.0, 0.0, 4.0], dtype=F64)
        views.append(
            _look(R, centre - R @ centre + torch.tensor([0.1 * c, -0.05 * c, 0.0], dtype=F64))
        )
    viewmats = torch.stack(views)
    Ks = _K(0.9 * W, W / 2 + 0.3, H / 2 - 0.2, C)
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors, viewmats, Ks)]


def _naive_render(means, quats, scales, opacities, colors, viewmats, Ks, W, H, **kw):
    """gsplat's per-pixel loop, vectorised over pixels: every Gaussian at every pixel.

    Returns (colors, alphas, number of pixels that terminated early).
    """
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H, opacities=opacities, **kw)
    C, N = viewmats.shape[0], means.shape[0]
    D = colors.shape[-1]
    jj, ii = torch.meshgrid(torch.arange(W, dtype=F64), torch.arange(H, dtype=F64), indexing="xy")
    px, py = jj + 0.5, ii + 0.5
    out_c = torch.zeros(C, H, W, D, dtype=F64)
    out_a = torch.zeros(C, H, W, 1, dtype=F64)
    n_done = 0
    for c in range(C):
        T = torch.ones(H, W, dtype=F64)
        rgb = torch.zeros(H, W, D, dtype=F64)
        done = torch.zeros(H, W, dtype=torch.bool)
        vis = (proj.radii[c] > 0).all(-1)
        order = sorted((float(proj.depths[c, n]), n) for n in range(N) if vis[n])
        for _, n in order:
            (mx, my), (a, b, cc) = proj.means2d[c, n].double(), proj.conics[c, n].double()
            dx, dy = mx - px, my - py
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            alpha = torch.clamp(float(opacities[n]) * torch.exp(-sigma), max=0.999)
            valid = (alpha >= 1 / 255) & (sigma >= 0) & ~done
            next_T = T * (1 - alpha)
            stop = valid & (next_T <= 1e-4)
            done |= stop
            take = valid & ~stop
            col = colors[n] if colors.dim() == 2 else colors[c, n]
            rgb += torch.where(take[..., None], (alpha * T)[..., None] * col.double(), 0.0)
            T = torch.where(take, next_T, T)
        out_c[c], out_a[c, ..., 0] = rgb, 1 - T
        n_done += int(done.sum())
    return out_c, out_a, n_done


# ----------------------------------------------------------------------------- projection


def test_single_isotropic_gaussian_at_pixel_centres():
    f, z, s, o = 50.0, 4.0, 0.1, 0.8
    cx, cy = 10.3, 7.8  # the Gaussian sits on the optical axis: at (10.3, 7.8) in pixels
    W, H = 24, 20
    means = torch.tensor([[0.0, 0.0, z]], dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    scales = torch.full((1, 3), s, dtype=F64)
    colors = torch.tensor([[0.25, 1.0]], dtype=F64)
    rc, ra, meta = rasterize_gaussians(
        means, quats, scales, torch.tensor([o], dtype=F64), colors, _eye(), _K(f, cx, cy), W, H
    )
    var = (f * s / z) ** 2 + 0.3
    jj, ii = torch.meshgrid(torch.arange(W, dtype=F64), torch.arange(H, dtype=F64), indexing="xy")
    r2 = (jj + 0.5 - cx) ** 2 + (ii + 0.5 - cy) ** 2
    expected = o * torch.exp(-r2 / (2 * var))
    expected = torch.where(expected >= ALPHA_THRESHOLD, expected, 0.0)
    assert (ra[0, ..., 0] - expected).abs().max() < 1e-5
    assert (rc[0] - expected[..., None] * colors[0]).abs().max() < 1e-5
    # the convention matters: evaluating at pixel corners would be off by > 0.05
    corner = o * torch.exp(-((jj - cx) ** 2 + (ii - cy) ** 2) / (2 * var))
    assert (ra[0, ..., 0] - corner).abs().max() > 0.05
    # radii: ceil(sqrt(2 ln(255 o)) * sigma) per axis; nothing outside the box
    r = math.ceil(math.sqrt(2 * math.log(255 * o)) * math.sqrt(var))
    assert meta["radii"][0, 0].tolist() == [r, r]
    assert torch.allclose(meta["means2d"][0, 0], torch.tensor([cx, cy], dtype=F64))
    outside = ((jj + 0.5 - cx).abs() > r) | ((ii + 0.5 - cy).abs() > r)
    assert outside.any() and (ra[0, ..., 0][outside] == 0).all()
    assert (ra[0, ..., 0][r2 > 3.5**2 * var] == 0).all()  # beyond ~3.3 sigma: cut at 1/255


def test_single_gaussian_float32_matches_closed_form():
    f, z, s, o, cx, cy = 40.0, 3.0, 0.08, 0.6, 7.6, 9.2
    W, H = 16, 18
    args = [
        torch.tensor([[0.0, 0.0, z]]),
        torch.tensor([[2.0, 0.0, 0.0, 0.0]]),  # not normalised
        torch.full((1, 3), s),
        torch.tensor([o]),
        torch.ones(1, 1),
        _eye(dtype=torch.float32),
        _K(f, cx, cy, dtype=torch.float32),
    ]
    _, ra, _ = rasterize_gaussians(*args, W, H, backend="torch")
    var = (f * s / z) ** 2 + 0.3
    jj, ii = torch.meshgrid(torch.arange(W, dtype=F64), torch.arange(H, dtype=F64), indexing="xy")
    expected = o * torch.exp(-((jj + 0.5 - cx) ** 2 + (ii + 0.5 - cy) ** 2) / (2 * var))
    expected = torch.where(expected >= ALPHA_THRESHOLD, expected, 0.0)
    assert ra.dtype == torch.float32
    assert (ra[0, ..., 0].double() - expected).abs().max() < 1e-5


def test_anisotropic_rotated_gaussian_covariance():
    f, W, H = 60.0, 64, 56
    cx, cy = 31.7, 27.4
    scales = torch.tensor([[0.30, 0.12, 0.05]], dtype=F64)
    axis, angle = (0.3, -0.5, 0.8), 0.9
    quats = _quat(axis, angle, norm=2.5)[None]  # not normalised
    Rg = _rot(axis, angle)
    assert torch.allclose(quat_to_rotmat(quats)[0], Rg, atol=1e-12)
    Rc = _rot((1.0, 0.2, 0.0), 0.2)
    viewmat = _look(Rc, (0.05, -0.1, 0.5))[None]
    means = torch.tensor([[0.15, -0.1, 4.0]], dtype=F64)
    proj = project_gaussians(means, quats, scales, viewmat, _K(f, cx, cy), W, H)
    t = Rc @ means[0] + torch.tensor([0.05, -0.1, 0.5], dtype=F64)
    J = torch.tensor(
        [[f / t[2], 0, -f * t[0] / t[2] ** 2], [0, f / t[2], -f * t[1] / t[2] ** 2]], dtype=F64
    )
    S = torch.diag(scales[0])
    cov = J @ Rc @ Rg @ S @ S.T @ Rg.T @ Rc.T @ J.T + 0.3 * torch.eye(2, dtype=F64)
    assert torch.allclose(proj.covars2d[0, 0], cov, atol=1e-12)
    inv = torch.linalg.inv(cov)
    assert torch.allclose(
        proj.conics[0, 0], torch.stack((inv[0, 0], inv[0, 1], inv[1, 1])), atol=1e-12
    )
    mean2d = torch.stack((f * t[0] / t[2] + cx, f * t[1] / t[2] + cy))
    assert torch.allclose(proj.means2d[0, 0], mean2d, atol=1e-12)
    assert float(proj.depths[0, 0]) == pytest.approx(float(t[2]), abs=1e-12)
    assert cov[0, 1].abs() > 0.3 * cov.diagonal().min()  # really rotated in the image

    # the rendered footprint: o exp(-d^T cov^-1 d / 2) at pixel centres ...
    o = 0.9
    _, ra, _ = rasterize_gaussians(
        means, quats, scales, torch.tensor([o], dtype=F64), torch.ones(1, 1, dtype=F64),
        viewmat, _K(f, cx, cy), W, H,
    )  # fmt: skip
    a = ra[0, ..., 0]
    jj, ii = torch.meshgrid(torch.arange(W, dtype=F64), torch.arange(H, dtype=F64), indexing="xy")
    d = torch.stack((jj + 0.5 - mean2d[0], ii + 0.5 - mean2d[1]), dim=-1)
    m2 = torch.einsum("hwi,ij,hwj->hw", d, inv, d)
    expected = o * torch.exp(-0.5 * m2)
    expected = torch.where(expected >= ALPHA_THRESHOLD, expected, 0.0)
    assert (a - expected).abs().max() < 1e-12
    # ... whose second moments are those of cov, truncated where alpha < 1/255
    w = a / a.sum()
    mu = torch.einsum("hw,hwi->i", w, d + mean2d)
    dd = d + mean2d - mu
    moments = torch.einsum("hw,hwi,hwj->ij", w, dd, dd)
    R2 = 2 * math.log(255 * o)  # truncation radius^2 (Mahalanobis)
    shrink = (1 - (1 + R2 / 2) * math.exp(-R2 / 2)) / (1 - math.exp(-R2 / 2))
    assert (mu - mean2d).abs().max() < 0.02
    assert torch.allclose(moments, shrink * cov, rtol=0.02, atol=0.02 * float(cov.diagonal().max()))


def test_jacobian_clamped_outside_the_field_of_view():
    """gsplat clamps x/z to 1.3 x the half field of view in the Jacobian (not the mean)."""
    f, W, H, cx, cy = 50.0, 40, 30, 20.0, 15.0
    z = 4.0
    x = 0.7 * z  # x/z = 0.7 > 0.52, the clamp: 15 px right of the image
    means = torch.tensor([[x, 0.0, z]], dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)
    scales = torch.tensor([[0.2, 0.1, 1.5]], dtype=F64)
    proj = project_gaussians(means, quats, scales, _eye(), _K(f, cx, cy), W, H)
    lim = (W - cx) / f + 0.3 * 0.5 * W / f
    J = torch.tensor([[f / z, 0, -f * lim / z], [0, f / z, 0]], dtype=F64)
    cov = J @ torch.diag(scales[0] ** 2) @ J.T + 0.3 * torch.eye(2, dtype=F64)
    assert torch.allclose(proj.covars2d[0, 0], cov, atol=1e-12)
    assert lim == pytest.approx(0.52)
    assert float(proj.means2d[0, 0, 0]) == pytest.approx(f * x / z + cx)  # 55: not clamped
    assert proj.radii[0, 0].tolist() != [0, 0]  # its 1.5-unit depth extent reaches the image
    # above the image (y/z = -0.6 < -(cy/fy + 0.3 tan_y) = -0.39), elongated in depth
    means = torch.tensor([[0.0, -0.6 * z, z]], dtype=F64)
    proj = project_gaussians(means, quats, scales, _eye(), _K(f, cx, cy), W, H)
    lim_y = cy / f + 0.3 * 0.5 * H / f
    J = torch.tensor([[f / z, 0, 0], [0, f / z, f * lim_y / z]], dtype=F64)
    cov = J @ torch.diag(scales[0] ** 2) @ J.T + 0.3 * torch.eye(2, dtype=F64)
    assert lim_y == pytest.approx(0.39)
    assert torch.allclose(proj.covars2d[0, 0], cov, atol=1e-12)
    assert proj.radii[0, 0].tolist() != [0, 0]


# ----------------------------------------------------------------------------- compositing


def _two_gaussians(order):
    f, W, H, cx, cy = 40.0, 15, 13, 7.5, 6.5  # both project onto the centre of pixel (6, 7)
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 5.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=F64)
    scales = torch.tensor([[0.06, 0.06, 0.06], [0.15, 0.08, 0.1]], dtype=F64)
    opacities = torch.tensor([0.6, 0.7], dtype=F64)
    colors = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.5]], dtype=F64)
    idx = torch.tensor(order)
    return (
        means[idx],
        quats[idx],
        scales[idx],
        opacities[idx],
        colors[idx],
        _eye(),
        _K(f, cx, cy),
        W,
        H,
    )


def test_compositing_front_to_back_and_order_independent():
    rc, ra, meta = rasterize_gaussians(*_two_gaussians([0, 1]))
    rc2, ra2, _ = rasterize_gaussians(*_two_gaussians([1, 0]))
    assert torch.equal(rc, rc2) and torch.equal(ra, ra2)
    front, back = torch.tensor([1.0, 0.0, 0.2], dtype=F64), torch.tensor([0.0, 1.0, 0.5], dtype=F64)
    # at the shared centre sigma = 0: alphas are the opacities
    assert torch.allclose(rc[0, 6, 7], 0.6 * front + 0.4 * 0.7 * back, atol=1e-12)
    assert float(ra[0, 6, 7, 0]) == pytest.approx(1 - 0.4 * 0.3, abs=1e-12)
    # everywhere: a_f c_f + (1 - a_f) a_b c_b and 1 - (1 - a_f)(1 - a_b), per-pixel alphas
    means, quats, scales, opacities, _, V, K, W, H = _two_gaussians([0, 1])
    proj = project_gaussians(means, quats, scales, V, K, W, H, opacities=opacities)
    jj, ii = torch.meshgrid(torch.arange(W, dtype=F64), torch.arange(H, dtype=F64), indexing="xy")
    al = []
    for n in range(2):
        (mx, my), (a, b, c) = proj.means2d[0, n], proj.conics[0, n]
        dx, dy = mx - (jj + 0.5), my - (ii + 0.5)
        al_n = opacities[n] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
        al.append(torch.where(al_n >= ALPHA_THRESHOLD, al_n, 0.0))
    af, ab = al
    assert (af > 0).sum() < (ab > 0).sum()  # the back one is larger: both regimes tested
    exp_c = af[..., None] * front + ((1 - af) * ab)[..., None] * back
    assert (rc[0] - exp_c).abs().max() < 1e-12
    assert (ra[0, ..., 0] - (1 - (1 - af) * (1 - ab))).abs().max() < 1e-12
    assert meta["depths"][0].tolist() == [3.0, 5.0]


def _stack_on_pixel(opacities, colors):
    """Gaussians centred on the centre of pixel (3, 4), at depths 2, 3, 4, ... (front first)."""
    n = len(opacities)
    means = torch.tensor([[0.0, 0.0, 2.0 + k] for k in range(n)], dtype=F64)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n, dtype=F64)
    scales = torch.full((n, 3), 0.05, dtype=F64)
    return (means, quats, scales, torch.tensor(opacities, dtype=F64),
            torch.tensor(colors, dtype=F64), _eye(), _K(30.0, 4.5, 3.5), 9, 7)  # fmt: skip


def test_early_termination_is_exclusive():
    cols = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    # alpha 0.999 (clamped), T = 1e-3; then 0.95 would leave 5e-5 <= 1e-4: stop, it and
    # everything behind it are not composited
    rc, ra, _ = rasterize_gaussians(*_stack_on_pixel([1.0, 0.95, 0.9], cols))
    assert rc[0, 3, 4].tolist() == pytest.approx([0.999, 0.0, 0.0], abs=1e-12)
    assert float(ra[0, 3, 4, 0]) == pytest.approx(0.999, abs=1e-12)
    # 0.85 leaves 1.5e-4 > 1e-4: composited; then 0.5 would leave 7.5e-5: stop
    rc, ra, _ = rasterize_gaussians(*_stack_on_pixel([1.0, 0.85, 0.5], cols))
    assert rc[0, 3, 4].tolist() == pytest.approx([0.999, 0.001 * 0.85, 0.0], abs=1e-12)
    assert float(ra[0, 3, 4, 0]) == pytest.approx(1 - 0.001 * 0.15, abs=1e-12)
    # 0.89 leaves 1.1e-4 (composited), 0.05 leaves 1.045e-4 (composited), 0.1 stops
    rc, _, _ = rasterize_gaussians(
        *_stack_on_pixel([1.0, 0.89, 0.05, 0.1], cols + [[1.0, 1.0, 1.0]])
    )
    T2 = 0.001 * 0.11
    assert rc[0, 3, 4].tolist() == pytest.approx([0.999, 0.001 * 0.89, T2 * 0.05], abs=1e-12)
    # the result agrees with the naive per-pixel loop everywhere
    args = _stack_on_pixel([1.0, 0.89, 0.05, 0.1], cols + [[1.0, 1.0, 1.0]])
    nc, na, n_done = _naive_render(*args)
    rc, ra, _ = rasterize_gaussians(*args)
    assert n_done > 0
    assert (rc - nc).abs().max() < 1e-12 and (ra - na).abs().max() < 1e-12


@pytest.mark.parametrize("above", [True, False])
def test_alpha_threshold_1_over_255(above):
    f, z, s, W, H = 20.0, 2.0, 0.1, 9, 9
    cx = cy = 4.5  # centred on pixel (4, 4); pixel (4, 6) is 2 px away
    var = (f * s / z) ** 2 + 0.3
    o = (1 + (1e-6 if above else -1e-6)) / 255 * math.exp(4 / (2 * var))
    args = (torch.tensor([[0.0, 0.0, z]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
            torch.full((1, 3), s, dtype=F64), torch.tensor([o], dtype=F64),
            torch.ones(1, 1, dtype=F64), _eye(), _K(f, cx, cy), W, H)  # fmt: skip
    _, ra, meta = rasterize_gaussians(*args)
    a = float(ra[0, 4, 6, 0])
    if above:
        assert a == pytest.approx(1 / 255, rel=1e-5)
    else:
        assert a == 0.0
    assert float(ra[0, 4, 4, 0]) == pytest.approx(o)
    assert meta["radii"][0, 0].tolist() == [2 + above, 2 + above]  # ceil of the exact extent


def test_opacity_below_threshold_is_culled():
    args = list(_stack_on_pixel([0.9 / 255], [[1.0]]))
    rc, ra, meta = rasterize_gaussians(*args)
    assert meta["radii"].abs().sum() == 0 and ra.abs().max() == 0 and rc.abs().max() == 0


# ----------------------------------------------------------------------------- culling


def test_culling_behind_near_far_offimage_and_radius_clip():
    means = torch.tensor(
        [
            [0.0, 0.0, -2.0],  # behind the camera
            [0.0, 0.0, 0.005],  # in front of the near plane (0.01)
            [0.0, 0.0, 20.0],  # beyond far_plane=10
            [30.0, 0.0, 3.0],  # projects far outside the image
            [0.0, 0.0, 3.0],  # control: visible
        ],
        dtype=F64,
    )
    N = len(means)
    quats = torch.tensor([[1.0, 0, 0, 0]] * N, dtype=F64)
    scales = torch.full((N, 3), 0.05, dtype=F64)
    opac = torch.full((N,), 0.8, dtype=F64)
    colors = torch.eye(N, dtype=F64)
    rc, ra, meta = rasterize_gaussians(
        means, quats, scales, opac, colors, _eye(), _K(30.0, 8.0, 8.0), 16, 16, far_plane=10.0
    )
    assert meta["visible"][0].tolist() == [False, False, False, False, True]
    assert (meta["radii"][0, :4] == 0).all() and (meta["radii"][0, 4] > 0).all()
    assert rc[..., :4].abs().max() == 0 and rc[..., 4].max() > 0.5
    assert (ra[..., 0] - rc[..., 4]).abs().max() < 1e-12  # only the control was drawn
    # radius_clip: the control's radii are 2; clip at 2 culls it, at 1.5 keeps it
    r = int(meta["radii"][0, 4].max())
    args = (
        means[4:],
        quats[4:],
        scales[4:],
        opac[4:],
        colors[4:, 4:],
        _eye(),
        _K(30.0, 8.0, 8.0),
        16,
        16,
    )
    assert rasterize_gaussians(*args, radius_clip=float(r))[1].abs().max() == 0
    assert rasterize_gaussians(*args, radius_clip=r - 0.5)[1].abs().max() > 0.5
    # nothing visible at all: zero images with the right shapes, still differentiable
    m = means[:1].clone().requires_grad_(True)
    rc, ra, meta = rasterize_gaussians(m, quats[:1], scales[:1], opac[:1], colors[:1], _eye(),
                                       _K(30.0, 8.0, 8.0), 16, 16)  # fmt: skip
    assert rc.shape == (1, 16, 16, N) and ra.shape == (1, 16, 16, 1) and rc.abs().max() == 0
    (rc.sum() + ra.sum()).backward()
    assert m.grad is not None and m.grad.abs().max() == 0


# ----------------------------------------------------------------------------- scenes


def test_random_scene_matches_naive_per_pixel_loop():
    args = _random_scene(N=120, C=2, W=22, H=17, D=3, seed=1, opacity=(0.5, 1.0), scale=2.0)
    rc, ra, meta = rasterize_gaussians(*args, 22, 17)
    nc, na, n_done = _naive_render(*args, 22, 17)
    assert meta["n_pairs"] > 2000  # overlapping, many layers per pixel
    assert n_done > 20  # and early termination happens
    assert (rc - nc).abs().max() < 1e-10
    assert (ra - na).abs().max() < 1e-10


def test_blend_weights_reproduce_the_rendering_for_fixed_geometry():
    """blend_weights: the sparse (C*H*W, N) compositing matrix: W @ colors is the rendering
    (with early termination and the 1/255 cut) and its row sums are the alphas."""
    from l2m_plugin.lifting import blend_weights

    means, quats, scales, opacities, colors, viewmats, Ks = _random_scene(
        N=120, C=2, W=22, H=17, D=4, seed=3, opacity=(0.5, 1.0), scale=2.0)  # fmt: skip
    rc, ra, meta = rasterize_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, 22, 17)
    Wt = blend_weights(means, quats, scales, opacities, viewmats, Ks, 22, 17)
    assert Wt.layout == torch.sparse_csr and Wt.shape == (2 * 17 * 22, 120)
    assert Wt.values().numel() == meta["n_pairs"]
    assert ((Wt @ colors).reshape(2, 17, 22, 4) - rc).abs().max() < 1e-12
    assert ((Wt @ torch.ones(120, 1, dtype=F64)).reshape(2, 17, 22, 1) - ra).abs().max() < 1e-12


def test_multiple_cameras_and_per_camera_colors():
    means, quats, scales, opac, colors, V, K = _random_scene(N=40, C=2, W=20, H=16, D=4, seed=2)
    rc, ra, meta = rasterize_gaussians(means, quats, scales, opac, colors, V, K, 20, 16)
    assert rc.shape == (2, 16, 20, 4) and ra.shape == (2, 16, 20, 1)
    assert meta["radii"].shape == (2, 40, 2) and meta["means2d"].shape == (2, 40, 2)
    assert meta["depths"].shape == (2, 40) and meta["conics"].shape == (2, 40, 3)
    assert meta["radii"].dtype == torch.int32
    for c in range(2):  # each camera alone gives the same image
        rc1, ra1, _ = rasterize_gaussians(
            means, quats, scales, opac, colors, V[c : c + 1], K[c : c + 1], 20, 16
        )
        assert (rc1[0] - rc[c]).abs().max() < 1e-12 and (ra1[0] - ra[c]).abs().max() < 1e-12
    assert (rc[0] - rc[1]).abs().max() > 0.1  # the cameras differ
    # per-camera colours: camera c uses colors_pc[c]
    colors_pc = torch.stack((colors, 1 - colors))
    rcp, rap, _ = rasterize_gaussians(means, quats, scales, opac, colors_pc, V, K, 20, 16)
    rc_b, _, _ = rasterize_gaussians(means, quats, scales, opac, 1 - colors, V, K, 20, 16)
    assert (rcp[0] - rc[0]).abs().max() < 1e-12 and (rcp[1] - rc_b[1]).abs().max() < 1e-12
    assert torch.equal(rap, ra)
    nc, _, _ = _naive_render(means, quats, scales, opac, colors_pc, V, K, 20, 16)
    assert (rcp - nc).abs().max() < 1e-10


def test_one_channel_and_many_channels():
    means, quats, scales, opac, colors, V, K = _random_scene(N=30, C=1, W=16, H=12, D=37, seed=3)
    rc, _, _ = rasterize_gaussians(means, quats, scales, opac, colors, V, K, 16, 12)
    rc1, _, _ = rasterize_gaussians(means, quats, scales, opac, colors[:, 5:6], V, K, 16, 12)
    assert rc.shape[-1] == 37 and rc1.shape[-1] == 1
    assert (rc[..., 5:6] - rc1).abs().max() < 1e-12


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_all_gaussian_parameters():
    means, quats, scales, opac, colors, V, K = _random_scene(N=4, C=2, W=9, H=8, D=2, seed=4)
    means = means * torch.tensor([0.3, 0.3, 1.0], dtype=F64)  # closer together: overlaps
    scales = scales * 2.0
    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]

    rc, _, _ = rasterize_gaussians(*inputs, V, K, 9, 8)
    assert (rc > 0).float().mean() > 0.3  # the Gaussians cover a good part of both images
    g = torch.Generator().manual_seed(0)
    maps_c = torch.randn(3, *rc.shape, generator=g, dtype=F64)
    maps_a = torch.randn(3, *rc.shape[:-1], 1, generator=g, dtype=F64)

    def fn(m, q, s, o, c):  # every input, three random directions of the outputs
        rc, ra, _ = rasterize_gaussians(m, q, s, o, c, V, K, 9, 8, backend="torch")
        return (maps_c * rc).flatten(1).sum(1) + (maps_a * ra).flatten(1).sum(1)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradients_with_early_termination_and_clamp_match_finite_differences():
    """Stacked opaque Gaussians: the front one is clamped to 0.999 at pixel (3, 4), pixels
    terminate early; gradients stop at the clamp and the terminating Gaussian, as in gsplat."""
    cols = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.9]]
    args = list(_stack_on_pixel([1.0, 0.95, 0.8, 0.7], cols))
    args[2] = torch.tensor(
        [[0.05, 0.07, 0.06], [0.09, 0.05, 0.08], [0.12, 0.1, 0.1], [0.2, 0.2, 0.2]], dtype=F64
    )
    args[0] = args[0] + torch.tensor(
        [[0.0, 0.0, 0.0], [-0.03, 0.02, 0.0], [0.05, 0.0, 0.0], [0.0, 0.04, 0.0]], dtype=F64
    )
    _, _, n_done = _naive_render(*args)
    assert n_done >= 1
    inputs = [t.clone().requires_grad_(True) for t in args[:5]]
    g = torch.Generator().manual_seed(1)
    maps_c = torch.randn(3, 1, 7, 9, 2, generator=g, dtype=F64)
    maps_a = torch.randn(3, 1, 7, 9, 1, generator=g, dtype=F64)

    def fn(m, q, s, o, c):
        rc, ra, _ = rasterize_gaussians(m, q, s, o, c, *args[5:])
        return (maps_c * rc).flatten(1).sum(1) + (maps_a * ra).flatten(1).sum(1)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------- backends


def test_backend_selection_and_errors():
    args = _random_scene(N=5, C=1, W=8, H=8, D=3, seed=5, dtype=torch.float32)
    _, _, meta = rasterize_gaussians(*args, 8, 8)  # auto on CPU -> torch
    assert meta["backend"] == "torch"
    with pytest.raises(RasterBackendError, match="CUDA"):
        rasterize_gaussians(*args, 8, 8, backend="gsplat")
    with pytest.raises(ValueError, match="backend"):
        rasterize_gaussians(*args, 8, 8, backend="cuda")
    with pytest.raises(ValueError, match="colors"):
        rasterize_gaussians(*args[:4], args[4][:2], *args[5:], 8, 8)
    with pytest.raises(ValueError, match="dtype"):
        rasterize_gaussians(*args[:4], args[4].double(), *args[5:], 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's kernels need a CUDA GPU")
def test_torch_backend_agrees_with_gsplat():
    """Tolerance: colours and alphas within 1e-4 (float32 kernels with fast exp), except for
    at most 0.05 % of values, where a pair's alpha or transmittance sits within float32
    rounding of the 1/255 or 1e-4 thresholds (those differ by one such contribution,
    < 5e-3). Gradients of a loss agree in direction (cosine > 0.999)."""
    pytest.importorskip("gsplat")
    W, H = 80, 64
    scene = _random_scene(N=3000, C=3, W=W, H=H, D=5, seed=6, dtype=torch.float32)
    outs = {}
    for backend, device in (("torch", "cpu"), ("gsplat", "cuda")):
        inputs = [t.detach().to(device).clone().requires_grad_(k < 5) for k, t in enumerate(scene)]
        rc, ra, meta = rasterize_gaussians(*inputs, W, H, backend=backend)
        weights = torch.linspace(0.5, 1.5, 5, device=device)
        ((rc * weights).square().sum() + ra.sum()).backward()
        outs[backend] = (
            [x.detach().cpu() for x in (rc, ra)],
            meta,
            [t.grad.cpu() for t in inputs[:5]],
        )
    (rc_t, ra_t), meta_t, grads_t = outs["torch"]
    (rc_g, ra_g), meta_g, grads_g = outs["gsplat"]
    assert meta_g["backend"] == "gsplat" and meta_t["backend"] == "torch"
    for a, b in ((rc_t, rc_g), (ra_t, ra_g)):
        diff = (a - b).abs()
        assert (diff > 1e-4).float().mean() <= 5e-4
        assert diff.max() < 5e-3
    vis = meta_t["visible"] & meta_g["visible"].cpu()
    assert (meta_t["visible"] != meta_g["visible"].cpu()).float().mean() < 1e-3
    assert (meta_t["radii"][vis] - meta_g["radii"].cpu()[vis]).abs().max() <= 1
    for key in ("means2d", "depths", "conics"):
        assert torch.allclose(meta_t[key][vis], meta_g[key].cpu()[vis], rtol=1e-4, atol=1e-4)
    for gt, gg in zip(grads_t, grads_g, strict=True):
        cos = torch.nn.functional.cosine_similarity(gt.flatten(), gg.flatten(), dim=0)
        assert cos > 0.999
