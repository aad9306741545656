"""The kornia adapter: ``kornia.feature.LoFTR``'s input / output contract, proven by geometry.

The network tests use a small random L2M (ViT-S/14, coarse 56 x 84, no upsampling pass), as
``tests/test_matcher_api.py`` does; the geometric test uses the oracle matcher on a synthetic
scene with exact depth and poses (``l2m_plugin.testing.scenes`` / ``l2m_plugin.matching.oracle``).
"""

from __future__ import annotations

import copy

import kornia
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from kornia.geometry.epipolar import (
    left_to_right_epipolar_distance,
    right_to_left_epipolar_distance,
)

import l2m_plugin.integrations.kornia as kornia_adapter
from l2m_plugin import MatcherConfig
from l2m_plugin.integrations.kornia import KorniaL2M
from l2m_plugin.models.matcher import L2M as DenseL2M
from l2m_plugin.models.matcher import load_matcher

SMALL = MatcherConfig(encoder="vits14", coarse_res=(56, 84), upsample_res=None)
NUM = 150
KEYS = {"keypoints0", "keypoints1", "confidence", "batch_indexes"}


@pytest.fixture(scope="module")
def small_sd() -> dict:
    torch.manual_seed(0)
    return DenseL2M(SMALL).state_dict()


@pytest.fixture(scope="module")
def dense(small_sd):
    """A random dense L2M (the matcher= argument of the adapter)."""
    return load_matcher(small_sd, config=SMALL)


@pytest.fixture(scope="module")
def adapter(dense):
    return KorniaL2M(matcher=dense, num_matches=NUM, seed=0)


def _images(b: int = 2, size0=(60, 80), size1=(72, 48), channels: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(b, channels, *size0, generator=g),
        torch.rand(b, channels, *size1, generator=g),
    )


def _assert_contract(out: dict, device: str = "cpu") -> int:
    assert set(out) == KEYS
    n = out["confidence"].shape[0]
    assert out["keypoints0"].shape == out["keypoints1"].shape == (n, 2)
    assert out["confidence"].shape == out["batch_indexes"].shape == (n,)
    for k in ("keypoints0", "keypoints1", "confidence"):
        assert out[k].dtype == torch.float32, k
    assert out["batch_indexes"].dtype == torch.int64
    for k, v in out.items():
        assert v.device == torch.device(device), k
        assert not v.requires_grad, k
    return n


# --------------------------------------------------------------------------- contract
def test_contract_batch_of_two_non_square_different_sizes(adapter):
    x0, x1 = _images(2, size0=(60, 80), size1=(72, 48))  # landscape vs portrait
    out = adapter({"image0": x0, "image1": x1})
    n = _assert_contract(out)
    assert n == 2 * NUM
    bi = out["batch_indexes"]
    assert torch.equal(bi, torch.arange(2).repeat_interleave(NUM))  # pairs concatenated in order
    # LoFTR's frame: pixel centres at 0.5 .. W-0.5, the image spans [0, W].
    k0, k1 = out["keypoints0"], out["keypoints1"]
    assert k0[:, 0].min() >= 0 and k0[:, 0].max() <= 80
    assert k0[:, 1].min() >= 0 and k0[:, 1].max() <= 60
    assert k1[:, 0].min() >= 0 and k1[:, 0].max() <= 48
    assert k1[:, 1].min() >= 0 and k1[:, 1].max() <= 72
    # Keypoints use each image's own size: they reach across the whole image.
    assert k0[:, 0].max() > 60 and k1[:, 1].max() > 54
    c = out["confidence"]
    assert 0 < c.min() and c.max() <= 1


def test_each_pair_of_a_batch_equals_running_it_alone(adapter):
    x0, x1 = _images(2)
    out = adapter({"image0": x0, "image1": x1})
    for b in range(2):
        alone = adapter({"image0": x0[b : b + 1], "image1": x1[b : b + 1]})
        sel = out["batch_indexes"] == b
        assert torch.equal(alone["batch_indexes"], torch.zeros(NUM, dtype=torch.int64))
        for k in ("keypoints0", "keypoints1", "confidence"):
            torch.testing.assert_close(out[k][sel], alone[k], atol=1e-5, rtol=0)


def test_grayscale_equals_the_image_replicated_to_rgb(adapter):
    g0, g1 = _images(1, size0=(56, 70), size1=(64, 64), channels=1)
    gray = adapter({"image0": g0, "image1": g1})
    rgb = adapter({"image0": g0.expand(-1, 3, -1, -1), "image1": g1.repeat(1, 3, 1, 1)})
    assert _assert_contract(gray) == NUM
    for k in KEYS:
        assert torch.equal(gray[k], rgb[k]), k
    # and a real colour image differs from its first channel replicated
    c0, c1 = _images(1, size0=(56, 70), size1=(64, 64), channels=3)
    other = adapter({"image0": c0, "image1": c1})
    assert not torch.equal(other["keypoints0"], gray["keypoints0"])


def test_eval_mode_and_no_grad(dense):
    m = KorniaL2M(matcher=dense.train(), num_matches=NUM)
    assert not m.training and not m.matcher.training  # constructed in eval mode
    x0, x1 = _images(1)
    x0.requires_grad_(True)
    x1.requires_grad_(True)
    with torch.enable_grad():
        out = m({"image0": x0, "image1": x1})
    _assert_contract(out)
    # plain tensors, not inference tensors: in-place edits work as with LoFTR's outputs
    out["keypoints0"] += 0.0


def test_float64_and_half_inputs_are_accepted(adapter):
    x0, x1 = _images(1)
    ref = adapter({"image0": x0, "image1": x1})
    dbl = adapter({"image0": x0.double(), "image1": x1.double()})
    for k in KEYS:
        assert torch.equal(ref[k], dbl[k]), k
    _assert_contract(adapter({"image0": x0.half(), "image1": x1.bfloat16()}))


class _NoCertainty(nn.Module):
    """A dense matcher whose certainty is zero everywhere (nothing passes the sampler)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    @property
    def device(self):
        return self.inner.device

    def forward(self, data):
        out = dict(self.inner(data))
        for k in ("certainty0", "certainty1"):
            out[k] = torch.zeros_like(out[k])
        return out

    def sample(self, out, num, **kwargs):
        return self.inner.sample(out, num, **kwargs)


def test_empty_output_is_well_formed(dense):
    m = KorniaL2M(matcher=_NoCertainty(dense), num_matches=NUM)
    out = m({"image0": _images(2)[0], "image1": _images(2)[1]})
    assert _assert_contract(out) == 0
    assert out["keypoints0"].shape == (0, 2) and out["confidence"].shape == (0,)
    # an empty batch as well
    x0, x1 = _images(0)
    assert _assert_contract(m({"image0": x0, "image1": x1})) == 0


def test_keypoints_are_l2m_sample_in_loftrs_frame(adapter, dense):
    """The adapter returns LoFTR's frame, which is L2M.sample's (COLMAP, centres at i + 0.5)."""
    x0, x1 = _images(1, size0=(50, 90), size1=(80, 60))
    out = adapter({"image0": x0, "image1": x1})
    with torch.no_grad():
        d = dense({"image0": x0, "image1": x1})
    s = dense.sample(d, NUM, generator=torch.Generator().manual_seed(0))
    assert len(s["keypoints0"]) == NUM
    torch.testing.assert_close(out["keypoints0"], s["keypoints0"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["keypoints1"], s["keypoints1"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out["confidence"], s["certainty"], atol=0, rtol=0)


def test_same_seed_same_matches_other_seed_other_matches(dense):
    x0, x1 = _images(1)
    a = KorniaL2M(matcher=dense, num_matches=NUM, seed=3)({"image0": x0, "image1": x1})
    b = KorniaL2M(matcher=dense, num_matches=NUM, seed=3)
    b1, b2 = b({"image0": x0, "image1": x1}), b({"image0": x0, "image1": x1})
    c = KorniaL2M(matcher=dense, num_matches=NUM, seed=4)({"image0": x0, "image1": x1})
    for k in KEYS:
        assert torch.equal(a[k], b1[k]) and torch.equal(b1[k], b2[k]), k
    assert not torch.equal(a["keypoints0"], c["keypoints0"])


def test_loading_path_equals_matcher_argument(small_sd, adapter):
    """``L2M(weights, **config_overrides)`` goes through load_matcher (a state dict: no download)."""
    loaded = KorniaL2M(
        small_sd, encoder="vits14", coarse_res=(56, 84), upsample_res=None, num_matches=NUM
    )
    assert isinstance(loaded.matcher, DenseL2M) and loaded.matcher.config == SMALL
    assert not loaded.training
    x0, x1 = _images(1)
    a, b = loaded({"image0": x0, "image1": x1}), adapter({"image0": x0, "image1": x1})
    for k in KEYS:
        assert torch.equal(a[k], b[k]), k


def test_constructor_errors(dense):
    with pytest.raises(ValueError, match="coarse_res"):
        KorniaL2M(matcher=dense, coarse_res=112)
    with pytest.raises(ValueError, match="num_matches"):
        KorniaL2M(matcher=dense, num_matches=0)
    with pytest.raises(ValueError, match="unknown preset"):
        KorniaL2M({}, preset="nope")
    with pytest.raises(TypeError, match="sample"):
        KorniaL2M(matcher=nn.Identity())


def test_default_weights_with_presets_and_configs(monkeypatch, dense):
    """``L2M()`` (l2m-tiny, offline), ``preset="l2m-tiny"`` and its YAML load the shipped model
    with its config and match; a preset of another architecture is a short error."""
    from pathlib import Path

    from l2m_plugin import PRESETS
    from l2m_plugin.weights import ArchitectureMismatchError

    monkeypatch.setenv("L2M_OFFLINE", "1")
    yaml = Path(__file__).resolve().parents[1] / "configs" / "matcher" / "l2m_tiny.yaml"
    x0, x1 = _images(1, size0=(96, 128), size1=(120, 90))
    outs = []
    for kwargs in ({}, {"preset": "l2m-tiny"}, {"config": yaml}, {"config": PRESETS["l2m-tiny"]}):
        m = KorniaL2M(num_matches=NUM, **kwargs)
        assert m.matcher.weights_name == "l2m-tiny" and m.matcher.config == PRESETS["l2m-tiny"], kwargs
        outs.append(m({"image0": x0, "image1": x1}))
        assert _assert_contract(outs[-1]) == NUM
    for out in outs[1:]:
        for k in KEYS:
            assert torch.equal(out[k], outs[0][k]), k
    assert KorniaL2M(preset="l2m-tiny", coarse_res=256).matcher.config.coarse_res == (256, 256)
    with pytest.raises(ArchitectureMismatchError, match="are arch tiny-ds but the config is for arch tiny"):
        KorniaL2M(preset="tiny")  # the first l2m-tiny's network
    with pytest.raises(ArchitectureMismatchError, match="are arch tiny-ds but the config is for arch roma") as err:
        KorniaL2M(preset="romatch")
    assert len(str(err.value).splitlines()) <= 3 and "preset l2m-tiny" in str(err.value)
    with pytest.raises(ValueError, match="not both"):
        KorniaL2M(preset="l2m-tiny", config=yaml)
    with pytest.raises(ValueError, match="preset"):
        KorniaL2M(matcher=dense, preset="l2m-tiny")


_SHAPE = r"\(B, 1, H, W\) or \(B, 3, H, W\)"


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"image1": torch.rand(1, 3, 32, 32)}, "'image0'.*" + _SHAPE),
        ({"image0": torch.rand(1, 3, 32, 32)}, "'image1'.*" + _SHAPE),
        (
            {"image0": torch.rand(3, 32, 32), "image1": torch.rand(1, 3, 32, 32)},
            "image0.*" + _SHAPE,
        ),
        (
            {"image0": torch.rand(1, 3, 32, 32), "image1": torch.rand(1, 2, 32, 32)},
            "image1.*" + _SHAPE + r".*\(1, 2, 32, 32\)",
        ),
        (
            {"image0": torch.rand(1, 4, 32, 32), "image1": torch.rand(1, 3, 32, 32)},
            "image0.*" + _SHAPE,
        ),
        (
            {"image0": torch.rand(1, 3, 32, 32), "image1": torch.ones(1, 3, 32, 32).byte()},
            "image1.*float.*uint8",
        ),
        (
            {"image0": np.zeros((1, 3, 32, 32), np.float32), "image1": torch.rand(1, 3, 32, 32)},
            "image0.*" + _SHAPE + ".*ndarray",
        ),
        (
            {"image0": torch.rand(2, 3, 32, 32), "image1": torch.rand(1, 3, 32, 32)},
            "image0 and image1.*same batch size",
        ),
        ({"features0": {}, "image1": torch.rand(1, 3, 32, 32)}, "features0.*not supported"),
        ([torch.rand(1, 3, 32, 32)] * 2, "dict.*'image0' and 'image1'"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_key(adapter, data, pattern):
    with pytest.raises(ValueError, match=pattern):
        adapter(data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs_on_the_device_of_image0(small_sd):
    m = KorniaL2M(matcher=load_matcher(small_sd, config=SMALL), num_matches=NUM, device="cuda")
    assert m.device.type == "cuda"
    x0, x1 = _images(2)
    on_gpu = m({"image0": x0.cuda(), "image1": x1.cuda()})
    assert _assert_contract(on_gpu, device="cuda:0") == 2 * NUM
    on_cpu = m({"image0": x0, "image1": x1})  # moved to the matcher, results back on the CPU
    assert _assert_contract(on_cpu) == 2 * NUM
    torch.testing.assert_close(on_cpu["keypoints0"], on_gpu["keypoints0"].cpu())


def test_masks_are_accepted_and_ignored(adapter):
    x0, x1 = _images(1)
    ref = adapter({"image0": x0, "image1": x1})
    masked = adapter(
        {
            "image0": x0,
            "image1": x1,
            "mask0": torch.zeros(1, 60, 80),
            "mask1": torch.ones(1, 72, 48),
        }
    )
    for k in KEYS:
        assert torch.equal(ref[k], masked[k]), k


# --------------------------------------------------------------------------- drop-in
def estimate_F(matcher, img0, img1):
    """Written for kornia.feature.LoFTR: fundamental matrix of a pair by RANSAC on its matches."""
    out = matcher({"image0": img0, "image1": img1})
    F, inliers = kornia.geometry.ransac.RANSAC("fundamental")(out["keypoints0"], out["keypoints1"])
    return F, inliers


def test_function_written_for_loftr_runs_unchanged(dense, monkeypatch):
    import kornia.feature.loftr.loftr as loftr_module

    def no_download(*args, **kwargs):
        raise AssertionError("LoFTR(pretrained=None) tried to download weights")

    monkeypatch.setattr(loftr_module, "load_state_dict_from_url", no_download)
    torch.manual_seed(0)
    # Random LoFTR weights give low dual-softmax scores: keep every mutual nearest neighbour
    # (thr 0) so that RANSAC gets its 7+ matches. The contract is unchanged.
    cfg = copy.deepcopy(loftr_module.default_cfg)
    cfg["match_coarse"]["thr"] = 0.0
    loftr = kornia.feature.LoFTR(pretrained=None, config=cfg).eval()
    img = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lo = loftr({"image0": img, "image1": img})
    assert set(lo) == KEYS and lo["keypoints0"].dtype == torch.float32
    assert lo["batch_indexes"].dtype == torch.int64 and len(lo["confidence"]) >= 8
    with torch.no_grad():
        F_lo, inl_lo = estimate_F(loftr, img, img)
    assert F_lo.shape == (3, 3) and inl_lo.dtype == torch.bool
    assert inl_lo.shape == lo["confidence"].shape

    # The same function, the same grayscale tensors, with L2M instead of LoFTR.
    l2m = KorniaL2M(matcher=dense, num_matches=NUM)
    img1 = torch.rand(1, 1, 80, 112, generator=torch.Generator().manual_seed(2))
    F_l2m, inl_l2m = estimate_F(l2m, img, img1)
    assert F_l2m.shape == (3, 3) and torch.isfinite(F_l2m).all()
    assert inl_l2m.shape == (NUM,) and inl_l2m.dtype == torch.bool


# --------------------------------------------------------------------------- geometry
@pytest.fixture(scope="module")
def scene():
    from l2m_plugin.testing.scenes import make_scene

    return make_scene(num_views=5, size=(160, 120), seed=0)


def _tensor(view) -> torch.Tensor:
    return torch.from_numpy(view.image).permute(2, 0, 1).float()[None] / 255


def _epipolar_px(k0: torch.Tensor, k1: torch.Tensor, Fm: torch.Tensor) -> torch.Tensor:
    """Per match, the larger of the point-to-epipolar-line distances in image 0 and image 1."""
    k0, k1, Fm = k0.double(), k1.double(), Fm.double()
    return torch.maximum(
        left_to_right_epipolar_distance(k0, k1, Fm), right_to_left_epipolar_distance(k0, k1, Fm)
    )


def _resized_fundamental(F_hloc: np.ndarray, size1: tuple[int, int], new_size1: tuple[int, int]):
    """F for image 1 resized from (W, H) ``size1`` to ``new_size1``, integer-centre convention.

    COLMAP pixels scale exactly (x' = s x); integer-centre pixels are COLMAP's minus 0.5, so
    x1_orig = (x1_new + 0.5) / s - 0.5 = A x1_new and F' = A^T F.
    """
    sx, sy = new_size1[0] / size1[0], new_size1[1] / size1[1]
    A = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1.0]])
    return torch.from_numpy(A.T @ F_hloc)


def test_kornia_oracle_epipolar(scene, monkeypatch):
    """Exact matches through the adapter, mapped as kornia documents for LoFTR's output
    (subtract 0.5), lie on the epipolar lines of the kornia-frame (integer centres) F.

    Pairs (0, 4) and (1, 3) of a 40-degree arc, batched; and pair (0, 4) with image 1 upsampled
    to 2x (kornia users resize). With both images at the same scale a common 0.5 px shift of
    both keypoints nearly cancels in the epipolar constraint (cameras mostly translate
    sideways), so a wrong frame only moves matches by about 0.1 px there; at different scales
    the shifts no longer cancel and a wrong frame puts every match > 0.1 px off.
    """
    from l2m_plugin.matching.oracle import OracleMatcher

    v = scene.views
    oracle = OracleMatcher(v, output_res=(120, 160))
    m = KorniaL2M(matcher=oracle, num_matches=1000, seed=0)
    pairs = [(0, 4), (1, 3)]
    x0 = torch.cat([_tensor(v[i]) for i, _ in pairs])
    x1 = torch.cat([_tensor(v[j]) for _, j in pairs])
    out = m({"image0": x0, "image1": x1})
    _assert_contract(out)
    for b, (i, j) in enumerate(pairs):
        sel = out["batch_indexes"] == b
        assert int(sel.sum()) == 1000
        Fm = torch.from_numpy(scene.fundamental(v[i].name, v[j].name, convention="hloc"))
        d = _epipolar_px(out["keypoints0"][sel] - 0.5, out["keypoints1"][sel] - 0.5, Fm)
        assert float(d.max()) < 0.1, (i, j, float(d.max()))
        # the 0.5 px shift is measurable even at equal scales
        d_colmap = _epipolar_px(out["keypoints0"][sel], out["keypoints1"][sel], Fm)
        assert float(d_colmap.max()) > 0.15 and float(d_colmap.median()) > 0.03

    # Image 1 at twice the size (W, H) = (320, 240); image 0 at its own size.
    up = F.interpolate(_tensor(v[4]), size=(240, 320), mode="bilinear", align_corners=False)
    F_up = _resized_fundamental(
        scene.fundamental(v[0].name, v[4].name, convention="hloc"), (160, 120), (320, 240)
    )
    out = m({"image0": _tensor(v[0]), "image1": up})
    assert len(out["confidence"]) == 1000
    assert out["keypoints1"][:, 0].max() > 250  # keypoints in the resized image's pixels
    d = _epipolar_px(out["keypoints0"] - 0.5, out["keypoints1"] - 0.5, F_up)
    assert float(d.max()) < 0.1, float(d.max())

    # Deliberately return kornia's frame instead of LoFTR's inside the adapter: caught.
    monkeypatch.setattr(kornia_adapter, "to_loftr_frame", lambda x: x - 0.5)
    bad = m({"image0": _tensor(v[0]), "image1": up})
    d_bad = _epipolar_px(bad["keypoints0"] - 0.5, bad["keypoints1"] - 0.5, F_up)
    assert float((d_bad > 0.1).float().mean()) > 0.9, float(d_bad.median())
    assert float(d_bad.median()) > 0.3
    monkeypatch.undo()

    # The LoFTR-style function recovers the true geometry from the adapter's matches.
    torch.manual_seed(0)
    F_est, inliers = estimate_F(m, _tensor(v[0]), up)
    assert inliers.float().mean() > 0.95
    d_est = _epipolar_px(out["keypoints0"], out["keypoints1"], F_est)
    assert float(d_est.median()) < 0.1, float(d_est.median())
