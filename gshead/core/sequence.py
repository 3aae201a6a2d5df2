"""Deprecated alias of ``gshead.io.sequence`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import sequence as _moved

warnings.warn("gshead.core.sequence moved to gshead.io.sequence; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
