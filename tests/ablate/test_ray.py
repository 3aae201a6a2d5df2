"""``gshead ablate --ray``: the variants as tasks on a real local Ray cluster.

The same rows as local workers, failure rows, resuming, per-variant resources, one-line errors, and
a training variant whose Ray worker is killed mid-training resuming from its checkpoint. Every
matrix is tiny (32-pixel pipelines, one timed frame) so the file runs in well under a minute and a
half on 2 cores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from gshead.ablate import ray_runner, runner
from gshead.ablate.matrix import load_matrix
from gshead.cli import main
from gshead.testing import tiny_pipeline

SMALL = {"frames": 1, "warmup": 0, "repeats": 1, "render_sizes": [32]}
TIMING = ("reconstruct_s", "frame_s@", "fps@")


def _write_matrix(path: Path, axes: dict, base: dict | None = None, **extra) -> Path:
    extra.setdefault("measure", SMALL)
    base = base or tiny_pipeline(rasterizer={"name": "cpu"})
    path.write_text(yaml.safe_dump({"base": base, "axes": axes, **extra}))
    return path


def _failing_matrix(path: Path) -> Path:
    """Two variants: ``identity`` succeeds, ``light-unet-1-4`` fails its parameter budget."""
    return _write_matrix(
        path, {"refiner": [{"name": "identity"}, {"name": "light-unet", "widths": [4], "max_parameters": 1}]}
    )


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def test_bad_matrix_resources_are_one_line(tmp_path, capsys):
    matrix = _write_matrix(tmp_path / "m.yaml", {"lifter.resolution": [8]}, resources={"cpus": 0})
    assert main(["ablate", str(matrix), "-o", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gshead: error:") and "resources.cpus" in err and "\n" not in err


def test_missing_ray_and_unreachable_address_are_one_line(tmp_path, monkeypatch, capsys):
    matrix = _write_matrix(tmp_path / "m.yaml", {"lifter.resolution": [8]})
    out = str(tmp_path / "out")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ray.is_initialized():
        pytest.skip("needs a process not yet connected to Ray")
    assert main(["ablate", str(matrix), "-o", out, "--ray", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"gshead: error: --ray 127.0.0.1:{port}: cannot reach a Ray cluster")
        and "\n" not in err
    )
    assert main(["ablate", str(matrix), "-o", out, "--ray=not-an-address"]) == 2
    assert "not a cluster address" in capsys.readouterr().err
    assert main(["ablate", str(matrix), "-o", out, "--ray", "--workers", "2"]) == 2
    assert "--workers 2 with --ray" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray -> ImportError
    assert main(["ablate", str(matrix), "-o", out, "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gshead: error: --ray: ray is not installed") and 'pip install -e ".[ray]"' in err
    assert "\n" not in err and not ray.is_initialized()


def test_without_an_address_the_command_starts_and_stops_a_local_ray(tmp_path, capsys):
    if ray.is_initialized():
        pytest.skip("needs a process not yet connected to Ray")
    matrix = _write_matrix(tmp_path / "m.yaml", {"lifter.resolution": [8]})
    runner.run_matrix(load_matrix(matrix), tmp_path / "out", plots=False)  # done: the Ray run skips it
    assert main(["ablate", str(matrix), "-o", str(tmp_path / "out"), "-q", "--no-plots", "--ray"]) == 0
    assert "0 run, 1 skipped" in capsys.readouterr().err
    assert not ray.is_initialized()  # the local Ray it started is shut down again


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster with 2 CPUs for the tests below (``--ray`` without an address joins it)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_and_cli_ray(tmp_path_factory, cluster):
    """The failing matrix run by the local runner and by ``gshead ablate --ray``:
    (matrix, local output, Ray output, exit status)."""
    root = tmp_path_factory.mktemp("same")
    matrix = _failing_matrix(root / "m.yaml")
    runner.run_matrix(load_matrix(matrix), root / "local")
    status = main(["ablate", str(matrix), "-o", str(root / "ray"), "-q", "--ray"])
    return matrix, root / "local", root / "ray", status


def test_ray_rows_match_the_local_runner(local_and_cli_ray):
    matrix, local, on_ray, status = local_and_cli_ray
    assert status == 1  # one variant failed
    ids = [v.id for v in load_matrix(matrix).variants]
    rows_local, rows_ray = _csv(local / "results.csv"), _csv(on_ray / "results.csv")
    assert [r["id"] for r in rows_ray] == ids and [r["status"] for r in rows_ray] == ["ok", "failed"]
    assert _untimed(rows_ray) == _untimed(rows_local)  # parameters, Gaussians, PSNR, errors
    assert rows_ray[0]["quality.self_psnr"] == rows_local[0]["quality.self_psnr"] != ""
    bad = json.loads((on_ray / "variants" / f"{ids[1]}.json").read_text())
    assert bad["status"] == "failed" and "max_parameters" in bad["error"] and "\n" not in bad["error"]
    assert "ConfigError" in (on_ray / "variants" / bad["traceback"]).read_text()
    ok = json.loads((on_ray / "variants" / f"{ids[0]}.json").read_text())
    assert ok["threads"] == 1  # resources.cpus defaults to 1 per variant
    for name in ("results.md", "fps_vs_params.png", "quality_vs_encoder.png"):
        assert (on_ray / name).is_file() and (local / name).is_file()
    assert "1 variant(s) failed" in (on_ray / "results.md").read_text()


def test_rerun_skips_finished_variants_and_retries_failed_ones(local_and_cli_ray, cluster):
    matrix, _, on_ray, _ = local_and_cli_ray
    ids = [v.id for v in load_matrix(matrix).variants]
    stamp = (on_ray / "variants" / f"{ids[0]}.json").stat().st_mtime_ns
    summary = ray_runner.run_on_ray(matrix, on_ray, plots=False)
    assert summary.skipped == [ids[0]] and summary.ran == [ids[1]] and summary.failed == [ids[1]]
    assert (on_ray / "variants" / f"{ids[0]}.json").stat().st_mtime_ns == stamp
    assert [r["id"] for r in summary.results] == ids
    assert ray.is_initialized()  # an existing connection is left open
    # --force --only reruns just that variant, with the CPUs given on the command line
    args = ["ablate", str(matrix), "-o", str(on_ray), "-q", "--no-plots", "--ray", "--force"]
    assert main([*args, "--only", ids[0], "--cpus-per-variant", "2"]) == 0
    again = json.loads((on_ray / "variants" / f"{ids[0]}.json").read_text())
    assert again["status"] == "ok" and again["threads"] == 2
    assert (on_ray / "variants" / f"{ids[0]}.json").stat().st_mtime_ns != stamp


def test_resources_come_from_the_matrix_and_the_flags(tmp_path, cluster, capsys):
    matrix = _write_matrix(tmp_path / "m.yaml", {"lifter.resolution": [8]}, resources={"cpus": 2, "gpus": 0})
    loaded = load_matrix(matrix)
    assert loaded.matrix.resources.cpus == 2
    assert ray_runner.resources_for(loaded) == ray_runner.RayResources(cpus=2, gpus=0)
    assert ray_runner.resources_for(loaded, cpus=0.5).threads == 1
    assert ray_runner.resources_for(loaded, cpus=3.7, gpus=1).threads == 3
    # more than any node has: one line, exit 2, nothing run
    assert (
        main(["ablate", str(matrix), "-o", str(tmp_path / "out"), "--ray", "--cpus-per-variant", "64"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("gshead: error: --cpus-per-variant 64:") and "\n" not in err
    assert main(["ablate", str(matrix), "-o", str(tmp_path / "out"), "--ray", "--gpus-per-variant", "1"]) == 2
    assert "largest Ray node has 0 GPUs" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("variants/*.json"))


# ----------------------------------------------------------------------------------- training
def _train_pipeline() -> dict:
    return tiny_pipeline(
        headmodel={"name": "procedural", "subdivisions": 4, "pose_correctives": False},
        source_size=32,
        render_size=32,
        encoder={"name": "tiny-conv", "channels": 8},
        lifter={"name": "single-plane", "resolution": 8},
        rasterizer={"name": "cpu"},
    )


def _variant_workers() -> list[int]:
    """PIDs of the Ray workers running a variant task right now (Ray names them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::ray_variant"):
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the Ray worker through /proc")
def test_a_killed_training_task_resumes_from_its_checkpoint(tmp_path, cluster, monkeypatch):
    pytest.importorskip("gshead.data")
    from gshead.data import write_synthetic_dataset

    steps = 10
    write_synthetic_dataset(
        tmp_path / "synth", identities=3, frames=3, size=32, seed=0, splits=(1, 0, 0), progress=False
    )
    train = {
        "data": {"root": "synth", "targets": 2},  # relative: the task runs in the driver's folder
        "batch_size": 1,
        "optimizer": {"lr": 1e-2},
        "checkpoint_every": 1,
        "keep_last": 100,
        "log_every": 1,
        "image_every": 0,
        "point_samples": 64,
        "device": "cpu",
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    matrix = _write_matrix(
        tmp_path / "m.yaml",
        {"lifter.resolution": [8]},
        base=_train_pipeline(),
        train={"steps": steps, "config": "train.yaml"},
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    checkpoints = runner.train_dir_of(out, "8") / "checkpoints"
    outcome: dict = {}

    def drive():
        try:
            outcome["summary"] = ray_runner.run_on_ray(matrix, "out", plots=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    deadline = time.monotonic() + 120
    while not (checkpoints / "step-000002" / "model.safetensors").is_file():
        assert driver.is_alive(), outcome
        assert time.monotonic() < deadline, "the training variant made no second checkpoint"
        time.sleep(0.05)
    workers = _variant_workers()
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)  # the node's worker dies mid-training
    killed_at = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    early = {name: (checkpoints / name / "model.safetensors").stat() for name in killed_at}
    assert f"step-{steps:06d}" not in killed_at and not runner.result_path(out, "8").exists()
    driver.join(timeout=150)
    assert not driver.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    assert summary.failed == [] and summary.ran == ["8"]  # Ray retried the task and it finished
    result = json.loads(runner.result_path(out, "8").read_text())
    assert result["status"] == "ok" and result["quality"]["train_loss"] == result["quality"]["train_loss"]
    # resumed, not restarted: the checkpoints written before the kill are untouched, the rest follow
    for name, stat in early.items():
        now = (checkpoints / name / "model.safetensors").stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
    names = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert names == [f"step-{s:06d}" for s in range(1, steps + 1)]
    with open(runner.train_dir_of(out, "8") / "scalars.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, steps + 1))
