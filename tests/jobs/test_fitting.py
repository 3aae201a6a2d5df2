"""Test-time fitting (``gshead.jobs.fitting``) and ``gshead reconstruct --fit-steps``."""

from __future__ import annotations

import pytest
import torch
import yaml

from gshead.cli import main
from gshead.io.avatar import load_avatar, save_avatar
from gshead.core.errors import InputError
from gshead.jobs.fitting import _driven_fields, fit_avatar, psnr, ssim
from gshead.core.pipeline import Pipeline
from gshead.testing import sample_image, tiny_pipeline

STEPS = 8
# The numba rasterizer: the same images as torch-tiles, fast enough to take a few optimiser steps.
FAST = {"rasterizer": {"name": "cpu"}}


def _weights(pipe: Pipeline) -> dict[str, torch.Tensor]:
    return {
        f"{kind}.{k}": v.detach().clone()
        for kind, module in pipe.trainable_modules().items()
        for k, v in module.state_dict().items()
    }


def _grad_flags(pipe: Pipeline) -> list[bool]:
    return [p.requires_grad for m in pipe.trainable_modules().values() for p in m.parameters()]


@pytest.fixture(scope="module")
def fitted():
    pipe = Pipeline.from_dict(tiny_pipeline(**FAST))
    image = sample_image(pipe.config.source_size)
    avatar = pipe.reconstruct(image)
    original = {k: v.clone() for k, v in avatar.tensors().items()}
    weights, flags = _weights(pipe), _grad_flags(pipe)
    result, report = fit_avatar(pipe, avatar, image, STEPS)
    return pipe, image, avatar, original, weights, flags, result, report


def test_fit_improves_source_view_psnr(fitted):
    pipe, image, avatar, _, _, _, result, report = fitted
    assert report.steps == STEPS and len(report.losses) == STEPS
    assert report.psnr_after > report.psnr_before + 0.2
    assert report.losses[-1] < report.losses[0]
    # the report's PSNRs are those of the avatars' refined source-view renders
    cam = avatar.camera.resized(image.shape[-1], image.shape[-2])
    with torch.no_grad():
        for a, value in ((avatar, report.psnr_before), (result, report.psnr_after)):
            assert psnr(pipe.forward_frames(a, a.source, cam)[1], image) == pytest.approx(value, abs=1e-4)


def test_fit_leaves_weights_input_avatar_and_grad_flags_unchanged(fitted):
    pipe, _, avatar, original, weights, flags, _, _ = fitted
    after = _weights(pipe)
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    assert _grad_flags(pipe) == flags
    assert all(torch.equal(v, original[k]) for k, v in avatar.tensors().items())


def test_fitted_avatar_keeps_structure_and_valid_values(fitted):
    pipe, _, avatar, _, _, _, result, report = fitted
    assert result.static.count == avatar.static.count
    assert result.rig.dynamic.count == avatar.rig.dynamic.count
    for name, tensor in avatar.tensors().items():
        assert result.tensors()[name].shape == tensor.shape, name
    for name in ("rig.binding.face_index", "rig.binding.barycentric", "rig.latent"):
        assert torch.equal(result.tensors()[name], avatar.tensors()[name]), name
    for name in ("source.expression", "source.identity", "camera.world_to_camera", "camera.intrinsics"):
        assert torch.equal(result.tensors()[name], avatar.tensors()[name]), name
    assert result.provenance == avatar.provenance
    for g in (result.static, result.rig.dynamic):
        assert (g.scales > 0).all() and ((g.opacities >= 0) & (g.opacities <= 1)).all()
        assert torch.allclose(g.quats.norm(dim=-1), torch.ones(g.quats.shape[:2]), atol=1e-5)
        assert g.features[..., :3].min() >= 0 and g.features[..., :3].max() <= 1
        assert not any(t.requires_grad for t in g.tensors().values())
    # mesh-bound reads only scales, opacities and features of its rig, and the binding offsets:
    # nothing else may change
    assert report.fitted == (
        "static.means", "static.quats", "static.scales", "static.opacities", "static.features",
        "rig.dynamic.scales", "rig.dynamic.opacities", "rig.dynamic.features", "rig.binding.offset",
    )  # fmt: skip
    shift = (result.rig.binding.offset - avatar.rig.binding.offset).norm(dim=-1)
    assert 0 < float(shift.max()) < 0.05 * _head(pipe)  # moved, and kept near by the surface prior
    assert torch.equal(result.rig.dynamic.means, avatar.rig.dynamic.means)
    assert torch.equal(result.rig.dynamic.quats, avatar.rig.dynamic.quats)
    assert not torch.equal(result.rig.dynamic.features, avatar.rig.dynamic.features)
    assert not torch.equal(result.static.features, avatar.static.features)
    assert not torch.equal(result.static.means, avatar.static.means)


def test_fitted_avatar_round_trips_and_drives(fitted, tmp_path):
    pipe, _, _, _, _, _, result, _ = fitted
    path = tmp_path / "fitted.safetensors"
    save_avatar(path, result, pipe)
    loaded = load_avatar(path)
    assert all(torch.equal(loaded.avatar.tensors()[k], v) for k, v in result.tensors().items())
    params = pipe.head_model.neutral(2).replace(jaw=torch.tensor([[0.0, 0, 0], [0.4, 0, 0]]))
    frames = loaded.session().render(params)  # contract checks run on every stage
    assert torch.equal(frames, pipe.session(result).render(params))
    assert frames.shape == (2, 3, pipe.config.render_size, pipe.config.render_size)
    assert not torch.equal(frames[0], frames[1])  # opening the jaw still changes the image


def test_zero_steps_returns_the_avatar_itself(fitted):
    pipe, image, avatar, _, _, _, _, _ = fitted
    result, report = fit_avatar(pipe, avatar, image, 0)
    assert result is avatar
    assert report.steps == 0 and report.losses == () and report.psnr_after == report.psnr_before


def test_fit_is_deterministic(fitted):
    pipe, image, avatar, _, _, _, _, _ = fitted
    a, ra = fit_avatar(pipe, avatar, image, 3)
    b, rb = fit_avatar(pipe, avatar, image, 3)
    assert ra.losses == rb.losses
    assert all(torch.equal(a.tensors()[k], v) for k, v in b.tensors().items())


def test_surface_prior_keeps_centres_near_reconstruction(fitted):
    pipe, image, avatar, _, _, _, _, _ = fitted
    moved = {}
    for weight in (0.0, 1e4):
        result, _ = fit_avatar(pipe, avatar, image, 3, lr=0.05, prior_weight=weight)
        moved[weight] = (result.static.means - avatar.static.means).norm(dim=-1).mean().item()
    assert moved[1e4] < 0.5 * moved[0.0]


def test_appearance_prior_keeps_features_near_reconstruction(fitted):
    pipe, image, avatar, _, _, _, _, _ = fitted
    change = {}
    for weight in (0.0, 1e3):
        result, _ = fit_avatar(pipe, avatar, image, 3, appearance_weight=weight)
        change[weight] = (result.static.features - avatar.static.features).abs().mean().item()
    assert 0 < change[1e3] < 0.5 * change[0.0]


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": -1}, {"steps": 1.5}, {"steps": 2, "lr": 0.0}, {"steps": 2, "lr": float("nan")},
     {"steps": 2, "prior_weight": -1.0}, {"steps": 2, "appearance_weight": float("inf")},
     {"steps": 2, "ssim_weight": 2.0}],
)  # fmt: skip
def test_bad_arguments_raise_input_error(fitted, kwargs):
    pipe, image, avatar, _, _, _, _, _ = fitted
    with pytest.raises(InputError):
        fit_avatar(pipe, avatar, image, **kwargs)


def test_bad_image_raises_input_error(fitted):
    pipe, image, avatar, _, _, _, _, _ = fitted
    with pytest.raises(InputError, match=r"\[1, 3, H, W\]"):
        fit_avatar(pipe, avatar, image[0], 2)
    with pytest.raises(InputError, match="aspect ratio"):
        fit_avatar(pipe, avatar, image[..., :40], 2)


@pytest.mark.parametrize(
    "driver, expected",
    [
        ({"name": "mesh-bound"}, (("scales", "opacities", "features"), True)),
        ({"name": "expression-gaussians"}, (("quats", "scales", "opacities", "features"), True)),
        (
            {"name": "light-control", "anchors_per_face": 1},
            (("quats", "scales", "opacities", "features"), True),
        ),
    ],
)
def test_driven_fields_are_what_drive_reads(driver, expected):
    pipe = Pipeline.from_dict(tiny_pipeline(driver=driver, **FAST))
    avatar = pipe.reconstruct(sample_image(pipe.config.source_size))
    assert _driven_fields(pipe, avatar) == expected


def _head(pipe) -> float:
    t = pipe.head_model.template
    return float((t.amax(0) - t.amin(0)).norm())


def test_fitted_positions_live_in_the_triangles_frames_and_follow_the_expression(fitted):
    """What the fit moved on the rig is a fixed offset in each Gaussian's triangle frame: posed for
    another expression, the fitted Gaussian sits at the same offset in that triangle's new frame."""
    from gshead.core.geometry import posed_frames

    pipe, _, avatar, _, _, _, result, _ = fitted
    hm = pipe.head_model
    shift = result.rig.binding.offset - avatar.rig.binding.offset  # [M, 3]
    assert float(shift.norm(dim=-1).max()) > 0
    params = avatar.source.replace(jaw=torch.tensor([[0.5, 0.0, 0.0]]))
    with torch.no_grad():
        before = pipe.driver.drive(avatar, params).means  # [1, M, 3]
        after = pipe.driver.drive(result, params).means
        _, rot = posed_frames(
            avatar.rig.binding, hm(params.replace(identity=avatar.source.identity)).vertices, hm.faces
        )
    moved = (rot @ shift[None, :, :, None])[..., 0]  # the local shift in the posed frames
    assert torch.allclose(after - before, moved, atol=1e-6)
    opened = (
        (rot - posed_frames(avatar.rig.binding, hm(avatar.source).vertices, hm.faces)[1]).abs().amax((-1, -2))
    )
    assert float(opened.max()) > 0.05  # the jaw really turned some triangles


def test_surface_prior_keeps_the_rig_near_its_triangles(fitted):
    pipe, image, avatar, _, _, _, _, _ = fitted
    moved = {}
    for weight in (0.0, 1e4):
        result, _ = fit_avatar(pipe, avatar, image, 3, lr=0.05, prior_weight=weight)
        moved[weight] = (result.rig.binding.offset - avatar.rig.binding.offset).norm(dim=-1).mean().item()
    assert 0 < moved[1e4] < 0.5 * moved[0.0]


def test_ssim_reference_values():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 24, 24, generator=g)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ssim(x, noisy).item() < 0.9
    assert ssim(x, noisy).item() == pytest.approx(ssim(noisy, x).item(), abs=1e-6)
    assert psnr(x, x) == float("inf")
    assert psnr(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.1)) == pytest.approx(20.0)


@pytest.fixture(scope="module")
def pipeline_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline(**FAST)), encoding="utf-8")
    return path


def test_cli_reconstruct_with_fit_steps(pipeline_yaml, tmp_path, capsys):
    plain, fit = tmp_path / "plain.safetensors", tmp_path / "fit.safetensors"
    base = ["reconstruct", "example:astronaut", "--pipeline", str(pipeline_yaml), "-q"]
    assert main([*base, "-o", str(plain)]) == 0
    assert "PSNR" not in capsys.readouterr().err
    assert main([*base, "-o", str(fit), "--fit-steps", "3", "--fit-lr", "0.02"]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("fit: 3 steps in "))
    before, after = (float(v) for v in line.split("PSNR ")[1].removesuffix(" dB").split(" -> "))
    assert after > before
    a, b = load_avatar(plain).avatar, load_avatar(fit).avatar
    assert a.static.count == b.static.count and torch.equal(
        a.rig.binding.face_index, b.rig.binding.face_index
    )
    assert not torch.equal(a.static.features, b.static.features)


@pytest.mark.parametrize("flag", [["--fit-steps", "-2"], ["--fit-lr", "0"]])
def test_cli_rejects_bad_fit_arguments(pipeline_yaml, tmp_path, capsys, flag):
    out = tmp_path / "bad.safetensors"
    args = ["reconstruct", "example:astronaut", "--pipeline", str(pipeline_yaml), "-q", "-o", str(out), *flag]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gshead: error: --fit-")
    assert not out.exists()
