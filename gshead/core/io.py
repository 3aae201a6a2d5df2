"""Deprecated alias of ``gshead.io.media`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import media as _moved

warnings.warn("gshead.core.io moved to gshead.io.media; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
