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
    p = subparsers.add_parser("config", help="pipeline config tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = csub.add_parser("schema", help="print the pipeline JSON schema (for editors)")
    s.set_defaults(func=cmd_config_schema)


__all__ = ["add_parser", "cmd_config_schema"]
