"""Deprecated alias of ``gshead.plugins.headmodels._linear`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.headmodels import _linear as _moved

warnings.warn("gshead.plugins.headmodels.linear moved to gshead.plugins.headmodels._linear; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
