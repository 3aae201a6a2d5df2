"""Deprecated alias of ``gshead.plugins.encoders._vit`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.encoders import _vit as _moved

warnings.warn("gshead.plugins.encoders.vit moved to gshead.plugins.encoders._vit; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
