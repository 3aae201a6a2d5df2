"""Deprecated alias of ``gshead.plugins.rasterizers.gsplat`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.rasterizers import gsplat as _moved

warnings.warn("gshead.plugins.renderers.gsplat_cuda moved to gshead.plugins.rasterizers.gsplat; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
