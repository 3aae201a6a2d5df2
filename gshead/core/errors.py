"""The errors gshead raises on purpose.

Each carries one line saying what was wrong and what was expected; the CLI prints that line
and exits non-zero, with no traceback.
"""


class GsheadError(Exception):
    """Base class: a user-facing, one-line error."""


class ConfigError(GsheadError):
    """A pipeline config is unreadable, names an unknown component, or has a bad field."""


class PluginError(GsheadError):
    """A plugin broke the registration rules (duplicate name, bad config class, failing hook)."""


class UnknownComponentError(PluginError):
    """A component name that no loaded plugin registered."""


class ShapeError(GsheadError, ValueError):
    """A tensor container was built with the wrong shapes."""


class InputError(GsheadError):
    """An input file (image, video, sequence) is missing, unreadable or unsuitable."""


class AvatarFileError(GsheadError):
    """An avatar or weights file is unreadable, truncated, or from an incompatible pipeline."""


class ContractViolation(GsheadError, AssertionError):
    """A component broke the reconstruction/driving contract (see gshead.core.contract)."""
