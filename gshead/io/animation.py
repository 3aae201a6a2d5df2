"""Animated exports: an avatar's static Gaussians once, its dynamic Gaussians per frame.

``gshead export AVATAR --driver SPEC -o DIR`` writes this folder and ``gshead view DIR`` plays it
in a WebGL page (``gshead/web/player/``). Layout, version 1 (``FORMAT``, ``VERSION``)::

    DIR/manifest.json   what follows: counts, frame rate, byte layout, convention, scale, camera
    DIR/static.ply      the Ns static Gaussians (they never move in head space), a standard 3DGS
                        PLY with SH degree 0 (``gshead.io.ply``), readable by any splat viewer
    DIR/dynamic.ply     the Nd dynamic (driven) Gaussians at frame 0, same PLY layout: their
                        colours, opacities and sizes, which do not change from frame to frame
    DIR/frames.bin      T records, float32 little-endian, one per frame, each
                        ``16 + 7 * Nd`` floats (``record_floats`` in the manifest):
                          pose   [4, 4]   row-major head pose (see below)
                          means  [Nd, 3]  dynamic centres, head space
                          quats  [Nd, 4]  dynamic rotations (w, x, y, z), head space, unit norm
    DIR/scales.bin      only when the driver changes sizes over time: [T, Nd, 3] float32
                        little-endian standard deviations (the manifest then lists ``scales`` in
                        ``per_frame``); otherwise every frame has dynamic.ply's sizes

Head pose. gshead drives the head pose as camera motion; a file has no camera, so each frame's
pose is a rigid 4x4 matrix ``P = [[R, t], [0, 1]]`` that moves *every* Gaussian of that frame,
static and dynamic, from head space to the world: ``x -> R x + t`` and ``q -> q(R) q``. This is
what ``gshead.jobs.posing.export_gaussians`` does to a single-frame export, so frame i of an
animated export is, Gaussian for Gaussian, the single-frame export of frame i's parameters.
(A viewer sets ``P`` as the transform of its splat objects and only re-uploads the Nd dynamic
centres and rotations each frame.)

Convention and units are those of ``gshead export`` (``gshead.jobs.posing``): ``up`` ``-y`` (the
default, the original 3DGS tools' OpenCV frame: x right, y down, z forward) or ``y`` (gshead's
y-up world); positions, sizes and ``t`` in metres times ``scale``. Head space, the poses and the
camera are all expressed in that convention: with gshead's pose ``(R0, t0)`` and the convention
rotation ``M``, ``R = M R0 M^T`` and ``t = scale * M t0``. ``camera`` in the manifest is the
avatar's source camera as ``gshead.jobs.posing.export_camera`` writes it (position, target, up,
field of view, intrinsics, world_to_camera).

Writing is atomic and all-or-nothing: everything goes into a hidden temporary folder beside DIR
that becomes DIR by one rename (``gshead.io.media.atomic_directory``); a non-finite value, an
error or Ctrl-C leaves DIR as it was. DIR must be new, empty, or a previous animated export
(one whose manifest names ``FORMAT``), which is replaced; any other non-empty folder is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import final

import numpy as np
import torch

from gshead.core.errors import InputError, NonFiniteError, require_finite
from gshead.core.geometry import quat_multiply, rotmat_to_quat
from gshead.core.types import Gaussians

FORMAT = "gshead-animation"
VERSION = 1
MANIFEST, STATIC, DYNAMIC, FRAMES, SCALES = (
    "manifest.json",
    "static.ply",
    "dynamic.ply",
    "frames.bin",
    "scales.bin",
)
POSE_FLOATS = 16
DYNAMIC_FLOATS = 7  # per dynamic Gaussian and frame: 3 centre + 4 rotation


def record_floats(dynamic_count: int) -> int:
    """Floats in one frame record of ``frames.bin``: the pose, then Nd centres and rotations."""
    return POSE_FLOATS + DYNAMIC_FLOATS * dynamic_count


def is_animation(folder: str | Path) -> bool:
    """Whether ``folder`` holds a manifest of an animated export (any version)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_animation_output(folder: str | Path) -> Path:
    """Refuse (InputError) an output folder the export must not write: a file, a folder with no
    parent, or a non-empty folder that is not a previous animated export. Returns ``Path``."""
    text = str(folder)
    if not text.strip() or text == "-":
        raise InputError(f"{text!r}: expected a folder name to write the animated export into")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; an export with --driver writes a folder")
    if not out.resolve().parent.is_dir():
        raise InputError(
            f"{out.parent}: no such folder; expected an existing folder to write {out.name} into"
        )
    if out.is_dir() and any(out.iterdir()) and not is_animation(out):
        raise InputError(
            f"{out}: folder is not empty and holds no previous animated export ({MANIFEST}); "
            "choose a new or empty folder"
        )
    return out


def _as_f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy(), dtype="<f4")


@final
class AnimationWriter:
    """Writes an animated export folder (the module docstring's layout), streaming the frames.

    ``static`` [1, Ns] and ``dynamic`` [1, Nd] are in head space and already in the export's
    convention and scale; ``dynamic`` is frame 0 (its colours, opacities and sizes are the ones
    stored). Use as a context manager and call ``write`` with batches of frames; the folder appears
    when the block ends without an error, with ``manifest`` (extra keys) merged into the manifest.
    """

    def __init__(
        self,
        folder: str | Path,
        static: Gaussians,
        dynamic: Gaussians,
        *,
        fps: float,
        up: str,
        scale: float,
        camera: dict | None = None,
        manifest: dict | None = None,
    ) -> None:
        if static.batch_size != 1 or dynamic.batch_size != 1:
            raise InputError("animated export: expected one set of static and dynamic Gaussians (batch 1)")
        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"--fps {fps:g}: expected a positive frame rate")
        self.folder = check_animation_output(folder)
        self.static, self.dynamic = static.to("cpu"), dynamic.to("cpu")
        self.fps, self.up, self.scale = float(fps), up, float(scale)
        self.camera, self.extra = camera, dict(manifest or {})
        self.frames = 0
        self._base_scales = _as_f32(self.dynamic.scales[0])  # [Nd, 3]
        self._scales_vary = False
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> AnimationWriter:
        from gshead.io.media import atomic_directory
        from gshead.io.ply import write_ply

        require_finite(self.static.tensors("static."), f"{self.folder}: not written")
        require_finite(self.dynamic.tensors("dynamic."), f"{self.folder}: not written")
        stack = contextlib.ExitStack()
        try:
            self._tmp = stack.enter_context(atomic_directory(self.folder))
            write_ply(self._tmp / STATIC, self.static, sh_degree=0)
            write_ply(self._tmp / DYNAMIC, self.dynamic, sh_degree=0)
            self._frames = stack.enter_context(open(self._tmp / FRAMES, "wb"))
            self._scales = stack.enter_context(open(self._tmp / SCALES, "wb"))
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        self._stack = stack
        return self

    def write(
        self,
        poses: torch.Tensor,  # [B, 4, 4] head space -> world, in the export's convention and scale
        means: torch.Tensor,  # [B, Nd, 3] head space
        quats: torch.Tensor,  # [B, Nd, 4] (w, x, y, z), head space
        scales: torch.Tensor | None = None,  # [B, Nd, 3]; None: dynamic.ply's
    ) -> None:
        """Append B frames. Non-finite values: NonFiniteError (and nothing is kept)."""
        if self._stack is None:
            raise RuntimeError("AnimationWriter.write outside its 'with' block")
        nd = self.dynamic.count
        b = poses.shape[0]
        if poses.shape != (b, 4, 4) or means.shape != (b, nd, 3) or quats.shape != (b, nd, 4):
            raise InputError(
                f"animated export: frame shapes {tuple(poses.shape)}, {tuple(means.shape)}, "
                f"{tuple(quats.shape)}; expected [B, 4, 4], [B, {nd}, 3], [B, {nd}, 4]"
            )
        arrays = {"pose": _as_f32(poses), "means": _as_f32(means), "quats": _as_f32(quats)}
        if scales is not None:
            if scales.shape != (b, nd, 3):
                raise InputError(f"animated export: scales {tuple(scales.shape)}; expected [B, {nd}, 3]")
            arrays["scales"] = _as_f32(scales)
        else:
            arrays["scales"] = np.broadcast_to(self._base_scales, (b, nd, 3))
        require_finite(arrays, f"{self.folder}: frames {self.frames}-{self.frames + b - 1}: not written")
        if not np.array_equal(arrays["scales"], np.broadcast_to(self._base_scales, (b, nd, 3))):
            self._scales_vary = True
        record = np.concatenate(
            [arrays["pose"].reshape(b, -1), arrays["means"].reshape(b, -1), arrays["quats"].reshape(b, -1)], 1
        )
        self._frames.write(record.astype("<f4").tobytes())
        self._scales.write(np.ascontiguousarray(arrays["scales"], dtype="<f4").tobytes())
        self.frames += b

    def manifest(self) -> dict:
        """The manifest.json content for the frames written so far."""
        nd = self.dynamic.count
        floats = record_floats(nd)
        per_frame = ["pose", "means", "quats"] + (["scales"] if self._scales_vary else [])
        return {
            "format": FORMAT,
            "version": VERSION,
            "frames": self.frames,
            "fps": self.fps,
            "static": {"file": STATIC, "count": self.static.count},
            "dynamic": {"file": DYNAMIC, "count": nd},
            "frames_file": {
                "file": FRAMES,
                "dtype": "float32",
                "byte_order": "little",
                "record_floats": floats,
                "record_bytes": 4 * floats,
                "fields": [
                    {"name": "pose", "shape": [4, 4], "offset_floats": 0, "layout": "row-major"},
                    {"name": "means", "shape": [nd, 3], "offset_floats": POSE_FLOATS},
                    {
                        "name": "quats",
                        "shape": [nd, 4],
                        "offset_floats": POSE_FLOATS + 3 * nd,
                        "order": "wxyz",
                    },
                ],
            },
            "scales_file": (
                {"file": SCALES, "dtype": "float32", "byte_order": "little", "shape": [self.frames, nd, 3]}
                if self._scales_vary
                else None
            ),
            "per_frame": per_frame,
            "pose": "x_world = R x + t, q_world = q(R) q for every Gaussian, static and dynamic",
            "up_axis": self.up,
            "convention": "opencv (x right, y down, z forward)"
            if self.up == "-y"
            else "y up, face towards +z",
            "scale": self.scale,
            "units": f"metres x {self.scale:g}",
            "camera": self.camera,
            **self.extra,
        }

    def __exit__(self, kind, value, traceback) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            if kind is None:
                if self.frames == 0:
                    raise InputError(f"{self.folder}: no frames to write")
                self._frames.close(), self._scales.close()
                if not self._scales_vary:
                    (self._tmp / SCALES).unlink()
                (self._tmp / MANIFEST).write_text(
                    json.dumps(self.manifest(), indent=2) + "\n", encoding="utf-8"
                )
                check_animation_output(self.folder)  # it may have changed while we worked
        except BaseException:
            if not stack.__exit__(*sys.exc_info()):
                raise
            return None
        return stack.__exit__(kind, value, traceback)


# --------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Animation:
    """An animated export read back (``read_animation``), in the file's convention and scale."""

    manifest: dict
    static: Gaussians  # [1, Ns] head space
    dynamic: Gaussians  # [1, Nd] frame 0, head space (colours, opacities, sizes)
    poses: torch.Tensor  # [T, 4, 4] head space -> world
    means: torch.Tensor  # [T, Nd, 3] head space
    quats: torch.Tensor  # [T, Nd, 4] (w, x, y, z) head space
    scales: torch.Tensor | None  # [T, Nd, 3], or None: the dynamic Gaussians' own every frame

    @property
    def frames(self) -> int:
        return self.poses.shape[0]

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    def frame(self, i: int) -> Gaussians:
        """Every Gaussian of frame ``i``, static then dynamic, posed in the world: [1, Ns + Nd]."""
        if not -self.frames <= i < self.frames:
            raise InputError(f"frame {i}: the animation has {self.frames} frames")
        d = self.dynamic
        scales = d.scales if self.scales is None else self.scales[i][None]
        dynamic = d.replace(means=self.means[i][None], quats=self.quats[i][None], scales=scales)
        return posed(Gaussians.cat([self.static, dynamic]), self.poses[i])


def posed(gaussians: Gaussians, pose: torch.Tensor) -> Gaussians:
    """``gaussians`` [B, N] moved by the rigid ``pose`` [4, 4]: x -> R x + t, q -> q(R) q."""
    pose = pose.to(torch.float64)
    dtype = gaussians.means.dtype
    r, t = pose[:3, :3], pose[:3, 3]
    means = (gaussians.means.to(torch.float64) @ r.T + t).to(dtype)
    q = rotmat_to_quat(r).to(dtype)  # [4] (w, x, y, z)
    quats = torch.nn.functional.normalize(quat_multiply(q, gaussians.quats), dim=-1)
    return gaussians.replace(means=means, quats=quats)


def read_animation(folder: str | Path) -> Animation:
    """Read an animated export folder; InputError for a missing or inconsistent file,
    NonFiniteError for NaN or infinite values."""
    from gshead.io.ply import read_ply

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: no {MANIFEST}; expected a folder written by 'gshead export --driver'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise InputError(f"{path}: {FORMAT} version {manifest.get('version')!r}; this gshead reads {VERSION}")
    try:
        t, ns, nd = (
            int(manifest["frames"]),
            int(manifest["static"]["count"]),
            int(manifest["dynamic"]["count"]),
        )
        float(manifest["fps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: incomplete manifest ({exc!r})") from None
    static, dynamic = read_ply(folder / STATIC), read_ply(folder / DYNAMIC)
    if static.count != ns or dynamic.count != nd:
        raise InputError(
            f"{folder}: {STATIC}/{DYNAMIC} hold {static.count}/{dynamic.count} Gaussians, the manifest says {ns}/{nd}"
        )
    floats = record_floats(nd)
    data = _read_floats(folder / FRAMES, t * floats).reshape(t, floats)
    poses = torch.from_numpy(data[:, :POSE_FLOATS].reshape(t, 4, 4).copy())
    means = torch.from_numpy(data[:, POSE_FLOATS : POSE_FLOATS + 3 * nd].reshape(t, nd, 3).copy())
    quats = torch.from_numpy(data[:, POSE_FLOATS + 3 * nd :].reshape(t, nd, 4).copy())
    scales = None
    if "scales" in manifest.get("per_frame", ()):
        scales = torch.from_numpy(_read_floats(folder / SCALES, t * nd * 3).reshape(t, nd, 3).copy())
    arrays = {"poses": poses, "means": means, "quats": quats}
    require_finite(arrays if scales is None else {**arrays, "scales": scales}, f"{folder}: not read")
    return Animation(manifest, static, dynamic, poses, means, quats, scales)


def _read_floats(path: Path, count: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: missing; the animated export is incomplete")
    size = path.stat().st_size
    if size != 4 * count:
        raise InputError(f"{path}: {size} bytes; the manifest implies {4 * count}")
    return np.fromfile(path, dtype="<f4", count=count)


__all__ = [
    "FORMAT",
    "VERSION",
    "Animation",
    "AnimationWriter",
    "NonFiniteError",
    "check_animation_output",
    "is_animation",
    "posed",
    "read_animation",
    "record_floats",
]
