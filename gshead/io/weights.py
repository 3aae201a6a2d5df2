"""Pipeline-weights files: trained or imported weights for a pipeline's modules.

Written by ``gshead import`` (and, later, training): safetensors tensors ``<slot>.<param>`` for
the slots in ``WEIGHT_SLOTS``, metadata ``format``, ``format_version``, ``pipeline`` (the
validated config JSON, as in avatar files) and ``source``. Loaded by ``load_pipeline_weights(pipeline, path)``
(``gshead reconstruct --weights``). Nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gshead.core.components import Kind
from gshead.core.errors import AvatarFileError, GsheadError, require_finite, torch_load_reason
from gshead.io.media import read_safetensors

WEIGHTS_FORMAT = "gshead.weights"
WEIGHTS_FORMAT_VERSION = "1"
WEIGHT_SLOTS: tuple[Kind, ...] = ("encoder", "lifter", "driver", "refiner")


def preview_keys(keys, n: int = 3) -> str:
    """The first ``n`` of ``keys`` (sorted), and how many more: for one-line errors."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights_only(
    path: str | Path, what: str, error: type[GsheadError], *, expected: str = "", mmap: bool = False,
    limit: int = 160,
) -> Any:
    """``torch.load(path, weights_only=True)`` (memory-mapped when ``mmap`` and the file allows it):
    tensors and plain containers only, never code. A file refused by the weights-only unpickler
    raises ``error`` as ``PATH: WHAT refused: ...``, any other failure ``PATH: not a readable WHAT
    (reason)``; both end with ``; expected EXPECTED`` when given and never repeat torch's advice
    to load with ``weights_only=False`` (``gshead.core.errors.torch_load_reason``)."""
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(exc):
                    raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad, truncated or foreign files
        reason = torch_load_reason(exc, limit)
        tail = f"; expected {expected}" if expected else ""
        if reason.startswith("refused"):
            raise error(f"{path}: {what} {reason}{tail}") from None
        raise error(f"{path}: not a readable {what} ({reason}){tail}") from None


def read_state_dict(path: str | Path, what: str, expected: str) -> dict[str, Tensor]:
    """Tensors of a local weights file: ``.safetensors``, or a torch file read with
    ``weights_only=True`` (never an arbitrary pickle). One-line ``AvatarFileError`` naming ``what``
    (e.g. "LPIPS lin-weights file") and ``expected`` (what the user should give instead) when the
    file is missing, unreadable or not a mapping of tensors."""
    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"{path}: no such {what}; expected {expected}")
    if path.suffix == ".safetensors":
        state, _meta = read_safetensors(path, what, AvatarFileError)
        return state
    state = load_weights_only(path, what, AvatarFileError, expected=expected)
    if not isinstance(state, dict):
        raise AvatarFileError(f"{path}: expected a state dict of tensors in this {what}, got {type(state).__name__}")
    return state


def state_dict_problems(own: dict[str, Tensor], state: dict[str, Tensor], prefix: str = "", name=None) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``own`` (a module's state
    dict), each as a short phrase naming a few keys (``name(key)``, default ``prefix`` + key);
    empty when they fit."""
    name = name or (lambda k: prefix + k)
    missing = [name(k) for k in own if k not in state]
    unexpected = [name(k) for k in state if k not in own]
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {preview_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {preview_keys(unexpected)}")
    if wrong:
        shown = ", ".join(
            f"{name(k)} {list(state[k].shape)} != {list(own[k].shape)}" for k in wrong[:3]
        )
        problems.append(f"{len(wrong)} keys of the wrong shape: {shown}")
    return problems



BUILTIN_PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "weights"
"""Weights shipped with gshead, named ``builtin:<file stem>`` (see ``gshead/weights/README.md``)."""


def resolve_weights(path: str | Path) -> Path:
    """``builtin:NAME`` -> the shipped file ``gshead/weights/NAME.safetensors``; other paths as given.
    One-line ``AvatarFileError`` naming the shipped names for an unknown one."""
    text = str(path)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(path)
    name = text[len(BUILTIN_PREFIX):]
    found = BUILTIN_DIR / f"{name}.safetensors"
    if not name or "/" in name or not found.is_file():
        known = ", ".join(BUILTIN_PREFIX + p.stem for p in sorted(BUILTIN_DIR.glob("*.safetensors"))) or "none"
        raise AvatarFileError(f"--weights {text}: no such shipped weights; expected one of: {known}")
    return found


def load_pipeline_weights(pipeline, path) -> None:
    """Load a pipeline-weights file (``gshead import``, ``gshead train``, or ``builtin:NAME`` for
    weights shipped with gshead) into this pipeline's modules, strictly.

    The file's pipeline config must equal this one in ``feature_channels``, the head model's
    name and every weighted slot (the encoder's ``weights`` path aside: the file replaces it; so do
    the fields a slot's config class names in ``weights_neutral``, which change no weight).
    Every slot is checked before any is loaded; one-line ``AvatarFileError`` otherwise."""
    path = resolve_weights(path)
    tensors, meta = read_safetensors(path, "gshead pipeline-weights file", AvatarFileError)
    require_finite(tensors, f"{path}: pipeline weights refused", AvatarFileError)
    if meta.get("format") != WEIGHTS_FORMAT or meta.get("format_version") != WEIGHTS_FORMAT_VERSION:
        raise AvatarFileError(
            f"{path}: not a gshead pipeline-weights file (format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; expected {WEIGHTS_FORMAT!r} version {WEIGHTS_FORMAT_VERSION!r})"
        )
    slots = sorted({k.split(".", 1)[0] for k in tensors})
    if not slots or any(s not in WEIGHT_SLOTS for s in slots):
        raise AvatarFileError(f"{path}: tensors must be named <slot>.<param> with slots {', '.join(WEIGHT_SLOTS)}; found {slots}")
    from gshead.core.errors import bounded_repr
    from gshead.io._metadata import json_field

    theirs = json_field(meta, "pipeline", path, dict)
    ours = pipeline.config.model_dump(mode="json")

    def relevant(cfg: dict) -> dict:
        out = {s: dict(cfg.get(s) or {}) if isinstance(cfg.get(s) or {}, dict) else cfg.get(s) for s in slots}
        if isinstance(out.get("encoder"), dict):
            out["encoder"].pop("weights", None)
        out["feature_channels"] = cfg.get("feature_channels")
        headmodel = cfg.get("headmodel") or {}
        out["headmodel"] = headmodel.get("name") if isinstance(headmodel, dict) else headmodel
        return out

    a, b = relevant(theirs), relevant(ours)
    for slot in slots:  # fields that change no weight (a config's ``weights_neutral``) are not compared
        for name in getattr(type(getattr(pipeline.config, slot, None)), "weights_neutral", ()):
            for cfg in (a, b):
                if isinstance(cfg.get(slot), dict):
                    cfg[slot].pop(name, None)
    if a != b:
        where = [k for k in a if a[k] != b[k]]
        k = where[0]
        both = isinstance(a[k], dict) and isinstance(b[k], dict)
        diff = [str(f) for f in {**a[k], **b[k]} if a[k].get(f) != b[k].get(f)] if both else []
        detail = f" (fields {', '.join(sorted(diff)[:4])})" if diff else f" ({bounded_repr(a[k])} != {bounded_repr(b[k])})"
        raise AvatarFileError(
            f"{path}: weights for a different pipeline: {', '.join(where)} differ{detail}"
        )
    states = {}
    for slot in slots:
        module = getattr(pipeline, slot)
        prefix = slot + "."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not isinstance(module, torch.nn.Module):
            raise AvatarFileError(f"{path}: has {slot} weights but {slot} {getattr(pipeline.config, slot).name!r} has none")
        problems = state_dict_problems(module.state_dict(), state, prefix)
        if problems:
            raise AvatarFileError(f"{path}: weights do not fit this pipeline: " + "; ".join(problems))
        states[slot] = state
    for slot, state in states.items():
        getattr(pipeline, slot).load_state_dict(state, strict=True)

