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

__all__ = ["COMMAND_ORDER", "EXIT_ERROR", "EXIT_INTERRUPTED", "QUICK_START", "build_parser", "main"]

QUICK_START = (
    "# an avatar from the built-in portrait, with the shipped trained weights and 100 fitting steps\n"
    "gshead reconstruct example:astronaut -o astronaut.safetensors --weights builtin:default --fit-steps 100\n"
    "# drive it with the demo motion into a video\n"
    "gshead reenact astronaut.safetensors --driver demo -o astronaut.mp4"
)
"""The two-command quick start at the end of ``gshead --help`` (the README's main job)."""

COMMAND_ORDER = (
    "reconstruct", "reenact", "live", "track", "view", "export", "eval",
    "import", "data", "train", "ablate", "bench",
    "headmodel", "plugins", "config",
)  # fmt: skip
"""The subcommands in the order ``gshead --help`` lists them (the workflow; see ``build_parser``)."""


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
    from gshead.commands._help import Formatter, examples_epilog

    parser = argparse.ArgumentParser(
        prog="gshead",
        description="One-shot 3D Gaussian head avatars: build an avatar from one portrait, drive it "
        "with a demo motion, a video, a tracked sequence or ARKit curves, look at it and export it.",
        epilog=examples_epilog(QUICK_START, title="quick start")
        + "\n\n'gshead COMMAND --help' shows a command's options and examples.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"gshead {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order of ``gshead --help`` is the workflow: make an avatar and use it (reconstruct,
    # reenact, live; track makes driving sequences; view and export look at it and take it
    # elsewhere), measure it (eval), weights and training (import, data, train, ablate, bench),
    # then the inspection tools (headmodel, plugins, config).
    commands = (
        reconstruct, reenact, live, track, view, export, eval_,
        importers, data, train, ablate, bench,
        headmodel, plugins, config,
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
