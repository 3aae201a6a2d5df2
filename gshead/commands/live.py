"""``gshead live AVATAR --video FILE|DEVICE``: drive an avatar live from a video or a camera,
shown in a local browser page.

    gshead live AVATAR --video FILE|DEVICE [--size S] [--host 127.0.0.1] [--port 8765]
                [--frames N] [--log FILE.csv] [--as-fast-as-decoded] [--device cpu|cuda|auto] [--json]

Every frame is tracked as it arrives and rendered at once (``gshead.jobs.live``). A video file is
played at its own frame rate, as a camera would deliver it; a camera is opened through OpenCV
(its number, e.g. ``0``, or ``/dev/video0``). The page at ``http://HOST:PORT/`` shows the
rendered frames as an MJPEG stream (``/stream.mjpg``; the newest frame alone at ``/frame.jpg``)
with frames/s, latency and dropped frames (``/stats.json``), all served by this process on the
local machine (no CDN, nothing leaves it). ``--log`` writes one CSV row per shown frame; at the
end one line reports frames shown and dropped, frames/s and latency. A file ends the run when it
ends; a camera runs until Ctrl-C.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BOUNDARY = "gsheadframe"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gshead live</title>
<style>body{{background:#111;color:#ddd;font:14px monospace;margin:1em}}img{{image-rendering:auto;
width:{show}px;height:{show}px;background:#000}}</style></head>
<body><h3>gshead live: {avatar}</h3><img id="live" src="/stream.mjpg" alt="live render">
<pre id="stats">waiting for the first frame...</pre>
<script>
async function poll() {{
  try {{
    const s = await (await fetch('/stats.json', {{cache: 'no-store'}})).json();
    document.getElementById('stats').textContent = s.shown === undefined ? 'waiting...' :
      `frame ${{s.index}}  shown ${{s.shown}}  dropped ${{s.dropped}}  ${{s.fps.toFixed(1)}} frames/s  ` +
      `latency ${{s.latency_ms.toFixed(0)}} ms  fit error ${{s.fit_error_px === null ? '-' : s.fit_error_px.toFixed(2) + ' px'}}` +
      (s.face ? '' : '  (no face: holding)') + (s.finished ? '  [source ended]' : '');
  }} catch (e) {{}}
  setTimeout(poll, 250);
}}
poll();
</script></body></html>
"""


class LiveServer:
    """The local page, the MJPEG stream and the stats of a live run (``ThreadingHTTPServer`` on
    ``host:port``; port 0 picks a free one). ``publish(jpeg, stats)`` hands over each frame."""

    def __init__(self, host: str, port: int, avatar: str, show: int) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._serial = 0
        self._stats: dict[str, Any] = {}
        self.closed = False
        page = PAGE.format(avatar=avatar.replace("<", "&lt;"), show=int(show)).encode()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: the command reports itself
                pass

            def _send(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # http.server's name
                path = self.path.split("?")[0]
                if path == "/":
                    self._send(page, "text/html; charset=utf-8")
                elif path == "/stats.json":
                    with server._cond:
                        stats = dict(server._stats)
                    self._send(json.dumps(stats).encode(), "application/json")
                elif path == "/frame.jpg":
                    jpeg = server.wait_frame(0, timeout=10.0)[0]
                    if jpeg is None:
                        self.send_error(503, "no frame yet")
                    else:
                        self._send(jpeg, "image/jpeg")
                elif path == "/stream.mjpg":
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    serial = 0
                    try:
                        while not server.closed:
                            jpeg, serial = server.wait_frame(serial, timeout=1.0)
                            if jpeg is None:
                                continue
                            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                            self.wfile.write(head.encode() + jpeg + b"\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                else:
                    self.send_error(404)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gshead-live-http", daemon=True)
        self._thread.start()

    def publish(self, jpeg: bytes, stats: dict[str, Any]) -> None:
        with self._cond:
            self._jpeg, self._stats = jpeg, stats
            self._serial += 1
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._stats = {**self._stats, "finished": True}

    def wait_frame(self, after: int, timeout: float) -> tuple[bytes | None, int]:
        """The newest JPEG once it is newer than serial ``after`` (None after ``timeout`` s)."""
        with self._cond:
            self._cond.wait_for(lambda: self._serial > after or self.closed, timeout=timeout)
            if self._serial > after and self._jpeg is not None:
                return self._jpeg, self._serial
            return None, after

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()


def _jpeg(image) -> bytes:
    """[1, 3, S, S] in [0, 1] -> JPEG bytes (quality 85)."""
    import numpy as np
    from PIL import Image

    planes = image[0].detach().to("cpu").float().numpy()
    rgb = (np.clip(planes, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG", quality=85)
    return out.getvalue()


def cmd_live(args) -> int:
    import torch

    from gshead.core.errors import InputError, require_int
    from gshead.io.avatar import load_avatar
    from gshead.jobs.live import open_source, run_live

    if args.size is not None and not 16 <= args.size <= 2048:
        raise InputError(f"--size {args.size}: expected a side between 16 and 2048 pixels")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected a TCP port between 0 (any free one) and 65535")
    if args.frames is not None:
        require_int(args.frames, "--frames", 1, 10_000_000, "frames")
    if args.log is not None:
        from gshead.io.media import check_output

        check_output(args.log, accepts=(".csv",), inputs=(args.avatar, args.video), what="a CSV log")
    from gshead.commands._device import loaded_to, resolve_device

    device = resolve_device(args.device)
    torch.set_grad_enabled(False)
    loaded = loaded_to(load_avatar(args.avatar), device)
    source = open_source(args.video, realtime=not args.as_fast_as_decoded)
    size = args.size or loaded.config.render_size
    try:
        server = LiveServer(args.host, args.port, Path(args.avatar).name, show=max(size, 256))
    except OSError as exc:
        source.close()
        raise InputError(f"--port {args.port}: cannot serve on {args.host} ({exc.strerror or exc})") from None
    print(f"gshead live: open {server.url} in a browser ({source.name}, {source.fps:g} frames/s)", file=sys.stderr, flush=True)
    rows: list[list[Any]] = []

    def on_frame(image, stats) -> None:
        known = not math.isnan(stats.fit_error_px)  # NaN: no face, the last parameters held
        server.publish(
            _jpeg(image),
            {
                "index": stats.index, "shown": stats.shown, "dropped": stats.dropped,
                "fps": round(stats.fps, 2), "latency_ms": round(stats.latency_ms, 1),
                "fit_error_px": round(stats.fit_error_px, 3) if known else None,
                "face": stats.face,
            },
        )  # fmt: skip
        if args.log is not None:
            rows.append([stats.index, stats.shown, stats.dropped, f"{stats.latency_ms:.2f}", f"{stats.fps:.2f}",
                         f"{stats.fit_error_px:.3f}" if known else "", int(stats.face)])  # fmt: skip

    stop = threading.Event()
    try:
        report = run_live(loaded, source, on_frame, size=size, max_frames=args.frames, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        server.finish()
        if args.log is not None and rows:
            from gshead.io.media import atomic_output

            with atomic_output(args.log) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["frame", "shown", "dropped", "latency_ms", "fps", "fit_error_px", "face"])
                writer.writerows(rows)
        server.close()
    print(f"gshead live: {report.line()}", file=sys.stderr)
    if args.log is not None:
        print(f"wrote {args.log}: {len(rows)} frames", file=sys.stderr)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    return 0


def report_json(report) -> dict[str, Any]:
    """The end-of-run report as ``--json`` prints it (a measure that has no value, NaN, is null)."""
    import dataclasses
    import math

    out = dataclasses.asdict(report)
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}


def add_parser(sub) -> None:
    """Add ``live`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = sub.add_parser(
        "live", help="drive an avatar live from a video file or a camera, shown in a local browser page",
        **doc(
            "Track each frame of a video or a camera as it arrives and drive the avatar at once; the "
            "result streams to a page on this machine (http://HOST:PORT/: MJPEG, frames/s, latency, "
            "dropped frames; nothing leaves it). A video file ends the run when it ends, a camera runs "
            "until Ctrl-C; the last line reports frames shown and dropped, frames/s and latency.",
            "# a video file, played at its own frame rate, one CSV row per shown frame\n"
            "gshead live astronaut.safetensors --video talk.mp4 --log live.csv",
            "# the first camera, on another port\n"
            "gshead live astronaut.safetensors --video 0 --port 8000",
        ),
    )  # fmt: skip
    p.add_argument("avatar", metavar="AVATAR", help="avatar file written by 'gshead reconstruct'")
    p.add_argument(
        "--video", required=True, metavar="FILE|DEVICE",
        help="a video file (played at its own frame rate) or a camera: its number (0) or /dev/videoN",
    )  # fmt: skip
    p.add_argument("--size", type=int, default=None, metavar="PX", help="render side in pixels (default: the pipeline's)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port of the page (default 8765; 0: any free port)")
    p.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N source frames")
    p.add_argument("--log", default=None, metavar="FILE.csv", help="write one row per shown frame (latency, fps, drops)")
    p.add_argument(
        "--as-fast-as-decoded", action="store_true",
        help="do not pace a video file at its frame rate (measures the largest rate; nothing is dropped)",
    )  # fmt: skip
    from gshead.commands._device import add_device_argument

    add_device_argument(p)
    p.add_argument(
        "--json", action="store_true",
        help="print the end-of-run report as JSON on stdout: frames arrived, shown and dropped, "
        "frames/s, latency median and 95th percentile, tracking and rendering times",
    )  # fmt: skip
    p.set_defaults(func=cmd_live)


__all__ = ["LiveServer", "add_parser", "cmd_live", "report_json"]
