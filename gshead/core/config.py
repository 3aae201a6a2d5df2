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
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from gshead.core.components import (
    KIND_TABLE,
    KINDS,
    ComponentConfig,
    DriverConfig,
    EncoderConfig,
    HeadModelConfig,
    Kind,
    LifterConfig,
    RasterizerConfig,
    RefinerConfig,
    TrackerConfig,
)
from gshead.core.errors import ConfigError, bounded_repr, shorten

if TYPE_CHECKING:
    from gshead.core.registry import Registry


BASE_FOR_KIND: dict[Kind, type[ComponentConfig]] = {info.kind: info.base for info in KIND_TABLE}
"""The base config class of each kind (derived from ``KIND_TABLE``)."""


class PipelineSettings(BaseModel):
    """Pipeline-wide settings (everything in a pipeline YAML but the component slots)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed for initialising component weights (same seed, same weights)."""
    feature_channels: int = Field(16, ge=3, le=64)
    """Feature channels per Gaussian; the first three are RGB."""
    source_size: int = Field(128, ge=16, le=4096)
    """Side of the square source crop given to the encoder, in pixels."""
    render_size: int = Field(128, ge=16, le=4096)
    """Side of the square images rendered when driving, in pixels."""
    raster_size: int | None = Field(None, ge=16, le=4096)
    """Largest side the rasterizer and the refiner work at when driving; a larger output (a larger
    ``render_size`` or ``--size``) is rendered and refined at this side and upsampled (bilinear)
    to the output, as GAGAvatar renders its features at 256² for 512² images. Worth it when the
    avatar holds no more detail than this (its colours come from a ``source_size`` crop). null:
    always the output size."""
    background: Literal["lifted", "static"] = "lifted"
    """'lifted': the whole crop, background included, becomes Gaussians that move with the head.
    'static': the tracker segments the portrait (it must be a ``Segmenter``, e.g. ``mediapipe``);
    the static Gaussians outside the person are cut, and the background, filled in where the
    person was, is kept as an image shown behind the avatar in every frame: it never moves with
    the head."""
    torso: Literal["head", "still"] = "head"
    """'head': every static Gaussian moves with the head pose. 'still': the static Gaussians below
    the chin (in the head model's frame) stay where the portrait put them while the head turns,
    blended over the neck (``gshead.core.geometry.body_weights``), so the shoulders stay still and
    the neck bends."""


class PipelineConfig(PipelineSettings):
    """A whole pipeline: the settings plus one component config per slot.

    This is the static type of every validated pipeline config: each slot is typed with its
    kind's base config, so code reading ``config.encoder.name`` or ``config.render_size`` is
    checked. Validation always goes through ``pipeline_model(registry)``, a subclass whose slots
    are refined to the discriminated union of the config classes that registry knows; the
    result is an instance of that subclass, hence of ``PipelineConfig``.
    """

    headmodel: HeadModelConfig
    """The morphable head model: parameters in, mesh out."""
    encoder: EncoderConfig
    """The image encoder: portrait -> feature maps (runs once per portrait)."""
    lifter: LifterConfig
    """Feature maps -> the avatar's static Gaussians."""
    driver: DriverConfig
    """Makes the rig once, then poses its dynamic Gaussians every frame."""
    rasterizer: RasterizerConfig
    """Gaussians + camera -> feature image."""
    refiner: RefinerConfig
    """Feature image -> RGB image."""
    tracker: TrackerConfig
    """Finds the head in images: crop boxes, head parameters and cameras."""

    def slot(self, kind: Kind) -> ComponentConfig:
        """The component config in slot ``kind``."""
        return getattr(self, kind)

    @model_validator(mode="after")
    def _shared_fields_agree(self) -> PipelineConfig:
        """Fields that components declare as ``pipeline_shared`` hold one value across slots."""
        seen: dict[str, tuple[Kind, Any]] = {}
        for kind in KINDS:
            slot = getattr(self, kind, None)
            for name in type(slot).pipeline_shared if isinstance(slot, ComponentConfig) else ():
                value = getattr(slot, name)
                if name in seen and seen[name][1] != value:
                    other, first = seen[name]
                    raise ValueError(
                        f"{other}.{name} is {first!r} but {kind}.{name} is {value!r}; "
                        f"expected the same value in both (they describe one threshold)"
                    )
                seen.setdefault(name, (kind, value))
        return self


_MODELS: weakref.WeakKeyDictionary[Registry, type[PipelineConfig]] = weakref.WeakKeyDictionary()


def pipeline_model(registry: Registry) -> type[PipelineConfig]:
    """The pydantic model of a whole pipeline for the components ``registry`` knows (one per
    registry): ``PipelineConfig`` with each slot refined to the union of registered configs."""
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
        described = PipelineConfig.model_fields[kind].description
        fields[kind] = (slot, Field(..., description=described))
    model = create_model("PipelineConfig", __base__=PipelineConfig, **fields)
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
        return f"{where}{kind}.name: unknown {kind} {bounded_repr(got)}; expected one of: {names}"
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
    if etype == "value_error" and not loc:  # a check across slots (``PipelineConfig`` validators)
        return f"{where}{str(error['msg']).removeprefix('Value error, ')}"
    return f"{where}{shorten(path, 80)}: {shorten(error['msg'], 100)} (got {bounded_repr(error.get('input'))})"


def validate_pipeline(data: Any, registry: Registry, source: str = "") -> PipelineConfig:
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


YAML_MAX_VALUES = 100_000
"""The most values (scalars, lists, mappings) a YAML file may hold once its aliases are expanded."""
YAML_MAX_DEPTH = 64
"""The deepest nesting of lists and mappings a YAML file may have."""
YAML_MAX_BYTES = 10_000_000
"""The largest YAML file gshead reads."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand to more than
    ``YAML_MAX_VALUES`` values, nests deeper than ``YAML_MAX_DEPTH`` or refers to itself, before
    anything is constructed (a "billion laughs" file fails in milliseconds)."""

    def compose_document(self):
        node = super().compose_document()
        self._check_size(node)
        return node

    def _check_size(self, root) -> None:
        sizes: dict[int, int] = {}
        active: set[int] = set()

        def size(node, depth: int) -> int:
            key = id(node)
            if key in sizes:
                return sizes[key]
            if depth > YAML_MAX_DEPTH:
                raise _YamlLimit(f"is nested deeper than {YAML_MAX_DEPTH} levels (the cap)")
            if key in active:
                raise _YamlLimit("has an alias that refers to a value containing it")
            total = 1
            if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
                active.add(key)
                children = node.value if isinstance(node, yaml.SequenceNode) else [c for kv in node.value for c in kv]
                for child in children:
                    total += size(child, depth + 1)
                    if total > YAML_MAX_VALUES:
                        raise _YamlLimit(f"expands (aliases included) to more than {YAML_MAX_VALUES} values (the cap)")
                active.discard(key)
            sizes[key] = total
            return total

        size(root, 0)


class _YamlLimit(Exception):
    """A YAML document over one of the caps of ``_BoundedLoader``."""


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the caps of ``_BoundedLoader``; raises ``yaml.YAMLError``,
    ``_YamlLimit`` or ``RecursionError``."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str) -> Any:
    """The data of a YAML file (``yaml.safe_load``, with caps on size, nesting and alias
    expansion); one-line ``ConfigError`` naming ``what`` (e.g. "pipeline config") when it cannot
    be read, decoded or parsed."""
    path = Path(path)
    try:
        raw = path.read_bytes() if not path.is_file() or path.stat().st_size <= YAML_MAX_BYTES else None
    except OSError as exc:
        raise ConfigError(f"{shorten(path, 120)}: cannot read {what} ({exc.strerror or exc})") from None
    if raw is None:
        raise ConfigError(f"{shorten(path, 120)}: {what} is larger than {YAML_MAX_BYTES} bytes (the cap)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{shorten(path, 120)}: {what} is not UTF-8 text (undecodable byte at offset {exc.start}); "
            "expected a YAML file"
        ) from None
    try:
        data = safe_load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = shorten(getattr(exc, "problem", None) or exc, 120)
        raise ConfigError(f"{shorten(path, 120)}: not valid YAML{at}: {problem}") from None
    except _YamlLimit as exc:
        raise ConfigError(f"{shorten(path, 120)}: {what} {exc}") from None
    except RecursionError:
        raise ConfigError(f"{shorten(path, 120)}: {what} is nested too deeply (at most {YAML_MAX_DEPTH} levels)") from None
    return data


def load_pipeline(path: str | Path, registry: Registry) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    return validate_pipeline(read_yaml(path, "pipeline config"), registry, source=str(path))


def dump_pipeline(config: BaseModel) -> str:
    """A config as canonical JSON (stored in avatar files, reloaded by ``validate_pipeline``)."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def default_pipeline_path() -> Path:
    """The embedded default pipeline shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
