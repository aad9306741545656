"""Balanced sampling: reproducible, raw certainty, pixel conventions, EXIF frames."""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.sampling import balanced_sample, kde

SMALL = MatcherConfig(encoder="vits14", coarse_res=56, upsample_res=None)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return L2M(SMALL)


def test_kde_matches_direct_formula():
    x = torch.rand(300, 4)
    d2 = torch.cdist(x, x) ** 2
    assert torch.allclose(kde(x, std=0.1, chunk=64), torch.exp(-d2 / 0.02).sum(-1), rtol=1e-5)


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
    got, cert = balanced_sample(m, c, 50, balanced=False, generator=torch.Generator().manual_seed(0))
    assert len(got) == 10 and (cert == 0.9).all()
    assert len(balanced_sample(m, torch.zeros(100), 5)[0]) == 0
    with pytest.raises(ValueError):
        balanced_sample(m, c, 0)


def test_sample_returns_pixels_in_each_original_image(small_model):
    x0, x1 = torch.rand(1, 3, 90, 120), torch.rand(1, 3, 60, 200)
    with torch.inference_mode():
        out = small_model({"image0": x0, "image1": x1})
    s = small_model.sample(out, 400, generator=torch.Generator().manual_seed(0))
    k0, k1 = s["keypoints0"], s["keypoints1"]
    assert k0.shape == k1.shape == (len(s["certainty"]), 2) and len(k0) > 0
    assert k0[:, 0].max() <= 120 and k0[:, 1].max() <= 90 and k1[:, 0].max() <= 200 and k1[:, 1].max() <= 60
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
