"""Pipeline configs: pydantic models, one config class per registered component.

A pipeline YAML names one component per slot as ``{name: ..., <fields>}``. Once plugins are
loaded, each slot validates as a discriminated union (on ``name``) of the config classes
registered for that kind, so an unknown name or a misspelt field fails with the YAML path.
Field docs are the docstrings written under each field (they become JSON-schema descriptions).
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gshead.core.components import KINDS, Kind
from gshead.core.errors import ConfigError

if TYPE_CHECKING:
    from gshead.core.registry import Registry


class ComponentConfig(BaseModel):
    """Base of every component config: frozen, unknown fields refused, docstrings as docs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    kind: ClassVar[Kind]
    test_fields: ClassVar[dict[str, Any]] = {}  # small settings for contract tests (e.g. a tiny variant)
    name: str

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this component cannot run on this machine as configured by default (no CUDA, a
        missing package or licensed file), or None. Contract tests skip with this reason."""
        return None


class HeadModelConfig(ComponentConfig):
    kind: ClassVar[Kind] = "headmodel"


class EncoderConfig(ComponentConfig):
    kind: ClassVar[Kind] = "encoder"


class LifterConfig(ComponentConfig):
    kind: ClassVar[Kind] = "lifter"


class DriverConfig(ComponentConfig):
    kind: ClassVar[Kind] = "driver"


class RasterizerConfig(ComponentConfig):
    kind: ClassVar[Kind] = "rasterizer"


class RefinerConfig(ComponentConfig):
    kind: ClassVar[Kind] = "refiner"


class TrackerConfig(ComponentConfig):
    kind: ClassVar[Kind] = "tracker"


BASE_FOR_KIND: dict[Kind, type[ComponentConfig]] = {
    "headmodel": HeadModelConfig,
    "encoder": EncoderConfig,
    "lifter": LifterConfig,
    "driver": DriverConfig,
    "rasterizer": RasterizerConfig,
    "refiner": RefinerConfig,
    "tracker": TrackerConfig,
}


class PipelineSettings(BaseModel):
    """Pipeline-wide settings (the component slots are added per registry, see ``pipeline_model``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    seed: int = 0
    """Seed for initialising component weights (same seed, same weights)."""
    feature_channels: int = Field(16, ge=3, le=64)
    """Feature channels per Gaussian; the first three are RGB."""
    source_size: int = Field(128, ge=16, le=4096)
    """Side of the square source crop given to the encoder, in pixels."""
    render_size: int = Field(128, ge=16, le=4096)
    """Side of the square images rendered when driving, in pixels."""


_MODELS: weakref.WeakKeyDictionary[Registry, type[BaseModel]] = weakref.WeakKeyDictionary()


def pipeline_model(registry: Registry) -> type[BaseModel]:
    """The pydantic model of a whole pipeline for the components ``registry`` knows (one per registry)."""
    if registry in _MODELS:
        return _MODELS[registry]
    fields: dict[str, Any] = {}
    for kind in KINDS:
        classes = [spec.config_class for spec in registry.components(kind).values()]
        if not classes:
            raise ConfigError(f"no {kind} is registered: at least one is needed to build a pipeline")
        if len(classes) == 1:
            slot: Any = classes[0]
        else:
            slot = Annotated[Union[tuple(classes)], Field(discriminator="name")]  # noqa: UP007
        fields[kind] = (slot, ...)
    model = create_model("PipelineConfig", __base__=PipelineSettings, **fields)
    _MODELS[registry] = model
    return model


def _describe(error: dict[str, Any], registry: Registry, source: str) -> str:
    """One line for one pydantic error: where, what was wrong, what was expected."""
    loc = [str(p) for p in error["loc"]]
    kind = loc[0] if loc and loc[0] in KINDS else None
    where = f"{source}: " if source else ""
    etype = error["type"]
    if kind and etype in ("union_tag_invalid", "union_tag_not_found", "literal_error") and (
        etype != "literal_error" or loc[-1] == "name"
    ):
        names = ", ".join(sorted(registry.components(kind)))
        got = error.get("input")
        got = got.get("name") if isinstance(got, dict) else got
        if etype == "union_tag_not_found":
            return f"{where}{kind}: missing 'name'; expected one of: {names}"
        return f"{where}{kind}.name: unknown {kind} {got!r}; expected one of: {names}"
    comp = None
    if kind:
        specs = registry.components(kind)
        if len(loc) > 1 and loc[1] in specs:  # drop the union tag pydantic inserts ("encoder.tiny-conv.width")
            comp = loc[1]
            loc = [loc[0]] + loc[2:]
        elif len(specs) == 1:  # a one-member slot is validated without a tag
            comp = next(iter(specs))
    path = ".".join(loc) or "(top level)"
    if etype == "extra_forbidden":
        if kind and comp:
            allowed = ", ".join(registry.get(kind, comp).config_class.model_fields)
            return f"{where}{path}: unknown field for {kind} {comp!r}; expected one of: {allowed}"
        allowed = ", ".join(PipelineSettings.model_fields) + ", " + ", ".join(KINDS)
        return f"{where}{path}: unknown setting; expected one of: {allowed}"
    if etype == "missing":
        return f"{where}{path}: missing; a value is required"
    return f"{where}{path}: {error['msg']} (got {error.get('input')!r})"


def validate_pipeline(data: Any, registry: Registry, source: str = "") -> BaseModel:
    """Validate a plain dict into a pipeline config; ConfigError (one line) on failure."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'pipeline'}: expected a mapping of settings, got {type(data).__name__}")
    model = pipeline_model(registry)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Show the most specific problem: a bad or misspelt value before a slot left out.
        errors = sorted(exc.errors(), key=lambda e: e["type"] == "missing")
        first = _describe(errors[0], registry, source)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The data of a YAML file (``yaml.safe_load``); one-line ``ConfigError`` naming ``what``
    (e.g. "pipeline config") when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return data


def load_pipeline(path: str | Path, registry: Registry) -> BaseModel:
    """Read and validate a pipeline YAML file."""
    return validate_pipeline(read_yaml(path, "pipeline config"), registry, source=str(path))


def dump_pipeline(config: BaseModel) -> str:
    """A config as canonical JSON (stored in avatar files, reloaded by ``validate_pipeline``)."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def default_pipeline_path() -> Path:
    """The embedded default pipeline shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
