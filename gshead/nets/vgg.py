"""VGG-16 convolutional features (Simonyan & Zisserman 2015) for perceptual losses and LPIPS.

The module mirrors the ``features`` part of torchvision's ``vgg16`` so its state dict uses the
same keys (``features.0.weight`` ... ``features.28.bias``): ImageNet weights saved by torchvision
load as they are. No weights are downloaded: ``load_vgg16`` reads a local ``.pth``/``.pt``
(``torch.load(weights_only=True)``, never an arbitrary pickle) or ``.safetensors`` file.

Input images are [B, 3, H, W] in [0, 1]; ImageNet normalisation happens inside (the same affine
map LPIPS calls its scaling layer). Outputs are the five ReLU maps the perceptual literature
uses: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# Output channels per conv layer; "M" is a 2x2 max-pool (torchvision's configuration "D").
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
"""Names of the feature maps ``VGG16Features`` returns, in order."""
TAP_CHANNELS = (64, 128, 256, 512, 512)
_TAP_INDICES = (3, 8, 15, 22, 29)  # positions of those ReLUs in ``features``
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """image [B, 3, H, W] in [0, 1] -> the five maps of ``TAPS`` ([B, C_k, H / 2^k, W / 2^k])."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*layers[: _TAP_INDICES[-1] + 1])  # nothing after relu5_3 is used
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = (image - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAP_INDICES:
                out.append(x)
        return tuple(out)


def load_vgg16(path: str | Path) -> VGG16Features:
    """A frozen ``VGG16Features`` (eval mode, no gradients for its weights) from a local file.

    Accepts torchvision's full ``vgg16`` state dict (``classifier.*`` keys are ignored) or the
    features alone, with or without the ``features.`` prefix. One-line ``AvatarFileError`` when the
    file is missing, unreadable, or does not hold VGG-16 features.
    """
    from gshead.core.errors import AvatarFileError
    from gshead.io.weights import read_state_dict, state_dict_problems

    path = Path(path)
    state = read_state_dict(path, "VGG-16 weights file", "torchvision's vgg16 state dict (.pth) or its features in .safetensors")
    state = {k if k.startswith("features.") else f"features.{k}": v for k, v in state.items() if not k.startswith("classifier.")}
    model = VGG16Features()
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise AvatarFileError(f"{path}: not VGG-16 features: " + "; ".join(problems))
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


__all__ = ["TAPS", "TAP_CHANNELS", "VGG16Features", "load_vgg16"]
