"""Novel-view synthesis (l2m_plugin.synthesis): exact warps, occlusions, sampling ranges,
appearance, depth sources, the "l2m-synth" format and ``l2m synth`` end to end.

Geometry tests use small analytic scenes (planes, steps) where the right answer is known
in closed form; tolerances are stated next to each assertion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from l2m_plugin.coords import normalized_grid, normalized_to_pixel
from l2m_plugin.synthesis import (
    SYNTH_PRESETS,
    BackendUnavailableError,
    DepthFileError,
    SynthConfig,
    disparity_to_depth,
    inpaint,
    lift,
    list_pairs,
    load_config,
    load_depth_file,
    photometric_jitter,
    rasterize,
    read_pair,
    render,
    sample_intrinsics,
    sample_motion,
    synthesize_pair,
    synthetic_depth,
    warps,
)
from l2m_plugin.synthesis.appearance import normals_from_depth, relight, sample_lights, shade
from l2m_plugin.synthesis.depth import TransformersDepth, depth_file_for
from l2m_plugin.synthesis.mesh import Mesh
from l2m_plugin.synthesis.pair import rotation_from_axis_angle

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SINGLE_VIEW = Path(os.environ.get("L2M_SHARED_DATA", _SHARED)) / "single_view"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The machine's cores are shared: these tests run on one torch thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _K(w, h, f):
    return np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


def _T(rotvec_deg=(0, 0, 0), t=(0, 0, 0)):
    T = np.eye(4)
    T[:3, :3] = rotation_from_axis_angle(np.deg2rad(rotvec_deg))
    T[:3, 3] = t
    return T


def _px(warp, w, h):
    return normalized_to_pixel(torch.as_tensor(warp, dtype=torch.float64), w, h)


def _texture(h, w, seed=0):
    """Smooth colour noise + squares, values in [40, 230] (no pure black)."""
    rng = np.random.default_rng(seed)
    import cv2

    img = cv2.resize(rng.uniform(40, 230, (h // 6 + 2, w // 6 + 2, 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)  # fmt: skip
    for _ in range(12):
        x, y = rng.integers(0, w - 8), rng.integers(0, h - 8)
        img[y : y + 6, x : x + 6] = rng.uniform(40, 230, 3)
    return np.clip(img, 40, 230).astype(np.uint8)


def _quiet(conf: SynthConfig | None = None, **motion) -> SynthConfig:
    """A config without relighting or jitter (and with the given motion ranges)."""
    over = ["relight.probability=0", "jitter.probability=0"]
    over += [f"motion.{k}=[{v[0]},{v[1]}]" for k, v in motion.items()]
    return load_config(conf or "l2m", over)


# ----------------------------------------------------------------------------- rasteriser


def test_rasterizer_single_triangle_covers_exactly_the_pixel_centres_inside_it():
    """Against a brute-force float64 point-in-triangle test on every pixel centre; centres
    within 1e-6 px of an edge are ambiguous and not compared. Depth at covered centres is the
    analytic plane depth (1e-9 relative)."""
    w, h, f = 40, 30, 35.0
    K = _K(w, h, f)
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    for trial in range(20):
        uv = rng.uniform([-5, -5], [w + 5, h + 5], (3, 2))
        if trial == 0:
            uv = np.array([[3.2, 2.7], [31.9, 7.3], [12.4, 26.6]])
        z = rng.uniform(1.0, 3.0, 3)
        verts = np.concatenate([(uv - K[:2, 2]) / f * z[:, None], z[:, None]], 1)
        mesh = Mesh(torch.from_numpy(verts), torch.tensor([[0, 1, 2]]), torch.zeros(h, w),
                    torch.from_numpy(K))  # fmt: skip
        r = rasterize(mesh, K, np.eye(4), (w, h))

        def edge(a, b):
            return (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])

        e = np.stack([edge(uv[0], uv[1]), edge(uv[1], uv[2]), edge(uv[2], uv[0])])
        lens = [np.hypot(*(uv[(i + 1) % 3] - uv[i])) for i in range(3)]
        dist = np.abs(e) / np.array(lens)[:, None, None]
        inside = (e > 0).all(0) | (e < 0).all(0)
        clear = (dist > 1e-6).all(0)
        covered = r.face.numpy() == 0
        np.testing.assert_array_equal(covered[clear], inside[clear])
        # plane through the vertices, n . X = n . a; along a centre's ray z = (n . a) / (n . r)
        n = np.cross(verts[1] - verts[0], verts[2] - verts[0])
        rays = np.stack([(xs - w / 2) / f, (ys - h / 2) / f, np.ones_like(xs)], -1)
        zplane = (n @ verts[0]) / (rays @ n)
        np.testing.assert_allclose(r.depth.numpy()[covered], zplane[covered], rtol=1e-9)


def test_zero_motion_is_the_identity_everywhere():
    """T = I and K1 = K0: both warps are the identity (max error < 1e-3 px, in fact ~1e-12)
    and every pixel is valid, borders included (pixel centres lying on mesh edges count as
    covered). With a depth step, only pixels next to the step lose validity (their bilinear
    neighbourhood in image 1 straddles the two surfaces)."""
    w, h = 64, 48
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    z = 2 + 0.3 * np.sin(xs / 7) * np.cos(ys / 5)
    K = _K(w, h, 40.0)
    m = lift(None, z, K)
    out = warps(m, rasterize(m, K, np.eye(4)), K, np.eye(4))
    grid = normalized_grid(h, w, dtype=torch.float64)
    for i in (0, 1):
        assert out[f"valid{i}"].all()
        err = (_px(out[f"warp{i}"], w, h) - _px(grid, w, h)).abs().max()
        assert err < 1e-3
    # through the whole pipeline (no appearance change): image1 == image0 exactly
    img = _texture(h, w)
    conf = _quiet(translation_x=(0, 0), translation_y=(0, 0), translation_z=(0, 0),
                  rotation_deg=(0, 0))  # fmt: skip
    pair = synthesize_pair(img, z, conf, np.random.default_rng(0))
    np.testing.assert_array_equal(pair.image1, img)
    np.testing.assert_array_equal(pair.image0, img)
    assert pair.valid0.all() and pair.valid1.all() and not pair.hole1.any()
    np.testing.assert_allclose(pair.depth1, pair.depth0, rtol=1e-6)
    # a step: invalid pixels only within one pixel of it
    zs = np.where(xs < 30, 2.0, 4.0)
    m = lift(None, zs, K)
    out = warps(m, rasterize(m, K, np.eye(4)), K, np.eye(4))
    bad_cols = np.unique(np.nonzero(~out["valid0"].numpy())[1])
    assert set(bad_cols) <= {28, 29, 30, 31} and out["valid1"].all()


def test_fronto_parallel_plane_under_translation_is_the_analytic_homography():
    """Plane z = d, t = (tx, ty, tz), R = I: u1 = c + ((u0 - c) d + f t) / (d + tz) and the
    inverse for warp1 (both < 1e-6 px); depth1 = d + tz (1e-9 relative)."""
    w, h, f, d = 80, 60, 50.0, 3.0
    t = np.array([0.37, -0.21, 0.45])
    K = _K(w, h, f)
    m = lift(None, np.full((h, w), d), K)
    T = _T(t=t)
    r = rasterize(m, K, T)
    out = warps(m, r, K, T)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    c = np.array([w / 2, h / 2])
    p0 = np.stack([xs, ys], -1)
    p1 = c + ((p0 - c) * d + f * t[:2]) / (d + t[2])
    v0 = out["valid0"].numpy()
    assert v0.mean() > 0.5
    inside = (p1[..., 0] >= 0) & (p1[..., 0] < w) & (p1[..., 1] >= 0) & (p1[..., 1] < h)
    assert not (v0 & ~inside).any()
    assert np.abs(_px(out["warp0"], w, h).numpy()[v0] - p1[v0]).max() < 1e-6
    v1 = out["valid1"].numpy()
    q0 = c + ((p0 - c) * (d + t[2]) - f * t[:2]) / d
    assert np.abs(_px(out["warp1"], w, h).numpy()[v1] - q0[v1]).max() < 1e-6
    np.testing.assert_allclose(r.depth.numpy()[v1], d + t[2], rtol=1e-9)
    # pixels of image 1 whose preimage is inside the mesh (the hull of image 0's centres)
    hull = (
        (q0[..., 0] >= 0.5)
        & (q0[..., 0] <= w - 0.5)
        & (q0[..., 1] >= 0.5)
        & (q0[..., 1] <= h - 0.5)
    )
    clear = np.abs(q0 - np.round(q0 - 0.5) - 0.5).min(-1) > 1e-6  # not exactly on the hull
    np.testing.assert_array_equal(v1[clear], hull[clear])


def test_step_scene_occlusion_and_disocclusion_match_the_analytic_bands():
    """Near plane z=2 on columns < E, far plane z=4 from E on; camera shifted sideways.

    t_x = +0.41: in image 1 the near plane moves 41 px, the far one 20.5 px, so the far
    pixel centres u0 < E + 20 land behind the near plane (analytic occluded band: columns E
    .. E+19). No pixel of the band may be valid, and the invalid far pixels that land inside
    image 1 must match the band (IoU > 0.9: one more column is invalid because its bilinear
    neighbourhood touches the near edge).
    t_x = -0.41: the gap between the near edge (u1 = E - 0.5 - 41) and the far edge
    (u1 = E + 0.5 - 20.5) is a disocclusion: holes in image 1 (IoU > 0.9; the other holes,
    right of the far plane's shifted edge, are excluded), never valid.
    """
    w, h, f, E = 160, 40, 200.0, 70
    K = _K(w, h, f)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    z = np.where(xs < E, 2.0, 4.0)
    m = lift(None, z, K)
    T = _T(t=(0.41, 0, 0))
    out = warps(m, rasterize(m, K, T), K, T)
    v0 = out["valid0"].numpy()
    u1 = xs + f * 0.41 / z
    band = (z == 4.0) & (xs < E + 20)
    assert not (v0 & band).any()
    lands = (u1 < w) & (z == 4.0)
    occluded = lands & ~v0
    iou = (occluded & band).sum() / (occluded | band).sum()
    assert iou > 0.9, iou
    # the near plane is never occluded; its last column's bilinear neighbourhood in image 1
    # touches the far plane, so it is invalid
    assert v0[(z == 2.0) & (u1 < w) & (xs < E - 1)].all() and not v0[:, E - 1].any()
    # disocclusion
    T = _T(t=(-0.41, 0, 0))
    r = rasterize(m, K, T)
    out = warps(m, r, K, T)
    gap = (xs > E - 0.5 - 41) & (xs < E + 0.5 - 20.5)
    hole = r.hole.numpy() & (xs < w - 21)  # right of w - 21 is beyond the far plane's mesh
    iou = (hole & gap).sum() / (hole | gap).sum()
    assert iou > 0.9, iou
    assert not out["valid1"].numpy()[gap].any()


def test_warps_round_trip_and_agree_with_geometry_warp_from_depth():
    """Smooth curved surface, 5-10 degree rotations and translation.

    0 -> 1 -> 0: warp1 sampled bilinearly at warp0 returns to the pixel centre within
    0.05 px wherever valid0 (and the landing point is at least half a pixel inside image 1,
    where bilinear sampling has all four neighbours); 1 -> 0 -> 1 the same where the four
    neighbours in image 0 are valid0. The error is bilinear interpolation of a curved warp
    (0.001 px on a plane). warp0 equals l2m_plugin.geometry.warp_from_depth to 1e-9 px.
    """
    from l2m_plugin.geometry import warp_from_depth

    w, h = 120, 90
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    z = 2 + 0.2 * np.sin(xs / 9) * np.cos(ys / 7) + 0.01 * xs
    K0 = _K(w, h, 72.0)
    K1 = _K(w, h, 80.0)
    T = _T((6, -7, 5), (0.3, -0.2, 0.4))
    m = lift(None, z, K0)
    r = rasterize(m, K1, T)
    out = warps(m, r, K1, T)
    v0, v1 = out["valid0"], out["valid1"]
    w0, w1 = out["warp0"], out["warp1"]
    assert v0.float().mean() > 0.5 and v1.float().mean() > 0.4

    def sample(img, at):
        out = F.grid_sample(
            img.permute(2, 0, 1)[None], at[None], padding_mode="border", align_corners=False
        )
        return out[0].permute(1, 2, 0)

    grid = _px(normalized_grid(h, w, dtype=torch.float64), w, h)
    p1 = _px(w0, w, h)
    inner = (
        v0
        & (p1[..., 0] >= 0.5)
        & (p1[..., 0] <= w - 0.5)
        & (p1[..., 1] >= 0.5)
        & (p1[..., 1] <= h - 0.5)
    )
    err = (_px(sample(w1, w0), w, h) - grid).norm(dim=-1)[inner]
    assert inner.sum() > 3000 and err.max() < 0.05, err.max()
    q0 = _px(w1, w, h)
    nb_valid = -F.max_pool2d(-v0.double()[None, None], 2, stride=1)[0, 0]  # all 4 valid0
    nb = F.pad(nb_valid, (0, 1, 0, 1)) > 0.5  # at (i, j): block (i..i+1, j..j+1)
    ix = (q0[..., 0] - 0.5).floor().long().clamp(0, w - 1)
    iy = (q0[..., 1] - 0.5).floor().long().clamp(0, h - 1)
    inner1 = (
        v1
        & nb[iy, ix]
        & (q0[..., 0] >= 0.5)
        & (q0[..., 0] <= w - 0.5)
        & (q0[..., 1] >= 0.5)
        & (q0[..., 1] <= h - 0.5)
    )
    err1 = (_px(sample(w0, w1), w, h) - grid).norm(dim=-1)[inner1]
    assert inner1.sum() > 3000 and err1.max() < 0.05, err1.max()
    depth1 = torch.where(r.hole, 0.0, r.depth)
    wg, vg = warp_from_depth(torch.from_numpy(z), torch.from_numpy(K0), torch.from_numpy(K1),
                             torch.from_numpy(T), depth1=depth1)  # fmt: skip
    assert (_px(wg[0], w, h) - p1)[v0].abs().max() < 1e-9
    assert not (v0 & ~vg[0]).any()  # our visibility is stricter than its 5 % depth test


def test_render_returns_texture_and_depth():
    w, h = 48, 36
    img = _texture(h, w)
    K = _K(w, h, 30.0)
    m = lift(img, np.full((h, w), 2.0), K)
    image, depth = render(m, K, np.eye(4))
    np.testing.assert_array_equal(image, img)
    assert depth.dtype == np.float32 and np.allclose(depth, 2.0)
    with pytest.raises(ValueError, match="textured mesh"):
        render(lift(None, np.full((h, w), 2.0), K), K, np.eye(4))


# ----------------------------------------------------------------------------- sampling


def test_focal_and_motion_sampling_respect_the_configured_ranges():
    """400 seeds each; defaults are the authors' (f in 0.45-0.75 x long side; |t_x|, |t_y|
    in 0.2-0.4, |t_z| in 0.4-0.8 times the near depth; axis-angle components 5-10 degrees,
    both signs), then custom ranges and the orbit model."""
    conf = SynthConfig()
    w, h = 64, 48
    depth = np.full((h, w), 1.0)
    depth[10:20] = 5.0
    fs, ts, rots = [], [], []
    for s in range(400):
        rng = np.random.default_rng(s)
        K0, K1, _ = sample_intrinsics((w, h), conf.camera, rng)
        assert np.array_equal(K0, K1) and K0[0, 2] == w / 2 and K0[1, 2] == h / 2
        fs.append(K0[0, 0] / max(w, h))
        T, info = sample_motion(depth, conf.motion, rng)
        assert info["model"] == "l2m"
        ts.append(T[:3, 3])
        rots.append(info["rotvec_deg"])
        np.testing.assert_allclose(
            T[:3, :3], rotation_from_axis_angle(np.deg2rad(info["rotvec_deg"]))
        )
    fs, ts, rots = np.array(fs), np.abs(np.array(ts)), np.array(rots)
    assert fs.min() >= 0.45 and fs.max() <= 0.75 and fs.max() - fs.min() > 0.25
    for i, (lo, hi) in enumerate([(0.2, 0.4), (0.2, 0.4), (0.4, 0.8)]):
        assert ts[:, i].min() >= lo and ts[:, i].max() <= hi
    assert np.abs(rots).min() >= 5 and np.abs(rots).max() <= 10
    assert 0.35 < (rots > 0).mean() < 0.65
    over = ["camera.focal_range=[0.5,0.6]", "camera.zoom_range=[0.8,1.25]",
            "motion.orbit_probability=1.0", "motion.orbit_yaw_deg=[20,45]"]  # fmt: skip
    conf = load_config("hard", over)
    for s in range(200):
        rng = np.random.default_rng(s)
        K0, K1, info = sample_intrinsics((w, h), conf.camera, rng)
        assert 0.5 <= K0[0, 0] / w <= 0.6 and 0.8 <= K1[0, 0] / K0[0, 0] <= 1.25
        T, info = sample_motion(depth, conf.motion, rng)
        assert info["model"] == "orbit" and 20 <= abs(info["yaw_deg"]) <= 45
        assert 5 <= abs(info["pitch_deg"]) <= 30 and abs(info["roll_deg"]) <= 15
        # the pivot (on the optical axis at the pivot depth) stays on camera 1's axis up to
        # the translation jitter
        P1 = T[:3, :3] @ np.array([0, 0, info["pivot_depth"]]) + T[:3, 3]
        assert np.abs(P1[:2]).max() <= 0.1 * info["pivot_depth"] * 1.0001
        assert (
            abs(P1[2] - info["distance_scale"] * info["pivot_depth"])
            <= 0.1 * info["pivot_depth"] * 1.0001
        )


def test_config_validation_and_overrides():
    assert SYNTH_PRESETS["l2m"] == SynthConfig() and SYNTH_PRESETS["hard"].motion.orbit_probability > 0
    c = load_config("l2m", ["motion.rotation_deg=[1,2]", "inpaint.method=opencv-ns"])
    assert c.motion.rotation_deg == (1.0, 2.0) and c.inpaint.method == "opencv-ns"
    with pytest.raises(ValueError, match="motion.nope"):
        load_config("l2m", ["motion.nope=1"])
    with pytest.raises(ValueError, match=r"motion.rotation_deg must be a range"):
        load_config("l2m", ["motion.rotation_deg=[10,5]"])
    with pytest.raises(ValueError, match="inpaint.method"):
        load_config("l2m", ["inpaint.method=magic"])
    with pytest.raises(ValueError, match="unknown synthesis preset"):
        load_config("easy")


# ----------------------------------------------------------------------------- appearance


def test_relight_and_jitter_keep_shape_and_dtype_and_change_the_image():
    w, h = 64, 48
    img = _texture(h, w)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    z = 2 + 0.5 * np.sin(xs / 9)
    K = _K(w, h, 40.0)
    n = normals_from_depth(z, K)
    assert n.shape == (h, w, 3) and np.allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
    from l2m_plugin.synthesis.appearance import backproject

    assert ((n * backproject(z, K)).sum(-1) < 0).all()  # facing the camera
    conf = load_config("hard")
    lights = sample_lights(conf.relight, np.random.default_rng(0))
    d, s = shade(backproject(z, K), n, lights)
    out = relight(img, d, s, lights)
    assert (
        out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 255
    )
    assert np.abs(out - img).mean() > 2
    a = photometric_jitter(img, conf.jitter, np.random.default_rng(1))
    b = photometric_jitter(img, conf.jitter, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert np.abs(a.astype(int) - img).mean() > 2
    off = load_config("l2m", ["jitter.probability=0"]).jitter
    assert np.array_equal(photometric_jitter(img, off, np.random.default_rng(1)), img)


def test_inpainting_fills_every_hole_pixel():
    w, h = 64, 48
    img = _texture(h, w)
    mask = np.zeros((h, w), bool)
    mask[10:30, 20:45] = True
    mask[:, :3] = True
    holed = img.copy()
    holed[mask] = (255, 0, 255)
    for method in ("opencv-telea", "opencv-ns"):
        out = inpaint(holed, mask, load_config("l2m", [f"inpaint.method={method}"]).inpaint)
        assert out.dtype == np.uint8 and np.array_equal(out[~mask], img[~mask])
        assert not (out[mask] == (255, 0, 255)).all(-1).any()
        assert out[mask].min() >= 30 and out[mask].max() <= 240  # from the 40-230 surroundings
    # in a pair: holes of image 1 (black before filling) are all filled
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    pair = synthesize_pair(img, np.where(xs < 30, 1.5, 4.0), _quiet(), np.random.default_rng(2))
    assert pair.hole1.any() and (pair.image1[pair.hole1] > 0).any(-1).all()
    assert not pair.valid1[pair.hole1].any() and (pair.depth1[pair.hole1] == 0).all()


def test_sky_mask_removes_depth_and_correspondences():
    w, h = 64, 48
    img = _texture(h, w)
    sky = np.zeros((h, w), bool)
    sky[:12] = True
    pair = synthesize_pair(
        img, np.full((h, w), 2.0), _quiet(), np.random.default_rng(0), sky_mask=sky
    )
    assert (pair.depth0[sky] == 0).all() and not pair.valid0[sky].any()
    # no pixel of image 1 maps into the sky
    q = _px(pair.warp1, w, h).numpy()[pair.valid1]
    assert (q[:, 1] >= 12 - 0.5).all()


def test_synthesize_pair_is_seeded_and_consistent():
    w, h = 80, 60
    img = _texture(h, w, 5)
    z = synthetic_depth((w, h), np.random.default_rng(4), image=img)
    a = synthesize_pair(img, z, SYNTH_PRESETS["hard"], np.random.default_rng(9))
    b = synthesize_pair(img, z, SYNTH_PRESETS["hard"], np.random.default_rng(9))
    for k, v in a.geometry().items():
        np.testing.assert_array_equal(v, b.geometry()[k])
    np.testing.assert_array_equal(a.image1, b.image1)
    g = a.geometry()
    assert (
        g["warp0"].dtype == np.float32 and g["valid0"].dtype == bool and g["K0"].dtype == np.float64
    )
    assert (g["warp0"][~g["valid0"]] == 2.0).all() and (g["warp1"][~g["valid1"]] == 2.0).all()
    assert (g["depth1"][g["valid1"]] > 0).all() and (g["depth0"][g["valid0"]] > 0).all()
    assert a.info["covisible"] >= SYNTH_PRESETS["hard"].motion.min_covisible
    # motions that leave too little overlap are redrawn; after max_tries the best is kept
    far = _quiet(rotation_deg=(60, 70))
    far = load_config(far, ["motion.max_tries=3"])
    c = synthesize_pair(img, z, far, np.random.default_rng(0))
    assert c.info["covisible"] < far.motion.min_covisible and c.image1.shape == img.shape
    with pytest.raises(ValueError, match="uint8"):
        synthesize_pair(img.astype(np.float32), z)
    with pytest.raises(ValueError, match="shape"):
        synthesize_pair(img, z[:-1])


# ----------------------------------------------------------------------------- depth sources


def test_disparity_files_and_depth_mapping(tmp_path):
    import cv2

    h, w = 30, 40
    disp = np.linspace(0, 1, w)[None].repeat(h, 0).astype(np.float32)
    np.save(tmp_path / "a.npy", disp)
    cv2.imwrite(str(tmp_path / "b.png"), np.round(disp * 65535).astype(np.uint16))
    np.testing.assert_array_equal(load_depth_file(tmp_path / "a.npy"), disp)
    np.testing.assert_allclose(load_depth_file(tmp_path / "b.png"), disp, atol=1 / 65535)
    z = disparity_to_depth(disp, near=1.0, far=100.0, percentiles=(1, 99))
    assert z.dtype == np.float32 and z.shape == (h, w)
    assert np.isclose(z.min(), 1.0) and np.isclose(z.max(), 100.0, rtol=1e-5)
    assert (np.diff(z[0]) <= 0).all()  # larger disparity = nearer
    # 1/depth is affine in the disparity between the percentiles
    mid = (disp[0] > 0.05) & (disp[0] < 0.95)
    inv = 1 / z[0][mid]
    coef = np.polyfit(disp[0][mid], inv, 1)
    assert np.abs(np.polyval(coef, disp[0][mid]) - inv).max() < 1e-5
    # scale/shift invariant; NaN = no surface
    z2 = disparity_to_depth(3 * disp + 7)
    np.testing.assert_allclose(z2, z, rtol=1e-5)
    d3 = disp.copy()
    d3[0, 0] = np.nan
    assert disparity_to_depth(d3)[0, 0] == 0
    with pytest.raises(ValueError, match="constant"):
        disparity_to_depth(np.ones((5, 5)))
    (tmp_path / "c.npy").write_bytes(b"garbage")
    with pytest.raises(DepthFileError, match="c.npy"):
        load_depth_file(tmp_path / "c.npy")
    with pytest.raises(DepthFileError, match=r"sub/x\.npy and .*sub/x\.png"):
        depth_file_for("sub/x.jpg", tmp_path, "/imgs")
    assert depth_file_for("a.jpg", tmp_path) == tmp_path / "a.npy"


def test_synthetic_depth_is_seeded_plausible_and_has_occlusions():
    w, h = 96, 72
    img = _texture(h, w)
    a = synthetic_depth((w, h), np.random.default_rng(7), image=img)
    b = synthetic_depth((w, h), np.random.default_rng(7), image=img)
    c = synthetic_depth((w, h), np.random.default_rng(8), image=img)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with_steps = 0
    for s in range(12):
        z = synthetic_depth((w, h), np.random.default_rng(s), image=img if s % 2 else None)
        assert z.shape == (h, w) and z.dtype == np.float32
        assert (
            z.min() >= 1.0 and z.max() <= 100.0 and np.isclose(np.percentile(z, 1), 1.0, rtol=0.05)
        )
        jump = np.abs(np.diff(z, axis=1)) / np.minimum(z[:, 1:], z[:, :-1])
        with_steps += (jump > 0.2).any()
    assert with_steps >= 9  # occluding layers make real depth steps in most scenes


# ----------------------------------------------------------------------------- optional backends


@pytest.mark.skipif(__import__("importlib").util.find_spec("diffusers") is not None,
                    reason="diffusers is installed")  # fmt: skip
def test_diffusers_backend_names_the_missing_package(tmp_path):
    conf = load_config("l2m", ["inpaint.method=diffusers"]).inpaint
    mask = np.zeros((20, 20), bool)
    mask[5:9, 5:9] = True
    with pytest.raises(BackendUnavailableError, match="'diffusers' package"):
        inpaint(np.zeros((20, 20, 3), np.uint8), mask, conf)
    from l2m_plugin.cli import main

    images = tmp_path / "img"
    images.mkdir()
    Image.fromarray(_texture(40, 50)).save(images / "a.png")
    args = ["synth", "--images", images, "--depth", "synthetic", "--out", tmp_path / "o"]
    assert main([*map(str, args), "--set", "inpaint.method=diffusers", "--quiet"]) == 2


@pytest.mark.skipif(__import__("importlib").util.find_spec("transformers") is not None,
                    reason="transformers is installed")  # fmt: skip
def test_transformers_backend_names_the_missing_package(tmp_path):
    with pytest.raises(BackendUnavailableError, match="'transformers' package"):
        TransformersDepth("depth-anything/Depth-Anything-V2-Small-hf")
    from l2m_plugin.cli import main

    images = tmp_path / "img"
    images.mkdir()
    Image.fromarray(_texture(40, 50)).save(images / "a.png")
    assert main(["synth", "--images", str(images), "--depth", "transformers", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2  # fmt: skip


# ----------------------------------------------------------------------------- CLI and format


def _synth(images, out, *extra, depth="synthetic"):
    from l2m_plugin.cli import main

    return main(["synth", "--images", str(images), "--depth", str(depth), "--out", str(out),
                 "--size", "96", "--quiet", *map(str, extra)])  # fmt: skip


def test_cli_end_to_end_format_resume_conf_check_and_failures(tmp_path, capsys):
    """3 small photos and a corrupt one; the pair read back has warp0 equal to
    geometry.warp_from_depth (float32 storage: < 1e-5 normalised, i.e. < 1e-3 px) where
    both call it valid, and every valid0 pixel is valid there too."""
    from l2m_plugin.geometry import warp_from_depth

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        Image.fromarray(_texture(72 + 8 * i, 100, seed=i)).save(images / name)
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    Image.fromarray(_texture(20, 24)).save(images / "tiny.png")  # too small: short side < 32
    out = tmp_path / "out"
    assert _synth(images, out, "--pairs-per-image", 2) == 0
    names = ["a.png", "b.jpg", "bad.jpg", "sub/c.png", "tiny.png"]  # sorted: indices 0..4
    recs = list_pairs(out)
    assert [r["id"] for r in recs] == ["000000_00", "000000_01", "000001_00", "000001_01",
                                       "000003_00", "000003_01"]  # fmt: skip
    for r in recs:
        assert r["source"] == names[int(r["id"][:6])] and r["depth_source"] == "synthetic"
        assert set(r) == {"id", "source", "size", "depth_source"}
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["source"] for f in fails] == ["bad.jpg", "tiny.png"]
    assert "ImageLoadError" in fails[0]["error"] and "too small" in fails[1]["error"]
    conf = (out / "synth_conf.yaml").read_text()
    assert "format: l2m-synth" in conf and "version: 1" in conf
    assert (out / "samples.png").is_file() and Image.open(out / "samples.png").width > 150
    # the format
    p = read_pair(out, "000001_00")
    W, H = recs[2]["size"]
    assert (W, H) == (96, 77)  # long side 96: 100x80 -> 96x76.8, rounded
    files = sorted(f.name for f in (out / "pairs" / "000001_00").iterdir())
    assert files == ["geometry.npz", "image0.png", "image1.png"]
    with np.load(out / "pairs" / "000001_00" / "geometry.npz") as g:
        assert sorted(g.files) == sorted(["K0", "K1", "T_0to1", "depth0", "depth1", "valid0",
                                          "valid1", "warp0", "warp1"])  # fmt: skip
    for k, (shape, dtype) in {"image0": ((H, W, 3), np.uint8), "image1": ((H, W, 3), np.uint8),
                              "K0": ((3, 3), np.float64), "K1": ((3, 3), np.float64),
                              "T_0to1": ((4, 4), np.float64), "depth0": ((H, W), np.float32),
                              "depth1": ((H, W), np.float32), "valid0": ((H, W), np.bool_),
                              "valid1": ((H, W), np.bool_), "warp0": ((H, W, 2), np.float32),
                              "warp1": ((H, W, 2), np.float32)}.items():  # fmt: skip
        assert p[k].shape == shape and p[k].dtype == dtype, k
    assert (p["warp0"][~p["valid0"]] == 2.0).all() and p["valid0"].mean() > 0.2
    T = p["T_0to1"]
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3)) and np.allclose(T[3], [0, 0, 0, 1])
    wg, vg = warp_from_depth(torch.from_numpy(p["depth0"]).double(), torch.from_numpy(p["K0"]),
                             torch.from_numpy(p["K1"]), torch.from_numpy(T),
                             depth1=torch.from_numpy(p["depth1"]).double())  # fmt: skip
    v = p["valid0"]
    assert np.abs(wg[0].numpy()[v] - p["warp0"][v]).max() < 1e-5
    assert vg[0].numpy()[v].all()
    # resume: nothing rewritten
    mtimes = {f: f.stat().st_mtime_ns for f in (out / "pairs").rglob("*") if f.is_file()}
    jsonl = (out / "pairs.jsonl").read_text()
    (out / "pairs" / "000002_00.tmp-999").mkdir()  # stale, from a killed run
    capsys.readouterr()
    assert _synth(images, out, "--pairs-per-image", 2) == 0
    assert (out / "pairs.jsonl").read_text() == jsonl
    assert {f: f.stat().st_mtime_ns for f in (out / "pairs").rglob("*") if f.is_file()} == mtimes
    assert not (out / "pairs" / "000002_00.tmp-999").exists()
    # a line cut by a crash is ignored by the reader and removed by the next run
    with open(out / "pairs.jsonl", "a") as f:
        f.write('{"id": "000000_0')
    assert len(list_pairs(out)) == 6
    # more pairs per image: only the new ones are written
    assert _synth(images, out, "--pairs-per-image", 3) == 0
    assert [r["id"] for r in list_pairs(out)][6:] == ["000000_02", "000001_02", "000003_02"]
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    # another configuration is refused, and --overwrite starts again
    capsys.readouterr()
    assert _synth(images, out, "--seed", 1) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "run.seed" in err and "--overwrite" in err
    assert _synth(images, out, "--set", "motion.rotation_deg=[1,2]") == 2
    assert "motion.rotation_deg" in capsys.readouterr().err
    assert _synth(images, out, "--seed", 1, "--max-images", 1, "--overwrite") == 0
    assert [r["id"] for r in list_pairs(out)] == ["000000_00"]
    assert not (out / "failures.jsonl").exists()
    # bad input: exit 2 with the argument named
    assert _synth(tmp_path / "nope", tmp_path / "o2") == 2
    assert "nope" in capsys.readouterr().err
    assert _synth(images, tmp_path / "o3", "--set", "camera.focal=1") == 2


def test_cli_with_depth_files_and_a_missing_one(tmp_path):
    """Depth files mirror the image folder; an image without one is a per-image failure
    naming both candidate paths."""
    import cv2

    images, depth = tmp_path / "images", tmp_path / "depth"
    (images / "s").mkdir(parents=True)
    (depth / "s").mkdir(parents=True)
    ys, xs = np.mgrid[0:60, 0:80]
    disp = (0.2 + 0.6 * (ys / 60) + 0.3 * (xs > 40)).astype(np.float32)
    for name in ("a.png", "s/b.jpg", "c.png"):
        Image.fromarray(_texture(60, 80)).save(images / name)
    np.save(depth / "a.npy", disp)
    cv2.imwrite(str(depth / "s" / "b.png"), np.round(disp / disp.max() * 65535).astype(np.uint16))
    out = tmp_path / "out"
    assert _synth(images, out, "--size", "64x40", depth=depth) == 0  # the last --size wins
    recs = {r["source"]: r for r in list_pairs(out)}
    assert all(r["size"] == [64, 40] for r in recs.values())
    assert read_pair(out, recs["a.png"]["id"])["image1"].shape == (40, 64, 3)
    assert recs["a.png"]["depth_source"] == "file:a.npy"
    assert recs["s/b.jpg"]["depth_source"] == "file:s/b.png"
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(fails) == 1 and fails[0]["source"] == "c.png"
    assert "c.npy" in fails[0]["error"] and "c.png" in fails[0]["error"]
    p = read_pair(out, recs["a.png"]["id"])
    assert p["depth0"].min() > 0 and np.isclose(p["depth0"].min(), 1.0, rtol=0.05)


def test_a_real_photo_with_synthetic_depth():
    if not SINGLE_VIEW.is_dir():
        pytest.skip(
            f"real photos not found at {SINGLE_VIEW} (set L2M_SHARED_DATA to ../shared/data)"
        )
    from l2m_plugin.io import load_image
    from l2m_plugin.synthesis.generate import list_source_images, prepare_image

    name = list_source_images(SINGLE_VIEW)[0]
    img, _ = prepare_image(np.asarray(load_image(SINGLE_VIEW / name).image), "160")
    rng = np.random.default_rng(0)
    z = synthetic_depth((img.shape[1], img.shape[0]), rng, image=img)
    pair = synthesize_pair(img, z, SYNTH_PRESETS["l2m"], rng)
    assert pair.valid0.mean() > 0.2 and pair.valid1.mean() > 0.2
    assert pair.image1.shape == img.shape


def test_train_and_heldout_splits_never_share_a_photo():
    from l2m_plugin.synthesis.generate import RunSettings, split_images

    names = [f"img_{j:03d}.jpg" for j in range(35)]
    train, held = split_images(names, "train"), split_images(names, "heldout", 10)
    assert held == ["img_000.jpg", "img_010.jpg", "img_020.jpg", "img_030.jpg"]
    assert len(train) == 31 and not set(train) & set(held)
    assert sorted(train + held) == names and split_images(names, "all") == names
    with pytest.raises(ValueError, match="split must be one of"):
        RunSettings(images="x", depth="synthetic", split="test")
