"""The co-visible crop pass (``MatcherConfig.covisible_crop``): boxes, the mapping back onto the
full grid, and an exact coordinate-image oracle under a 2x zoom."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from l2m_plugin import L2M
from l2m_plugin.config import PRESETS
from l2m_plugin.models.covisible import (
    CANVAS_FILL,
    MIN_POINTS,
    covisible_box,
    covisible_pass,
    crop_to_full,
    shrink_to_canvas,
    zoom_tile_count,
    zoom_tiles,
)

W, H = 128, 96
OUT = (48, 64)  # (H_o, W_o) of the oracle's output grid
# image 1 is a 2x zoom into image 0's pixel box [32, 96) x [24, 72): p1 = 2 (p0 - (32, 24))
ZOOM, OFF = 2.0, torch.tensor([32.0, 24.0])


def _grid(h, w):
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)


def _to_px(n, size):
    return (n + 1) / 2 * torch.tensor(size, dtype=torch.float32)


def _to_n(p, size):
    return p / torch.tensor(size, dtype=torch.float32) * 2 - 1


def _coordinate_images():
    """image0 holds, at each pixel, its own centre in image-0 pixels / 256; image1 the image-0
    pixel that it shows (the zoom's inverse), so every crop carries its own ground truth."""
    p0 = _to_px(_grid(H, W), (W, H))
    p1 = _to_px(_grid(H, W), (W, H))
    src = p1 / ZOOM + OFF
    im0 = torch.cat((p0 / 256, torch.zeros(H, W, 1)), -1).permute(2, 0, 1)[None]
    im1 = torch.cat((src / 256, torch.zeros(H, W, 1)), -1).permute(2, 0, 1)[None]
    return im0, im1


def _oracle_once(c0, c1):
    """Exact matches between two coordinate-image crops: the affine map from crop-1 positions to
    the image-0 pixels they show, fitted by least squares and inverted."""

    def affine(img):
        h, w = img.shape[-2:]
        n = _grid(h, w).reshape(-1, 2)
        v = img[0, :2].permute(1, 2, 0).reshape(-1, 2) * 256
        A = torch.cat((n, torch.ones(len(n), 1)), 1).double()
        return torch.linalg.lstsq(A, v.double()).solution  # (3, 2): [n, 1] @ M = image-0 pixel

    def warp(src, dst):
        g = _grid(*OUT)
        vals = (
            F.grid_sample(src[:, :2], g[None], mode="bilinear", align_corners=False)[0].permute(
                1, 2, 0
            )
            * 256
        )
        M = affine(dst)
        lin, t = M[:2], M[2]
        n = (
            torch.linalg.solve(lin.T, (vals.double() - t).reshape(-1, 2).T)
            .T.reshape(*OUT, 2)
            .float()
        )
        cert = (n.abs() <= 1).all(-1).float()
        return n, cert

    w0, k0 = warp(c0, c1)
    w1, k1 = warp(c1, c0)
    return {"warp0": w0[None], "certainty0": k0[None], "warp1": w1[None], "certainty1": k1[None]}


def _true_warp0():
    """(H_o, W_o, 2) exact image0 -> image1 warp and its validity."""
    p0 = _to_px(_grid(*OUT), (W, H))
    n1 = _to_n((p0 - OFF) * ZOOM, (W, H))
    return n1, (n1.abs() <= 1).all(-1)


def test_box_spans_the_points_with_its_margin():
    pts = torch.stack(
        torch.meshgrid(torch.linspace(-0.5, 0.5, 21), torch.linspace(0.0, 0.5, 11), indexing="xy"),
        -1,
    )
    box = covisible_box(pts.reshape(-1, 2), (200, 100), margin=0.1)
    # x: [-0.5, 0.5] -> [50, 150] px, +-10 px; y: [0, 0.5] -> [50, 75] px, +-2.5 px (2% quantiles inside)
    assert box[0] == pytest.approx(40, abs=2) and box[2] == pytest.approx(160, abs=2)
    assert box[1] == pytest.approx(47.5, abs=1.5) and box[3] == pytest.approx(77.5, abs=1.5)
    assert covisible_box(torch.zeros(MIN_POINTS - 1, 2), (200, 100), 0.1) is None
    tiny = covisible_box(
        torch.zeros(MIN_POINTS, 2), (200, 96), 0.1
    )  # one point: at least 1/8 per side
    assert tiny[2] - tiny[0] >= 25 and tiny[3] - tiny[1] >= 12


def test_crop_to_full_maps_crop_coordinates_to_full_ones():
    # crop A = [32, 96) x [24, 72) of a 128 x 96 image, crop B = all of image B: an identity warp
    # between the crops is the 2x zoom between the full images
    w, c = crop_to_full(
        _grid(24, 32), torch.ones(24, 32), (32, 24, 96, 72), (0, 0, W, H), (W, H), (W, H), OUT
    )
    true, valid = _true_warp0()
    inside = c > 0
    assert inside.sum() > 0.2 * inside.numel()
    assert (w[inside] - true[inside]).abs().max() < 1e-4
    assert not (inside & ~valid).any()  # certainty 0 outside box A


def test_second_pass_on_the_coordinate_oracle_is_exact_and_crops_at_equal_scale():
    im0, im1 = _coordinate_images()
    first = _oracle_once(im0, im1)
    seen = []

    def once(c0, c1):
        seen.append((tuple(c0.shape[-2:]), tuple(c1.shape[-2:])))
        return _oracle_once(c0, c1)

    out = covisible_pass(first, im0, im1, once, thresh=0.5, margin=0.1)
    ((box0, box1),) = out["covisible_boxes"]
    # box 0: the zoomed region [32, 96) x [24, 72), grown by 10% per side; box 1: all of image 1
    assert box0 == pytest.approx((25.6, 19.2, 102.4, 76.8), abs=3)
    assert box1 == (0, 0, W, H)
    (h0, w0), (h1, w1) = seen[0]
    assert w1 / w0 == pytest.approx(ZOOM / 1.2, rel=0.1) and h1 / h0 == pytest.approx(
        ZOOM / 1.2, rel=0.1
    )
    true, valid = _true_warp0()
    ok = out["certainty0"][0] > 0.99
    assert ok.sum() >= 0.9 * valid.sum()
    assert (out["warp0"][0][ok] - true[ok]).abs().max() < 1e-3
    # the reverse warp: every pixel of image 1 is seen in image 0
    p1 = _to_px(_grid(*OUT), (W, H))
    true1 = _to_n(p1 / ZOOM + OFF, (W, H))
    ok1 = out["certainty1"][0] > 0.99
    assert ok1.float().mean() > 0.9 and (out["warp1"][0][ok1] - true1[ok1]).abs().max() < 1e-3


def test_second_pass_is_skipped_without_confident_cells():
    im0, im1 = _coordinate_images()
    first = _oracle_once(im0, im1)
    first = {
        **first,
        "certainty0": first["certainty0"] * 0.1,
        "certainty1": first["certainty1"] * 0.1,
    }
    out = covisible_pass(
        first, im0, im1, lambda a, b: pytest.fail("no second pass expected"), thresh=0.5, margin=0.1
    )
    assert out["covisible_boxes"] == [None] and torch.equal(out["warp0"], first["warp0"])


def test_matcher_runs_the_pass_and_keeps_its_output_format():
    torch.manual_seed(0)
    cfg = PRESETS["l2m-tiny"].replace(coarse_res=(64, 64), covisible_crop=False)
    model = L2M(cfg).eval()
    crop = L2M(cfg.replace(covisible_crop=True, covisible_thresh=0.0)).eval()
    crop.load_state_dict(model.state_dict())
    x0, x1 = torch.rand(2, 3, 96, 128), torch.rand(2, 3, 80, 100)
    with torch.no_grad():
        a = model({"image0": x0, "image1": x1})
        b = crop({"image0": x0, "image1": x1})
    for k in ("warp0", "certainty0", "warp1", "certainty1"):
        assert b[k].shape == a[k].shape and b[k].dtype == a[k].dtype
    assert len(b["covisible_boxes"]) == 2 and "covisible_boxes" not in a
    for boxes, k in zip(b["covisible_boxes"], range(2), strict=True):
        if boxes is None:  # whole images: the first pass is kept
            assert torch.equal(b["warp0"][k], a["warp0"][k])


def test_config_checks_its_fields():
    with pytest.raises(ValueError, match="covisible_thresh"):
        PRESETS["l2m-tiny"].replace(covisible_thresh=1.5)
    with pytest.raises(ValueError, match="covisible_margin"):
        PRESETS["l2m-tiny"].replace(covisible_margin=-0.1)


# ---------------------------------------------------------------- scale search
ZOOM4_OFF = torch.tensor([48.0, 36.0])  # image 1: a 4x zoom into image 0's box [48, 80) x [36, 60)


def _fitted(img):
    """Least-squares affine map of a coordinate image (normalised position -> image-0 pixel) on
    its coordinate pixels; the canvas fill (blue channel 0.406; coordinate images have 0) is left out."""
    h, w = img.shape[-2:]
    n = _grid(h, w).reshape(-1, 2)
    v = img[0, :2].permute(1, 2, 0).reshape(-1, 2) * 256
    keep = img[0, 2].reshape(-1) < 0.2
    A = torch.cat((n, torch.ones(len(n), 1)), 1).double()
    return torch.linalg.lstsq(A[keep], v[keep].double()).solution  # (3, 2)


def _range_limited_once(limit, graded=False):
    """An oracle matcher that only matches when the two inputs show the scene at scales within
    ``limit`` of each other (as a network trained on 0.5-2x does); certainty 0 otherwise, on fill
    and off the other input's content. ``graded``: the certainty falls from 1 at the same scale
    to 0.5 at ``limit`` (linear in the log of the scale ratio), as a network's does."""

    def once(c0, c1):
        m0, m1 = _fitted(c0), _fitted(c1)
        ratio = float((torch.linalg.det(m0[:2]).abs() / torch.linalg.det(m1[:2]).abs()).sqrt())
        out = {}
        for k, (src, dst, md) in enumerate(((c0, c1, m1), (c1, c0, m0))):
            g = _grid(*OUT)
            vals = F.grid_sample(
                src, g[None], mode="bilinear", padding_mode="border", align_corners=False
            )
            vals = vals[0].permute(1, 2, 0)
            fill = (
                F.grid_sample(src[:, 2:], g[None], mode="nearest", align_corners=False)[0, 0] >= 0.2
            )
            n = torch.linalg.solve(
                md[:2].T, (vals[..., :2].double() * 256 - md[2]).reshape(-1, 2).T
            )
            n = n.T.reshape(*OUT, 2).float()
            on_dst = (
                F.grid_sample(dst[:, 2:], n[None], mode="nearest", align_corners=False)[0, 0] < 0.2
            )
            cert = ((n.abs() <= 1).all(-1) & ~fill & (vals[..., 2] < 0.01) & on_dst).float()
            if not 1 / limit <= ratio <= limit:
                cert = torch.zeros_like(cert)
            elif graded:
                cert = cert * (1 - 0.5 * abs(math.log(ratio)) / math.log(limit))
            out[f"warp{k}"], out[f"certainty{k}"] = n.clamp(-1, 1)[None], cert[None]
        return out

    return once


def _zoom4_images():
    p0 = _to_px(_grid(H, W), (W, H))
    src = _to_px(_grid(H, W), (W, H)) / 4 + ZOOM4_OFF
    im0 = torch.cat((p0 / 256, torch.zeros(H, W, 1)), -1).permute(2, 0, 1)[None]
    im1 = torch.cat((src / 256, torch.zeros(H, W, 1)), -1).permute(2, 0, 1)[None]
    return im0, im1


def test_shrink_to_canvas_places_the_content_pixel_exactly():
    img = torch.rand(1, 3, 60, 90)
    canvas, place = shrink_to_canvas(img, 3.0, (48, 64))
    assert place == (21, 16, 21, 16)  # x0, y0, content w, h: round(64 / 3), round(48 / 3), centred
    x0, y0, cw, ch = place
    assert torch.allclose(canvas[0, :, 0, 0], torch.tensor(CANVAS_FILL))
    content = canvas[:, :, y0 : y0 + ch, x0 : x0 + cw]
    assert content.mean() == pytest.approx(img.mean().item(), abs=0.02)  # area-preserving shrink
    with pytest.raises(ValueError, match="> 1"):
        shrink_to_canvas(img, 1.0, (48, 64))


def test_scale_search_finds_a_4x_zoom_beyond_the_matchers_range():
    im0, im1 = _zoom4_images()
    once = _range_limited_once(limit=2.0)
    first = once(im0, im1)
    assert first["certainty0"].sum() == 0  # a 4x zoom: the plain pass matches nothing
    plain = covisible_pass(first, im0, im1, once, thresh=0.5, margin=0.1)
    assert plain["covisible_boxes"] == [None]
    out = covisible_pass(
        first, im0, im1, once, thresh=0.5, margin=0.1, scales=(3.0,), coarse_size=OUT
    )
    assert out["covisible_scales"] == [(1, 3.0)]  # image 1 (the close-up) shrunk by 3: 4/3 left
    _assert_crops_recover_the_4x_zoom(out, min_certainty=0.99)


def _assert_crops_recover_the_4x_zoom(out, min_certainty):
    """The crop pass of a :func:`_zoom4_images` pair: the right boxes and an exact warp."""
    ((box0, box1),) = out["covisible_boxes"]
    # box 0: the zoomed region [48, 80) x [36, 60) grown by 10% per side (and the 1/8 floor);
    # box 1: all of image 1
    assert box0 == pytest.approx((44.8, 33.6, 83.2, 62.4), abs=3)
    assert box1 == pytest.approx((0, 0, W, H), abs=2)
    p0 = _to_px(_grid(*OUT), (W, H))
    true = _to_n((p0 - ZOOM4_OFF) * 4, (W, H))
    valid = (true.abs() <= 1).all(-1)
    ok = out["certainty0"][0] > min_certainty
    assert ok.sum() >= 0.8 * valid.sum()
    assert (out["warp0"][0][ok] - true[ok]).abs().max() < 1e-3


def test_scale_search_keeps_the_plain_pass_when_it_is_the_most_certain():
    im0, im1 = _coordinate_images()  # a 2x zoom: within the oracle's range
    once = _range_limited_once(limit=2.5)
    out = covisible_pass(
        once(im0, im1), im0, im1, once, thresh=0.5, margin=0.1, scales=(3.0,), coarse_size=OUT
    )
    assert out["covisible_scales"] == [None]
    ((box0, box1),) = out["covisible_boxes"]
    assert box0 == pytest.approx((25.6, 19.2, 102.4, 76.8), abs=3)


def test_scale_search_needs_coarse_size_and_factors_above_one():
    im0, im1 = _coordinate_images()
    first = _oracle_once(im0, im1)
    with pytest.raises(ValueError, match="coarse_size"):
        covisible_pass(first, im0, im1, _oracle_once, thresh=0.5, margin=0.1, scales=(2.0,))
    with pytest.raises(ValueError, match="> 1"):
        covisible_pass(
            first, im0, im1, _oracle_once, thresh=0.5, margin=0.1, scales=(1.0,), coarse_size=OUT
        )
    with pytest.raises(ValueError, match="covisible_scales must all be > 1"):
        PRESETS["l2m-tiny"].replace(covisible_scales=[0.5])
    with pytest.raises(ValueError, match="list of numbers"):
        PRESETS["l2m-tiny"].replace(covisible_scales=2.0)
    assert PRESETS["l2m-tiny"].replace(covisible_scales=[2]).covisible_scales == (2.0,)


def test_matcher_runs_the_scale_search():
    torch.manual_seed(0)
    cfg = PRESETS["l2m-tiny"].replace(
        coarse_res=(64, 64), covisible_thresh=0.0, covisible_scales=(2.0,)
    )
    model = L2M(cfg).eval()
    x0, x1 = torch.rand(1, 3, 96, 128), torch.rand(1, 3, 80, 100)
    with torch.no_grad():
        out = model({"image0": x0, "image1": x1})
    assert out["warp0"].shape == (1, 64, 64, 2) and len(out["covisible_scales"]) == 1
    assert out["covisible_scales"][0] in (None, (0, 2.0), (1, 2.0))


def test_zoom_tiles_cover_the_image_half_a_tile_apart():
    tiles = zoom_tiles((128, 96), 2.0)
    assert len(tiles) == 9
    assert tiles[0] == (0, 0, 64, 48) and tiles[4] == (32, 24, 96, 72) and tiles[-1] == (64, 48, 128, 96)
    assert len(zoom_tiles((100, 80), 3.0)) == 25 == zoom_tile_count(3.0)
    assert len(zoom_tiles((100, 80), 1.5)) == 4 == zoom_tile_count(1.5) and zoom_tile_count(2.0) == 9
    for x0, y0, x1, y1 in zoom_tiles((101, 77), 2.5):  # every tile inside the image, 1/2.5 its size
        assert 0 <= x0 < x1 <= 101 and 0 <= y0 < y1 <= 77
        assert (x1 - x0, y1 - y0) == (40, 31)
    with pytest.raises(ValueError, match="> 1"):
        zoom_tiles((100, 80), 1.0)
    with pytest.raises(ValueError, match="covisible_zooms must all be > 1"):
        PRESETS["l2m-tiny"].replace(covisible_zooms=[1.0])
    assert PRESETS["l2m-tiny"].replace(covisible_zooms=[2]).covisible_zooms == (2.0,)


def test_zoom_search_finds_a_4x_zoom_in_a_tile_of_the_wide_image():
    """Image 1 is a 4x zoom into [48, 80) x [36, 60) of image 0; the oracle matches within 3x,
    less certain the larger the scale change. The plain pass matches nothing; image 1 shrunk by
    1.5 (2.67x left) matches with certainty 0.55, which opens the zoom search. The only tile of
    image 0 at zoom 2 that holds the whole region is (32, 24, 96, 72): in it the change is 2x
    (certainty 0.68), so it wins and gives the boxes."""
    im0, im1 = _zoom4_images()
    once = _range_limited_once(limit=3.0, graded=True)
    first = once(im0, im1)
    assert first["certainty0"].sum() == 0
    kw = dict(thresh=0.5, margin=0.1, scales=(1.5,), coarse_size=OUT)
    shrunk = covisible_pass(first, im0, im1, once, **kw)
    assert shrunk["covisible_scales"] == [(1, 1.5)]
    out = covisible_pass(first, im0, im1, once, zooms=(2.0,), **kw)
    assert out["covisible_scales"] == [(0, 2.0, (32, 24, 96, 72))]
    assert out["covisible_zoom_searched"] == [True]
    _assert_crops_recover_the_4x_zoom(out, min_certainty=0.5)  # graded: the crop pass is at ~1.2x


def test_zoom_search_runs_only_where_a_shrunk_image_wins():
    im0, im1 = _coordinate_images()  # a 2x zoom, within the oracle's range: the plain pass wins
    once = _range_limited_once(limit=2.5)
    calls = []

    def counted(c0, c1):
        calls.append(1)
        return once(c0, c1)

    kw = dict(thresh=0.5, margin=0.1, scales=(3.0,), coarse_size=OUT)
    out = covisible_pass(once(im0, im1), im0, im1, counted, zooms=(2.0,), **kw)
    assert out["covisible_scales"] == [None] and out["covisible_zoom_searched"] == [False]
    assert len(calls) == 2 + 1  # the two shrunk candidates and the crop pass: no tile
    with pytest.raises(ValueError, match="zooms need scales"):
        covisible_pass(once(im0, im1), im0, im1, once, thresh=0.5, margin=0.1, zooms=(2.0,))
    with pytest.raises(ValueError, match="needs covisible_scales"):
        PRESETS["l2m-tiny"].replace(covisible_scales=(), covisible_zooms=(2.0,))


def test_matcher_runs_the_zoom_search():
    torch.manual_seed(0)
    cfg = PRESETS["l2m-tiny"].replace(
        coarse_res=(64, 64), covisible_thresh=0.0, covisible_scales=(2.0,), covisible_zooms=(2.0,)
    )
    model = L2M(cfg).eval()
    x0, x1 = torch.rand(1, 3, 96, 128), torch.rand(1, 3, 80, 100)
    with torch.no_grad():
        out = model({"image0": x0, "image1": x1})
    assert out["warp0"].shape == (1, 64, 64, 2) and len(out["covisible_scales"]) == 1
    choice = out["covisible_scales"][0]
    assert out["covisible_zoom_searched"] == [choice is not None]  # searched iff the plain pass lost
    assert choice is None or len(choice) == 2 or (choice[:2] in ((0, 2.0), (1, 2.0)) and choice[2] in zoom_tiles((128, 96) if choice[0] == 0 else (100, 80), 2.0))
