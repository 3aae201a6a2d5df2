"""ArcFace's IResNet (Deng et al.; insightface ``recognition/arcface_torch``), for CSIM.

Written from the published architecture; parameter names follow the public ``arcface_torch``
checkpoints (``conv1.weight``, ``bn1.*``, ``prelu.weight``, ``layer{1..4}.{j}.{bn1,conv1,bn2,prelu,
conv2,bn3,downsample.0,downsample.1}.*``, ``bn2.*``, ``fc.*``, ``features.*``), so a converted
``backbone.pth`` (``torch.load(weights_only=True)`` then ``safetensors.torch.save_file``) or the
``.pth`` itself loads strictly. The depth (r18/r34/r50/r100/r200) is read from the keys.

Input: aligned face crops [B, 3, 112, 112] normalised to [-1, 1] (``IResNet.embed`` takes [0, 1]
images of any size and resizes); output: 512-d embeddings.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from gshead.core.errors import AvatarFileError

INPUT_SIZE = 112
"""Side of the face crop ArcFace expects, in pixels."""


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN, + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """IResNet with ``layers`` blocks per stage (r50: (3, 4, 14, 3), r100: (3, 13, 30, 3))."""

    def __init__(self, layers: tuple[int, int, int, int], embedding: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            blocks = [IBasicBlock(inplanes, planes, 2)] + [
                IBasicBlock(planes, planes, 1) for _ in range(n - 1)
            ]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        side = INPUT_SIZE // 16
        self.fc = nn.Linear(512 * side * side, embedding)
        self.features = nn.BatchNorm1d(embedding, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings [B, D] of normalised crops ``x`` [B, 3, 112, 112] in [-1, 1]."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Embeddings [B, D] of images [B, 3, H, W] in [0, 1] (resized to 112 x 112, then to [-1, 1])."""
        from gshead.metrics.image import to_size

        x = to_size(images.float().clamp(0, 1), (INPUT_SIZE, INPUT_SIZE))
        return self(x * 2.0 - 1.0)


def depth_from_keys(keys) -> tuple[int, int, int, int]:
    """Blocks per stage, counted from ``layer{i}.{j}.conv1.weight`` keys."""
    counts = [0, 0, 0, 0]
    for key in keys:
        m = re.fullmatch(r"layer([1-4])\.(\d+)\.conv1\.weight", key)
        if m:
            stage, j = int(m[1]) - 1, int(m[2])
            counts[stage] = max(counts[stage], j + 1)
    return tuple(counts)  # type: ignore[return-value]


def load_iresnet(path: str | Path) -> IResNet:
    """An ArcFace IResNet from a safetensors or ``.pth`` state dict (``weights_only=True``), in eval
    mode; ``AvatarFileError`` (one line) when the file is missing, unreadable or does not fit."""
    from gshead.io.weights import read_state_dict

    path = Path(path)
    state = read_state_dict(path, "identity-model file", "an ArcFace IResNet state dict (.pth or .safetensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    layers = depth_from_keys(state)
    if min(layers) == 0 or "fc.weight" not in state:
        raise AvatarFileError(
            f"{path}: not an ArcFace IResNet state dict (expected keys conv1.weight, layer1.0.conv1.weight, ..., fc.weight)"
        )
    model = IResNet(layers, embedding=int(state["fc.weight"].shape[0]))
    for key, value in model.state_dict().items():  # some exports drop BatchNorm's step counters
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    from gshead.io.weights import state_dict_problems

    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise AvatarFileError(f"{path}: does not fit IResNet{list(layers)}: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise AvatarFileError(f"{path}: does not fit IResNet{list(layers)} ({first[:160]})") from None
    return model.eval().requires_grad_(False)
