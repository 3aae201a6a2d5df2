"""Deprecated alias of ``gshead.commands._views`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.commands import _views as _moved

warnings.warn(
    "gshead.commands.reenact_views moved to gshead.commands._views; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
