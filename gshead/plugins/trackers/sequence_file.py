"""Deprecated alias of ``gshead.plugins.trackers.file`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.trackers import file as _moved

warnings.warn("gshead.plugins.trackers.sequence_file moved to gshead.plugins.trackers.file; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
