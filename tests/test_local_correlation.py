"""Local correlation by integer-pixel gathers equals RoMa's bilinear-sample loop."""

import pytest
import torch

from l2m_plugin.models.decoder import _local_correlation_sampled, local_correlation


def _warp(b, h, w, g, spread=1.3):
    ys = (torch.arange(h) + 0.5) / h * 2 - 1
    xs = (torch.arange(w) + 0.5) / w * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)[None].expand(b, 2, h, w)
    # smooth part plus noise, reaching past the borders (zero padding must match)
    return (grid * spread + 0.2 * torch.randn(b, 2, h, w, generator=g)).contiguous()


@pytest.mark.parametrize("radius,shape", [(7, (2, 16, 9, 11)), (3, (1, 32, 20, 17)), (2, (2, 8, 13, 13))])
def test_gather_equals_sampling(radius, shape):
    g = torch.Generator().manual_seed(radius)
    b, c, h, w = shape
    f0, f1 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    warp = _warp(b, h, w, g)
    warp[0, :, 0, 0] = torch.tensor([1e4, -1e4])  # far outside: all zeros
    ref = _local_correlation_sampled(f0, f1, warp, radius, h, w)
    out = local_correlation(f0, f1, warp, radius)
    assert out.shape == ref.shape == (b, (2 * radius + 1) ** 2, h, w)
    assert (out - ref).abs().max() < 2e-5 * ref.abs().max()
    assert out[0, :, 0, 0].abs().max() == 0
    # a band of rows with the full map's size gives the full map's rows
    band = local_correlation(f0[:, :, 3:7], f1, warp[:, :, 3:7], radius, size=(h, w))
    assert (band - ref[:, :, 3:7]).abs().max() < 2e-5 * ref.abs().max()


def test_other_sizes_use_sampling():
    g = torch.Generator().manual_seed(0)
    f0, f1 = torch.randn(1, 8, 10, 12, generator=g), torch.randn(1, 8, 15, 9, generator=g)
    warp = _warp(1, 10, 12, g)
    ref = _local_correlation_sampled(f0, f1, warp, 2, 10, 12)
    assert torch.equal(local_correlation(f0, f1, warp, 2), ref)


def test_bfloat16_close_to_float32():
    g = torch.Generator().manual_seed(1)
    f0, f1 = torch.randn(1, 64, 12, 12, generator=g), torch.randn(1, 64, 12, 12, generator=g)
    warp = _warp(1, 12, 12, g, spread=0.9)
    ref = local_correlation(f0, f1, warp, 3)
    out = local_correlation(f0.bfloat16(), f1.bfloat16(), warp, 3)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.02 * ref.abs().max()
