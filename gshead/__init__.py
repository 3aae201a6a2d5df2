"""gshead: one-shot 3D Gaussian head avatars, built from plugins.

Importing gshead loads no plugins, weights or kernels; the registry loads plugins on first use.
"""

from gshead.core.components import (
    DriverConfig,
    EncoderConfig,
    HeadModelConfig,
    LifterConfig,
    RasterizerConfig,
    RefinerConfig,
    TrackerConfig,
)
from gshead.core.hookspecs import hookimpl
from gshead.core.version import __version__

__all__ = [
    "__version__",
    "hookimpl",
    "DriverConfig",
    "EncoderConfig",
    "HeadModelConfig",
    "LifterConfig",
    "RasterizerConfig",
    "RefinerConfig",
    "TrackerConfig",
]
