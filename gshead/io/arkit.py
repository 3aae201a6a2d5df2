"""ARKit blendshape curves in and out: Live Link Face CSV and ARKit-named JSON (Audio2Face kind).

Read by ``gshead reenact AVATAR --driver FILE.csv|FILE.json``; written by
``gshead track VIDEO --format arkit-csv -o OUT.csv``. Only head models whose expressions carry
ARKit names (``gshead headmodel info`` lists them: ``anny-head`` has all 52, ``procedural`` 15) can
be driven; names match case-insensitively (Live Link's ``EyeBlinkLeft`` is ``eyeBlinkLeft``).
A head model with none of the 52 names is refused in one line. Curves the head model lacks are
left out (``arkit_params`` returns their names); the head model's ARKit expressions missing from
the file stay at 0.

Accepted layouts
----------------
- **Live Link Face CSV** (Epic's iPhone app): a header row, then one row a frame::

      Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,HeadPitch,HeadRoll,
      LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll

  ``Timecode`` and ``BlendShapeCount`` are read past; every other column must be one of the 52
  ARKit names or one of the nine angles (any subset, any order, any capitalisation). The frame
  rate is not in the file: ``reenact --fps`` sets the output's.
- **JSON**: ``{"names": [...], "weights": [[...], ...], "fps": 30}`` (``weights`` one row a frame,
  one column a name; ``fps`` optional), or Audio2Face's blendshape export
  ``{"facsNames": [...], "weightMat": [[...], ...], "exportFps": 30, ...}``. Names as in the CSV,
  so the nine angles may be given too.

Angles (radians) and axes
-------------------------
The head and eye angles are taken in ARKit's face frame, which is gshead's head-model frame:
x to the subject's left (the viewer's right), y up, z out of the face. Yaw turns about +y
(positive: the face turns towards the subject's left, +x), pitch about +x (positive: the face
nods down), roll about +z (positive: the top of the head tilts towards the subject's right, -x),
right-hand rule, composed as R = R_y(yaw) R_x(pitch) R_z(roll). The head rotation goes into
``HeadParams.rotation`` and the eye rotations into ``HeadParams.eyes`` as axis-angle; a curve
file has no translation, so the head stays where the avatar's source camera sees it. ``JawOpen``
drives the ``jawOpen`` expression (``HeadParams.jaw`` stays 0).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gshead.core.errors import InputError
from gshead.core.types import HeadParams

ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
    "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight",
    "jawLeft", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthRight", "mouthLeft",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft",
    "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft", "browDownRight",
    "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip
"""The 52 ARKit blendshape names (Apple's spelling), in Live Link Face's column order."""

ANGLE_NAMES = (
    "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip
"""Live Link Face's angle columns (radians), see the module notes for their axes."""

SKIPPED_COLUMNS = ("Timecode", "BlendShapeCount")

_CANON = {n.lower(): n for n in (*ARKIT_NAMES, *ANGLE_NAMES)}
MAX_FRAMES = 1_000_000


@dataclass(frozen=True)
class ArkitCurves:
    """Curves read from a file: ``names`` (ARKit spelling, or ``ANGLE_NAMES``), ``values`` [T, K]."""

    names: tuple[str, ...]
    values: np.ndarray
    fps: float | None = None

    def column(self, name: str) -> np.ndarray | None:
        return self.values[:, self.names.index(name)] if name in self.names else None


def _canonical(path: Path, names: list) -> tuple[str, ...]:
    out, unknown = [], []
    for raw in names:
        key = str(raw).strip()
        canon = _CANON.get(key.lower())
        if canon is None:
            unknown.append(key)
        else:
            out.append(canon)
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} unknown curve name(s) ({', '.join(map(repr, unknown[:5]))}); "
            f"expected the 52 ARKit blendshape names (e.g. EyeBlinkLeft, JawOpen) or {', '.join(ANGLE_NAMES)}"
        )
    dupes = sorted({n for n in out if out.count(n) > 1})
    if dupes:
        raise InputError(f"{path}: curve name(s) given twice: {', '.join(dupes)}")
    return tuple(out)


def _matrix(path: Path, rows, width: int, where: str) -> np.ndarray:
    try:
        values = np.asarray(rows, dtype=np.float64).reshape(-1, width)
    except (TypeError, ValueError):
        raise InputError(f"{path}: {where} must be numbers, {width} a frame; found something else") from None
    if len(values) == 0:
        raise InputError(f"{path}: no frames; expected at least one row of curve values")
    if len(values) > MAX_FRAMES:
        raise InputError(f"{path}: {len(values)} frames; at most {MAX_FRAMES} are read")
    bad = ~np.isfinite(values)
    if bad.any():
        frame = int(np.argwhere(bad)[0][0])
        raise InputError(f"{path}: frame {frame} has a non-finite value (NaN or infinite); expected numbers")
    return values


def _read_csv(path: Path) -> ArkitCurves:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InputError(
            f"{path}: empty; expected a Live Link Face CSV (Timecode,BlendShapeCount,EyeBlinkLeft,...)"
        )
    header = [h.strip() for h in rows[0]]
    skipped = {s.lower() for s in SKIPPED_COLUMNS}
    keep = [i for i, h in enumerate(header) if h.lower() not in skipped]
    names = _canonical(path, [header[i] for i in keep])
    body = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(f"{path}: line {line} has {len(row)} values; the header has {len(header)}")
        try:
            body.append([float(row[i]) for i in keep])
        except ValueError:
            raise InputError(f"{path}: line {line} holds a value that is not a number") from None
    return ArkitCurves(names, _matrix(path, body, len(names), "the rows"))


def _read_json(path: Path) -> ArkitCurves:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    layouts = (("names", "weights", "fps"), ("facsNames", "weightMat", "exportFps"))
    for names_key, weights_key, fps_key in layouts:
        if isinstance(data, dict) and names_key in data and weights_key in data:
            break
    else:
        raise InputError(
            f"{path}: expected a JSON object with 'names' and 'weights' (or Audio2Face's "
            "'facsNames' and 'weightMat')"
        )
    if not isinstance(data[names_key], list):
        raise InputError(f"{path}: '{names_key}' must be a list of curve names")
    names = _canonical(path, data[names_key])
    fps = data.get(fps_key)
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise InputError(f"{path}: '{fps_key}' {fps!r}; expected a positive frame rate")
    rows = data[weights_key]
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != len(names) for r in rows):
        raise InputError(
            f"{path}: '{weights_key}' must be a list of frames, each a list of {len(names)} numbers"
        )
    return ArkitCurves(
        names, _matrix(path, rows, len(names), f"'{weights_key}'"), float(fps) if fps else None
    )


def is_curves_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".csv", ".json")


def read_arkit(path: str | Path) -> ArkitCurves:
    """Curves from a Live Link Face ``.csv`` or an ARKit-named ``.json`` (layouts above)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a Live Link Face .csv or an ARKit-named .json")
    return _read_csv(path) if path.suffix.lower() == ".csv" else _read_json(path)


def arkit_indices(head_model, what: str = "ARKit curves", model_name: str | None = None) -> dict[str, int]:
    """ARKit name -> the head model's expression index, case-insensitively; one-line InputError
    when the head model has none of the 52 names."""
    names = tuple(head_model.expression_names)
    lower = {n.lower(): i for i, n in enumerate(names)}
    found = {n: lower[n.lower()] for n in ARKIT_NAMES if n.lower() in lower}
    if not found:
        model = model_name or getattr(head_model, "name", None) or type(head_model).__name__
        raise InputError(
            f"{what}: head model {model!r} has no ARKit-named expressions (its names: "
            f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); use a head model with ARKit names, "
            "e.g. anny-head"
        )
    return found


def euler_to_rotvec(yaw, pitch, roll) -> torch.Tensor:
    """Axis-angle [T, 3] of R = R_y(yaw) R_x(pitch) R_z(roll) (radians, arrays [T])."""
    import roma

    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    axis = torch.eye(3, dtype=torch.float64)
    rot = lambda angle, i: roma.rotvec_to_rotmat(as_t(angle)[:, None] * axis[i])
    return roma.rotmat_to_rotvec(rot(yaw, 1) @ rot(pitch, 0) @ rot(roll, 2))


def rotvec_to_euler(rotvec: torch.Tensor) -> np.ndarray:
    """(yaw, pitch, roll) [T, 3] of axis-angle [T, 3], the inverse of ``euler_to_rotvec``."""
    import roma

    r = roma.rotvec_to_rotmat(rotvec.detach().to("cpu", torch.float64))
    yaw = torch.atan2(r[:, 0, 2], r[:, 2, 2])
    pitch = torch.asin((-r[:, 1, 2]).clamp(-1.0, 1.0))
    roll = torch.atan2(r[:, 1, 0], r[:, 1, 1])
    return torch.stack([yaw, pitch, roll], -1).numpy()


def arkit_params(
    curves: ArkitCurves, head_model, what: str = "ARKit curves", model_name: str | None = None
) -> tuple[HeadParams, list[str]]:
    """Head parameters [T] of ``head_model`` for ``curves``, and the blendshape names the head
    model lacks (left out)."""
    indices = arkit_indices(head_model, what, model_name)
    t = len(curves.values)
    params = head_model.neutral(t)
    dtype = params.expression.dtype
    expr = params.expression.clone()
    ignored = []
    for name in curves.names:
        if name in ANGLE_NAMES:
            continue
        if name in indices:
            expr[:, indices[name]] = torch.as_tensor(curves.column(name), dtype=dtype)
        else:
            ignored.append(name)
    zero = np.zeros(t)
    angles = lambda prefix: [
        c if (c := curves.column(f"{prefix}{a}")) is not None else zero for a in ("Yaw", "Pitch", "Roll")
    ]
    changes = {"expression": expr}
    if any(f"Head{a}" in curves.names for a in ("Yaw", "Pitch", "Roll")):
        changes["rotation"] = euler_to_rotvec(*angles("Head")).to(dtype)
    if any(n.startswith(("LeftEye", "RightEye")) for n in curves.names):
        eyes = torch.cat([euler_to_rotvec(*angles("LeftEye")), euler_to_rotvec(*angles("RightEye"))], -1)
        changes["eyes"] = eyes.to(dtype)
    return params.replace(**changes), ignored


def live_link_name(name: str) -> str:
    """``eyeBlinkLeft`` -> ``EyeBlinkLeft`` (Live Link Face's capitalisation)."""
    return name[0].upper() + name[1:]


def timecode(frame: int, fps: float) -> str:
    """Live Link-style ``HH:MM:SS:FF.mmm`` of frame ``frame`` at ``fps``."""
    seconds = frame / fps
    whole = int(seconds)
    ff = min(int(round((seconds - whole) * fps, 6)), max(0, math.ceil(fps) - 1))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}:{ff:02d}.000"


def write_arkit_csv(
    path: str | Path, params: HeadParams, head_model, fps: float = 30.0, model_name: str | None = None
) -> Path:
    """Write head parameters [T] of an ARKit-named ``head_model`` as a Live Link Face CSV, atomically:
    the 52 blendshapes (0 where the head model lacks one), head and eye yaw/pitch/roll (radians).
    The head translation has no column and is dropped."""
    from gshead.io.media import atomic_output

    indices = arkit_indices(head_model, "--format arkit-csv", model_name)
    expr = params.expression.detach().to("cpu", torch.float64).numpy()
    t = params.batch_size
    head = rotvec_to_euler(params.rotation)
    left, right = rotvec_to_euler(params.eyes[:, :3]), rotvec_to_euler(params.eyes[:, 3:])
    header = [*SKIPPED_COLUMNS, *(live_link_name(n) for n in ARKIT_NAMES), *ANGLE_NAMES]
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(t):
            shapes = [expr[i, indices[n]] if n in indices else 0.0 for n in ARKIT_NAMES]
            values = [*shapes, *head[i], *left[i], *right[i]]
            writer.writerow([timecode(i, fps), len(ARKIT_NAMES), *(f"{float(v):.7g}" for v in values)])
    return path


__all__ = [
    "ANGLE_NAMES",
    "ARKIT_NAMES",
    "ArkitCurves",
    "arkit_indices",
    "arkit_params",
    "euler_to_rotvec",
    "is_curves_file",
    "read_arkit",
    "rotvec_to_euler",
    "write_arkit_csv",
]
