"""gshead's GAGAvatar components against numbers recorded from the official code.

``tests/data/gagavatar_reference/reference.safetensors`` was written by
``scripts/record_gagavatar_reference.py`` (official modules of ``xg-chu/GAGAvatar`` run on CPU)
on a synthetic checkpoint and fixed inputs that this test rebuilds from the same seeds (the
script's ``synthetic_checkpoint`` / ``fixed_inputs`` / ``sample_indices``). The checkpoint goes
through gshead's importer mapping (``map_gagavatar``) into components built at the official
sizes with ``compat: official``, and every stage must agree to 1e-4 relative (max abs error over
max abs value of the reference): DINOv2 tokens, global feature, DPT map, both plane layers,
expression Gaussians (attributes at the source view; then, on a synthetic ``FLAME_with_eye.pt``
that the official ``FLAMEModel`` and gshead's ``flame`` head model both read, positions and
covariances at the source and at a driven expression / jaw / eyes), the refined image from the
same 32-channel feature image through ``StyleUNetRefiner.forward`` (stored noise, and fresh noise
under ``compat: official`` with the official seed).

``global_pose.safetensors`` (same script) is the official inference path (``DriverData`` ->
``forward_expression``, up to the Gaussians handed to the rasterizer) for one driven frame with a
**non-zero FLAME global pose**: gshead reads that frame as GAGAvatar_track output (``posecode[:3]``
-> ``HeadParams.root``), turns it into head pose about the source camera (``poses_relative_to``)
and runs ``drive_frames``; the expression Gaussians it hands the rasterizer (the mesh turned about
FLAME joint 0, rotations world-fixed), the plane Gaussians (unmoved) and the camera (the frame's)
must match the official ones to 1e-4 relative.

Units: the official code works in FLAME x 5, gshead in metres, so official lengths (positions,
scales) are 5 x gshead's; the official camera (pytorch3d ``[R|T]``, focal 12) is converted to
gshead's OpenCV camera here (``official_camera``).
"""

from __future__ import annotations

import importlib.util
import math
import types
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gshead.commands.importers import map_gagavatar
from gshead.core.components import BuildContext
from gshead.core.types import Camera, HeadParams, Render
from gshead.plugins._shared.direction_code import forward_direction

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "gagavatar_reference" / "reference.safetensors"
GLOBAL_POSE = ROOT / "tests" / "data" / "gagavatar_reference" / "global_pose.safetensors"
SCRIPT = ROOT / "scripts" / "record_gagavatar_reference.py"
TOL = 1e-4
FLAME_X5 = 5.0  # official lengths per gshead metre


def _script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("record_gagavatar_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_camera(transform: torch.Tensor, size: int = 512, focal: float = 12.0) -> Camera:
    """pytorch3d [R|T] (x_cam = x R + T, +X left, +Y up; FLAME x 5 units; normalised focal) ->
    gshead Camera (OpenCV, metres, pixels): R_cv = diag(-1, -1, 1) R^T, t_cv = diag(-1, -1, 1) T / 5."""
    flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))
    w2c = torch.eye(4)
    w2c[:3, :3] = flip @ transform[:, :3].T
    w2c[:3, 3] = flip @ transform[:, 3] / FLAME_X5
    f = focal * size / 2
    k = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return Camera(w2c[None], k[None], size, size)


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double().reshape(ref.shape), ref.double()
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def parity():
    from gshead.plugins.drivers.expression_gaussians import ExpressionGaussiansConfig, ExpressionGaussiansDriver
    from gshead.plugins.encoders.dinov2 import Dinov2Config, Dinov2Encoder
    from gshead.plugins.lifters.dual_plane import DualPlaneConfig, DualPlaneLifter
    from gshead.plugins.refiners.style_unet import StyleUNetConfig, StyleUNetRefiner

    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} missing; record it with {SCRIPT.name}")
    script = _script()
    ref = load_file(str(REFERENCE))
    slots, unknown = map_gagavatar(script.synthetic_checkpoint())
    assert not unknown
    inputs = script.fixed_inputs()
    torch.manual_seed(0)
    ctx = BuildContext(feature_channels=32, encoder_channels=(768,) * 4, encoder_global_channels=768)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random-init backbone warning
        encoder = Dinov2Encoder(Dinov2Config(variant="vitb14", resolution=518, compat="official"))
    lifter = DualPlaneLifter(
        DualPlaneConfig(projection_channels=(256, 512, 1024, 1024), features=256, feature_size=296, hidden=128,
                        max_scale=0.01, max_offset=0.2, compat="official"), ctx)
    v = script.VERTICES
    head = types.SimpleNamespace(  # only the template and faces are read at build time
        template=inputs["vertices"][0] / FLAME_X5, faces=torch.stack([torch.arange(v - 2) + i for i in range(3)], 1)
    )
    driver = ExpressionGaussiansDriver(
        ExpressionGaussiansConfig(code_channels=256, hidden=256, layers=4, head_hidden=128, max_scale=0.01,
                                  compat="official"),
        BuildContext(feature_channels=32, head_model=head, encoder_channels=(768,) * 4, encoder_global_channels=768),
    )
    refiner = StyleUNetRefiner(
        StyleUNetConfig(resolution=512, depth=7, width=16, max_width=256, style_channels=512, mapping_layers=8,
                        compat="official"),
        BuildContext(feature_channels=32),
    )
    for slot, module in (("encoder", encoder), ("lifter", lifter), ("driver", driver), ("refiner", refiner)):
        module.load_state_dict(slots[slot], strict=True)
        module.eval()
    camera = official_camera(inputs["transform"])
    out = {}
    with torch.no_grad():
        feats = encoder(inputs["image"])
        out["features"] = feats
        captured = {}
        hook = lifter.dpt.register_forward_hook(lambda m, a, o: captured.setdefault("dpt", o))
        out["gaussians"] = lifter(feats, None, camera)
        hook.remove()
        out["dpt"] = captured["dpt"]
        out["expression"] = driver.attributes(feats.global_token, forward_direction(camera))
        # the refiner's whole forward on the same 32-channel feature image, logits captured
        logits = []
        hook = refiner.stylegan_decoder.register_forward_hook(lambda m, a, o: logits.append(o))
        feature_image = inputs["unet_input"]
        render = Render(feature_image, torch.ones_like(feature_image[:, :1]), torch.ones_like(feature_image[:, :1]))
        refiner.fresh_noise = False  # the stored buffers (the official randomize_noise=False)
        out["refined"] = refiner(render)
        refiner.fresh_noise = True  # compat: official, as built: fresh noise, seeded as recorded
        torch.manual_seed(script.FRESH_NOISE_SEED)
        out["refined_fresh"] = refiner(render)
        hook.remove()
        out["unet_logits"], out["unet_fresh_logits"] = logits
    return {"ref": ref, "out": out, "slots": slots, "camera": camera, "script": script}


def test_dinov2_tokens(parity):
    ref, feats = parity["ref"], parity["out"]["features"]
    idx = ref["dino.index"]
    ours = torch.stack([m.flatten(2).transpose(1, 2)[0, idx] for m in feats.local])  # [4, T, 768]
    assert rel(ours, ref["dino.tokens"]) <= TOL


def test_global_feature(parity):
    ref, feats = parity["ref"], parity["out"]["features"]
    assert rel(feats.global_token[0], ref["dino.global"]) <= TOL


def test_dpt_map(parity):
    ref, dpt = parity["ref"], parity["out"]["dpt"]
    assert tuple(dpt.shape) == (1, 256, 296, 296)
    assert rel(dpt.reshape(-1)[ref["dpt.index"]], ref["dpt.values"]) <= TOL


@pytest.mark.parametrize("layer", [0, 1])
def test_plane_layers(parity, layer):
    ref, g = parity["ref"], parity["out"]["gaussians"]
    n = 296 * 296
    idx = ref["gauss.index"] + layer * n
    ours = {
        "xyz": g.means[0, idx] * FLAME_X5,
        "colors": g.features[0, idx],
        "opacities": g.opacities[0, idx, None],
        "scales": g.scales[0, idx] * FLAME_X5,
        "rotations": g.quats[0, idx],
    }
    errors = {k: rel(v, ref[f"l{layer}.{k}"]) for k, v in ours.items()}
    assert max(errors.values()) <= TOL, errors


def test_expression_gaussians_at_the_source(parity):
    ref, g = parity["ref"], parity["out"]["expression"]
    idx = ref["g.index"]
    ours = {
        "colors": g.features[0, idx],
        "opacities": g.opacities[0, idx, None],
        "scales": g.scales[0, idx] * FLAME_X5,
        "rotations": g.quats[0, idx],
    }
    errors = {k: rel(v, ref[f"g.{k}"]) for k, v in ours.items()}
    assert max(errors.values()) <= TOL, errors


def test_style_unet_output(parity):
    ref, logits = parity["ref"], parity["out"]["unet_logits"]
    idx = ref["unet.index"]
    assert rel(logits.reshape(-1)[idx], ref["unet.logits"]) <= TOL
    assert rel(torch.sigmoid(logits).reshape(-1)[idx], ref["unet.values"]) <= TOL


def test_refined_image_from_the_same_features(parity):
    """``StyleUNetRefiner.forward(Render)`` is the official ``upsampler(gen_images)`` + the inference's
    ``clamp(0, 1)``: stored noise, and with ``compat: official`` fresh noise drawn as the official
    ``randomize_noise=True`` draws it (same torch seed -> same image)."""
    ref, out = parity["ref"], parity["out"]
    idx = ref["unet.index"]
    assert tuple(out["refined"].shape) == (1, 3, 512, 512)
    assert rel(out["refined"].reshape(-1)[idx], ref["unet.values"].clamp(0, 1)) <= TOL
    assert rel(out["unet_fresh_logits"].reshape(-1)[idx], ref["unet.fresh.logits"]) <= TOL
    fresh = torch.sigmoid(ref["unet.fresh.logits"]).clamp(0, 1)
    assert rel(out["refined_fresh"].reshape(-1)[idx], fresh) <= TOL
    # fresh noise really is fresh: the two official-noise logits differ from the stored-noise ones
    assert not torch.allclose(ref["unet.fresh.logits"], ref["unet.logits"])


# ------------------------------------------------------------------ FLAME: source and driven frames
def official_sigma(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The official rasterizer's covariance: unit-quaternion formula on raw (non-unit) values."""
    w, x, y, z = quats.double().unbind(-1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*quats.shape[:-1], 3, 3)
    return r @ torch.diag_embed(scales.double() ** 2) @ r.transpose(-1, -2)


def head_params(ref: dict, name: str) -> HeadParams:
    """Official FLAME parameters -> gshead HeadParams (pose = [global, jaw]; the global part is 0)."""
    pose = ref[f"flame.{name}.pose"]
    assert torch.count_nonzero(pose[:3]) == 0
    return HeadParams(
        identity=ref[f"flame.{name}.shape"][None], expression=ref[f"flame.{name}.exp"][None],
        jaw=pose[None, 3:], eyes=ref[f"flame.{name}.eyes"][None],
        rotation=torch.zeros(1, 3), translation=torch.zeros(1, 3),
    )


@pytest.fixture(scope="module")
def driven(parity, tmp_path_factory):
    from gshead.plugins.drivers.expression_gaussians import (
        ExpressionGaussiansConfig,
        ExpressionGaussiansDriver,
    )
    from gshead.plugins.headmodels.flame import FlameHeadConfig, FlameHeadModel

    ref, script = parity["ref"], parity["script"]
    if "flame.src.vertices" not in ref:
        pytest.skip("reference recorded without FLAME; re-record it")
    path = script.write_synthetic_flame(tmp_path_factory.mktemp("flame") / "FLAME_with_eye.pt")
    flame = FlameHeadModel(FlameHeadConfig(path=str(path)))
    driver = ExpressionGaussiansDriver(
        ExpressionGaussiansConfig(code_channels=256, hidden=256, layers=4, head_hidden=128, max_scale=0.01,
                                  compat="official"),
        BuildContext(feature_channels=32, head_model=flame, encoder_channels=(768,) * 4, encoder_global_channels=768),
    )
    driver.load_state_dict(parity["slots"]["driver"], strict=True)
    driver.eval()
    with torch.no_grad():
        rig = driver.prepare(parity["out"]["features"], head_params(ref, "src"), parity["camera"], None)
        frame = driver.drive(types.SimpleNamespace(rig=rig), head_params(ref, "drv"))
    return {"src": rig.dynamic, "drv": frame, "ref": ref, "driver": driver, "rig": rig, "flame": flame}


@pytest.mark.parametrize("frame", ["src", "drv"])
def test_expression_gaussian_positions_on_flame(driven, frame):
    """Positions: the official ``t_points`` (FLAMEModel x 5) at the source and at a driven
    expression, jaw and eye pose, against gshead's ``flame`` head model + binding (metres)."""
    ref, g = driven["ref"], driven[frame]
    official = ref[f"flame.{frame}.vertices"]
    assert tuple(g.means.shape) == (1, 5023, 3)
    assert rel(g.means[0] * FLAME_X5, official) <= TOL
    if frame == "drv":  # the driven frame really moves the vertices
        assert (ref["flame.drv.vertices"] - ref["flame.src.vertices"]).abs().max() > 0.05


@pytest.mark.parametrize("frame", ["src", "drv"])
def test_expression_gaussian_covariances_on_flame(driven, frame):
    """The official rotations and scales are fixed when driven: every frame draws the covariance
    the official rasterizer builds from the recorded non-unit quaternions; colours and opacities
    are the source's."""
    ref, g = driven["ref"], driven[frame]
    idx = ref["g.index"]
    rot = g.quats[0, idx].double()
    rot = rot / rot.norm(dim=-1, keepdim=True)
    from gshead.core.geometry import quat_to_rotmat

    r = quat_to_rotmat(rot)
    ours = r @ torch.diag_embed((g.scales[0, idx].double() * FLAME_X5) ** 2) @ r.transpose(-1, -2)
    assert rel(ours, official_sigma(ref["g.rotations"], ref["g.scales"])) <= TOL
    assert rel(g.features[0, idx], ref["g.colors"]) <= TOL
    assert rel(g.opacities[0, idx, None], ref["g.opacities"]) <= TOL


def test_camera_conversion_puts_the_official_plane_where_the_official_code_does(parity):
    """The converted camera's forward axis is the official plane direction (a check of the test's
    own conversion, so a failure above is the component's, not the camera's)."""
    ref = parity["ref"]
    script = _script()
    cam = official_camera(script.fixed_inputs()["transform"])
    forward = cam.world_to_camera[0, 2, :3]
    assert torch.allclose(forward, ref["plane.dir"], atol=1e-6)
    assert math.isclose(float(cam.world_to_camera[0, 2, 3]) * FLAME_X5, 14.0, rel_tol=1e-6)


def test_official_covariance_is_the_rasterizers_sigma_of_non_unit_quaternions():
    """``compat: official`` re-expresses the covariance the official CUDA rasterizer builds from a
    non-unit quaternion (unit formula applied to the raw values) as a unit quaternion + scales."""
    from gshead.core.geometry import quat_to_rotmat
    from gshead.plugins.drivers.expression_gaussians import official_covariance

    g = torch.Generator().manual_seed(3)
    q = torch.randn(50, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=0, keepdim=True)  # the official vertex-axis normalisation: norms ~ 0.28
    s = torch.rand(50, 3, generator=g, dtype=torch.float64) * 0.01 + 1e-3
    w, x, y, z = q.unbind(-1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(50, 3, 3)
    sigma = r @ torch.diag_embed(s**2) @ r.transpose(-1, -2)
    uq, us = official_covariance(q, s)
    assert torch.allclose(uq.norm(dim=-1), torch.ones(50, dtype=torch.float64), atol=1e-9)
    rot = quat_to_rotmat(uq)
    back = rot @ torch.diag_embed(us**2) @ rot.transpose(-1, -2)
    assert torch.allclose(back, sigma, atol=1e-12, rtol=1e-8)


# ------------------------------------------------------------- a driven frame with a global pose
class _Capture:
    """A rasterizer stand-in: keeps what ``drive_frames`` hands it (Gaussians, camera)."""

    def __call__(self, gaussians, camera, background=None):
        self.gaussians, self.camera = gaussians, camera
        ones = torch.ones(camera.batch_size, 1, 4, 4)
        return Render(ones.expand(-1, 32, -1, -1), ones, ones)


def _drive_track_frame(driven, parity, pose, driver=None):
    """The recorded official frame read as GAGAvatar_track output, driven through gshead's core
    (``poses_relative_to`` about the source camera, then ``drive_frames``)."""
    from gshead.core.pipeline import drive_frames
    from gshead.io.gagavatar_track import poses_relative_to, read_gagavatar_track

    record = {
        "shapecode": pose["pose.shape"].numpy(), "expcode": pose["pose.exp"].numpy(),
        "posecode": pose["pose.pose"].numpy(), "eyecode": pose["pose.eyes"].numpy(),
        "transform_matrix": pose["pose.transform"].numpy(),
    }
    seq = read_gagavatar_track({"frame_0": record})
    params = poses_relative_to(seq, parity["camera"])
    driver = driver or driven["driver"]
    with torch.no_grad():
        rig = driven["rig"] if driver is driven["driver"] else driver.prepare(
            parity["out"]["features"], head_params(driven["ref"], "src"), parity["camera"], None
        )
        avatar = types.SimpleNamespace(
            static=parity["out"]["gaussians"], rig=rig, source=head_params(driven["ref"], "src")
        )
        capture = _Capture()
        drive_frames(avatar, params, parity["camera"], driver, capture, lambda render: render.features[:, :3])
    return params, capture


@pytest.fixture(scope="module")
def global_pose(driven, parity):
    if not GLOBAL_POSE.is_file():
        pytest.skip(f"{GLOBAL_POSE} missing; record it with {SCRIPT.name}")
    pose = load_file(str(GLOBAL_POSE))
    assert pose["pose.pose"][:3].abs().max() > 0.1  # the frame really has a global pose
    params, capture = _drive_track_frame(driven, parity, pose)
    return {"pose": pose, "params": params, "capture": capture, "statics": parity["out"]["gaussians"].count}


def test_global_pose_reaches_the_driver_not_the_camera(global_pose):
    """``posecode[:3]`` became ``HeadParams.root``; the official driver applies it, so the camera
    handed to the rasterizer is the frame's own (the official ``cam_matrix``), unmoved by it."""
    pose, params, capture = global_pose["pose"], global_pose["params"], global_pose["capture"]
    assert torch.equal(params.root[0], pose["pose.pose"][:3])
    cam = official_camera(pose["pose.cam"])
    assert torch.allclose(capture.camera.world_to_camera, cam.world_to_camera, atol=1e-5)
    assert torch.allclose(capture.camera.intrinsics, cam.intrinsics)


def test_global_pose_expression_gaussian_positions(global_pose, driven):
    """Means: the official ``t_points`` for that frame (FLAME LBS with the global pose: the mesh
    turned about joint 0), as handed to the rasterizer."""
    pose, capture, n = global_pose["pose"], global_pose["capture"], global_pose["statics"]
    idx = pose["pose.g.index"]
    ours = capture.gaussians.means[0, n:][idx] * FLAME_X5
    assert rel(ours, pose["pose.g.xyz"]) <= TOL
    # not vacuous: without the global pose the vertices are far from where the official code puts them
    unturned = driven["flame"](global_pose["params"].replace(root=None)).vertices[0, idx] * FLAME_X5
    assert (unturned - pose["pose.g.xyz"]).abs().max() > 0.1


def test_global_pose_expression_gaussian_covariances(global_pose):
    """Rotations and scales stay as at the source (world-fixed, not turned with the mesh): the
    covariance is the official rasterizer's from the frame's recorded non-unit quaternions."""
    from gshead.core.geometry import quat_to_rotmat

    pose, capture, n = global_pose["pose"], global_pose["capture"], global_pose["statics"]
    idx = pose["pose.g.index"]
    g = capture.gaussians
    r = quat_to_rotmat(g.quats[0, n:][idx].double() / g.quats[0, n:][idx].double().norm(dim=-1, keepdim=True))
    ours = r @ torch.diag_embed((g.scales[0, n:][idx].double() * FLAME_X5) ** 2) @ r.transpose(-1, -2)
    assert rel(ours, official_sigma(pose["pose.g.rotations"], pose["pose.g.scales"])) <= TOL


@pytest.mark.parametrize("layer", [0, 1])
def test_global_pose_leaves_the_plane_gaussians(global_pose, layer):
    """The lifted plane Gaussians in that frame are where the source camera put them, in the
    official code and in what gshead hands its rasterizer."""
    pose, capture = global_pose["pose"], global_pose["capture"]
    idx = pose["pose.l.index"] + layer * 296 * 296
    assert rel(capture.gaussians.means[0, idx] * FLAME_X5, pose[f"pose.l{layer}.xyz"]) <= TOL


def test_global_pose_is_a_rotation_about_flame_joint_0(global_pose, driven):
    """Independent of the driver (roma on the recorded numbers): the official positions are gshead's
    global-pose-free FLAME mesh turned by R(posecode[:3]) about the official joint 0 (recorded), and
    gshead's root joint is that joint."""
    import roma

    pose, params = global_pose["pose"], global_pose["params"]
    idx = pose["pose.g.index"]
    mesh = driven["flame"](params.replace(root=None))
    j0 = pose["pose.joint0"].double()
    assert rel(mesh.joints[0, 0] * FLAME_X5, j0) <= TOL
    rot = roma.rotvec_to_rotmat(pose["pose.pose"][:3].double())
    turned = j0 + (mesh.vertices[0, idx].double() * FLAME_X5 - j0) @ rot.T
    assert rel(turned, pose["pose.g.xyz"]) <= TOL


def test_sane_mode_makes_the_global_pose_camera_motion_about_joint_0(global_pose, driven, parity):
    """``compat: sane`` (gshead's default) does not apply the root itself: ``drive_frames`` folds it
    into head pose about joint 0 (camera motion; the whole head turns), so the expression
    Gaussians land on the same pixels as the official ones, seen from a moved camera."""
    from gshead.core.geometry import project_points
    from gshead.plugins.drivers.expression_gaussians import (
        ExpressionGaussiansConfig,
        ExpressionGaussiansDriver,
    )

    sane = ExpressionGaussiansDriver(
        ExpressionGaussiansConfig(code_channels=256, hidden=256, layers=4, head_hidden=128, max_scale=0.01),
        BuildContext(feature_channels=32, head_model=driven["flame"], encoder_channels=(768,) * 4,
                     encoder_global_channels=768),
    )
    sane.load_state_dict(parity["slots"]["driver"], strict=True)
    sane.eval()
    assert not sane.applies_root and driven["driver"].applies_root
    pose, n = global_pose["pose"], global_pose["statics"]
    _params, capture = _drive_track_frame(driven, parity, pose, driver=sane)
    assert not torch.allclose(capture.camera.world_to_camera, global_pose["capture"].camera.world_to_camera)
    idx = pose["pose.g.index"]
    ours = project_points(capture.gaussians.means[:, n:][:, idx], capture.camera)
    official = project_points(pose["pose.g.xyz"][None] / FLAME_X5, official_camera(pose["pose.cam"]))
    assert (ours - official).abs().max() < 1e-2  # pixels (of 512)
