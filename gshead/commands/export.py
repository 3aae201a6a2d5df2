"""``gshead export``: an avatar at a chosen expression and pose, as a standard 3DGS ``.ply``.

    gshead export AVATAR -o head.ply [--expression NAME=VALUE ...] [--jaw R] [--eyes 6 values]
                                     [--pose RX RY RZ] [--translation TX TY TZ] [--sh-degree 3|0]

The avatar's driver poses its rig for the head parameters (the avatar's own identity, neutral
unless told otherwise); the static and the posed Gaussians are written together. Driving applies
the head pose as camera motion; a file has no camera, so here the pose moves the Gaussians
themselves (means rotated and translated, rotations composed; see ``gshead.jobs.posing``). With
no ``--pose`` the head sits in its model space (y up, looking along +z), which is what viewers
expect. See ``gshead.io.ply`` for the file layout.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import torch

from gshead.core.errors import InputError, require_number
from gshead.core.types import HeadParams
from gshead.jobs.posing import export_gaussians

if TYPE_CHECKING:
    from gshead.io.avatar import LoadedAvatar


TRANSLATION_LIMIT = 1000.0  # |--translation| in model units


def export_params(
    loaded: LoadedAvatar,
    expression: dict[str, float] | None = None,
    jaw: float = 0.0,
    eyes: list[float] | None = None,
    pose_degrees: list[float] | None = None,
    translation: list[float] | None = None,
) -> HeadParams:
    """Neutral parameters of the avatar's head model with the named expression values, jaw
    opening (radians, about +x), eye rotations (6 axis-angle values, radians), head rotation
    (axis-angle in degrees) and translation (model units). Unknown expression name: InputError."""
    from gshead.commands.headmodel import ANGLE_LIMIT, head_params

    params = head_params(loaded.head_model, expression, None, jaw)
    changes = {}
    for name, flag, values, size, scale, limit, unit in (
        ("eyes", "--eyes", eyes, 6, 1.0, ANGLE_LIMIT, "radians"),
        ("rotation", "--pose", pose_degrees, 3, math.pi / 180.0, 360.0, "degrees"),
        ("translation", "--translation", translation, 3, 1.0, TRANSLATION_LIMIT, "model units"),
    ):
        if values is None:
            continue
        if len(values) != size:
            raise InputError(f"{flag}: expected {size} numbers, got {len(values)}")
        values = [require_number(v, flag, -limit, limit, unit) for v in values]
        changes[name] = torch.tensor([[v * scale for v in values]], dtype=params.rotation.dtype)
    return params.replace(**changes)


def export(
    avatar_path: str,
    output: str,
    expression: dict[str, float] | None = None,
    jaw: float = 0.0,
    eyes: list[float] | None = None,
    pose_degrees: list[float] | None = None,
    translation: list[float] | None = None,
    sh_degree: int = 3,
) -> int:
    """Load ``avatar_path``, pose it, write ``output`` (.ply) atomically; returns the Gaussian count."""
    from gshead.io.avatar import load_avatar
    from gshead.io.media import check_output
    from gshead.io.ply import write_ply

    check_output(output, accepts=(".ply",), inputs=(avatar_path,), what="a PLY file")
    loaded = load_avatar(avatar_path)
    params = export_params(loaded, expression, jaw, eyes, pose_degrees, translation)
    gaussians = export_gaussians(loaded, params)
    write_ply(output, gaussians, sh_degree=sh_degree)
    return gaussians.count


def cmd_export(args) -> int:
    from gshead.commands.headmodel import parse_assignments

    count = export(
        args.avatar,
        args.output,
        expression=parse_assignments(args.expression, "--expression", as_float=True),
        jaw=args.jaw,
        eyes=args.eyes,
        pose_degrees=args.pose,
        translation=args.translation,
        sh_degree=args.sh_degree,
    )
    print(f"wrote {args.output}: {count} Gaussians (SH degree {args.sh_degree})", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Add ``export`` to the ``gshead`` subcommands."""
    p = subparsers.add_parser("export", help="write an avatar at a chosen expression as a standard 3DGS .ply")
    p.add_argument("avatar", help="avatar file written by 'gshead reconstruct'")
    p.add_argument("-o", "--output", required=True, help="PLY file to write")
    p.add_argument(
        "--expression", action="append", default=[], metavar="NAME=VALUE",
        help="expression unit value, names from 'gshead headmodel info' (repeatable)",
    )  # fmt: skip
    p.add_argument("--jaw", type=float, default=0.0, help="jaw opening in radians (default 0)")
    p.add_argument(
        "--eyes",
        type=float,
        nargs=6,
        default=None,
        metavar="R",
        help="left then right eye rotation, axis-angle radians",
    )
    p.add_argument(
        "--pose",
        type=float,
        nargs=3,
        default=None,
        metavar="DEG",
        help="head rotation, axis-angle in degrees (x pitch, y yaw, z roll)",
    )
    p.add_argument(
        "--translation",
        type=float,
        nargs=3,
        default=None,
        metavar="T",
        help="head translation in model units",
    )
    p.add_argument(
        "--sh-degree", type=int, choices=(0, 3), default=3,
        help="3 (default): 45 zero f_rest values, opened by every viewer incl. the original "
        "3DGS/SIBR; 0: no f_rest, smaller, for web viewers",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)
