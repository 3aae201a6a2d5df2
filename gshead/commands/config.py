"""``gshead config``: pipeline config tools.

    gshead config schema    the pipeline JSON schema (for editors), on stdout
"""

from __future__ import annotations

import json


def cmd_config_schema(args) -> int:
    from gshead.core.config import pipeline_model
    from gshead.core.registry import get_registry

    print(json.dumps(pipeline_model(get_registry()).model_json_schema(), indent=2))
    return 0


def add_parser(subparsers) -> None:
    """Add ``config schema`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "config", help="pipeline config tools",
        **doc("Tools for pipeline config YAML files.", "gshead config schema"),
    )
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = csub.add_parser(
        "schema", help="print the pipeline JSON schema (for editors)",
        **doc(
            "Print the JSON schema of a pipeline YAML on stdout, with every registered component's "
            "config fields (point an editor's YAML language server at it).",
            "gshead config schema",
        ),
    )  # fmt: skip
    s.set_defaults(func=cmd_config_schema)


__all__ = ["add_parser", "cmd_config_schema"]
