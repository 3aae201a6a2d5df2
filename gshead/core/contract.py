"""The reconstruction/driving contract, as checks the core runs and tests reuse.

Clauses:
1. **Isolation** — a driving session holds no reference to the encoder, lifter, tracker, or to
   encoder features (``find_forbidden``, run when a session is made).
2. **Immutability** — driving never changes the avatar's tensors: their storage, in-place version
   counters and shapes are fingerprinted once and checked after every stage of every frame
   (``AvatarGuard``); a change raises ``ContractViolation`` naming the stage and the tensor.
3. **Independence** — a frame's work does not depend on the encoder's size: two avatars made by
   pipelines that differ only in encoder size have the same tensor shapes, and driving them
   counts the same floating-point operations (``driving_flops``). The wall-clock version of
   this check lives in the benchmark suite.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol

import torch
from torch import Tensor

from gshead.core.errors import ContractViolation
from gshead.core.types import Avatar, FeatureMaps, HeadParams

_LEAF_TYPES = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, Tensor)


_MODULE_DICTS = ("_modules", "_parameters", "_buffers")


def _attributes(obj: object, path: str) -> Iterable[tuple[str, object]]:
    """An object's attributes as (path, value); an nn.Module's submodules read as attributes."""
    items = vars(obj)
    for key, value in items.items():
        if isinstance(obj, torch.nn.Module) and key in _MODULE_DICTS:
            yield from ((f"{path}.{k}", v) for k, v in value.items())
        else:
            yield f"{path}.{key}", value


def find_forbidden(root: object, forbidden: tuple[type, ...], max_depth: int = 8) -> tuple[str, object] | None:
    """(path, object) of the first object of a ``forbidden`` type reachable from ``root``
    through attributes, submodules and containers, e.g. ``session.driver.cache[0]``; or None."""
    seen: set[int] = set()
    stack: list[tuple[object, str, int]] = [(root, "session", 0)]
    while stack:
        obj, path, depth = stack.pop()
        if id(obj) in seen or isinstance(obj, _LEAF_TYPES):
            continue
        seen.add(id(obj))
        if isinstance(obj, forbidden):
            return path, obj
        if depth >= max_depth or isinstance(obj, type):
            continue
        children: Iterable[tuple[str, object]]
        if isinstance(obj, dict):
            children = ((f"{path}[{k!r}]", v) for k, v in obj.items())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
        elif dataclasses.is_dataclass(obj):
            children = ((f"{path}.{f.name}", getattr(obj, f.name)) for f in dataclasses.fields(obj))
        elif hasattr(obj, "__dict__"):
            children = _attributes(obj, path)
        elif callable(obj) and getattr(obj, "__closure__", None):
            children = ((f"{path}<closure>", c.cell_contents) for c in obj.__closure__)  # type: ignore[union-attr]
        else:
            children = ()
        for child_path, child in children:
            stack.append((child, child_path, depth + 1))
    return None


def check_isolation(session: object, forbidden: tuple[type, ...]) -> None:
    """Clause 1: raise unless ``session`` is free of encoder/lifter/tracker objects and features."""
    found = find_forbidden(session, forbidden + (FeatureMaps,))
    if found is not None:
        path, obj = found
        raise ContractViolation(
            f"driving session holds a reconstruction-time object ({type(obj).__name__}) at {path}; "
            f"per-frame driving may use only the avatar, the driver, the rasterizer and the refiner"
        )


def _fingerprint(tensor: Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (tensor.untyped_storage().data_ptr(), tensor._version, tuple(tensor.shape))


class AvatarGuard:
    """Clause 2: remembers the avatar's tensors and fails loudly if any of them changes."""

    def __init__(self, avatar: Avatar) -> None:
        self._tensors = avatar.tensors()
        self._prints = {k: _fingerprint(t) for k, t in self._tensors.items()}

    def check(self, stage: str) -> None:
        """Raise ContractViolation naming ``stage`` if an avatar tensor was changed."""
        for key, tensor in self._tensors.items():
            if _fingerprint(tensor) != self._prints[key]:
                raise ContractViolation(
                    f"{stage} changed the avatar tensor {key!r} in place; avatars are immutable "
                    f"after reconstruction (return new tensors instead)"
                )


def driving_flops(render_frame, *args) -> int:
    """Clause 3 measure: floating-point operations torch counts for one call of ``render_frame``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        render_frame(*args)
    return int(counter.get_total_flops())


def avatar_shapes(avatar: Avatar) -> dict[str, tuple[int, ...]]:
    """Shapes of every avatar tensor (equal across encoder sizes by clause 3)."""
    return {k: tuple(v.shape) for k, v in avatar.tensors().items()}


class Renders(Protocol):
    """What clause 3 drives: anything with ``render(params)`` (a ``DrivingSession``)."""

    def render(self, params: HeadParams) -> Tensor: ...


def check_independence(
    small: tuple[Avatar, Renders], large: tuple[Avatar, Renders], params: HeadParams, what: str = "encoder"
) -> None:
    """Clause 3: ``small``/``large`` are (avatar, session) made by pipelines differing only in
    ``what``'s size; raise unless their avatars have equal shapes and a frame costs equal flops."""
    shapes_small, shapes_large = avatar_shapes(small[0]), avatar_shapes(large[0])
    for key in sorted(set(shapes_small) | set(shapes_large)):
        if shapes_small.get(key) != shapes_large.get(key):
            raise ContractViolation(
                f"avatar tensor {key!r} has shape {shapes_small.get(key)} with the smaller {what} "
                f"and {shapes_large.get(key)} with the larger; avatar sizes must not depend on the {what}"
            )
    flops_small = driving_flops(small[1].render, params)
    flops_large = driving_flops(large[1].render, params)
    if flops_small != flops_large:
        raise ContractViolation(
            f"a driving frame costs {flops_small} flops with the smaller {what} and {flops_large} "
            f"with the larger; per-frame work must not depend on the {what}"
        )
