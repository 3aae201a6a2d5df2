"""``DPTHead``: a DPT-style fusion head turning ViT token maps into one dense feature map.

Not a registered component: a building block of the ``dual-plane`` lifter (and of any later
lifter that wants dense features from a ViT). The shape follows GAGAvatar's "DINOBase" head,
itself the DPT head of Depth Anything:

1. four branches; branch ``i`` projects a token map with a 1x1 conv to ``channels[i]``
   (official 256/512/1024/1024) and resizes it x4 (transposed conv, kernel 4 stride 4), x2
   (transposed conv, kernel 2 stride 2), x1 (identity) and /2 (3x3 conv, stride 2): 37 tokens
   become 148/74/37/19 px;
2. the image, ImageNet-normalised and resized (bilinear, antialiased) to each branch's size, is
   put *before* the branch's channels (3 + c: 259/515/1027/1027), and a 3x3 conv without bias
   maps every branch to ``features`` (256). With ``vit_input_image`` (GAGAvatar's
   ``compat: official``) the image is first resized (antialiased) to the ViT's input size,
   14 x the token grid (518 px for 37 tokens), exactly the tensor the official code feeds its
   ViT and then reuses here; otherwise the source image is resized straight to each branch;
3. four residual fusion blocks run from the coarsest branch to the finest, each upsampling to
   the next branch's size; the last upsamples to ``feature_size`` x ``feature_size`` (official
   296 = 2 x 148); a 3x3 conv gives the local feature map [B, features, S, S].

The global feature is not this head's business (the encoder's ``global_token``).

Encoder levels: with 4 or more levels the last 4 feed the branches (finest branch = earliest
of them). With fewer, branch ``i`` reads level ``i * L // 4`` (one level feeds all four
branches), so any encoder works; the pretrained layout needs exactly 4 levels of 768 channels.

State-dict mapping (GAGAvatar key -> ``DPTHead`` key), ``i`` in 0..3:

================================================  ==========================================
GAGAvatar (``base_model.`` + ...)                 gshead (``DPTHead``)
================================================  ==========================================
``projects.{i}.weight/bias``                      ``projects.{i}.weight/bias``
``resize_layers.{0,1,3}.weight/bias``             ``resize_layers.{0,1,3}.weight/bias`` (2 = Identity)
``layer_rn.{i}.weight`` (no bias)                 ``layer_rn.{i}.weight``
``refinenet.{i}.out_conv.*``                      ``refinenet.{i}.out_conv.*``
``refinenet.{i}.resConfUnit{1,2}.conv{1,2}.*``    ``refinenet.{i}.resConfUnit{1,2}.conv{1,2}.*``
``output_conv.weight/bias``                       ``output_conv.weight/bias``
``dino_model.*``                                  (the encoder's, not this head's)
================================================  ==========================================

``refinenet.0`` is the *coarsest* fusion block (it reads only the 19 px branch), ``refinenet.3``
the finest (it produces the S x S map), as in GAGAvatar's code. Module names keep DPT's camelCase (``resConfUnit1``) so the keys match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gshead.core.errors import ShapeError

OFFICIAL_CHANNELS: tuple[int, int, int, int] = (256, 512, 1024, 1024)
PATCH = 14  # ViT patch side: the image branch's ViT-input size is 14 x the token grid
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias (DPT's ``ResidualConvUnit``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # [B, F, h, w] -> [B, F, h, w]
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT's ``FeatureFusionBlock``: add the (refined) skip, refine, upsample to ``size``, 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)  # [B, F, *size]


class DPTHead(nn.Module):
    """Token maps (L levels of [B, C_l, h, w]) + image -> local [B, features, S, S], global passthrough."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        channels: tuple[int, int, int, int] = OFFICIAL_CHANNELS,
        features: int = 256,
        feature_size: int = 296,
        vit_input_image: bool = False,
    ) -> None:
        """
        :param in_channels: channels of each encoder level (``BuildContext.encoder_channels``).
        :param channels: projection channels of the four branches (finest first).
        :param features: channels of the fused map (and of every fusion block).
        :param feature_size: side S of the output map.
        :param vit_input_image: build the image branch from the image resized to 14 x the token
            grid first (GAGAvatar's official behaviour; see the module docstring).
        """
        super().__init__()
        if not in_channels:
            raise ShapeError("DPTHead: expected at least one encoder level, got none")
        if len(channels) != 4:
            raise ShapeError(f"DPTHead: expected 4 branch channels, got {len(channels)}")
        self.levels = branch_levels(len(in_channels))
        self.in_channels = tuple(in_channels)
        self.features = features
        self.feature_size = feature_size
        self.vit_input_image = vit_input_image
        self.projects = nn.ModuleList(
            nn.Conv2d(in_channels[lvl], c, 1) for lvl, c in zip(self.levels, channels)
        )
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(channels[0], channels[0], 4, stride=4),  # x4
                nn.ConvTranspose2d(channels[1], channels[1], 2, stride=2),  # x2
                nn.Identity(),  # x1
                nn.Conv2d(channels[3], channels[3], 3, stride=2, padding=1),  # /2
            ]
        )
        self.layer_rn = nn.ModuleList(nn.Conv2d(c + 3, features, 3, padding=1, bias=False) for c in channels)
        self.refinenet = nn.ModuleList(FusionBlock(features) for _ in range(4))
        self.output_conv = nn.Conv2d(features, features, 3, padding=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, maps: tuple[Tensor, ...], image: Tensor) -> Tensor:
        """``maps``: the encoder's levels [B, C_l, h, w]; ``image`` [B, 3, H, W] -> [B, features, S, S]."""
        if len(maps) != len(self.in_channels):
            raise ShapeError(f"DPTHead: built for {len(self.in_channels)} encoder levels, got {len(maps)}")
        got = tuple(m.shape[1] for m in maps)
        if got != self.in_channels:
            raise ShapeError(f"DPTHead: built for encoder channels {self.in_channels}, got {got}")
        image = image.to(self.mean.dtype)
        if self.vit_input_image:
            side = maps[-1].shape[-1] * PATCH
            image = _resize(image, (side, side))
        image = (image - self.mean) / self.std  # ImageNet-normalised, like the ViT's input
        branches = []
        for i, lvl in enumerate(self.levels):
            x = self.resize_layers[i](self.projects[i](maps[lvl]))  # [B, c_i, h_i, w_i]
            rgb = _resize(image, tuple(x.shape[-2:])).to(x.dtype)
            branches.append(self.layer_rn[i](torch.cat([rgb, x], dim=1)))  # [B, F, h_i, w_i], image first
        s = self.feature_size
        path = self.refinenet[0](branches[3], None, branches[2].shape[-2:])  # coarsest
        path = self.refinenet[1](path, branches[2], branches[1].shape[-2:])
        path = self.refinenet[2](path, branches[1], branches[0].shape[-2:])
        path = self.refinenet[3](path, branches[0], (s, s))  # finest
        return self.output_conv(path)  # [B, F, S, S]


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, half-pixel, antialiased (a no-op at the same size)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def branch_levels(levels: int) -> tuple[int, int, int, int]:
    """Which encoder level feeds each of the four branches (see the module docstring)."""
    if levels >= 4:
        return tuple(range(levels - 4, levels))  # type: ignore[return-value]
    return tuple(i * levels // 4 for i in range(4))  # type: ignore[return-value]


__all__ = ["OFFICIAL_CHANNELS", "DPTHead", "FusionBlock", "ResidualConvUnit", "branch_levels"]
