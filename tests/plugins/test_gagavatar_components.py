"""GAGAvatar's components: the DPT head and ``dual-plane`` lifter, ``expression-gaussians``, ``style-unet``.

Sizes are tiny (the contract variants' ``test_fields``); the official sizes are only built on
the meta device, which allocates nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gshead.core.components import BuildContext
from gshead.core.config import load_pipeline
from gshead.core.geometry import posed_points, project_points, view_direction
from gshead.core.pipeline import Pipeline
from gshead.core.registry import DEFAULT_PLUGINS as BUILTIN_PLUGINS
from gshead.core.registry import Registry
from gshead.core.types import Camera, FeatureMaps, HeadParams, Render
from gshead.plugins.drivers.expression_gaussians import ExpressionGaussiansConfig, vertex_binding
from gshead.plugins.lifters._dpt import DPTHead, branch_levels
from gshead.plugins.lifters.dual_plane import DualPlaneConfig, DualPlaneLifter, plane_points
from gshead.plugins.refiners.style_unet import StyleUNetConfig, StyleUNetRefiner
from gshead.plugins._shared.direction_code import forward_direction
from gshead.testing import (
    check_component,
    check_encoder_independence,
    check_pipeline,
    sample_image,
    tiny_pipeline,
)

NEW_PLUGINS = (
    "gshead.plugins.lifters.dual_plane",
    "gshead.plugins.drivers.expression_gaussians",
    "gshead.plugins.refiners.style_unet",
)
REGISTRY = Registry(builtin=tuple(dict.fromkeys(BUILTIN_PLUGINS + NEW_PLUGINS)), autoload=False)
REPO = Path(__file__).resolve().parents[2]
SMALL = {"render_size": 16, "source_size": 32}  # keeps the rasterizer cheap in pipeline checks

LIFTER = {"name": "dual-plane", **DualPlaneConfig.test_fields}
DRIVER = {"name": "expression-gaussians", **ExpressionGaussiansConfig.test_fields}
REFINER = {"name": "style-unet", **StyleUNetConfig.test_fields}
OFFICIAL_STYLE_UNET = {
    "resolution": 512,
    "depth": 7,
    "width": 16,
    "max_width": 256,
    "style_channels": 512,
    "mapping_layers": 8,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- contract ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,config", [("lifter", LIFTER), ("driver", DRIVER), ("refiner", REFINER)], ids=str
)
def test_contract(kind, config):
    check_component(kind, config, registry=REGISTRY)
    check_pipeline(registry=REGISTRY, **SMALL, **{kind: config})


def test_all_three_together_and_encoder_independence():
    slots = dict(SMALL, lifter=LIFTER, driver=DRIVER, refiner=REFINER)
    small = {"name": "tiny-conv", "channels": 8, "global_channels": 16}
    large = {"name": "tiny-conv", "channels": 16, "global_channels": 48}
    check_encoder_independence(small, large, registry=REGISTRY, **slots)


@pytest.mark.parametrize("name", ["gagavatar.yaml", "gagavatar-anny.yaml"])
def test_configs_validate(name):
    config = load_pipeline(REPO / "configs" / name, REGISTRY)
    assert config.lifter.name == "dual-plane" and config.driver.name == "expression-gaussians"


# -- DPT head ------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_size", [5, 16, 23])
@pytest.mark.parametrize("levels", [1, 4])
def test_dpt_output_size(feature_size, levels):
    head = DPTHead((6,) * levels, channels=(4, 4, 8, 8), features=5, feature_size=feature_size)
    maps = tuple(torch.randn(2, 6, 7, 7) for _ in range(levels))
    out = head(maps, torch.rand(2, 3, 28, 28))
    assert out.shape == (2, 5, feature_size, feature_size)


def test_dpt_official_branch_sizes_on_meta():
    sizes = []
    with torch.device("meta"):
        head = DPTHead((768,) * 4, features=256, feature_size=296)
        for layer in head.layer_rn:
            layer.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape)))
        out = head(tuple(torch.empty(1, 768, 37, 37) for _ in range(4)), torch.empty(1, 3, 518, 518))
    assert [s[-1] for s in sizes] == [148, 74, 37, 19] and all(s[1] == 256 for s in sizes)
    assert [layer.in_channels for layer in head.layer_rn] == [259, 515, 1027, 1027]
    assert out.shape == (1, 256, 296, 296)
    assert abs(_count(head) - 30.5e6) < 0.1e6


def test_branch_levels():
    assert branch_levels(1) == (0, 0, 0, 0)
    assert branch_levels(2) == (0, 0, 1, 1)
    assert branch_levels(4) == (0, 1, 2, 3)
    assert branch_levels(12) == (8, 9, 10, 11)


# -- dual-plane geometry ---------------------------------------------------------------------
def _lifter(**fields) -> DualPlaneLifter:
    config = DualPlaneConfig(name="dual-plane", **{**DualPlaneConfig.test_fields, **fields})
    return DualPlaneLifter(config, BuildContext(8, None, (6, 6), 10)).eval()


def _view() -> tuple[FeatureMaps, Camera]:
    g = torch.Generator().manual_seed(0)
    feats = FeatureMaps(
        torch.rand(1, 3, 32, 32, generator=g),
        tuple(torch.randn(1, 6, 8, 8, generator=g) for _ in range(2)),
        torch.randn(1, 10, generator=g),
    )
    pose = HeadParams.zeros(1, 1).replace(
        rotation=torch.tensor([[0.2, -0.4, 0.1]]), translation=torch.tensor([[0.01, 0.0, 0.02]])
    )
    camera = Camera.frontal(0.6, 25.0, 32, 24).moved(pose.pose_matrix())  # a rotated, non-square view
    return feats, camera


def test_dual_plane_on_the_plane_projects_onto_the_pixel_grid():
    feats, camera = _view()
    with torch.no_grad():
        g = _lifter(max_offset=0.0)(feats, HeadParams.zeros(1, 1), camera)
    s = DualPlaneConfig.test_fields["feature_size"]
    assert g.count == 2 * s * s and g.channels == 8
    front, back = g.means[:, : s * s], g.means[:, s * s :]
    assert torch.equal(front, back)
    d = view_direction(camera)  # [1, 3]
    assert torch.allclose((front @ d[0]), torch.zeros(1, s * s), atol=1e-6)  # on the plane through the origin
    steps = torch.arange(s, dtype=torch.float32)  # through the pixel corners, as GAGAvatar's linspace(1, -1, S)
    jj, ii = torch.meshgrid(steps, steps, indexing="ij")
    expected = torch.stack([ii * 32 / (s - 1), jj * 24 / (s - 1)], -1).reshape(1, -1, 2)
    assert torch.allclose(project_points(front, camera), expected, atol=1e-3)


def test_dual_plane_front_and_back_layers_on_opposite_sides():
    feats, camera = _view()
    with torch.no_grad():
        g = _lifter(max_offset=0.1)(feats, HeadParams.zeros(1, 1), camera)
    n = g.count // 2
    plane = plane_points(camera, DualPlaneConfig.test_fields["feature_size"])
    d = forward_direction(camera)[:, None]  # [1, 1, 3]: layer 0 moves away from the camera (official)
    along_front = ((g.means[:, :n] - plane) * d).sum(-1)
    along_back = ((g.means[:, n:] - plane) * d).sum(-1)
    assert (along_front > 0).all() and (along_front < 0.1).all()
    assert (along_back < 0).all() and (along_back > -0.1).all()
    # moves are along the view direction only
    assert torch.allclose(g.means[:, :n] - plane, along_front[..., None] * d, atol=1e-6)
    assert (g.scales <= 0.01).all() and ((g.features[..., :3] >= 0) & (g.features[..., :3] <= 1)).all()


def test_dual_plane_single_layer_ablation_has_half_the_gaussians():
    feats, camera = _view()
    with torch.no_grad():
        torch.manual_seed(0)
        two = _lifter()(feats, HeadParams.zeros(1, 1), camera)
        torch.manual_seed(0)
        one = _lifter(planes=1)(feats, HeadParams.zeros(1, 1), camera)
    assert one.count * 2 == two.count
    assert torch.equal(
        one.means, two.means[:, : one.count]
    )  # the same head: the ablation drops the back layer


# -- expression Gaussians --------------------------------------------------------------------
@pytest.fixture(scope="module")
def expression_pipeline():
    pipe = Pipeline.from_dict(tiny_pipeline(**SMALL, driver=DRIVER), REGISTRY)
    return pipe, pipe.reconstruct(sample_image(32))


def _expressions(hm, n: int) -> HeadParams:
    g = torch.Generator().manual_seed(1)
    p = hm.neutral(n)
    return p.replace(
        expression=torch.randn(p.expression.shape, generator=g),
        jaw=torch.tensor([[0.3, 0, 0]]).expand(n, 3).clone(),
    )


def test_expression_gaussians_sit_exactly_on_the_driven_vertices(expression_pipeline):
    pipe, avatar = expression_pipeline
    hm = pipe.head_model
    params = _expressions(hm, 2)
    posed = pipe.driver.drive(avatar, params)
    verts = hm(params).vertices
    assert posed.count == hm.template.shape[0] == avatar.rig.dynamic.count
    assert torch.equal(posed.means, verts)
    assert torch.equal(posed_points(avatar.rig.binding, verts, hm.faces), verts)
    # attributes do not depend on the expression
    neutral = pipe.driver.drive(avatar, hm.neutral(1))
    for name in ("features", "opacities", "scales"):
        assert torch.equal(getattr(posed, name)[0], getattr(neutral, name)[0])
        assert torch.equal(getattr(posed, name)[0], getattr(posed, name)[1])
    assert not torch.equal(posed.means[0], neutral.means[0])


def test_expression_gaussian_rotations_follow_their_triangles(expression_pipeline):
    pipe, avatar = expression_pipeline
    with torch.no_grad():
        predicted = pipe.driver.attributes(torch.zeros(1, 64), torch.tensor([[0.0, 0.0, 1.0]]))
    assert predicted.count == avatar.rig.dynamic.count
    at_source = pipe.driver.drive(avatar, avatar.source)
    # the rig's rotations are stored per triangle; at the source mesh they are the predicted world ones
    feats = pipe.encoder(sample_image(32))
    with torch.no_grad():
        direct = pipe.driver.attributes(
            feats.global_token, forward_direction(avatar.camera.moved(avatar.source.pose_matrix()))
        )
    dots = (at_source.quats * direct.quats).sum(-1).abs()
    assert torch.allclose(dots, torch.ones_like(dots), atol=1e-4)


def test_root_rotation_is_camera_motion_about_joint_0_for_sane_drivers(expression_pipeline):
    """``HeadParams.root`` (FLAME's global pose) for a driver that does not apply it (``compat:
    sane``): reconstruction and driving fold it into head pose about joint 0 (camera motion), so
    the results are those of ``root_as_pose``."""
    pipe, _avatar = expression_pipeline
    assert not pipe.driver.applies_root
    hm = pipe.head_model
    root = torch.tensor([[0.05, -0.3, 0.1]])
    source = hm.neutral(1).replace(root=root)
    folded = source.root_as_pose(hm(source.replace(root=None)).joints[:, 0])
    assert folded.rotation.abs().max() > 0.1
    image = sample_image(32)
    a, b = pipe.reconstruct(image, source=source), pipe.reconstruct(image, source=folded)
    assert torch.allclose(a.static.means, b.static.means, atol=1e-6)
    assert a.source.root is None and torch.allclose(a.source.rotation, folded.rotation)
    frames = _expressions(hm, 2).replace(root=root.expand(2, 3) * torch.tensor([[1.0], [-1.0]]))
    frames_folded = frames.root_as_pose(hm(frames.replace(root=None)).joints[:, 0])
    session = pipe.session(b)
    assert torch.allclose(session.render(frames), session.render(frames_folded), atol=1e-5)


def test_official_driver_turns_only_the_mesh_about_joint_0():
    """``compat: official``: the driver applies ``HeadParams.root`` itself (GAGAvatar: FLAME's global
    pose in the LBS): the expression Gaussians' means turn about joint 0, their rotations do not,
    and ``drive_frames`` leaves the camera and the lifted Gaussians alone."""
    import roma

    from gshead.core.pipeline import drive_frames

    pipe = Pipeline.from_dict(tiny_pipeline(**SMALL, driver={**DRIVER, "compat": "official"}), REGISTRY)
    avatar = pipe.reconstruct(sample_image(32))
    assert pipe.driver.applies_root
    hm = pipe.head_model
    frames = _expressions(hm, 2)
    root = torch.tensor([[0.1, -0.4, 0.05], [0.0, 0.3, 0.0]])
    seen = {}

    def rasterizer(gaussians, camera, background=None):
        seen.update(gaussians=gaussians, camera=camera)
        ones = torch.ones(camera.batch_size, 1, 4, 4)
        return Render(ones.expand(-1, gaussians.channels, -1, -1), ones, ones)

    camera = avatar.camera.expand(2)
    drive_frames(avatar, frames.replace(root=root), camera, pipe.driver, rasterizer, lambda r: r.features[:, :3])
    turned = seen["gaussians"]
    drive_frames(avatar, frames, camera, pipe.driver, rasterizer, lambda r: r.features[:, :3])
    plain = seen["gaussians"]
    assert torch.allclose(seen["camera"].world_to_camera, camera.moved(frames.pose_matrix()).world_to_camera)
    n = avatar.static.count
    assert torch.equal(turned.means[:, :n], plain.means[:, :n])  # the lifted Gaussians stay
    assert torch.equal(turned.quats, plain.quats)  # rotations world-fixed (official)
    mesh = hm(frames.replace(identity=avatar.source.identity.expand(2, -1)))
    j0 = mesh.joints[:, :1]
    expected = j0 + (mesh.vertices - j0) @ roma.rotvec_to_rotmat(root).transpose(1, 2)
    assert torch.allclose(turned.means[:, n:], expected, atol=1e-6)
    assert (turned.means[:, n:] - plain.means[:, n:]).abs().max() > 1e-3


def test_expression_gaussians_gradients_reach_head_base_and_mlp(expression_pipeline):
    pipe, _ = expression_pipeline
    image = sample_image(32)
    tracked = pipe.tracker.track(image)
    with torch.no_grad():
        feats = pipe.encoder(image)
    with torch.enable_grad():
        rig = pipe.driver.prepare(feats, tracked.params, tracked.camera, None)
        g = rig.dynamic
        (
            g.features.sum()
            + g.opacities.sum()
            + g.scales.sum()
            + (g.quats * torch.randn_like(g.quats)).sum()
        ).backward()
    driver = pipe.driver
    for name, p in [
        ("head_base", driver.head_base),
        ("mlp", driver.feature_layers[0].weight),
        ("rotation", driver.rotation_layers[0].weight),
        ("scale", driver.scale_layers[0].weight),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    driver.zero_grad(set_to_none=True)


def test_vertex_binding_handles_unused_vertices():
    template = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0.3, 0.3, 0.2]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    b = vertex_binding(template, faces)
    assert torch.allclose(posed_points(b, template, faces)[0], template, atol=1e-6)
    assert torch.equal(b.offset[:4], torch.zeros(4, 3)) and b.offset[4].abs().sum() > 0


# -- style-unet ------------------------------------------------------------------------------
def _refiner(**fields) -> StyleUNetRefiner:
    config = StyleUNetConfig(name="style-unet", **{**StyleUNetConfig.test_fields, **fields})
    return StyleUNetRefiner(config, BuildContext(8)).eval()


def test_style_unet_range_and_size():
    torch.manual_seed(0)
    refiner = _refiner()
    render = Render(4 * torch.randn(2, 8, 20, 12), torch.rand(2, 1, 20, 12), torch.rand(2, 1, 20, 12))
    with torch.no_grad():
        out = refiner(render)
    assert out.shape == (2, 3, 20, 12) and out.min() >= 0 and out.max() <= 1
    with torch.no_grad():
        native = refiner(
            Render(torch.randn(1, 8, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
        )
    assert native.shape == (1, 3, 16, 16)


def test_style_code_changes_the_output():
    torch.manual_seed(0)
    refiner = _refiner()
    with torch.no_grad():
        style, conditions = refiner.encode(torch.randn(1, 8, 16, 16))
        a = refiner.decode(style, conditions)
        b = refiner.decode(style + torch.randn_like(style), conditions)
    assert a.shape == (1, 3, 16, 16) and not torch.allclose(a, b, atol=1e-4)


def test_style_unet_official_size_parameter_count_on_meta():
    with torch.device("meta"):
        refiner = StyleUNetRefiner(
            StyleUNetConfig(name="style-unet", **OFFICIAL_STYLE_UNET), BuildContext(32)
        )
    assert abs(_count(refiner) - 48.7e6) <= 0.1 * 48.7e6
    assert refiner.final_linear.in_features == 4096 and refiner.bottleneck == 4


def test_style_unet_rejects_a_fractional_bottleneck():
    with pytest.raises(ValueError):
        StyleUNetConfig(name="style-unet", resolution=20, depth=3)


def test_style_unet_official_draws_fresh_noise_every_forward_in_eval_too():
    """``compat: official``: new noise each call (the official ``randomize_noise=True``), reproducible
    with a fixed torch seed; ``sane``: the stored buffers, deterministic."""
    torch.manual_seed(0)
    official = _refiner(compat="official")
    sane = _refiner()
    sane.load_state_dict(official.state_dict())
    with torch.no_grad():  # a visible noise strength in every styled conv
        for name, p in official.named_parameters():
            if name.endswith(".weight") and p.numel() == 1:
                p.fill_(0.5)
        sane.load_state_dict(official.state_dict())
    render = Render(torch.randn(1, 8, 16, 16), torch.ones(1, 1, 16, 16), torch.ones(1, 1, 16, 16))
    assert not official.training
    with torch.no_grad():
        torch.manual_seed(5)
        a = official(render)
        b = official(render)
        torch.manual_seed(5)
        a_again = official(render)
        s1, s2 = sane(render), sane(render)
    assert not torch.allclose(a, b, atol=1e-6)
    assert torch.equal(a, a_again)
    assert torch.equal(s1, s2) and not torch.allclose(s1, a, atol=1e-6)
