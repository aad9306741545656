"""The tiny-ds architecture: dual-softmax coarse matcher, its loss, and homography training pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2m_plugin import L2M
from l2m_plugin.config import ARCH_PRESETS, ArchConfig, MatcherConfig
from l2m_plugin.coords import normalized_grid
from l2m_plugin.models.decoder import DualSoftmaxMatcher, _AttentionBlock, sine_position_encoding
from l2m_plugin.synthesis.homography import (
    HomographyConfig,
    homography_warp,
    random_homography_pair,
)
from l2m_plugin.training.losses import RobustLoss, cell_targets


def _distinct_features(h: int, w: int, c: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, h, w, generator=g) * 10


class _Identity(torch.nn.Module):
    def forward(self, x, source):
        return x


def _bare_matcher(c=64, temperature=0.1):
    m = DualSoftmaxMatcher(c, depth=1, num_heads=4, temperature=temperature)
    # no attention: the assignment then depends on the input features alone
    m.self_blocks = torch.nn.ModuleList([_Identity()])
    m.cross_blocks = torch.nn.ModuleList([_Identity()])
    return m.eval()


def test_dual_softmax_recovers_a_cell_shift():
    h, w = 12, 16
    f1 = _distinct_features(h, w)
    f0 = torch.roll(f1, shifts=(-2, -3), dims=(2, 3))  # cell (y, x) of image 0 shows cell (y+2, x+3) of image 1
    m = _bare_matcher()
    with torch.no_grad():
        # position encoding is the same for both images: subtract nothing, it is a shared offset
        warp, cert, log_p = m(f0, f1)
    grid = normalized_grid(h, w)  # (h, w, 2)
    expect = grid + torch.tensor([3 * 2 / w, 2 * 2 / h])
    ok = torch.zeros(h, w, dtype=torch.bool)
    ok[: h - 2, : w - 3] = True  # cells whose true match is inside image 1 (no wrap-around)
    err = (warp[0].permute(1, 2, 0) - expect).abs()[ok]
    assert float(err.max()) < 0.05 * 2 / w  # within 5% of a cell
    assert float(torch.sigmoid(cert[0, 0])[ok].median()) > 0.9
    assert log_p.shape == (1, h * w, h * w)
    assert torch.allclose(log_p.exp().sum(dim=2), log_p.exp().sum(dim=2).clamp(max=1))  # P <= row softmax


def test_dual_softmax_subcell_soft_argmax_between_two_cells(monkeypatch):
    # image 0's cell matches two neighbouring cells of image 1 equally: the warp is halfway
    # (without the position encoding, which would favour the cell at the same place)
    import l2m_plugin.models.decoder as dec

    monkeypatch.setattr(dec, "sine_position_encoding", lambda c, h, w, device=None: torch.zeros(1, c, h, w))
    h, w, c = 6, 6, 32
    f1 = _distinct_features(h, w, c)
    f1[0, :, 2, 3] = f1[0, :, 2, 2]  # two image-1 cells look the same
    f0 = f1.clone()
    f0[0, :, 2, 3] = _distinct_features(1, 1, c, seed=5)[0, :, 0, 0]  # and only one image-0 cell matches them
    m = _bare_matcher(c, temperature=0.05)
    with torch.no_grad():
        warp, _, _ = m(f0, f1)
    x_mid = ((2 + 0.5) * 2 / w - 1 + (3 + 0.5) * 2 / w - 1) / 2
    assert abs(float(warp[0, 0, 2, 2]) - x_mid) < 0.02 * 2 / w


def test_sine_position_encoding_values():
    pe = sine_position_encoding(8, 3, 5)
    assert pe.shape == (1, 8, 3, 5)
    # channel 0: sin(x * 1) with x the 1-based column; channel 2: sin(y * 1)
    assert torch.allclose(pe[0, 0, 1, 3], torch.tensor(math.sin(4.0)))
    assert torch.allclose(pe[0, 3, 2, 0], torch.tensor(math.cos(3.0)))
    f1 = math.exp(-math.log(10000.0) * 2 / 4)
    assert torch.allclose(pe[0, 4, 0, 1], torch.tensor(math.sin(2.0 * f1)), atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(6, 2, 2)


def test_linear_attention_matches_its_formula():
    torch.manual_seed(0)
    blk = _AttentionBlock(16, 2).eval()
    x, s = torch.randn(2, 7, 16), torch.randn(2, 9, 16)
    with torch.no_grad():
        out = blk(x, s)
        xn, sn = blk.norm1(x), blk.norm1(s)
        q = torch.nn.functional.elu(blk.q(xn).view(2, 7, 2, 8)) + 1
        k, v = blk.kv(sn).view(2, 9, 2, 2, 8).unbind(2)
        k = torch.nn.functional.elu(k) + 1
        att = torch.einsum("bnhd,bmhd->bhnm", q, k)
        att = att / att.sum(dim=-1, keepdim=True)  # linear attention = normalised positive kernel
        ref = torch.einsum("bhnm,bmhd->bnhd", att, v).reshape(2, 7, 16)
        ref = x + blk.proj(ref)
        ref = ref + blk.mlp(blk.norm2(ref))
    assert torch.allclose(out, ref, atol=1e-5)


def test_cell_targets():
    warp = torch.tensor([[-1.0, -1.0], [0.999, 0.999], [0.0, 0.0], [-0.76, 0.26], [1.5, -2.0]])
    t = cell_targets(warp, 4, 8)  # 4 rows, 8 columns
    assert t.tolist() == [0, 31, 2 * 8 + 4, 2 * 8 + 0, 0 * 8 + 7]


def test_tiny_ds_model_shapes_batch_independence_and_upsampling():
    torch.manual_seed(0)
    cfg = MatcherConfig(arch="tiny-ds", coarse_res=64, upsample_res=96, normalize=True, attenuate_cert=False)
    m = L2M(cfg)
    assert not hasattr(m.decoder, "gps") and m.config.arch_config.scales == ("8", "4", "2", "1")
    x0, x1 = torch.rand(2, 3, 70, 90), torch.rand(2, 3, 50, 64)
    with torch.no_grad():
        out = m({"image0": x0, "image1": x1})
        one = m({"image0": x0[1:], "image1": x1[1:]})
    assert out["warp0"].shape == (2, 96, 96, 2) and out["certainty1"].shape == (2, 96, 96)
    assert torch.allclose(out["warp0"][1], one["warp0"][0], atol=1e-5)
    m.train()
    o = m.forward_train({"image0": torch.rand(2, 3, 64, 64), "image1": torch.rand(2, 3, 64, 64)})
    assert sorted(o) == [1, 2, 4, 8] and o[8]["ds_log_p"].shape == (2, 64, 64)


def test_upsampling_pass_can_keep_the_coarse_certainty():
    # "coarse": the warp of the upsampling pass (the same as "refined": the certainty does
    # not feed the warp), the certainty of the coarse pass alone, bilinearly resized
    torch.manual_seed(0)
    cfg = MatcherConfig(arch="tiny-ds", coarse_res=64, upsample_res=96, normalize=True, attenuate_cert=False)
    m = L2M(cfg).eval()
    x0, x1 = torch.rand(1, 3, 70, 90), torch.rand(1, 3, 50, 64)
    with torch.no_grad():
        refined = m({"image0": x0, "image1": x1})
        m.config = cfg.replace(upsample_certainty="coarse")
        coarse = m({"image0": x0, "image1": x1})
        m.config = cfg.replace(upsample_res=None)
        alone = m({"image0": x0, "image1": x1})
    assert torch.equal(coarse["warp0"], refined["warp0"]) and torch.equal(coarse["warp1"], refined["warp1"])
    for k, w in (("certainty0", "warp0"), ("certainty1", "warp1")):
        logit = torch.logit(alone[k].clamp(1e-7, 1 - 1e-7))[:, None]
        want = torch.nn.functional.interpolate(logit, size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
        want = want.sigmoid().masked_fill((coarse[w].abs() >= 1).any(-1), 0.0)
        inside = (coarse[w].abs() < 0.999).all(-1) & (alone[k] > 1e-6).all() & (alone[k] < 1 - 1e-6).all()
        assert torch.allclose(coarse[k][inside], want[inside], atol=1e-5)
        assert (torch.logit(coarse[k]) - torch.logit(refined[k])).abs().max() > 1e-2  # the modes differ
    with pytest.raises(ValueError, match="upsample_certainty"):
        cfg.replace(upsample_certainty="fine")
    with pytest.raises(ValueError, match="sample_cutoff"):
        cfg.replace(sample_cutoff="yes")


def test_arch_config_refuses_mixed_coarse_settings():
    with pytest.raises(ValueError, match="dual_softmax"):
        ArchConfig(coarse="none", coarse_matcher="gp")
    with pytest.raises(ValueError, match="dual_softmax"):
        ARCH_PRESETS["tiny"].replace(coarse_matcher="dual_softmax")
    with pytest.raises(ValueError, match="multiples of 8"):
        MatcherConfig(arch="tiny-ds", coarse_res=60)


def test_ds_loss_is_low_for_the_true_assignment_and_trains():
    """The assignment NLL is near 0 when the matcher is right and far above when not; a few
    optimiser steps on one pair lower it (the gradient reaches the features)."""
    torch.manual_seed(0)
    n, h, w = 1, 8, 8
    warp_gt = normalized_grid(64, 64)[None]  # identity pair at 64 px: stride-8 cells map to themselves
    valid = torch.ones(1, 64, 64, dtype=torch.bool)
    L = h * w
    good = torch.full((n, L, L), -30.0)
    good[:, torch.arange(L), torch.arange(L)] = 0.0
    bad = good.roll(1, dims=2)

    def out(lp):
        zeros = torch.zeros(n, 1, h, w)
        return {8: {"flow": torch.zeros(n, 2, h, w), "certainty": zeros, "ds_log_p": lp, "gm_certainty": zeros}}

    loss = RobustLoss()
    _, s_good = loss(out(good), warp_gt, valid)
    _, s_bad = loss(out(bad), warp_gt, valid)
    assert s_good["ds_nll_8"] < 1e-6 and s_bad["ds_nll_8"] > 25

    m = L2M(MatcherConfig(arch="tiny-ds", coarse_res=64, upsample_res=None))
    m.train()
    img = torch.rand(1, 3, 64, 64)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        o = m.forward_train({"image0": img, "image1": img})
        total, st = loss(o, warp_gt, valid)
        opt.zero_grad()
        total.backward()
        opt.step()
        first = first if first is not None else st["ds_nll_8"]
    assert st["ds_nll_8"] < 0.5 * first


def test_homography_pair_is_exact_and_covers_the_ranges():
    rng = np.random.default_rng(3)
    photo = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    photo = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), 5, 1, 2)[0].permute(1, 2, 0)).astype(np.uint8)
    scales, rots = [], []
    cfg = HomographyConfig(photometric=False)
    import cv2

    for _ in range(12):
        p = random_homography_pair(photo, (96, 128), rng, cfg)
        scales.append(p.scale)
        rots.append(p.rotation_deg)
        warp, valid = homography_warp(p.H_0to1, (96, 128), (96, 128))
        assert valid.mean() > 0.2
        xy = (warp + 1) * np.array([64, 48]) - 0.5  # OpenCV pixel indices of image 1
        back = cv2.remap(p.image1.astype(np.float32), xy[..., 0].astype(np.float32), xy[..., 1].astype(np.float32), cv2.INTER_LINEAR)
        inner = valid.copy()
        inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
        diff = np.abs(back - p.image0.astype(np.float32)).mean(-1)[inner]
        assert np.median(diff) < 3.0  # interpolation of a smooth photo only
    assert 0.5 <= min(scales) and max(scales) <= 2.0 and max(scales) / min(scales) > 1.5
    assert max(abs(r) for r in rots) <= 30.0 and max(abs(r) for r in rots) > 10


def _photos(folder, n=4, size=(120, 160)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        arr = (rng.random((size[0] // 8, size[1] // 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).resize(size[::-1], Image.Resampling.BICUBIC).save(folder / f"p{i}.png")
    return folder


def test_homography_pairs_items_splits_and_reproducibility(tmp_path):
    from l2m_plugin.training.data import ConcatPairs, HomographyPairs

    root = _photos(tmp_path / "photos", n=12)
    train = HomographyPairs(root, (64, 96), split="train", length=5, seed=3)
    held = HomographyPairs(root, (64, 96), split="heldout")
    assert set(train.names).isdisjoint(held.names) and held.names == ["p0.png", "p8.png"]  # every tenth of the sorted listing
    a, b = train[(2, 17)], train[(2, 17)]
    assert torch.equal(a["image1"], b["image1"]) and torch.equal(a["warp0"], b["warp0"])
    c = train[(2, 18)]  # another stream position: another homography of the same photo
    assert not torch.equal(a["warp0"], c["warp0"])
    assert a["image0"].shape == (3, 64, 96) and a["warp0"].shape == (64, 96, 2) and a["valid0"].dtype == torch.bool
    # the warp is the homography: pixel centre (x, y) of image 0 lands at H (x, y)
    H = a["H_0to1"].numpy()
    p = H @ np.array([10.5, 20.5, 1.0])
    expect = np.array([p[0] / p[2] / 48 - 1, p[1] / p[2] / 32 - 1])
    if a["valid0"][20, 10]:
        assert np.allclose(a["warp0"][20, 10].numpy(), expect, atol=1e-5)
    # warp1 inverts warp0 where both are valid
    w0 = a["warp0"][a["valid0"]]
    px1 = ((w0 + 1) * torch.tensor([48.0, 32.0])).floor().long()
    back = a["warp1"][px1[:, 1].clamp(0, 63), px1[:, 0].clamp(0, 95)]
    assert float((back - normalized_grid(64, 96)[a["valid0"]]).abs().median()) < 2 / 64  # within a pixel (nearest lookup)
    mixed = ConcatPairs([held, train])
    assert len(mixed) == len(held) + 5 and "H_0to1" not in mixed[(len(held) + 1, 0)]


def test_build_dataset_mixes_homography_pairs_at_the_share(tmp_path):
    from l2m_plugin.training.data import ConcatPairs, SynthPairs
    from l2m_plugin.training.trainer import TrainConfigError, build_dataset, load_conf

    synth = tmp_path / "synth"
    from l2m_plugin.testing.training import write_synth_fixture

    write_synth_fixture(synth, num_pairs=6, size=(64, 48))
    photos = _photos(tmp_path / "photos", n=4)
    over = [f"data.root={synth}", f"train.out={tmp_path / 'run'}", f"data.homography.images={photos}", "data.size=[48,64]"]
    ds = build_dataset(load_conf(None, over + ["data.homography.share=0.25"]), 0)
    assert isinstance(ds, ConcatPairs) and isinstance(ds.datasets[0], SynthPairs)
    assert len(ds.datasets[0]) == 6 and len(ds.datasets[1]) == 2  # 2 / 8 = 0.25
    assert ds[(7, 0)]["image0"].shape == (3, 48, 64)
    plain = build_dataset(load_conf(None, over + ["data.homography.share=0"]), 0)
    assert isinstance(plain, SynthPairs)
    with pytest.raises(TrainConfigError, match="share"):
        build_dataset(load_conf(None, over + ["data.homography.share=1.0"]), 0)
