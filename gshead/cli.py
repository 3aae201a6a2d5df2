"""The ``gshead`` command: one command, one subcommand per job.

This module is the argument parser and ``main`` only; every subcommand lives in
``gshead.commands.<name>`` and registers itself with ``add_parser(subparsers)``.

Errors that gshead raises on purpose (``GsheadError``) print one line and exit with status 2;
outputs are written atomically, so a failed or interrupted run leaves no partial file.
"""

from __future__ import annotations

import argparse
import sys

from gshead.commands import EXIT_ERROR, EXIT_INTERRUPTED

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from gshead import __version__
    from gshead.commands import (
        ablate,
        bench,
        config,
        data,
        export,
        headmodel,
        importers,
        plugins,
        reconstruct,
        reenact,
        track,
        train,
        view,
    )
    from gshead.commands import eval as eval_

    parser = argparse.ArgumentParser(prog="gshead", description="One-shot 3D Gaussian head avatars.")
    parser.add_argument("--version", action="version", version=f"gshead {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order of ``gshead --help``.
    commands = (
        plugins, config, reconstruct, reenact, headmodel, importers, bench,
        track, train, data, ablate, export, eval_, view,
    )  # fmt: skip
    for command in commands:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gshead.core.errors import GsheadError

    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands switch autograd off for speed; a caller running main() in-process (tests, notebooks)
    # gets its own grad mode back afterwards.
    grad_mode = sys.modules["torch"].is_grad_enabled() if "torch" in sys.modules else True
    try:
        return args.func(args)
    except GsheadError as exc:
        print(f"gshead: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gshead: interrupted; no partial output was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "torch" in sys.modules:
            sys.modules["torch"].set_grad_enabled(grad_mode)


if __name__ == "__main__":
    sys.exit(main())
