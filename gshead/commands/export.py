"""``gshead export``: an avatar at a chosen expression and pose, as a 3DGS ``.ply``, a ``.splat``
or a Niantic ``.spz`` (the format is chosen by the output's extension).

    gshead export AVATAR -o head.ply|head.splat|head.spz [--up -y|y] [--scale S]
                  [--expression NAME=VALUE ...] [--jaw R] [--eyes 6 values]
                  [--pose RX RY RZ] [--translation TX TY TZ] [--sh-degree 3|0]
                  [--spz-version 3|4] [--layers head|all] [--device cpu|cuda|auto] [--json]

The avatar's driver poses its rig for the head parameters (the avatar's own identity, neutral
unless told otherwise); the static and the posed Gaussians are written together. Driving applies
the head pose as camera motion; a file has no camera, so here the pose moves the Gaussians
themselves (means rotated and translated, rotations composed; see ``gshead.jobs.posing``).

Orientation (``--up``): by default a ``.ply`` or ``.splat`` is in the original 3DGS tools'
convention, the OpenCV camera frame (x right, y down, z forward) that SuperSplat and gsplat.js
assume: the head is upright there, its face towards -z. ``--up y`` writes gshead's own y-up world
(face towards +z) for y-up viewers. A ``.spz`` defaults to ``--up y``: the SPZ format stores RUB
(x right, y up, z back), which is gshead's y-up world, and its loaders convert from that
(``gshead.io.spz``); ``--up=-y`` writes the OpenCV frame unconverted, for viewers that read a .spz
like a .ply. ``--scale`` multiplies positions and sizes: gshead's units are metres (a head is about
0.25 m), so ``--scale 10`` suits viewers whose default camera expects scenes about a unit across.

Beside the output, ``NAME.camera.json`` holds the camera gshead renders these parameters from (the
avatar's source camera) in the same convention and scale: position, target, up, field of view,
image size, intrinsics and the 4x4 world-to-camera matrix (``gshead.jobs.posing.export_camera``),
so a viewer can open at the portrait's view. File layouts: ``gshead.io.ply``, ``gshead.io.splat``,
``gshead.io.spz`` (version 3 by default, read by every SPZ loader; ``--spz-version 4``, the
reference library's newer zstd layout, needs the ``zstandard`` package).

``--layers`` (``gshead.jobs.layers``): ``head`` (the default) writes the head's Gaussians (face,
hair, neck; an avatar built with ``torso: still`` keeps its shoulders and chest as a layer of
their own, left out here: ``gshead.jobs.layers.TORSO_WEIGHT``); ``all`` also writes the torso and the portrait's
background, which an avatar built with ``background: static`` keeps as an image, as a 128x128
lattice of flat, opaque splats on a plane behind the head (10% beyond its farthest Gaussian, seen
from the source camera), unprojected through the source camera so that from ``NAME.camera.json``
it fills the view as gshead's composite does. An avatar without one (``background: lifted``,
whose background is in the head's Gaussians already) writes the head (and torso) only and says so
in one note line.

``--device`` (cpu, the default; cuda; auto) is where the driver poses the Gaussians.

``--driver demo|SEQ|VIDEO|CURVES -o DIR`` writes an animated export instead, a folder: the static
Gaussians once, then per frame the head pose and the dynamic Gaussians' centres and rotations
(layout: ``gshead.io.animation``; ``gshead.commands._animated``), played by ``gshead view DIR``.
"""

from __future__ import annotations

import json
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
FORMATS = (".ply", ".splat", ".spz")


def default_up(output: str) -> str:
    """The ``--up`` a format gets when none is given: ``y`` (RUB, the SPZ convention) for .spz,
    ``-y`` (OpenCV, the 3DGS tools' convention) for .ply and .splat."""
    return "y" if output.lower().endswith(".spz") else "-y"


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
    up: str | None = None,
    scale: float = 1.0,
    spz_version: int | None = None,
    device: str = "cpu",
    layers: str = "head",
) -> int:
    """Load ``avatar_path``, pose it, write ``output`` (.ply, .splat or .spz) and its
    ``.camera.json`` atomically; returns the Gaussian count. ``up`` None: ``default_up(output)``."""
    import json

    from gshead.commands._device import loaded_to, resolve_device
    from gshead.commands._views import head_centre
    from gshead.io.avatar import load_avatar
    from gshead.io.media import atomic_output, check_output
    from gshead.jobs.posing import check_scale, export_camera, frame_matrix, to_export_frame

    check_output(output, accepts=FORMATS, inputs=(avatar_path,), what="a .ply, .splat or .spz file")
    is_spz = output.lower().endswith(".spz")
    if spz_version is not None and not is_spz:
        raise InputError(f"--spz-version {spz_version}: applies to a .spz output only, got {output}")
    if is_spz:
        from gshead.io.spz import DEFAULT_VERSION, VERSIONS, zstandard_module

        spz_version = DEFAULT_VERSION if spz_version is None else spz_version
        if spz_version not in VERSIONS:
            raise InputError(f"--spz-version {spz_version}: expected one of {', '.join(map(str, VERSIONS))}")
        if spz_version == 4:
            zstandard_module()  # name a missing package before the (slow) load
    up = default_up(output) if up is None else up
    frame_matrix(up), check_scale(scale)  # refuse a bad --up or --scale before the (slow) load
    from gshead.jobs.layers import LAYERS, export_layers

    if layers not in LAYERS:
        raise InputError(f"--layers {layers!r}: expected one of {', '.join(LAYERS)}")
    where = resolve_device(device)
    camera_path = camera_json_path(output)
    check_output(camera_path, accepts=(".json",), inputs=(avatar_path,), what="the camera JSON")
    loaded = loaded_to(load_avatar(avatar_path), where)
    params = export_params(loaded, expression, jaw, eyes, pose_degrees, translation).to("cpu")
    gaussians = export_gaussians(loaded, params.to(where)).to("cpu")
    background = loaded.avatar.background  # --layers all: a lattice behind the head (gshead.jobs.layers)
    body = loaded.avatar.body
    gaussians, note = export_layers(gaussians, layers, background, loaded.avatar.camera.to("cpu"), body)
    if note:
        print(f"note: {note}", file=sys.stderr)
    gaussians = to_export_frame(gaussians, up, scale)
    centre = head_centre(loaded).to("cpu", params.rotation.dtype)  # the head's centre, posed like the head
    centre = params.pose_matrix()[0, :3, :3] @ centre + params.translation[0]
    camera = export_camera(loaded.avatar.camera.to("cpu"), centre, up, scale)
    if is_spz:
        from gshead.io.spz import write_spz

        write_spz(output, gaussians, version=spz_version)
    elif output.lower().endswith(".splat"):
        from gshead.io.splat import write_splat

        write_splat(output, gaussians)
    else:
        from gshead.io.ply import write_ply

        write_ply(output, gaussians, sh_degree=sh_degree)
    with atomic_output(camera_path) as tmp:
        tmp.write_text(json.dumps(camera, indent=2) + "\n", encoding="utf-8")
    return gaussians.count


def camera_json_path(output: str):
    """``head.ply`` -> ``head.camera.json`` beside it."""
    from pathlib import Path

    path = Path(output)
    return path.with_name(path.stem + ".camera.json")


def cmd_export(args) -> int:
    from gshead.commands.headmodel import parse_assignments

    if args.driver is not None and args.layers != "head":
        raise InputError(f"--layers {args.layers}: applies to a single-frame export, not with --driver")
    if args.driver is not None:  # an animated export: a folder (gshead.commands._animated)
        from gshead.commands._animated import cmd_export_animation

        return cmd_export_animation(args)
    count = export(
        args.avatar,
        args.output,
        expression=parse_assignments(args.expression, "--expression", as_float=True),
        jaw=args.jaw,
        eyes=args.eyes,
        pose_degrees=args.pose,
        translation=args.translation,
        sh_degree=args.sh_degree,
        up=args.up,
        scale=args.scale,
        spz_version=args.spz_version,
        device=args.device,
        layers=args.layers,
    )
    output = args.output.lower()
    sh = f", SH degree {args.sh_degree}" if output.endswith(".ply") else ""
    spz_version = None
    if output.endswith(".spz"):
        from gshead.io.spz import DEFAULT_VERSION

        spz_version = args.spz_version or DEFAULT_VERSION
        sh = f", SPZ version {spz_version}"
    up = default_up(args.output) if args.up is None else args.up
    frame = (
        "y down (OpenCV / 3DGS)"
        if up == "-y"
        else ("y up (RUB, the SPZ convention)" if sh.startswith(", SPZ") else "y up")
    )
    print(
        f"wrote {args.output}: {count} Gaussians ({frame}, scale {args.scale:g}{sh}) "
        f"and {camera_json_path(args.output)}",
        file=sys.stderr,
    )
    if args.json:
        summary = {
            "output": str(args.output), "camera": str(camera_json_path(args.output)), "gaussians": int(count),
            "up": up, "scale": args.scale,
            "sh_degree": args.sh_degree if output.endswith(".ply") else None,
            "spz_version": spz_version, "layers": args.layers,
        }  # fmt: skip
        print(json.dumps(summary, indent=2))
    return 0


def add_parser(subparsers) -> None:
    """Add ``export`` to the ``gshead`` subcommands."""
    from gshead.commands._device import add_device_argument
    from gshead.commands._help import doc
    from gshead.jobs.posing import UP_CONVENTIONS

    p = subparsers.add_parser(
        "export",
        help="write an avatar at a chosen expression as a 3DGS .ply, a .splat or a .spz (upright in viewers)",
        **doc(
            "Pose an avatar (expression, jaw, eyes, head pose) and write its Gaussians for other "
            "viewers and tools: a standard 3DGS .ply, antimatter15's .splat or Niantic's .spz, the "
            "format chosen by the extension, and NAME.camera.json beside it (the source camera in the "
            "same convention).",
            "# the neutral avatar as a 3DGS PLY (opens upright in SuperSplat and gsplat.js)\n"
            "gshead export astronaut.safetensors -o astronaut.ply",
            "# mouth open, head turned 20 degrees, as a compressed .spz for y-up viewers\n"
            "gshead export astronaut.safetensors -o astronaut.spz --expression jawOpen=0.8 --pose 0 20 0",
            "# with the portrait's background behind the head, as gshead composites it\n"
            "gshead export astronaut.safetensors -o scene.ply --layers all",
            "# the demo motion as an animated export folder, played by 'gshead view talk/'\n"
            "gshead export astronaut.safetensors --driver demo -o talk/",
        ),
    )
    p.add_argument("avatar", metavar="AVATAR", help="avatar file written by 'gshead reconstruct'")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE",
        help="file to write, the format chosen by the extension: .ply (standard 3DGS), .splat "
        "(antimatter15, 32 bytes a Gaussian) or .spz (Niantic, compressed, about 10x smaller than "
        ".ply); NAME.camera.json is written beside it. With --driver: a folder (docs/exports.md)",
    )  # fmt: skip
    p.add_argument(
        "--up", choices=UP_CONVENTIONS, default=None,
        help="-y (default for .ply/.splat): the original 3DGS / OpenCV convention, x right, y down, "
        "z forward, face towards -z (SuperSplat, gsplat.js); y (default for .spz, whose format "
        "stores RUB): y up, face towards +z (y-up viewers). Write --up=-y",
    )  # fmt: skip
    p.add_argument(
        "--scale", type=float, default=1.0, metavar="S",
        help="multiply positions and sizes (units are metres, a head is ~0.25 m; e.g. 10 for "
        "viewers that expect a scene about a unit across; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--expression", action="append", default=[], metavar="NAME=VALUE",
        help="expression unit value, names from 'gshead headmodel info' (repeatable)",
    )  # fmt: skip
    p.add_argument("--jaw", type=float, default=0.0, metavar="RAD", help="jaw opening in radians (default 0)")
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
        help=".ply only. 3 (default): 45 zero f_rest values, opened by every viewer incl. the "
        "original 3DGS/SIBR; 0: no f_rest, smaller, for web viewers",
    )  # fmt: skip
    p.add_argument(
        "--spz-version", type=int, choices=(3, 4), default=None,
        help=".spz only. 3 (default): gzip, read by every SPZ loader; 4: the reference library's "
        "newer zstd layout (needs the zstandard package)",
    )  # fmt: skip
    from gshead.commands._animated import add_animation_arguments

    add_animation_arguments(p)
    p.add_argument(
        "--layers", choices=("head", "all"), default="head",
        help="head (default): the head's Gaussians (face, hair, neck; without the still torso of a "
        "torso: still avatar); all: also the torso and the portrait's background (background: static) as a 128x128 lattice of flat opaque splats on "
        "a plane behind the head, filling the source camera's view (an avatar without one: the "
        "head only, with a note)",
    )  # fmt: skip
    add_device_argument(p)
    p.add_argument(
        "--json", action="store_true",
        help="print a JSON summary on stdout: the files written, the Gaussian count, the convention",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)
