"""l2m_plugin computes the same function as romatch 0.1.2 (the RoMa reference), stage by stage.

Identical random weights go into both networks (romatch is built from state dicts
we create: no download). Tolerance: 1e-4 on normalised warp coordinates and on
certainty, fp32 on CPU. Small resolutions keep the test fast.
"""

from __future__ import annotations

import math

import pytest
import torch

from .conftest import make_model, shared_pair

romatch = pytest.importorskip("romatch", reason="romatch (the numeric reference) is a dev extra: pip install -e .[dev]")

TOL = 1e-4
SQUARE = dict(coarse=(112, 112), upsample=(168, 168))
NON_SQUARE = dict(coarse=(112, 154), upsample=(168, 224))


@pytest.fixture(scope="module")
def reference(official_state_dicts):
    from romatch.models.model_zoo.roma_models import roma_model

    matcher, dino = official_state_dicts
    ref = roma_model(
        resolution=SQUARE["coarse"], upsample_preds=True, weights=matcher, dinov2_weights=dino,
        device="cpu", use_custom_corr=False, upsample_res=SQUARE["upsample"], symmetric=True,
    )
    return ref.eval()


def _set_reference_res(ref, coarse, upsample):
    ref.h_resized, ref.w_resized = coarse
    ref.upsample_preds = upsample is not None
    ref.upsample_res = upsample


def _split_reference(warp, cert):
    """romatch's (1, H, 2W, 4) / (1, H, 2W) symmetric layout -> warp0, warp1, certainty0, certainty1."""
    W = cert.shape[-1] // 2
    return warp[0, :, :W, 2:], warp[0, :, W:, :2], cert[0, :, :W], cert[0, :, W:]


def _assert_same(ours, ref_out, label):
    w0, w1, c0, c1 = ref_out
    diffs = {
        "warp0": (ours["warp0"][0] - w0).abs().max().item(),
        "warp1": (ours["warp1"][0] - w1).abs().max().item(),
        "certainty0": (ours["certainty0"][0] - c0).abs().max().item(),
        "certainty1": (ours["certainty1"][0] - c1).abs().max().item(),
    }
    assert ours["warp0"].shape[1:3] == w0.shape[:2]
    assert all(d <= TOL for d in diffs.values()), f"{label}: max abs differences {diffs}"
    # The outputs are not degenerate (random weights still give spread-out warps).
    assert w0.std() > 0.05 and c0.std() > 1e-3


@pytest.mark.parametrize("res", [SQUARE, NON_SQUARE], ids=["square", "non-square"])
@pytest.mark.parametrize("upsample", [True, False], ids=["upsample", "no-upsample"])
def test_match_equals_romatch(reference, random_state_dict, res, upsample):
    a, b = shared_pair()
    up = res["upsample"] if upsample else None
    _set_reference_res(reference, res["coarse"], up)
    ref_out = _split_reference(*reference.match(str(a), str(b)))
    model = make_model(random_state_dict, coarse_res=res["coarse"], upsample_res=up,
                       normalize=True, displacement_scale="romatch", gp_solve="cholesky")
    ours = model.match(a, b)
    _assert_same(ours, ref_out, f"{res} upsample={upsample}")


def test_each_stage_equals_romatch(reference, random_state_dict):
    """VGG pyramid, ViT features (timm vs DINOv2 at a non-518 size), then every decoder scale."""
    from l2m_plugin.io import load_image, resize_to_tensor

    model = make_model(random_state_dict, coarse_res=NON_SQUARE["coarse"], upsample_res=None,
                       normalize=True, displacement_scale="romatch", gp_solve="cholesky")
    x = torch.stack([resize_to_tensor(load_image(p).image, NON_SQUARE["coarse"]) for p in shared_pair()])
    x = model._prepare(x, NON_SQUARE["coarse"])  # ImageNet normalisation, as romatch's transform
    with torch.inference_mode():
        ref_vgg = reference.encoder.cnn(x)
        our_vgg = model.encoder.cnn(x)
        for s in (1, 2, 4, 8):
            assert our_vgg[s].shape == ref_vgg[s].shape
            scale = ref_vgg[s].abs().max().item()
            assert (our_vgg[s] - ref_vgg[s]).abs().max().item() <= TOL * max(1.0, scale), f"VGG scale {s}"
        h, w = NON_SQUARE["coarse"]
        ref_vit = reference.encoder.dinov2_vitl14[0].forward_features(x)["x_norm_patchtokens"]
        ref_vit = ref_vit.permute(0, 2, 1).reshape(2, 1024, h // 14, w // 14)
        our_vit = model.encoder.dinov2(x)
        assert (our_vit - ref_vit).abs().max().item() <= TOL, "ViT features differ (position-embedding resampling?)"

        feats = reference.encoder(x)
        f_s = {k: torch.cat((v[1:], v[:1])) for k, v in feats.items()}
        sf = math.sqrt(h * w / 560**2)
        ref_dec = reference.decoder(feats, f_s, scale_factor=sf)
        our_dec = model.decoder(feats, f_s, scale_factor=sf)
    for s in (16, 8, 4, 2, 1):
        for key in ("flow", "certainty"):
            d = (our_dec[s][key] - ref_dec[s][key]).abs().max().item()
            assert d <= TOL, f"decoder scale {s} {key}: {d}"


def test_l2m_fork_switches_reproduce_the_fork(reference, random_state_dict, monkeypatch):
    """The authors' fork = romatch with: no ImageNet normalisation, displacement factor 1 in
    the coarse pass and sqrt(up/coarse) in the upsampling pass, GP by explicit inverse, and
    (MINIMA harness) BGR input. romatch patched that way equals our switches."""
    import romatch.models.matcher as rm

    a, b = shared_pair()
    coarse, up = NON_SQUARE["coarse"], NON_SQUARE["upsample"]
    _set_reference_res(reference, coarse, up)

    orig_ops = rm.get_tuple_transform_ops
    monkeypatch.setattr(rm, "get_tuple_transform_ops", lambda *a_, **k: orig_ops(*a_, **{**k, "normalize": False}))
    gp = reference.decoder.gps["16"]
    gp_forward = gp.forward

    def gp_inverse(*args, **kwargs):  # romatch's GP takes the explicit-inverse branch in training mode
        gp.training = True
        try:
            return gp_forward(*args, **kwargs)
        finally:
            gp.training = False

    monkeypatch.setattr(gp, "forward", gp_inverse)
    sym = reference.forward_symmetric
    bgr = {"on": False}

    def fork_forward(batch, batched=True, upsample=False, scale_factor=1):
        sf = math.sqrt(up[0] * up[1] / (coarse[0] * coarse[1])) if upsample else 1.0
        if bgr["on"]:
            batch = {**batch, "im_A": batch["im_A"].flip(1), "im_B": batch["im_B"].flip(1)}
        return sym(batch, batched=batched, upsample=upsample, scale_factor=sf)

    monkeypatch.setattr(reference, "forward_symmetric", fork_forward)

    for order in ("RGB", "BGR"):
        bgr["on"] = order == "BGR"
        ref_out = _split_reference(*reference.match(str(a), str(b)))
        model = make_model(random_state_dict, coarse_res=coarse, upsample_res=up, color_order=order)
        assert model.config.normalize is False and model.config.displacement_scale == "l2m"
        _assert_same(model.match(a, b), ref_out, f"fork emulation {order}")


def test_switches_change_the_output(random_state_dict):
    """Each fork/romatch switch is live: flipping it alone changes the result."""
    a, b = shared_pair()
    base = dict(coarse_res=NON_SQUARE["coarse"], upsample_res=NON_SQUARE["upsample"])
    ref = make_model(random_state_dict, **base).match(a, b)
    for change in ({"normalize": True}, {"displacement_scale": "romatch"}, {"color_order": "BGR"}):
        other = make_model(random_state_dict, **base, **change).match(a, b)
        # 10x the equivalence tolerance on the warp, and clearly on the certainty
        assert (other["warp0"] - ref["warp0"]).abs().max().item() > 10 * TOL, change
        assert (other["certainty0"] - ref["certainty0"]).abs().max().item() > 1e-2, change
    # cholesky vs inverse: the same function up to round-off
    chol = make_model(random_state_dict, **base, gp_solve="cholesky").match(a, b)
    assert (chol["warp0"] - ref["warp0"]).abs().max().item() <= TOL


def test_batch_equals_single(random_state_dict):
    """B = 2 gives the same as two B = 1 calls, including the upsampling pass."""
    torch.manual_seed(2)
    model = make_model(random_state_dict, coarse_res=(112, 112), upsample_res=(160, 160))
    x0, x1 = torch.rand(2, 3, 140, 180), torch.rand(2, 3, 120, 100)
    with torch.inference_mode():
        batched = model({"image0": x0, "image1": x1})
        for i in range(2):
            single = model({"image0": x0[i : i + 1], "image1": x1[i : i + 1]})
            for k in ("warp0", "certainty0", "warp1", "certainty1"):
                assert batched[k].shape[0] == 2
                d = (batched[k][i] - single[k][0]).abs().max().item()
                assert d <= 1e-5, f"{k}[{i}] differs by {d}"
    assert batched["warp0"].shape == (2, 160, 160, 2)


@pytest.mark.slow
def test_match_equals_romatch_at_the_default_resolution(reference, random_state_dict):
    """560 / 864, the resolution the official weights are run at (about 3 minutes on 2 cores)."""
    a, b = shared_pair()
    _set_reference_res(reference, (560, 560), (864, 864))
    ref_out = _split_reference(*reference.match(str(a), str(b)))
    model = make_model(random_state_dict, coarse_res=560, upsample_res=864,
                       normalize=True, displacement_scale="romatch", gp_solve="cholesky")
    _assert_same(model.match(a, b), ref_out, "560/864")
