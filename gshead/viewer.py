"""``gshead view``: a local web viewer for an avatar, showing the pipeline's real output.

Built on viser (a web server that streams a three.js scene to the browser). Two views:

- **Render** (the default main view): the avatar driven through its own driving session —
  driver, rasterizer, refiner, the very frames ``gshead reenact`` writes — at ``render_size``
  (default 256), from the source camera, shown as the page's background and re-rendered at once
  when a slider moves. A render thread always draws the newest state (slider moves arriving
  while it renders are merged), and the panel shows how long the last frame took and the
  frames/s of playback.
- **3D Gaussians**: the raw Gaussians (static plus posed), coloured by their first three
  feature channels, in viser's splat renderer, free to orbit.

Sliders: one per expression unit, jaw opening, eye direction and head pose, all angles in
degrees. They drive the avatar *relative to its source* (``gshead.jobs.driving``): all at zero is
the portrait as it was fitted. A driver given by ``gshead view --driver`` (demo, a sequence, a
video, ARKit curves, resolved by the command) plays back with Play/Pause and a frame slider.
"Save frame" writes the current render (at ``render_size``) as a PNG.

viser is optional (``pip install 'gshead[viewer]'``); nothing here imports it before a viewer
is started.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from gshead.core.geometry import quat_to_rotmat
from gshead.core.types import Gaussians, HeadParams
from gshead.jobs.posing import export_gaussians

EXPRESSION_RANGE = (-1.0, 1.0)
JAW_RANGE_DEGREES = (0.0, 35.0)  # jaw opening (rotation about x)
EYE_RANGE_DEGREES = (-30.0, 30.0)  # both eyes together
POSE_RANGE_DEGREES = 45.0
CAMERA_BACKOFF = 1.6  # the browser's camera starts this many times farther out than the source camera
DEFAULT_RENDER_SIZE = 256
"""Side of the viewer's render when neither ``--size`` nor a larger pipeline render size is given."""
VIEWS = ("render", "3D Gaussians")


def covariances(g: Gaussians) -> Tensor:
    """World covariances [N, 3, 3] of a one-frame Gaussians: R diag(s^2) R^T."""
    rot = quat_to_rotmat(g.quats[0])  # normalised first
    s2 = g.scales[0] ** 2
    return (rot * s2[:, None, :]) @ rot.transpose(1, 2)


@dataclass
class Controls:
    """The viewer's slider state; ``params`` turns it into head parameters for one frame."""

    expression: dict[str, float] = field(default_factory=dict)
    jaw: float = 0.0  # degrees, as every angle here
    eye_yaw: float = 0.0
    eye_pitch: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0

    def params(self, neutral: HeadParams, names: tuple[str, ...]) -> HeadParams:
        """Absolute parameters [1] from ``neutral`` (see ``AvatarViewer.params`` for the relative ones)."""
        import roma

        expr = neutral.expression.clone()
        for name, value in self.expression.items():
            expr[0, names.index(name)] = value
        jaw = torch.tensor([[math.radians(self.jaw), 0.0, 0.0]])
        eye = [math.radians(self.eye_pitch), math.radians(self.eye_yaw), 0.0]
        eyes = torch.tensor([eye + eye])
        angles = torch.tensor([[math.radians(self.pitch), math.radians(self.yaw), math.radians(self.roll)]])
        rotation = roma.euler_to_rotvec("xyz", angles)
        return neutral.replace(expression=expr, jaw=jaw.to(expr), eyes=eyes.to(expr), rotation=rotation.to(expr))


@dataclass(frozen=True)
class Playback:
    """A driving signal to play in the viewer: parameters [T] (already relative to the source,
    or absolute, as the caller chose), its frame rate and a name for the panel."""

    params: HeadParams  # [T]
    fps: float
    name: str


class AvatarViewer:
    """A running viser server showing one avatar (see the module docstring).

    :param loaded: an avatar file read by ``gshead.io.avatar.load_avatar``.
    :param save_dir: where "Save frame" writes ``frame-0001.png``, ``frame-0002.png``, ...
    :param render_size: side of the render and of saved frames (default: the pipeline's render
        size, at least ``DEFAULT_RENDER_SIZE``).
    :param playback: a driver to play (``Playback``), or None.
    """

    def __init__(
        self,
        loaded,
        host: str = "127.0.0.1",
        port: int = 8080,
        save_dir: str | Path = ".",
        render_size: int | None = None,
        playback: Playback | None = None,
    ) -> None:
        import viser

        self.loaded = loaded
        self.avatar = loaded.avatar
        self.names = tuple(loaded.head_model.expression_names)
        self.neutral = loaded.head_model.neutral(1).replace(identity=self.avatar.source.identity)
        self.controls = Controls(expression={n: 0.0 for n in self.names})
        self.render_size = int(render_size or max(DEFAULT_RENDER_SIZE, loaded.config.render_size))
        self.session = loaded.session(render_size=self.render_size)
        self.save_dir = Path(save_dir)
        self.saved: list[Path] = []
        self.playback = playback
        self.frame_index = 0
        self.playing = False
        self.view = VIEWS[0]
        self.last_frame = None  # [S, S, 3] uint8 of the newest render
        self.rendered = 0  # renders done
        self.last_render_ms = float("nan")
        self.playback_fps = float("nan")
        self._lock = threading.Lock()  # one render or splat update at a time
        self._wake = threading.Condition()
        self._dirty = True
        self._closed = False
        self._last_play: float | None = None  # when the last playback frame was shown
        self._status_text = None  # the panel's status line (set by _build_gui)
        self._frame_slider = None  # the playback's frame slider (set by _build_gui)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("+y")
        self.server.on_client_connect(self._on_connect)
        g = self._gaussians()
        self.splats = self.server.scene.add_gaussian_splats("/avatar", **g, visible=False)
        self.sliders = self._build_gui()
        self._worker = threading.Thread(target=self._render_loop, name="gshead-view-render", daemon=True)
        self._worker.start()

    # -- state --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}"

    def params(self) -> HeadParams:
        """The parameters [1] shown now: the playback frame while a driver is shown, else the
        sliders applied relative to the source (all zero: the portrait as fitted)."""
        from gshead.jobs.driving import relative_to_source

        if self.playback is not None and (self.playing or self.frame_index > 0):
            return self.playback.params.select(self.frame_index)
        absolute = self.controls.params(self.neutral, self.names)
        return relative_to_source(absolute, self.avatar.source, self.neutral)

    @torch.no_grad()
    def _gaussians(self) -> dict:
        g = export_gaussians(self.loaded, self.params())
        return {
            "centers": g.means[0].float().numpy(),
            "covariances": covariances(g).float().numpy(),
            "rgbs": g.features[0, :, :3].clamp(0, 1).float().numpy(),
            "opacities": g.opacities[0, :, None].clamp(0, 1).float().numpy(),
        }

    def refresh(self) -> None:
        """Show the current state: a new render is queued (the render thread draws the newest
        state), and the 3D Gaussians are re-posed when that view is on."""
        if self.view == VIEWS[1]:
            with self._lock:
                self.splats.set_gaussians(**self._gaussians())
        with self._wake:
            self._dirty = True
            self._wake.notify()

    def wait_rendered(self, after: int, timeout: float = 30.0) -> bool:
        """Wait until more than ``after`` renders are done (True) or ``timeout`` s passed."""
        with self._wake:
            return self._wake.wait_for(lambda: self.rendered > after or self._closed, timeout=timeout)

    # -- the render thread ----------------------------------------------------------------------
    @torch.no_grad()
    def render_now(self):
        """Render the current state through the driving session: [S, S, 3] uint8."""
        import numpy as np

        with self._lock:
            start = time.perf_counter()
            image = self.session.render(self.params())[0]  # [3, S, S]
            pixels = (image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            self.last_render_ms = 1e3 * (time.perf_counter() - start)
        return pixels

    def _render_loop(self) -> None:
        next_due = time.perf_counter()
        while True:
            with self._wake:
                while not self._dirty and not self.playing and not self._closed:
                    self._wake.wait(0.5)
                if self._closed:
                    return
                self._dirty = False
            if self.playing and self.playback is not None:
                delay = next_due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_due = max(next_due + 1.0 / self.playback.fps, time.perf_counter() - 0.5)
            try:
                pixels = self.render_now()
            except Exception as exc:  # noqa: BLE001 - shown in the panel, the server keeps running
                self._status(f"render failed: {exc}")
                continue
            self.last_frame = pixels
            self._show(pixels)
            with self._wake:
                self.rendered += 1
                self._wake.notify_all()
            if self.playing and self.playback is not None:
                self._advance()

    def _advance(self) -> None:
        t = self.playback.params.batch_size
        now = time.perf_counter()
        if self._last_play is not None:
            gap = now - self._last_play
            self.playback_fps = 1.0 / gap if gap > 0 else float("nan")
        self._last_play = now
        self.frame_index = (self.frame_index + 1) % t
        if self._frame_slider is not None:
            self._frame_slider.value = self.frame_index  # fires refresh: coalesced by _dirty

    def _show(self, pixels) -> None:
        if self.view != VIEWS[0]:
            return
        for client in list(self.server.get_clients().values()):
            client.scene.set_background_image(_letterbox(pixels, client.camera.aspect), format="jpeg", jpeg_quality=90)
        fps = "" if math.isnan(self.playback_fps) else f", playback {self.playback_fps:.1f} frames/s"
        self._status(f"render {self.render_size}x{self.render_size}: {self.last_render_ms:.0f} ms{fps}")

    def _status(self, text: str) -> None:
        if self._status_text is not None:
            self._status_text.content = text

    def _on_connect(self, client) -> None:
        self._place_camera(client)
        if self.last_frame is not None and self.view == VIEWS[0]:
            client.scene.set_background_image(_letterbox(self.last_frame, client.camera.aspect), format="jpeg")

    def _place_camera(self, client) -> None:
        """Open on the source view: the camera where the portrait was taken, looking at the head."""
        w2c = self.avatar.camera.world_to_camera[0]
        position = -(w2c[:3, :3].T @ w2c[:3, 3]) * CAMERA_BACKOFF
        client.camera.position = tuple(float(v) for v in position)
        client.camera.look_at = (0.0, 0.0, 0.0)
        client.camera.up_direction = (0.0, 1.0, 0.0)
        k = self.avatar.camera.intrinsics[0]
        client.camera.fov = 2 * math.atan(0.5 * self.avatar.camera.height / float(k[1, 1]))

    def set_view(self, view: str) -> None:
        """``render`` (the real output as the background) or ``3D Gaussians`` (the raw splats)."""
        self.view = view
        raw = view == VIEWS[1]
        self.splats.visible = raw
        if raw:
            self.server.scene.set_background_image(None)
        self.refresh()

    # -- GUI --------------------------------------------------------------------------------
    def _slider(self, label: str, low: float, high: float, setter, step: float = 0.01):
        slider = self.server.gui.add_slider(label, min=low, max=high, step=step, initial_value=0.0)

        def changed(_event) -> None:
            setter(float(slider.value))
            self.playing = False
            self.frame_index = 0  # the sliders take over from a paused playback
            self.refresh()

        slider.on_update(changed)
        return slider

    def _build_gui(self) -> dict:
        gui = self.server.gui
        sliders = {}
        c = self.controls
        view = gui.add_dropdown("Main view", options=VIEWS, initial_value=VIEWS[0])
        view.on_update(lambda _event: self.set_view(view.value))
        self._status_text = gui.add_markdown("rendering...")
        if self.playback is not None:
            with gui.add_folder(f"Play: {self.playback.name}"):
                play = gui.add_button("Play / Pause")
                play.on_click(lambda _event: self.toggle_play())
                frame = gui.add_slider("frame", min=0, max=max(1, self.playback.params.batch_size - 1), step=1, initial_value=0)

                def scrub(_event) -> None:
                    self.frame_index = int(frame.value)
                    with self._wake:
                        self._dirty = True
                        self._wake.notify()

                frame.on_update(scrub)
                self._frame_slider = frame
        with gui.add_folder("Head pose (degrees)"):
            for name in ("yaw", "pitch", "roll"):
                sliders[name] = self._slider(name, -POSE_RANGE_DEGREES, POSE_RANGE_DEGREES, lambda v, n=name: setattr(c, n, v), 0.5)
        with gui.add_folder("Jaw and eyes (degrees)"):
            sliders["jaw"] = self._slider("jaw open", *JAW_RANGE_DEGREES, lambda v: setattr(c, "jaw", v), 0.5)
            sliders["eye_yaw"] = self._slider("eyes left/right", *EYE_RANGE_DEGREES, lambda v: setattr(c, "eye_yaw", v), 0.5)
            sliders["eye_pitch"] = self._slider("eyes up/down", *EYE_RANGE_DEGREES, lambda v: setattr(c, "eye_pitch", v), 0.5)
        with gui.add_folder("Expression"):
            for name in self.names:
                sliders[name] = self._slider(name, *EXPRESSION_RANGE, lambda v, n=name: c.expression.__setitem__(n, v))
        reset = gui.add_button("Reset")
        reset.on_click(lambda _event: self.reset())
        save = gui.add_button("Save frame")
        save.on_click(lambda event: self._saved_notice(event, self.save_frame()))
        return sliders

    def toggle_play(self) -> None:
        """Start or pause the playback of the driver (from the frame slider's position)."""
        if self.playback is None:
            return
        self.playing = not self.playing
        self._last_play = None
        self.refresh()

    def reset(self) -> None:
        self.playing = False
        self.frame_index = 0
        for slider in self.sliders.values():
            slider.value = 0.0  # each assignment fires the slider's update callback
        self.refresh()

    def _saved_notice(self, event, path: Path) -> None:
        if event.client is not None:
            event.client.add_notification(title="Frame saved", body=str(path), auto_close_seconds=4.0)

    def save_frame(self) -> Path:
        """Render the current state through the driving session and write the next PNG
        (``render_size`` x ``render_size``)."""
        from PIL import Image

        from gshead.io.media import atomic_output

        pixels = self.render_now()
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"frame-{len(self.saved) + 1:04d}.png"
        while path.exists():
            self.saved.append(path)
            path = self.save_dir / f"frame-{len(self.saved) + 1:04d}.png"
        with atomic_output(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        self.saved.append(path)
        return path

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._worker.join(timeout=10)
        self.server.stop()


def _letterbox(pixels, aspect: float):
    """A square render [S, S, 3] padded with black to the browser view's ``aspect`` (width /
    height), so the background is shown undistorted and centred."""
    import numpy as np

    s = pixels.shape[0]
    if not aspect or not math.isfinite(aspect) or abs(aspect - 1.0) < 1e-3:
        return pixels
    if aspect > 1.0:
        pad = round(s * aspect) - s
        return np.pad(pixels, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    pad = round(s / aspect) - s
    return np.pad(pixels, ((pad // 2, pad - pad // 2), (0, 0), (0, 0)))


def viewer_unavailable() -> str | None:
    """Why the viewer cannot start here (viser missing), or None."""
    import importlib.util

    if importlib.util.find_spec("viser") is None:
        return "the viewer needs viser: pip install 'gshead[viewer]' (or pip install viser)"
    return None


__all__ = ["AvatarViewer", "Controls", "Playback", "covariances", "viewer_unavailable"]
