"""Built-in driving motion made from a head model's own parameters (``--driver demo``).

Four equal phases: talk (jaw and mouth), smile, blink, head turn. Expression units are looked up
by their ARKit-style names (``jawOpen``, ``mouthSmileLeft``, ...); a model without a unit simply
does not use it.
"""

from __future__ import annotations

import math

import torch

from gshead.core.errors import InputError
from gshead.core.types import HeadParams

PHASES = ("talk", "smile", "blink", "turn")


def _unit(names: tuple[str, ...], name: str) -> int | None:
    return names.index(name) if name in names else None


def demo_motion(head_model, frames: int = 100) -> HeadParams:
    """``frames`` head parameters [frames] cycling through talk, smile, blink and a head turn."""
    if frames < len(PHASES):
        raise InputError(f"--frames: the demo motion needs at least {len(PHASES)} frames, got {frames}")
    params = head_model.neutral(frames)
    names = tuple(head_model.expression_names)
    expr = params.expression.clone()
    jaw = params.jaw.clone()
    rot = params.rotation.clone()
    t = torch.arange(frames, dtype=torch.float32)
    phase = torch.clamp((t * len(PHASES) / frames).long(), max=len(PHASES) - 1)
    # Position inside the phase, 0..1, and a bump that starts and ends at rest.
    local = (t * len(PHASES) / frames) - phase.float()
    bump = torch.sin(math.pi * local)

    talk = phase == 0
    syllables = 0.5 - 0.5 * torch.cos(2 * math.pi * 3 * local)  # three open-close cycles
    jaw[talk, 0] = 0.30 * syllables[talk]
    if (i := _unit(names, "jawOpen")) is not None:
        expr[talk, i] = 0.6 * syllables[talk]
    if (i := _unit(names, "mouthFunnel")) is not None:
        expr[talk, i] = 0.3 * syllables[talk]

    smile = phase == 1
    for name in ("mouthSmileLeft", "mouthSmileRight"):
        if (i := _unit(names, name)) is not None:
            expr[smile, i] = bump[smile]

    blink = phase == 2
    closed = (1.6 * torch.sin(2 * math.pi * 2 * local) ** 2).clamp(max=1)  # two blinks, held shut briefly
    for name in ("eyeBlinkLeft", "eyeBlinkRight"):
        if (i := _unit(names, name)) is not None:
            expr[blink, i] = closed[blink]

    turn = phase == 3
    rot[turn, 1] = math.radians(25.0) * torch.sin(2 * math.pi * local[turn])  # yaw left then right

    return params.replace(expression=expr, jaw=jaw, rotation=rot)
