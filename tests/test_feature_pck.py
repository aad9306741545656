"""Nearest-neighbour PCK of encoder features (l2m_plugin.eval.features) on pairs with known warps.

The pairs are built here: image 1 is a colour ramp that encodes each pixel's own position
(R, G = normalised x, y), the warp comes from a plane and a camera motion through
:func:`l2m_plugin.geometry.warp_from_depth`, and image 0 is image 1 sampled at the warp,
so image 0's colours are the ground-truth positions in image 1. An "oracle encoder" reads
the colour at each cell centre and returns a Gaussian encoding of that position over
image 1's cell centres: its nearest neighbours are exactly the cells nearest to the truth.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2m_plugin.coords import normalized_grid
from l2m_plugin.eval.features import feature_nn_errors, feature_nn_pck, iter_synth_pairs
from l2m_plugin.geometry import warp_from_depth
from l2m_plugin.models.features import encode_level, eval_size


def _K(w: int, h: int, f: float = 100.0) -> torch.Tensor:
    return torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=torch.float64)


def _pose(shift_px=(0.0, 0.0), yaw_deg: float = 0.0, f: float = 100.0, depth: float = 2.0) -> torch.Tensor:
    """Camera-0 to camera-1 transform moving a fronto-parallel plane at ``depth`` by
    ``shift_px`` pixels (pure translation), optionally with a rotation about y."""
    T = torch.eye(4, dtype=torch.float64)
    a = math.radians(yaw_deg)
    T[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    T[0, 3], T[1, 3] = shift_px[0] * depth / f, shift_px[1] * depth / f
    return T


def _ramp(h: int, w: int) -> torch.Tensor:
    """(h, w, 3) float image whose R, G are (normalised pixel-centre x, y + 1) / 2."""
    g = normalized_grid(h, w)
    return torch.cat(((g + 1) / 2, torch.full((h, w, 1), 0.5)), dim=-1)


def _pair(h: int, w: int, T: torch.Tensor, *, depth: float = 2.0, f: float = 100.0) -> dict:
    K = _K(w, h, f)
    warp, valid = warp_from_depth(torch.full((h, w), depth, dtype=torch.float64), K, K, T)
    warp, valid = warp[0].float(), valid[0]
    im1 = _ramp(h, w)
    im0 = F.grid_sample(im1.permute(2, 0, 1)[None], warp[None], mode="bilinear", align_corners=False,
                        padding_mode="border")[0].permute(1, 2, 0)  # fmt: skip
    return {"image0": im0, "image1": im1, "warp0": warp, "valid0": valid}


class Oracle:
    """Reads the position encoded in the image colour at each stride-``stride`` cell centre and
    returns exp(-d^2 / 2 sigma^2) to every cell centre of the same grid (d in cells)."""

    def __init__(self, stride: int = 16, level: int = 16, sigma: float = 0.25):
        self.stride, self.level, self.sigma = stride, level, sigma

    def __call__(self, x: torch.Tensor) -> dict:
        H, W = x.shape[-2:]
        h, w = H // self.stride, W // self.stride
        c = normalized_grid(h, w)
        rg = F.grid_sample(x[:, :2], c[None], mode="bilinear", align_corners=False)[0]  # (2, h, w)
        p = (rg * 2 - 1).permute(1, 2, 0).reshape(-1, 1, 2)
        cells = torch.tensor([w / 2.0, h / 2.0])  # normalised units -> cells
        d2 = (((p - c.reshape(1, -1, 2)) * cells) ** 2).sum(-1)  # (h*w, h*w)
        f = torch.exp(-d2 / (2 * self.sigma**2))
        return {self.level: f.T.reshape(1, -1, h, w)}


def test_oracle_translation_by_whole_cells_is_exact():
    """Shift by one 16-px cell right and one up: every query hits its cell, error 0, PCK 100%
    even at 0.5 px; the last column and the first row have no ground truth (15 of 24 cells)."""
    h, w = 64, 96
    pair = _pair(h, w, _pose((16.0, -16.0)))
    r = feature_nn_pck(Oracle(), [pair], thresholds_px=(0.5, 8, 16))
    assert r["points"] == 15 and r["pairs"] == 1 and r["pairs_without_points"] == 0
    assert r["mean_px"] < 1e-3 and r["median_px"] < 1e-3
    assert r["pck"] == {"0.5": 1.0, "8": 1.0, "16": 1.0}
    assert r["ceiling_mean_px"] < 1e-3 and r["mutual"]["share"] == 1.0
    assert r["cell_px"] == [16.0, 16.0] and r["eval_sizes"] == [[64, 96]]
    assert r["per_pair"][0]["points"] == 15 and r["per_pair_mean"]["pck"]["0.5"] == 1.0


def test_oracle_under_a_homography_reaches_the_ceiling():
    """A rotated camera (plane -> homography): the oracle's error equals the distance to the
    nearest image-1 cell centre (the ceiling), at most half a cell diagonal (11.3 px)."""
    h, w = 96, 128
    pair = _pair(h, w, _pose((5.0, 3.0), yaw_deg=4.0))
    feats = [Oracle()(pair[k].permute(2, 0, 1)[None].float())[16][0] for k in ("image0", "image1")]
    r = feature_nn_errors(feats[0], feats[1], pair["warp0"], pair["valid0"], (w, h))
    err, ceil = r["error_px"], r["ceiling_px"]
    assert err.numel() > 30
    assert (err - ceil).abs().max() < 0.05
    assert err.max() <= 8 * math.sqrt(2) + 1e-3
    assert 1.0 < err.mean() < 8.0  # not a whole-cell motion: errors are not all 0
    s = feature_nn_pck(Oracle(), [pair], thresholds_px=(4, 11.4, 16))
    assert s["pck"]["11.4"] == 1.0 and s["pck"]["16"] == 1.0
    assert s["pck"]["4"] == pytest.approx(s["ceiling_pck"]["4"], abs=1e-6)
    assert s["mean_px"] == pytest.approx(s["ceiling_mean_px"], abs=0.01)


def test_random_features_score_at_chance():
    """Random stride-4 features on 128 x 128 pairs: PCK within 1.5 points of the random-cell
    level (about 1.2 / 4.6 / 17% at 8 / 16 / 32 px), far below the ceiling."""
    gen = torch.Generator().manual_seed(0)

    def random_encoder(x):
        H, W = x.shape[-2:]
        return {4: torch.randn(1, 16, H // 4, W // 4, generator=gen)}

    pairs = [_pair(128, 128, _pose((10.0 + k, 7.0 - 2 * k))) for k in range(4)]
    r = feature_nn_pck(random_encoder, pairs, level=4)
    assert r["points"] > 3000 and r["cell_px"] == [4.0, 4.0]
    for t in ("8", "16", "32"):
        assert abs(r["pck"][t] - r["chance_pck"][t]) < 0.015, (t, r["pck"][t], r["chance_pck"][t])
    assert 0.005 < r["chance_pck"]["8"] < 0.02 and 0.1 < r["chance_pck"]["32"] < 0.25
    assert r["ceiling_pck"]["8"] == 1.0  # 4-px cells: the nearest centre is within 2.9 px
    # mutual nearest neighbours of random features are common in 16 dimensions, but no better
    assert abs(r["mutual"]["pck"]["32"] - r["chance_pck"]["32"]) < 0.04


def test_invalid_pixels_are_excluded():
    """Identity warp with a 32 x 48 invalid block (6 cells) and one invalid pixel next to a
    cell centre (1 more cell): 17 of 24 cells are queries; NaN warps there are never read."""
    h, w = 64, 96
    pair = _pair(h, w, _pose((0.0, 0.0)))
    valid = torch.ones(h, w, dtype=torch.bool)
    valid[:32, :48] = False
    valid[39, 71] = False  # pixel centre (71.5, 39.5): in the support of cell (row 2, col 4), centre (72, 40)
    warp = pair["warp0"].clone()
    warp[~valid] = float("nan")
    pair.update(valid0=valid.numpy(), warp0=warp.numpy())  # numpy inputs are accepted too
    feats = [Oracle()(torch.as_tensor(pair[k]).permute(2, 0, 1)[None].float())[16][0] for k in ("image0", "image1")]
    r = feature_nn_errors(feats[0], feats[1], warp, valid, (w, h))
    expected = [i * 6 + j for i in range(4) for j in range(6) if not (i < 2 and j < 3) and (i, j) != (2, 4)]
    assert r["query"].tolist() == expected
    assert torch.isfinite(r["error_px"]).all() and r["error_px"].max() < 1e-3
    s = feature_nn_pck(Oracle(), [pair])
    assert s["points"] == 17 and s["pck"]["8"] == 1.0
    # a pair without any ground truth counts as a pair without points
    empty = dict(pair, valid0=np.zeros((h, w), bool))
    s = feature_nn_pck(Oracle(), [pair, empty])
    assert s["pairs"] == 2 and s["pairs_without_points"] == 1 and s["points"] == 17
    assert s["per_pair_mean"]["pck"]["8"] == 1.0


def test_max_points_subsamples_reproducibly():
    pair = _pair(64, 96, _pose((16.0, 0.0)))
    a = feature_nn_pck(Oracle(), [pair], max_points=7, generator=torch.Generator().manual_seed(3))
    b = feature_nn_pck(Oracle(), [pair], max_points=7, generator=torch.Generator().manual_seed(3))
    assert a["points"] == 7 and a == {**b, "seconds": a["seconds"]}


def test_errors_are_in_original_pixels_when_resized():
    """A 64 x 128 pair evaluated at 64 x 64 (16-px cells are 32 x 16 original px), shifted by
    (8, 4) original px: each query's nearest cell is its own, 8 px away in x (4 evaluation
    px) and 4 px in y: error sqrt(8^2 + 4^2) = 8.94 original px, not 5.66."""
    h, w = 64, 128
    pair = _pair(h, w, _pose((8.0, 4.0)))
    r = feature_nn_pck(Oracle(), [pair], size=(64, 64), thresholds_px=(5.7, 8.9, 9.0))
    assert r["points"] == 16 and r["cell_px"] == [32.0, 16.0] and r["eval_sizes"] == [[64, 64]]
    assert r["mean_px"] == pytest.approx(math.hypot(8, 4), abs=0.02)
    assert r["pck"] == {"5.7": 0.0, "8.9": 0.0, "9": 1.0}
    assert r["ceiling_mean_px"] == pytest.approx(math.hypot(8, 4), abs=0.02)


def test_eval_size_rounds_to_the_stride():
    assert eval_size(384, 256, 16) == (384, 256)
    assert eval_size(100, 150, 16) == (96, 144)
    assert eval_size(104, 7, 16) == (112, 16)  # halves round up; at least one stride
    assert eval_size(384, 384, 14) == (378, 378)
    with pytest.raises(ValueError):
        eval_size(0, 10, 16)


@pytest.fixture(scope="module")
def tiny():
    from l2m_plugin.config import PRESETS
    from l2m_plugin.testing.random_init import random_matcher

    return random_matcher(PRESETS["tiny"], seed=0)


def test_l2m_features_use_the_matchers_preprocessing(tiny):
    """encode_level on an L2M equals the coarse features of L2M.encode at coarse_res."""
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    ref = tiny.encode(x)["coarse"][16]  # resized to coarse_res (320, 320), ImageNet-normalised
    got = encode_level(tiny, x, tiny.config.coarse_res, 16)
    assert got.shape == ref.shape == (1, tiny.encoder.coarse_dim, 20, 20)
    torch.testing.assert_close(got, ref.float())


def test_l2m_on_a_synthesized_pair(tiny, tmp_path):
    """A tiny random L2M on an l2m-synth pair (100 x 150, evaluated at 96 x 144); train mode
    is restored; the result has the documented keys."""
    from l2m_plugin.formats.synth_pairs import write_pair
    from l2m_plugin.synthesis import synthesize_pair, synthetic_depth

    rng = np.random.default_rng(1)
    img = (rng.random((100, 150, 3)) * 255).astype(np.uint8)
    sp = synthesize_pair(img, synthetic_depth((150, 100), np.random.default_rng(2), image=img), rng=3)
    write_pair(tmp_path, "000000_00", sp)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"id": "000000_00", "source": "x.png", "size": [150, 100]}) + "\n")
    pairs = list(iter_synth_pairs(tmp_path))
    assert [p["id"] for p in pairs] == ["000000_00"]
    tiny.train()
    try:
        r = feature_nn_pck(tiny, pairs, level=16)
        assert tiny.training
    finally:
        tiny.eval()
    assert r["eval_sizes"] == [[96, 144]] and r["cell_px"] == pytest.approx([150 / 9, 100 / 6])
    assert 0 < r["points"] <= 54 and 0.0 <= r["pck"]["32"] <= 1.0
    assert set(r) >= {"mean_px", "median_px", "pck", "ceiling_pck", "chance_pck", "mutual", "per_pair_mean", "per_pair"}
    r8 = feature_nn_pck(tiny, pairs, level=8, max_points=50)
    assert r8["points"] == 50 and r8["eval_sizes"] == [[104, 152]]


def test_bad_inputs_name_the_argument(tiny):
    pair = _pair(64, 96, _pose((16.0, 0.0)))
    with pytest.raises(TypeError, match="model.encoder"):
        feature_nn_pck(tiny.encoder, [pair])
    with pytest.raises(ValueError, match="size"):
        feature_nn_pck(tiny, [pair], size=(60, 96))
    with pytest.raises(ValueError, match="level"):
        feature_nn_pck(tiny, [pair], level=32)
    with pytest.raises(ValueError, match="thresholds_px"):
        feature_nn_pck(Oracle(), [pair], thresholds_px=(8, -1))
    with pytest.raises(ValueError, match="max_points"):
        feature_nn_pck(Oracle(), [pair], max_points=0)
    with pytest.raises(KeyError, match="valid0"):
        feature_nn_pck(Oracle(), [{k: v for k, v in pair.items() if k != "valid0"}])
    with pytest.raises(ValueError, match="warp0"):
        feature_nn_pck(Oracle(), [dict(pair, warp0=pair["warp0"][:10])])
    with pytest.raises(ValueError, match="empty"):
        feature_nn_pck(Oracle(), [])
    with pytest.raises(ValueError, match="tile"):
        feature_nn_pck(lambda x: {16: torch.zeros(1, 4, 7, 7)}, [pair])
