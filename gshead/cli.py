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


LINE_LIMIT = 300
"""The most characters of the one line a failed run prints."""

INTERRUPTED = "gshead: interrupted; no partial output was kept"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C (``atomic_output`` removes its temporary
    file), then ``main`` exits with 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, _frame) -> None:
    raise Terminated(signum)


def _install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP raise ``Terminated``; the handlers they replace, to put back."""
    import signal
    import threading

    previous: dict = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            previous[signum] = signal.signal(signum, _on_signal)
        except (OSError, ValueError):
            pass
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    import signal

    for signum, handler in previous.items():
        try:
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def _error_line(message: object) -> str:
    from gshead.core.errors import shorten

    prefix = "gshead: error: "
    return prefix + shorten(message, LINE_LIMIT - len(prefix))


def _os_error_message(exc: OSError) -> str:
    """One line for a file-system error, naming the path(s) where known."""
    import errno as errno_

    hints = {
        errno_.EROFS: "the file system is read-only",
        errno_.ENOSPC: "no space left on the device",
        errno_.EDQUOT: "disk quota exceeded",
        errno_.EACCES: "permission denied",
        errno_.EPERM: "operation not permitted",
        errno_.ENOTDIR: "a folder in the path is a file",
        errno_.EEXIST: "something is already there",
        errno_.EISDIR: "it is a folder",
        errno_.ENOENT: "no such file or folder",
        errno_.ENAMETOOLONG: "the name is too long",
    }
    what = hints.get(exc.errno) or exc.strerror or type(exc).__name__
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    where = " -> ".join(names)
    if not names and exc.errno is None:
        return f"cannot write or read a file: {exc}"
    return f"{where}: {what}" if where else f"cannot write or read a file: {what}"


def _safetensors_message(exc: BaseException) -> str:
    import re

    text = str(exc)
    found = re.search(r'message: "([^"]*)"', text)
    return f"cannot write or read a safetensors file: {found.group(1) if found else text}"


def _check_cache_dir() -> None:
    """``$GSHEAD_CACHE_DIR``, when set, must be a folder or a path one can create: checked
    before any work, so a mistake fails at once rather than when the first cache write comes."""
    import os
    from pathlib import Path

    from gshead.core.errors import InputError, shorten

    value = os.environ.get("GSHEAD_CACHE_DIR")
    if not value:
        return
    path = Path(value).expanduser()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return
        if candidate.exists() or candidate.is_symlink():
            what = "is" if candidate == path else f"is inside {shorten(candidate, 80)}, which is"
            raise InputError(
                f"GSHEAD_CACHE_DIR={shorten(value, 100)} {what} not a folder; point it at a folder or unset it"
            )


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
