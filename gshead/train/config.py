"""``TrainConfig``: everything one training run needs, validated from YAML.

A run is a pipeline (the embedded default, a pipeline YAML, or an inline mapping), a dataset of
``ReenactmentSample``s, a stage (1: reconstruction, 2: texture restoration with a perceptual loss),
an optimiser and schedule, loss weights and bookkeeping (checkpoints, logs, image grids). Every
field is documented where it is declared; unknown fields are errors (a misspelt weight must not
silently train with the default). Relative paths are taken from the current folder.

::

    pipeline: default            # or configs/separated-cpu.yaml, or {seed: 0, encoder: {...}, ...}
    data: {root: data/synth, split: train, targets: 2}
    stage: 1
    steps: 2000
    batch_size: 4
    optimizer: {lr: 1.0e-4, betas: [0.9, 0.99]}
    schedule: {kind: cosine, warmup_steps: 100, final_lr_ratio: 0.1}
    loss: {l1: 0.5, l1_refined: 0.5, face_l1: 0.5, point: 10.0, perceptual: 0.01}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gshead.core.errors import ConfigError
from gshead.io.weights import load_pipeline_weights


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class DataConfig(_Strict):
    """Where the training samples come from (``gshead.data.ReenactmentDataset``)."""

    root: Path = Path("data/synth")
    """Dataset folder (e.g. written by ``write_synthetic_dataset``)."""
    split: str = "train"
    """Split to train on."""
    targets: int = Field(2, ge=1)
    """Target frames T driven from each source portrait per sample."""
    workers: int = Field(0, ge=0)
    """DataLoader worker processes loading batches ahead (0: load in the training process)."""


class OptimizerConfig(_Strict):
    """AdamW over every trainable parameter of the pipeline."""

    lr: float = Field(1e-4, gt=0)
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (GAGAvatar trains with (0, 0.99))."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay."""
    eps: float = Field(1e-8, gt=0)
    """Adam epsilon."""


class ScheduleConfig(_Strict):
    """Learning-rate factor as a function of the step (applied on top of ``optimizer.lr``)."""

    kind: Literal["constant", "cosine", "linear"] = "constant"
    """``constant``; ``cosine`` decay to ``final_lr_ratio``; ``linear`` decay to it (GAGAvatar)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 over this many steps (all kinds)."""
    final_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Learning-rate factor reached at the last step (cosine and linear)."""


class LossWeights(_Strict):
    """Weights of the loss terms (0 switches a term off). Defaults follow GAGAvatar."""

    l1: float = Field(0.5, ge=0)
    """L1 between the coarse render's RGB (feature channels 0..2) and the target."""
    l1_refined: float = Field(0.5, ge=0)
    """L1 between the refined image and the target."""
    face_l1: float = Field(0.5, ge=0)
    """L1 of coarse and refined images on face crops (box around the target's projected landmarks)."""
    point: float = Field(10.0, ge=0)
    """Mean squared distance from each static Gaussian to the nearest source head-model vertex."""
    perceptual: float = Field(0.01, ge=0)
    """Perceptual loss on refined images and face crops (stage 2 only)."""


MAX_BATCH_SIZE = 4096
"""The largest ``batch_size`` a training config may ask for (a cap, so a typo fails at once)."""


class TrainConfig(_Strict):
    """One training run."""

    pipeline: str | dict[str, Any] = "default"
    """``default`` (the embedded pipeline), a pipeline YAML path, or an inline pipeline mapping."""
    freeze: list[str] = Field(default_factory=list)
    """Parameters kept at their starting values, by name prefix ``slot.module.path`` (as in a
    pipeline-weights file), e.g. ``lifter.image_layer``: parts the data cannot teach (synthetic
    heads have no hair or shoulders for the image layer). A prefix that names no parameter is
    refused."""
    pipeline_settings: dict[str, Any] = Field(default_factory=dict)
    """Pipeline-wide settings replaced for training only, e.g. ``{source_size: 128, render_size:
    128}`` to train a 256-pixel pipeline on 128-pixel data four times faster: pipeline weights
    depend on the component slots, not on these sizes, so they load into the pipeline as
    configured (``gshead.io.weights.load_pipeline_weights`` compares the slots only)."""
    weights: Path | None = None
    """Pipeline-weights file to start from (e.g. stage 1's ``step-*/model.safetensors``)."""
    data: DataConfig = DataConfig()
    """Training data."""
    stage: Literal[1, 2] = 1
    """1: reconstruction (L1, face L1, point loss); 2: texture restoration (adds the perceptual loss)."""
    steps: int = Field(1000, ge=1)
    """Optimiser steps in total (a resumed run continues up to this count)."""
    batch_size: int = Field(4, ge=1, le=MAX_BATCH_SIZE)
    """Samples per step per process (each sample drives ``data.targets`` frames); at most
    ``MAX_BATCH_SIZE``."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """Optimiser settings."""
    schedule: ScheduleConfig = ScheduleConfig()
    """Learning-rate schedule."""
    loss: LossWeights = LossWeights()
    """Loss weights."""
    face_crop_size: int = Field(0, ge=0)
    """Side of the resized face crops in pixels (0: the rendered image's side)."""
    face_crop_scale: float = Field(1.1, gt=0)
    """Face box = landmark bounding square enlarged by this factor."""
    point_samples: int = Field(8192, ge=1)
    """At most this many static Gaussians (evenly spaced) enter the point loss."""
    perceptual_weights: Path | None = None
    """VGG-16 weights (.pth with torchvision keys, or .safetensors) for the stage-2 perceptual loss."""
    amp: bool = False
    """bfloat16 autocast for the forward pass (CUDA; CPU only where the components support it)."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (None: no clipping)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when available (one GPU per process under torchrun), else CPU."""
    ddp_find_unused_parameters: bool = True
    """Under torchrun: let DDP look for parameters a step did not use (safe for any pipeline; set
    false to skip that graph traversal when every trainable parameter is used every step)."""
    checkpoint_every: int = Field(500, ge=1)
    """Save a checkpoint every N steps (and at the end, and on Ctrl-C)."""
    keep_last: int = Field(3, ge=1)
    """Keep the last N checkpoints."""
    log_every: int = Field(10, ge=1)
    """Write scalars (CSV, TensorBoard) every N steps."""
    image_every: int = Field(100, ge=0)
    """Write a source | target | coarse | output PNG grid every N steps (0: never)."""
    seed: int = 0
    """Seed of the training RNG (data order, any randomness in components)."""

    @field_validator("pipeline")
    @classmethod
    def _pipeline_not_empty(cls, value):
        if isinstance(value, str) and not value.strip():
            raise ValueError("expected 'default', a pipeline YAML path or a mapping")
        return value


def _describe(error: dict, source: str) -> str:
    from gshead.core.errors import shorten

    source = shorten(source, 120)
    where = shorten(".".join(str(p) for p in error["loc"]) or "config", 80)
    if error["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown field"
    return f"{source}: {where}: {shorten(error['msg'], 120)}"


def validate_train_config(data: Any, source: str = "train config") -> TrainConfig:
    """A plain mapping validated into a ``TrainConfig``; one-line ``ConfigError`` otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], source) + more) from None


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a training YAML (``yaml.safe_load``) and validate it, with top-level ``overrides``."""
    from gshead.core.config import read_yaml

    path = Path(path)
    data = read_yaml(path, "training config")
    if isinstance(data, dict) and overrides:
        data = {**data, **overrides}
    return validate_train_config(data, str(path))


def build_pipeline(config: TrainConfig, registry=None):
    """The pipeline named by ``config.pipeline``, with ``config.weights`` loaded when given."""
    from gshead.core.pipeline import Pipeline

    spec = config.pipeline
    if config.pipeline_settings:
        import yaml

        from gshead.core.config import PipelineSettings, default_pipeline_path

        unknown = sorted(set(config.pipeline_settings) - set(PipelineSettings.model_fields))
        if unknown:
            raise ConfigError(
                f"pipeline_settings: {', '.join(unknown)} are not pipeline-wide settings; expected some of "
                f"{', '.join(PipelineSettings.model_fields)}"
            )
        if not isinstance(spec, dict):
            path = default_pipeline_path() if spec == "default" else spec
            spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        spec = {**spec, **config.pipeline_settings}
    if isinstance(spec, dict):
        pipeline = Pipeline.from_dict(spec, registry)
    elif spec == "default":
        pipeline = Pipeline.default(registry)
    else:
        pipeline = Pipeline.from_yaml(spec, registry)
    if config.weights is not None:
        load_pipeline_weights(pipeline, config.weights)
    return pipeline
