"""GAGAvatar's view-direction code, shared by the ``dual-plane`` lifter and the ``expression-gaussians`` driver.

The direction is the source camera's *forward* axis ``d`` [B, 3] in the world frame (the unit
vector from the camera into the scene; ``forward_direction``), as in the official code
(``plane_dirs = R @ [0, 0, 1]``). It is harmonic-encoded with ``HARMONIC_FREQUENCIES`` = 4
frequencies (1, 2, 4, 8) in pytorch3d's ``HarmonicEmbedding`` layout, which GAGAvatar uses:

    [sin(d_x), sin(2 d_x), sin(4 d_x), sin(8 d_x), sin(d_y), ..., sin(8 d_z),   # 12 sines, coordinate-major
     cos(d_x), ..., cos(8 d_z),                                                 # 12 cosines, same order
     d_x, d_y, d_z]                                                             # the direction itself

3 x 2 x 4 + 3 = 27 values (``DIRECTION_CODE``). Both components append it to the features their
heads read, so their input widths, this layout and GAGAvatar's weights belong together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DIRECTION_CODE", "HARMONIC_FREQUENCIES", "direction_code", "forward_direction"]

HARMONIC_FREQUENCIES = 4
"""Frequencies of the harmonic code of the view direction (GAGAvatar: 4)."""
DIRECTION_CODE = 3 + 3 * 2 * HARMONIC_FREQUENCIES  # 27
"""Length of the code of a 3-vector direction."""


def forward_direction(camera) -> Tensor:
    """[B, 3] unit forward (optical) axes of ``camera`` (a ``gshead.core.types.Camera``, OpenCV
    world-to-camera) in the world frame: row 2 of each rotation, pointing from the camera into the scene."""
    return F.normalize(camera.world_to_camera[:, 2, :3], dim=-1)


def direction_code(direction: Tensor) -> Tensor:
    """[..., 3] directions -> [..., 27] their harmonic code (pytorch3d layout, module docstring)."""
    freqs = 2.0 ** torch.arange(HARMONIC_FREQUENCIES, dtype=direction.dtype, device=direction.device)
    angles = (direction[..., None] * freqs).flatten(-2)  # [..., 12] coordinate-major, then frequency
    return torch.cat([angles.sin(), angles.cos(), direction], dim=-1)
