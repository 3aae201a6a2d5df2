"""Relative driving: the reference frame of a signal reproduces the source exactly; motion
relative to the reference is carried over, rotations composed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import torch
from PIL import Image

from gshead.cli import main
from gshead.core.errors import ShapeError
from gshead.core.pipeline import Pipeline
from gshead.core.registry import Registry
from gshead.core.types import HeadParams
from gshead.io.avatar import save_avatar
from gshead.jobs.driving import relative_to_source
from gshead.testing import sample_image, tiny_pipeline


def _params(t: int, e: int, seed: int) -> HeadParams:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: 0.3 * torch.randn(*s, generator=g)  # noqa: E731
    return HeadParams(r(t, 4), r(t, e), r(t, 3), r(t, 6), r(t, 3), r(t, 3))


def test_the_reference_frame_gives_the_source_and_offsets_carry_over():
    signal, source = _params(5, 7, 0), _params(1, 7, 1)
    reference = signal.select(2)
    out = relative_to_source(signal, source, reference)
    at_ref = out.select(2)
    for name in ("expression", "jaw", "eyes", "rotation", "translation"):
        assert torch.allclose(getattr(at_ref, name), getattr(source, name), atol=1e-5), name
    assert torch.allclose(out.expression - source.expression, signal.expression - reference.expression, atol=1e-6)
    # Rotations compose: R_out = R_frame R_ref^T R_src.
    rot = roma.rotvec_to_rotmat
    want = rot(signal.rotation) @ rot(reference.rotation).transpose(-1, -2) @ rot(source.rotation)
    assert torch.allclose(rot(out.rotation), want, atol=1e-5)
    assert torch.equal(out.identity, signal.identity)  # identity is the session's business


def test_a_pure_turn_from_a_turned_source_turns_further():
    neutral = HeadParams.zeros(2, 3)
    turned = neutral.replace(rotation=torch.tensor([[0.0, math.radians(20), 0.0]]))
    signal = neutral.replace(rotation=torch.tensor([[0.0, math.radians(10), 0.0]]))
    out = relative_to_source(signal, turned, neutral)
    assert math.isclose(float(out.rotation[0, 1]), math.radians(30), abs_tol=1e-5)


def test_shapes_are_checked():
    with pytest.raises(ShapeError, match="one source and one reference"):
        relative_to_source(_params(3, 7, 0), _params(2, 7, 1), _params(1, 7, 2))
    with pytest.raises(ShapeError, match="7 expression units, the source 5"):
        relative_to_source(_params(3, 7, 0), _params(1, 5, 1), _params(1, 7, 2))


def _frame(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def test_demo_frame_0_reproduces_a_fitted_source_and_absolute_does_not(tmp_path):
    registry = Registry(autoload=False)
    pipe = Pipeline.from_dict(tiny_pipeline(), registry)
    source = pipe.head_model.neutral(1)
    smile = torch.zeros_like(source.expression)
    smile[0, : min(3, smile.shape[1])] = 0.8
    source = source.replace(
        expression=smile, jaw=torch.tensor([[0.35, 0.0, 0.0]]), rotation=torch.tensor([[0.0, 0.4, 0.0]])
    )
    avatar = pipe.reconstruct(sample_image(pipe.config.source_size), source=source)
    path = tmp_path / "a.safetensors"
    save_avatar(path, avatar, pipe)
    expected = pipe.session(avatar).render(source)[0].permute(1, 2, 0).numpy() * 255
    neutral = pipe.session(avatar).render(pipe.head_model.neutral(1))[0].permute(1, 2, 0).numpy() * 255

    common = [str(path), "--driver", "demo", "--frames", "4", "--batch", "1", "-q"]
    assert main(["reenact", *common, "-o", str(tmp_path / "rel.png")]) == 0
    assert main(["reenact", *common, "--absolute", "-o", str(tmp_path / "abs.png")]) == 0
    size = pipe.config.render_size
    rel = _frame(tmp_path / "rel.png")[:size, :size]  # frame 0 of the 2x2 grid
    ab = _frame(tmp_path / "abs.png")[:size, :size]
    assert np.abs(rel - expected).mean() < 1.0  # within PNG rounding of the fitted source
    assert np.abs(ab - neutral).mean() < 1.0  # --absolute starts from the neutral head instead
    assert np.abs(rel - ab).mean() > 2.0
