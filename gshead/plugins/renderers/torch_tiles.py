"""Deprecated alias of ``gshead.plugins.rasterizers.torch_tiles`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.rasterizers import torch_tiles as _moved

warnings.warn("gshead.plugins.renderers.torch_tiles moved to gshead.plugins.rasterizers.torch_tiles; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
