"""Animated export and its web player: ``gshead export AVATAR --driver SPEC -o DIR`` and
``gshead view DIR``.

The export drives the avatar with the driver ``gshead reenact --driver`` reads (demo motion, a
tracked sequence, a video, ARKit curves, GAGAvatar_track output; ``reenact._driving_params``,
relative to the portrait unless ``--absolute``) and writes the folder layout of
``gshead.io.animation``: the static Gaussians once, then per frame the rigid head pose (a 4x4
matrix for every Gaussian) and the dynamic Gaussians' centres and rotations in head space, all in
the ``--up`` convention and ``--scale`` of a single-frame export. Frame i equals
``gshead export`` of frame i's parameters (``gshead.jobs.posing.export_gaussians``).

``gshead view DIR`` serves the folder and the player page (``gshead/web/player/``: index.html and
the one-file bundle ``dist/player.js`` that ``scripts/build_web_player.sh`` builds with esbuild
from three.js and World Labs' Spark) from the standard library's HTTP server on 127.0.0.1.
Nothing is fetched from a CDN: the page loads ``player.js`` and ``data/*`` from this server only.
"""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from gshead.core.types import HeadParams
    from gshead.io.avatar import LoadedAvatar

PLAYER = Path(__file__).resolve().parent.parent / "web" / "player"
"""The player's sources: index.html, player.js (the entry esbuild bundles) and dist/player.js."""
BUNDLE = PLAYER / "dist" / "player.js"
BUILD_HINT = "run scripts/build_web_player.sh (needs node and npm) to build it"


# ---------------------------------------------------------------------------------------------- export
def export_pose(params: HeadParams, up: str, scale: float) -> torch.Tensor:
    """Head poses [B, 4, 4] of ``params`` [B] in export convention ``up`` and ``scale``:
    ``[[M R M^T, scale M t], [0, 1]]`` with M the rotation into ``up`` (``frame_matrix``)."""
    import roma
    import torch

    from gshead.jobs.posing import frame_matrix

    m = frame_matrix(up, torch.float64)
    r = roma.rotvec_to_rotmat(params.rotation.to("cpu", torch.float64))  # [B, 3, 3]
    t = params.translation.to("cpu", torch.float64)  # [B, 3]
    pose = torch.eye(4, dtype=torch.float64).repeat(params.batch_size, 1, 1)
    pose[:, :3, :3] = m @ r @ m.T
    pose[:, :3, 3] = scale * t @ m.T
    return pose


def driving_params(
    loaded: LoadedAvatar, driver: str, frames: int = 100, absolute: bool = False, quiet: bool = False
):
    """Head parameters [T] for ``--driver`` exactly as ``gshead reenact`` / ``gshead view`` read them."""
    import argparse

    from gshead.commands.reenact import _driving_params

    spec = argparse.Namespace(driver=driver, frames=frames, absolute=absolute, quiet=quiet)
    return _driving_params(spec, loaded)


def export_animation(
    avatar_path: str,
    output: str,
    driver: str,
    frames: int = 100,
    absolute: bool = False,
    fps: float = 25.0,
    up: str = "-y",
    scale: float = 1.0,
    device: str = "cpu",
    batch: int = 8,
    quiet: bool = False,
) -> dict:
    """Drive ``avatar_path`` with ``driver`` and write the animated export folder ``output``
    (``gshead.io.animation``); returns the manifest written."""
    import torch

    from gshead.commands._device import loaded_to, resolve_device
    from gshead.commands._progress import progress
    from gshead.commands._views import orbit_pivot
    from gshead.commands.reenact import MAX_FPS, MAX_FRAMES, MIN_FPS
    from gshead.core.errors import InputError, require_int, require_number
    from gshead.core.types import Gaussians
    from gshead.io.animation import AnimationWriter, check_animation_output
    from gshead.io.avatar import load_avatar
    from gshead.io.media import check_output
    from gshead.jobs.posing import check_scale, export_camera, frame_matrix, to_export_frame

    # everything that can be refused is refused before the (slow) load and driving
    require_int(frames, "--frames", 1, MAX_FRAMES, "frames")
    require_number(fps, "--fps", MIN_FPS, MAX_FPS, "frames per second")
    frame_matrix(up), check_scale(scale)
    check_output(output, inputs=(avatar_path, driver), what="the animated export", folder=True)
    check_animation_output(output)
    where = resolve_device(device)
    loaded = load_avatar(avatar_path)
    params = driving_params(loaded, driver, frames, absolute, quiet)  # [T], on the CPU
    loaded = loaded_to(loaded, where)
    avatar = loaded.avatar
    n = params.batch_size
    if n < 1:
        raise InputError(f"--driver {driver}: no frames")
    identity = avatar.source.identity.to("cpu")
    camera = export_camera(avatar.camera.to("cpu"), orbit_pivot(loaded).to("cpu"), up, scale)
    fixed, neck, neck_weight = _split_still_torso(avatar)
    static = to_export_frame(fixed.to("cpu"), up, scale)

    def driven(index: slice):
        chunk = params.select(index)
        chunk = chunk.replace(identity=identity.expand(chunk.batch_size, -1))
        with torch.no_grad():
            dynamic = loaded.driver.drive(avatar, chunk.to(where)).to("cpu")  # [b, Nd] head space
            if neck is not None:  # torso: still: the torso and neck move against the head, per frame
                from gshead.core.geometry import torso_held

                held = torso_held(neck, neck_weight, chunk.pose_matrix(), avatar.source.to("cpu").pose_matrix())
                dynamic = Gaussians.cat([dynamic, held])
        return to_export_frame(dynamic, up, scale), export_pose(chunk, up, scale)

    extra = {
        "driver": str(driver),
        "relative": not absolute,
        "avatar": Path(avatar_path).name,
        "head_model": avatar.provenance.head_model,
        "player": "gshead view DIR",
    }
    first = slice(0, min(n, batch))
    dynamic, poses = driven(first)
    writer = AnimationWriter(
        output, static, _first(dynamic), fps=fps, up=up, scale=scale, camera=camera, manifest=extra
    )
    with writer, progress(total=n, desc="export", unit="frame", disable=quiet) as bar:
        start = 0
        while start < n:
            if start:
                dynamic, poses = driven(slice(start, min(n, start + batch)))
            writer.write(poses, dynamic.means, dynamic.quats, dynamic.scales)
            bar.update(poses.shape[0])
            start += poses.shape[0]
    return writer.manifest()


def _split_still_torso(avatar):
    """(static Gaussians that move with the head [1, Nh], the still-torso ones [1, Nb] or None,
    their weights [1, Nb] or None): with ``torso: still`` (``Avatar.body``) the torso and neck
    are not rigid with the head, so the export writes them per frame with the dynamic Gaussians."""
    from gshead.core.types import Gaussians

    static = avatar.static.to("cpu")
    if avatar.body is None or not bool((avatar.body > 0).any()):
        return static, None, None
    body = avatar.body.to("cpu")[0]

    def pick(index):
        return Gaussians(**{k: v[:, index] for k, v in static.tensors().items()})

    moving = (body > 0).nonzero()[:, 0]
    return pick((body == 0).nonzero()[:, 0]), pick(moving), body[None, moving]


def _first(gaussians):
    """Frame 0 of Gaussians [B, N] as [1, N]."""
    return type(gaussians)(*(t[:1] for t in gaussians.tensors().values()))


def summary_line(output: str, manifest: dict) -> str:
    output = str(Path(output))  # 'talk/' -> 'talk'
    up = "y down (OpenCV / 3DGS)" if manifest["up_axis"] == "-y" else "y up"
    return (
        f"wrote {output}/: {manifest['frames']} frames at {manifest['fps']:g} fps, "
        f"{manifest['static']['count']} static + {manifest['dynamic']['count']} dynamic Gaussians "
        f"({up}, scale {manifest['scale']:g}); play it with 'gshead view {output}'"
    )


STILL_OPTIONS = (
    ("expression", "--expression"), ("jaw", "--jaw"), ("eyes", "--eyes"), ("pose", "--pose"),
    ("translation", "--translation"), ("spz_version", "--spz-version"),
)  # fmt: skip
"""Options of a single-frame export that the driver decides instead (refused with --driver)."""


def cmd_export_animation(args) -> int:
    """``gshead export AVATAR --driver SPEC -o DIR``."""
    import json

    from gshead.core.errors import InputError

    for name, flag in STILL_OPTIONS:
        value = getattr(args, name, None)
        if value not in (None, [], 0.0):
            raise InputError(
                f"{flag}: does not apply with --driver (the driver sets every frame's parameters)"
            )
    manifest = export_animation(
        args.avatar, args.output, args.driver, frames=args.frames, absolute=args.absolute, fps=args.fps,
        up="-y" if args.up is None else args.up, scale=args.scale, device=args.device, quiet=args.quiet,
    )  # fmt: skip
    print(summary_line(args.output, manifest), file=sys.stderr)
    if args.json:
        keys = ("frames", "fps", "up_axis", "scale", "driver")
        summary = {"output": str(args.output), **{k: manifest[k] for k in keys}}
        summary.update(static=manifest["static"]["count"], dynamic=manifest["dynamic"]["count"])
        print(json.dumps(summary, indent=2))
    return 0


def add_animation_arguments(p) -> None:
    """The options of an animated export, added to ``gshead export``'s parser."""
    from gshead.commands.reenact import MAX_FRAMES

    p.add_argument(
        "--driver", default=None, metavar="DRIVER",
        help="write an animated export: a folder (-o DIR) with the static Gaussians once and per frame "
        "the head pose and the dynamic Gaussians, driven by 'demo', a tracked-sequence .safetensors, a "
        "video, ARKit curves (.csv/.json) or GAGAvatar_track output, read as 'gshead reenact --driver' "
        "reads it; play it with 'gshead view DIR'",
    )  # fmt: skip
    p.add_argument(
        "--frames", type=int, default=100, metavar="N",
        help=f"with --driver demo: frames of demo motion (default 100, at most {MAX_FRAMES:,}); other "
        "drivers export all of their frames",
    )  # fmt: skip
    p.add_argument(
        "--fps", type=float, default=25.0, metavar="FPS",
        help="with --driver: the frame rate stored for playback (default 25)",
    )  # fmt: skip
    p.add_argument(
        "--absolute", action="store_true",
        help="with --driver: the driver's expression and pose as they are (default: relative to the portrait)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="with --driver: no progress bar")


# ------------------------------------------------------------------------------------------------ view
DATA_FILES = ("manifest.json", "static.ply", "dynamic.ply", "frames.bin", "scales.bin")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
}


def bundle_missing() -> str | None:
    """Why the player cannot be served (its bundle is not built), or None."""
    if not BUNDLE.is_file():
        return f"the web player is not built ({BUNDLE} is missing); {BUILD_HINT}"
    return None


class AnimationServer:
    """Serves the player page at ``/``, its bundle at ``/player.js`` and the export folder's
    files at ``/data/NAME`` (only the layout's names) from a background thread. ``port`` 0: any
    free port. ``url`` is the page; ``close()`` stops it."""

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = 8080) -> None:
        from gshead.core.errors import InputError
        from gshead.io.animation import read_animation

        reason = bundle_missing()
        if reason:
            raise InputError(reason)
        folder = Path(folder)
        read_animation(folder)  # refuse a broken or foreign folder now, not in the browser
        routes = {"/": PLAYER / "index.html", "/index.html": PLAYER / "index.html", "/player.js": BUNDLE}
        routes.update({f"/data/{name}": folder / name for name in DATA_FILES})

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the command prints the URL only
                pass

            def do_GET(self) -> None:  # http.server's name
                path = routes.get(self.path.split("?", 1)[0])
                if path is None or not path.is_file():
                    self.send_error(404)
                    return
                try:
                    with open(path, "rb") as f:
                        size = path.stat().st_size
                        self.send_response(200)
                        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
                        self.send_header("Content-Length", str(size))
                        self.send_header("Cache-Control", "no-store")
                        self.end_headers()
                        while chunk := f.read(1 << 20):
                            self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        try:
            self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise InputError(
                f"--host {host} --port {port}: cannot serve there ({exc.strerror or exc})"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.url = f"http://{shown}:{self._server.server_address[1]}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def cmd_view_animation(args) -> int:
    """``gshead view DIR``: serve the animated export DIR until Ctrl-C."""
    from gshead.core.errors import InputError

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected a TCP port between 0 (any free one) and 65535")
    server = AnimationServer(args.avatar, host=args.host, port=args.port)
    print(
        f"gshead view: open {server.url} in a browser to play {args.avatar} (Ctrl-C to stop)", file=sys.stderr
    )
    from gshead.commands._views import serve_until_interrupted

    return serve_until_interrupted(server.close)


__all__ = [
    "AnimationServer",
    "add_animation_arguments",
    "bundle_missing",
    "cmd_export_animation",
    "cmd_view_animation",
    "export_animation",
    "export_pose",
]
