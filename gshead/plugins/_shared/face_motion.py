"""Which triangles of a head model move with expression, and which region (eyes, mouth, rest) moves them.

Shared by the ``mesh-anchored`` lifter (it anchors static Gaussians on the triangles that do not
move) and the ``light-control`` driver (it puts dynamic Gaussians on the ones that do, one control
head per region). Both read the same table, so with the same ``motion_threshold`` the two halves
partition the mesh.

How it is measured (``face_motion``), for any head model: the model is evaluated once for a batch
of probes - each expression unit at 1, the jaw opened and turned by ``PROBE_ANGLE`` radians, both
eyes turned by ``PROBE_ANGLE`` - and each vertex's largest displacement is measured as a fraction of
the head's size (the template's bounding-box diagonal). Probes are grouped (eyes, mouth, rest, see
``expression_groups``) so the driver can give each region its own control head. A triangle's
motion is the largest of its corners'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gshead.core.components import HeadModel
from gshead.core.types import HeadParams

__all__ = [
    "EYES",
    "GROUP_NAMES",
    "MOUTH",
    "PROBE_ANGLE",
    "REST",
    "expression_groups",
    "face_motion",
]

PROBE_ANGLE = 0.2
"""Radians by which the motion probes open/turn the jaw and turn the eyes."""

EYES, MOUTH, REST = 0, 1, 2
GROUP_NAMES: tuple[str, ...] = ("eyes", "mouth", "rest")
_EYE_PREFIXES = ("eye",)
_MOUTH_PREFIXES = ("mouth", "jaw", "tongue", "lip")


def expression_groups(names: tuple[str, ...]) -> tuple[list[int], list[int], list[int]]:
    """Indices of the expression units conditioning the eyes, mouth and rest heads.

    With ARKit-style names (at least one starting with ``eye`` or ``mouth``/``jaw``, any case):
    ``eye*`` units (blink, look, squint, wide) go to the eyes, ``mouth*``/``jaw*``/``tongue*``/``lip*``
    to the mouth, everything else (brows, cheeks, nose, ...) to the rest. Otherwise (e.g. FLAME's
    unnamed PCA units) the first half of the units goes to the mouth (PCA orders by variance and the
    largest components of talking faces are mouth motion) and the second half to the rest; the eyes
    head then sees only the eyeball rotations.
    """
    lower = [n.lower() for n in names]
    named = any(n.startswith(_EYE_PREFIXES + _MOUTH_PREFIXES) for n in lower)
    if not named:
        half = (len(names) + 1) // 2
        return [], list(range(half)), list(range(half, len(names)))
    eyes = [i for i, n in enumerate(lower) if n.startswith(_EYE_PREFIXES)]
    mouth = [i for i, n in enumerate(lower) if n.startswith(_MOUTH_PREFIXES)]
    taken = set(eyes) | set(mouth)
    return eyes, mouth, [i for i in range(len(names)) if i not in taken]


@torch.no_grad()
def face_motion(head_model: HeadModel) -> Tensor:
    """How far each triangle moves with the eyes, mouth and rest probes: [F, 3] fractions of head size.

    Uses only the ``HeadModel`` protocol (``neutral``, ``forward``, ``faces``, ``template``,
    ``expression_names``), evaluated once on a batch of probes at the template identity.
    """
    groups = expression_groups(tuple(head_model.expression_names))
    base = head_model.neutral(1)
    probes: list[tuple[int, HeadParams]] = []

    def probe(group: int, **changes: Tensor) -> None:
        probes.append((group, base.replace(**changes)))

    a = PROBE_ANGLE
    for axis in (0, 1):  # both eyes up/down, then left/right
        eyes = torch.zeros(1, 6)
        eyes[0, axis] = eyes[0, 3 + axis] = a
        probe(EYES, eyes=eyes.to(base.eyes))
    for axis in (0, 1):  # jaw open, jaw sideways
        jaw = torch.zeros(1, 3)
        jaw[0, axis] = a
        probe(MOUTH, jaw=jaw.to(base.jaw))
    for group, units in enumerate(groups):
        for i in units:
            expression = base.expression.clone()
            expression[0, i] = 1.0
            probe(group, expression=expression)

    params = HeadParams(
        **{k: torch.cat([p.tensors()[k] for _, p in probes] + [base.tensors()[k]]) for k in base.tensors()}
    )
    verts = head_model(params).vertices  # [P + 1, V, 3]
    moved = (verts[:-1] - verts[-1:]).norm(dim=-1)  # [P, V]
    template = head_model.template
    size = (template.amax(0) - template.amin(0)).norm().clamp_min(1e-12)
    per_vertex = torch.zeros(3, moved.shape[1], dtype=moved.dtype, device=moved.device)
    for k, (group, _) in enumerate(probes):
        per_vertex[group] = torch.maximum(per_vertex[group], moved[k])
    corners = per_vertex[:, head_model.faces.long()]  # [3, F, 3 corners]
    return (corners.amax(-1) / size).T.contiguous()  # [F, 3]
