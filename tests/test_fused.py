"""BatchNorm folded into the convolution before it (inference only): same function."""

import pytest
import torch
import torch.nn as nn

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.models.fused import can_fold, fold_conv_bn, run_layers


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.3 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (8, True)])
def test_folded_layers_equal_the_modules(groups, bias):
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.MaxPool2d(2), nn.Conv2d(16, 4, 1),
    ).eval()  # fmt: skip
    _randomise_bn(seq)
    x = torch.randn(2, 8, 12, 10)
    with torch.inference_mode():
        assert can_fold(seq)
        want = seq(x)
        got = run_layers(x, seq, fold=True)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    seq.train()
    assert not can_fold(seq)
    with torch.enable_grad():
        seq.eval()
        assert not can_fold(seq)  # autograd on: the modules run as they are


def test_fold_conv_bn_checks_widths():
    with pytest.raises(ValueError, match="width"):
        fold_conv_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))


def test_matcher_output_is_the_same_with_and_without_folding():
    """L2M folds in inference mode; the same forward with autograd on does not fold."""
    torch.manual_seed(0)
    model = L2M(MatcherConfig(encoder="vits14", coarse_res=56, upsample_res=64)).eval()
    _randomise_bn(model, seed=1)
    data = {"image0": torch.rand(1, 3, 56, 56), "image1": torch.rand(1, 3, 56, 56)}
    with torch.inference_mode():
        folded = model(data)
    with torch.enable_grad():
        plain = model(data)
    for k in ("warp0", "warp1", "certainty0", "certainty1"):
        assert torch.allclose(folded[k], plain[k].detach(), atol=1e-4), k
