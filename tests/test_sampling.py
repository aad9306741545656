"""Balanced sampling: reproducible, raw certainty, pixel conventions, EXIF frames, and the
grid density estimate equal in distribution to RoMa's exact one."""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.sampling import balanced_sample, grid_kde, kde

SMALL = MatcherConfig(encoder="vits14", coarse_res=56, upsample_res=None)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return L2M(SMALL)


def test_kde_matches_direct_formula():
    x = torch.rand(300, 4)
    d2 = torch.cdist(x, x) ** 2
    assert torch.allclose(kde(x, std=0.1, chunk=64), torch.exp(-d2 / 0.02).sum(-1), rtol=1e-5)


def _match_candidates(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 4) candidates as a dense matcher gives them: (x0, y0, f(x0, y0)) on a 2-d manifold,
    both directions, with a warp that squeezes the left half of image 0 into a narrow strip
    (so candidate density varies by about 3x and the balancing has work to do)."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 2, generator=g) * 2 - 1
    x1 = torch.stack(
        (torch.where(x0[:, 0] < 0, 0.3 * x0[:, 0] - 0.4, 0.9 * x0[:, 0]), 0.8 * x0[:, 1] + 0.1), 1
    )
    x1 = x1 + 0.005 * torch.randn(n, 2, generator=g)
    half = n // 2
    return torch.cat((torch.cat((x0[:half], x1[:half]), 1), torch.cat((x1[half:], x0[half:]), 1)))


def test_grid_kde_approximates_the_exact_density():
    x = _match_candidates(12000)
    exact, grid = kde(x), grid_kde(x)
    rel = (grid - exact).abs() / exact
    assert rel.median() < 0.015 and rel.max() < 0.08, (rel.median(), rel.max())
    # the quantity that matters: the selection probabilities 1 / (1 + density)
    p_e, p_g = 1 / (1 + exact), 1 / (1 + grid)
    p_e[exact < 10], p_g[grid < 10] = 1e-7, 1e-7
    tv = 0.5 * (p_e / p_e.sum() - p_g / p_g.sum()).abs().sum()
    assert tv < 0.01, tv
    # isolated points have density 1 (their own kernel), as in the exact sum
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, 0.5, -0.5]])
    assert torch.allclose(grid_kde(far), torch.ones(3), atol=0.06)
    # warps far outside image 1 (outside the grid's box) are summed exactly, and so is
    # their share of the points inside it; the grid stays the size of [-1.5, 1.5]^4
    wide = torch.cat((x[:3000], x[:300] * torch.tensor([1.0, 1.0, 30.0, 1.0]), x[:5] + 1.45))
    got, want = grid_kde(wide), kde(wide)
    far = (wide.abs() > 1.5).any(dim=1)
    assert far.sum() > 200 and torch.allclose(got[far], want[far], rtol=1e-4)
    assert (got - want).abs().div(want).max() < 0.08
    with pytest.raises(ValueError, match="N >= 1"):
        grid_kde(torch.zeros(0, 4))


def _chi2_two_sample_p(a: torch.Tensor, b: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test that two count vectors share one distribution."""
    a, b = a.double(), b.double()
    keep = (a + b) > 0
    a, b = a[keep], b[keep]
    n_a, n_b = a.sum(), b.sum()
    tot = a + b
    e_a, e_b = tot * n_a / (n_a + n_b), tot * n_b / (n_a + n_b)
    stat = ((a - e_a) ** 2 / e_a + (b - e_b) ** 2 / e_b).sum()
    dof = len(a) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


def _bin_counts(
    chosen: torch.Tensor, exact_density: torch.Tensor, cand: torch.Tensor
) -> torch.Tensor:
    """Counts of drawn candidates per (density decile x side-of-image-1) cell: 20 bins."""
    edges = exact_density.quantile(torch.linspace(0, 1, 11)[1:-1])
    decile = torch.bucketize(exact_density[chosen], edges)
    side = (cand[chosen, 2] > -0.35).long()
    return torch.bincount(decile * 2 + side, minlength=20)


def test_grid_and_exact_sampling_draw_the_same_distribution():
    """Issue 17: the linear-cost sampling is equal in distribution to RoMa's. Both draw
    1,000 of 4,000 candidates 300 times (the candidate stage is shared code; the methods
    differ in the density only); the counts of drawn matches per density decile and side
    of image 1 pass a chi-square two-sample test (p about 0.5; draws without replacement
    make it conservative). Its power: the same test rejects a kernel only 5% wider than
    RoMa's (p about 1e-42)."""
    cand = _match_candidates(4000, seed=1)
    exact = kde(cand)

    def draws(density: torch.Tensor, seed: int) -> torch.Tensor:
        p = 1.0 / (density + 1.0)
        p[density < 10] = 1e-7
        g = torch.Generator().manual_seed(seed)
        picks = [torch.multinomial(p, 1000, replacement=False, generator=g) for _ in range(300)]
        return _bin_counts(torch.cat(picks), exact, cand)

    ref = draws(exact, 0)
    assert _chi2_two_sample_p(ref, draws(grid_kde(cand), 1)) > 1e-3
    assert _chi2_two_sample_p(ref, draws(kde(cand), 2)) > 1e-3  # the exact one against itself
    assert _chi2_two_sample_p(ref, draws(kde(cand, std=0.105), 3)) < 1e-6  # power
    # and balanced_sample itself uses the chosen estimate (same generator, same candidates)
    c = torch.ones(len(cand))
    a = balanced_sample(cand, c, 1000, generator=torch.Generator().manual_seed(5), density="grid")
    b = balanced_sample(cand, c, 1000, generator=torch.Generator().manual_seed(5), density="exact")
    assert len(a[0]) == len(b[0]) == 1000 and not torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="density must be one of"):
        balanced_sample(cand, c, 10, density="fast")


def test_same_generator_same_matches_and_raw_certainty():
    torch.manual_seed(0)
    m = torch.rand(5000, 4) * 2 - 1
    c = torch.rand(5000)
    a = balanced_sample(m, c, 500, generator=torch.Generator().manual_seed(3))
    b = balanced_sample(m, c, 500, generator=torch.Generator().manual_seed(3))
    d = balanced_sample(m, c, 500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], d[0])
    assert len(a[0]) == 500
    # returned scores are the raw certainties of the chosen rows, not thresholded to 1
    rows = (m[:, None] == a[0][None]).all(-1).float().argmax(0)
    assert torch.equal(a[1], c[rows]) and a[1].max() < 1.0 and (a[1] > 0.05).any()


def test_zero_certainty_is_never_sampled():
    m = torch.rand(100, 4)
    c = torch.zeros(100)
    c[:10] = 0.9
    got, cert = balanced_sample(
        m, c, 50, balanced=False, generator=torch.Generator().manual_seed(0)
    )
    assert len(got) == 10 and (cert == 0.9).all()
    assert len(balanced_sample(m, torch.zeros(100), 5)[0]) == 0
    with pytest.raises(ValueError):
        balanced_sample(m, c, 0)


def test_cutoff_draws_only_above_the_threshold():
    # 9,000 uncertain pixels (0.3) and 1,000 certain ones (0.9): RoMa's rule draws the
    # uncertain ones in proportion to their certainty (expected share of 2,000 candidates
    # without replacement about 0.73); the cutoff never draws them
    torch.manual_seed(0)
    m = torch.rand(10000, 4) * 2 - 1
    c = torch.full((10000,), 0.3)
    c[:1000] = 0.9
    g = torch.Generator().manual_seed(0)
    _, soft = balanced_sample(m, c, 2000, sample_thresh=0.5, balanced=False, generator=g)
    _, hard = balanced_sample(m, c, 2000, sample_thresh=0.5, balanced=False, generator=g, cutoff=True)
    assert 0.6 < (soft == 0.3).float().mean() < 0.85
    assert len(hard) == 1000 and (hard == 0.9).all()  # fewer than asked: only 1,000 qualify
    _, bal = balanced_sample(m, c, 200, sample_thresh=0.5, generator=g, cutoff=True)
    assert len(bal) == 200 and (bal == 0.9).all()


def test_sample_uses_the_config_cutoff(small_model):
    out = {"warp0": torch.zeros(1, 8, 8, 2), "certainty0": torch.full((1, 8, 8), 0.3), "size0": (8, 8), "size1": (8, 8)}
    out["certainty0"][0, :2] = 0.9  # 16 certain pixels
    g = torch.Generator().manual_seed(0)
    cut = L2M(SMALL.replace(sample_thresh=0.5, sample_cutoff=True))
    assert len(cut.sample(out, 40, generator=g, balanced=False)["certainty"]) == 16
    assert len(small_model.sample(out, 40, generator=g, balanced=False)["certainty"]) == 40


def test_sample_returns_pixels_in_each_original_image(small_model):
    x0, x1 = torch.rand(1, 3, 90, 120), torch.rand(1, 3, 60, 200)
    with torch.inference_mode():
        out = small_model({"image0": x0, "image1": x1})
    s = small_model.sample(out, 400, generator=torch.Generator().manual_seed(0))
    k0, k1 = s["keypoints0"], s["keypoints1"]
    assert k0.shape == k1.shape == (len(s["certainty"]), 2) and len(k0) > 0
    assert (
        k0[:, 0].max() <= 120
        and k0[:, 1].max() <= 90
        and k1[:, 0].max() <= 200
        and k1[:, 1].max() <= 60
    )
    # keypoints of image 0 sampled from warp0 sit on pixel centres of the 56x56 output grid
    # scaled to 120x90: x = (i + 0.5) * 120 / 56
    gx = k0[:, 0] * 56 / 120 - 0.5
    on_grid = (gx - gx.round()).abs() < 1e-3
    assert on_grid.float().mean() > 0.3  # about half come from warp0 (the rest from warp1)


def test_sample_maps_keypoints_to_the_stored_grid(small_model, tmp_path):
    """EXIF orientation 6: the network sees the upright image; keypoints come back in the stored grid."""
    rng = np.random.default_rng(0)
    arr = (rng.random((30, 50, 3)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.png", exif=exif)
    Image.fromarray(arr).save(tmp_path / "plain.png")
    out = small_model.match(tmp_path / "rot.png", tmp_path / "plain.png")
    assert out["size0"] == (30, 50)  # upright: 90 degrees rotated
    g = torch.Generator().manual_seed(0)
    up = small_model.sample(out, 200, generator=g, frame="upright")
    st = small_model.sample(out, 200, generator=torch.Generator().manual_seed(0), frame="stored")
    assert torch.equal(up["keypoints1"], st["keypoints1"])  # no EXIF on image 1
    # orientation 6 (rotate 90 cw to display): stored (x, y) = (v, H - u) with H = 30
    expected = torch.stack((up["keypoints0"][:, 1], 30 - up["keypoints0"][:, 0]), dim=-1)
    assert torch.allclose(st["keypoints0"], expected)
    assert st["keypoints0"][:, 0].max() <= 50 and st["keypoints0"][:, 1].max() <= 30


def test_sample_density_comes_from_the_config_unless_given(small_model):
    x0, x1 = torch.rand(1, 3, 56, 56), torch.rand(1, 3, 56, 56)
    with torch.inference_mode():
        out = small_model({"image0": x0, "image1": x1})
    assert small_model.config.sample_density == "grid"  # the default since issue 17

    def draw(model, **kw):
        return model.sample(out, 300, generator=torch.Generator().manual_seed(0), **kw)["keypoints0"]

    exact_model = L2M(SMALL.replace(sample_density="exact"))
    assert torch.equal(draw(exact_model), draw(small_model, density="exact"))
    assert not torch.equal(draw(small_model), draw(small_model, density="exact"))
    with pytest.raises(ValueError, match="sample_density must be"):
        SMALL.replace(sample_density="fast")
