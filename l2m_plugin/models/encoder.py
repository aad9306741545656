"""Encoders of the L2M matcher: a VGG19-BN pyramid and a DINOv2 ViT built with timm,
or the small trainable-from-scratch modules of the ``tiny`` architecture.

Source: RoMa (Edstedt et al., CVPR 2024), ``romatch/models/encoders.py``
(``VGG19`` and ``CNNandDinov2``), which L2M / L2M++ inherit unchanged except
for the ViT weights (L2M's stage-1 "3D-aware" DINOv2, paper Sec. 3.2).
:class:`SmallCNNPyramid`, :class:`CoarseCNN` and :class:`SmallViT` are ours: the
same interface (a stride-1/2/4/8 pyramid plus stride-14/16 coarse features)
with widths from :class:`~l2m_plugin.config.ArchConfig`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from l2m_plugin.config import ARCH_PRESETS, VIT_CONFIGS
from l2m_plugin.models.fused import can_fold, run_layers

__all__ = ["VGG19Pyramid", "DinoV2Encoder", "SmallCNNPyramid", "CoarseCNN", "SmallViT", "Encoder"]

# torchvision's vgg19_bn "E" configuration up to and including the 4th max-pool,
# i.e. exactly the modules of ``vgg19_bn().features[:40]`` (so state-dict keys
# ``layers.<index>.*`` line up with RoMa's checkpoints).
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M")


class VGG19Pyramid(nn.Module):
    """VGG19 with batch norm, returning the activations before each max-pool.

    Input: (B, 3, H, W) float, normalised as configured.
    Output: dict ``{1: (B,64,H,W), 2: (B,128,H/2,W/2), 4: (B,256,H/4,W/4),
    8: (B,512,H/8,W/8)}`` (sizes floor-divided by each 2x2 max-pool).
    Same modules and key layout as RoMa's ``VGG19`` (``vgg19_bn().features[:40]``);
    the last max-pool exists for the layout only: its output is never used.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats: dict[int, torch.Tensor] = {}
        scale = 1
        fold = can_fold(self)  # inference: BatchNorm folded into each conv (models.fused)
        stage: list[nn.Module] = []
        for layer in self.layers:
            if not isinstance(layer, nn.MaxPool2d):
                stage.append(layer)
                continue
            x = run_layers(x, stage, fold)
            stage = []
            feats[scale] = x
            scale *= 2
            if scale > 8:
                break
            x = layer(x)
        return feats


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT-{S,B,L}/14 (timm) returning last-layer normalised patch tokens.

    Input: (B, 3, H, W) float with H and W multiples of 14.
    Output: (B, D, H/14, W/14), D = 384 / 768 / 1024 for vits14 / vitb14 / vitl14.

    The position embedding (trained at 518 x 518, 37 x 37 patches) is resampled
    exactly as DINOv2's own ``interpolate_pos_encoding`` does (bicubic with a
    *scale factor* of ``(n + 0.1) / 37``, not a target size), so the features
    equal those of the reference implementation at every resolution; timm's own
    ``resample_abs_pos_embed`` uses a target size and gives different numbers
    away from 518.
    """

    def __init__(self, size: str = "vitl14") -> None:
        super().__init__()
        if size not in VIT_CONFIGS:
            raise ValueError(f"Unknown encoder size {size!r}; expected one of {sorted(VIT_CONFIGS)}.")
        import timm

        arch, dim = VIT_CONFIGS[size]
        # pretrained=False: nothing is downloaded at construction.
        self.vit = timm.create_model(arch, pretrained=False, num_classes=0, img_size=518)
        self.dim = dim
        self.patch_size = 14

    def _pos_embed(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        pos = self.vit.pos_embed
        n = pos.shape[1] - 1
        side = int(math.sqrt(n))
        if h * w == n and h == w:
            return pos
        pos = pos.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic"
        )
        if patch_pos.shape[-2:] != (h, w):  # pragma: no cover - guarded by the 0.1 offset
            raise RuntimeError(f"Position embedding resampled to {tuple(patch_pos.shape[-2:])}, expected {(h, w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"ViT input must be a multiple of 14 pixels, got {H}x{W}.")
        tokens = self.vit.patch_embed.proj(x)
        h, w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = torch.cat((self.vit.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
        tokens = tokens + self._pos_embed(h, w, tokens.dtype)
        for blk in self.vit.blocks:
            tokens = blk(tokens)
        tokens = self.vit.norm(tokens)
        return tokens[:, 1:].transpose(1, 2).reshape(b, -1, h, w)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNNPyramid(nn.Module):
    """A narrow VGG-style pyramid: ``convs`` conv3x3-BN-ReLU per stage, 2 x 2 max-pool between stages.

    Args:
        channels: output channels at strides (1, 2, 4, 8).
        convs: conv layers per stage.
    Input: (B, 3, H, W) float. Output: dict ``{1: (B, c1, H, W), 2: (B, c2, H/2, W/2),
    4: (B, c4, H/4, W/4), 8: (B, c8, H/8, W/8)}`` (sizes floor-divided, as
    :class:`VGG19Pyramid`; multiples of 8 keep every level aligned with the image).
    """

    def __init__(self, channels: tuple[int, int, int, int] = (16, 32, 64, 96), convs: int = 2) -> None:
        super().__init__()
        stages, cin = [], 3
        for c in channels:
            stages.append(nn.Sequential(*[_conv_bn_relu(cin if k == 0 else c, c) for k in range(convs)]))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            if i:
                x = self.pool(x)
            x = run_layers(x, stage, can_fold(self))
            feats[2**i] = x
        return feats


class CoarseCNN(nn.Module):
    """Stride-16 features from the stride-8 level of a pyramid: max-pool, then ``convs`` conv-BN-ReLU.

    Input: (B, in_dim, H/8, W/8). Output: (B, dim, H/16, W/16).
    """

    def __init__(self, in_dim: int, dim: int, convs: int = 2) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.convs = nn.Sequential(*[_conv_bn_relu(in_dim if k == 0 else dim, dim) for k in range(convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_layers(self.pool(x), self.convs, can_fold(self))


class SmallViT(nn.Module):
    """A small timm ViT with 14 x 14 patches, trained from scratch (no pretrained weights).

    The position embedding is resampled to the input size by timm
    (``dynamic_img_size=True``). Input: (B, 3, H, W) with H, W multiples of 14.
    Output: (B, dim, H/14, W/14), the normalised patch tokens.
    """

    def __init__(self, dim: int = 192, depth: int = 4, heads: int = 3, img_size: int = 224) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(
            img_size=img_size, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads,
            num_classes=0, global_pool="", dynamic_img_size=True,
        )  # fmt: skip
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, H, W = x.shape
        if H % 14 or W % 14:
            raise ValueError(f"ViT input must be a multiple of 14 pixels, got {H}x{W}.")
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(b, self.dim, H // 14, W // 14)


class Encoder(nn.Module):
    """A fine CNN pyramid (strides 1, 2, 4, 8) plus coarse features at stride 14 or 16 (key 16).

    Args:
        vit_size: DINOv2 size for ``arch.coarse == "dinov2"`` (``MatcherConfig.encoder``).
        arch: :class:`~l2m_plugin.config.ArchConfig` (default: the ``roma`` preset:
            VGG19-BN as ``cnn`` and DINOv2 as ``dinov2``, RoMa's module names, so
            the official checkpoints load). Other architectures name their coarse
            module ``coarse``.

    ``forward(x, with_vit=True)`` returns ``{1, 2, 4, 8: CNN features, 16: coarse
    features}`` (no key 16 for ``arch.coarse == "none"``); with ``with_vit=False`` (the high-resolution upsampling pass) only
    the CNN levels. As in RoMa a DINOv2 ViT runs without gradients; the small
    coarse modules (``cnn``/``vit``) are trained with the rest.
    """

    def __init__(self, vit_size: str = "vitl14", arch=None) -> None:
        super().__init__()

        arch = arch or ARCH_PRESETS["roma"]
        self.coarse_kind = arch.coarse
        if arch.cnn == "vgg19":
            self.cnn = VGG19Pyramid()
        else:
            self.cnn = SmallCNNPyramid(arch.cnn_channels, arch.cnn_convs)
        if arch.coarse == "dinov2":
            self.dinov2 = DinoV2Encoder(vit_size)
            self.coarse_dim = self.dinov2.dim
        elif arch.coarse == "cnn":
            self.coarse = CoarseCNN(arch.cnn_channels[3], arch.coarse_dim, arch.coarse_convs)
            self.coarse_dim = arch.coarse_dim
        elif arch.coarse == "none":  # the dual-softmax matcher works on the stride-8 level
            self.coarse_dim = arch.cnn_channels[3]
        else:
            self.coarse = SmallViT(arch.coarse_dim, arch.vit_depth, arch.vit_heads)
            self.coarse_dim = arch.coarse_dim

    def forward(self, x: torch.Tensor, with_vit: bool = True) -> dict[int, torch.Tensor]:
        # channels-last: VGG runs about 1.5x faster on CPU with the same numbers
        feats = self.cnn(x.contiguous(memory_format=torch.channels_last))
        if with_vit:
            if self.coarse_kind == "dinov2":
                with torch.no_grad():
                    feats[16] = self.dinov2(x)
            elif self.coarse_kind == "cnn":
                feats[16] = self.coarse(feats[8])
            elif self.coarse_kind == "vit":
                feats[16] = self.coarse(x)
        return feats
