"""L2M as an hloc dense matcher: the module hloc imports as ``hloc.matchers.l2m``.

Loaded by ``hloc.match_dense`` through ``hloc.utils.base_model.dynamic_load``, which
requires exactly one :class:`~hloc.utils.base_model.BaseModel` subclass *defined in
this file* (its ``__module__`` is ``hloc.matchers.l2m`` once
:func:`l2m_plugin.integrations.hloc.register` has added this folder to
``hloc.matchers.__path__``).

Contract with ``hloc.match_dense.match_dense`` (hloc commit c13273b, 2025-12):

- input: ``{"image0": (1, C, H0, W0), "image1": (1, C, H1, W1)}`` float tensors in
  [0, 1] on the model's device, already resized by hloc's ``ImagePairDataset``
  (``resize_max``, then to multiples of ``dfactor``); RGB (C = 3) when the
  preprocessing conf has ``grayscale: False``, else C = 1 (repeated to RGB here);
- output: ``keypoints0``, ``keypoints1``: (N, 2) float32 pixel coordinates *in the
  frame of those tensors*, hloc convention (pixel centres on integer coordinates);
  ``scores``: (N,) float32. No batch dimension (as ``hloc.matchers.loftr``). hloc
  then maps the keypoints to the original image with ``(k + 0.5) * scale - 0.5``.
"""

from __future__ import annotations

import torch
from hloc.utils.base_model import BaseModel

from l2m_plugin.coords import pixel_to_hloc
from l2m_plugin.matching.build import build_matcher

_OVERRIDES = ("coarse_res", "upsample_res", "dtype", "sample_thresh", "sample_density")


class L2MDense(BaseModel):
    """hloc dense matcher wrapping :class:`l2m_plugin.L2M` (or any object with its interface).

    Conf keys (``default_conf``):
        weights: registry name (``l2m_plugin.weights.REGISTRY``) or checkpoint path
            (default ``l2m-tiny``, shipped with the package; ``l2mpp-v2``: the authors' L2M++).
        encoder_weights: ViT weights for official-layout checkpoints (None: the
            registry default, ``dinov2l-distilled`` for L2M++).
        preset: name in :data:`l2m_plugin.config.PRESETS` used as the base config
            (None, the default: the config stored with the weights, else the registry
            entry's preset, ``l2m`` for L2M++). It must be written for the weights'
            architecture (``l2m-tiny`` for l2m-tiny; ``l2m`` / ``romatch`` for L2M++ /
            RoMa), else :class:`l2m_plugin.weights.ArchitectureMismatchError`.
        config: instead of ``preset``: a matcher config YAML path
            (``configs/matcher/*.yaml``), a dict of MatcherConfig fields or a MatcherConfig.
        coarse_res, upsample_res, dtype, sample_thresh, sample_density: :class:`MatcherConfig`
            overrides (None: keep the preset's value). Only valid when loading weights.
        max_num_matches: matches drawn per pair by ``matcher.sample`` (balanced
            sampling; fewer when fewer pixels have certainty > 0).
        seed: seed of the ``torch.Generator`` created for every pair, so each pair's
            matches do not depend on the order of the pairs (None: unseeded).
        matcher: an already-built dense matcher (``L2M``, or an object with
            ``forward({"image0", "image1"})``, ``sample(out, num, generator=)`` and
            ``device``) used instead of loading ``weights``; e.g. random weights in
            tests or :class:`l2m_plugin.matching.oracle.OracleMatcher`.
    Raises:
        ValueError: preset, config or overrides given together with ``matcher``; unknown
            preset; both preset and config.
        l2m_plugin.weights.WeightsError: the weights cannot be found or loaded.
    """

    default_conf = {
        "weights": "l2m-tiny",
        "encoder_weights": None,
        "preset": None,
        "config": None,
        "coarse_res": None,
        "upsample_res": None,
        "dtype": None,
        "sample_thresh": None,
        "sample_density": None,
        "max_num_matches": 5000,
        "seed": 0,
        "matcher": None,
    }
    required_inputs = ["image0", "image1"]

    def _init(self, conf):
        overrides = {k: conf[k] for k in _OVERRIDES if conf.get(k) is not None}
        self.net = build_matcher(
            conf["weights"], matcher=conf["matcher"], preset=conf["preset"], config=conf.get("config"),
            encoder_weights=conf["encoder_weights"], matcher_arg="conf['matcher']", **overrides,
        )  # fmt: skip

    def _forward(self, data: dict) -> dict:
        """Match one pair: hloc tensors in, hloc-convention keypoints out.

        Args:
            data: ``image0`` (1, C, H0, W0), ``image1`` (1, C, H1, W1) float in
                [0, 1], C = 3 (RGB) or 1 (grayscale, repeated to RGB).
        Returns:
            ``keypoints0``, ``keypoints1``: (N, 2) float32, pixel centres at integer
            coordinates (``l2m_plugin.coords.pixel_to_hloc`` of the matcher's COLMAP
            keypoints), in the frame of the input tensors; ``scores``: (N,) float32
            raw certainty in [0, 1]. N <= ``max_num_matches``.
        Raises:
            ValueError: batch size other than 1.
        """
        images = {}
        for key in ("image0", "image1"):
            x = data[key]
            if x.ndim != 4 or x.shape[0] != 1:
                raise ValueError(
                    f"hloc passes one pair at a time: {key} must be (1, C, H, W), "
                    f"got {tuple(x.shape)}"
                )
            images[key] = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        device = images["image0"].device
        generator = None
        if self.conf["seed"] is not None:
            generator = torch.Generator(device=device).manual_seed(int(self.conf["seed"]))
        with torch.no_grad():
            out = self.net(images)
            m = self.net.sample(out, int(self.conf["max_num_matches"]), generator=generator)
        return {
            "keypoints0": pixel_to_hloc(m["keypoints0"].float()),
            "keypoints1": pixel_to_hloc(m["keypoints1"].float()),
            "scores": m["certainty"].float(),
        }
