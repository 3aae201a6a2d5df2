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
from gshead.commands._errors import (
    INTERRUPTED,
    Terminated,
    _check_cache_dir,
    _error_line,
    _install_signal_handlers,
    _os_error_message,
    _restore_signal_handlers,
    _safetensors_message,
)

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
        live,
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
        plugins, config, reconstruct, reenact, live, headmodel, importers, bench,
        track, train, data, ablate, export, eval_, view,
    )  # fmt: skip
    for command in commands:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``gshead`` command line; returns the exit status.

    Every failure is one line on stderr: ``gshead: error: ...`` with status 2 (at most
    ``LINE_LIMIT`` characters), or the interrupted line with 130 (Ctrl-C), 143 (SIGTERM) or
    129 (SIGHUP); nothing is imported before the handlers are in place, so even a Ctrl-C during
    start-up prints one line."""
    previous: dict = {}
    grad_mode = None
    try:
        previous = _install_signal_handlers()
        from gshead.core.errors import GsheadError

        parser = build_parser()
        args = parser.parse_args(argv)
        # Commands switch autograd off for speed; a caller running main() in-process (tests, notebooks)
        # gets its own grad mode back afterwards.
        grad_mode = sys.modules["torch"].is_grad_enabled() if "torch" in sys.modules else True
        _check_cache_dir()
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except SystemExit:
        raise  # argparse: usage errors, --help, --version
    except Exception as exc:  # every failure is one line
        if type(exc).__name__ == "SafetensorError":
            message = _safetensors_message(exc)
        elif "GsheadError" in locals() and isinstance(exc, GsheadError):
            message = str(exc)
        elif isinstance(exc, OSError):
            message = _os_error_message(exc)
        elif isinstance(exc, MemoryError):
            message = "out of memory; try smaller inputs or sizes"
        elif isinstance(exc, RecursionError):
            message = "an input is nested too deeply"
        else:
            raise
        print(_error_line(message), file=sys.stderr)
        return EXIT_ERROR
    finally:
        try:
            if grad_mode is not None and "torch" in sys.modules:
                sys.modules["torch"].set_grad_enabled(grad_mode)
        finally:
            _restore_signal_handlers(previous)


if __name__ == "__main__":
    sys.exit(main())
