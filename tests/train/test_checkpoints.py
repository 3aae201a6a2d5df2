"""Checkpoints: safetensors model + weights_only state, atomic folders, keep-last-N, latest, RNG."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import tiny_train_pipeline

from gshead.core.errors import AvatarFileError
from gshead.core.pipeline import Pipeline
from gshead.io.weights import load_pipeline_weights
from gshead.train import checkpoints as ckpt


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline.from_dict(tiny_train_pipeline())


def _state():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.0, 0.99))
    p.grad = torch.full((3,), 0.5)
    opt.step()
    return {"optimizer": opt.state_dict(), "rng": [ckpt.rng_state()], "bad_steps": 2, "note": "x"}


def test_roundtrip_weights_only(tmp_path, pipeline):
    saved = ckpt.save_checkpoint(tmp_path, 7, pipeline, _state())
    assert saved.path.name == "step-000007" and saved.step == 7
    raw = torch.load(saved.state, weights_only=True)  # no pickled objects inside
    assert raw["step"] == 7 and raw["bad_steps"] == 2
    assert raw["optimizer"]["param_groups"][0]["betas"] == (0.0, 0.99)
    state = ckpt.load_state(saved)
    assert torch.equal(state["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 0.5))
    # The model file is a pipeline-weights file: a fresh pipeline loads it strictly.
    other = Pipeline.from_dict(tiny_train_pipeline() | {"seed": 5})
    lifter_before = {k: v.clone() for k, v in other.lifter.state_dict().items()}
    load_pipeline_weights(other, saved.model)
    for key, value in pipeline.lifter.state_dict().items():
        assert torch.equal(other.lifter.state_dict()[key], value)
    assert any(not torch.equal(lifter_before[k], v) for k, v in pipeline.lifter.state_dict().items())


def test_failed_write_leaves_nothing(tmp_path, pipeline, monkeypatch):
    first = ckpt.save_checkpoint(tmp_path, 1, pipeline, _state())
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, pipeline, _state())
    with pytest.raises(OSError):  # overwriting an existing step keeps the old one on failure
        ckpt.save_checkpoint(tmp_path, 1, pipeline, _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.load_state(first)["step"] == 1


def test_interrupted_write_leaves_nothing(tmp_path, pipeline, monkeypatch):
    import safetensors.torch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, pipeline, _state())
    assert list(tmp_path.iterdir()) == []


def test_keep_last_and_latest(tmp_path, pipeline):
    for step in (1, 2, 3, 4, 5):
        ckpt.save_checkpoint(tmp_path, step, pipeline, {"bad_steps": 0})
    (tmp_path / ".step-000009.abcd.partial").mkdir()  # leftover of a killed run
    (tmp_path / "step-000008").mkdir()  # incomplete: no files
    assert ckpt.latest_checkpoint(tmp_path).step == 5
    deleted = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert len(deleted) == 4
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    assert not (tmp_path / ".step-000009.abcd.partial").exists()
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_corrupt_state_is_one_line_error(tmp_path, pipeline):
    saved = ckpt.save_checkpoint(tmp_path, 1, pipeline, {"bad_steps": 0})
    saved.state.write_bytes(b"not a checkpoint")
    with pytest.raises(AvatarFileError, match="not a readable training state") as err:
        ckpt.load_state(saved)
    assert "\n" not in str(err.value)
    torch.save({"format": "other"}, saved.state)
    with pytest.raises(AvatarFileError, match="not a gshead training state"):
        ckpt.load_state(saved)


def test_rng_state_roundtrip(tmp_path, pipeline):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    saved = ckpt.save_checkpoint(tmp_path, 1, pipeline, {"rng": [ckpt.rng_state()]})
    draws = (torch.rand(3), np.random.normal(size=3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.set_rng_state(ckpt.load_state(saved)["rng"][0])
    again = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(draws[0], again[0])
    assert np.array_equal(draws[1], again[1])
    assert draws[2] == again[2]
