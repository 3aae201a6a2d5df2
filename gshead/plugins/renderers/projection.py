"""Deprecated alias of ``gshead.plugins.rasterizers._projection`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.rasterizers import _projection as _moved

warnings.warn("gshead.plugins.renderers.projection moved to gshead.plugins.rasterizers._projection; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
