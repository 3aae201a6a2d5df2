"""What ``gshead.cli.main`` needs to turn any failure into one bounded line: the signal
handlers (SIGTERM and SIGHUP unwind like Ctrl-C), the wording of file-system and safetensors
errors, the line-length cap, and the early check of ``$GSHEAD_CACHE_DIR``.

Imports only the standard library at module level, so ``main`` can install the handlers before
anything heavy (torch) is imported.
"""

from __future__ import annotations

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
