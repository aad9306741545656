"""Encoders of the L2M matcher: a VGG19-BN pyramid and a DINOv2 ViT built with timm.

Source: RoMa (Edstedt et al., CVPR 2024), ``romatch/models/encoders.py``
(``VGG19`` and ``CNNandDinov2``), which L2M / L2M++ inherit unchanged except
for the ViT weights (L2M's stage-1 "3D-aware" DINOv2, paper Sec. 3.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VGG19Pyramid", "DinoV2Encoder", "VIT_CONFIGS", "Encoder"]

# name -> (timm architecture, embedding dim)
VIT_CONFIGS: dict[str, tuple[str, int]] = {
    "vits14": ("vit_small_patch14_dinov2", 384),
    "vitb14": ("vit_base_patch14_dinov2", 768),
    "vitl14": ("vit_large_patch14_dinov2", 1024),
}

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
        for layer in self.layers:
            if isinstance(layer, nn.MaxPool2d):
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


class Encoder(nn.Module):
    """VGG19-BN pyramid (strides 1, 2, 4, 8) plus ViT features at stride 14 (key 16).

    ``forward(x, with_vit=True)`` returns ``{1, 2, 4, 8: VGG features, 16: ViT
    features}``; with ``with_vit=False`` (the high-resolution upsampling pass) only
    the VGG levels. As in RoMa the ViT runs without gradients.
    """

    def __init__(self, vit_size: str = "vitl14") -> None:
        super().__init__()
        self.cnn = VGG19Pyramid()
        self.dinov2 = DinoV2Encoder(vit_size)

    def forward(self, x: torch.Tensor, with_vit: bool = True) -> dict[int, torch.Tensor]:
        # channels-last: VGG runs about 1.5x faster on CPU with the same numbers
        feats = self.cnn(x.contiguous(memory_format=torch.channels_last))
        if with_vit:
            with torch.no_grad():
                feats[16] = self.dinov2(x)
        return feats
