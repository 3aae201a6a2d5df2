"""``gshead reenact``: drive an avatar into a video (or a PNG grid of frames).

    gshead reenact AVATAR --driver demo|SEQ.safetensors|VIDEO|CURVES.csv|CURVES.json -o OUT.mp4|OUT.png
                   [--side-by-side] [--camera fixed|orbit] [--orbit-degrees D] [--frames N]
                   [--fps F] [--size S] [--batch B] [--device cpu|cuda|auto] [--json] [-q]

The driving head parameters come from the demo motion (``gshead.io.motion``), a tracked-sequence
file, ARKit curves (``gshead.io.arkit``), or a video tracked on the fly (``gshead.jobs.tracking``, cached, the same path as
``gshead track``). Camera paths, side-by-side panels and PNG grids are in ``_views``. ``--device``
(cpu, the default; cuda; auto) is where the avatar is driven and rendered (``_device``); tracking a
driving video runs as ``gshead track`` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gshead.commands._progress import progress


MAX_FRAMES = 100_000  # --frames of demo motion (about 67 minutes at 25 fps)
MIN_FPS, MAX_FPS = 0.1, 1000.0


def _driving_params(args, loaded):
    """Head parameters [T] for ``--driver``, relative to the avatar's source unless ``--absolute``
    (see ``gshead.jobs.driving``)."""
    params, reference = _driving_signal(args, loaded)
    if args.absolute:
        return params
    from gshead.jobs.driving import relative_to_source

    return relative_to_source(params, loaded.avatar.source, reference)


def _driving_signal(args, loaded):
    """The driving signal [T] for ``--driver`` (demo motion, a sequence file, ARKit curves, or a
    video) and its reference frame [1]: the demo's neutral start, else the first frame."""
    from gshead.core.errors import InputError
    from gshead.io.motion import demo_motion

    driver = args.driver
    if driver == "demo":
        return demo_motion(loaded.head_model, args.frames), loaded.head_model.neutral(1)
    path = Path(driver)
    if path.suffix == ".safetensors":
        from gshead.io.sequence import load_sequence

        seq = load_sequence(path)
        if seq.head_model != loaded.avatar.provenance.head_model:
            raise InputError(
                f"{path}: tracked with head model {seq.head_model!r}, but the avatar uses "
                f"{loaded.avatar.provenance.head_model!r}"
            )
        return seq.params, seq.params.select(0)
    if path.suffix.lower() in GAGAVATAR_TRACK_SUFFIXES:
        params = _gagavatar_track_signal(path, loaded)
        return params, params.select(0)
    from gshead.io.arkit import arkit_params, is_curves_file, read_arkit

    if is_curves_file(path):
        # Live Link Face CSV or ARKit-named JSON (layouts and axes: gshead.io.arkit)
        params, ignored = arkit_params(
            read_arkit(path), loaded.head_model, f"--driver {path}", loaded.avatar.provenance.head_model
        )
        if ignored:
            print(
                f"note: head model {loaded.avatar.provenance.head_model!r} lacks {len(ignored)} of the "
                f"file's curves, left out: {', '.join(ignored[:6])}{', ...' if len(ignored) > 6 else ''}",
                file=sys.stderr,
            )
        return params, params.select(0)
    from gshead.jobs.tracking import is_video, track_with_pipeline

    if is_video(path):
        # The same path as 'gshead track' (per-frame crops, smoothing, flagged frames), cached.
        def bar(total):
            return progress(total=total or None, desc="tracking", unit="frame", disable=args.quiet)

        seq, _cached, _tracker = track_with_pipeline(path, loaded.config, loaded.head_model, progress=bar)
        return seq.params, seq.params.select(0)
    raise InputError(
        f"--driver {driver!r}: expected 'demo', a tracked-sequence .safetensors file, a video "
        "(.mp4, .mov, ...), ARKit curves (.csv, .json), or GAGAvatar_track output (.pkl, .pt)"
    )


GAGAVATAR_TRACK_SUFFIXES = (".pkl", ".pt", ".pth")


def _gagavatar_track_signal(path, loaded):
    """GAGAvatar_track's per-frame results (``optim.pkl``) as head parameters [T] whose head pose,
    applied to the avatar's fixed source camera, reproduces every frame's official camera
    (``gshead.io.gagavatar_track.poses_relative_to``). FLAME avatars only."""
    from gshead.core.errors import InputError
    from gshead.io.gagavatar_track import poses_relative_to, read_gagavatar_track

    head_model = loaded.avatar.provenance.head_model
    if head_model != "flame":
        raise InputError(
            f"--driver {path}: GAGAvatar_track output holds FLAME codes, but the avatar uses head model "
            f"{head_model!r} (drive a flame avatar, e.g. one built with configs/gagavatar.yaml)"
        )
    seq = read_gagavatar_track(path)
    expression = len(loaded.head_model.expression_names)
    if seq.params.expression.shape[1] != expression:
        raise InputError(
            f"--driver {path}: the track has {seq.params.expression.shape[1]} FLAME expression codes, the "
            f"avatar's head model {expression} (set headmodel.expression_dim to "
            f"{seq.params.expression.shape[1]})"
        )
    return poses_relative_to(seq, loaded.avatar.camera, what=f"--driver {path}")


def cmd_reenact(args) -> int:
    import torch

    from gshead.core.errors import InputError, require_int, require_number
    from gshead.io.avatar import load_avatar
    from gshead.io.media import VIDEO_OUTPUT_SUFFIXES, VideoWriter, check_output

    if args.size is not None and not 16 <= args.size <= 4096:
        raise InputError(f"--size {args.size}: expected a side between 16 and 4096 pixels")
    if args.batch < 1:
        raise InputError(f"--batch {args.batch}: expected at least 1 frame per step")
    require_int(args.frames, "--frames", 1, MAX_FRAMES, "frames")
    require_number(args.fps, "--fps", MIN_FPS, MAX_FPS, "frames per second")

    from gshead.commands import _views as views

    if not 0.0 <= args.orbit_degrees <= 180.0:
        raise InputError(f"--orbit-degrees {args.orbit_degrees:g}: expected 0 to 180 degrees")
    check_output(
        args.output,
        accepts=(*VIDEO_OUTPUT_SUFFIXES, ".png"),
        inputs=(args.avatar, args.driver),
        what="a video (or a .png frame grid)",
    )
    grid = Path(args.output).suffix.lower() == ".png"
    from gshead.commands._device import loaded_to, resolve_device

    device = resolve_device(args.device)

    torch.set_grad_enabled(False)
    loaded = load_avatar(args.avatar)
    params = _driving_params(args, loaded).to(device)  # driving signals are read on the CPU
    loaded = loaded_to(loaded, device)
    colour = {"black": 0.0, "white": 1.0, "none": 0.0}.get(args.background)
    background = None  # source: the avatar's own (its static background image, or its lifted Gaussians)
    if colour is not None:
        background = torch.zeros(loaded.config.feature_channels, device=device)
        background[:3] = colour
    with_alpha = args.background == "none" and grid
    if args.background == "none" and not grid:
        print("note: --background none: a video has no alpha; the background is black", file=sys.stderr)
    session = loaded.session(render_size=args.size, background=background)
    cam = session.camera
    n = params.batch_size
    cameras = None  # None: the source camera for every frame
    if args.camera == "orbit":
        cameras = views.orbit_cameras(cam, n, args.orbit_degrees, views.orbit_pivot(loaded))
    panels = views.DriverPanels(loaded, args.driver) if args.side_by_side else None
    width = cam.width * (2 if panels is not None else 1)
    if grid:
        sink = views.GridWriter(args.output, n, width, cam.height)
    else:
        sink = VideoWriter(args.output, fps=args.fps, width=width, height=cam.height)
    with sink as out:
        with progress(total=n, desc="reenact", unit="frame", disable=args.quiet) as bar:
            for start in range(0, n, args.batch):
                index = slice(start, min(n, start + args.batch))
                chunk = params.select(index)
                view = cam.expand(chunk.batch_size) if cameras is None else views.camera_slice(cameras, index)
                frames = session.render(chunk, camera=view, alpha=with_alpha)
                if panels is not None:
                    left = panels.render(chunk, view).to(frames)
                    if with_alpha:
                        left = torch.cat([left, torch.ones_like(left[:, :1])], 1)
                    frames = torch.cat([left, frames], dim=-1)  # driver | result
                out.write(frames)
                bar.update(chunk.batch_size)
    if grid:
        what = f"{n} frames in a {sink.rows}x{sink.columns} grid, {sink.width}x{sink.height}"
    else:
        what = f"{n} frames, {width}x{cam.height} at {args.fps:g} fps"
    print(f"wrote {args.output}: {what}", file=sys.stderr)
    if args.json:
        summary = {
            "output": str(args.output), "frames": n,
            "width": sink.width if grid else width, "height": sink.height if grid else cam.height,
            "fps": None if grid else args.fps,
            "grid": {"rows": sink.rows, "columns": sink.columns} if grid else None,
        }  # fmt: skip
        print(json.dumps(summary, indent=2))
    return 0


def add_parser(subparsers) -> None:
    """Add ``reenact`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc
    from gshead.io.motion import PHASES

    p = subparsers.add_parser(
        "reenact", help="drive an avatar into a video (or a PNG grid of frames)",
        **doc(
            "Drive an avatar written by 'gshead reconstruct' with the demo motion, a tracked sequence, "
            "a video (tracked as 'gshead track' does, cached), ARKit curves or GAGAvatar_track output, "
            "and render every frame into a video, or into one PNG grid of frames.",
            "# the demo motion into a video (the quick start's second step)\n"
            "gshead reenact astronaut.safetensors --driver demo -o astronaut.mp4",
            "# driven by a video, its cropped frames beside the result, the camera orbiting the head\n"
            "gshead reenact astronaut.safetensors --driver talk.mp4 -o talk-driven.mp4 --side-by-side --camera orbit --orbit-degrees 20",
            "# 16 demo frames tiled in one PNG, at 64 px\n"
            "gshead reenact astronaut.safetensors --driver demo --frames 16 --size 64 -o frames.png",
        ),
    )  # fmt: skip
    p.add_argument("avatar", metavar="AVATAR", help="avatar file written by 'gshead reconstruct'")
    p.add_argument(
        "--driver", required=True, metavar="DRIVER",
        help="'demo', a tracked-sequence .safetensors file, a video, ARKit curves: a Live Link "
        "Face .csv or an ARKit-named .json ({names, weights, fps} or Audio2Face's export; "
        "head yaw/pitch/roll in radians, yaw positive towards the subject's left), or "
        "GAGAvatar_track output (optim.pkl, flame avatars; the frames' cameras become head "
        "pose about the avatar's source camera): with --absolute it reproduces the official "
        "driving exactly, the default relative driving re-bases the motion on the portrait",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE",
        help="video file to write (.mp4, .mkv, ...), or .png for all frames tiled in one grid image",
    )  # fmt: skip
    p.add_argument(
        "--side-by-side", action="store_true",
        help="driver | result: the cropped driving video frame, or for demo/sequence drivers the "
        "head-model mesh posed by the frame's parameters, seen from the same camera",
    )  # fmt: skip
    p.add_argument(
        "--camera", choices=("fixed", "orbit"), default="fixed",
        help="fixed: the source view (default); orbit: a novel-view path swinging the camera "
        "around the head, yaw ±--orbit-degrees over the clip, starting and ending in front",
    )  # fmt: skip
    p.add_argument(
        "--orbit-degrees", type=float, default=30.0, metavar="DEG",
        help="largest yaw of --camera orbit in degrees, 0 to 180 (default 30)",
    )  # fmt: skip
    motion = p.add_mutually_exclusive_group()
    motion.add_argument(
        "--relative", dest="absolute", action="store_false", default=False,
        help="drive with offsets from the source portrait's fitted expression and pose (default): the "
        "demo's neutral start, or a sequence's first frame, reproduces the portrait",
    )  # fmt: skip
    motion.add_argument(
        "--absolute", dest="absolute", action="store_true",
        help="use the driver's expression and pose as they are, replacing the portrait's",
    )  # fmt: skip
    p.add_argument(
        "--frames", type=int, default=100, metavar="N",
        help=f"length of the demo motion: --driver demo renders N frames (default 100; {len(PHASES)} to "
        f"{MAX_FRAMES:,}); every other driver renders all of its own frames (a sequence's, a video's, a "
        f"curves file's) and ignores N (it is still checked to be 1 to {MAX_FRAMES:,})",
    )  # fmt: skip
    p.add_argument(
        "--fps", type=float, default=25.0, metavar="FPS",
        help="frame rate of the written video (default 25, whatever the driver's own rate)",
    )  # fmt: skip
    p.add_argument("--size", type=int, default=None, metavar="PX", help="output side in pixels (default: the pipeline's)")
    p.add_argument(
        "--background", choices=("source", "black", "white", "none"), default="source",
        help="behind the avatar: source (default: the portrait's background, a still image with "
        "background: static), black, white, or none (transparent: alpha in a .png grid; black in a video). "
        "With background: lifted the portrait's background is part of the Gaussians and stays",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=4, metavar="N", help="frames rendered per step (default 4)")
    from gshead.commands._device import add_device_argument

    add_device_argument(p)
    p.add_argument(
        "--json", action="store_true",
        help="print a JSON summary on stdout: the file written, its frames, size and frame rate (or grid)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reenact)


__all__ = ["add_parser", "cmd_reenact"]
