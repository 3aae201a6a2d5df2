"""Deprecated alias of ``gshead.jobs.fitting`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.jobs import fitting as _moved

warnings.warn("gshead.core.fitting moved to gshead.jobs.fitting; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
