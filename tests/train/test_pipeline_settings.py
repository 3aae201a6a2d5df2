"""``pipeline_settings`` in a training config: train a pipeline at another size, and the weights
still load into the pipeline as configured (they depend on the slots, not on the sizes)."""

from __future__ import annotations

import pytest
import torch

from conftest import ListDataset, make_sample, train_config

from gshead.core.errors import ConfigError
from gshead.core.pipeline import Pipeline
from gshead.testing import tiny_pipeline
from gshead.train.config import TrainConfig, build_pipeline
from gshead.train.trainer import Trainer


def test_settings_replace_the_sizes_and_the_weights_fit_the_original(tmp_path):
    from safetensors.torch import save_file

    from gshead.io.weights import load_pipeline_weights
    from gshead.train.checkpoints import _model_metadata, model_tensors

    config = TrainConfig(pipeline=tiny_pipeline(), pipeline_settings={"source_size": 32, "render_size": 32})
    small = build_pipeline(config)
    assert (small.config.source_size, small.config.render_size) == (32, 32)
    original = Pipeline.from_dict(tiny_pipeline())
    assert original.config.source_size == 64
    save_file(model_tensors(small), str(tmp_path / "w.safetensors"), metadata=_model_metadata(small))
    load_pipeline_weights(original, tmp_path / "w.safetensors")  # no refusal: the slots are the same


def test_unknown_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="pipeline_settings: encoder are not pipeline-wide settings"):
        build_pipeline(TrainConfig(pipeline=tiny_pipeline(), pipeline_settings={"encoder": {"name": "tiny-conv"}}))


def test_frozen_parameters_keep_their_values_and_the_others_train(tmp_path):
    """``freeze: [encoder]``: after training the encoder equals its initialisation, the lifter not."""
    config = train_config(steps=3, batch_size=1, optimizer={"lr": 2e-2}, freeze=["encoder"])
    trainer = Trainer(config, tmp_path / "run", dataset=ListDataset([make_sample(0)]), quiet=True)
    before = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in trainer.pipeline.trainable_modules().items()}
    trainer.fit()
    after = {k: dict(m.named_parameters()) for k, m in trainer.pipeline.trainable_modules().items()}
    assert all(torch.equal(before["encoder"][n], p) for n, p in after["encoder"].items())
    assert any(not torch.equal(before["lifter"][n], p) for n, p in after["lifter"].items())


def test_a_freeze_prefix_naming_nothing_is_refused(tmp_path):
    config = train_config(steps=1, batch_size=1, freeze=["lifter.image_layer"])  # single-plane has none
    with pytest.raises(ConfigError, match="freeze: 'lifter.image_layer' names no parameter"):
        Trainer(config, tmp_path / "run", dataset=ListDataset([make_sample(0)]), quiet=True)
