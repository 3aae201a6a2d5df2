"""The reconstruction/driving contract catches a deliberately broken plugin for each clause."""

from __future__ import annotations

import types
from typing import Literal

import pytest
import torch
from torch import nn

from gshead.core.config import DriverConfig, RefinerConfig
from gshead.core.errors import ContractViolation
from gshead.core.hookspecs import hookimpl
from gshead.core.pipeline import Pipeline
from gshead.core.registry import Registry
from gshead.plugins.drivers.mesh_bound import MeshBoundConfig, MeshBoundDriver
from gshead.testing import check_encoder_independence, check_pipeline, sample_image, tiny_pipeline


# -- deliberately broken components -------------------------------------------------------------
class StashConfig(MeshBoundConfig):
    name: Literal["stash-features"] = "stash-features"


class StashFeatures(MeshBoundDriver):
    """Keeps the encoder's features for later: clause 1 (isolation) must catch it."""

    def prepare(self, features, source, camera, static):
        self.cache = {"last": [features]}
        return super().prepare(features, source, camera, static)


class InPlaceConfig(MeshBoundConfig):
    name: Literal["in-place"] = "in-place"


class InPlace(MeshBoundDriver):
    """Writes into the avatar while driving: clause 2 (immutability) must catch it."""

    def drive(self, avatar, params):
        avatar.static.features.mul_(0.5)
        return super().drive(avatar, params)


class ScratchRefinerConfig(RefinerConfig):
    name: Literal["scratch"] = "scratch"


class ScratchRefiner(nn.Module):
    """Keeps a reference to the avatar it saw and changes it: caught after the refiner stage."""

    def __init__(self, config, context):
        super().__init__()
        self.victim = None

    def forward(self, render):
        if self.victim is not None:
            self.victim.rig.dynamic.opacities.zero_()
        return render.features[:, :3].clamp(0, 1)


class EncoderSizedConfig(DriverConfig):
    name: Literal["encoder-sized"] = "encoder-sized"


class EncoderSized(MeshBoundDriver):
    """Does per-frame work proportional to the encoder's width: clause 3 must catch it."""

    def __init__(self, config, context):
        super().__init__(MeshBoundConfig(), context)
        self.mix = nn.Linear(context.encoder_global_channels, context.encoder_global_channels)

    def drive(self, avatar, params):
        posed = super().drive(avatar, params)
        wasted = self.mix(torch.ones(params.batch_size, self.mix.in_features)).mean() * 0
        return posed.replace(means=posed.means + wasted)


class LatentSizedConfig(DriverConfig):
    name: Literal["latent-sized"] = "latent-sized"


class LatentSized(MeshBoundDriver):
    """Stores the encoder's global token in the avatar: its shape follows the encoder."""

    def __init__(self, config, context):
        super().__init__(MeshBoundConfig(), context)

    def prepare(self, features, source, camera, static):
        rig = super().prepare(features, source, camera, static)
        return rig.replace(latent=features.global_token.detach())


SMALL = {"name": "tiny-conv", "channels": 4, "global_channels": 8}
LARGE = {"name": "tiny-conv", "channels": 48, "global_channels": 96}


def _broken_registry() -> Registry:
    def drivers(register):
        register(StashConfig, StashFeatures)
        register(InPlaceConfig, InPlace)
        register(EncoderSizedConfig, EncoderSized)
        register(LatentSizedConfig, LatentSized)

    plugin = types.SimpleNamespace(
        gshead_register_drivers=hookimpl(drivers),
        gshead_register_refiners=hookimpl(lambda register: register(ScratchRefinerConfig, ScratchRefiner)),
    )
    return Registry(autoload=False, extra_plugins=[("broken-plugins", plugin)])


@pytest.fixture(scope="module")
def broken() -> Registry:
    return _broken_registry()


def test_reference_pipeline_honours_the_contract(broken):
    avatar = check_pipeline(registry=broken)
    assert avatar.static.count > 0 and avatar.rig.dynamic.count > 0
    check_encoder_independence(SMALL, LARGE, registry=broken)


def test_isolation_catches_a_driver_that_keeps_encoder_features(broken):
    with pytest.raises(ContractViolation, match=r"reconstruction-time object \(FeatureMaps\) at session\.driver\.cache\['last'\]\[0\]"):
        check_pipeline(registry=broken, driver={"name": "stash-features"})


def test_isolation_catches_a_session_that_reaches_the_encoder(broken):
    pipe = Pipeline.from_dict(tiny_pipeline(), broken)
    avatar = pipe.reconstruct(sample_image(64))
    pipe.refiner.helper = pipe.encoder  # a refiner that kept the encoder around
    with pytest.raises(ContractViolation, match=r"\(TinyConvEncoder\) at session\.refiner\.helper;"):
        pipe.session(avatar)


def test_immutability_catches_in_place_writes_by_the_driver(broken):
    with pytest.raises(ContractViolation, match=r"^driver changed the avatar tensor 'static\.features' in place"):
        check_pipeline(registry=broken, driver={"name": "in-place"})


def test_immutability_catches_in_place_writes_by_the_refiner(broken):
    pipe = Pipeline.from_dict(tiny_pipeline(refiner={"name": "scratch"}), broken)
    avatar = pipe.reconstruct(sample_image(64))
    session = pipe.session(avatar)
    session.render(pipe.head_model.neutral(1))  # fine while it leaves the avatar alone
    pipe.refiner.victim = avatar
    with pytest.raises(ContractViolation, match=r"^refiner changed the avatar tensor 'rig\.dynamic\.opacities'"):
        session.render(pipe.head_model.neutral(1))


def test_avatar_fields_cannot_be_reassigned(broken):
    pipe = Pipeline.from_dict(tiny_pipeline(), broken)
    avatar = pipe.reconstruct(sample_image(64))
    with pytest.raises(AttributeError):
        avatar.static = avatar.rig.dynamic  # type: ignore[misc]


def test_independence_catches_per_frame_work_that_grows_with_the_encoder(broken):
    with pytest.raises(ContractViolation, match="per-frame work must not depend on the encoder"):
        check_encoder_independence(SMALL, LARGE, registry=broken, driver={"name": "encoder-sized"})


def test_independence_catches_avatar_tensors_sized_by_the_encoder(broken):
    with pytest.raises(ContractViolation, match=r"avatar tensor 'rig\.latent' has shape"):
        check_encoder_independence(SMALL, LARGE, registry=broken, driver={"name": "latent-sized"})


def test_driving_only_touches_driving_components(broken):
    pipe = Pipeline.from_dict(tiny_pipeline(), broken)
    avatar = pipe.reconstruct(sample_image(64))
    session = pipe.session(avatar)
    calls = []
    for part in (pipe.encoder, pipe.lifter):
        part.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    pipe.tracker.track = lambda *a: calls.append("tracker")  # type: ignore[method-assign]
    session.render(pipe.head_model.neutral(2))
    assert calls == []
