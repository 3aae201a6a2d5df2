"""Deprecated alias of ``gshead.io.motion`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import motion as _moved

warnings.warn("gshead.core.motion moved to gshead.io.motion; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
