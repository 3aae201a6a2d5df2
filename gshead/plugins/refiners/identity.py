"""``identity``: no refinement; the final image is the rendered RGB channels (0..2), clamped."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import RefinerConfig
from gshead.core.errors import ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Render


class IdentityRefinerConfig(RefinerConfig):
    """No refinement: the image is the rendered RGB channels, clamped to [0, 1]."""

    name: Literal["identity"] = "identity"


class IdentityRefiner(nn.Module):
    """Render [B, C >= 3, H, W] -> image [B, 3, H, W] in [0, 1]; has no weights."""

    def __init__(self, config: IdentityRefinerConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, render: Render) -> Tensor:
        features = render.features  # [B, C, H, W]
        if features.dim() != 4 or features.shape[1] < 3:
            raise ShapeError(
                f"identity: expected rendered features [B, C>=3, H, W], got {list(features.shape)}"
            )
        return features[:, :3].clamp(0.0, 1.0)  # [B, 3, H, W]


@hookimpl
def gshead_register_refiners(register) -> None:
    register.add(IdentityRefinerConfig, IdentityRefiner)
