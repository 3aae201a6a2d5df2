"""Training checkpoints: ``RUN/checkpoints/step-000123/{model.safetensors, state.pt}``.

``model.safetensors`` is a pipeline-weights file (``gshead.io.weights``: tensors
``<slot>.<param>``, the pipeline config in its metadata), so ``gshead reconstruct --weights`` and
``TrainConfig.weights`` take it as it is. ``state.pt`` holds the rest of the training state --
optimiser, scheduler, RNG states, step, bad-step count -- as tensors, numbers, strings, lists and
dicts only, so it loads with ``torch.load(weights_only=True)``; nothing is unpickled.

A checkpoint is written into a hidden temporary folder beside its final name and renamed into
place when both files are complete, so a failed or interrupted save leaves no ``step-*`` folder
(and the temporary one is removed). ``latest`` finds the highest complete step; ``prune`` keeps
the last N.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gshead.core.errors import AvatarFileError
from gshead.io.weights import load_pipeline_weights

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
STATE_FORMAT = "gshead.train-state"
STATE_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path  # the step-NNNNNN folder
    step: int  # optimiser steps completed when it was saved

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def state(self) -> Path:
        return self.path / STATE_FILE


# ----------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as weights_only-loadable values."""
    import numpy as np

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _plain(random.getstate()),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype("int64")),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value):
    """Tuples as lists, recursively (Python's RNG state)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _tuple(value):
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


# ----------------------------------------------------------------------------------- writing
def model_tensors(pipeline) -> dict[str, Tensor]:
    """``<slot>.<param>`` tensors of the pipeline's weighted slots (contiguous CPU copies)."""
    from gshead.io.weights import WEIGHT_SLOTS

    out: dict[str, Tensor] = {}
    for slot in WEIGHT_SLOTS:
        module = getattr(pipeline, slot, None)
        if isinstance(module, torch.nn.Module):
            for key, value in module.state_dict().items():
                out[f"{slot}.{key}"] = value.detach().to("cpu").contiguous().clone()
    return out


def _model_metadata(pipeline) -> dict[str, str]:
    from gshead.core.config import dump_pipeline
    from gshead.io.weights import WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION

    return {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "pipeline": dump_pipeline(pipeline.config),
        "source": "gshead train",
    }


def save_checkpoint(directory: str | Path, step: int, pipeline, state: dict[str, Any]) -> Checkpoint:
    """Write ``directory/step-NNNNNN`` atomically: both files into a hidden temporary folder, then
    one rename. An existing folder of that step is replaced only once the new one is complete."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / step_dir_name(step)
    from gshead.io.media import atomic_directory

    from gshead.core.errors import require_finite

    tensors = model_tensors(pipeline)
    require_finite(tensors, f"{final}: checkpoint not written (the training diverged?)")
    with atomic_directory(final) as partial:
        save_file(tensors, str(partial / MODEL_FILE), metadata=_model_metadata(pipeline))
        payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": int(step), **state}
        torch.save(payload, partial / STATE_FILE)
        for name in (MODEL_FILE, STATE_FILE):
            _fsync(partial / name)
    return Checkpoint(final, step)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------- finding
def list_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """Complete checkpoints in ``directory``, oldest first (temporary folders are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / MODEL_FILE).is_file() and (entry / STATE_FILE).is_file():
            found.append(Checkpoint(entry, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the last ``keep`` checkpoints and any leftover temporary folders; returns
    the deleted paths."""
    directory = Path(directory)
    found = list_checkpoints(directory)
    doomed = [c.path for c in found[: max(0, len(found) - keep)]]
    if directory.is_dir():
        doomed += [p for p in directory.iterdir() if p.name.startswith(".step-") and p.is_dir()]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ----------------------------------------------------------------------------------- loading
def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The training state of a checkpoint, loaded with ``weights_only=True``; one-line
    ``AvatarFileError`` when it is unreadable or not a gshead training state."""
    from gshead.io.weights import load_weights_only

    state = load_weights_only(checkpoint.state, "training state", AvatarFileError)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise AvatarFileError(
            f"{checkpoint.state}: not a gshead training state (format {STATE_FORMAT!r} expected)"
        )
    if state.get("version") != STATE_VERSION:
        raise AvatarFileError(
            f"{checkpoint.state}: training-state version {state.get('version')!r}; expected {STATE_VERSION}"
        )
    return state


def load_model(checkpoint: Checkpoint, pipeline) -> None:
    """Load a checkpoint's model tensors into ``pipeline`` (strict; one-line error on mismatch)."""
    load_pipeline_weights(pipeline, checkpoint.model)
