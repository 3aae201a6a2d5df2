"""The component registry: which components exist, who registered them, and how to build them.

How it works, in four steps (all on first use, never at import):
1. a pluggy ``PluginManager`` for project ``gshead`` gets the hook specs (``hookspecs.py``);
2. the built-in plugin modules (``DEFAULT_PLUGINS`` below: the registry owns that list, like
   llm's) are imported and registered, exactly as a third-party plugin would be;
3. third-party plugins are loaded from the entry-point group ``gshead``, unless
   ``GSHEAD_DISABLE_PLUGIN_AUTOLOAD`` is ``1``, ``true`` or ``yes`` (any case; ``0``, ``false``,
   ``no`` and empty leave autoload on). ``GSHEAD_BLOCK_PLUGINS=a,b`` (comma-separated) blocks:
   a component by the name ``gshead plugins`` shows (``mesh-bound``, or ``driver:mesh-bound``
   for one kind only), whichever plugin registers it; a built-in module
   (``gshead.plugins.drivers.mesh_bound``); an entry-point name or a third-party distribution
   name (all of that plugin's components). A blocked built-in is never imported. A plugin that
   fails to import is skipped with a warning naming it;
4. each ``gshead_register_<kind>s`` hook is called with a ``Register`` object (``register.add(
   config_class, factory)``, or call it) that records the component under the name in the
   config's ``name`` field. Two components of one kind with one name is an error naming both
   sources.

``get_registry()`` returns the process-wide registry; tests build their own ``Registry``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import typing
import warnings
from importlib import metadata

import pluggy

from gshead.core import hookspecs
from gshead.core.components import KIND_TABLE, KINDS, BuildContext, ComponentConfig, ComponentSpec, Kind, kind_info
from gshead.core.errors import PluginError, UnknownComponentError

ENV_DISABLE_AUTOLOAD = "GSHEAD_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCK = "GSHEAD_BLOCK_PLUGINS"
ENTRY_POINT_GROUP = "gshead"
TRUE_WORDS = frozenset({"1", "true", "yes"})
"""Values (any case, surrounding spaces ignored) that turn ``GSHEAD_DISABLE_PLUGIN_AUTOLOAD`` on."""
BUILTIN_SOURCE = "gshead"

DEFAULT_PLUGINS: tuple[str, ...] = tuple(
    f"gshead.plugins.{plural}.{module}"
    for plural, modules in (
        ("headmodels", ("procedural", "anny_head", "flame")),
        ("encoders", ("tiny_conv", "dinov2", "webssl")),
        ("lifters", ("single_plane", "dual_plane", "mesh_anchored")),
        ("drivers", ("mesh_bound", "expression_gaussians", "light_control")),
        ("rasterizers", ("torch_tiles", "cpu", "gsplat", "auto")),
        ("refiners", ("identity", "style_unet", "light_unet")),
        ("trackers", ("frontal", "mediapipe", "file")),
    )
    for module in modules
)
"""The built-in plugin modules, one per component, imported on the registry's first query (never
at import time) and registered like third-party plugins. Module ``gshead.plugins.<kind>s.<m>``
registers the component whose YAML name is ``m`` with ``_`` read as ``-``."""


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
        :param builtin: module names of built-in plugins (default: ``DEFAULT_PLUGINS``).
        :param autoload: load entry-point plugins (default: unless ``GSHEAD_DISABLE_PLUGIN_AUTOLOAD``
            is one of ``TRUE_WORDS``).
        :param blocked: component names (``name`` or ``kind:name``), built-in module names,
            entry-point names or distribution names to skip (default: ``GSHEAD_BLOCK_PLUGINS``,
            comma-separated).
        :param extra_plugins: ``(source name, plugin object)`` pairs registered after the rest
            (tests use this to add a plugin module without installing it).
        """
        if builtin is None:
            builtin = DEFAULT_PLUGINS
        if autoload is None:
            autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in TRUE_WORDS
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
            if module_name in self._blocked or self._blocks_builtin_module(module_name):
                continue
            self._add_plugin(importlib.import_module(module_name), module_name, BUILTIN_SOURCE)
        if self._autoload:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in self._blocked or self.plugin_manager.has_plugin(ep.name):
                    continue
                dist = ep.dist.name if ep.dist is not None else ep.value
                if dist in self._blocked and dist != BUILTIN_SOURCE:
                    continue
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
        for info in KIND_TABLE:
            hook = getattr(self.plugin_manager.hook, info.hook)
            # Call each implementation ourselves (in registration order, built-ins first) so
            # every component knows which plugin registered it.
            for impl in hook.get_hookimpls():
                source = self._sources.get(impl.plugin_name, impl.plugin_name)
                register = Register(info.kind, source, specs[info.kind], blocked=self._blocked)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {source!r} failed in {info.hook}: {type(exc).__name__}: {exc}"
                    ) from exc
                finally:
                    register.close()
        self._specs = specs
        return specs

    def _blocks_builtin_module(self, module_name: str) -> bool:
        """True when a blocked component name is the one built-in module ``module_name`` registers
        (``gshead.plugins.<kind>s.<m>`` registers ``<kind>`` ``m`` with ``_`` read as ``-``)."""
        parts = module_name.split(".")
        if len(parts) != 4 or parts[:2] != ["gshead", "plugins"] or not parts[2].endswith("s"):
            return False
        kind, name = parts[2][:-1], parts[3].replace("_", "-")
        return name in self._blocked or f"{kind}:{name}" in self._blocked

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

    def build(self, kind: Kind, config: ComponentConfig, context: BuildContext) -> typing.Any:
        """Build a component from its validated config. The context handed to the factory carries
        this registry, so a component that composes others builds them here too."""
        if context.registry is not self:
            context = dataclasses.replace(context, registry=self)
        return self.get(kind, config.name).build(config, context)


class Register:
    """What a ``gshead_register_<kind>s`` hook is given: the host's list of components of one
    kind, open to that one plugin for the duration of the call (as tox 4's register objects).

    ``register.add(MyEncoderConfig, MyEncoder)`` (or ``register(MyEncoderConfig, MyEncoder)``)
    adds one component; ``register.kind`` says which kind the hook registers.
    """

    def __init__(
        self,
        kind: Kind,
        source: str,
        into: dict[str, ComponentSpec],
        blocked: typing.AbstractSet[str] = frozenset(),
    ) -> None:
        self._kind, self._source, self._into = kind, source, into
        self._blocked = blocked  # component names (``name`` or ``kind:name``) dropped silently
        self._open = True

    @property
    def kind(self) -> Kind:
        """The kind of component this hook registers."""
        return self._kind

    @property
    def source(self) -> str:
        """The plugin (distribution) being registered, as ``gshead plugins`` shows it."""
        return self._source

    def close(self) -> None:
        """End the registration call: a plugin that kept the object cannot add later."""
        self._open = False

    def __call__(self, config_class: type[ComponentConfig], factory: typing.Callable[..., typing.Any]) -> None:
        """Same as ``add``."""
        self.add(config_class, factory)

    def add(self, config_class: type[ComponentConfig], factory: typing.Callable[..., typing.Any]) -> None:
        """Add one component of this hook's kind.

        :param config_class: a subclass of the kind's base config (``gshead.EncoderConfig``...)
            whose ``name`` field is declared ``name: Literal['<name>'] = '<name>'``.
        :param factory: ``factory(config, context: BuildContext)`` returns the built component;
            usually the component class itself.
        """
        if not self._open:
            raise PluginError(f"plugin {self._source!r} registered a {self._kind} after its hook returned")
        base = kind_info(self._kind).base
        if not (isinstance(config_class, type) and issubclass(config_class, base)):
            raise PluginError(
                f"plugin {self._source!r} registered {config_class!r} as a {self._kind}; "
                f"expected a subclass of gshead.{base.__name__}"
            )
        name_field = config_class.model_fields.get("name")
        name = name_field.default if name_field is not None else None
        if not isinstance(name, str) or typing.get_args(name_field.annotation) != (name,):
            raise PluginError(
                f"plugin {self._source!r}: {config_class.__name__}.name must be declared as "
                f"`name: Literal['<name>'] = '<name>'`"
            )
        if factory is None or not callable(factory):
            raise PluginError(f"plugin {self._source!r}: {self._kind} {name!r} needs a callable factory")
        if name in self._blocked or f"{self._kind}:{name}" in self._blocked:
            return  # GSHEAD_BLOCK_PLUGINS names it: absent, and no duplicate-name error
        if name in self._into:
            other = self._into[name].source
            raise PluginError(f"duplicate {self._kind} name {name!r}: registered by {other} and by {self._source}")
        self._into[name] = ComponentSpec(self._kind, name, config_class, factory, self._source)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (plugins load on its first query)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY
