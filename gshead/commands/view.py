"""``gshead view AVATAR``: serve the avatar in a local web viewer (see ``gshead.viewer``).

``gshead view DIR`` (a folder written by ``gshead export AVATAR --driver SPEC -o DIR``) instead
serves the animated export in gshead's WebGL player (``gshead.commands._animated``).

``--device`` (cpu, the default; cuda; auto) is where the avatar is driven and rendered."""

from __future__ import annotations

import sys


def cmd_view(args) -> int:
    from pathlib import Path

    if Path(args.avatar).is_dir():  # a folder written by 'gshead export --driver': the web player
        from gshead.commands._animated import cmd_view_animation

        return cmd_view_animation(args)
    from gshead.io.avatar import load_avatar
    from gshead.core.errors import InputError
    from gshead.viewer import AvatarViewer, viewer_unavailable

    reason = viewer_unavailable()
    if reason:
        raise InputError(reason)
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected a TCP port between 1 and 65535")
    from gshead.commands._device import loaded_to, resolve_device

    if args.size is not None and not 16 <= args.size <= 2048:
        raise InputError(f"--size {args.size}: expected a side between 16 and 2048 pixels")
    device = resolve_device(args.device)
    loaded = load_avatar(args.avatar)
    playback = None
    if args.driver is not None:
        import argparse

        from gshead.commands.reenact import _driving_params
        from gshead.viewer import Playback

        # the driver as reenact reads it (relative to the portrait unless --absolute)
        spec = argparse.Namespace(driver=args.driver, frames=args.frames, absolute=args.absolute, quiet=False)
        fps = args.fps
        playback = Playback(_driving_params(spec, loaded).to(device), fps, str(args.driver))
    loaded = loaded_to(loaded, device)
    viewer = AvatarViewer(
        loaded, host=args.host, port=args.port, save_dir=args.save_dir, render_size=args.size, playback=playback
    )
    print(f"gshead view: open {viewer.url} in a browser (Ctrl-C to stop); frames are saved to {args.save_dir}", file=sys.stderr)
    from gshead.commands._views import serve_until_interrupted

    return serve_until_interrupted(viewer.close)



def add_parser(sub) -> None:
    """Add ``view`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = sub.add_parser(
        "view", help="look at an avatar in a local web viewer with expression and pose sliders",
        **doc(
            "Serve the avatar in a local web viewer (viser; pip install 'gshead[viewer]'). The main "
            "view is the pipeline's real output (driver, rasterizer, refiner) at --size, re-rendered "
            "as sliders move (every expression unit, jaw, eyes and head pose, angles in degrees, "
            "relative to the portrait); a second view shows the raw Gaussians in 3D. --driver plays "
            "the demo motion, a sequence, a video or ARKit curves. 'Save frame' writes the render "
            "as a PNG. Runs until Ctrl-C. Given a folder written by 'gshead export --driver', it "
            "serves that animated export instead in gshead's WebGL player (three.js and Spark, "
            "bundled by scripts/build_web_player.sh; nothing from a CDN).",
            "# open http://127.0.0.1:8080/ in a browser; saved frames go to shots/\n"
            "gshead view astronaut.safetensors --save-dir shots\n"
            "# play the demo motion (Play / Pause in the panel) at 256x256\n"
            "gshead view astronaut.safetensors --driver demo --size 256",
            "# play an animated export (gshead export ... --driver demo -o talk/) in the WebGL player\n"
            "gshead view talk/",
        ),
    )  # fmt: skip
    p.add_argument(
        "avatar", metavar="AVATAR|DIR",
        help="avatar file written by 'gshead reconstruct', or a folder written by 'gshead export "
        "--driver' to play in the WebGL player (needs scripts/build_web_player.sh run once)",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--save-dir", default=".", metavar="DIR", help="where 'Save frame' writes PNGs (default: current folder)")
    p.add_argument(
        "--size", type=int, default=None, metavar="PX",
        help="side of the render and of saved frames in pixels (default: the pipeline's, at least 256)",
    )  # fmt: skip
    p.add_argument(
        "--driver", default=None, metavar="DRIVER",
        help="play a driver: 'demo', a tracked-sequence .safetensors, a video, ARKit curves (.csv/.json) "
        "or GAGAvatar_track output, read as 'gshead reenact --driver' reads it",
    )  # fmt: skip
    p.add_argument("--frames", type=int, default=100, metavar="N", help="frames of demo motion (default 100)")
    p.add_argument("--fps", type=float, default=25.0, help="playback frame rate (default 25)")
    p.add_argument(
        "--absolute", action="store_true",
        help="play the driver's expression and pose as they are (default: relative to the portrait)",
    )  # fmt: skip
    from gshead.commands._device import add_device_argument

    add_device_argument(p)
    p.set_defaults(func=cmd_view)
