"""The errors gshead raises on purpose.

Each carries one line saying what was wrong and what was expected; the CLI prints that line
and exits non-zero, with no traceback.
"""


class GsheadError(Exception):
    """Base class: a user-facing, one-line error."""


class ConfigError(GsheadError):
    """A pipeline config is unreadable, names an unknown component, or has a bad field."""


class PluginError(GsheadError):
    """A plugin broke the registration rules (duplicate name, bad config class, failing hook)."""


class UnknownComponentError(PluginError):
    """A component name that no loaded plugin registered."""


class ShapeError(GsheadError, ValueError):
    """A tensor container was built with the wrong shapes."""


class InputError(GsheadError):
    """An input file (image, video, sequence) is missing, unreadable or unsuitable."""


class AvatarFileError(GsheadError):
    """An avatar or weights file is unreadable, truncated, or from an incompatible pipeline."""


class ContractViolation(GsheadError, AssertionError):
    """A component broke the reconstruction/driving contract (see gshead.core.contract)."""


def shorten(text: object, limit: int = 240) -> str:
    """``text`` on one line, at most ``limit`` characters: whitespace runs (newlines included)
    become one space and a longer text keeps its start and end around an ellipsis."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    keep = max(limit - 3, 2)
    head = (keep * 2) // 3
    return f"{text[:head]}...{text[len(text) - (keep - head):]}"


def bounded_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` computed with bounded cost (nested containers and long values elided)
    and at most about ``limit`` characters: safe for values of any size or depth."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 6, 6
    r.maxstring, r.maxlong, r.maxother = limit, 40, limit
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not turn an error into a crash
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


def torch_load_reason(exc: BaseException, limit: int = 160) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in a few words for a one-line error.

    A file refused by torch's weights-only unpickler (it holds code or objects that are not
    plain tensors, e.g. a pickle payload) is described as refused (the reason starts with
    "refused"), naming the global it asked for; torch's advice to re-run with ``weights_only=False`` (which would run that code) is
    never repeated. Other failures give their first line, terminal escapes removed."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.:<>]+)", text)
        if found:
            return shorten(
                f"refused: it holds code or objects that are not plain tensors (it asks for "
                f"{found.group(1)}); nothing in it was run and only tensor data is ever loaded",
                limit + 60,
            )
        after = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        detail = after[0].strip() if after and "weights_only" not in after[0] else ""
        detail = f" ({shorten(detail, 60)})" if detail else ""
        return shorten(f"not plain tensor data{detail}: corrupt, or objects that are not tensors", limit)
    lines = text.strip().splitlines()
    return shorten(lines[0] if lines else type(exc).__name__, limit)


class NonFiniteError(GsheadError, ValueError):
    """A tensor to be written (or just read) holds NaN or infinite values."""


def require_finite(tensors, what: str, error: type[GsheadError] = NonFiniteError) -> None:
    """Raise ``error`` (one line) naming the first tensor of ``tensors`` ({name: torch tensor or
    NumPy array}) with a NaN or infinite value, and how many it has. Integer tensors pass.

    Writers call it before anything is written ("finite or nothing"); readers of weights on load."""
    import numpy as np
    import torch

    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
                continue
            finite = torch.isfinite(value.detach())
            if bool(finite.all()):
                continue
            bad, total = int(finite.numel() - finite.sum()), value.numel()
        elif isinstance(value, np.ndarray):
            if value.dtype.kind not in "fc" or value.size == 0:
                continue
            finite = np.isfinite(value)
            if finite.all():
                continue
            bad, total = int(finite.size - finite.sum()), value.size
        else:
            continue
        raise error(f"{what}: tensor {name!r} has {bad} non-finite (NaN or infinite) values of {total}; expected finite numbers")


def require_number(value, flag: str, low: float, high: float, unit: str = "") -> float:
    """``value`` as a float if it is finite and in [low, high]; else a one-line ``InputError``
    naming ``flag`` and the range."""
    import math

    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        sep = "" if flag.endswith("=") else " "
        raise InputError(f"{flag}{sep}{_short(value)}: expected a finite number from {low:g} to {high:g}{' ' + unit if unit else ''}")
    return number


def require_int(value, flag: str, low: int, high: int, unit: str = "") -> int:
    """``value`` if it is an integer in [low, high]; else a one-line ``InputError`` naming ``flag``
    and the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{flag} {_short(value)}: expected an integer from {low} to {high}{' ' + unit if unit else ''}")
    return value


def _short(value) -> str:
    try:
        text = str(value)
    except ValueError:  # an int too long to print
        return "(a huge number)"
    return text if len(text) <= 40 else text[:37] + "..."
