"""Tracked sequences: per-frame head parameters and cameras, stored as safetensors.

Made by trackers (``gshead track``) or by ``gshead.core.motion``; read by ``gshead reenact
--driver FILE``. Metadata: ``format``, ``format_version``, ``fps``, ``head_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.io import atomic_output, read_safetensors
from gshead.core.types import Camera, HeadParams, _Container

FORMAT = "gshead.sequence"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class TrackedSequence(_Container):
    """T frames of head parameters and cameras."""

    params: HeadParams  # [T]
    camera: Camera  # [T]
    valid: Tensor  # [T] bool; False for frames where no face was found (params interpolated)
    fps: float
    head_model: str  # registered name of the head model the parameters belong to

    def __post_init__(self) -> None:
        t = self.params.batch_size
        if self.camera.batch_size != t or tuple(self.valid.shape) != (t,):
            raise InputError(
                f"TrackedSequence: {t} frames of parameters but {self.camera.batch_size} cameras "
                f"and {tuple(self.valid.shape)} validity flags"
            )

    def __len__(self) -> int:
        return self.params.batch_size


def save_sequence(path: str | Path, seq: TrackedSequence) -> None:
    """Write ``seq`` to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in seq.tensors().items()}
    tensors["valid"] = seq.valid.to(torch.uint8)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fps": repr(float(seq.fps)),
        "head_model": seq.head_model,
        "camera_size": f"{seq.camera.width}x{seq.camera.height}",
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_sequence(path: str | Path) -> TrackedSequence:
    """Read a sequence file; one-line InputError when it is missing, corrupt or not a sequence."""
    path = Path(path)
    t, meta = read_safetensors(path, "tracked-sequence file")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: not a gshead tracked sequence (format {meta.get('format')!r} "
            f"v{meta.get('format_version')}, expected {FORMAT!r} v{FORMAT_VERSION})"
        )
    try:
        w, h = (int(x) for x in meta["camera_size"].split("x"))
        params = HeadParams(**{k[7:]: v for k, v in t.items() if k.startswith("params.")})
        camera = Camera(t["camera.world_to_camera"], t["camera.intrinsics"], w, h)
        return TrackedSequence(params, camera, t["valid"].bool(), float(meta["fps"]), meta["head_model"])
    except Exception as exc:
        raise InputError(f"{path}: tracked-sequence file has missing or malformed entries ({exc})") from None
