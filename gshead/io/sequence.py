"""Tracked sequences: per-frame head parameters, cameras, crop boxes and fit errors, as safetensors.

Made by ``gshead track`` (``gshead.jobs.tracking``) or by ``gshead.io.motion``; read by
``gshead reenact --driver FILE`` and the ``file`` tracker.

File layout (format ``gshead.sequence``):

- tensors ``params.<field>`` [T, ...], ``camera.world_to_camera`` [T, 4, 4],
  ``camera.intrinsics`` [T, 3, 3], ``valid`` [T] uint8, and from version 2 ``crop`` [T, 3] and
  ``fit_error`` [T];
- metadata ``format``, ``format_version``, ``fps``, ``head_model``, ``camera_size`` (``WxH``), and
  from version 2 ``source_sha256`` (SHA-256 of the tracked input file's bytes, empty when the
  sequence was not tracked from a file) and ``tracker`` (the tracker's config as JSON, or empty).

Version 1 files (no crop boxes, fit errors, hash or tracker) still load: their crop boxes and fit
errors are NaN and the strings empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gshead.core.errors import InputError, require_finite
from gshead.io.media import atomic_output, read_safetensors
from gshead.core.types import Camera, HeadParams, _Container

FORMAT = "gshead.sequence"
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")
"""Format versions ``load_sequence`` reads (it always writes ``FORMAT_VERSION``)."""


@dataclass(frozen=True)
class TrackedSequence(_Container):
    """T frames of head parameters and cameras, with where and how well each frame was tracked.

    ``crop`` and ``fit_error`` may be left out (None): they are then filled with NaN ("unknown"),
    as for motion that was not tracked from images.
    """

    params: HeadParams  # [T]
    camera: Camera  # [T] cameras of the crops the parameters were fitted in
    valid: Tensor  # [T] bool; False for frames where no face was found (params interpolated)
    fps: float
    head_model: str  # registered name of the head model the parameters belong to
    # The rest may be left out (motion not tracked from images): tensors become NaN, strings "".
    crop: Tensor | None = None  # [T, 3] crop box (left, top, side), source-image pixels; NaN: unknown
    fit_error: Tensor | None = None  # [T] RMS landmark fit error, crop pixels; NaN: no face or not fitted
    source_sha256: str = ""  # SHA-256 (hex) of the tracked input file's bytes
    tracker: str = ""  # the tracker's config as JSON

    def __post_init__(self) -> None:
        t = self.params.batch_size
        if self.camera.batch_size != t or tuple(self.valid.shape) != (t,):
            raise InputError(
                f"TrackedSequence: {t} frames of parameters but {self.camera.batch_size} cameras "
                f"and {tuple(self.valid.shape)} validity flags"
            )
        # Frozen dataclass: fill the optional tensors through object.__setattr__ (only here).
        if self.crop is None:
            object.__setattr__(self, "crop", torch.full((t, 3), float("nan")))
        if self.fit_error is None:
            object.__setattr__(self, "fit_error", torch.full((t,), float("nan")))
        if tuple(self.crop.shape) != (t, 3) or tuple(self.fit_error.shape) != (t,):
            raise InputError(
                f"TrackedSequence: {t} frames but crop boxes of shape {tuple(self.crop.shape)} "
                f"(expected ({t}, 3)) and fit errors of shape {tuple(self.fit_error.shape)} (expected ({t},))"
            )

    def __len__(self) -> int:
        return self.params.batch_size


def save_sequence(path: str | Path, seq: TrackedSequence) -> None:
    """Write ``seq`` to ``path`` atomically (format version ``FORMAT_VERSION``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in seq.tensors().items()}
    unknown_ok = ("crop", "fit_error")  # NaN there means "unknown"; infinities are refused below
    require_finite({k: v for k, v in tensors.items() if k not in unknown_ok}, f"{path}: tracked sequence not written")
    require_finite(
        {k: getattr(seq, k).nan_to_num(0.0, posinf=math.inf, neginf=-math.inf) for k in unknown_ok},
        f"{path}: tracked sequence not written",
    )
    tensors["valid"] = seq.valid.to("cpu", torch.uint8)
    tensors["crop"] = seq.crop.detach().to("cpu", torch.float32).contiguous()
    tensors["fit_error"] = seq.fit_error.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fps": repr(float(seq.fps)),
        "head_model": seq.head_model,
        "camera_size": f"{seq.camera.width}x{seq.camera.height}",
        "source_sha256": seq.source_sha256,
        "tracker": seq.tracker,
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_sequence(path: str | Path) -> TrackedSequence:
    """Read a sequence file (version 1 or 2); one-line InputError when it is missing, corrupt or
    not a sequence."""
    path = Path(path)
    t, meta = read_safetensors(path, "tracked-sequence file")
    version = meta.get("format_version")
    if meta.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise InputError(
            f"{path}: not a gshead tracked sequence (format {meta.get('format')!r} "
            f"v{version}, expected {FORMAT!r} v{' or v'.join(READABLE_VERSIONS)})"
        )
    try:
        w, h = (int(x) for x in meta["camera_size"].split("x"))
        params = HeadParams(**{k[7:]: v for k, v in t.items() if k.startswith("params.")})
        camera = Camera(t["camera.world_to_camera"], t["camera.intrinsics"], w, h)
        extra = {}
        if version != "1":
            extra = {
                "crop": t["crop"].float(),
                "fit_error": t["fit_error"].float(),
                "source_sha256": meta.get("source_sha256", ""),
                "tracker": meta.get("tracker", ""),
            }
        seq = TrackedSequence(
            params, camera, t["valid"].bool(), float(meta["fps"]), meta["head_model"], **extra
        )
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(
            f"{path}: tracked-sequence file has missing or malformed entries ({reason})"
        ) from None
    # Head parameters and cameras must be finite (crop and fit_error use NaN for "unknown").
    require_finite(
        {**seq.params.tensors("params."), **seq.camera.tensors("camera.")},
        f"{path}: tracked-sequence file is corrupt",
        error=InputError,
    )
    return seq
