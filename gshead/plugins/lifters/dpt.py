"""Deprecated alias of ``gshead.plugins.lifters._dpt`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.lifters import _dpt as _moved

warnings.warn("gshead.plugins.lifters.dpt moved to gshead.plugins.lifters._dpt; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
