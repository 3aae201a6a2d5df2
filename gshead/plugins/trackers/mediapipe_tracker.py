"""Deprecated alias of ``gshead.plugins.trackers.mediapipe`` (moved there in gshead 0.2; this path goes away in 0.3)."""

import sys
import warnings

from gshead.plugins.trackers import mediapipe as _moved

warnings.warn("gshead.plugins.trackers.mediapipe_tracker moved to gshead.plugins.trackers.mediapipe; import it from there", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
