"""Checks on the JSON metadata of avatar and weights files, before any of it is used.

Metadata are strings anyone can write; each JSON field is checked for size, nesting depth and
type here, so a hostile file fails with one ``AvatarFileError`` naming the file and the field
instead of a ``RecursionError``, ``TypeError`` or an allocation of gigabytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gshead.core.errors import AvatarFileError, bounded_repr, shorten

MAX_FIELD_CHARS = 1_000_000
"""The longest metadata string read as JSON."""
MAX_DEPTH = 64
"""The deepest nesting of lists and objects in a metadata field."""
MAX_ITEMS = 100_000
"""The most values (all levels together) in a metadata field."""


def _fail(path: Path, field: str, what: str) -> AvatarFileError:
    return AvatarFileError(f"{shorten(path, 120)}: metadata {field!r} {what}")


def _check_shape(value: Any, path: Path, field: str) -> None:
    """Depth and size of a decoded JSON value, without recursion."""
    stack = [(value, 0)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_ITEMS:
            raise _fail(path, field, f"holds more than {MAX_ITEMS} values (the cap)")
        if isinstance(item, (list, dict)):
            if depth >= MAX_DEPTH:
                raise _fail(path, field, f"is nested deeper than {MAX_DEPTH} levels (the cap)")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def json_field(meta: dict[str, str], key: str, path: Path, expect: type | tuple[type, ...]) -> Any:
    """``meta[key]`` decoded as JSON and checked for size, depth and type ``expect``."""
    if key not in meta:
        raise _fail(path, key, "is missing")
    text = meta[key]
    if not isinstance(text, str):
        raise _fail(path, key, "is not a string")
    if len(text) > MAX_FIELD_CHARS:
        raise _fail(path, key, f"is longer than {MAX_FIELD_CHARS} characters (the cap)")
    # Depth first, on the text: the JSON decoder recurses once per level.
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(path, key, f"is nested deeper than {MAX_DEPTH} levels (the cap)")
        elif ch in "]}":
            depth -= 1
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(path, key, f"is not valid JSON ({shorten(exc, 80)})") from None
    _check_shape(value, path, key)
    if not isinstance(value, expect) or isinstance(value, bool) and bool not in _as_tuple(expect):
        names = " or ".join(t.__name__ for t in _as_tuple(expect))
        raise _fail(path, key, f"must be a JSON {names}; got {type(value).__name__} {bounded_repr(value, 40)}")
    return value


def _as_tuple(expect: type | tuple[type, ...]) -> tuple[type, ...]:
    return expect if isinstance(expect, tuple) else (expect,)


def int_list(
    meta: dict[str, str], key: str, path: Path, *, length: int | None = None, max_length: int = 64,
    low: int = 0, high: int = 1 << 20,
) -> list[int]:
    """``meta[key]`` as a JSON list of integers in ``[low, high]`` (``length`` of them when given)."""
    value = json_field(meta, key, path, list)
    if length is not None and len(value) != length:
        raise _fail(path, key, f"must list {length} integers; got {len(value)} values")
    if len(value) > max_length:
        raise _fail(path, key, f"must list at most {max_length} integers; got {len(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise _fail(path, key, f"must list integers in [{low}, {high}]; got {bounded_repr(item, 40)}")
    return value


def int_field(meta: dict[str, str], key: str, path: Path, *, low: int = 0, high: int = 1 << 20) -> int:
    """``meta[key]`` as an integer in ``[low, high]``."""
    text = meta.get(key)
    if text is None:
        raise _fail(path, key, "is missing")
    text = str(text).strip()
    if len(text) > 20 or not text.lstrip("-").isdigit() or not low <= int(text) <= high:
        raise _fail(path, key, f"must be an integer in [{low}, {high}]; got {bounded_repr(text, 40)}")
    return int(text)
