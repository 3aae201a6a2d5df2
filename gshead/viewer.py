"""``gshead view``: a local web viewer for an avatar, with live expression, jaw, eye and pose control.

Built on viser (a web server that streams a three.js scene, Gaussian splats included, to the
browser). The page shows the avatar's Gaussians in 3D — static ones plus the driven ones posed
by the avatar's own driver — coloured by their first three feature channels, and a panel of
sliders: one per expression unit of the head model, jaw opening, eye direction and head pose.
Moving a slider re-poses the Gaussians at once. "Save frame" renders the current state through
the avatar's driving session (driver, rasterizer and refiner: the real output, not the preview)
and writes a PNG.

viser is optional (``pip install 'gshead[viewer]'``); nothing here imports it before a viewer
is started.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from gshead.core.geometry import quat_to_rotmat
from gshead.core.types import Gaussians, HeadParams
from gshead.jobs.posing import export_gaussians

EXPRESSION_RANGE = (-1.0, 1.0)
JAW_RANGE = (0.0, 0.6)  # radians of jaw opening (rotation about x)
EYE_RANGE = (-0.5, 0.5)  # radians, both eyes together
POSE_RANGE_DEGREES = 45.0
CAMERA_BACKOFF = 1.6  # the browser's camera starts this many times farther out than the source camera


def covariances(g: Gaussians) -> Tensor:
    """World covariances [N, 3, 3] of a one-frame Gaussians: R diag(s^2) R^T."""
    rot = quat_to_rotmat(g.quats[0])  # normalised first
    s2 = g.scales[0] ** 2
    return (rot * s2[:, None, :]) @ rot.transpose(1, 2)


@dataclass
class Controls:
    """The viewer's slider state; ``params`` turns it into head parameters for one frame."""

    expression: dict[str, float] = field(default_factory=dict)
    jaw: float = 0.0
    eye_yaw: float = 0.0
    eye_pitch: float = 0.0
    yaw: float = 0.0  # degrees
    pitch: float = 0.0  # degrees
    roll: float = 0.0  # degrees

    def params(self, neutral: HeadParams, names: tuple[str, ...]) -> HeadParams:
        import roma

        expr = neutral.expression.clone()
        for name, value in self.expression.items():
            expr[0, names.index(name)] = value
        jaw = torch.tensor([[self.jaw, 0.0, 0.0]])
        eye = [self.eye_pitch, self.eye_yaw, 0.0]
        eyes = torch.tensor([eye + eye])
        angles = torch.tensor([[math.radians(self.pitch), math.radians(self.yaw), math.radians(self.roll)]])
        rotation = roma.euler_to_rotvec("xyz", angles)
        return neutral.replace(expression=expr, jaw=jaw.to(expr), eyes=eyes.to(expr), rotation=rotation.to(expr))


class AvatarViewer:
    """A running viser server showing one avatar (see the module docstring).

    :param loaded: an avatar file read by ``gshead.io.avatar.load_avatar``.
    :param save_dir: where "Save frame" writes ``frame-0001.png``, ``frame-0002.png``, ...
    :param render_size: side of saved frames (default: the pipeline's render size).
    """

    def __init__(self, loaded, host: str = "127.0.0.1", port: int = 8080, save_dir: str | Path = ".", render_size: int | None = None) -> None:
        import viser

        self.loaded = loaded
        self.avatar = loaded.avatar
        self.names = tuple(loaded.head_model.expression_names)
        neutral = loaded.head_model.neutral(1)
        self.neutral = neutral.replace(identity=self.avatar.source.identity)
        self.controls = Controls(expression={n: 0.0 for n in self.names})
        self.session = loaded.session(render_size=render_size)
        self.save_dir = Path(save_dir)
        self.saved: list[Path] = []
        self._lock = threading.Lock()
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("+y")
        self.server.on_client_connect(self._place_camera)
        g = self._gaussians()
        self.splats = self.server.scene.add_gaussian_splats("/avatar", **g)
        self.sliders = self._build_gui()

    # -- scene ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}"

    def params(self) -> HeadParams:
        return self.controls.params(self.neutral, self.names)

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
        """Re-pose the Gaussians for the current controls and send them to the browser."""
        with self._lock:
            self.splats.set_gaussians(**self._gaussians())

    def _place_camera(self, client) -> None:
        """Open on the source view: the camera where the portrait was taken, looking at the head."""
        w2c = self.avatar.camera.world_to_camera[0]
        position = -(w2c[:3, :3].T @ w2c[:3, 3]) * CAMERA_BACKOFF
        client.camera.position = tuple(float(v) for v in position)
        client.camera.look_at = (0.0, 0.0, 0.0)
        client.camera.up_direction = (0.0, 1.0, 0.0)
        k = self.avatar.camera.intrinsics[0]
        client.camera.fov = 2 * math.atan(0.5 * self.avatar.camera.height / float(k[1, 1]))

    # -- GUI --------------------------------------------------------------------------------
    def _slider(self, label: str, low: float, high: float, setter, step: float = 0.01):
        slider = self.server.gui.add_slider(label, min=low, max=high, step=step, initial_value=0.0)

        def changed(_event) -> None:
            setter(float(slider.value))
            self.refresh()

        slider.on_update(changed)
        return slider

    def _build_gui(self) -> dict:
        gui = self.server.gui
        sliders = {}
        c = self.controls
        with gui.add_folder("Head pose (degrees)"):
            for name in ("yaw", "pitch", "roll"):
                sliders[name] = self._slider(name, -POSE_RANGE_DEGREES, POSE_RANGE_DEGREES, lambda v, n=name: setattr(c, n, v), 0.5)
        with gui.add_folder("Jaw and eyes (radians)"):
            sliders["jaw"] = self._slider("jaw open", *JAW_RANGE, lambda v: setattr(c, "jaw", v))
            sliders["eye_yaw"] = self._slider("eyes left/right", *EYE_RANGE, lambda v: setattr(c, "eye_yaw", v))
            sliders["eye_pitch"] = self._slider("eyes up/down", *EYE_RANGE, lambda v: setattr(c, "eye_pitch", v))
        with gui.add_folder("Expression"):
            for name in self.names:
                sliders[name] = self._slider(name, *EXPRESSION_RANGE, lambda v, n=name: c.expression.__setitem__(n, v))
        reset = gui.add_button("Reset")
        reset.on_click(lambda _event: self.reset())
        save = gui.add_button("Save frame")
        save.on_click(lambda event: self._saved_notice(event, self.save_frame()))
        return sliders

    def reset(self) -> None:
        for slider in self.sliders.values():
            slider.value = 0.0  # each assignment fires the slider's update callback
        self.refresh()

    def _saved_notice(self, event, path: Path) -> None:
        if event.client is not None:
            event.client.add_notification(title="Frame saved", body=str(path), auto_close_seconds=4.0)

    @torch.no_grad()
    def save_frame(self) -> Path:
        """Render the current controls through the driving session and write the next PNG."""
        import numpy as np
        from PIL import Image

        from gshead.io.media import atomic_output

        image = self.session.render(self.params())[0]  # [3, H, W]
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = self.save_dir / f"frame-{len(self.saved) + 1:04d}.png"
        while path.exists():
            self.saved.append(path)
            path = self.save_dir / f"frame-{len(self.saved) + 1:04d}.png"
        pixels = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        with atomic_output(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        self.saved.append(path)
        return path

    def close(self) -> None:
        self.server.stop()


def viewer_unavailable() -> str | None:
    """Why the viewer cannot start here (viser missing), or None."""
    import importlib.util

    if importlib.util.find_spec("viser") is None:
        return "the viewer needs viser: pip install 'gshead[viewer]' (or pip install viser)"
    return None


__all__ = ["AvatarViewer", "Controls", "covariances", "viewer_unavailable"]
