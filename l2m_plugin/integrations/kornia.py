"""L2M as a drop-in for ``kornia.feature.LoFTR``: same input dict, same output dict.

Source of the contract: ``kornia.feature.LoFTR.forward`` (kornia 0.9.0,
``kornia/feature/loftr/loftr.py``). Code written for LoFTR runs unchanged::

    from l2m_plugin.integrations.kornia import KorniaL2M

    matcher = KorniaL2M()              # instead of kornia.feature.LoFTR("outdoor"); l2m-tiny, offline
    matcher = KorniaL2M("l2mpp-v2")    # the authors' L2M++ (downloaded once)

(``KorniaL2M`` was called ``L2M`` before 2026-12-05, the name of the matcher itself; the old
name still imports, with a ``DeprecationWarning``.)
    out = matcher({"image0": img0, "image1": img1})
    F, inliers = kornia.geometry.ransac.RANSAC("fundamental")(out["keypoints0"], out["keypoints1"])

Input (a dict, as LoFTR's):

- ``image0``, ``image1``: (B, 1, H, W) grayscale or (B, 3, H, W) RGB float tensors in [0, 1]
  (LoFTR takes grayscale; L2M sees colour, so grayscale is replicated to three channels).
  Any float dtype (cast to float32), any size; the two images may differ in size and aspect
  ratio, the batch sizes must be equal. Inputs are moved to the matcher's device.
- ``mask0``, ``mask1`` (LoFTR's padding masks) are accepted and ignored: L2M matches the
  whole image. LoFTR's ``features0`` / ``features1`` are not supported (ValueError).

Output (dict of tensors on the device of ``image0``; all pairs of the batch concatenated,
pair 0 first):

- ``keypoints0``, ``keypoints1``: (N, 2) float32 (x, y) pixel coordinates in each input
  image, in **the frame kornia's LoFTR returns**: the reference implementation's, in which
  the centre of pixel (x, y) is at (x + 0.5, y + 0.5) (the top-left corner of the image is
  (0, 0)). That is also COLMAP's frame and what :meth:`L2M.sample
  <l2m_plugin.models.matcher.L2M.sample>` returns, so no shift is applied: code written for
  ``kornia.feature.LoFTR`` that follows kornia's documented mapping (subtract 0.5 to reach
  kornia's frame, pixel centres on integers; :func:`l2m_plugin.coords.pixel_to_hloc`) gets
  the same geometry from this module as from LoFTR.
- ``confidence``: (N,) float32, the raw L2M certainty in [0, 1] of each match (LoFTR: the
  coarse matching score). Not thresholded: matches are drawn only among pixels with
  certainty > 0 (RoMa's balanced sampling).
- ``batch_indexes``: (N,) int64, the pair of the batch each match belongs to.

At most ``num_matches`` matches per pair (fewer when fewer pixels have certainty > 0);
when nothing matches the tensors are empty with the shapes (0, 2), (0, 2), (0,), (0,) and
the dtypes above. Each pair is sampled with a fresh ``torch.Generator`` seeded with
``seed``, so the output is deterministic and a pair's matches do not depend on the other
pairs of the batch (given a matcher whose dense output is batch-independent, as L2M's is).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from l2m_plugin.matching.build import build_matcher

__all__ = ["KorniaL2M", "to_loftr_frame"]

_IMAGE_SHAPE = "(B, 1, H, W) or (B, 3, H, W) float tensor in [0, 1]"


def to_loftr_frame(kpts: torch.Tensor) -> torch.Tensor:
    """L2M keypoints (COLMAP frame, pixel centres at i + 0.5) in kornia LoFTR's output frame.

    The two frames coincide (kornia 0.9 ``LoFTR`` docstring: "the centre of pixel (x, y) at
    (x + 0.5, y + 0.5)"), so this is the identity; it exists so the convention is stated
    in one place and tested (``tests/test_integration_kornia.py``).
    """
    return kpts


class KorniaL2M(nn.Module):
    """L2M dense matcher behind ``kornia.feature.LoFTR``'s interface.

    ``out = KorniaL2M(...)({"image0": x0, "image1": x1})``, see the module docstring for the full
    contract. Shapes: ``x0`` (B, 1|3, H0, W0), ``x1`` (B, 1|3, H1, W1) float in [0, 1];
    ``out["keypoints0"]``, ``out["keypoints1"]`` (N, 2) float32 in LoFTR's frame (pixel
    centres at i + 0.5, as L2M's own keypoints; subtract 0.5 for kornia's frame); ``out["confidence"]`` (N,)
    float32 raw certainty; ``out["batch_indexes"]`` (N,) int64. The module is created in eval
    mode and ``forward`` runs under ``torch.no_grad()``: outputs never require grad.

    Args:
        weights: what :func:`l2m_plugin.weights.load_matcher` loads: a registry name
            (default ``"l2m-tiny"``, shipped with the package; ``"l2mpp-v2"`` for the
            authors' L2M++), a checkpoint path or a state dict. Ignored when
            ``matcher`` is given. Nothing is downloaded unless the weights are not cached.
        matcher: an already-built dense matcher to wrap instead of loading weights: any object
            with L2M's ``forward(dict) -> dense dict``, ``sample(dense, num, generator=,
            batch_index=)`` and ``device`` interface, e.g. a
            :class:`l2m_plugin.models.matcher.L2M` or :class:`l2m_plugin.matching.oracle.OracleMatcher`.
            An ``nn.Module`` matcher becomes a submodule (put in eval mode, moved by ``.to``).
        encoder_weights: ViT weights for official-layout checkpoints (see ``load_matcher``).
        preset: name in :data:`l2m_plugin.config.PRESETS` giving the inference config
            (``"l2m-tiny"`` for l2m-tiny; ``"l2m"`` / ``"romatch"`` for L2M++ / RoMa weights);
            ``None`` (default): the config stored with the weights, else the registry
            entry's preset (``"l2m"``, the authors' ZEB harness, for L2M++).
        config: instead of ``preset``: a :class:`~l2m_plugin.config.MatcherConfig`, a dict
            of its fields or a YAML path (``configs/matcher/*.yaml``). A preset or config
            written for another architecture than the weights' raises
            :class:`~l2m_plugin.weights.ArchitectureMismatchError` (nothing applied).
        num_matches: matches drawn per image pair (default 5000, RoMa's / L2M's evaluation
            setting).
        seed: seed of the per-pair sampling generator; ``None`` draws from torch's global RNG
            (not reproducible).
        device: where to put the matcher (default: CPU when loading; the given matcher's own
            device otherwise).
        **config_overrides: :class:`~l2m_plugin.config.MatcherConfig` fields
            (e.g. ``coarse_res=448``, ``upsample_res=None``, ``dtype="bfloat16"``).
    Raises:
        ValueError: unknown preset, both ``preset`` and ``config``, ``num_matches`` < 1, or
            ``encoder_weights`` / ``preset`` / ``config`` / config overrides together with
            ``matcher=`` (configure that matcher instead).
        TypeError: ``matcher`` lacks the ``sample`` / ``device`` interface.
        l2m_plugin.weights.WeightsError: weights cannot be found, downloaded or loaded.
    """

    def __init__(
        self,
        weights: Any = "l2m-tiny",
        *,
        matcher: Any = None,
        encoder_weights: Any = None,
        preset: str | None = None,
        config: Any = None,
        num_matches: int = 5000,
        seed: int | None = 0,
        device: str | torch.device | None = None,
        **config_overrides,
    ):
        super().__init__()
        if int(num_matches) < 1:
            raise ValueError(f"num_matches must be >= 1, got {num_matches}")
        matcher = build_matcher(
            weights, matcher=matcher, preset=preset, config=config, encoder_weights=encoder_weights,
            device=device, **config_overrides,
        )  # fmt: skip
        self.matcher = matcher
        self.num_matches = int(num_matches)
        self.seed = None if seed is None else int(seed)
        self.eval()

    @property
    def device(self) -> torch.device:
        """Device of the wrapped matcher (inputs are moved there)."""
        return torch.device(self.matcher.device)

    def extra_repr(self) -> str:
        return f"num_matches={self.num_matches}, seed={self.seed}"

    @staticmethod
    def _check_inputs(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"input must be a dict with 'image0' and 'image1', each a {_IMAGE_SHAPE}; "
                f"got {type(data).__name__}"
            )
        for key in ("image0", "image1"):
            if key not in data:
                if f"features{key[-1]}" in data:
                    raise ValueError(
                        f"features{key[-1]} (LoFTR's precomputed features) is not supported: "
                        f"pass {key!r}, a {_IMAGE_SHAPE}"
                    )
                raise ValueError(f"input dict needs {key!r}: a {_IMAGE_SHAPE}")
            x = data[key]
            if not torch.is_tensor(x):
                raise ValueError(f"{key} must be a {_IMAGE_SHAPE}, got {type(x).__name__}")
            if x.ndim != 4 or x.shape[1] not in (1, 3):
                raise ValueError(f"{key} must be a {_IMAGE_SHAPE}, got shape {tuple(x.shape)}")
            if not x.is_floating_point():
                raise ValueError(f"{key} must be a {_IMAGE_SHAPE}, got dtype {x.dtype}")
            if x.shape[2] == 0 or x.shape[3] == 0:
                raise ValueError(f"{key} must be a non-empty image, got shape {tuple(x.shape)}")
        x0, x1 = data["image0"], data["image1"]
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(
                f"image0 and image1 need the same batch size B, got image0 {tuple(x0.shape)} "
                f"and image1 {tuple(x1.shape)}"
            )
        return x0, x1

    def _to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=torch.float32)
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    @staticmethod
    def _empty(device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "keypoints0": torch.zeros(0, 2, dtype=torch.float32, device=device),
            "keypoints1": torch.zeros(0, 2, dtype=torch.float32, device=device),
            "confidence": torch.zeros(0, dtype=torch.float32, device=device),
            "batch_indexes": torch.zeros(0, dtype=torch.int64, device=device),
        }

    def forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Match each pair of the batch (kornia.feature.LoFTR's ``forward`` contract).

        Args:
            data: ``image0``, ``image1``: (B, 1|3, H_i, W_i) float in [0, 1]; ``mask0`` /
                ``mask1`` are ignored.
        Returns:
            ``keypoints0``, ``keypoints1`` (N, 2) float32 (LoFTR's frame, pixel centres at
            i + 0.5), ``confidence`` (N,) float32, ``batch_indexes`` (N,) int64, on the
            device of ``image0``.
        Raises:
            ValueError: missing key, not a tensor, ndim != 4, channels not 1 or 3, integer
                dtype, empty image, or different batch sizes (the message names the key and
                the expected shape).
        """
        x0, x1 = self._check_inputs(data)
        out_device = x0.device
        if x0.shape[0] == 0:
            return self._empty(out_device)
        parts: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            dense = self.matcher({"image0": self._to_rgb(x0), "image1": self._to_rgb(x1)})
            for b in range(x0.shape[0]):
                generator = None
                if self.seed is not None:
                    generator = torch.Generator(device=dense["certainty0"].device)
                    generator.manual_seed(self.seed)
                m = self.matcher.sample(dense, self.num_matches, generator=generator, batch_index=b)
                n = m["keypoints0"].shape[0]
                parts.append(
                    {
                        "keypoints0": to_loftr_frame(m["keypoints0"].float()),
                        "keypoints1": to_loftr_frame(m["keypoints1"].float()),
                        "confidence": m["certainty"].float(),
                        "batch_indexes": torch.full(
                            (n,), b, dtype=torch.int64, device=m["certainty"].device
                        ),
                    }
                )
        return {k: torch.cat([p[k] for p in parts]).to(out_device) for k in parts[0]}


def __getattr__(name: str):
    if name == "L2M":  # the adapter's name before 2026-12-05
        warnings.warn(
            "l2m_plugin.integrations.kornia.L2M is now KorniaL2M (l2m_plugin.L2M is the matcher itself)",
            DeprecationWarning,
            stacklevel=2,
        )
        return KorniaL2M
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
