"""Tiny fixtures for the trainer tests: a 32-pixel pipeline and hand-made reenactment samples."""

from __future__ import annotations

import pytest
import torch

from gshead.core.types import Camera, HeadParams, ReenactmentSample
from gshead.testing import sample_image, tiny_pipeline

SIZE = 32


def tiny_train_pipeline() -> dict:
    """A 32-pixel pipeline on a coarse head (162 vertices) with the numba cpu rasterizer."""
    return tiny_pipeline(
        headmodel={"name": "procedural", "subdivisions": 4, "pose_correctives": False},
        source_size=SIZE,
        render_size=SIZE,
        encoder={"name": "tiny-conv", "channels": 8},
        lifter={"name": "single-plane", "resolution": 8},
        rasterizer={"name": "cpu"},
    )


def make_sample(
    seed: int, frames: int = 2, size: int = SIZE, identity_dim: int = 8, expression_dim: int = 15
):
    """A sample: a disc portrait as source, noisy variants as targets, neutral params with the jaw
    opening a little more in each target, a frontal camera."""
    g = torch.Generator().manual_seed(seed)
    source_img = sample_image(size, seed)
    targets = torch.cat([sample_image(size, seed * 100 + k + 1) for k in range(frames)])
    source = HeadParams.zeros(identity_dim, expression_dim)
    source = source.replace(identity=0.1 * torch.randn(1, identity_dim, generator=g))
    tparams = HeadParams.zeros(identity_dim, expression_dim, frames)
    jaw = torch.zeros(frames, 3)
    jaw[:, 0] = torch.linspace(0.0, 0.2, frames)
    tparams = tparams.replace(identity=source.identity.expand(frames, -1).clone(), jaw=jaw)
    return ReenactmentSample(
        source_image=source_img,
        source=source,
        source_camera=CAMERA(size, 1),
        target_images=targets,
        targets=tparams,
        target_camera=CAMERA(size, frames),
    )


def CAMERA(size: int, batch: int) -> Camera:
    """The camera the frontal tracker gives for a ``size`` crop, for ``batch`` frames."""
    from gshead.core.pipeline import Pipeline

    key = (size, batch)
    if key not in _CAMERAS:
        pipe = _PIPES.setdefault(size, Pipeline.from_dict(tiny_train_pipeline() | {"source_size": size}))
        cam = pipe.tracker.track(sample_image(size)).camera
        _CAMERAS[key] = cam.expand(batch).replace(
            world_to_camera=cam.world_to_camera.expand(batch, 4, 4).clone(),
            intrinsics=cam.intrinsics.expand(batch, 3, 3).clone(),
        )
    return _CAMERAS[key]


_CAMERAS: dict = {}
_PIPES: dict = {}


class ListDataset(torch.utils.data.Dataset):
    """A fixed list of samples (``collate`` is a list; the trainer indexes it)."""

    def __init__(self, samples):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ReenactmentSample:
        return self.samples[index]


@pytest.fixture
def dataset():
    return ListDataset([make_sample(s) for s in range(3)])


def train_config(**changes):
    """A TrainConfig for the tiny pipeline: constant lr 1e-2, batch 2, no periodic files."""
    from gshead.train.config import validate_train_config

    data = {
        "pipeline": tiny_train_pipeline(),
        "steps": 4,
        "batch_size": 2,
        "optimizer": {"lr": 1e-2},
        "checkpoint_every": 1000,
        "log_every": 1,
        "image_every": 0,
        "point_samples": 64,
        "device": "cpu",
    }
    data.update(changes)
    return validate_train_config(data)
