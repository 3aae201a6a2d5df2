"""The component registry: which components exist, who registered them, and how to build them.

How it works, in four steps (all on first use, never at import):
1. a pluggy ``PluginManager`` for project ``gshead`` gets the hook specs (``hookspecs.py``);
2. the built-in plugin modules (``gshead.plugins.BUILTIN_PLUGINS``) are registered;
3. third-party plugins are loaded from the entry-point group ``gshead``, unless
   ``GSHEAD_DISABLE_PLUGIN_AUTOLOAD`` is set; ``GSHEAD_BLOCK_PLUGINS=a,b`` skips named ones
   (entry-point names or built-in module names). A plugin that fails to import is skipped
   with a warning naming it;
4. each ``gshead_register_<kind>s`` hook is called with a ``register`` callback that records
   ``(config class, factory)`` under the name in the config's ``name`` field. Two components
   of one kind with one name is an error naming both sources.

``get_registry()`` returns the process-wide registry; tests build their own ``Registry``.
"""

from __future__ import annotations

import importlib
import os
import typing
import warnings
from importlib import metadata

import pluggy

from gshead.core import hookspecs
from gshead.core.components import KINDS, BuildContext, ComponentSpec, Kind
from gshead.core.errors import PluginError, UnknownComponentError

ENV_DISABLE_AUTOLOAD = "GSHEAD_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCK = "GSHEAD_BLOCK_PLUGINS"
ENTRY_POINT_GROUP = "gshead"
BUILTIN_SOURCE = "gshead"


class Registry:
    """Registered components by kind and name. Loads plugins lazily, once."""

    def __init__(
        self,
        builtin: typing.Sequence[str] | None = None,
        autoload: bool | None = None,
        blocked: typing.Iterable[str] | None = None,
        extra_plugins: typing.Sequence[tuple[str, object]] = (),
    ) -> None:
        """
        :param builtin: module names of built-in plugins (default: ``BUILTIN_PLUGINS``).
        :param autoload: load entry-point plugins (default: unless ``GSHEAD_DISABLE_PLUGIN_AUTOLOAD``).
        :param blocked: plugin names to skip (default: ``GSHEAD_BLOCK_PLUGINS``, comma-separated).
        :param extra_plugins: ``(source name, plugin object)`` pairs registered after the rest
            (tests use this to add a plugin module without installing it).
        """
        if builtin is None:
            from gshead.plugins import BUILTIN_PLUGINS

            builtin = BUILTIN_PLUGINS
        if autoload is None:
            autoload = not os.environ.get(ENV_DISABLE_AUTOLOAD)
        if blocked is None:
            blocked = [b.strip() for b in os.environ.get(ENV_BLOCK, "").split(",") if b.strip()]
        self._builtin = tuple(builtin)
        self._autoload = autoload
        self._blocked = frozenset(blocked)
        self._extra = tuple(extra_plugins)
        self._specs: dict[Kind, dict[str, ComponentSpec]] | None = None
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.plugin_manager.add_hookspecs(hookspecs)
        self._sources: dict[str, str] = {}  # pluggy plugin name -> distribution shown to users

    # -- loading -------------------------------------------------------------------------
    def _add_plugin(self, plugin: object, name: str, source: str) -> None:
        self.plugin_manager.register(plugin, name=name)
        self._sources[name] = source

    def _load(self) -> dict[Kind, dict[str, ComponentSpec]]:
        if self._specs is not None:
            return self._specs
        for module_name in self._builtin:
            if module_name in self._blocked:
                continue
            self._add_plugin(importlib.import_module(module_name), module_name, BUILTIN_SOURCE)
        if self._autoload:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in self._blocked or self.plugin_manager.has_plugin(ep.name):
                    continue
                dist = ep.dist.name if ep.dist is not None else ep.value
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken plugin must not take the others down
                    warnings.warn(
                        f"gshead: plugin {ep.name!r} from {dist} failed to load and was skipped: "
                        f"{type(exc).__name__}: {exc}",
                        stacklevel=2,
                    )
                    continue
                self._add_plugin(plugin, ep.name, dist)
        for source, plugin in self._extra:
            self._add_plugin(plugin, source, source)

        specs: dict[Kind, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            hook = getattr(self.plugin_manager.hook, hookspecs.HOOK_FOR_KIND[kind])
            # Call each implementation ourselves (in registration order, built-ins first) so
            # every component knows which plugin registered it.
            for impl in hook.get_hookimpls():
                source = self._sources.get(impl.plugin_name, impl.plugin_name)
                register = _Registrar(kind, source, specs[kind])
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {source!r} failed in {hookspecs.HOOK_FOR_KIND[kind]}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
        self._specs = specs
        return specs

    # -- queries -------------------------------------------------------------------------
    def components(self, kind: Kind) -> dict[str, ComponentSpec]:
        """Every registered component of ``kind``, by name (in registration order)."""
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind {kind!r}; expected one of: {', '.join(KINDS)}")
        return dict(self._load()[kind])

    def get(self, kind: Kind, name: str) -> ComponentSpec:
        """The component ``name`` of ``kind``; the error lists the names that exist."""
        specs = self.components(kind)
        if name not in specs:
            known = ", ".join(sorted(specs)) or "(none)"
            raise UnknownComponentError(f"unknown {kind} {name!r}; expected one of: {known}")
        return specs[name]

    def all(self) -> list[ComponentSpec]:
        """Every registered component, kinds in data-flow order."""
        return [spec for kind in KINDS for spec in self.components(kind).values()]

    def build(self, kind: Kind, config, context: BuildContext):
        """Build a component from its validated config."""
        return self.get(kind, config.name).build(config, context)


class _Registrar:
    """The ``register`` callback handed to one plugin's hook for one kind."""

    def __init__(self, kind: Kind, source: str, into: dict[str, ComponentSpec]) -> None:
        self.kind, self.source, self.into = kind, source, into

    def __call__(self, config_class: type, factory: typing.Callable | None = None) -> None:
        from gshead.core.config import BASE_FOR_KIND

        base = BASE_FOR_KIND[self.kind]
        if not (isinstance(config_class, type) and issubclass(config_class, base)):
            raise PluginError(
                f"plugin {self.source!r} registered {config_class!r} as a {self.kind}; "
                f"expected a subclass of gshead.{base.__name__}"
            )
        name_field = config_class.model_fields.get("name")
        name = name_field.default if name_field is not None else None
        if not isinstance(name, str) or typing.get_args(name_field.annotation) != (name,):
            raise PluginError(
                f"plugin {self.source!r}: {config_class.__name__}.name must be declared as "
                f"`name: Literal['<name>'] = '<name>'`"
            )
        if factory is None or not callable(factory):
            raise PluginError(f"plugin {self.source!r}: {self.kind} {name!r} needs a callable factory")
        if name in self.into:
            other = self.into[name].source
            raise PluginError(f"duplicate {self.kind} name {name!r}: registered by {other} and by {self.source}")
        self.into[name] = ComponentSpec(self.kind, name, config_class, factory, self.source)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (plugins load on its first query)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY
