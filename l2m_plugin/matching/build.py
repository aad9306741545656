"""One way to get a matcher for every entry point: ``l2m`` commands, the hloc conf
(:mod:`l2m_plugin.integrations.hloc_matchers.l2m`) and the kornia adapter
(:mod:`l2m_plugin.integrations.kornia`) all call :func:`build_matcher`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from l2m_plugin.config import resolve_config
from l2m_plugin.models.matcher import load_matcher
from l2m_plugin.weights import DEFAULT_WEIGHTS

__all__ = ["build_matcher"]


def build_matcher(
    weights: Any = DEFAULT_WEIGHTS,
    *,
    matcher: Any = None,
    preset: str | None = None,
    config: Any = None,
    encoder_weights: Any = None,
    device: str | torch.device | None = None,
    matcher_arg: str = "matcher=",
    trust_checkpoint: bool = False,
    **overrides,
):
    """A matcher from weights, a preset or config, and MatcherConfig overrides; or a given one.

    Args:
        weights: registry name, checkpoint path or state dict (default ``l2m-tiny``, shipped).
        matcher: an already built matcher (an :class:`~l2m_plugin.L2M` or any module with its
            ``forward`` / ``sample`` / ``device`` interface): returned as it is (moved to
            ``device`` when given); then no other loading argument may be given.
        preset: a name in :data:`l2m_plugin.config.PRESETS`.
        config: instead of ``preset``: a :class:`~l2m_plugin.config.MatcherConfig`, a dict of its
            fields or a YAML path.
        encoder_weights: ViT weights for official-layout checkpoints.
        device: where to put the matcher (default CPU when loading).
        matcher_arg: how the caller names ``matcher`` in its own interface (for messages).
        trust_checkpoint: allow a checkpoint that holds pickled Python objects (runs code when
            loaded; :func:`l2m_plugin.weights.read_checkpoint`).
        **overrides: MatcherConfig fields (``coarse_res``, ``upsample_res``, ``dtype`` ...).
    Returns:
        the matcher, in eval mode when loaded here.
    Raises:
        ValueError: unknown preset, both preset and config, an invalid config file, or loading
            arguments together with ``matcher``.
        TypeError: ``matcher`` lacks the L2M interface.
        l2m_plugin.weights.WeightsError, ArchitectureMismatchError: see
            :func:`l2m_plugin.models.matcher.load_matcher`.
    """
    if matcher is None:
        return load_matcher(
            weights, config=resolve_config(preset, config), encoder_weights=encoder_weights, device=device,
            trust_checkpoint=trust_checkpoint, **overrides,
        )  # fmt: skip
    loading = {"encoder_weights": encoder_weights, "preset": preset, "config": config}
    given = sorted(overrides) + [k for k, v in loading.items() if v is not None]
    if given:
        raise ValueError(
            f"config overrides {given} cannot be applied to a matcher passed as {matcher_arg}; "
            "build it with the wanted config instead"
        )
    for attr in ("sample", "device"):
        if not hasattr(matcher, attr):
            raise TypeError(
                f"{matcher_arg} must have L2M's forward / sample / device interface; "
                f"{type(matcher).__name__} has no {attr!r}"
            )
    if device is not None and isinstance(matcher, nn.Module):
        matcher = matcher.to(device)
    return matcher
