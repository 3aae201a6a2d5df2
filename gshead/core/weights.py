"""Deprecated alias of ``gshead.io.weights`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import weights as _moved

warnings.warn("gshead.core.weights moved to gshead.io.weights; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
