"""Deprecated alias of ``gshead.plugins.rasterizers.cpu`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.rasterizers import cpu as _moved

warnings.warn("gshead.plugins.renderers.cpu moved to gshead.plugins.rasterizers.cpu; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
