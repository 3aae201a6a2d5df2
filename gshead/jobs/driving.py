"""Relative driving: a driving signal applied as offsets from the source portrait's own
expression and pose, so the avatar starts from the portrait as it was fitted.

For frames ``params`` [T] of a driving signal whose rest (its reference) is ``reference`` [1]
and a source ``source`` [1] (the avatar's fitted parameters)::

    expression = source + (frame - reference)          (likewise translation)
    R_head     = R_frame · R_reference⁻¹ · R_source     (rotations composed, not added;
    R_jaw, R_eye likewise)                                 axis-angle in, axis-angle out)

so a frame equal to the reference reproduces the source exactly. The reference of the demo
motion is the head model's neutral (the demo starts there); that of a tracked sequence, a video
or ARKit curves is their first frame. Identity is not touched: driving always keeps the
avatar's identity (``drive_frames`` replaces it).

``HeadParams.root`` (a rotation of the mesh about its root joint, e.g. FLAME's global pose; None
means none) is composed like ``R_jaw`` when any of the three carries one, else left None.
"""

from __future__ import annotations

import roma
import torch

from gshead.core.errors import ShapeError
from gshead.core.types import HeadParams

__all__ = ["relative_to_source"]


def _compose(frame: torch.Tensor, reference: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Axis-angle [T, 3]: R(frame) · R(reference)ᵀ · R(source), with reference/source [1, 3]."""
    if not reference.any() and not source.any():  # both identity: the frame as it is, bit for bit
        return frame
    rot = roma.rotvec_to_rotmat
    out = rot(frame) @ rot(reference).transpose(-1, -2) @ rot(source)  # [T, 3, 3]
    return roma.rotmat_to_rotvec(out)


def relative_to_source(params: HeadParams, source: HeadParams, reference: HeadParams) -> HeadParams:
    """``params`` [T] re-expressed as offsets from ``reference`` [1] applied to ``source`` [1]."""
    if source.batch_size != 1 or reference.batch_size != 1:
        raise ShapeError(
            f"relative driving: expected one source and one reference frame, got {source.batch_size} "
            f"and {reference.batch_size}"
        )
    if params.expression.shape[1] != source.expression.shape[1]:
        raise ShapeError(
            f"relative driving: the signal has {params.expression.shape[1]} expression units, "
            f"the source {source.expression.shape[1]}"
        )
    src, ref = source.to(params.expression.device), reference.to(params.expression.device)
    eyes = torch.cat(
        [_compose(params.eyes[:, i : i + 3], ref.eyes[:, i : i + 3], src.eyes[:, i : i + 3]) for i in (0, 3)], dim=1
    )
    root = None
    if any(p.root is not None for p in (params, src, ref)):
        def _root(p: HeadParams) -> torch.Tensor:
            return p.root if p.root is not None else torch.zeros_like(p.jaw)

        root = _compose(_root(params), _root(ref), _root(src))
    return params.replace(
        root=root,
        expression=src.expression + (params.expression - ref.expression),
        jaw=_compose(params.jaw, ref.jaw, src.jaw),
        eyes=eyes,
        rotation=_compose(params.rotation, ref.rotation, src.rotation),
        translation=src.translation + (params.translation - ref.translation),
    )
