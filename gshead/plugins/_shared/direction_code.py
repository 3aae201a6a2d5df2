"""GAGAvatar's view-direction code, shared by the ``dual-plane`` lifter and the ``expression-gaussians`` driver.

The source camera's view direction ``d`` [B, 3] (``gshead.core.geometry.view_direction``: the unit
vector from the world origin towards the camera along its optical axis) is harmonic-encoded with
``HARMONIC_FREQUENCIES`` = 4 frequencies (``gshead.core.geometry.harmonic_encoding``):
``[d, sin(d), cos(d), sin(2d), cos(2d), ..., sin(8d), cos(8d)]``, 3 + 3 x 2 x 4 = 27 values
(``DIRECTION_CODE``). Both components append it to the features their heads read, so their input
widths (and GAGAvatar's weights) depend on these two constants.
"""

from __future__ import annotations

from torch import Tensor

from gshead.core.geometry import harmonic_encoding

__all__ = ["DIRECTION_CODE", "HARMONIC_FREQUENCIES", "direction_code"]

HARMONIC_FREQUENCIES = 4
"""Frequencies of the harmonic code of the view direction (GAGAvatar: 4)."""
DIRECTION_CODE = 3 + 3 * 2 * HARMONIC_FREQUENCIES  # 27
"""Length of the code of a 3-vector direction."""


def direction_code(direction: Tensor) -> Tensor:
    """[..., 3] view directions -> [..., 27] their harmonic code (layout in the module docstring)."""
    return harmonic_encoding(direction, HARMONIC_FREQUENCIES)
