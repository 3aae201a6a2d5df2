"""``gshead plugins``: list registered components (kind, name, source, config fields).

    gshead plugins [--json] [--params]

``--params`` lists parameter counts per variant instead, for components whose factory has
``parameter_count(config)`` (computed without allocating weights).
"""

from __future__ import annotations

import json

VARIANT_FIELDS = ("variant", "size")
"""Config fields whose Literal values ``plugins --params`` enumerates (one count per value)."""


def _field_rows(config_class) -> list[dict]:
    rows = []
    for name, field in config_class.model_fields.items():
        if name == "name":
            continue
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        rows.append(
            {
                "name": name,
                "type": annotation.replace("typing.", ""),
                "default": default,
                "required": field.is_required(),
                "description": field.description or "",
            }
        )
    return rows


def _parameter_counts(spec) -> dict[str, int]:
    """Parameter count per variant (or of the default config) for components whose factory
    has ``parameter_count(config)`` (computed without allocating weights); else empty."""
    import typing

    count = getattr(spec.factory, "parameter_count", None)
    if count is None:
        return {}
    cls = spec.config_class
    for field in VARIANT_FIELDS:
        info = cls.model_fields.get(field)
        if info is not None and typing.get_origin(info.annotation) is typing.Literal:
            return {str(v): int(count(cls(**{field: v}))) for v in typing.get_args(info.annotation)}
    return {"default": int(count(cls()))}


def cmd_plugins(args) -> int:
    from gshead.core.registry import get_registry

    specs = get_registry().all()
    if args.params:
        rows = [{"kind": s.kind, "name": s.name, "parameters": _parameter_counts(s)} for s in specs]
        rows = [r for r in rows if r["parameters"]]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            for variant, n in r["parameters"].items():
                print(f"{r['kind']:<10}  {r['name']:<10}  {variant:<10}  {n / 1e6:>10.2f} M")
        return 0
    rows = [
        {
            "kind": s.kind,
            "name": s.name,
            "source": s.source,
            "config": f"{s.config_class.__module__}.{s.config_class.__qualname__}",
            "fields": _field_rows(s.config_class),
        }
        for s in specs
    ]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        fields = ", ".join(f"{f['name']}={f['default']!r}" for f in r["fields"]) or "-"
        print(f"{r['kind']:<10}  {r['name']:<{width}}  [{r['source']}]  {fields}")
    return 0


def add_parser(subparsers) -> None:
    """Add ``plugins`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "plugins", help="list registered components (kind, name, source, config fields)",
        **doc(
            "List every registered component (gshead's own and those of installed plugin packages): "
            "kind, name, source package and config fields with their defaults, the names a pipeline "
            "YAML uses. --params lists parameter counts per variant instead.",
            "gshead plugins",
            "# parameter counts per encoder variant, as JSON\n"
            "gshead plugins --params --json",
        ),
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--params", action="store_true", help="parameter counts per variant (no weights allocated)")
    p.set_defaults(func=cmd_plugins)


__all__ = ["VARIANT_FIELDS", "add_parser", "cmd_plugins"]
