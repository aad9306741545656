"""Encoder features of one pyramid level, as the feature benchmark (:mod:`l2m_plugin.eval.features`)
and stage-1 lifting (:mod:`l2m_plugin.lifting`) read them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from l2m_plugin.models.encoder import Encoder
from l2m_plugin.models.matcher import L2M, resize_input

__all__ = ["is_l2m", "check_model", "eval_size", "level_stride", "encode_level"]


def is_l2m(model: Any) -> bool:
    """Whether ``model`` is an :class:`~l2m_plugin.L2M`."""
    return isinstance(model, L2M)


def eval_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """The default evaluation size: (height, width) rounded to the nearest multiple of ``stride``.

    Halves round up; the result is at least one stride per side.

    Raises:
        ValueError: a non-positive height, width or stride.
    """
    if stride <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"eval_size needs positive height, width and stride, got {height}, {width}, {stride}")
    return tuple(max(stride, (2 * n + stride) // (2 * stride) * stride) for n in (height, width))  # n / stride rounded half up


def level_stride(model: Any, level: int) -> int:
    """Pixels per feature cell of ``model``'s pyramid level ``level`` (an :class:`~l2m_plugin.L2M`).

    Levels 1, 2, 4, 8 are the CNN pyramid (stride = level); 16 is the coarse level, stride
    ``config.arch_config.coarse_stride`` (16 for a CNN coarse encoder, 14 for a ViT).

    Raises:
        TypeError: ``model`` is not an L2M.
        ValueError: ``level`` is not one of 1, 2, 4, 8, 16.
    """
    if not is_l2m(model):
        raise TypeError(f"level_stride needs an L2M, got {type(model).__name__}")
    if level not in (1, 2, 4, 8, 16):
        raise ValueError(f"level must be one of 1, 2, 4, 8, 16 (the encoder's pyramid levels), got {level!r}")
    return model.config.arch_config.coarse_stride if level == 16 else level


def check_model(model: Any) -> None:
    """Raise TypeError unless ``model`` is an L2M or a callable encoder (not a bare Encoder)."""
    if isinstance(model, Encoder):
        raise TypeError(
            "model: pass the L2M itself, not model.encoder: the encoder alone does not know the "
            "matcher's input normalisation (L2M.preprocess)"
        )
    if not callable(model):
        raise TypeError(f"model must be an L2M or a callable encoder, got {type(model).__name__}")


def encode_level(model: Any, image: torch.Tensor, size: tuple[int, int], level: int = 16) -> torch.Tensor:
    """Features of one batch of images at one pyramid level, as :func:`feature_nn_pck` uses them.

    Args:
        model: an :class:`~l2m_plugin.L2M` (input made by ``model.preprocess(image, size)``,
            features by ``model.encoder``, the coarse module only for level 16), or any
            callable taking (B, 3, H, W) float32 images in [0, 1] resized to ``size``
            (:func:`~l2m_plugin.models.matcher.resize_input`) and returning either a
            dict ``{level: (B, C, h, w)}`` or a (B, C, h, w) tensor.
        image: (B, 3, H, W) float RGB in [0, 1].
        size: (height, width) of the encoder input.
        level: pyramid level (key of the encoder's dict).
    Returns:
        (B, C, h, w) float32 features on the CPU, not normalised. No gradients, eval mode
        (a module's training flag is restored afterwards).
    Raises:
        TypeError: ``model`` is a bare :class:`~l2m_plugin.models.encoder.Encoder` or not callable.
        ValueError: ``level`` not produced by the encoder, or a malformed feature map.
    """
    check_model(model)
    was_training = isinstance(model, nn.Module) and model.training
    try:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.no_grad():
            if is_l2m(model):
                level_stride(model, level)  # validates the level
                x = model.preprocess(image.to(model.device, torch.float32), size)
                feats = model.encoder(x, with_vit=level == 16)
            else:
                feats = model(resize_input(image.float(), size))
    finally:
        if was_training:
            model.train()
    if isinstance(feats, Mapping):
        if level not in feats:
            raise ValueError(f"level {level!r} is not among the encoder's levels {sorted(feats)}")
        feats = feats[level]
    if not torch.is_tensor(feats) or feats.ndim != 4 or feats.shape[0] != image.shape[0]:
        shape = tuple(feats.shape) if torch.is_tensor(feats) else type(feats).__name__
        raise ValueError(f"the encoder must return (B, C, h, w) features at level {level}, got {shape}")
    return feats.detach().float().cpu()
