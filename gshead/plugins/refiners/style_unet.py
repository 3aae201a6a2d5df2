"""``style-unet``: GAGAvatar's neural refiner — a UNet whose bottleneck drives a StyleGAN2-like decoder.

The rendered feature image [B, C, H, W] is resized to ``resolution`` x ``resolution`` (bilinear;
GAGAvatar renders at 512 = its resolution, so nothing is resized there), refined, and the RGB
result resized back to H x W. Inside (GFPGAN-style "clean" architecture):

* **encoder**: a 1x1 conv, then ``depth`` residual blocks, each halving the size, down to a
  ``resolution / 2^depth`` bottleneck (GAGAvatar: 512 -> 4). UNet channels at size ``r`` are
  ``min(max_width, width * resolution / r)`` (GAGAvatar: 16 at 512 ... 256 from 32 down);
* **style code**: a 3x3 conv on the bottleneck, flattened, one Linear -> ``style_channels``
  (GAGAvatar: 4096 -> 512), then the StyleGAN mapping MLP (pixel norm, ``mapping_layers`` x
  Linear + LeakyReLU) gives the latent ``w`` used by every modulated conv;
* **UNet decoder**: ``depth`` residual blocks, each doubling the size, *adding* the encoder
  feature of the same size before each block (skip by addition); after each block two small
  conv nets give an SFT scale and shift at that size;
* **StyleGAN2 decoder**: a learned constant at the bottleneck size, then per size two modulated
  3x3 convs with demodulation (the first upsamples x2), noise inputs with learned strength
  (``compat: sane``: the stored buffers, so the output is deterministic; ``compat: official``:
  fresh noise every forward, see below), and a modulated 1x1 "to RGB" whose outputs
  are upsampled and summed. Spatial feature transform: after the first conv at each size the
  *whole* feature map becomes ``feature * scale + shift`` (GFPGAN's ``sft_half: false``).
  Decoder channels are ``2 x`` the UNet's at each size (GAGAvatar: 512 ... 32);
* the summed RGB goes through a sigmoid: images in [0, 1].

``compat: official`` (``configs/gagavatar.yaml``): like the official inference
(``StyleUNet.forward(x)`` with its default ``randomize_noise=True``), every styled conv draws
fresh standard-normal noise [B, 1, h, w] from torch's global generator at every forward, in
training *and* in eval, in the official order (``style_conv1``, then the two convs of each size);
with the same ``torch.manual_seed`` the output is the official one. The stored ``noises.noise{k}``
buffers are then unused (still loaded). ``compat: sane`` (default) uses the stored buffers.

GAGAvatar's sizes are ``resolution: 512, depth: 7, width: 16, max_width: 256, style_channels:
512, mapping_layers: 8``: 48.7M parameters. The defaults are a CPU-sized variant.

State-dict mapping (GAGAvatar ``upsampler.<k>`` -> gshead ``StyleUNetRefiner.<k>``): every key
keeps its name (``conv_body_first``, ``conv_body_down.{i}.{conv1,conv2,skip}``, ``final_conv``,
``final_linear``, ``conv_body_up.{i}.*``, ``condition_scale.{i}.{0,2}``, ``condition_shift.{i}.{0,2}``,
``stylegan_decoder.{style_mlp.{1,3,..}, constant_input.weight, style_conv1.*, to_rgb1.*,
style_convs.{j}.*, to_rgbs.{j}.*, noises.noise{k}}``), except ``upsampler.toRGB.*``: the UNet's
auxiliary per-size RGB outputs, used only by training losses, which this refiner does not have
(an importer drops them). Inside a styled conv: ``weight`` is the noise strength [1], ``bias``
[1, C, 1, 1], ``modulated_conv.weight`` [1, out, in, k, k] (stored already scaled by 1/sqrt(in k^2), as in
GAGAvatar's checkpoints, and used as stored),
``modulated_conv.modulation`` a Linear (style -> in channels, bias initialised to 1).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import RefinerConfig
from gshead.core.errors import ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Render


class StyleUNetConfig(RefinerConfig):
    """GAGAvatar's StyleUNet: UNet encoder -> style code + SFT conditions -> StyleGAN2 decoder -> RGB (sigmoid)."""

    test_fields: ClassVar[dict[str, Any]] = {
        "resolution": 16,
        "depth": 2,
        "width": 4,
        "max_width": 8,
        "style_channels": 8,
        "mapping_layers": 1,
    }

    name: Literal["style-unet"] = "style-unet"
    resolution: int = Field(128, ge=8, le=4096)
    """Side of the square the refiner works at; renders of another size are resized to it and back (GAGAvatar: 512)."""
    depth: int = Field(5, ge=1, le=10)
    """Down-sampling blocks: the bottleneck is resolution / 2^depth pixels wide (GAGAvatar: 7, 512 -> 4)."""
    width: int = Field(8, ge=1, le=1024)
    """UNet channels at full resolution, doubling per halving up to max_width (GAGAvatar: 16)."""
    max_width: int = Field(64, ge=1, le=4096)
    """Largest UNet channel count (GAGAvatar: 256); the StyleGAN decoder has twice the UNet's channels."""
    style_channels: int = Field(128, ge=1, le=4096)
    """Size of the style code and of the mapping MLP (GAGAvatar: 512)."""
    mapping_layers: int = Field(4, ge=0, le=16)
    """Linear + LeakyReLU layers of the StyleGAN mapping MLP (GAGAvatar: 8)."""
    compat: Literal["sane", "official"] = "sane"
    """``official``: fresh noise from torch's generator at every forward, eval included (the official
    inference, ``randomize_noise=True``); ``sane``: the stored noise buffers (deterministic)."""

    @model_validator(mode="after")
    def _bottleneck(self):
        if self.resolution % (2**self.depth):
            raise ValueError(
                f"resolution {self.resolution} is not divisible by 2^depth = {2**self.depth}; "
                "the bottleneck must be a whole number of pixels"
            )
        return self


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


class ResBlock(nn.Module):
    """Residual block resampling by ``scale`` (0.5 or 2): lrelu(conv1) -> resize -> lrelu(conv2), + 1x1(resized x)."""

    def __init__(self, in_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.interpolate(
            _lrelu(self.conv1(x)), scale_factor=self.scale, mode="bilinear", align_corners=False
        )
        out = _lrelu(self.conv2(out))
        return out + self.skip(
            F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        )


class PixelNorm(nn.Module):
    """x / rms(x) over channels (StyleGAN's input normalisation of the style code)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv: per-sample weights = weight x style, optionally demodulated."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        style_channels: int,
        demodulate: bool,
        upsample: bool,
    ) -> None:
        super().__init__()
        self.demodulate, self.upsample, self.kernel = demodulate, upsample, kernel
        # stored pre-scaled by 1/sqrt(in k^2) (equalised learning rate folded into the weight, as
        # GAGAvatar's checkpoints hold it): used as is, never scaled again
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel, kernel) / math.sqrt(in_channels * kernel * kernel)
        )
        self.modulation = nn.Linear(style_channels, in_channels)
        with torch.no_grad():
            self.modulation.bias.fill_(1.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:  # x [B, in, h, w], style [B, S]
        b, c = x.shape[:2]
        weight = self.weight * self.modulation(style).view(b, 1, c, 1, 1)  # [B, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        out = F.conv2d(
            x.reshape(1, b * c, h, w),
            weight.reshape(-1, c, self.kernel, self.kernel),
            padding=self.kernel // 2,
            groups=b,
        )
        return out.view(b, -1, h, w)


class StyleConv(nn.Module):
    """Modulated 3x3 conv (x sqrt 2), + strength x noise, + bias, LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, style_channels: int, upsample: bool) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, style_channels, True, upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None) -> Tensor:
        """``noise`` [1 or B, 1, h, w]; None: fresh standard-normal noise [B, 1, h, w] (torch's generator)."""
        out = self.modulated_conv(x, style) * math.sqrt(2.0)
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        return _lrelu(out + self.weight * noise + self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, plus the previous RGB upsampled x2."""

    def __init__(self, in_channels: int, style_channels: int) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, style_channels, False, False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return out


class StyleDecoder(nn.Module):
    """StyleGAN2 generator with spatial feature transform: (style code, SFT conditions) -> RGB logits."""

    def __init__(
        self, channels: list[int], bottleneck: int, style_channels: int, mapping_layers: int
    ) -> None:
        """``channels[l]``: decoder channels at size bottleneck * 2^l, l = 0..depth."""
        super().__init__()
        mlp: list[nn.Module] = [PixelNorm()]
        for _ in range(mapping_layers):
            mlp += [nn.Linear(style_channels, style_channels), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*mlp)
        self.constant_input = nn.Module()
        self.constant_input.weight = nn.Parameter(torch.randn(1, channels[0], bottleneck, bottleneck))
        self.style_conv1 = StyleConv(channels[0], channels[0], style_channels, upsample=False)
        self.to_rgb1 = ToRGB(channels[0], style_channels)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for prev, ch in itertools.pairwise(channels):
            self.style_convs.append(StyleConv(prev, ch, style_channels, upsample=True))
            self.style_convs.append(StyleConv(ch, ch, style_channels, upsample=False))
            self.to_rgbs.append(ToRGB(ch, style_channels))
        self.noises = nn.Module()
        sizes = [bottleneck] + [bottleneck * 2**lvl for lvl in range(1, len(channels)) for _ in range(2)]
        for k, s in enumerate(sizes):
            self.noises.register_buffer(f"noise{k}", torch.randn(1, 1, s, s))

    def forward(
        self, style: Tensor, conditions: list[tuple[Tensor, Tensor]], fresh_noise: bool = False
    ) -> Tensor:
        """``style`` [B, S]; ``conditions[l]`` (scale, shift) at size bottleneck * 2^(l+1) -> [B, 3, R, R].
        ``fresh_noise``: draw new noise in every styled conv instead of the stored buffers."""
        w = self.style_mlp(style)  # [B, S]
        n = 2 * len(self.to_rgbs) + 1
        noise = [None] * n if fresh_noise else [getattr(self.noises, f"noise{k}") for k in range(n)]
        out = self.constant_input.weight.repeat(
            style.shape[0], 1, 1, 1
        )  # a copy: an alias of a Parameter upsets module hooks
        out = self.style_conv1(out, w, noise[0])
        rgb = self.to_rgb1(out, w, None)
        for lvl, to_rgb in enumerate(self.to_rgbs):
            out = self.style_convs[2 * lvl](out, w, noise[2 * lvl + 1])
            scale, shift = conditions[lvl]
            out = out * scale + shift  # spatial feature transform on every channel
            out = self.style_convs[2 * lvl + 1](out, w, noise[2 * lvl + 2])
            rgb = to_rgb(out, w, rgb)
        return rgb


def _condition(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(channels, out_channels, 3, padding=1),
    )


class StyleUNetRefiner(nn.Module):
    """Render [B, C, H, W] -> image [B, 3, H, W] in [0, 1]; see the module docstring."""

    def __init__(self, config: StyleUNetConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.fresh_noise = config.compat == "official"
        self.in_channels = context.feature_channels
        r, depth = config.resolution, config.depth
        self.bottleneck = r // 2**depth
        sizes = [r // 2**i for i in range(depth + 1)]  # r ... bottleneck

        def unet(size: int) -> int:
            return min(config.max_width, config.width * (r // size))

        self.conv_body_first = nn.Conv2d(self.in_channels, unet(r), 1)
        self.conv_body_down = nn.ModuleList(
            ResBlock(unet(a), unet(b), 0.5) for a, b in itertools.pairwise(sizes)
        )
        self.final_conv = nn.Conv2d(unet(self.bottleneck), unet(self.bottleneck), 3, padding=1)
        self.final_linear = nn.Linear(unet(self.bottleneck) * self.bottleneck**2, config.style_channels)
        up = sizes[::-1]  # bottleneck ... r
        self.conv_body_up = nn.ModuleList(ResBlock(unet(a), unet(b), 2.0) for a, b in itertools.pairwise(up))
        decoder = [2 * unet(s) for s in up]
        self.condition_scale = nn.ModuleList(_condition(unet(s), d) for s, d in zip(up[1:], decoder[1:]))
        self.condition_shift = nn.ModuleList(_condition(unet(s), d) for s, d in zip(up[1:], decoder[1:]))
        self.stylegan_decoder = StyleDecoder(
            decoder, self.bottleneck, config.style_channels, config.mapping_layers
        )

    def encode(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Features [B, C, R, R] -> style code [B, S] and the SFT (scale, shift) per decoder size."""
        feat = _lrelu(self.conv_body_first(x))
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = _lrelu(self.final_conv(feat))
        style = self.final_linear(feat.flatten(1))  # [B, S]
        conditions = []
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[i])
            conditions.append((self.condition_scale[i](feat), self.condition_shift[i](feat)))
        return style, conditions

    def decode(self, style: Tensor, conditions: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Style code [B, S] + conditions -> image [B, 3, R, R] in [0, 1]."""
        return torch.sigmoid(self.stylegan_decoder(style, conditions, fresh_noise=self.fresh_noise))

    def forward(self, render: Render) -> Tensor:
        x = render.features  # [B, C, H, W]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"style-unet: expected rendered features [B, {self.in_channels}, H, W], got {list(x.shape)}"
            )
        h, w = x.shape[-2:]
        r = self.config.resolution
        if (h, w) != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=h > r or w > r)
        image = self.decode(*self.encode(x))  # [B, 3, R, R]
        if (h, w) != (r, r):
            image = F.interpolate(
                image, size=(h, w), mode="bilinear", align_corners=False, antialias=r > h or r > w
            )
            image = image.clamp(0.0, 1.0)
        return image


@hookimpl
def gshead_register_refiners(register) -> None:
    register.add(StyleUNetConfig, StyleUNetRefiner)


__all__ = [
    "ModulatedConv2d",
    "ResBlock",
    "StyleConv",
    "StyleDecoder",
    "StyleUNetConfig",
    "StyleUNetRefiner",
    "ToRGB",
]
