"""Deprecated alias of ``gshead.io.ply`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import ply as _moved

warnings.warn("gshead.core.ply moved to gshead.io.ply; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
