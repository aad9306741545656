"""Coordinate conventions: normalised <-> pixel <-> hloc, and EXIF stored <-> upright."""

import pytest
import torch

from l2m_plugin import coords as C


def test_pixel_centres_and_edges():
    # width 4: pixel centres at 0.5, 1.5, 2.5, 3.5 <-> normalised -0.75, -0.25, 0.25, 0.75
    px = torch.tensor([[0.5, 0.5], [3.5, 1.5], [0.0, 0.0], [4.0, 2.0]])
    n = C.pixel_to_normalized(px, 4, 2)
    assert torch.allclose(n, torch.tensor([[-0.75, -0.5], [0.75, 0.5], [-1.0, -1.0], [1.0, 1.0]]))
    assert torch.allclose(C.normalized_to_pixel(n, 4, 2), px)
    assert torch.equal(C.pixel_to_hloc(px)[0], torch.tensor([0.0, 0.0]))
    assert torch.equal(C.hloc_to_pixel(C.pixel_to_hloc(px)), px)


def test_normalized_grid_is_the_pixel_centres():
    g = C.normalized_grid(3, 5)
    assert g.shape == (3, 5, 2)
    px = C.normalized_to_pixel(g, 5, 3)
    assert torch.allclose(px[..., 0], torch.arange(5.0)[None].expand(3, 5) + 0.5)
    assert torch.allclose(px[..., 1], torch.arange(3.0)[:, None].expand(3, 5) + 0.5)
    # grid_sample(align_corners=False) at these coordinates returns exactly the pixels
    img = torch.arange(15.0).reshape(1, 1, 3, 5)
    out = torch.nn.functional.grid_sample(img, g[None], align_corners=False)
    assert torch.allclose(out, img)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_round_trip_and_sizes(orientation):
    W, H = 40, 24
    pts = torch.tensor([[0.0, 0.0], [5.5, 3.5], [40.0, 24.0], [12.25, 20.0]])
    up = C.stored_to_upright(pts, W, H, orientation)
    uw, uh = C.upright_size(W, H, orientation)
    assert (up[:, 0] >= 0).all() and (up[:, 0] <= uw).all() and (up[:, 1] <= uh).all()
    assert torch.allclose(C.upright_to_stored(up, W, H, orientation), pts)
    # corners stay corners
    corners = {tuple(c) for c in up[[0, 2]].tolist()}
    assert corners <= {(0.0, 0.0), (uw, 0.0), (0.0, uh), (uw, uh)}


def test_bad_orientation():
    with pytest.raises(ValueError, match="1..8"):
        C.upright_size(4, 4, 0)
