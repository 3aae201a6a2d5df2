"""``tiny-conv``: a small convolutional encoder, the CPU reference for the encoder slot.

Two stride-2 stages bring the image to 1/4 resolution, a few residual blocks mix context there,
and the mean of the last map, passed through a linear layer, is the global token. It is small
enough to train on a CPU and exists so the whole pipeline runs without a ViT.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import EncoderConfig
from gshead.core.errors import ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import FeatureMaps


class TinyConvConfig(EncoderConfig):
    """A small CNN: one feature map at 1/4 resolution and a global token."""

    name: Literal["tiny-conv"] = "tiny-conv"
    channels: int = Field(32, ge=4, le=1024)
    """Channels of the 1/4-resolution feature map (the only level of FeatureMaps.local)."""
    depth: int = Field(2, ge=0, le=16)
    """Residual 3x3 blocks applied at 1/4 resolution after the two downsampling convolutions."""
    global_channels: int = Field(64, ge=1, le=4096)
    """Size of the global token (a linear map of the mean-pooled feature map)."""


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels`` (batch-size independent, unlike BatchNorm)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, h, w] -> [B, C, h, w]
        return x + self.body(x)


class TinyConvEncoder(nn.Module):
    """Image [B, 3, H, W] (H, W multiples of 4) -> one [B, channels, H/4, W/4] map + global token."""

    def __init__(self, config: TinyConvConfig, context: BuildContext) -> None:
        super().__init__()
        c = config.channels
        half = max(c // 2, 4)
        self.out_channels: tuple[int, ...] = (c,)
        self.global_channels: int = config.global_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1),  # 1/2
            nn.SiLU(),
            nn.Conv2d(half, c, 3, stride=2, padding=1),  # 1/4
        )
        self.blocks = nn.Sequential(*[_ResidualBlock(c) for _ in range(config.depth)])
        self.out_norm = _group_norm(c)
        self.to_global = nn.Linear(c, config.global_channels)

    def forward(self, image: Tensor) -> FeatureMaps:
        # image: [B, 3, H, W] in [0, 1]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ShapeError(f"tiny-conv: expected an image batch [B, 3, H, W], got {list(image.shape)}")
        h, w = image.shape[-2:]
        if h % 4 or w % 4:
            raise ShapeError(
                f"tiny-conv: image size {w}x{h} is not a multiple of 4; "
                "expected width and height divisible by 4"
            )
        x = self.stem(image * 2.0 - 1.0)  # [B, C, H/4, W/4]
        x = self.out_norm(self.blocks(x))  # [B, C, H/4, W/4]
        token = self.to_global(x.mean(dim=(2, 3)))  # [B, G]
        return FeatureMaps(image=image, local=(x,), global_token=token)


@hookimpl
def gshead_register_encoders(register) -> None:
    register.add(TinyConvConfig, TinyConvEncoder)
