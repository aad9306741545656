"""Frozen configuration of the L2M matcher and the presets that reproduce each reference.

Every inference difference between the authors' L2M fork and romatch 0.1.2 is a
field here, so one network reproduces either (see README, "Differences from the
references"):

================  ===========================  ==================================
field             romatch 0.1.2 (RoMa)         L2M fork, ZEB harness (default)
================  ===========================  ==================================
normalize         True (ImageNet mean/std)     False (``match(normalize=False)``,
                                               fork commit 670394f)
displacement      "romatch": coarse pass       "l2m": coarse pass 1, upsampling
_scale            sqrt(h*w)/560, upsampling    pass sqrt(up_h*up_w / (h*w))
                  sqrt(up_h*up_w)/560          (fork ``matcher.py`` L670, L698)
gp_solve          "cholesky" (eval mode)       "inverse" (fork GP always inverts)
color_order       RGB                          RGB (GIM/ZEB harness, PIL
                                               ``convert("RGB")``); the MINIMA
                                               harness feeds BGR: ``"BGR"``
coarse/upsample   560 / 864                    560 / 864 (``lightning.py`` L53;
                                               ``l2mpp_model`` defaults 672/1344)
================  ===========================  ==================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ArchConfig", "ARCH_PRESETS", "VIT_CONFIGS", "DENSITY_METHODS", "MatcherConfig", "PRESETS", "resolve_config"]

#: DINOv2 ViT name -> (timm architecture, embedding dim)
VIT_CONFIGS: dict[str, tuple[str, int]] = {
    "vits14": ("vit_small_patch14_dinov2", 384),
    "vitb14": ("vit_base_patch14_dinov2", 768),
    "vitl14": ("vit_large_patch14_dinov2", 1024),
}

#: the density estimates of balanced sampling (``MatcherConfig.sample_density``, l2m_plugin.sampling)
DENSITY_METHODS = ("grid", "exact")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_pair(v, name: str) -> tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair of ints; ValueError names ``name``."""
    if isinstance(v, int):
        v = (v, v)
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {v!r}") from None
    return h, w


@dataclass(frozen=True)
class ArchConfig:
    """Widths and depths of the network: the encoder and decoder are built from these numbers.

    Per-scale tuples are ordered like the decoder's scales ``(16, 8, 4, 2, 1)``.
    The ``"roma"`` preset (:data:`ARCH_PRESETS`) is RoMa's ``roma_model`` / the
    L2M release (``romatch/models/model_zoo/roma_models.py``,
    ``experiments/train_roma_outdoor.py``): every default below is its number,
    so its state-dict keys and outputs are those of the official checkpoints.

    Attributes:
        coarse: where the stride-16 (key 16) features come from: ``"dinov2"`` (a DINOv2
            ViT-{S,B,L}/14 chosen by ``MatcherConfig.encoder``, stride 14, never
            trained: RoMa runs it without gradients), ``"vit"`` (a small timm ViT with
            patch 14 trained from scratch) or ``"cnn"`` (two more conv stages on top of
            the fine pyramid: stride 16).
        cnn: fine pyramid (strides 1, 2, 4, 8): ``"vgg19"`` (VGG19-BN, RoMa) or
            ``"small"`` (a VGG-style stack of ``cnn_convs`` conv-BN-ReLU per stage).
        cnn_channels: channels at strides (1, 2, 4, 8); must be (64, 128, 256, 512) for vgg19.
        cnn_convs: conv layers per stage of the small pyramid.
        coarse_dim: channels of the coarse features for ``"cnn"`` and ``"vit"``
            (``"dinov2"``: the ViT's width, from ``MatcherConfig.encoder``).
        coarse_convs: conv layers of the stride-16 stage (``"cnn"``).
        vit_depth, vit_heads: the small ViT's blocks and heads (``"vit"``).
        gp_dim: channels of the GP's Fourier embedding of image-1 coordinates.
        proj_dims: channels after the per-scale 1x1 projection, scales (16, 8, 4, 2, 1);
            the classifier's width is ``gp_dim + proj_dims[0]``.
        cls_depth, cls_heads: transformer blocks and heads of the anchor classifier.
        anchor_res: R: the classifier scores R x R anchors over image 1.
        disp_emb_dims: displacement-embedding channels of each refiner.
        corr_radii: local-correlation radius of each refiner (0: none).
        refiner_blocks: hidden depth-wise blocks per refiner (RoMa: 8).
        refiner_kernel: depth-wise kernel size (RoMa: 5).
        coarse_matcher: ``"gp"`` (RoMa: the GP regression and the anchor classifier on the
            stride-14/16 features, scales 16, 8, 4, 2, 1) or ``"dual_softmax"`` (ours, for
            networks trained from scratch: LoFTR-style (Sun et al. CVPR 2021, Sec. 3.3)
            self- and cross-attention over the stride-8 CNN features, a dual-softmax
            assignment and a sub-cell soft-argmax; scales 8, 4, 2, 1; no stride-16
            features, so ``coarse`` must be ``"none"``).
        ds_depth, ds_heads: the dual-softmax matcher's attention layers (each a
            self-attention then a cross-attention block) and heads.
        ds_temperature: the dual-softmax temperature (LoFTR: 0.1).
    """

    coarse: str = "dinov2"
    cnn: str = "vgg19"
    cnn_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    cnn_convs: int = 2
    coarse_dim: int | None = None
    coarse_convs: int = 2
    vit_depth: int = 4
    vit_heads: int = 3
    gp_dim: int = 512
    proj_dims: tuple[int, int, int, int, int] = (512, 512, 256, 64, 9)
    cls_depth: int = 5
    cls_heads: int = 8
    anchor_res: int = 64
    disp_emb_dims: tuple[int, int, int, int, int] = (128, 64, 32, 16, 6)
    corr_radii: tuple[int, int, int, int, int] = (7, 3, 2, 0, 0)
    refiner_blocks: int = 8
    refiner_kernel: int = 5
    coarse_matcher: str = "gp"
    ds_depth: int = 4
    ds_heads: int = 4
    ds_temperature: float = 0.1

    def __post_init__(self):
        set_ = object.__setattr__
        for name, n in (("cnn_channels", 4), ("proj_dims", 5), ("disp_emb_dims", 5), ("corr_radii", 5)):
            v = getattr(self, name)
            try:
                v = tuple(int(x) for x in v)
            except (TypeError, ValueError):
                raise ValueError(f"ArchConfig.{name} must be {n} integers, got {v!r}") from None
            if len(v) != n:
                scales = "strides 1, 2, 4, 8" if n == 4 else "scales 16, 8, 4, 2, 1"
                raise ValueError(f"ArchConfig.{name} must have {n} entries ({scales}), got {v!r}")
            set_(self, name, v)
        if self.coarse not in ("dinov2", "vit", "cnn", "none"):
            raise ValueError(f"ArchConfig.coarse must be 'dinov2', 'vit', 'cnn' or 'none', got {self.coarse!r}")
        if self.coarse_matcher not in ("gp", "dual_softmax"):
            raise ValueError(f"ArchConfig.coarse_matcher must be 'gp' or 'dual_softmax', got {self.coarse_matcher!r}")
        if (self.coarse == "none") != (self.coarse_matcher == "dual_softmax"):
            raise ValueError(
                "ArchConfig: coarse='none' goes with coarse_matcher='dual_softmax' (it matches the stride-8 "
                f"features), and the GP needs stride-16 features; got coarse={self.coarse!r}, "
                f"coarse_matcher={self.coarse_matcher!r}"
            )
        if self.coarse_matcher == "dual_softmax" and self.proj_dims[1] % self.ds_heads:
            raise ValueError(f"proj_dims[1] = {self.proj_dims[1]} must be divisible by ds_heads {self.ds_heads}")
        if self.cnn not in ("vgg19", "small"):
            raise ValueError(f"ArchConfig.cnn must be 'vgg19' or 'small', got {self.cnn!r}")
        if self.cnn == "vgg19" and self.cnn_channels != (64, 128, 256, 512):
            raise ValueError(f"cnn='vgg19' has channels (64, 128, 256, 512), got cnn_channels={self.cnn_channels}")
        if self.coarse in ("vit", "cnn") and not self.coarse_dim:
            raise ValueError(f"ArchConfig.coarse={self.coarse!r} needs coarse_dim (channels of the coarse features)")
        if self.coarse == "vit" and self.coarse_dim % self.vit_heads:
            raise ValueError(f"coarse_dim {self.coarse_dim} must be divisible by vit_heads {self.vit_heads}")
        width = self.gp_dim + self.proj_dims[0]
        if width % self.cls_heads:
            raise ValueError(f"classifier width gp_dim + proj_dims[0] = {width} must be divisible by cls_heads {self.cls_heads}")
        if self.anchor_res < 2 or self.refiner_kernel % 2 == 0 or min(self.corr_radii) < 0:
            raise ValueError("anchor_res must be >= 2, refiner_kernel odd and corr_radii >= 0")

    @property
    def coarse_stride(self) -> int:
        """Pixels per coarse feature: 14 (ViT patches), 16 (the CNN's stride) or 8 (no
        stride-16 features: the dual-softmax matcher works on the stride-8 level)."""
        return {"cnn": 16, "none": 8}.get(self.coarse, 14)

    @property
    def scales(self) -> tuple[str, ...]:
        """The decoder's scales, coarse to fine: ``("16", "8", "4", "2", "1")`` for the GP,
        ``("8", "4", "2", "1")`` for the dual-softmax matcher."""
        return ("16", "8", "4", "2", "1") if self.coarse_matcher == "gp" else ("8", "4", "2", "1")

    def replace(self, **changes) -> ArchConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: Named architectures. ``roma``: the released L2M / RoMa network (ViT-L/14 + VGG19-BN and
#: RoMa's decoder). ``tiny``: the same structure (GP matcher, anchor classifier, refiners at
#: 16/8/4/2/1, certainty) with a small CNN everywhere (coarse features at stride 16 from two
#: more stages on the fine pyramid), narrow widths, 32 x 32 anchors and 3 blocks per refiner:
#: 3,863,463 parameters (15.5 MB in float32), trained from scratch
#: (``configs/train/stage2_tiny.yaml``). ``tiny-ds``: the network of l2m-tiny since
#: 2026-12-05: the small CNN pyramid (16-128 channels), a dual-softmax coarse matcher
#: at stride 8 behind 2 self/cross linear-attention layers (LoFTR), and refiners at 8/4/2/1 with
#: local correlation at 8, 4 and 2 (``configs/train/stage2_tiny_ds.yaml``).
ARCH_PRESETS: dict[str, ArchConfig] = {
    "roma": ArchConfig(),
    "tiny": ArchConfig(
        coarse="cnn", cnn="small", cnn_channels=(16, 32, 64, 96), cnn_convs=2,
        coarse_dim=128, coarse_convs=2, gp_dim=128, proj_dims=(128, 64, 32, 16, 6),
        cls_depth=3, cls_heads=8, anchor_res=32, disp_emb_dims=(32, 16, 16, 8, 4),
        corr_radii=(3, 3, 2, 0, 0), refiner_blocks=3, refiner_kernel=5,
    ),
    "tiny-ds": ArchConfig(
        coarse="none", coarse_matcher="dual_softmax", cnn="small", cnn_channels=(16, 32, 64, 128),
        cnn_convs=2, gp_dim=0, proj_dims=(8, 128, 48, 16, 6), cls_depth=0, cls_heads=1,
        disp_emb_dims=(8, 32, 16, 8, 4), corr_radii=(0, 3, 2, 1, 0), refiner_blocks=2,
        refiner_kernel=3, ds_depth=2, ds_heads=4, ds_temperature=0.1,
    ),
}  # fmt: skip


def _arch(value) -> ArchConfig | str:
    if isinstance(value, ArchConfig):
        return value
    if isinstance(value, str):
        if value not in ARCH_PRESETS:
            raise ValueError(f"arch must be one of {sorted(ARCH_PRESETS)} or an ArchConfig, got {value!r}")
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(ArchConfig)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"Unknown ArchConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return ArchConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()})
    raise ValueError(f"arch must be a preset name ({sorted(ARCH_PRESETS)}), an ArchConfig or a dict, got {type(value).__name__}")


@dataclass(frozen=True)
class MatcherConfig:
    """Inference settings of :class:`l2m_plugin.L2M` (immutable; use :meth:`replace`).

    Attributes:
        coarse_res: (height, width) in pixels of the coarse pass; multiples of 14
            (ViT patch size), or of 16 for an architecture with CNN coarse features.
            An int means a square.
        upsample_res: (height, width) of the high-resolution refinement pass, or
            ``None`` to skip it. Multiples of 8. The dense output has this size
            (``coarse_res`` when ``None``).
        symmetric: also predict the warp from image 1 to image 0 (``warp1``).
        attenuate_cert: subtract half of the negative part of the coarse (stride-14)
            certainty logit from the final one (RoMa ``attenuate_cert``).
        sample_thresh: certainties above this count as 1 when drawing samples
            (RoMa "threshold_balanced"); returned scores stay raw.
        sample_cutoff: draw only pixels whose certainty is above ``sample_thresh``.
            ``False`` (RoMa) draws the others too, in proportion to their certainty,
            which suits a certainty near 0 off the co-visible part; l2m-tiny's is
            not (README, "Upsampling pass and sampling cutoff").
        sample_density: the density estimate of balanced sampling: ``"grid"``
            (linear cost, the default) or ``"exact"`` (RoMa's all-pairs estimate,
            quadratic); :mod:`l2m_plugin.sampling` gives the method and its error.
        encoder: ViT size: "vitl14" (official models), "vitb14" or "vits14".
        dtype: "float32" (exact), "bfloat16" or "float16": autocast dtype for the
            encoder and refiners; the GP solve always runs in float32. On a CPU
            without AMX or AVX512-BF16, "bfloat16" runs in float32 with a warning
            (:mod:`l2m_plugin.hardware`).
        normalize: apply ImageNet mean/std to the [0, 1] input.
        color_order: "RGB" or "BGR": channel order fed to the network.
        upsample_certainty: the certainty of the upsampling pass's output:
            ``"refined"`` (RoMa): the coarse pass's final certainty logit plus the
            residuals of the upsampling pass's refiners (every refiner's residual is
            added twice, once per pass); ``"coarse"``: the coarse pass's final
            certainty, bilinearly resized, while the warp comes from the upsampling
            pass. Unused without ``upsample_res``.
        displacement_scale: "l2m" or "romatch": the factor applied to the
            displacement embedding in each pass (see module docstring).
        gp_solve: "cholesky" or "inverse" (same function, different round-off).
        memory_budget_gb: bound on each refiner's working memory in GiB (their
            activations set the peak at high resolution): the refiners' conv stacks
            then run on bands of rows with a halo covering their receptive field,
            so the output is the same (float round-off); None: one band.
        arch: the network's widths: a name of :data:`ARCH_PRESETS` (``"roma"``: the
            released network; ``"tiny"``) or an :class:`ArchConfig` (a dict in YAML).
        covisible_crop: match a second time on the co-visible crops of the pair (the
            boxes the first pass's confident matches cover), which normalises a large
            scale change (:mod:`l2m_plugin.models.covisible`); doubles the cost. Off in
            the reference (RoMa has no such pass).
        covisible_thresh: first-pass certainty at or above which a cell counts as
            co-visible, in [0, 1].
        covisible_margin: growth of each box per side, a fraction of its size (>= 0).
        covisible_scales: shrink factors (each > 1) of the scale search before the crop
            pass (:mod:`l2m_plugin.models.covisible`): for each, one more first pass per
            image with that image shrunk, for scale changes beyond the network's range;
            () = none. Unused without ``covisible_crop`` (like ``covisible_thresh``).
        covisible_zooms: zoom factors (each > 1) of the same search: for each ``z``, each
            image is cut into overlapping tiles of ``1/z`` its width and height (a grid of
            ``ceil(2 z - 1)`` positions per axis, half a tile apart for ``z = 2``), and every
            tile is matched against the other image whole: a close-up against a distant
            view, whose detail the coarse size would lose. It runs only on the pairs where
            a shrunk image of ``covisible_scales`` beat the plain pass, and then costs
            ``2 ceil(2 z - 1)^2`` more first passes per factor (symmetric; 18 for ``z = 2``);
            () = none. Needs ``covisible_scales``; unused without ``covisible_crop``.
    """

    coarse_res: tuple[int, int] = (560, 560)
    upsample_res: tuple[int, int] | None = (864, 864)
    symmetric: bool = True
    attenuate_cert: bool = True
    sample_thresh: float = 0.05
    sample_cutoff: bool = False
    sample_density: str = "grid"
    encoder: str = "vitl14"
    dtype: str = "float32"
    normalize: bool = False
    color_order: str = "RGB"
    upsample_certainty: str = "refined"
    displacement_scale: str = "l2m"
    gp_solve: str = "inverse"
    memory_budget_gb: float | None = None
    arch: str | ArchConfig = "roma"
    covisible_crop: bool = False
    covisible_thresh: float = 0.5
    covisible_margin: float = 0.1
    covisible_scales: tuple[float, ...] = ()
    covisible_zooms: tuple[float, ...] = ()

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "arch", _arch(self.arch))
        set_(self, "coarse_res", as_pair(self.coarse_res, "coarse_res"))
        h, w = self.coarse_res
        stride = self.arch_config.coarse_stride
        if h <= 0 or w <= 0 or h % stride or w % stride:
            what = "ViT patch size" if stride == 14 else "stride of the coarse CNN"
            raise ValueError(f"coarse_res must be positive multiples of {stride} ({what}), got {self.coarse_res}")
        if self.upsample_res is not None:
            set_(self, "upsample_res", as_pair(self.upsample_res, "upsample_res"))
            uh, uw = self.upsample_res
            if uh <= 0 or uw <= 0 or uh % 8 or uw % 8:
                raise ValueError(f"upsample_res must be positive multiples of 8, got {self.upsample_res}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be 'RGB' or 'BGR', got {self.color_order!r}")
        if self.upsample_certainty not in ("refined", "coarse"):
            raise ValueError(f"upsample_certainty must be 'refined' or 'coarse', got {self.upsample_certainty!r}")
        if not isinstance(self.sample_cutoff, bool):
            raise ValueError(f"sample_cutoff must be true or false, got {self.sample_cutoff!r}")
        if self.displacement_scale not in ("l2m", "romatch"):
            raise ValueError(f"displacement_scale must be 'l2m' or 'romatch', got {self.displacement_scale!r}")
        if self.gp_solve not in ("cholesky", "inverse"):
            raise ValueError(f"gp_solve must be 'cholesky' or 'inverse', got {self.gp_solve!r}")
        if self.encoder not in VIT_CONFIGS:
            raise ValueError(f"encoder must be one of {sorted(VIT_CONFIGS)}, got {self.encoder!r}")
        if self.memory_budget_gb is not None and not float(self.memory_budget_gb) > 0:
            raise ValueError(f"memory_budget_gb must be positive or None, got {self.memory_budget_gb}")
        if not 0.0 <= float(self.sample_thresh) <= 1.0:
            raise ValueError(f"sample_thresh must be in [0, 1], got {self.sample_thresh}")
        if not 0.0 <= float(self.covisible_thresh) <= 1.0:
            raise ValueError(f"covisible_thresh must be in [0, 1], got {self.covisible_thresh}")
        if not float(self.covisible_margin) >= 0.0:
            raise ValueError(f"covisible_margin must be >= 0, got {self.covisible_margin}")
        for key, what in (("covisible_scales", "shrink factors"), ("covisible_zooms", "zoom factors")):
            scales = getattr(self, key)
            if isinstance(scales, (int, float)) or not all(isinstance(f, (int, float)) for f in scales):
                raise ValueError(f"{key} must be a list of numbers > 1, got {scales!r}")
            set_(self, key, tuple(float(f) for f in scales))
            if any(not f > 1 for f in getattr(self, key)):
                raise ValueError(f"{key} must all be > 1 ({what}), got {list(getattr(self, key))}")
        if self.covisible_zooms and not self.covisible_scales:
            raise ValueError(
                f"covisible_zooms {list(self.covisible_zooms)} needs covisible_scales (the zoom search runs on "
                "the pairs where a shrunk image wins the scale search): set covisible_scales, e.g. [2.0]"
            )
        if self.sample_density not in DENSITY_METHODS:
            raise ValueError(f"sample_density must be 'grid' or 'exact', got {self.sample_density!r}")

    @property
    def arch_config(self) -> ArchConfig:
        """The resolved :class:`ArchConfig` (a preset name looked up in :data:`ARCH_PRESETS`)."""
        return ARCH_PRESETS[self.arch] if isinstance(self.arch, str) else self.arch

    @property
    def arch_name(self) -> str:
        """The network in words: its :data:`ARCH_PRESETS` name (else ``"custom"``), with the
        ViT size when the coarse features come from DINOv2: ``"roma/vitl14"``, ``"tiny"``."""
        arch = self.arch_config
        name = next((n for n, a in ARCH_PRESETS.items() if a == arch), "custom")
        return f"{name}/{self.encoder}" if arch.coarse == "dinov2" else name

    def same_network(self, other: MatcherConfig) -> bool:
        """Whether weights made for ``other`` fit the network this config builds: same
        :class:`ArchConfig` and, for DINOv2 coarse features, the same ViT size. Inference
        settings (resolution, normalisation, ...) may differ."""
        a, b = self.arch_config, other.arch_config
        return a == b and (a.coarse != "dinov2" or self.encoder == other.encoder)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @property
    def output_res(self) -> tuple[int, int]:
        """(height, width) of the dense output."""
        return self.upsample_res if self.upsample_res is not None else self.coarse_res

    def scale_factors(self) -> tuple[float, float]:
        """Displacement-embedding factors (coarse pass, upsampling pass)."""
        h, w = self.coarse_res
        uh, uw = self.output_res
        if self.displacement_scale == "romatch":
            return (h * w / 560**2) ** 0.5, (uh * uw / 560**2) ** 0.5
        return 1.0, (uh * uw / (h * w)) ** 0.5

    def replace(self, **changes) -> MatcherConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path, overrides: list[str] | None = None) -> MatcherConfig:
        """Read a YAML file (e.g. ``configs/matcher/l2m.yaml``) with optional ``key=value`` overrides.

        Raises:
            ValueError: invalid YAML, unknown fields or invalid values (message names the file).
            OSError: the file cannot be read.
        """
        import yaml
        from omegaconf import OmegaConf

        try:
            conf = OmegaConf.load(path)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML ({' '.join(str(exc).split())}); fix the file") from None
        if not isinstance(OmegaConf.to_container(conf), dict):
            raise ValueError(f"{path} must hold a mapping of MatcherConfig fields (key: value lines)")
        if overrides:
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
        try:
            return cls.from_dict(OmegaConf.to_container(conf, resolve=True))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatcherConfig:
        """Inverse of :meth:`to_dict` (lists become tuples; ``arch`` may be a dict).

        Raises:
            ValueError: unknown fields or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"Unknown MatcherConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


#: Named presets: inference settings *and* the architecture they were written for (a
#: preset only fits weights of its architecture; :func:`l2m_plugin.weights.load_matcher`
#: refuses the others with a short message). Architecture ``roma`` (the released network):
#: ``l2m`` is what the authors' ZEB harness runs; ``romatch`` is RoMa's ``roma_outdoor``
#: (romatch 0.1.2) and ``l2m-fork-defaults`` the ``l2mpp_model()`` constructor defaults
#: (672 / 1344). Architecture ``tiny-ds``: ``l2m-tiny`` is the config stored in the shipped
#: ``l2m_plugin/assets/l2m_tiny.pth`` (= ``configs/matcher/l2m_tiny.yaml``;
#: ``tests/test_config.py`` fails if the three disagree, so after retraining update the
#: YAML and this entry). Architecture ``tiny`` (the first l2m-tiny's): ``tiny`` is that network at 320 px (random-weight tests and
#: benchmarks). The YAML files in ``configs/matcher/`` equal the presets of the same name.
PRESETS: dict[str, MatcherConfig] = {
    "l2m": MatcherConfig(),
    "l2m-fork-defaults": MatcherConfig(coarse_res=672, upsample_res=1344),
    "romatch": MatcherConfig(normalize=True, displacement_scale="romatch", gp_solve="cholesky"),
    "l2m-tiny": MatcherConfig(arch="tiny-ds", coarse_res=384, upsample_res=None, normalize=True, gp_solve="cholesky",
                              attenuate_cert=False, sample_thresh=0.5, covisible_crop=True, covisible_scales=(2.0,),
                              sample_cutoff=True, upsample_certainty="coarse", covisible_zooms=(2.0,)),
    "tiny": MatcherConfig(arch="tiny", coarse_res=320, upsample_res=None, normalize=True, gp_solve="cholesky"),
}


def resolve_config(preset: str | None = None, config: Any = None) -> MatcherConfig | None:
    """The :class:`MatcherConfig` an entry point was given, or None (then the weights' own).

    Args:
        preset: a name in :data:`PRESETS`.
        config: a :class:`MatcherConfig`, a dict of its fields, or the path of a YAML file
            (``configs/matcher/*.yaml``). At most one of ``preset`` and ``config``.
    Raises:
        ValueError: unknown preset, both given, or an invalid config (the message names
            the file). OSError: unreadable YAML file.
    """
    if preset is not None and config is not None:
        raise ValueError(f"give a preset ({preset!r}) or a config, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[preset]
    if config is None or isinstance(config, MatcherConfig):
        return config
    if isinstance(config, dict):
        return MatcherConfig.from_dict(config)
    return MatcherConfig.from_yaml(config)
