"""``--device cpu|cuda|auto`` for the commands that run models (reconstruct, reenact, export, view,
eval). A private helper of ``gshead.commands`` (not a subcommand).

- ``cpu`` (the default): everything stays where it is built and loaded, as before the option.
- ``cuda``: the pipeline's (or the loaded avatar's) ``nn.Module`` components and the avatar's
  tensors move to the current CUDA device; inputs are moved there as they are made, outputs come
  back to the CPU before they are written. Without CUDA the command stops before any work with
  ``gshead: error: --device cuda: CUDA is not available ...`` (status 2).
- ``auto``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.

Components that are not ``nn.Module`` (none of gshead's own) stay where their plugin put them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from gshead.core.errors import InputError

if TYPE_CHECKING:
    import torch

    from gshead.io.avatar import LoadedAvatar

DEVICES = ("cpu", "cuda", "auto")
DEFAULT_DEVICE = "cpu"


def add_device_argument(parser) -> None:
    """Add ``--device cpu|cuda|auto`` to a subcommand's parser."""
    parser.add_argument(
        "--device", choices=DEVICES, default=DEFAULT_DEVICE,
        help="where the models run: cpu (default), cuda (an error when CUDA is not available), "
        "or auto (cuda when available, else cpu)",
    )  # fmt: skip


def cuda_unavailable() -> str:
    """Why CUDA cannot be used here ('' when it can)."""
    import torch

    if torch.cuda.is_available():
        return ""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"


def resolve_device(name: str | None) -> torch.device:
    """The ``torch.device`` for ``--device name``; InputError for cuda without CUDA or an unknown name."""
    import torch

    name = DEFAULT_DEVICE if name is None else name
    if name not in DEVICES:
        raise InputError(f"--device {name!r}: expected one of {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        reason = cuda_unavailable()
        if reason:
            raise InputError(
                f"--device cuda: CUDA is not available ({reason}); use --device cpu or --device auto"
            )
    return torch.device(name)


def module_to(component: Any, device: torch.device) -> Any:
    """``component`` moved to ``device`` when it is an ``nn.Module`` (in place, as torch does)."""
    import torch

    if isinstance(component, torch.nn.Module):
        component.to(device)
    return component


def pipeline_to(pipeline, device: torch.device):
    """``pipeline`` with every ``nn.Module`` component on ``device`` (moved in place; returned)."""
    if device.type == "cpu":
        return pipeline  # where everything is built
    for component in pipeline.components().values():
        module_to(component, device)
    return pipeline


def loaded_to(loaded: LoadedAvatar, device: torch.device) -> LoadedAvatar:
    """A loaded avatar with its tensors and driving components on ``device``."""
    if device.type == "cpu":
        return loaded  # where load_avatar puts everything
    for name in ("head_model", "driver", "rasterizer", "refiner"):
        module_to(getattr(loaded, name), device)
    return dataclasses.replace(loaded, avatar=loaded.avatar.to(device))


__all__ = [
    "DEFAULT_DEVICE", "DEVICES", "add_device_argument", "cuda_unavailable", "loaded_to", "module_to",
    "pipeline_to", "resolve_device",
]  # fmt: skip
