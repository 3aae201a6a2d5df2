"""GAGAvatar_track output (``optim.pkl`` / ``smoothed.pkl``) as a gshead ``TrackedSequence``.

GAGAvatar_track (github.com/xg-chu/GAGAvatar_track) writes a pickle of
``{frame_key: {field: numpy array}}``; per frame:

==================  =======  ===============================================================
``bbox``            [4]      head box (x0, y0, x1, y1) in [0, 1] of the tracked crop (dropped:
                             used only by the official training loss)
``shapecode``       [300]    FLAME identity -> ``HeadParams.identity``
``expcode``         [100]    FLAME expression -> ``HeadParams.expression``
``posecode``        [6]      [global pose, jaw] axis-angle: ``[:3]`` -> ``HeadParams.root``
                             (None where every frame's is 0, as GAGAvatar_track writes it; see
                             below), ``[3:]`` -> ``HeadParams.jaw``
``eyecode``         [6]      [left eye, right eye] axis-angle -> ``HeadParams.eyes``
``transform_matrix`` [3, 4]  pytorch3d ``[R|T]``: ``x_cam = x R + T`` (row vectors), camera +X
                             left, +Y up, +Z forward, FLAME x 5 units, NDC focal 12
==================  =======  ===============================================================

Frames are ordered by the integer after the key's last ``_`` (as the official loader does).

Camera, exactly: gshead's ``Camera`` is OpenCV (``x_cam = R_cv x + t_cv``, +X right, +Y down),
metres (FLAME x 5 / 5), pixels::

    F      = diag(-1, -1, 1)
    R_cv   = F R^T
    t_cv   = F T / 5
    K      = [[12 S/2, 0, S/2], [0, 12 S/2, S/2], [0, 0, 1]]     (S = size, 512 for GAGAvatar)

so a FLAME x 5 point ``x`` at NDC ``(12 X/Z, 12 Y/Z)`` of the pytorch3d camera lands at pixel
``u = S/2 (1 - 12 X/Z)``, ``v = S/2 (1 - 12 Y/Z)``, which is gshead's projection of ``x / 5``.
``to_gagavatar_track`` is the inverse (``R = R_cv^T F``, ``T = 5 F t_cv``).

Global pose (``posecode[:3]``): GAGAvatar_track itself always writes 0 there (its
``engines/engine_optim.py`` builds ``posecode = [zeros, jawpose]`` and puts the head pose into
``transform_matrix``); edited sequences and other FLAME trackers may not. The official inference
feeds it to FLAME's LBS, which turns the mesh, and so only the expression Gaussians, about FLAME
joint 0, while the plane Gaussians and the camera stay. It becomes ``HeadParams.root`` (a rotation
of the mesh about the root joint, not camera motion): ``configs/gagavatar.yaml``'s
``expression-gaussians`` (``compat: official``) applies it exactly so; any other driver gets it
as head pose about joint 0 (``gshead.core.pipeline.drive_frames``). The pickle is read with gshead's restricted unpickler
(plain NumPy arrays only; nothing in the file runs); a ``torch.save`` file of the same dict is read
with ``torch.load(weights_only=True)``.

Driving: GAGAvatar keeps the head pose in each frame's camera, gshead in ``HeadParams.rotation``
/ ``translation`` applied as motion of the fixed source camera (``Camera.moved``).
``poses_relative_to(seq, source_camera)`` turns each frame's camera into that pose,
``pose = inverse(w2c_source) @ w2c_frame``, so ``source_camera.moved(pose)`` is the frame's camera;
``track_frame`` picks one frame's parameters and camera (``gshead reconstruct --source-track``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.types import Camera, HeadParams
from gshead.io.sequence import TrackedSequence

FLAME_X5 = 5.0
FOCAL = 12.0
SIZE = 512
FIELDS = {"shapecode": 300, "expcode": 100, "posecode": 6, "eyecode": 6}
_FLIP = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))


def _frame_order(key: str) -> tuple[int, str]:
    tail = str(key).rsplit("_", 1)[-1]
    return (int(tail), str(key)) if tail.isdigit() else (-1, str(key))


def official_to_camera(transform: Tensor, size: int = SIZE, focal: float = FOCAL) -> Camera:
    """pytorch3d ``[R|T]`` [T, 3, 4] (FLAME x 5, focal ``focal``) -> gshead ``Camera`` [T] (module docstring)."""
    transform = transform.to(torch.float64)
    if transform.dim() != 3 or tuple(transform.shape[1:]) != (3, 4):
        raise InputError(f"GAGAvatar_track: transform_matrix must be [3, 4] per frame, got {list(transform.shape[1:])}")
    n = transform.shape[0]
    w2c = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    w2c[:, :3, :3] = _FLIP @ transform[:, :, :3].transpose(1, 2)
    w2c[:, :3, 3] = (_FLIP @ transform[:, :, 3:])[..., 0] / FLAME_X5
    f = focal * size / 2
    k = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Camera(w2c.float(), k.float().repeat(n, 1, 1), size, size)


def camera_to_official(camera: Camera) -> Tensor:
    """The inverse of ``official_to_camera``: gshead ``Camera`` [T] -> pytorch3d ``[R|T]`` [T, 3, 4]."""
    w2c = camera.world_to_camera.to(torch.float64)
    r = w2c[:, :3, :3].transpose(1, 2) @ _FLIP
    t = FLAME_X5 * (_FLIP @ w2c[:, :3, 3:])[..., 0]
    return torch.cat([r, t[..., None]], dim=-1).float()


def read_gagavatar_track(
    source: str | Path | dict[str, dict[str, Any]], fps: float = 25.0, size: int = SIZE
) -> TrackedSequence:
    """GAGAvatar_track results (a path to its pickle, or the loaded dict) -> ``TrackedSequence``
    on the ``flame`` head model, cameras for ``size`` x ``size`` crops (module docstring)."""
    sha = ""
    name = "GAGAvatar_track"
    if isinstance(source, (str, Path)):
        from gshead.io.safe_pickle import loads_restricted

        name = str(source)
        try:
            data_bytes = Path(source).read_bytes()
        except OSError as exc:
            raise InputError(f"{name}: cannot read the GAGAvatar_track file ({exc.strerror or exc})") from None
        sha = hashlib.sha256(data_bytes).hexdigest()
        records = _torch_records(data_bytes, name) if data_bytes[:2] == b"PK" else loads_restricted(data_bytes, name)
    else:
        records = source
    if not isinstance(records, dict) or not records:
        raise InputError(f"{name}: expected a non-empty dict {{frame_key: {{field: array}}}} (GAGAvatar_track output)")
    keys = sorted(records, key=_frame_order)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in (*FIELDS, "transform_matrix")}
    for key in keys:
        rec = records[key]
        if not isinstance(rec, dict):
            raise InputError(f"{name}: frame {key!r} is not a dict of arrays")
        for field, n in (*FIELDS.items(), ("transform_matrix", 12)):
            if field not in rec:
                raise InputError(f"{name}: frame {key!r} has no {field!r}; expected {', '.join(columns)}")
            value = np.asarray(rec[field], dtype=np.float64)
            if value.size != n:
                raise InputError(f"{name}: frame {key!r} field {field!r} has {value.size} values; expected {n}")
            columns[field].append(value.reshape(-1) if field != "transform_matrix" else value.reshape(3, 4))
    t = {k: torch.from_numpy(np.stack(v)) for k, v in columns.items()}
    if not all(bool(torch.isfinite(v).all()) for v in t.values()):
        raise InputError(f"{name}: non-finite values in the tracker output")
    glob = t["posecode"][:, :3]
    n = len(keys)
    params = HeadParams(
        identity=t["shapecode"].float(),
        expression=t["expcode"].float(),
        jaw=t["posecode"][:, 3:].float(),
        eyes=t["eyecode"].float(),
        rotation=torch.zeros(n, 3),
        translation=torch.zeros(n, 3),
        root=glob.float() if bool(glob.any()) else None,  # FLAME's global pose, about joint 0
    )
    return TrackedSequence(
        params=params,
        camera=official_to_camera(t["transform_matrix"], size),
        valid=torch.ones(n, dtype=torch.bool),
        fps=float(fps),
        head_model="flame",
        source_sha256=sha,
        tracker=json.dumps({"name": "GAGAvatar_track", "frames": [str(k) for k in keys]}),
    )


def _torch_records(data: bytes, name: str) -> Any:
    """A ``torch.save`` zip file of the per-frame dict, read weights-only (tensors -> arrays)."""
    import io

    try:
        records = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: not a readable weights-only torch file ({reason[:200]})") from None
    if isinstance(records, dict):
        records = {
            k: {f: (v.numpy() if isinstance(v, Tensor) else v) for f, v in r.items()} if isinstance(r, dict) else r
            for k, r in records.items()
        }
    return records


def _normalised_intrinsics(camera: Camera) -> Tensor:
    scale = torch.tensor([[1.0 / camera.width], [1.0 / camera.height], [1.0]], dtype=torch.float64)
    return camera.intrinsics.to(torch.float64) * scale


def poses_relative_to(seq: TrackedSequence, source_camera: Camera, what: str = "GAGAvatar_track") -> HeadParams:
    """``seq.params`` [T] with ``rotation`` / ``translation`` set so that driving with the fixed
    ``source_camera`` [1] reproduces every frame's camera: ``pose = inverse(w2c_source) @ w2c_frame
    @ pose_frame`` (``pose_frame``: the sequence's own head pose, 0 for GAGAvatar_track), i.e.
    ``source_camera.moved(params.pose_matrix())`` equals ``seq.camera.moved(seq.params.pose_matrix())``.
    The intrinsics (relative to the image size) must match the source camera's: head pose cannot
    change the focal length or the principal point (``InputError`` otherwise)."""
    import roma

    if source_camera.batch_size != 1:
        raise InputError(f"{what}: expected one source camera, got {source_camera.batch_size}")
    k_src, k_frames = _normalised_intrinsics(source_camera), _normalised_intrinsics(seq.camera)
    worst = float((k_frames - k_src).abs().max())
    if worst > 1e-5:
        i = int((k_frames - k_src).abs().flatten(1).max(1).values.argmax())
        f_src, f_frame = (float(k[0, 0, 0] if k.shape[0] == 1 else k[i, 0, 0]) for k in (k_src, k_frames))
        raise InputError(
            f"{what}: frame {i}'s intrinsics differ from the avatar's source camera (focal {f_frame:.4g} vs "
            f"{f_src:.4g} image widths, largest difference {worst:.3g}); head pose cannot change them"
        )
    w2c_src = source_camera.world_to_camera.to(torch.float64)
    frames = seq.camera.world_to_camera.to(torch.float64) @ seq.params.pose_matrix().to(torch.float64)
    pose = torch.linalg.inv(w2c_src) @ frames
    dtype = seq.params.rotation.dtype
    return seq.params.replace(
        rotation=roma.rotmat_to_rotvec(pose[:, :3, :3]).to(dtype), translation=pose[:, :3, 3].to(dtype)
    )


def track_frame(seq: TrackedSequence, frame: str | int | None = None, what: str = "GAGAvatar_track") -> tuple[HeadParams, Camera]:
    """One frame's ``HeadParams`` [1] and ``Camera`` [1]: ``frame`` is an index (negative counts
    from the end), a frame key of the tracker's file, or None for the first frame."""
    n = len(seq)
    keys: list[str] = []
    try:
        keys = [str(k) for k in json.loads(seq.tracker).get("frames", [])]
    except (ValueError, AttributeError, TypeError):
        keys = []
    if frame is None or frame == "":
        index = 0
    elif isinstance(frame, str) and frame in keys:
        index = keys.index(frame)
    else:
        try:
            index = int(frame)
        except (TypeError, ValueError):
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            raise InputError(f"{what}: no frame {frame!r}; expected an index 0..{n - 1} or a key ({shown})") from None
        if not -n <= index < n:
            raise InputError(f"{what}: frame {index} is out of range; the track has {n} frames (0..{n - 1})")
        index %= n
    cam = seq.camera
    camera = Camera(
        cam.world_to_camera[index : index + 1], cam.intrinsics[index : index + 1], cam.width, cam.height
    )
    return seq.params.select(index), camera


def to_gagavatar_track(seq: TrackedSequence, prefix: str = "frame") -> dict[str, dict[str, np.ndarray]]:
    """A ``TrackedSequence`` (head pose in the cameras) back to GAGAvatar_track's per-frame dict (no
    ``bbox``); ``params.root`` is the global pose ``posecode[:3]`` (0 without one)."""
    if bool((seq.params.rotation.abs() > 1e-6).any()) or bool((seq.params.translation.abs() > 1e-6).any()):
        raise InputError("to_gagavatar_track: head pose must be in the cameras (rotation, translation 0)")
    transforms = camera_to_official(seq.camera)
    p = seq.params
    root = p.root if p.root is not None else torch.zeros_like(p.jaw)
    out = {}
    for i in range(p.batch_size):
        out[f"{prefix}_{i}"] = {
            "shapecode": p.identity[i].numpy().astype(np.float32),
            "expcode": p.expression[i].numpy().astype(np.float32),
            "posecode": np.concatenate([root[i].numpy(), p.jaw[i].numpy()]).astype(np.float32),
            "eyecode": p.eyes[i].numpy().astype(np.float32),
            "transform_matrix": transforms[i].numpy(),
        }
    return out


__all__ = [
    "camera_to_official",
    "official_to_camera",
    "poses_relative_to",
    "read_gagavatar_track",
    "to_gagavatar_track",
    "track_frame",
]
