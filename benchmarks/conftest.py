"""Scene builders for the rasterizer benchmarks (also loaded by tests/plugins/test_cpu_rasterizer.py).

Head-like layouts, as the avatars render them: most Gaussians on the surface of an ellipsoid
head (a thin shell, small anisotropic splats, mostly opaque), the rest on a plane behind it
(hair / backdrop), seen by a frontal camera that frames the head.

    A = head_scene(50_000, 256, 32)    B = head_scene(180_000, 512, 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from gshead.core.types import Camera, Gaussians

HEAD_RADII = (0.078, 0.105, 0.092)  # metres: half width, half height, half depth of the head
BACK_PLANE_Z = -0.12  # world z of the plane behind the head (the camera looks down -z)


@dataclass(frozen=True)
class Scene:
    name: str
    gaussians: Gaussians  # [1, N]
    camera: Camera  # [1]
    background: torch.Tensor  # [C]

    @property
    def label(self) -> str:
        n, size, c = self.gaussians.count, self.camera.width, self.gaussians.channels
        return f"{self.name}: {n // 1000}k Gaussians, {size}x{size}, {c} channels"


def head_scene(
    count: int, size: int, channels: int, seed: int = 0, back_fraction: float = 0.2, batch: int = 1
) -> tuple[Gaussians, Camera, torch.Tensor]:
    """``count`` Gaussians shaped like a head in front of a plane, a frontal ``size``² camera
    ``[batch]`` and a background ``[channels]``. Splat size scales with 1/sqrt(count) so the
    screen coverage (Gaussians per pixel) stays head-like at any count."""
    g = torch.Generator().manual_seed(seed)
    n_back = int(count * back_fraction)
    n_head = count - n_back

    # Head: uniform directions on the unit sphere, stretched to the ellipsoid, small radial jitter.
    d = torch.randn(n_head, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    jitter = 1.0 + 0.03 * torch.randn(n_head, 1, generator=g)
    head = d * torch.tensor(HEAD_RADII) * jitter
    # Back plane: a rectangle behind the head, wider than it (shoulders / hair / backdrop).
    u = torch.rand(n_back, 2, generator=g) * 2.0 - 1.0
    back = torch.stack(
        [0.16 * u[:, 0], 0.16 * u[:, 1] - 0.02, BACK_PLANE_Z + 0.01 * torch.randn(n_back, generator=g)], dim=1
    )
    means = torch.cat([head, back])  # [N, 3]

    base = 0.0035 * math.sqrt(50_000 / count)  # ~3.5 mm splats at 50k Gaussians
    scales = base * torch.exp(0.4 * torch.randn(count, 3, generator=g))
    scales[:, 2] *= 0.3  # flattened splats, as trained ones tend to be
    quats = torch.randn(count, 4, generator=g)
    quats = quats / quats.norm(dim=1, keepdim=True)
    opacities = torch.sigmoid(1.5 + 1.5 * torch.randn(count, generator=g))  # mostly opaque, some faint
    features = torch.rand(count, channels, generator=g)
    gaussians = Gaussians(means[None], quats[None], scales[None], opacities[None], features[None])
    camera = Camera.frontal(distance=0.6, fov_degrees=30.0, width=size, height=size, batch_size=batch)
    background = torch.rand(channels, generator=g)
    return gaussians.expand(batch), camera, background


SCENES = {
    "A": (50_000, 256, 32),
    "B": (180_000, 512, 32),
}


@pytest.fixture(scope="session", params=sorted(SCENES))
def scene(request) -> Scene:
    count, size, channels = SCENES[request.param]
    gaussians, camera, background = head_scene(count, size, channels)
    return Scene(request.param, gaussians, camera, background)
