"""Pipeline configs: discriminated slots, one-line errors with the YAML path, the JSON schema."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Literal

import pydantic
import pytest
import yaml

from gshead.core.config import (
    EncoderConfig,
    default_pipeline_path,
    dump_pipeline,
    load_pipeline,
    pipeline_model,
    validate_pipeline,
)
from gshead.core.errors import ConfigError
from gshead.core.hookspecs import hookimpl
from gshead.core.registry import Registry
from gshead.testing import tiny_pipeline

REPO = Path(__file__).resolve().parents[2]


class WideConfig(EncoderConfig):
    name: Literal["wide-enc"] = "wide-enc"
    width: int = 8
    """Channels."""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(autoload=False)


@pytest.fixture(scope="module")
def two_encoders() -> Registry:
    plugin = types.SimpleNamespace(gshead_register_encoders=hookimpl(lambda register: register(WideConfig, lambda c, x: None)))
    return Registry(autoload=False, extra_plugins=[("wide-dist", plugin)])


@pytest.mark.parametrize("path", [default_pipeline_path(), *sorted((REPO / "configs").glob("*.yaml"))], ids=str)
def test_shipped_configs_validate(path, registry):
    config = load_pipeline(path, registry)
    assert config.encoder.name and config.render_size >= 16


def test_round_trip_through_json(registry):
    config = validate_pipeline(tiny_pipeline(), registry)
    again = validate_pipeline(json.loads(dump_pipeline(config)), registry)
    assert again == config


@pytest.mark.parametrize("reg_name", ["registry", "two_encoders"])
def test_unknown_component_name_lists_the_names(reg_name, request):
    reg = request.getfixturevalue(reg_name)
    with pytest.raises(ConfigError) as err:
        validate_pipeline(tiny_pipeline(encoder={"name": "dinov9"}), reg, source="p.yaml")
    msg = str(err.value)
    assert msg.startswith("p.yaml: encoder.name: unknown encoder 'dinov9'; expected one of: ")
    assert "tiny-conv" in msg and "\n" not in msg
    if reg_name == "two_encoders":
        assert "wide-enc" in msg


def test_misspelt_field_names_the_path_and_the_allowed_fields(two_encoders):
    with pytest.raises(ConfigError) as err:
        validate_pipeline(tiny_pipeline(encoder={"name": "tiny-conv", "chanels": 4}), two_encoders)
    assert str(err.value).startswith("encoder.chanels: unknown field for encoder 'tiny-conv'; expected one of: name, channels")


def test_wrong_value_type_names_path_and_value(registry):
    with pytest.raises(ConfigError, match=r"^lifter\.resolution: Input should be a valid integer.*\(got 'lots'\)"):
        validate_pipeline(tiny_pipeline(lifter={"name": "single-plane", "resolution": "lots"}), registry)


def test_unknown_setting_missing_slot_and_not_a_mapping(registry):
    with pytest.raises(ConfigError, match=r"^seedd: unknown setting; expected one of: seed"):
        validate_pipeline(tiny_pipeline(seedd=1), registry)
    cfg = tiny_pipeline()
    del cfg["tracker"]
    with pytest.raises(ConfigError, match=r"^tracker: missing"):
        validate_pipeline(cfg, registry)
    with pytest.raises(ConfigError, match="expected a mapping"):
        validate_pipeline(["encoder"], registry)
    with pytest.raises(ConfigError, match=r"^encoder: missing 'name'"):
        validate_pipeline(tiny_pipeline(encoder={"channels": 3}), Registry(autoload=False, extra_plugins=[
            ("w", types.SimpleNamespace(gshead_register_encoders=hookimpl(lambda register: register(WideConfig, lambda c, x: None))))
        ]))


def test_the_most_specific_problem_is_reported_first(registry):
    with pytest.raises(ConfigError, match=r"^encoder\.chanels: unknown field .*\(and 6 more problem\(s\)\)$"):
        validate_pipeline({"encoder": {"name": "tiny-conv", "chanels": 3}}, registry)


def test_bad_yaml_and_missing_file(tmp_path, registry):
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: {name: tiny-conv\nlifter: [", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_pipeline(bad, registry)
    with pytest.raises(ConfigError, match="nothere.yaml: cannot read pipeline config"):
        load_pipeline(tmp_path / "nothere.yaml", registry)


def test_yaml_is_loaded_safely(tmp_path, registry):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['touch pwned']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(evil, registry)
    assert not (tmp_path / "pwned").exists()


def test_schema_is_a_discriminated_union_with_field_docs(two_encoders):
    schema = pipeline_model(two_encoders).model_json_schema()
    encoder = schema["properties"]["encoder"]
    assert encoder["discriminator"]["propertyName"] == "name"
    assert {"tiny-conv", "wide-enc"} <= set(encoder["discriminator"]["mapping"])
    assert schema["$defs"]["WideConfig"]["properties"]["width"]["description"] == "Channels."
    assert "description" in schema["properties"]["seed"]


def test_configs_are_frozen(registry):
    config = validate_pipeline(tiny_pipeline(), registry)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.encoder.channels = 3  # type: ignore[misc]
    assert yaml.safe_load(default_pipeline_path().read_text())["encoder"]["name"] == config.encoder.name
