"""The tensor API contract of L2M.forward: keys, shapes, dtypes, ranges, modes."""

import pytest
import torch

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.models.matcher import load_matcher

SMALL = MatcherConfig(encoder="vits14", coarse_res=(56, 84), upsample_res=(64, 96))


@pytest.fixture(scope="module")
def sd():
    torch.manual_seed(0)
    return L2M(SMALL).state_dict()


def test_output_contract(sd):
    model = load_matcher(sd, config=SMALL)
    x0, x1 = torch.rand(2, 3, 100, 130), torch.rand(2, 3, 70, 50)
    with torch.inference_mode():
        out = model({"image0": x0, "image1": x1})
    assert out["warp0"].shape == out["warp1"].shape == (2, 64, 96, 2)
    assert out["certainty0"].shape == out["certainty1"].shape == (2, 64, 96)
    for k in ("warp0", "warp1", "certainty0", "certainty1"):
        assert out[k].dtype == torch.float32 and torch.isfinite(out[k]).all()
    assert out["warp0"].abs().max() <= 1 and 0 <= out["certainty0"].min() and out["certainty0"].max() <= 1
    assert out["size0"] == (130, 100) and out["size1"] == (50, 70)


def test_no_upsampling_and_non_symmetric(sd):
    model = load_matcher(sd, config=SMALL.replace(upsample_res=None, symmetric=False))
    with torch.inference_mode():
        out = model({"image0": torch.rand(1, 3, 56, 84), "image1": torch.rand(1, 3, 56, 84)})
    assert out["warp0"].shape == (1, 56, 84, 2) and "warp1" not in out and "certainty1" not in out
    s = model.sample(out, 50, generator=torch.Generator().manual_seed(0))
    assert len(s["keypoints0"]) == 50


def test_non_symmetric_equals_the_first_half_of_symmetric(sd):
    x0, x1 = torch.rand(1, 3, 56, 84), torch.rand(1, 3, 56, 84)
    with torch.inference_mode():
        sym = load_matcher(sd, config=SMALL)({"image0": x0, "image1": x1})
        one = load_matcher(sd, config=SMALL.replace(symmetric=False))({"image0": x0, "image1": x1})
    assert (sym["warp0"] - one["warp0"]).abs().max() <= 1e-5
    assert (sym["certainty0"] - one["certainty0"]).abs().max() <= 1e-5


def test_bfloat16_autocast_runs_and_returns_float32(sd):
    model = load_matcher(sd, config=SMALL.replace(dtype="bfloat16"))
    with torch.inference_mode():
        out = model({"image0": torch.rand(1, 3, 56, 84), "image1": torch.rand(1, 3, 56, 84)})
    assert out["warp0"].dtype == torch.float32 and torch.isfinite(out["warp0"]).all()
    assert torch.isfinite(out["certainty0"]).all()


@pytest.mark.parametrize("upsample", [None, (64, 96)])
def test_encode_once_then_match_features_equals_forward(sd, upsample):
    """SfM encodes each image once: match_features(encode(a), encode(b)) == forward({a, b})."""
    model = load_matcher(sd, config=SMALL.replace(upsample_res=upsample))
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 3, 120, 150, generator=g), torch.rand(1, 3, 100, 130, generator=g)
    with torch.inference_mode():
        ref = model({"image0": a, "image1": b})
        fa, fb = model.encode(a), model.encode(b)
        out = model.match_features(fa, fb)
        swapped = model.match_features(fb, fa)
    assert out["size0"] == (150, 120) and out["size1"] == (130, 100)
    for key in ("warp0", "certainty0", "warp1", "certainty1"):
        assert torch.allclose(out[key], ref[key], atol=1e-4), key
    # Features are per image: swapping the pair swaps the directions.
    assert torch.allclose(swapped["warp0"], ref["warp1"], atol=1e-4)
    assert torch.allclose(swapped["certainty1"], ref["certainty0"], atol=1e-4)


def test_memory_budget_runs_the_refiners_in_bands_with_the_same_output(sd, monkeypatch):
    """memory_budget_gb: the refiners' conv stacks run on bands of rows (with a halo), same output."""
    from l2m_plugin.models.decoder import ConvRefiner

    x = {"image0": torch.rand(1, 3, 56, 84), "image1": torch.rand(1, 3, 70, 50)}
    calls = []
    band = ConvRefiner._band
    monkeypatch.setattr(ConvRefiner, "_band", lambda self, *a: calls.append(a[-2:]) or band(self, *a))
    with torch.inference_mode():
        ref = load_matcher(sd, config=SMALL)(x)
        n_one = len(calls)
        tiled = load_matcher(sd, config=SMALL.replace(memory_budget_gb=0.002))(x)
    assert n_one == 9  # one band per refiner call (5 coarse + 4 fine scales)
    assert len(calls) - n_one > 30  # many bands
    assert any(a0 > 0 for a0, _ in calls[n_one:])
    for k in ("warp0", "warp1", "certainty0", "certainty1"):
        assert (tiled[k] - ref[k]).abs().max() <= 1e-5, k
    with pytest.raises(ValueError, match="memory_budget_gb"):
        SMALL.replace(memory_budget_gb=0)


def test_conv_refiner_bands_cover_the_receptive_field():
    from l2m_plugin.models.decoder import ConvRefiner

    torch.manual_seed(0)
    r = ConvRefiner(in_dim=2 * 8 + 4 + 9, hidden_dim=2 * 8 + 4 + 9, displacement_emb_dim=4, local_corr_radius=1).eval()
    for m in r.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    f0, f1 = torch.randn(2, 8, 45, 30), torch.randn(2, 8, 45, 30)
    warp = torch.rand(2, 2, 45, 30) * 2 - 1
    assert r.halo == 18  # 9 depth-wise 5x5 convolutions
    with torch.inference_mode():
        d, c = r(f0, f1, warp)
        per_row = 6 * 4 * 2 * 30 * r.block1[0].out_channels
        d2, c2 = r(f0, f1, warp, tile_bytes=per_row * (2 * 18 + 4))  # bands of 4 rows
    assert (d2 - d).abs().max() <= 1e-5 and (c2 - c).abs().max() <= 1e-5
