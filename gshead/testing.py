"""Contract checks for component authors, usable from any pytest suite.

A third-party encoder is tested in three lines::

    from gshead.testing import check_component, check_pipeline

    def test_my_encoder():
        check_component("encoder", {"name": "my-encoder", "width": 16})
        check_pipeline(encoder={"name": "my-encoder", "width": 16})

Each check builds the component inside a tiny reference pipeline (``tiny_pipeline``) with one
slot replaced, runs it, and raises ``AssertionError`` (or ``ContractViolation``, a subclass)
with a message saying which rule broke. gshead's own suite runs these over every registered
component.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from gshead.core.components import Kind, kind_info
from gshead.core.contract import check_independence
from gshead.core.pipeline import Pipeline
from gshead.core.registry import Registry, get_registry
from gshead.core.types import Avatar, CropBox, FeatureMaps, Gaussians, HeadMesh, Render, Rig, Tracked

TINY_PIPELINE: dict[str, Any] = {
    "seed": 0,
    "feature_channels": 8,
    "source_size": 64,
    "render_size": 48,
    "headmodel": {"name": "procedural"},
    "encoder": {"name": "tiny-conv", "channels": 8},
    "lifter": {"name": "single-plane", "resolution": 16},
    "driver": {"name": "mesh-bound"},
    "rasterizer": {"name": "torch-tiles"},
    "refiner": {"name": "identity"},
    "tracker": {"name": "frontal"},
}


def tiny_pipeline(**slots: Any) -> dict[str, Any]:
    """The tiny reference pipeline as a config dict, with the given slots/settings replaced."""
    config = copy.deepcopy(TINY_PIPELINE)
    config.update(copy.deepcopy(slots))
    return config


def sample_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A deterministic [1, 3, size, size] portrait-like test image (a bright disc on dark)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xs**2 + (ys / 1.3) ** 2) < 0.5).float()
    colour = torch.tensor([0.9, 0.7, 0.6]).view(3, 1, 1)
    noise = 0.05 * torch.rand(3, size, size, generator=g)
    return (disc * colour + 0.1 + noise).clamp(0, 1)[None]


def _build(config: dict[str, Any], registry: Registry | None) -> Pipeline:
    return Pipeline.from_dict(config, registry or get_registry())


def _finite(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        assert torch.isfinite(t).all(), f"{name}: output contains NaN or inf"


def _check_gaussians(name: str, g: Gaussians, batch: int, channels: int) -> None:
    assert isinstance(g, Gaussians), f"{name}: expected Gaussians, got {type(g).__name__}"
    assert g.batch_size == batch, f"{name}: expected batch {batch}, got {g.batch_size}"
    assert g.channels == channels, f"{name}: expected {channels} feature channels, got {g.channels}"
    _finite(name, *g.tensors().values())
    assert (g.scales > 0).all(), f"{name}: scales must be > 0"
    assert ((g.opacities >= 0) & (g.opacities <= 1)).all(), f"{name}: opacities must lie in [0, 1]"
    norms = g.quats.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), f"{name}: quaternions must be unit length"


def _check_headmodel(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    hm = pipe.head_model
    neutral = hm.neutral(2)
    assert neutral.expression.shape[1] == len(hm.expression_names), f"{name}: one name per expression unit"
    assert neutral.identity.shape[1] == hm.identity_dim, f"{name}: identity_dim disagrees with neutral()"
    mesh = hm(neutral)
    assert isinstance(mesh, HeadMesh), f"{name}: forward must return HeadMesh"
    assert mesh.vertices.shape == (2, hm.template.shape[0], 3), f"{name}: vertices must be [B, V, 3]"
    assert torch.allclose(mesh.vertices[0], hm.template, atol=1e-6), f"{name}: zero parameters must give the template"
    assert int(hm.faces.max()) < hm.template.shape[0], f"{name}: faces index past the last vertex"
    _finite(name, mesh.vertices, mesh.landmarks)


def _check_encoder(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    feats = pipe.encoder(image)
    assert isinstance(feats, FeatureMaps), f"{name}: forward must return FeatureMaps"
    got = tuple(m.shape[1] for m in feats.local)
    assert got == tuple(pipe.encoder.out_channels), f"{name}: local channels {got} != out_channels"
    assert feats.global_token.shape[1] == pipe.encoder.global_channels, f"{name}: wrong global_channels"
    _finite(name, *feats.local, feats.global_token)


def _check_lifter(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    static = pipe.lifter(pipe.encoder(image), tracked.params, tracked.camera)
    _check_gaussians(name, static, 1, pipe.config.feature_channels)


def _check_driver(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    channels = pipe.config.feature_channels
    feats = pipe.encoder(image)
    static = pipe.lifter(feats, tracked.params, tracked.camera)
    rig = pipe.driver.prepare(feats, tracked.params, tracked.camera, static)
    assert isinstance(rig, Rig), f"{name}: prepare must return a Rig"
    _check_gaussians(name + " rig", rig.dynamic, 1, channels)
    avatar = pipe.reconstruct(image)
    params = pipe.head_model.neutral(3)
    posed = pipe.driver.drive(avatar, params)
    _check_gaussians(name + " drive", posed, 3, channels)
    assert posed.count == avatar.rig.dynamic.count, f"{name}: drive must pose every rig Gaussian"
    again = pipe.driver.drive(avatar, params)
    assert torch.equal(posed.means, again.means), f"{name}: drive must be deterministic"


REFERENCE_RASTERIZER: dict[str, Any] = {"name": "torch-tiles"}
"""The rasterizer every other one is compared with (the pure-PyTorch reference)."""


def _check_rasterizer(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    channels = pipe.config.feature_channels
    g = _random_gaussians(200, channels)
    cam = tracked.camera.resized(40, 32)
    bg = torch.linspace(0, 1, channels)
    out = pipe.rasterizer(g, cam, bg)
    assert isinstance(out, Render), f"{name}: forward must return Render"
    assert out.features.shape == (1, channels, 32, 40), f"{name}: features must be [B, C, H, W]"
    assert out.alpha.shape == (1, 1, 32, 40) and out.depth.shape == (1, 1, 32, 40), f"{name}: bad alpha/depth"
    assert out.alpha.max() > 0.5, f"{name}: a visible scene rendered nearly empty"
    empty = pipe.rasterizer(_random_gaussians(0, channels), cam, bg)
    assert torch.allclose(empty.features, bg.view(1, -1, 1, 1).expand_as(empty.features)), (
        f"{name}: with no Gaussians the image must equal the background"
    )
    reference = pipe.context.build("rasterizer", REFERENCE_RASTERIZER)
    ref = reference(g, cam, bg)
    assert torch.allclose(out.features, ref.features, atol=1e-4), f"{name}: differs from the reference rasterizer"


def _check_refiner(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    channels = pipe.config.feature_channels
    render = Render(torch.rand(2, channels, 24, 32), torch.rand(2, 1, 24, 32), torch.rand(2, 1, 24, 32))
    rgb = pipe.refiner(render)
    assert rgb.shape == (2, 3, 24, 32), f"{name}: output must be [B, 3, H, W]"
    assert rgb.min() >= 0 and rgb.max() <= 1, f"{name}: output must lie in [0, 1]"


def _check_tracker(pipe: Pipeline, name: str, image: torch.Tensor, tracked: Tracked) -> None:
    box = pipe.tracker.crop_box(image)
    assert box is None or (isinstance(box, CropBox) and box.side > 0), f"{name}: crop_box must be a CropBox or None"
    batch = torch.cat([image, image.flip(-1)])
    out = pipe.tracker.track(batch)
    size = pipe.config.source_size
    assert isinstance(out, Tracked), f"{name}: track must return Tracked"
    assert out.params.batch_size == 2 and out.camera.batch_size == 2, f"{name}: one result per image"
    assert (out.camera.width, out.camera.height) == (size, size), f"{name}: camera size"


KIND_CHECKS: dict[Kind, Callable[[Pipeline, str, torch.Tensor, Tracked], None]] = {
    "headmodel": _check_headmodel,
    "encoder": _check_encoder,
    "lifter": _check_lifter,
    "driver": _check_driver,
    "rasterizer": _check_rasterizer,
    "refiner": _check_refiner,
    "tracker": _check_tracker,
}
"""The contract check of each kind (a test keeps its keys equal to ``KINDS``)."""


def check_component(kind: Kind, config: dict[str, Any] | None = None, registry: Registry | None = None) -> None:
    """Build ``kind`` from ``config`` (default: its slot in the tiny pipeline) and check its outputs."""
    check = KIND_CHECKS[kind_info(kind).kind]
    pipe = _build(tiny_pipeline(**({kind: config} if config else {})), registry)
    image = sample_image(pipe.config.source_size)
    tracked = pipe.tracker.track(image)
    check(pipe, f"{kind} {pipe.config.slot(kind).name!r}", image, tracked)


def _random_gaussians(n: int, channels: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(1, n, 3, generator=g) - 0.5) * torch.tensor([0.2, 0.2, 0.1])
    quats = torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1)
    scales = 0.004 + 0.01 * torch.rand(1, n, 3, generator=g)
    return Gaussians(means, quats, scales, 0.2 + 0.7 * torch.rand(1, n, generator=g), torch.rand(1, n, channels, generator=g))


def check_pipeline(registry: Registry | None = None, **slots: Any) -> Avatar:
    """Reconstruct and drive the tiny pipeline with ``slots`` replaced; check the contract's
    isolation and immutability clauses and the output images. Returns the avatar."""
    pipe = _build(tiny_pipeline(**slots), registry)
    avatar = pipe.reconstruct(sample_image(pipe.config.source_size))
    session = pipe.session(avatar)  # clause 1 runs here
    params = pipe.head_model.neutral(2)
    params = params.replace(jaw=torch.tensor([[0.0, 0, 0], [0.3, 0, 0]]), rotation=torch.tensor([[0, 0, 0], [0, 0.3, 0.0]]))
    frames = session.render(params)  # clause 2 runs after each stage
    size = pipe.config.render_size
    assert frames.shape == (2, 3, size, size), f"frames must be [B, 3, {size}, {size}], got {list(frames.shape)}"
    assert frames.min() >= 0 and frames.max() <= 1, "frames must lie in [0, 1]"
    assert not torch.equal(frames[0], frames[1]), "different head parameters rendered identical frames"
    return avatar


def check_encoder_independence(
    small: dict[str, Any], large: dict[str, Any], registry: Registry | None = None, **slots: Any
) -> None:
    """Clause 3: pipelines differing only in the encoder give equal avatar shapes and equal
    per-frame work. ``small``/``large`` are encoder slot configs; ``slots`` replace other slots."""
    made = []
    for enc in (small, large):
        pipe = _build(tiny_pipeline(**slots, encoder=enc), registry)
        avatar = pipe.reconstruct(sample_image(pipe.config.source_size))
        made.append((avatar, pipe.session(avatar)))
    check_independence(made[0], made[1], made[0][0].source.replace(jaw=torch.tensor([[0.2, 0, 0]])))


__all__ = [
    "TINY_PIPELINE",
    "tiny_pipeline",
    "sample_image",
    "check_component",
    "check_pipeline",
    "check_encoder_independence",
    "KIND_CHECKS",
    "REFERENCE_RASTERIZER",
]
