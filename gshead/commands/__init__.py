"""Subcommands of the ``gshead`` CLI that live outside ``gshead.cli``.

Each module offers plain functions (usable from Python and tests) and ``add_parser(subparsers)``,
which ``gshead.cli.build_parser`` calls to add the subcommand.
"""
