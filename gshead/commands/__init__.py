"""The subcommands of the ``gshead`` CLI, one module per subcommand (``_name`` modules are helpers).

Each module offers plain functions (usable from Python and tests) and ``add_parser(subparsers)``,
which ``gshead.cli.build_parser`` calls to add the subcommand. Nothing outside ``gshead.cli`` and
this package imports them, and no module here imports ``gshead.cli``.
"""

EXIT_ERROR = 2
"""Exit status of a run stopped by a ``GsheadError`` (one line on stderr)."""
EXIT_INTERRUPTED = 130
"""Exit status of a run stopped by Ctrl-C (128 + SIGINT)."""
