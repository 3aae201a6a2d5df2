"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"), written from its definition.

For images x, y and a frozen backbone giving L feature maps f_l [B, C_l, h_l, w_l]:

    d(x, y) = sum_l  mean_{h,w}  sum_c  w_{l,c} * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2_{c,h,w}

where |f| is the Euclidean norm over channels at each pixel (plus 1e-10, as in the official code)
and w_l >= 0 are the learned 1x1 "lin" weights of layer l. The backbone is VGG16
(``gshead.nets.vgg``: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of an input in [0, 1] with
ImageNet normalisation, which equals the official LPIPS scaling layer on [-1, 1] inputs).

The lin weights come from a local file in the official ``lpips`` package layout
(``lpips/weights/v0.1/vgg.pth``: ``lin0.model.1.weight`` ... ``lin4.model.1.weight``, each
[1, C_l, 1, 1]), read with ``torch.load(weights_only=True)``, or the same keys in a safetensors
file. There is no fallback: without both files LPIPS is not computed (never with random weights).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from gshead.core.errors import AvatarFileError, ShapeError

EPS = 1e-10
"""Added to each feature vector's norm before dividing (as in the official implementation)."""

VGG16_CHANNELS = (64, 128, 256, 512, 512)
"""Channels of VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the lin weights' sizes."""


def normalize_channels(features: Tensor) -> Tensor:
    """``features`` [B, C, h, w] divided by their Euclidean norm over C at each pixel (+ ``EPS``)."""
    norm = torch.sqrt((features * features).sum(dim=1, keepdim=True))  # [B, 1, h, w]
    return features / (norm + EPS)


class LPIPS(nn.Module):
    """Learned perceptual distance per image pair: ``forward(x, y) -> [B]`` (0 for identical images).

    :param backbone: frozen module mapping images [B, 3, H, W] in [0, 1] to a tuple of L feature maps
    :param lin: L non-negative weights, ``lin[l]`` [1, C_l, 1, 1]
    """

    def __init__(self, backbone: nn.Module, lin: list[Tensor] | tuple[Tensor, ...]) -> None:
        super().__init__()
        for i, w in enumerate(lin):
            if w.dim() != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
                raise ShapeError(f"LPIPS: lin{i} weight must have shape [1, C, 1, 1], got {list(w.shape)}")
            if bool((w < 0).any()):
                raise ShapeError(
                    f"LPIPS: lin{i} weight has negative entries; expected learned non-negative weights"
                )
        self.backbone = backbone.eval().requires_grad_(False)
        self.lin = nn.ParameterList(
            [nn.Parameter(w.detach().float().clone(), requires_grad=False) for w in lin]
        )

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(int(w.shape[1]) for w in self.lin)

    def layer_distances(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-layer distances [B, L] (their sum over L is the LPIPS distance)."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ShapeError(
                f"LPIPS: expected two images of one shape [B, 3, H, W], got {list(x.shape)} and {list(y.shape)}"
            )
        fx, fy = self.backbone(x), self.backbone(y)
        if len(fx) != len(self.lin):
            raise ShapeError(
                f"LPIPS: the backbone gave {len(fx)} feature maps; the lin weights expect {len(self.lin)}"
            )
        out = []
        for i, (a, b, w) in enumerate(zip(fx, fy, self.lin)):
            if a.shape[1] != w.shape[1]:
                raise ShapeError(f"LPIPS: layer {i} has {a.shape[1]} channels; lin{i} expects {w.shape[1]}")
            diff = (normalize_channels(a) - normalize_channels(b)) ** 2  # [B, C_l, h, w]
            weighted = (diff * w).sum(dim=1)  # the 1x1 convolution without bias: [B, h, w]
            out.append(weighted.mean(dim=(1, 2)))  # [B]
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance per pair [B]; ``x``, ``y`` [B, 3, H, W] in [0, 1]."""
        return self.layer_distances(x.float().clamp(0, 1), y.float().clamp(0, 1)).sum(dim=1)


def load_lin_weights(path: str | Path, layers: int = len(VGG16_CHANNELS)) -> list[Tensor]:
    """The lin weights ``lin0..lin{layers-1}`` [1, C, 1, 1] from an official ``vgg.pth`` (read
    with ``weights_only=True``) or a safetensors file with the same keys; ``AvatarFileError``
    (one line) when the file is missing, unreadable or lacks a layer."""
    from gshead.io.weights import read_state_dict

    path = Path(path)
    state = read_state_dict(path, "LPIPS lin-weights file", "the lpips package's vgg.pth (or the same keys in .safetensors)")
    out = []
    for i in range(layers):
        for key in (f"lin{i}.model.1.weight", f"lin{i}.weight"):
            if key in state:
                out.append(state[key])
                break
        else:
            raise AvatarFileError(
                f"{path}: no key 'lin{i}.model.1.weight'; expected the official LPIPS lin-layer layout"
            )
    for i, (w, c) in enumerate(
        zip(out, VGG16_CHANNELS if layers == len(VGG16_CHANNELS) else [None] * layers)
    ):
        if c is not None and tuple(w.shape) != (1, c, 1, 1):
            raise AvatarFileError(
                f"{path}: lin{i} has shape {list(w.shape)}; expected [1, {c}, 1, 1] for VGG16"
            )
    return out


def load_lpips(backbone_path: str | Path, lin_path: str | Path) -> LPIPS:
    """LPIPS-VGG from a local VGG16 backbone file (see ``gshead.nets.vgg.load_vgg16``) and lin weights."""
    from gshead.nets.vgg import load_vgg16

    return LPIPS(load_vgg16(backbone_path), load_lin_weights(lin_path))
