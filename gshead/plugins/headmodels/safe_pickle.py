"""Deprecated alias of ``gshead.io.safe_pickle`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.io import safe_pickle as _moved

warnings.warn("gshead.plugins.headmodels.safe_pickle moved to gshead.io.safe_pickle; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
