"""Two-view geometry: warp_from_depth, fundamental matrices, the oracle and the synthetic scene."""

import numpy as np
import pytest
import torch

from l2m_plugin.coords import normalized_grid, normalized_to_pixel
from l2m_plugin.geometry import (
    epipolar_distance,
    fundamental_from_pose,
    to_hloc_intrinsics,
    warp_from_depth,
)


def _pose(rx=0.0, ry=0.0, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    cx, sx, cy, sy = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
    R = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array(
        [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]
    )
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return torch.from_numpy(T)


K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 110.0, 24.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_warp_from_depth_fronto_parallel_translation_by_hand():
    # Plane at z = 2, camera 1 shifted 0.1 to the left (x_cam1 = x_cam0 + 0.1):
    # every pixel moves by fx * 0.1 / 2 = 5 px to the right, nothing else.
    depth = torch.full((48, 64), 2.0, dtype=torch.float64)
    warp, valid = warp_from_depth(depth, K, K, _pose(t=(0.1, 0.0, 0.0)))
    grid = normalized_grid(48, 64, dtype=torch.float64)
    src = normalized_to_pixel(grid, 64, 48)
    dst = normalized_to_pixel(warp[0], 64, 48)
    shift = (dst - src)[valid[0]]
    assert torch.allclose(shift[:, 0], torch.full_like(shift[:, 0], 5.0), atol=1e-9)
    assert torch.allclose(shift[:, 1], torch.zeros_like(shift[:, 1]), atol=1e-9)
    # The 5 right-most columns leave image 1.
    assert not valid[0, :, -5:].any() and valid[0, :, :-5].all()


def test_warp_from_depth_identity_is_exact_at_pixel_centres():
    depth = torch.rand(1, 30, 40, dtype=torch.float64) + 1
    Kd = K.clone()
    Kd[0, 2], Kd[1, 2] = 20.0, 15.0
    warp, valid = warp_from_depth(depth, Kd, Kd, torch.eye(4, dtype=torch.float64))
    assert valid.all()
    assert torch.allclose(warp[0], normalized_grid(30, 40, dtype=torch.float64), atol=1e-12)


def test_warp_from_depth_occlusion_and_invalid_depth():
    depth0 = torch.full((1, 48, 64), 2.0, dtype=torch.float64)
    depth0[0, :, :4] = 0.0  # no surface
    depth1 = torch.full((1, 48, 64), 2.0, dtype=torch.float64)
    depth1[0, 20:30, 20:30] = 1.0  # an occluder in front, seen only by camera 1
    _, valid = warp_from_depth(depth0, K, K, torch.eye(4, dtype=torch.float64), depth1=depth1)
    assert not valid[0, :, :4].any()
    assert not valid[0, 20:30, 20:30].any()
    assert valid[0, 5:15, 30:60].all()
    with pytest.raises(ValueError, match="size1"):
        warp_from_depth(depth0, K, K, torch.eye(4), depth1=depth1, size1=(10, 10))


def test_fundamental_from_pose_vanishes_on_projections():
    g = torch.Generator().manual_seed(0)
    T = _pose(0.1, -0.2, (0.5, 0.1, 0.2))
    X0 = torch.rand(200, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [2.0, 2.0, 3.0]
    ) + torch.tensor([-1.0, -1.0, 3.0])
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    x0 = (X0 @ K.T)[:, :2] / X0[:, 2:]
    x1 = (X1 @ K.T)[:, :2] / X1[:, 2:]
    Fm = fundamental_from_pose(K, K, T)
    assert epipolar_distance(x0, x1, Fm).max() < 1e-9
    # A one-pixel vertical error in image 1 is seen (lines are not vertical here).
    assert epipolar_distance(x0, x1 + torch.tensor([0.0, 1.0]), Fm).median() > 0.3
    # The hloc-convention F is the same geometry for coordinates shifted by -0.5.
    Fh = fundamental_from_pose(to_hloc_intrinsics(K), to_hloc_intrinsics(K), T)
    assert epipolar_distance(x0 - 0.5, x1 - 0.5, Fh).max() < 1e-9


@pytest.fixture(scope="module")
def scene():
    from l2m_plugin.testing.scenes import make_scene

    return make_scene(4, (160, 120), seed=1)


def test_synthetic_scene_is_consistent(scene):
    """Rendered colours agree where the warp says two pixels see the same surface point."""
    a, b = scene.views[0], scene.views[2]
    warp, valid = warp_from_depth(
        torch.from_numpy(a.depth), torch.from_numpy(a.K), torch.from_numpy(b.K),
        torch.from_numpy(scene.relative_pose(a.name, b.name)), depth1=torch.from_numpy(b.depth)[None],
    )  # fmt: skip
    assert 0.4 < valid.float().mean() < 1.0
    img1 = torch.from_numpy(b.image).permute(2, 0, 1)[None].float()
    sampled = torch.nn.functional.grid_sample(img1, warp.float(), align_corners=False)[0].permute(
        1, 2, 0
    )
    diff = (sampled - torch.from_numpy(a.image).float()).abs().mean(-1)[valid[0]]
    shuffled = (sampled - torch.from_numpy(a.image).float().flip(0)).abs().mean(-1)[valid[0]]
    assert diff.median() < 0.3 * shuffled.median()


def test_oracle_matches_are_exact_and_survive_resizing(scene):
    from l2m_plugin.matching.oracle import OracleMatcher

    oracle = OracleMatcher(scene.views)
    a, b = scene.views[1], scene.views[3]
    x0 = torch.from_numpy(a.image).permute(2, 0, 1)[None].float() / 255
    x1 = torch.from_numpy(b.image).permute(2, 0, 1)[None].float() / 255
    small = torch.nn.functional.interpolate(x0, size=(90, 130), mode="bilinear", antialias=True)
    out = oracle({"image0": small, "image1": x1})
    assert out["size0"] == (130, 90) and out["warp0"].shape == (1, 120, 160, 2)
    m = oracle.sample(out, 1000, generator=torch.Generator().manual_seed(0))
    assert len(m["keypoints0"]) == 1000
    k0 = m["keypoints0"].double() * torch.tensor([160 / 130, 120 / 90], dtype=torch.float64)
    Fm = torch.from_numpy(scene.fundamental(a.name, b.name))
    assert epipolar_distance(k0, m["keypoints1"].double(), Fm).max() < 1e-3
    with pytest.raises(ValueError, match="none of the oracle"):
        oracle({"image0": torch.rand(1, 3, 120, 160), "image1": x1})
