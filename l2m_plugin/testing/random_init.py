"""Randomly initialised matchers for offline tests and demos.

The official weights cannot be downloaded everywhere (they cannot in CI), so the
loading and matching code is exercised with random weights saved in the official
layout (:func:`l2m_plugin.weights.save_official_layout`). PyTorch's default
initialisation makes the refiners' signal vanish (each depth-wise block scales
the variance by about 0.05, with nine blocks per refiner), which would hide
differences in the displacement embedding from any test. :func:`calibrate_batchnorm`
fixes that the way data-dependent initialisation does: it sets every BatchNorm's
running statistics to the batch statistics of real images, so activations are of
unit scale throughout and every input of the decoder matters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from l2m_plugin.config import MatcherConfig
from l2m_plugin.io import load_image, resize_to_tensor
from l2m_plugin.models.matcher import L2M, load_matcher

__all__ = ["calibrate_batchnorm", "random_matcher"]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, data: dict) -> None:
    """Set all BatchNorm running statistics to those of one forward pass on ``data``.

    Args:
        model: an :class:`~l2m_plugin.L2M`; left in eval mode.
        data: its forward input (``image0``/``image1`` (B, 3, H, W) in [0, 1]).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, running stats = batch stats
    model.train()
    try:
        model(data)
    finally:
        for m, momentum in zip(bns, momenta, strict=False):
            m.momentum = momentum
        model.eval()


def random_matcher(
    config: MatcherConfig | None = None,
    seed: int = 0,
    calibration_images: tuple | None = None,
    calibration_res: int = 224,
    out_scale: float = 0.1,
):
    """A seeded random-init :class:`~l2m_plugin.L2M`, optionally BatchNorm-calibrated.

    Args:
        config: matcher config (default :class:`MatcherConfig`).
        seed: torch seed for the initialisation.
        calibration_images: two images (paths, PIL images or arrays) for
            :func:`calibrate_batchnorm`; ``None`` keeps the default statistics.
        calibration_res: square coarse resolution used for calibration (multiple of 14);
            the upsampling pass, if configured, runs at 1.5 times it.
        out_scale: factor on the refiners' output convolutions after calibration.
    Returns:
        The model in eval mode; ``weights_name`` says it is random.
    """

    config = config or MatcherConfig()
    torch.manual_seed(seed)
    name = f"random-init-seed{seed}"
    if calibration_images is None:
        return L2M(config, weights_name=name)
    c = (calibration_res, calibration_res)
    u = (calibration_res * 3 // 2 // 8 * 8,) * 2
    model = L2M(config.replace(coarse_res=c, upsample_res=u if config.upsample_res else None))
    data = {}
    for i, im in enumerate(calibration_images):
        img = load_image(im).image
        data[f"image{i}"] = resize_to_tensor(img, c)[None]
        data[f"image{i}_upsample"] = resize_to_tensor(img, u)[None]
    calibrate_batchnorm(model, data)
    with torch.no_grad():
        # Unit-scale refiner activations would move the warp by tens of pixels per scale
        # and push it out of the image; keep random displacements to a few pixels.
        for refiner in model.decoder.conv_refiner.values():
            refiner.out_conv.weight.mul_(out_scale)
            refiner.out_conv.bias.mul_(out_scale)
    model = load_matcher(model.state_dict(), config=config)
    model.weights_name = name + "-bn-calibrated"
    return model
