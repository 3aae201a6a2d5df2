"""Built-in components, one folder per kind (``headmodels/``, ``encoders/``, ``lifters/``,
``drivers/``, ``rasterizers/``, ``refiners/``, ``trackers/``) and one module per registered name,
named after it (``rasterizers/torch_tiles.py`` registers ``torch-tiles``).

Each module is a pluggy plugin registered exactly like a third-party one: it defines
``gshead_register_<kind>s`` hook implementations. The registry owns the list of these modules
(``gshead.core.registry.DEFAULT_PLUGINS``) and imports them on its first query. Modules whose
name starts with ``_`` are helpers shared inside one kind; ``_shared/`` holds helpers shared
across kinds. A plugin never imports another plugin: one that composes others builds them
through the registry (``BuildContext.build``).
"""
