"""gshead: one-shot 3D Gaussian head avatars, built from plugins.

Importing gshead loads no plugins, weights or kernels; the registry loads plugins on first use.
"""

# The config base classes are imported on first use (``gshead.DriverConfig``), so importing
# ``gshead`` (the ``gshead`` command does so before it runs) does not import torch: a Ctrl-C
# during start-up then reaches ``gshead.cli.main``, which reports it in one line.
_LAZY = {
    "DriverConfig": "gshead.core.components",
    "EncoderConfig": "gshead.core.components",
    "HeadModelConfig": "gshead.core.components",
    "LifterConfig": "gshead.core.components",
    "RasterizerConfig": "gshead.core.components",
    "RefinerConfig": "gshead.core.components",
    "TrackerConfig": "gshead.core.components",
    "hookimpl": "gshead.core.hookspecs",
    "__version__": "gshead.core.version",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gshead' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
