"""gshead: one-shot 3D Gaussian head avatars, built from plugins.

Importing gshead loads no plugins, weights or kernels; the registry loads plugins on first use.
"""

from gshead.core.config import (
    DriverConfig,
    EncoderConfig,
    HeadModelConfig,
    LifterConfig,
    RasterizerConfig,
    RefinerConfig,
    TrackerConfig,
)
from gshead.core.hookspecs import hookimpl

__version__ = "0.1.0"

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
