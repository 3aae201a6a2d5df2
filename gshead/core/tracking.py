"""Deprecated alias of ``gshead.jobs.tracking`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.jobs import tracking as _moved

warnings.warn("gshead.core.tracking moved to gshead.jobs.tracking; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
