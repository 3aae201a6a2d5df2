"""Deprecated alias of ``gshead.plugins.rasterizers.auto`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.rasterizers import auto as _moved

warnings.warn("gshead.plugins.renderers.auto moved to gshead.plugins.rasterizers.auto; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
