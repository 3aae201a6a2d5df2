"""Deprecated alias of ``gshead.io.avatar`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import avatar as _moved

warnings.warn("gshead.core.avatar_io moved to gshead.io.avatar; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
