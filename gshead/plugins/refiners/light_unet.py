"""``light-unet``: a small UNet that turns the rendered feature image into RGB, sized for real time on CPU.

Input: the C rendered feature channels plus the accumulated alpha (so the network knows where the
head ends), [B, C + 1, H, W]. Output: the rendered RGB (channels 0..2) plus a predicted residual,
clamped to [0, 1]. The residual's last layer is zero-initialised, so an untrained ``light-unet``
returns exactly what the ``identity`` refiner returns; training starts from the splatted colours
instead of from grey (a residual was chosen over a sigmoid head for this reason).

Layout, for ``widths = (w0, w1, ..., wL)``: a space-to-depth stem (PixelUnshuffle 2 + 1x1 conv to
``w0``, computed as the equivalent 2x2 stride-2 convolution) so no 3x3 convolution runs at full
resolution; one 3x3 conv at level 0 (H/2); per further
level a stride-2 3x3 conv and one 3x3 conv (H/4, H/8, ...); the decoder reduces channels with a 1x1
conv *before* upsampling (nearest), adds the skip and applies one 3x3 conv; a 1x1 conv to 12 channels
and PixelShuffle 2 give the full-resolution residual. Any H, W works (odd sizes are padded by
replication and cropped back). ReLU activations (cheapest on CPU).

Default ``(16, 32, 64)``: about 0.1 M parameters and about 0.5 GFLOP per 256 x 256 frame with 16
feature channels.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import RefinerConfig
from gshead.core.errors import ConfigError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Render


class LightUNetConfig(RefinerConfig):
    """A small residual UNet over the rendered features (+ alpha) for real-time refinement."""

    name: Literal["light-unet"] = "light-unet"
    widths: tuple[int, ...] = Field((16, 32, 64), min_length=1, max_length=6)
    """Channels per level; level 0 works at half resolution, each further level halves again."""
    max_parameters: int = Field(2_000_000, ge=1)
    """Budget of the whole network; building a larger one is refused."""


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


class LightUNetRefiner(nn.Module):
    """Render [B, C, H, W] (+ alpha) -> image [B, 3, H, W] in [0, 1]."""

    def __init__(self, config: LightUNetConfig, context: BuildContext) -> None:
        super().__init__()
        if any(w < 1 for w in config.widths):
            raise ConfigError(f"light-unet: widths must be positive, got {config.widths}")
        self.config = config
        self.channels = context.feature_channels
        w = config.widths
        self.stem = nn.Sequential(
            nn.PixelUnshuffle(2),
            nn.Conv2d(4 * (self.channels + 1), w[0], 1),
            nn.ReLU(inplace=True),
            _conv(w[0], w[0]),
        )
        self.down = nn.ModuleList(
            nn.Sequential(_conv(a, b, 2), _conv(b, b)) for a, b in itertools.pairwise(w)
        )
        self.reduce = nn.ModuleList(nn.Conv2d(b, a, 1) for a, b in itertools.pairwise(w))
        self.merge = nn.ModuleList(_conv(a, a) for a in w[:-1])
        self.head = nn.Conv2d(w[0], 12, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        count = sum(p.numel() for p in self.parameters())
        if count > config.max_parameters:
            raise ConfigError(
                f"light-unet: {count:,} parameters, over max_parameters ({config.max_parameters:,}); "
                f"use narrower widths"
            )

    @staticmethod
    def parameter_count(config: LightUNetConfig, feature_channels: int = 16) -> int:
        """Parameters of the network this config builds for ``feature_channels``."""
        with torch.device("meta"):
            net = LightUNetRefiner(
                config.model_copy(update={"max_parameters": 1 << 62}), BuildContext(feature_channels)
            )
        return sum(p.numel() for p in net.parameters())

    def forward(self, render: Render) -> Tensor:
        features = render.features  # [B, C, H, W]
        if features.dim() != 4 or features.shape[1] != self.channels:
            raise ShapeError(
                f"light-unet: expected rendered features [B, {self.channels}, H, W], got {list(features.shape)}"
            )
        h, w = features.shape[-2:]
        alpha = render.alpha.to(features)  # [B, 1, H, W]
        if h % 2 or w % 2:
            features, alpha = (F.pad(t, (0, w % 2, 0, h % 2), mode="replicate") for t in (features, alpha))
        skips = [self.stem[3](F.relu(self._space_to_depth(features, alpha)))]  # [B, w0, H/2, W/2]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for reduce, merge in zip(reversed(self.reduce), reversed(self.merge)):
            skip = skips.pop()
            y = merge(F.interpolate(reduce(y), size=skip.shape[-2:], mode="nearest") + skip)
        residual = F.pixel_shuffle(self.head(y), 2)  # [B, 3, H, W]
        return (features[:, :3] + residual).clamp(0.0, 1.0)[..., :h, :w]

    def _space_to_depth(self, features: Tensor, alpha: Tensor) -> Tensor:
        """The stem's PixelUnshuffle 2 + 1x1 conv as two 2x2 stride-2 convs (features, alpha) with
        the same weights: equal to it up to rounding, without the unshuffled copy or the concat
        (about 3x cheaper on CPU). Unshuffle channel ``4c + 2i + j`` holds input channel ``c`` at
        offset (i, j), so the 1x1 weight [w0, 4(C+1), 1, 1] is the 2x2 weight [w0, C+1, 2, 2]."""
        conv = self.stem[1]
        weight = conv.weight.view(conv.out_channels, self.channels + 1, 2, 2)
        out = F.conv2d(features, weight[:, : self.channels], conv.bias, stride=2)
        return out + F.conv2d(alpha, weight[:, self.channels :], None, stride=2)


@hookimpl
def gshead_register_refiners(register) -> None:
    register.add(LightUNetConfig, LightUNetRefiner)


__all__ = ["LightUNetConfig", "LightUNetRefiner"]
