"""Inference-time folding of BatchNorm into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) * s + beta``
with ``s = gamma / sqrt(var + eps)``, so ``BN(conv(x))`` is one convolution with
weight ``W * s`` and bias ``(b - mean) * s + beta``; a following ReLU runs as
oneDNN's post-op of that convolution (float32 on CPU) or in place. That removes two
full passes over every activation map (the BN and a separate ReLU output), which on
CPU cost as much as the depth-wise convolutions of the refiners themselves: one
refiner block at 432 x 432 x 144 channels went from 273 to 198 ms in float32 (2
cores; README "Speed" has the whole-model numbers). Same function, different
round-off (about 5e-7 relative per block). Not used for the projections in front of
the GP matcher: its anchor classifier ends in an argmax that a changed round-off can
flip at a near-tie (``models.decoder``).

Used only where it cannot change training: modules in eval mode with autograd off
(``torch.inference_mode`` / ``torch.no_grad``), which is how :class:`~l2m_plugin.L2M`
runs ``forward``/``match``/``encode``. Otherwise the modules run as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["can_fold", "fold_conv_bn", "run_layers"]


def can_fold(module: nn.Module) -> bool:
    """True when BatchNorm may be folded: ``module`` in eval mode and autograd off."""
    return not module.training and not torch.is_grad_enabled()


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the single convolution equal to ``bn(conv(x))`` in eval mode.

    Args:
        conv: a Conv2d (any groups, with or without bias).
        bn: the BatchNorm2d that follows it, with running statistics.
    Returns:
        ``(weight (C_out, C_in / groups, k, k), bias (C_out,))`` float32 (the dtype of
        ``conv.weight``).
    Raises:
        ValueError: ``bn`` has no running statistics or its width is not ``conv``'s output.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_conv_bn needs a BatchNorm2d with running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm2d width {bn.num_features} != conv output channels {conv.out_channels}")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return weight, bias


def _onednn_relu_ok(x: torch.Tensor) -> bool:
    """oneDNN's convolution with a fused ReLU applies: float32 on CPU, no autocast."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def _conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
    if conv.padding_mode != "zeros":
        raise ValueError(f"fused convolution supports zero padding only, got {conv.padding_mode!r}")
    if relu and _onednn_relu_ok(x):
        # the ReLU as oneDNN's post-op: one pass over the output instead of two
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "relu", [], ""
        )
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.relu_() if relu else y


def run_layers(x: torch.Tensor, layers: Sequence[nn.Module], fold: bool) -> torch.Tensor:
    """Apply ``layers`` in order, folding each Conv2d -> BatchNorm2d (-> ReLU) run when ``fold``.

    Args:
        x: (B, C, H, W) input.
        layers: the modules, e.g. an ``nn.Sequential``'s children.
        fold: fold BatchNorm into the convolution before it (see :func:`can_fold`);
            False: call every module as it is.
    Returns:
        the output of the last layer (the same function either way).
    """
    layers = list(layers)
    i = 0
    while i < len(layers):
        m = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if fold and isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            relu = i + 2 < len(layers) and isinstance(layers[i + 2], nn.ReLU)
            x = _conv(x, m, *fold_conv_bn(m, nxt), relu=relu)
            i += 3 if relu else 2
            continue
        x = m(x)
        i += 1
    return x
