"""``--device cpu|cuda|auto`` on reconstruct, reenact, export, view and eval: the parsers, the
one-line refusal of cuda without CUDA, auto's choice, and that the pipeline's and a loaded
avatar's modules and tensors really move (checked on torch's ``meta`` device, which every build
has). The CUDA runs themselves are ``gpu`` tests, skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from gshead.cli import build_parser, main
from gshead.commands._device import DEVICES, loaded_to, pipeline_to, resolve_device
from gshead.core.errors import InputError
from gshead.core.pipeline import Pipeline
from gshead.io.avatar import load_avatar

COMMANDS = {
    "reconstruct": ["example:astronaut", "-o", "a.safetensors"],
    "reenact": ["a.safetensors", "--driver", "demo", "-o", "a.mp4"],
    "export": ["a.safetensors", "-o", "a.ply"],
    "view": ["a.safetensors"],
    "eval": ["dataset"],
}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def tiny(tiny_pipeline_yaml):
    return tiny_pipeline_yaml


@pytest.fixture(scope="module")
def avatar_file(tiny_avatar_file):
    return tiny_avatar_file


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_model_command_takes_device_defaulting_to_cpu(command):
    parser = build_parser()
    assert parser.parse_args([command, *COMMANDS[command]]).device == "cpu"
    for name in DEVICES:
        assert parser.parse_args([command, *COMMANDS[command], "--device", name]).device == name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_device_is_a_usage_error(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, *COMMANDS[command], "--device", "tpu"])
    assert exc.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cuda_without_cuda_is_one_line_and_status_2(
    command, avatar_file, tmp_path, capsys, no_cuda, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = [str(avatar_file) if a == "a.safetensors" else a for a in COMMANDS[command]]
    if command == "reconstruct":
        args[-1] = str(tmp_path / "new.safetensors")
    if command == "eval":
        args += ["-o", str(tmp_path / "results")]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([command, *args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gshead: error: --device cuda: CUDA is not available") and err.count("\n") == 1
    assert "--device cpu" in err  # what to use instead
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_auto_picks_cuda_only_when_it_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="expected one of cpu, cuda, auto"):
        resolve_device("gpu")


def test_pipeline_to_moves_every_module_component(tiny):
    pipeline = Pipeline.from_yaml(tiny)
    assert pipeline_to(pipeline, torch.device("cpu")) is pipeline
    pipeline_to(pipeline, torch.device("meta"))
    moved = 0
    for component in pipeline.components().values():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            assert all(t.device.type == "meta" for t in tensors), type(component).__name__
            moved += bool(tensors)
    assert moved >= 2  # the tiny pipeline has learned weights and head-model buffers


def test_loaded_to_moves_the_avatar_and_its_driving_components(avatar_file):
    loaded = load_avatar(avatar_file)
    assert loaded_to(loaded, torch.device("cpu")) is loaded
    moved = loaded_to(loaded, torch.device("meta"))
    assert all(t.device.type == "meta" for t in moved.avatar.tensors().values())
    for name in ("head_model", "driver", "rasterizer", "refiner"):
        module = getattr(moved, name)
        if isinstance(module, torch.nn.Module):
            assert all(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()]), name


def test_auto_on_a_machine_without_cuda_runs_on_the_cpu(avatar_file, tmp_path, capsys, no_cuda):
    out = tmp_path / "frames.png"
    assert (
        main(
            [
                "reenact",
                str(avatar_file),
                "--driver",
                "demo",
                "--frames",
                "4",
                "-o",
                str(out),
                "--device",
                "auto",
                "-q",
            ]
        )
        == 0
    )
    assert out.is_file()
    assert main(["export", str(avatar_file), "-o", str(tmp_path / "a.spz"), "--device", "auto"]) == 0


# ------------------------------------------------------------------------------------ CUDA runs
@pytest.mark.gpu
@cuda
def test_cuda_reconstruct_export_and_reenact_match_the_cpu(tiny, tmp_path):
    from gshead.io.ply import read_ply

    for device in ("cpu", "cuda"):
        avatar = tmp_path / f"{device}.safetensors"
        assert (
            main(
                [
                    "reconstruct",
                    "example:astronaut",
                    "-o",
                    str(avatar),
                    "--pipeline",
                    str(tiny),
                    "--device",
                    device,
                    "-q",
                ]
            )
            == 0
        )
        assert main(["export", str(avatar), "-o", str(tmp_path / f"{device}.ply"), "--device", device]) == 0
        assert (
            main(
                [
                    "reenact",
                    str(avatar),
                    "--driver",
                    "demo",
                    "--frames",
                    "4",
                    "-o",
                    str(tmp_path / f"{device}.png"),
                    "--device",
                    device,
                    "-q",
                ]
            )
            == 0
        )
    a, b = read_ply(tmp_path / "cpu.ply"), read_ply(tmp_path / "cuda.ply")
    assert torch.allclose(a.means, b.means, atol=1e-4)
    assert torch.allclose(a.features, b.features, atol=1e-3)
