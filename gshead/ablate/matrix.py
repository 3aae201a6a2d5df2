"""Ablation matrices: a base pipeline plus axes, expanded into named, validated variants.

A matrix YAML (``configs/ablations/*.yaml``)::

    base: ../reference.yaml          # a pipeline YAML (relative to this file) or an inline mapping
    set: {source_size: 128}          # optional: dotted path -> one value, applied to the base first
    axes:                            # dotted config path -> values
      lifter.name: [single-plane, dual-plane]
      refiner: [{name: identity}, {name: light-unet, widths: [8, 16]}]
    mode: product                    # every combination; or `list` with `variants:`
    measure: {frames: 20, warmup: 3, render_sizes: [128, 256], repeats: 3}
    resources: {cpus: 4, gpus: 0}    # per variant on a Ray cluster (``gshead ablate --ray``)

Axis paths: a pipeline setting (``render_size``), a whole slot (``refiner``) or a slot field
(``encoder.variant``). Applying a value:

- ``<slot>: {name: X, ...}`` replaces the slot; a mapping without ``name`` updates the base slot's fields;
- ``<slot>.name: X`` with X different from the slot's current name resets the slot to ``{name: X}``
  (fields of another component do not carry over; add a field axis or use a mapping value);
- ``<slot>.<field>: v`` sets one field; ``<setting>: v`` sets a pipeline setting.

Axes apply in the order written. ``mode: list`` runs only the ``variants:`` given, each a mapping of
axis path -> value (and an optional ``id``); when ``axes`` is given too, every key must be an axis and
every value one of its values. Variant ids are slugs of the axis values (``vits14_dual-plane``),
stable across runs and checked unique. Every variant's pipeline is validated when the matrix is
loaded, before anything runs; errors are one line naming the matrix file, the variant and the path.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gshead.core.components import KINDS
from gshead.core.config import PipelineSettings, validate_pipeline
from gshead.core.errors import ConfigError

MAX_SLUG = 48
"""Longest slug of one axis value; longer ones become ``<name>-<8 hex of its hash>``."""


class MeasureSettings(BaseModel):
    """What the runner measures per variant (keep it small for big random-weight encoders on CPU)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    frames: int = Field(20, ge=1, le=100_000)
    """Timed driving frames per render size (rendered one at a time; the median frame time is reported)."""
    warmup: int = Field(3, ge=0, le=1000)
    """Untimed driving frames before the timed ones, per render size."""
    render_sizes: tuple[int, ...] | None = Field(None, min_length=1)
    """Square render sides to time driving at (default: the variant's ``render_size``)."""
    repeats: int = Field(3, ge=1, le=1000)
    """Reconstructions timed per variant (the median is reported)."""
    image: str = "example:astronaut"
    """Portrait to reconstruct: an image file (relative to the matrix file) or ``example:astronaut``."""
    contract: bool = True
    """Check the contract before measuring: isolation when the session is made, immutability after every
    stage, output shape and range, and that different head parameters give different frames."""
    quality: bool = True
    """Record ``quality.self_psnr``: PSNR (dB) of the avatar rendered at its source pose and camera
    against the input crop (an untrained-pipeline sanity figure; trained runs add their own metrics)."""
    threads: int | None = Field(None, ge=1)
    """torch CPU threads per variant (default: cores // workers)."""

    @model_validator(mode="after")
    def _sizes(self) -> MeasureSettings:
        for s in self.render_sizes or ():
            if not 16 <= s <= 4096:
                raise ValueError(f"render size {s} outside 16..4096")
        return self


class TrainSettings(BaseModel):
    """A short training run per variant before measuring (needs ``gshead.train.run_training``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    steps: int = Field(100, ge=1)
    """Optimisation steps per variant."""
    config: str | None = None
    """Training config YAML, relative to the matrix file (passed to the trainer as a path)."""
    seed: int | Literal["pipeline"] | None = None
    """Training seed (batch order, sampled points): ``None`` keeps the training config's ``seed``;
    an integer sets it for every variant; ``pipeline`` uses each variant's pipeline ``seed`` (the one
    that initialises its modules), so a ``seed`` axis repeats the whole run with another seed."""
    eval: HeldOutSettings | None = None
    """Held-out evaluation after training (``quality.heldout_*`` columns); None: none."""


class HeldOutSettings(BaseModel):
    """Self-reenactment on a split the variant did not train on (``gshead.eval.protocols``, what
    ``gshead eval DATASET --protocol self`` runs), after the variant's training run."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    data: str | None = None
    """Dataset folder (relative to the folder ``gshead ablate`` runs in, like the training config's
    ``data.root``); default: the training config's ``data.root``."""
    split: str = "test"
    """Split to evaluate on (the synthetic dataset's ``test`` identities are disjoint from ``train``)."""
    targets: int = Field(4, ge=1)
    """Target frames driven from each sample's source portrait."""
    samples: int | None = Field(None, ge=1)
    """Evaluate at most this many samples (clips) of the split; default all."""
    seed: int = 0
    """Seed choosing each sample's source and target frames (the same for every variant)."""
    lpips_backbone: str | None = None
    """LPIPS backbone weights (relative to the matrix file), with ``lpips_lin``; none: no LPIPS."""
    lpips_lin: str | None = None
    """LPIPS linear-layer weights (relative to the matrix file), with ``lpips_backbone``."""

    @model_validator(mode="after")
    def _lpips_pair(self) -> HeldOutSettings:
        if bool(self.lpips_backbone) != bool(self.lpips_lin):
            raise ValueError("lpips_backbone and lpips_lin go together; LPIPS needs both files")
        return self


class ResourceSettings(BaseModel):
    """What one variant asks a Ray cluster for (``gshead ablate --ray``; local workers ignore it).
    ``--cpus-per-variant`` and ``--gpus-per-variant`` override these values."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    cpus: float = Field(1, gt=0, le=1024)
    """CPU cores reserved per variant task; also its torch threads (rounded down, at least 1)
    unless ``measure.threads`` is set."""
    gpus: float = Field(0, ge=0, le=64)
    """GPUs reserved per variant task (fractions share a GPU; 0: none)."""


class AblationMatrix(BaseModel):
    """A matrix YAML as written (paths still relative); ``load_matrix`` expands it into variants."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base: str | dict[str, Any]
    """The base pipeline: a YAML path relative to the matrix file, or an inline pipeline mapping."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted config path -> one value, applied to the base before the axes and the same for every
    variant (``source_size: 128``): changes a referenced base file without copying it, and adds
    nothing to the variant ids."""
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    """Dotted config path -> values to try (``encoder.variant: [vits14, vitb14]``)."""
    mode: Literal["product", "list"] = "product"
    """``product``: every combination of the axes; ``list``: only the ``variants`` listed."""
    variants: list[dict[str, Any]] | None = None
    """With ``mode: list``: each a mapping of axis path -> value, plus an optional ``id``."""
    measure: MeasureSettings = MeasureSettings()
    """What to measure per variant."""
    train: TrainSettings | None = None
    """Optional short training run per variant (see ``gshead.ablate.runner.train_variant``)."""
    resources: ResourceSettings = ResourceSettings()
    """Per-variant resources of a Ray run (``--ray``); not part of a variant's digest."""


@dataclass(frozen=True)
class Variant:
    """One expanded, validated variant of a matrix."""

    id: str  # stable slug of the axis values; file name of its results
    axes: dict[str, str]  # axis path -> short label of the value (a column of the tables)
    config: dict[str, Any]  # the validated pipeline config, as JSON-ready data
    digest: str  # hash of config + measure + train: a stored result with another digest is stale


@dataclass(frozen=True)
class LoadedMatrix:
    """A matrix file with its variants expanded and validated."""

    path: Path | None  # the matrix file (None for an in-memory matrix)
    matrix: AblationMatrix
    variants: tuple[Variant, ...]

    @property
    def root(self) -> Path:
        """Folder that relative paths in the matrix are resolved against."""
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, relative: str) -> str:
        """A path written in the matrix, relative to the matrix file (``example:...`` unchanged)."""
        if relative.startswith("example:") or Path(relative).is_absolute():
            return relative
        return str(self.root / relative)

    def select(self, only: list[str] | None) -> tuple[Variant, ...]:
        """The variants whose ids are in ``only`` (all when None); ConfigError for an unknown id."""
        if not only:
            return self.variants
        known = {v.id: v for v in self.variants}
        for wanted in only:
            if wanted not in known:
                raise ConfigError(f"--only {wanted!r}: no such variant; expected one of: {', '.join(known)}")
        return tuple(v for v in self.variants if v.id in set(only))


# ----------------------------------------------------------------------------------- slugs
def _slug_text(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "x"


def slug(value: Any) -> str:
    """A short, file-name-safe label for one axis value (stable: depends only on the value)."""
    if isinstance(value, dict):
        named = "name" in value
        head = [str(value["name"])] if named else []
        # Values in the order written (after the name); a mapping without a name keeps its keys.
        rest = [
            slug(v) if named else f"{_slug_text(str(k))}-{slug(v)}" for k, v in value.items() if k != "name"
        ]
        text = "-".join([_slug_text(h) for h in head] + rest) or "default"
        if len(text) > MAX_SLUG:
            digest = hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]
            text = "-".join(([_slug_text(head[0])] if head else []) + [digest])
        return text
    if isinstance(value, (list, tuple)):
        return "-".join(slug(v) for v in value) or "none"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _slug_text(str(value))


# ----------------------------------------------------------------------------------- applying axes
def check_axis_path(path: str, registry, where: str, key: str = "axes") -> None:
    """ConfigError unless ``path`` is a pipeline setting, a slot, or a field some registered
    component of that slot's kind has (``key``: the matrix key it is written under)."""
    parts = path.split(".")
    settings = list(PipelineSettings.model_fields)
    expected = f"expected a setting ({', '.join(settings)}), a slot ({', '.join(KINDS)}) or <slot>.<field>"
    if not all(parts) or len(parts) > 2:
        raise ConfigError(f"{where}{key}.{path}: not a config path; {expected}")
    head = parts[0]
    if len(parts) == 1:
        if head not in settings and head not in KINDS:
            raise ConfigError(f"{where}{key}.{path}: unknown setting or slot; {expected}")
        return
    if head not in KINDS:
        raise ConfigError(f"{where}{key}.{path}: {head!r} is not a component slot; {expected}")
    fields = {f for spec in registry.components(head).values() for f in spec.config_class.model_fields}
    if parts[1] not in fields:
        raise ConfigError(
            f"{where}{key}.{path}: no registered {head} has a field {parts[1]!r}; "
            f"expected one of: {', '.join(sorted(fields))}"
        )


def apply_axis(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` to ``value`` in a pipeline config dict, in place (rules in the module docs)."""
    parts = path.split(".")
    head = parts[0]
    if len(parts) == 1:
        if head in KINDS and isinstance(value, dict):
            base = config.get(head) if isinstance(config.get(head), dict) else {}
            config[head] = copy.deepcopy(value) if "name" in value else {**base, **copy.deepcopy(value)}
        elif head in KINDS and isinstance(value, str):
            config[head] = {"name": value}
        else:
            config[head] = copy.deepcopy(value)
        return
    slot = config.get(head)
    slot = dict(slot) if isinstance(slot, dict) else {}
    if parts[1] == "name" and slot.get("name") != value:
        slot = {"name": value}
    else:
        slot[parts[1]] = copy.deepcopy(value)
    config[head] = slot


def _label(value: Any) -> str:
    """The value as a table cell: scalars as written, mappings as compact JSON-ish text."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_label(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_label(v) for v in value) + "]"
    return str(value)


# ----------------------------------------------------------------------------------- loading
def read_matrix(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a matrix YAML file (ConfigError, one line, when unreadable)."""
    from gshead.core.config import read_yaml

    path = Path(path)
    data = read_yaml(path, "ablation matrix")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with base, axes, mode, measure; got {type(data).__name__}"
        )
    return data


def load_matrix(path: str | Path, registry=None) -> LoadedMatrix:
    """Read a matrix YAML, expand and validate every variant (nothing is built or run)."""
    path = Path(path)
    return expand(read_matrix(path), registry, path)


def _matrix_model(data: dict[str, Any], where: str) -> AblationMatrix:
    try:
        return AblationMatrix.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        allowed = ", ".join(AblationMatrix.model_fields)
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            raise ConfigError(f"{where}{loc}: unknown matrix key; expected one of: {allowed}") from None
        raise ConfigError(f"{where}{loc}: {err['msg']} (got {err.get('input')!r}){more}") from None


def _base_config(matrix: AblationMatrix, path: Path | None, where: str) -> dict[str, Any]:
    if isinstance(matrix.base, dict):
        return copy.deepcopy(matrix.base)
    base_path = (path.parent if path else Path.cwd()) / matrix.base
    from gshead.core.config import read_yaml

    try:
        data = read_yaml(base_path, "pipeline config")
    except ConfigError as exc:
        raise ConfigError(f"{where}base: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}base: {base_path} is not a pipeline mapping")
    return data


def _combinations(matrix: AblationMatrix, where: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(explicit id or None, {axis path: value}) per variant, in matrix order."""
    if matrix.mode == "product":
        if matrix.variants is not None:
            raise ConfigError(
                f"{where}variants: only used with 'mode: list'; expected no variants with mode product"
            )
        for axis, values in matrix.axes.items():
            if not values:
                raise ConfigError(f"{where}axes.{axis}: no values; expected a non-empty list")
        names = list(matrix.axes)
        return [(None, dict(zip(names, combo))) for combo in itertools.product(*matrix.axes.values())]
    if not matrix.variants:
        raise ConfigError(f"{where}variants: 'mode: list' needs a non-empty list of variants")
    out = []
    for i, entry in enumerate(matrix.variants):
        entry = dict(entry)
        explicit = entry.pop("id", None)
        if explicit is not None and (not isinstance(explicit, str) or slug(explicit) != explicit):
            raise ConfigError(
                f"{where}variants[{i}].id: {explicit!r} is not a slug; expected lower-case letters, digits, '.', '-'"
            )
        if matrix.axes:
            for key, value in entry.items():
                if key not in matrix.axes:
                    raise ConfigError(
                        f"{where}variants[{i}].{key}: not an axis; expected one of: {', '.join(matrix.axes)}"
                    )
                if value not in matrix.axes[key]:
                    raise ConfigError(
                        f"{where}variants[{i}].{key}: {value!r} is not one of the axis values {matrix.axes[key]!r}"
                    )
        if not entry:
            raise ConfigError(f"{where}variants[{i}]: empty; expected axis path -> value pairs")
        out.append((explicit, entry))
    return out


def _train_digest_data(train: TrainSettings) -> dict[str, Any]:
    """``train`` as digest data; the ``seed`` and ``eval`` fields only when set, so a matrix written
    before they existed keeps its variant digests (and its stored results)."""
    data = train.model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in ("seed", "eval") or v is not None}


def expand(data: dict[str, Any], registry=None, path: Path | None = None) -> LoadedMatrix:
    """Expand a raw matrix mapping into validated variants (``path``: where relative paths start)."""
    from gshead.core.registry import get_registry

    registry = registry or get_registry()
    where = f"{path}: " if path else "matrix: "
    matrix = _matrix_model(data, where)
    base = _base_config(matrix, path, where)
    for setting, value in matrix.set.items():
        check_axis_path(setting, registry, where, key="set")
        apply_axis(base, setting, value)
    combos = _combinations(matrix, where)
    axis_paths = list(matrix.axes) or list(dict.fromkeys(k for _, c in combos for k in c))
    for axis in axis_paths:
        check_axis_path(axis, registry, where)
    extra = json.dumps(
        {
            "measure": matrix.measure.model_dump(mode="json"),
            "train": matrix.train and _train_digest_data(matrix.train),
        },
        sort_keys=True,
    )
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for i, (explicit, values) in enumerate(combos):
        vid = explicit or "_".join(slug(values[a]) for a in axis_paths if a in values) or "base"
        if vid in seen:
            raise ConfigError(
                f"{where}variants {seen[vid]} and {i} both get the id {vid!r}; "
                "expected distinct axis values (or explicit ids with mode list)"
            )
        seen[vid] = i
        config = copy.deepcopy(base)
        for axis in axis_paths:
            if axis in values:
                apply_axis(config, axis, values[axis])
        validated = validate_pipeline(config, registry, source=f"{where}variant {vid!r}")
        dumped = validated.model_dump(mode="json")
        digest = hashlib.sha1((json.dumps(dumped, sort_keys=True) + extra).encode()).hexdigest()[:16]
        labels = {a: (_label(values[a]) if a in values else "(base)") for a in axis_paths}
        variants.append(Variant(id=vid, axes=labels, config=dumped, digest=digest))
    return LoadedMatrix(path=path, matrix=matrix, variants=tuple(variants))


__all__ = [
    "AblationMatrix",
    "HeldOutSettings",
    "LoadedMatrix",
    "MeasureSettings",
    "ResourceSettings",
    "TrainSettings",
    "Variant",
    "apply_axis",
    "check_axis_path",
    "expand",
    "load_matrix",
    "read_matrix",
    "slug",
]
