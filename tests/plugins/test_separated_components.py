"""The separated method's components: mesh-anchored (static), light-control (dynamic), light-unet."""

from __future__ import annotations

import copy

import pytest
import torch

from gshead.core.config import validate_pipeline
from gshead.core.errors import ConfigError
from gshead.core.geometry import bind_to_mesh, posed_points, project_points
from gshead.core.pipeline import Pipeline
from gshead.core.registry import DEFAULT_PLUGINS as BUILTIN_PLUGINS
from gshead.core.registry import Registry
from gshead.core.types import Render
from gshead.plugins._shared.face_motion import expression_groups
from gshead.plugins._shared.surface import sample_at
from gshead.plugins.drivers.light_control import LightControlConfig
from gshead.plugins.lifters.mesh_anchored import MeshAnchoredConfig, neutral_face
from gshead.plugins.refiners.light_unet import LightUNetConfig, LightUNetRefiner
from gshead.testing import (
    check_component,
    check_encoder_independence,
    check_pipeline,
    sample_image,
    tiny_pipeline,
)

MINE = (
    "gshead.plugins.lifters.mesh_anchored",
    "gshead.plugins.drivers.light_control",
    "gshead.plugins.refiners.light_unet",
)
# Works before and after these modules join BUILTIN_PLUGINS.
REGISTRY = Registry(builtin=tuple(dict.fromkeys(BUILTIN_PLUGINS + MINE)), autoload=False)
HEAD = {"name": "procedural", "subdivisions": 4}  # 320 triangles: fast
LIFTER = {"name": "mesh-anchored", "anchors_per_face": 1}
DRIVER = {"name": "light-control", "anchors_per_face": 1}


@pytest.fixture(scope="module")
def built():
    pipe = Pipeline.from_dict(
        tiny_pipeline(headmodel=HEAD, lifter={**LIFTER, "anchors_per_face": 2}, driver=DRIVER), REGISTRY
    )
    image = sample_image(pipe.config.source_size)
    avatar = pipe.reconstruct(image)
    return pipe, image, avatar


# ------------------------------------------------------------------ mesh-anchored
def test_static_gaussians_shapes_and_ranges(built):
    pipe, _, avatar = built
    static = avatar.static
    static_faces = pipe.lifter.face_index.unique().numel()
    assert static.count == pipe.lifter.count == 2 * static_faces
    assert 0 < static_faces < pipe.head_model.faces.shape[0]  # moving triangles are the driver's
    assert static.channels == pipe.config.feature_channels
    assert (static.scales > 0).all() and ((static.opacities > 0) & (static.opacities < 1)).all()
    assert torch.allclose(static.opacities, torch.full_like(static.opacities, 0.95))
    assert torch.allclose(static.quats.norm(dim=-1), torch.ones(1, static.count), atol=1e-5)
    assert ((static.features[..., :3] >= 0) & (static.features[..., :3] <= 1)).all()


def test_static_anchors_lie_on_the_source_mesh_and_take_its_colour(built):
    pipe, image, avatar = built
    hm = pipe.head_model
    source = avatar.source
    place = hm(neutral_face(source)).vertices
    binding = bind_to_mesh(avatar.static.means[0], place, hm.faces)
    assert binding.offset.norm(dim=-1).max() < 1e-5  # untrained: no normal offset
    # Untrained colour = the image colour where the same surface point appears in the portrait, on
    # the anchors the source view shows; the hidden ones (the far side) read the appearance prior.
    from gshead.core.geometry import posed_frames
    from gshead.core.types import MeshBinding
    from gshead.plugins._shared.appearance import anchor_colours
    from gshead.plugins._shared.surface import module_prior

    anchors = MeshBinding(pipe.lifter.face_index, pipe.lifter.barycentric, torch.zeros(pipe.lifter.count, 3))
    view = avatar.camera.moved(source.pose_matrix())
    see = hm(source).vertices
    seen, rot = posed_frames(anchors, see, hm.faces)
    rgb = sample_at(image, project_points(seen, view), view.width, view.height)
    centre = torch.linalg.inv(view.world_to_camera)[:, None, :3, 3]
    facing = (torch.nn.functional.normalize(centre - seen, dim=-1) * rot[..., 2]).sum(-1)
    vertex_rgb = sample_at(image, project_points(see, view), view.width, view.height)
    prior, visible = anchor_colours(
        rgb, seen, facing, anchors.face_index, anchors.barycentric, see, vertex_rgb, hm.faces, view,
        module_prior(pipe.lifter, hm),
    )  # fmt: skip
    colour = avatar.static.features[..., :3]
    assert visible.any() and (~visible).any()
    assert torch.allclose(colour[visible], rgb.clamp(0, 1)[visible], atol=1e-5)
    assert torch.allclose(colour, prior.clamp(0, 1), atol=1e-5)


def test_static_and_dynamic_triangles_partition_the_mesh(built):
    pipe, _, _ = built
    static = set(pipe.lifter.face_index.tolist())
    dynamic = set(pipe.driver.face_index.tolist())
    assert not static & dynamic
    assert static | dynamic == set(range(pipe.head_model.faces.shape[0]))
    regions = pipe.driver.face_region[pipe.driver.face_index]
    assert all(int((regions == g).sum()) > 0 for g in range(3)), "every region has Gaussians"


# ------------------------------------------------------------------ light-control
def test_expression_groups_by_name_and_by_halves():
    names = ("jawOpen", "eyeBlinkLeft", "browInnerUp", "mouthSmileLeft", "eyeWideRight", "cheekPuff")
    assert expression_groups(names) == ([1, 4], [0, 3], [2, 5])
    assert expression_groups(tuple(f"expr{i}" for i in range(5))) == ([], [0, 1, 2], [3, 4])


def test_rig_and_latent_code(built):
    pipe, _, avatar = built
    rig = avatar.rig
    k = pipe.driver.config.code_dim
    assert rig.dynamic.count == pipe.driver.count
    assert rig.latent.shape == (1, rig.dynamic.count * k)
    assert torch.isfinite(rig.latent).all() and rig.latent.abs().sum() > 0


def test_untrained_driver_puts_gaussians_exactly_on_the_posed_mesh(built):
    pipe, _, avatar = built
    hm = pipe.head_model
    b = 3
    params = hm.neutral(b).replace(
        expression=torch.rand(b, len(hm.expression_names)),
        jaw=torch.tensor([[0.2, 0, 0], [0.1, 0.05, 0], [0, 0, 0]]),
        eyes=0.1 * torch.randn(b, 6),
        identity=torch.randn(b, hm.identity_dim),  # replaced by the avatar's identity
    )
    posed = pipe.driver.drive(avatar, params)
    mine = params.replace(identity=avatar.source.identity.expand(b, -1))
    expected = posed_points(avatar.rig.binding, hm(mine).vertices, hm.faces)
    assert torch.equal(posed.means, expected)
    assert posed.means.shape == (b, avatar.rig.dynamic.count, 3)
    assert torch.equal(posed.features, avatar.rig.dynamic.features.expand(b, -1, -1))


def _trained(pipe):
    """A copy of the pipeline's driver with random (non-zero) control-head output layers."""
    driver = copy.deepcopy(pipe.driver)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in driver.heads:
            head.out.weight.copy_(0.3 * torch.randn(head.out.weight.shape, generator=g))
            head.out.bias.copy_(0.1 * torch.randn(head.out.bias.shape, generator=g))
    return driver


def test_eyes_mouth_and_rest_heads_are_independent(built):
    pipe, _, avatar = built
    driver = _trained(pipe)
    hm = pipe.head_model
    eyes, mouth, rest = driver.groups
    region = driver.regions(avatar)
    base = avatar.source.replace(expression=0.2 * torch.ones(1, len(hm.expression_names)))
    before = driver.offsets(avatar, base)
    assert before.abs().max() > 0

    def changed(params):
        return (driver.offsets(avatar, params) - before).abs().amax(-1)[0] > 0  # [M]

    expr = base.expression.clone()
    expr[0, eyes] += 0.5
    cases = {
        0: base.replace(eyes=torch.full((1, 6), 0.2), expression=expr),
        1: base.replace(jaw=torch.tensor([[0.3, 0.0, 0.0]])),
        2: base.replace(
            expression=base.expression.index_add(1, torch.tensor(rest), torch.full((1, len(rest)), 0.7))
        ),
    }
    for g, params in cases.items():
        moved = changed(params)
        assert moved[region == g].all(), f"region {g}'s offsets must follow its own condition"
        assert not moved[region != g].any(), f"changing region {g}'s condition moved other regions"
    expr = base.expression.clone()
    expr[0, mouth] += 0.5
    moved = changed(base.replace(expression=expr))
    assert moved[region == 1].all() and not moved[region != 1].any()
    # The offsets reach the Gaussians: posed = mesh point + frame @ offset.
    posed = driver.drive(avatar, cases[0])
    on_mesh = posed_points(avatar.rig.binding, hm(cases[0]).vertices, hm.faces)
    assert (posed.means - on_mesh).abs().amax(-1)[0][region == 0].min() > 0


def test_control_network_parameter_budget(built):
    pipe, _, _ = built
    assert LightControlConfig().max_control_parameters == 1_000_000
    assert pipe.driver.control_parameters() <= 1_000_000
    with pytest.raises(ConfigError, match="max_control_parameters"):
        Pipeline.from_dict(
            tiny_pipeline(headmodel=HEAD, driver={**DRIVER, "max_control_parameters": 1000}), REGISTRY
        )


def test_motion_threshold_is_one_value_for_lifter_and_driver():
    assert MeshAnchoredConfig.pipeline_shared == ("motion_threshold",)
    assert LightControlConfig.pipeline_shared == ("motion_threshold",)
    for doc in (MeshAnchoredConfig, LightControlConfig):
        assert "Shared" in doc.model_fields["motion_threshold"].description
    same = tiny_pipeline(
        headmodel=HEAD,
        lifter={**LIFTER, "motion_threshold": 0.02},
        driver={**DRIVER, "motion_threshold": 0.02},
    )
    config = validate_pipeline(same, REGISTRY)
    assert config.lifter.motion_threshold == config.driver.motion_threshold == 0.02
    for lifter_value in (0.02, None):  # None (every triangle static) would duplicate the moving ones
        apart = tiny_pipeline(
            headmodel=HEAD,
            lifter={**LIFTER, "motion_threshold": lifter_value},
            driver={**DRIVER, "motion_threshold": 0.01},
        )
        with pytest.raises(ConfigError, match="lifter.motion_threshold") as info:
            validate_pipeline(apart, REGISTRY)
        assert "driver.motion_threshold" in str(info.value)
    # a lifter threshold of None is fine with a driver that has no threshold
    alone = validate_pipeline(
        tiny_pipeline(
            headmodel=HEAD, lifter={**LIFTER, "motion_threshold": None}, driver={"name": "mesh-bound"}
        ),
        REGISTRY,
    )
    assert alone.lifter.motion_threshold is None


def test_lifter_and_driver_contracts():
    check_component("lifter", LIFTER, registry=REGISTRY)
    check_component("driver", DRIVER, registry=REGISTRY)
    check_pipeline(registry=REGISTRY, headmodel=HEAD, lifter=LIFTER, driver=DRIVER)


def test_encoder_independence_with_the_separated_components():
    check_encoder_independence(
        {"name": "tiny-conv", "channels": 8},
        {"name": "tiny-conv", "channels": 24, "global_channels": 40},
        registry=REGISTRY,
        headmodel=HEAD,
        lifter=LIFTER,
        driver=DRIVER,
    )


# ------------------------------------------------------------------ light-unet
def test_light_unet_untrained_is_the_identity_refiner_and_fits_its_budget():
    from gshead.core.components import BuildContext

    net = LightUNetRefiner(LightUNetConfig(), BuildContext(8)).eval()
    assert sum(p.numel() for p in net.parameters()) <= 2_000_000
    assert LightUNetRefiner.parameter_count(LightUNetConfig(), 16) <= 2_000_000
    for h, w in ((24, 32), (23, 17)):
        feats = torch.rand(2, 8, h, w) * 1.2 - 0.1
        out = net(Render(feats, torch.rand(2, 1, h, w), torch.rand(2, 1, h, w)))
        assert out.shape == (2, 3, h, w)
        assert torch.equal(out, feats[:, :3].clamp(0, 1))
    with torch.no_grad():
        net.head.weight.normal_()
    out = net(Render(feats, torch.rand(2, 1, h, w), torch.rand(2, 1, h, w)))
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, feats[:, :3].clamp(0, 1))
    with pytest.raises(ConfigError, match="max_parameters"):
        LightUNetRefiner(LightUNetConfig(widths=(64, 128, 256, 512)), BuildContext(8))


def test_light_unet_contracts():
    check_component("refiner", {"name": "light-unet"}, registry=REGISTRY)
    check_pipeline(registry=REGISTRY, headmodel=HEAD, refiner={"name": "light-unet"})
