"""The progress bar every ``gshead`` subcommand shows on stderr."""

from __future__ import annotations

import sys


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr (``disable=True`` hides it)."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


__all__ = ["progress"]
