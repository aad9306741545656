"""The L2M / L2M++ dense matcher (a RoMa-architecture network).

Source: L2M, "Learning Dense Feature Matching via Lifting Single 2D Image to 3D
Space" (ICCV 2025), whose released matcher is RoMa (CVPR 2024) with a
3D-aware DINOv2; inference follows romatch 0.1.2 ``RegressionMatcher.match`` and
the authors' fork (Sharpiless/L2M), the differences being switches of
:class:`~l2m_plugin.config.MatcherConfig`.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from l2m_plugin import hardware
from l2m_plugin.config import MatcherConfig
from l2m_plugin.io import load_image, resize_to_tensor
from l2m_plugin.models.covisible import covisible_pass
from l2m_plugin.models.decoder import Decoder
from l2m_plugin.models.encoder import Encoder
from l2m_plugin.sampling import sample_matches
from l2m_plugin.weights import DEFAULT_WEIGHTS, load_state_strict, load_weights

__all__ = ["L2M", "resize_input", "load_matcher"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_input(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a batch of images as the matcher does before its encoder.

    Args:
        x: (B, C, H, W) float images in [0, 1].
        size: (height, width) in pixels.
    Returns:
        ``x`` itself when it already has that size, else torch bicubic interpolation
        (``align_corners=False``, antialiased when shrinking) clamped to [0, 1].
    """
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x


class L2M(nn.Module):
    """Dense matcher: ``out = model({"image0": x0, "image1": x1})``.

    Build it with :meth:`from_pretrained` (official or local weights) or directly
    ``L2M(config)`` (random weights). The module is created in eval mode.

    Args:
        config: :class:`MatcherConfig`; keyword overrides are applied on top.
        weights_name: label of the weights this model carries (shown in outputs).
    """

    def __init__(self, config: MatcherConfig | None = None, weights_name: str = "random-init", **overrides):
        super().__init__()
        config = config or MatcherConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self.weights_name = weights_name
        arch = config.arch_config
        self.encoder = Encoder(config.encoder, arch=arch)
        self.decoder = Decoder(vit_dim=self.encoder.coarse_dim, gp_solve=config.gp_solve, arch=arch)
        self.register_buffer("_mean", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.empty(1, 3, 1, 1), persistent=False)
        self.reset_buffers()
        self.eval()

    def reset_buffers(self) -> None:
        """(Re)create the non-persistent input-normalisation buffers on CPU (after meta-device loading)."""
        self._mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, weights: Any = "l2m-tiny", config: MatcherConfig | None = None, **kwargs) -> L2M:
        """Build a matcher and load weights (see :func:`load_matcher`).

        Args:
            weights: a registry name (``l2m_plugin.weights.REGISTRY``), a path to a
                checkpoint file, or a state dict.
            config: overrides the config stored with / implied by the weights.
            **kwargs: ``encoder_weights=``, ``device=``, ``map_location=``, and
                MatcherConfig field overrides.
        Raises:
            l2m_plugin.weights.WeightsError: unknown name, offline download,
                unreadable or mismatching checkpoint.
        """
        return load_matcher(weights, config=config, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    # ------------------------------------------------------------------ forward
    def preprocess(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The encoder's input as :meth:`forward` makes it: resize, colour order, normalisation.

        Args:
            x: (B, 3, H, W) float RGB in [0, 1].
            size: (height, width) the encoder gets (:func:`resize_input`: torch bicubic,
                antialiased, clamped to [0, 1]; no resize when ``x`` has that size).
        Returns:
            (B, 3, height, width) in ``x``'s dtype: channels flipped for
            ``config.color_order == "BGR"``, ImageNet mean/std normalised when
            ``config.normalize``.
        """
        x = resize_input(x, size)
        if self.config.color_order == "BGR":
            x = x.flip(1)
        if self.config.normalize:
            x = (x - self._mean) / self._std
        return x

    _prepare = preprocess

    def _autocast(self, device: torch.device):
        """Autocast to ``config.dtype``; float32 (a warning, once) for bfloat16 on a CPU
        without bfloat16 instructions, where the emulated mode is slower than float32."""
        if self.config.dtype == "float32":
            return contextlib.nullcontext()
        if device.type == "cpu" and self.config.dtype == "bfloat16":
            if hardware.cpu_bf16_support() == "none":  # Python's default filter shows it once per call site
                warnings.warn(
                    "dtype='bfloat16' asked for, but this CPU has neither AMX nor AVX512-BF16: "
                    "running in float32 instead (emulated bfloat16 would be slower)",
                    stacklevel=3,
                )
                return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.config.torch_dtype)

    def _decode(self, feats: dict, b: int, scale_factor: float, init=None) -> dict:
        budget = self.config.memory_budget_gb
        tile_bytes = budget * 2**30 if budget else None
        if self.config.symmetric:  # image 1's side is the swapped batch (see Decoder)
            return self.decoder(feats, None, scale_factor=scale_factor, init=init, tile_bytes=tile_bytes)
        f0 = {s: f[:b] for s, f in feats.items()}
        f1 = {s: f[b:] for s, f in feats.items()}
        return self.decoder(f0, f1, scale_factor=scale_factor, init=init, tile_bytes=tile_bytes)

    @staticmethod
    def _check_images(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
        for key in ("image0", "image1"):
            if key not in data:
                raise KeyError(f"input dict needs {key!r}: a (B, 3, H, W) float tensor in [0, 1]")
            x = data[key]
            if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
                shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
                raise ValueError(f"{key} must be a (B, 3, H, W) float tensor in [0, 1], got {shape}")
            if x.dtype == torch.float64:
                raise ValueError(f"{key} is float64: L2M runs in float32 (or autocast); pass {key}.float()")
            if x.numel():
                lo, hi = torch.aminmax(x.detach())
                if not (torch.isfinite(lo) and torch.isfinite(hi)):
                    raise ValueError(f"{key} holds NaN or Inf values: images must be finite, in [0, 1]")
                if hi > 1.05 or lo < -0.05:  # slack for resampling overshoot (bicubic)
                    hint = " (it looks like 0-255: divide by 255)" if hi > 2.0 else ""
                    raise ValueError(f"{key} has values in [{lo.item():.3g}, {hi.item():.3g}]; images must be in [0, 1]{hint}")
        x0, x1 = data["image0"], data["image1"]
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(f"image0 and image1 need the same batch size, got {x0.shape[0]} and {x1.shape[0]}")
        return x0, x1

    def forward(self, data: dict) -> dict:
        """Dense matching of a batch of image pairs.

        Args:
            data: ``image0``, ``image1``: (B, 3, H_i, W_i) float RGB in [0, 1]
                (sizes may differ between the two images). They are resized
                (torch bicubic, antialiased) to ``config.coarse_res`` unless
                already that size; optional ``image0_upsample``/``image1_upsample``
                at ``config.upsample_res`` are used for the refinement pass instead
                of resizing (``match`` passes PIL-resized images, as RoMa does).
        Returns:
            dict with
            ``warp0``: (B, Ho, Wo, 2) float32: for each pixel centre of image 0 (on
            the Ho x Wo output grid, ``config.output_res``) its match in image 1,
            normalised coordinates (x, y) in [-1, 1] (see :mod:`l2m_plugin.coords`);
            ``certainty0``: (B, Ho, Wo) float32 in [0, 1] (0 where the warp left
            the image); ``warp1``/``certainty1``: image 1 to image 0 (symmetric
            mode only); ``size0``/``size1``: (W, H) of the inputs in pixels.
            Every sample of a batch is computed independently: B > 1 gives the
            same result as B = 1.
            With ``config.covisible_crop`` a second pass matches the co-visible crops
            (:mod:`l2m_plugin.models.covisible`; cut from ``image0``/``image1`` as given,
            so pass them at full resolution) and the dict also holds ``covisible_boxes``.
        Raises:
            KeyError, ValueError: malformed inputs (message names the key).
        """
        out = self._forward_once(data)
        if self.config.covisible_crop:
            out = self.covisible_pass(out, data["image0"], data["image1"])
        return out

    def covisible_pass(self, out: dict, image0: torch.Tensor, image1: torch.Tensor) -> dict:
        """The co-visible crop pass on a first pass's output (:meth:`forward` runs it when
        ``config.covisible_crop``; :meth:`match_features` callers such as SfM call it).

        Args:
            out: :meth:`forward` / :meth:`match_features` output of one pass.
            image0, image1: (B, 3, H_i, W_i) float RGB in [0, 1] at full resolution.
        Returns:
            ``out``'s format, see :func:`l2m_plugin.models.covisible.covisible_pass`.
        """
        return covisible_pass(
            out, image0, image1, lambda c0, c1: self._forward_once({"image0": c0, "image1": c1}),
            thresh=float(self.config.covisible_thresh), margin=float(self.config.covisible_margin),
            scales=tuple(self.config.covisible_scales), coarse_size=tuple(self.config.coarse_res),
            zooms=tuple(self.config.covisible_zooms),
        )  # fmt: skip

    def _forward_once(self, data: dict) -> dict:
        x0, x1 = self._check_images(data)
        b = x0.shape[0]
        u0, u1 = data.get("image0_upsample", x0), data.get("image1_upsample", x1)
        cfg = self.config
        with self._autocast(x0.device):
            # Both images in one encoder batch, as the reference does.
            coarse = torch.cat((self._prepare(x0, cfg.coarse_res), self._prepare(x1, cfg.coarse_res)))
            feats = {"coarse": self.encoder(coarse, with_vit=True)}
            del coarse
            if cfg.upsample_res is not None:
                fine = torch.cat((self._prepare(u0, cfg.upsample_res), self._prepare(u1, cfg.upsample_res)))
                feats["fine"] = self.encoder(fine, with_vit=False)
                del fine
        size0 = (int(x0.shape[-1]), int(x0.shape[-2]))
        size1 = (int(x1.shape[-1]), int(x1.shape[-2]))
        # The decoder takes the two images as one batch: hand it the encoder's batch as is
        # (no split and re-concatenation, which would hold a second copy of every feature map).
        return self._match_batched(lambda: feats.pop("coarse"), lambda: feats.pop("fine"), b, size0, size1)

    def forward_train(self, data: dict, *, symmetric: bool = False, train_encoder: bool = True) -> dict:
        """The training forward pass: one coarse-to-fine pass at the images' own size (RoMa
        ``RegressionMatcher.forward`` with ``upsample=False``, ``scale_factor=1``).

        Args:
            data: ``image0``, ``image1``: (B, 3, H, W) float RGB in [0, 1], H and W
                multiples of 16 for a CNN coarse encoder, of 14 and 8 for a ViT (the
                training size: no resizing here). Colour order and ImageNet
                normalisation follow the config, as in :meth:`forward`.
            symmetric: also decode image 1 -> image 0 (the second half of the batch).
            train_encoder: compute the encoder with gradients; ``False`` runs it under
                ``torch.no_grad`` (a frozen encoder, L2M stage 2). A DINOv2 ViT never
                gets gradients (RoMa).
        Returns:
            dict ``{scale: {"flow": (N, 2, H_s, W_s) normalised warp, "certainty":
            (N, 1, H_s, W_s) logits}}`` for scales 16, 8, 4, 2, 1, with ``"gm_cls"``
            (N, R*R, H16, W16) and ``"gm_certainty"`` (N, 1, H16, W16) logits at 16;
            N = B, or 2B with ``symmetric`` (pairs 0->1 then 1->0). No autocast here:
            the caller (the trainer) sets it.
        Raises:
            KeyError, ValueError: malformed inputs.
        """
        x0, x1 = self._check_images(data)
        if x0.shape != x1.shape:
            raise ValueError(f"training pairs need images of one size, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        b = x0.shape[0]
        x = torch.cat((x0, x1))
        if self.config.color_order == "BGR":
            x = x.flip(1)
        if self.config.normalize:
            x = (x - self._mean.to(x)) / self._std.to(x)
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            feats = self.encoder(x, with_vit=True)
        if symmetric:
            return self.decoder(feats, None, scale_factor=1.0, return_gm=True)
        f0 = {s: f[:b] for s, f in feats.items()}
        f1 = {s: f[b:] for s, f in feats.items()}
        return self.decoder(f0, f1, scale_factor=1.0, return_gm=True)

    def encode(self, image: torch.Tensor, image_upsample: torch.Tensor | None = None) -> dict:
        """Encoder features of a batch of images, to be matched later with :meth:`match_features`.

        This is how SfM encodes each image once for all of its pairs
        (``l2m reconstruct``): ``match_features(encode(a), encode(b))`` equals
        ``forward({"image0": a, "image1": b})`` up to float rounding.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1]; resized to ``coarse_res`` as in :meth:`forward`.
            image_upsample: optional (B, 3, h, w) image for the refinement pass
                (default: ``image``, resized to ``upsample_res``).
        Returns:
            dict: ``coarse`` {stride: (B, C, h, w) feature maps, incl. DINOv2 at 16},
            ``fine`` {stride: (B, C, h, w)} (when ``upsample_res`` is set), ``size`` (W, H)
            of ``image``. Tensors are in the compute dtype on the model's device.
        """
        cfg = self.config
        if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ValueError(f"image must be a (B, 3, H, W) float tensor in [0, 1], got {tuple(image.shape)}")
        with self._autocast(image.device):
            feats = {"coarse": self.encoder(self._prepare(image, cfg.coarse_res), with_vit=True)}
            if cfg.upsample_res is not None:
                up = image if image_upsample is None else image_upsample
                feats["fine"] = self.encoder(self._prepare(up, cfg.upsample_res), with_vit=False)
        feats["size"] = (int(image.shape[-1]), int(image.shape[-2]))
        return feats

    def match_features(self, feats0: dict, feats1: dict) -> dict:
        """Decode a batch of pairs from their :meth:`encode` features.

        Args:
            feats0, feats1: :meth:`encode` outputs with the same batch size.
        Returns:
            :meth:`forward`'s dict (``size0``/``size1`` from the features).
        """
        b = next(iter(feats0["coarse"].values())).shape[0]
        return self._match_batched(
            lambda: {s: torch.cat((feats0["coarse"][s], feats1["coarse"][s])) for s in feats0["coarse"]},
            lambda: {s: torch.cat((feats0["fine"][s], feats1["fine"][s])) for s in feats0["fine"]},
            b, feats0["size"], feats1["size"],
        )  # fmt: skip

    def _match_batched(self, coarse_fn, fine_fn, b: int, size0, size1) -> dict:
        """Decode from features of images 0 then images 1 in one batch of 2B.

        ``coarse_fn()`` / ``fine_fn()`` return ``{scale: (2B, C, H, W)}``; they are
        called only when needed, so the coarse features are freed before the fine
        ones exist.
        """
        cfg = self.config
        sf_coarse, sf_up = cfg.scale_factors()
        cat = coarse_fn()
        device = next(iter(cat.values())).device
        with self._autocast(device):
            corr = self._decode(cat, b, sf_coarse)
            del cat
            final = corr[1]
            if cfg.upsample_res is not None:
                cat = fine_fn()
                up = self._decode(cat, b, sf_up, init=(final["flow"], final["certainty"]))[1]
                del cat
                if cfg.upsample_certainty == "coarse":  # the warp refined, the certainty kept
                    cert = F.interpolate(final["certainty"].float(), size=up["flow"].shape[-2:], mode="bilinear",
                                         align_corners=False)  # fmt: skip
                    up = {"flow": up["flow"], "certainty": cert}
                final = up
        flow, logit = final["flow"].float(), final["certainty"].float()
        if cfg.attenuate_cert:
            low = F.interpolate(corr[max(corr)]["certainty"].float(), size=flow.shape[-2:], mode="bilinear", align_corners=False)
            logit = logit - 0.5 * low * (low < 0)
        certainty = logit[:, 0].sigmoid()
        warp = flow.permute(0, 2, 3, 1)
        certainty = certainty.masked_fill((warp.abs() > 1).any(dim=-1), 0.0)
        warp = warp.clamp(-1, 1)
        out = {"warp0": warp[:b], "certainty0": certainty[:b], "size0": size0, "size1": size1}
        if cfg.symmetric:
            out["warp1"], out["certainty1"] = warp[b:], certainty[b:]
        return out

    # ------------------------------------------------------------------ images
    @torch.inference_mode()
    def match(self, image0, image1, *, exif: bool = True, device: torch.device | str | None = None) -> dict:
        """Match two images given as paths, PIL images or arrays.

        Images are read by :func:`l2m_plugin.io.load_image` (EXIF orientation
        applied, grayscale / RGBA / CMYK / 16-bit converted to 8-bit RGB) and
        resized with PIL bicubic to ``coarse_res`` and ``upsample_res``, exactly
        as RoMa's test transform does. Any size and aspect ratio is accepted
        (the image is stretched, as in RoMa; the warp is in normalised coordinates).

        Returns:
            :meth:`forward`'s dict for B = 1, with ``size0``/``size1`` the upright
            image sizes (W, H) and ``images``: the two
            :class:`~l2m_plugin.io.LoadedImage` (for mapping keypoints back to the
            stored pixel grid in :meth:`sample`).
        Raises:
            l2m_plugin.io.ImageLoadError: unreadable image (message names the file).
        """
        self.eval()
        device = torch.device(device) if device is not None else self.device
        ims = (load_image(image0, exif=exif), load_image(image1, exif=exif))
        data = {}
        for i, im in enumerate(ims):
            if self.config.covisible_crop:  # crops are cut from the full image; forward resizes
                data[f"image{i}"] = resize_to_tensor(im.image, im.image.size[::-1])[None].to(device)
                continue
            data[f"image{i}"] = resize_to_tensor(im.image, self.config.coarse_res)[None].to(device)
            if self.config.upsample_res is not None:
                data[f"image{i}_upsample"] = resize_to_tensor(im.image, self.config.upsample_res)[None].to(device)
        out = self(data)
        out["size0"], out["size1"] = ims[0].size, ims[1].size
        out["images"] = ims
        return out

    def sample(
        self,
        out: dict,
        num: int = 5000,
        *,
        generator: torch.Generator | None = None,
        batch_index: int = 0,
        frame: str = "stored",
        balanced: bool = True,
        density: str | None = None,
    ) -> dict:
        """Draw sparse matches from a dense output (balanced sampling, see :mod:`l2m_plugin.sampling`).

        Args:
            out: output of :meth:`forward` or :meth:`match`.
            num: number of matches (fewer when fewer pixels have certainty > 0).
            generator: the same generator state gives the same matches.
            batch_index: which pair of a batch.
            frame: ``"stored"`` (default): keypoints in the pixel grid of the image
                files as stored, i.e. before EXIF orientation, as COLMAP keeps them;
                ``"upright"``: in the EXIF-rotated image the network saw. Tensor
                inputs have no EXIF, so both frames coincide.
            balanced: apply RoMa's density balancing (else plain certainty draw).
            density: ``"grid"`` or ``"exact"`` density estimate for the balancing;
                None: ``config.sample_density``.
        Returns:
            dict: ``keypoints0`` (M, 2) and ``keypoints1`` (M, 2) float32 pixel
            coordinates in each original image, COLMAP convention (top-left corner
            at (0, 0), pixel centres at i + 0.5); ``certainty`` (M,) float32 raw
            certainty in [0, 1] (never clipped or thresholded).
        Raises:
            ValueError: unknown frame or density, or num < 1.
        """
        return sample_matches(
            out, num, self.config.sample_thresh,
            generator=generator, batch_index=batch_index, frame=frame, balanced=balanced,
            density=density or self.config.sample_density, cutoff=self.config.sample_cutoff,
        )  # fmt: skip


def load_matcher(
    weights: Any = DEFAULT_WEIGHTS,
    config: MatcherConfig | None = None,
    encoder_weights: Any = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    trust_checkpoint: bool = False,
    **overrides,
) -> L2M:
    """Build an :class:`L2M` and load weights into it, strictly.

    Args:
        weights, config, encoder_weights, progress, trust_checkpoint, overrides: as
            :func:`l2m_plugin.weights.load_weights` (registry name, path or state dict; a
            config or MatcherConfig field overrides).
        device: where to put the model (default CPU).
    Returns:
        The model in eval mode, ``weights_name`` set to the name or file used.
    Raises:
        WeightsError: see :func:`~l2m_plugin.weights.load_weights`, and the strict key check
            (all missing / unexpected / mis-shaped keys are listed).
        ArchitectureMismatchError: ``config`` (after ``overrides``) is for another
            architecture than the weights' known one.
    """
    loaded = load_weights(weights, config=config, encoder_weights=encoder_weights, progress=progress,
                          trust_checkpoint=trust_checkpoint, **overrides)  # fmt: skip
    with torch.device("meta"):
        model = L2M(loaded.config, weights_name=loaded.name)
    load_state_strict(model, loaded.state_dict, loaded.source)
    model.reset_buffers()
    return model.to(device or "cpu").eval()
