"""What ``gshead reenact`` adds around the driving session: camera paths, the driver panel of a
side-by-side video, and PNG grids. A private helper of ``gshead.commands.reenact`` (not a
subcommand).

- ``orbit_cameras``: a novel-view path. The camera swings about the vertical axis through the
  head's centre, yaw ``degrees * sin(2 pi t / T)``: frame 0 is the source view, the first quarter
  turns to ``+degrees``, the third quarter to ``-degrees``, and the clip ends back in front.
- ``DriverPanels``: the left half of ``--side-by-side``. For a video driver it is the driving
  frame, cropped where tracking cropped it (the sequence's per-frame crop boxes); for ``demo``
  and tracked-sequence drivers (which have no pictures) it is the head model's mesh posed by the
  frame's parameters (the avatar's identity, the frame's expression, jaw, eyes and head pose),
  splatted as one shaded Gaussian per vertex with the avatar's rasterizer from the same camera
  as the result. So the panel shows
  exactly the motion signal the driver receives, and under ``--camera orbit`` it turns with it.
- ``GridWriter``: ``-o frames.png`` tiles every frame into one image (row-major, about square),
  for still drivers and short clips; written atomically like the videos.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.types import Camera, Gaussians

if TYPE_CHECKING:
    from gshead.io.avatar import LoadedAvatar
    from gshead.core.types import HeadParams

MAX_GRID_SIDE = 16384
"""Largest PNG grid side in pixels (beyond it, ask for fewer frames or a smaller --size)."""

SKIN = (0.93, 0.76, 0.64)
BACKDROP = (0.16, 0.17, 0.2)
LIGHT = (-0.35, 0.45, 0.82)  # key light from the upper left front, as in ``gshead headmodel render``


# ----------------------------------------------------------------------------------- cameras
def head_centre(loaded: LoadedAvatar) -> Tensor:
    """The centre of the head model's template [3] (model units): the orbit's pivot."""
    template = loaded.head_model.template  # [V, 3]
    return 0.5 * (template.min(0).values + template.max(0).values)


def orbit_pivot(loaded: LoadedAvatar) -> Tensor:
    """Where the orbit turns [3]: the head's centre placed by the avatar's source pose (a tracked
    portrait's head is rarely at the origin; turning about the bare template's centre swung it
    out of the frame)."""
    centre = head_centre(loaded)
    pose = loaded.avatar.source.pose_matrix()[0].to("cpu", centre.dtype)
    return pose[:3, :3] @ centre.to("cpu") + pose[:3, 3]


def orbit_cameras(camera: Camera, frames: int, degrees: float, pivot: Tensor) -> Camera:
    """``camera`` [1] swung about the vertical (+y) axis through ``pivot`` [3]: [frames] cameras
    with yaw ``degrees * sin(2 pi t / frames)`` (frame 0 is ``camera`` itself)."""
    t = torch.arange(frames, dtype=torch.float64)
    yaw = torch.deg2rad(torch.tensor(float(degrees), dtype=torch.float64)) * torch.sin(
        2 * math.pi * t / frames
    )
    c, s = torch.cos(yaw), torch.sin(yaw)
    rot = torch.zeros(frames, 4, 4, dtype=torch.float64)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 2, 0], rot[:, 2, 2] = c, s, -s, c
    rot[:, 1, 1] = rot[:, 3, 3] = 1.0
    p = pivot.to("cpu", torch.float64)  # the path is built on the CPU, then moved to the camera's device
    rot[:, :3, 3] = p - rot[:, :3, :3] @ p  # rotate about the pivot: T(p) R T(-p)
    dtype = camera.world_to_camera.dtype
    return camera.expand(frames).moved(rot.to(dtype=dtype, device=camera.world_to_camera.device))


def camera_slice(camera: Camera, index: slice) -> Camera:
    """Cameras ``index`` of a batch of cameras."""
    return Camera(camera.world_to_camera[index], camera.intrinsics[index], camera.width, camera.height)


# ----------------------------------------------------------------------------------- driver panel
def _vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [B, V, 3] of ``vertices`` [B, V, 3]."""
    a, b, c = (vertices[:, faces[:, k]] for k in range(3))
    face_normals = torch.linalg.cross(b - a, c - a)  # [B, F, 3]
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, faces[:, k], face_normals)
    return F.normalize(normals, dim=-1)


def mesh_gaussians(head_model, params: HeadParams) -> Gaussians:
    """The posed mesh [B, V] as round Gaussians, one per vertex, Lambert-shaded skin (3 channels)."""
    vertices = head_model(params).vertices  # [B, V, 3]
    faces = head_model.faces.long()  # [F, 3]
    b, v = vertices.shape[:2]
    edges = (head_model.template[faces[:, 0]] - head_model.template[faces[:, 1]]).norm(dim=-1)
    sigma = 0.6 * float(edges.mean())
    like = {"dtype": vertices.dtype, "device": vertices.device}
    light = F.normalize(torch.tensor(LIGHT, **like), dim=0)
    shade = 0.22 + 0.78 * (_vertex_normals(vertices, faces) @ light).abs()  # [B, V], two-sided
    colour = shade[..., None] * torch.tensor(SKIN, **like)  # [B, V, 3]
    quats = torch.zeros(b, v, 4, **like)
    quats[..., 0] = 1.0
    return Gaussians(
        means=vertices,
        quats=quats,
        scales=torch.full((b, v, 3), sigma, **like),
        opacities=torch.full((b, v), 0.95, **like),
        features=colour,
    )


class DriverPanels:
    """The left half of side-by-side frames: cropped driving-video frames, or the posed mesh."""

    def __init__(self, loaded: LoadedAvatar, driver: str) -> None:
        from gshead.jobs.tracking import is_video

        self.loaded = loaded
        self._frames = self._video_crops(Path(driver)) if driver != "demo" and is_video(driver) else None

    def _video_crops(self, path: Path):
        """(frame [1, 3, H, W], crop box) of the driving video, cropped where tracking cropped it
        (the boxes stored in the tracked sequence; ``reenact`` has just tracked it, so this is a
        cache hit). Frames are decoded lazily."""
        from gshead.io.media import read_video
        from gshead.jobs.tracking import track_with_pipeline
        from gshead.core.types import CropBox

        seq, _cached, _tracker = track_with_pipeline(path, self.loaded.config, self.loaded.head_model)
        crops = seq.crop  # [T, 3] (left, top, side); NaN: unknown
        frames, _fps, _count = read_video(path)
        for i, frame in enumerate(frames):
            left, top, side = (float(v) for v in crops[min(i, crops.shape[0] - 1)])
            known = all(math.isfinite(v) for v in (left, top, side)) and side > 0
            yield (
                frame,
                CropBox(left, top, side) if known else CropBox.centred(frame.shape[-1], frame.shape[-2]),
            )

    def render(self, params: HeadParams, camera: Camera) -> Tensor:
        """Panels [B, 3, H, W] for the next B frames, ``params`` [B] seen by ``camera`` [B]."""
        from gshead.core.geometry import crop_square

        b, w, h = params.batch_size, camera.width, camera.height
        if self._frames is not None:
            out = []
            for _ in range(b):
                frame, box = next(self._frames)
                square = crop_square(frame, box, max(w, h))
                out.append(
                    F.interpolate(square, size=(h, w), mode="bilinear", align_corners=False)
                    if w != h
                    else square
                )
            return torch.cat(out).clamp(0.0, 1.0)
        avatar = self.loaded.avatar
        params = params.replace(identity=avatar.source.identity.expand(b, -1))
        mesh = mesh_gaussians(self.loaded.head_model, params)
        view = camera.expand(b).moved(params.pose_matrix())
        background = torch.tensor(BACKDROP, dtype=mesh.means.dtype, device=mesh.means.device)
        render = self.loaded.rasterizer(mesh, view, background)
        return render.features[:, :3].clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------- PNG grid
def grid_shape(frames: int) -> tuple[int, int]:
    """(rows, columns) of an about-square grid holding ``frames`` tiles."""
    columns = max(1, math.ceil(math.sqrt(frames)))
    return math.ceil(frames / columns), columns


def tile_grid(frames: Tensor, columns: int) -> Tensor:
    """Frames [T, 3, H, W] tiled row-major into one image [3, rows * H, columns * W] (black fill)."""
    t, c, h, w = frames.shape
    rows = math.ceil(t / columns)
    padded = torch.zeros(rows * columns, c, h, w, dtype=frames.dtype)
    padded[:t] = frames
    return padded.view(rows, columns, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, columns * w)


class GridWriter:
    """Collects frames like ``VideoWriter`` and writes them as one PNG grid, atomically, on exit."""

    def __init__(self, path: str | Path, frames: int, width: int, height: int) -> None:
        self.path = Path(path)
        self.rows, self.columns = grid_shape(frames)
        self.width, self.height = self.columns * width, self.rows * height
        if max(self.width, self.height) > MAX_GRID_SIDE:
            raise InputError(
                f"{self.path}: a grid of {frames} frames would be {self.width}x{self.height} pixels; "
                f"expected at most {MAX_GRID_SIDE} per side (use fewer --frames or a smaller --size)"
            )
        self._frames: list[Tensor] = []

    def __enter__(self) -> GridWriter:
        return self

    def write(self, frames: Tensor) -> None:
        """Append frames [B, 3, H, W] (or [B, 4, H, W] with alpha) in [0, 1]."""
        self._frames.append(frames.detach().float().cpu())

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        import numpy as np
        from PIL import Image

        from gshead.io.media import atomic_output

        if not self._frames:
            raise InputError(f"{self.path}: no frames were rendered; a grid needs at least one frame")
        grid = tile_grid(torch.cat(self._frames), self.columns)  # [3 or 4 (RGBA), H, W]
        pixels = (grid.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        mode = "RGBA" if pixels.shape[-1] == 4 else "RGB"
        with atomic_output(self.path) as tmp:
            Image.fromarray(np.ascontiguousarray(pixels), mode=mode).save(tmp, format="PNG")


def serve_until_interrupted(close) -> int:
    """Keep a local server (running in its own threads) up until Ctrl-C, then ``close()`` it; 0."""
    import time

    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return 0
