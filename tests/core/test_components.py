"""The one table of kinds, and everything that derives from it; the typed register object;
building a component from inside another through the context."""

from __future__ import annotations

import types
import typing
from typing import Literal

import pydantic
import pytest

from gshead.core import hookspecs
from gshead.core.components import (
    KIND_TABLE,
    KINDS,
    BuildContext,
    ComponentConfig,
    EncoderConfig,
    kind_info,
)
from gshead.core.config import BASE_FOR_KIND, PipelineConfig, pipeline_model, validate_pipeline
from gshead.core.errors import ConfigError, PluginError
from gshead.core.pipeline import RECONSTRUCTION_KINDS, Pipeline
from gshead.core.registry import DEFAULT_PLUGINS, Register, Registry
from gshead.testing import KIND_CHECKS, tiny_pipeline


@pytest.fixture(scope="module")
def registry():
    return Registry(autoload=False)


def test_every_kind_of_the_table_has_a_hookspec_base_config_slot_check_and_folder():
    specs = {name for name in dir(hookspecs) if name.startswith("gshead_register_")}
    assert specs == {info.hook for info in KIND_TABLE}
    assert set(KIND_CHECKS) == set(KINDS)
    assert set(BASE_FOR_KIND) == set(KINDS)
    for info in KIND_TABLE:
        assert PipelineConfig.model_fields[info.kind].annotation is info.base
        assert PipelineConfig.model_fields[info.kind].description, f"slot {info.kind} is undocumented"
        assert info.base.kind == info.kind
        assert any(m.startswith(f"gshead.plugins.{info.plural}.") for m in DEFAULT_PLUGINS)
    assert RECONSTRUCTION_KINDS == ("encoder", "lifter", "tracker")


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(PluginError, match=r"unknown component kind 'renderer'; expected one of: headmodel, encoder"):
        kind_info("renderer")


def test_pipeline_has_one_attribute_per_kind_and_a_typed_config(registry):
    pipe = Pipeline.from_dict(tiny_pipeline(), registry)
    assert isinstance(pipe.config, PipelineConfig)
    for info in KIND_TABLE:
        component = getattr(pipe, info.attribute)
        assert pipe.components()[info.kind] is component
        assert isinstance(component, info.protocol), f"{info.kind} does not satisfy {info.protocol.__name__}"
    assert set(pipe.trainable_modules()) == {"encoder", "lifter", "driver", "rasterizer", "refiner"}  # fixed: head, tracker
    assert pipe.context.registry is registry and pipe.context.head_model is pipe.head_model


def test_runtime_model_refines_the_static_slots(registry):
    model = pipeline_model(registry)
    assert issubclass(model, PipelineConfig)
    slot = model.model_fields["encoder"].annotation
    members = set(typing.get_args(slot)) if typing.get_origin(slot) is typing.Union else {slot}
    assert {spec.config_class for spec in registry.components("encoder").values()} == members


class _SharedA(EncoderConfig):
    name: Literal["shared-a"] = "shared-a"
    pipeline_shared: typing.ClassVar[tuple[str, ...]] = ("threshold",)
    threshold: float = 0.5
    """A value the driver must agree with."""


def test_pipeline_shared_fields_must_agree_across_slots():
    reg = Registry(autoload=False)
    data = tiny_pipeline(lifter={"name": "mesh-anchored", "motion_threshold": 0.02}, driver={"name": "light-control"})
    if "pipeline_shared" not in vars(reg.get("lifter", "mesh-anchored").config_class):
        pytest.skip("mesh-anchored does not declare shared fields")
    with pytest.raises(ConfigError, match=r"lifter.motion_threshold is 0.02 but driver.motion_threshold is 0.01"):
        validate_pipeline(data, reg)
    data["driver"]["motion_threshold"] = 0.02
    assert validate_pipeline(data, reg).lifter.motion_threshold == 0.02


def _plugin(**hooks):
    return types.SimpleNamespace(**{k: hookspecs.hookimpl(v) for k, v in hooks.items()})


def test_register_object_adds_by_method_or_call_and_closes_after_the_hook():
    kept: list[Register] = []

    def register_encoders(register: Register) -> None:
        assert register.kind == "encoder" and register.source == "my-dist"
        register.add(_SharedA, lambda c, ctx: None)
        kept.append(register)

    reg = Registry(autoload=False, extra_plugins=[("my-dist", _plugin(gshead_register_encoders=register_encoders))])
    assert reg.get("encoder", "shared-a").config_class is _SharedA
    with pytest.raises(PluginError, match=r"plugin 'my-dist' registered a encoder after its hook returned"):
        kept[0].add(_SharedA, lambda c, ctx: None)


def test_a_component_builds_another_through_the_context(registry):
    context = BuildContext(feature_channels=4, registry=registry)
    rasterizer = context.build("rasterizer", {"name": "torch-tiles"})
    assert type(rasterizer).__name__ == "TorchTilesRasterizer"
    with pytest.raises(ConfigError, match=r"rasterizer: missing 'name'"):
        context.build("rasterizer", {})
    with pytest.raises(PluginError, match=r"this BuildContext has no registry"):
        BuildContext(feature_channels=4).build("rasterizer", {"name": "torch-tiles"})


def test_base_configs_refuse_unknown_fields_and_are_frozen():
    cfg = _SharedA()
    assert isinstance(cfg, ComponentConfig)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.threshold = 1.0  # type: ignore[misc]


def test_version_matches_the_package_metadata():
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from gshead import __version__

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert __version__ == pyproject["project"]["version"]
    assert importlib.metadata.version("gshead") in (__version__, pyproject["project"]["version"])
