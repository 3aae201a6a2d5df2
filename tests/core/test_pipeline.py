"""Pipelines: building in one place, reconstructing once, driving through a session."""

from __future__ import annotations

import pytest
import torch

from gshead.core.errors import InputError
from gshead.core.pipeline import DRIVING_KINDS, Pipeline, build_components, frozen_copy
from gshead.core.registry import Registry
from gshead.testing import sample_image, tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_dict(tiny_pipeline(), Registry(autoload=False))


def test_same_seed_same_weights_other_seed_other_weights(pipe):
    again = Pipeline.from_dict(tiny_pipeline(), pipe.registry)
    other = Pipeline.from_dict(tiny_pipeline(seed=1), pipe.registry)
    a, b, c = (dict(p.encoder.named_parameters()) for p in (pipe, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_components_builds_only_what_is_asked_with_recorded_encoder_channels(pipe):
    built, context = build_components(
        pipe.config, DRIVING_KINDS, pipe.registry, encoder_channels=(8,), encoder_global_channels=8
    )
    assert set(built) == {"headmodel", *DRIVING_KINDS}
    assert context.encoder_channels == (8,) and context.registry is pipe.registry
    # The driver built without an encoder is the one the full pipeline builds (same seed, same weights).
    ours, theirs = built["driver"].state_dict(), pipe.driver.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_reconstruct_refuses_a_wrong_image_shape(pipe):
    with pytest.raises(InputError, match=r"expected an image of shape \[1, 3, 64, 64\], got \[1, 3, 32, 32\]"):
        pipe.reconstruct(sample_image(32))


def test_prepare_image_crops_and_resizes_to_the_source_size(pipe):
    wide = torch.rand(1, 3, 100, 160)
    assert pipe.prepare_image(wide).shape == (1, 3, 64, 64)


def test_reconstruct_is_frozen_and_driving_changes_only_the_posed_part(pipe):
    avatar = pipe.reconstruct(sample_image(64))
    assert not avatar.static.means.requires_grad
    copy = frozen_copy(avatar)
    assert copy.static.means.data_ptr() != avatar.static.means.data_ptr()
    session = pipe.session(avatar, render_size=32)
    params = pipe.head_model.neutral(2).replace(jaw=torch.tensor([[0.0, 0, 0], [0.4, 0, 0]]))
    frames = session.render(params)
    assert frames.shape == (2, 3, 32, 32)
    assert not torch.equal(frames[0], frames[1])
    assert torch.equal(avatar.static.means, copy.static.means)  # the avatar did not move
