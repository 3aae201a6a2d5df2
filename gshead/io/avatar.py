"""Avatar files: one safetensors file holding the frozen avatar and the weights driving needs.

Layout: tensors ``static.*``, ``rig.*``, ``source.*``, ``camera.*`` (the ``Avatar``), and
``weights.<driver|rasterizer|refiner>.*`` (state dicts of the driving components), so an avatar
file alone is enough to drive. Metadata (strings): ``format``, ``format_version``, the
validated ``pipeline`` config as JSON, provenance, the camera's image size and the encoder's
channel counts (the driver is rebuilt with the same shapes). Files are written atomically.
Loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gshead.core.components import Driver, HeadModel, Rasterizer, Refiner
from gshead.core.config import PipelineConfig
from gshead.core.errors import AvatarFileError, ConfigError, GsheadError, PluginError, require_finite, shorten
from gshead.io.media import atomic_output, read_safetensors
from gshead.core.registry import Registry, get_registry
from gshead.core.types import (
    Avatar,
    Camera,
    Gaussians,
    HeadParams,
    MeshBinding,
    Provenance,
    Rig,
)

if TYPE_CHECKING:
    from gshead.core.pipeline import DrivingSession, Pipeline

FORMAT = "gshead.avatar"
FORMAT_VERSION = "1"
DRIVING_SLOTS = ("driver", "rasterizer", "refiner")


def save_avatar(path: str | Path, avatar: Avatar, pipeline: Pipeline) -> None:
    """Write ``avatar`` and ``pipeline``'s driving weights to ``path`` (atomically)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in avatar.tensors().items()}
    for slot in DRIVING_SLOTS:
        module = getattr(pipeline, slot)
        if isinstance(module, torch.nn.Module):
            for key, value in module.state_dict().items():
                tensors[f"weights.{slot}.{key}"] = value.detach().contiguous().clone()
    require_finite(tensors, f"{path}: avatar not written")
    p = avatar.provenance
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pipeline": p.pipeline,
        "head_model": p.head_model,
        "gshead_version": p.gshead_version,
        "torch_version": p.torch_version,
        "created": p.created,
        "camera_size": json.dumps([avatar.camera.width, avatar.camera.height]),
        "encoder_channels": json.dumps(list(pipeline.context.encoder_channels)),
        "encoder_global_channels": str(pipeline.context.encoder_global_channels),
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@dataclass(frozen=True)
class LoadedAvatar:
    """An avatar read from a file, with the driving components rebuilt from its provenance."""

    avatar: Avatar
    config: PipelineConfig  # the validated pipeline config stored in the file
    head_model: HeadModel
    driver: Driver
    rasterizer: Rasterizer
    refiner: Refiner

    def session(self, render_size: int | None = None, **kwargs: Any) -> DrivingSession:
        """A driving session at ``render_size`` (default: the pipeline's ``render_size``)."""
        from gshead.core.pipeline import DrivingSession

        size = render_size or self.config.render_size
        kwargs = {"raster_size": self.config.raster_size, **kwargs}
        return DrivingSession(self.avatar, self.driver, self.rasterizer, self.refiner, render_size=size, **kwargs)


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    return read_safetensors(path, "gshead avatar file", AvatarFileError)


def _take(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _gaussians(t: dict[str, Tensor]) -> Gaussians:
    return Gaussians(t["means"], t["quats"], t["scales"], t["opacities"], t["features"])


def _check_face_index(path: Path, face_index: Tensor, head_model: HeadModel) -> None:
    """``rig.binding.face_index`` must hold integers that index the head model's triangles."""
    field = "tensor 'rig.binding.face_index'"
    if face_index.dtype.is_floating_point or face_index.dtype.is_complex or face_index.dtype == torch.bool:
        raise AvatarFileError(f"{path}: {field} must hold integers; got {face_index.dtype}")
    faces = getattr(head_model, "faces", None)
    if not isinstance(faces, Tensor) or face_index.numel() == 0:
        return
    count = int(faces.shape[0])
    low, high = int(face_index.min()), int(face_index.max())
    if low < 0 or high >= count:
        raise AvatarFileError(
            f"{path}: {field} must lie in [0, {count - 1}] (the head model's {count} triangles); "
            f"found values from {low} to {high}"
        )


def load_avatar(path: str | Path, registry: Registry | None = None) -> LoadedAvatar:
    """Read an avatar file and rebuild its driver, rasterizer and refiner with their weights."""
    from gshead.core.config import validate_pipeline
    from gshead.core.pipeline import build_components, frozen_copy

    path = Path(path)
    registry = registry or get_registry()
    tensors, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise AvatarFileError(f"{path}: not a gshead avatar file (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AvatarFileError(
            f"{path}: avatar format version {meta.get('format_version')!r} written by gshead "
            f"{meta.get('gshead_version')}; this gshead reads version {FORMAT_VERSION!r}"
        )
    from gshead.io._metadata import int_field, int_list, json_field

    stored = json_field(meta, "pipeline", path, dict)
    width, height = int_list(meta, "camera_size", path, length=2, low=1, high=1 << 16)
    encoder_channels = tuple(int_list(meta, "encoder_channels", path, max_length=64, low=0, high=1 << 16))
    encoder_global = int_field(meta, "encoder_global_channels", path, low=0, high=1 << 16)
    try:
        config = validate_pipeline(stored, registry, source="pipeline stored in avatar")
    except (ConfigError, PluginError, KeyError, json.JSONDecodeError) as exc:
        raise AvatarFileError(
            f"{path}: made by a pipeline this installation cannot rebuild ({exc}); install the plugins "
            f"it used or use the gshead version that wrote it ({meta.get('gshead_version')})"
        ) from None
    try:
        avatar = Avatar(
            static=_gaussians(_take(tensors, "static.")),
            rig=Rig(
                dynamic=_gaussians(_take(tensors, "rig.dynamic.")),
                binding=MeshBinding(**_take(tensors, "rig.binding.")),
                latent=tensors["rig.latent"],
            ),
            source=HeadParams(**_take(tensors, "source.")),
            camera=Camera(tensors["camera.world_to_camera"], tensors["camera.intrinsics"], width, height),
            provenance=Provenance(
                pipeline=meta["pipeline"],
                head_model=meta["head_model"],
                gshead_version=meta["gshead_version"],
                torch_version=meta["torch_version"],
                created=meta["created"],
            ),
            background=tensors.get("background"),  # background: static (absent in older files)
            body=tensors.get("body"),  # torso: still (absent in older files)
        )
    except (KeyError, TypeError, ValueError, GsheadError) as exc:
        raise AvatarFileError(f"{path}: avatar file is missing or has malformed entries ({exc})") from None

    built, _context = build_components(
        config, DRIVING_SLOTS, registry, encoder_channels=encoder_channels, encoder_global_channels=encoder_global
    )
    head_model = built["headmodel"]
    _check_face_index(path, avatar.rig.binding.face_index, head_model)
    parts = {slot: built[slot] for slot in DRIVING_SLOTS}
    for slot, module in parts.items():
        if not isinstance(module, torch.nn.Module):
            continue
        state = _take(tensors, f"weights.{slot}.")
        from gshead.io.weights import state_dict_problems

        problems = state_dict_problems(module.state_dict(), state, f"weights.{slot}.")
        if problems:
            raise AvatarFileError(
                f"{path}: {slot} weights do not fit {slot} {config.slot(slot).name!r}: " + "; ".join(problems)
            )
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # e.g. a module's own checks in _load_from_state_dict
            text = " ".join(str(exc).split())
            reason = shorten(text.removeprefix(f"Error(s) in loading state_dict for {type(module).__name__}:"), 160)
            raise AvatarFileError(f"{path}: {slot} weights do not fit {slot} {config.slot(slot).name!r} ({reason})") from None
    return LoadedAvatar(frozen_copy(avatar), config, head_model, **parts)
