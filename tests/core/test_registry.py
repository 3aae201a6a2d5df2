"""The registry: built-ins through the hooks, sources, duplicates, unknown names, broken plugins."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings
from typing import Literal

import pytest

from gshead.core import registry as registry_mod
from gshead.core.components import KINDS
from gshead.core.config import EncoderConfig, LifterConfig
from gshead.core.errors import PluginError, UnknownComponentError
from gshead.core.hookspecs import hookimpl
from gshead.core.registry import Registry


class DupConfig(EncoderConfig):
    name: Literal["tiny-conv"] = "tiny-conv"


class OtherConfig(EncoderConfig):
    name: Literal["other-enc"] = "other-enc"
    width: int = 4
    """A documented field."""


def _plugin(**hooks) -> types.SimpleNamespace:
    """A plugin object whose attributes are hookimpl functions."""
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def test_every_kind_has_a_builtin_registered_through_the_hooks():
    reg = Registry(autoload=False)
    for kind in KINDS:
        specs = reg.components(kind)
        assert specs, f"no built-in {kind}"
        assert all(s.source == "gshead" for s in specs.values())
    # Built-ins really are pluggy plugins, registered like third-party ones.
    names = {name for name, _ in reg.plugin_manager.list_name_plugin()}
    assert "gshead.plugins.encoders.tiny_conv" in names


def test_extra_plugin_components_carry_their_source():
    plugin = _plugin(gshead_register_encoders=lambda register: register(OtherConfig, lambda c, ctx: None))
    reg = Registry(autoload=False, extra_plugins=[("my-dist", plugin)])
    spec = reg.get("encoder", "other-enc")
    assert spec.source == "my-dist" and spec.config_class is OtherConfig


def test_duplicate_name_is_an_error_naming_both_sources():
    plugin = _plugin(gshead_register_encoders=lambda register: register(DupConfig, lambda c, ctx: None))
    reg = Registry(autoload=False, extra_plugins=[("shadow-dist", plugin)])
    with pytest.raises(PluginError, match=r"duplicate encoder name 'tiny-conv': registered by gshead and by shadow-dist"):
        reg.components("encoder")


def test_unknown_name_lists_what_exists():
    reg = Registry(autoload=False)
    with pytest.raises(UnknownComponentError, match=r"unknown encoder 'nope'; expected one of: .*tiny-conv"):
        reg.get("encoder", "nope")
    with pytest.raises(UnknownComponentError, match="unknown component kind"):
        reg.components("decoder")  # type: ignore[arg-type]


def test_wrong_config_class_and_bad_name_declaration_are_refused():
    bad_kind = _plugin(gshead_register_encoders=lambda register: register(OtherConfig.__base__, lambda c, x: None))
    with pytest.raises(PluginError, match="name must be declared"):
        Registry(autoload=False, extra_plugins=[("p", bad_kind)]).components("encoder")

    class Lift(LifterConfig):
        name: Literal["x"] = "x"

    wrong = _plugin(gshead_register_encoders=lambda register: register(Lift, lambda c, x: None))
    with pytest.raises(PluginError, match="expected a subclass of gshead.EncoderConfig"):
        Registry(autoload=False, extra_plugins=[("p", wrong)]).components("encoder")


def test_hook_that_raises_names_the_plugin():
    def boom(register):
        raise RuntimeError("kaput")

    reg = Registry(autoload=False, extra_plugins=[("fragile-dist", _plugin(gshead_register_refiners=boom))])
    with pytest.raises(PluginError, match="fragile-dist.*gshead_register_refiners.*kaput"):
        reg.components("refiner")


class _FakeEntryPoint:
    def __init__(self, name, loader, dist="fake-dist"):
        self.name, self._loader = name, loader
        self.value = f"{name}:plugin"
        self.dist = types.SimpleNamespace(name=dist)

    def load(self):
        return self._loader()


def _patch_entry_points(monkeypatch, eps):
    monkeypatch.setattr(registry_mod.metadata, "entry_points", lambda group: eps if group == "gshead" else [])


def test_plugin_that_fails_to_import_warns_and_the_rest_work(monkeypatch):
    def broken():
        raise ImportError("no module named 'missing_dependency'")

    good = _plugin(gshead_register_encoders=lambda register: register(OtherConfig, lambda c, x: None))
    _patch_entry_points(monkeypatch, [_FakeEntryPoint("broken", broken, "broken-dist"), _FakeEntryPoint("good", lambda: good)])
    reg = Registry(autoload=True, blocked=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        specs = reg.components("encoder")
    assert "other-enc" in specs and "tiny-conv" in specs
    messages = [str(w.message) for w in caught]
    assert any("'broken' from broken-dist failed to load" in m and "missing_dependency" in m for m in messages)


def test_env_vars_disable_autoload_and_block_plugins(monkeypatch):
    good = _plugin(gshead_register_encoders=lambda register: register(OtherConfig, lambda c, x: None))
    _patch_entry_points(monkeypatch, [_FakeEntryPoint("good", lambda: good)])
    monkeypatch.setenv("GSHEAD_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "other-enc" not in Registry().components("encoder")
    monkeypatch.delenv("GSHEAD_DISABLE_PLUGIN_AUTOLOAD")
    assert "other-enc" in Registry().components("encoder")
    monkeypatch.setenv("GSHEAD_BLOCK_PLUGINS", "good, gshead.plugins.refiners.identity")
    reg = Registry()
    assert "other-enc" not in reg.components("encoder")
    assert "identity" not in reg.components("refiner")


@pytest.mark.parametrize(
    ("value", "disabled"),
    [("1", True), ("true", True), ("TRUE", True), (" Yes ", True), ("0", False), ("false", False),
     ("No", False), ("", False)],
)
def test_disable_autoload_is_true_only_for_1_true_yes(monkeypatch, value, disabled):
    good = _plugin(gshead_register_encoders=lambda register: register(OtherConfig, lambda c, x: None))
    _patch_entry_points(monkeypatch, [_FakeEntryPoint("good", lambda: good)])
    monkeypatch.setenv("GSHEAD_DISABLE_PLUGIN_AUTOLOAD", value)
    assert ("other-enc" not in Registry().components("encoder")) is disabled


@pytest.mark.parametrize("name", ["mesh-bound", "driver:mesh-bound", "gshead.plugins.drivers.mesh_bound"])
def test_block_a_builtin_by_the_name_gshead_plugins_shows(monkeypatch, name):
    _patch_entry_points(monkeypatch, [])
    monkeypatch.setenv("GSHEAD_BLOCK_PLUGINS", f" {name} ,")
    reg = Registry()
    assert "mesh-bound" not in reg.components("driver")
    assert "expression-gaussians" in reg.components("driver")  # only that one
    names = {plugin for plugin, _ in reg.plugin_manager.list_name_plugin()}
    assert "gshead.plugins.drivers.mesh_bound" not in names  # never imported or registered


def test_kind_qualified_block_leaves_other_kinds_alone(monkeypatch):
    _patch_entry_points(monkeypatch, [])
    reg = Registry(blocked=["encoder:identity"])
    assert "identity" in reg.components("refiner")


def test_block_one_component_of_a_multi_component_plugin(monkeypatch):
    def register_both(register):
        register(OtherConfig, lambda c, x: None)
        register(DupConfig, lambda c, x: None)  # would clash with the built-in tiny-conv

    multi = _plugin(gshead_register_encoders=register_both)
    _patch_entry_points(monkeypatch, [_FakeEntryPoint("multi", lambda: multi, "multi-dist")])
    reg = Registry(autoload=True, blocked=["tiny-conv"])
    specs = reg.components("encoder")
    assert "other-enc" in specs and "tiny-conv" not in specs  # blocked everywhere, no duplicate error
    reg = Registry(autoload=True, blocked=["multi-dist"])  # the package name shown in brackets
    assert "other-enc" not in reg.components("encoder")


def test_importing_gshead_loads_no_plugins_and_no_heavy_modules():
    code = (
        "import sys, gshead, gshead.core.registry, gshead.core.pipeline, gshead.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('gshead.plugins.')))\n"
        "print([m for m in ('numba', 'transformers', 'gsplat', 'av') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "[]"], out


def test_plugins_load_once_on_first_query(monkeypatch):
    _patch_entry_points(monkeypatch, [])
    reg = Registry(autoload=True)
    assert reg._specs is None and not reg.plugin_manager.list_name_plugin()
    first = reg.components("encoder")
    count = len(reg.plugin_manager.list_name_plugin())
    assert reg.components("encoder") == first
    assert len(reg.plugin_manager.list_name_plugin()) == count >= 7
