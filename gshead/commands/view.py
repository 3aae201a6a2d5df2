"""``gshead view AVATAR``: serve the avatar in a local web viewer (see ``gshead.viewer``).

``--device`` (cpu, the default; cuda; auto) is where the avatar is driven and rendered."""

from __future__ import annotations

import sys
import time


def cmd_view(args) -> int:
    from gshead.io.avatar import load_avatar
    from gshead.core.errors import InputError
    from gshead.viewer import AvatarViewer, viewer_unavailable

    reason = viewer_unavailable()
    if reason:
        raise InputError(reason)
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected a TCP port between 1 and 65535")
    from gshead.commands._device import loaded_to, resolve_device

    device = resolve_device(args.device)
    loaded = loaded_to(load_avatar(args.avatar), device)
    viewer = AvatarViewer(loaded, host=args.host, port=args.port, save_dir=args.save_dir, render_size=args.size)
    print(f"gshead view: open {viewer.url} in a browser (Ctrl-C to stop); frames are saved to {args.save_dir}", file=sys.stderr)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("view", help="look at an avatar in a local web viewer with expression and pose sliders")
    p.add_argument("avatar", help="avatar file written by 'gshead reconstruct'")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--save-dir", default=".", help="where 'Save frame' writes PNGs (default: current folder)")
    p.add_argument("--size", type=int, default=None, help="side of saved frames in pixels (default: the pipeline's)")
    from gshead.commands._device import add_device_argument

    add_device_argument(p)
    p.set_defaults(func=cmd_view)
