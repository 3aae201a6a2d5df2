"""Hostile inputs through the real ``gshead`` command: one line, bounded, no traceback, no leftovers.

Each case runs ``python -m gshead`` in a subprocess (small inputs) and checks the exit status,
that stderr is exactly one line starting ``gshead: error:`` (or the interrupted line) of at most
300 characters, and that the output folder holds no partial file. File-system errors that need
a read-only or full disk (root ignores permissions here) are raised by a patched writer in-process.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from gshead.cli import main
from gshead.testing import tiny_pipeline

INTERRUPTED = "gshead: interrupted; no partial output was kept"
LIMIT = 300


def _gshead(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gshead", *args], capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )


def _one_line(stderr: str, start: str = "gshead: error: ") -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[:2000]
    line = lines[0]
    assert line.startswith(start), line
    assert len(line) <= LIMIT, len(line)
    assert "Traceback" not in stderr
    return line


def _fails(*args: str, env: dict | None = None, folder: Path | None = None) -> str:
    run = _gshead(*args, env=env)
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    line = _one_line(run.stderr)
    if folder is not None:
        assert not any(p.name.startswith(".") or "partial" in p.name for p in folder.iterdir()), list(folder.iterdir())
    return line


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def pipeline_yaml(work) -> Path:
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def avatar_file(work, pipeline_yaml) -> Path:
    out = work / "avatar.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(pipeline_yaml), "-q"]) == 0
    return out


def _tampered(source: Path, target: Path, meta: dict | None = None, tensors: dict | None = None) -> Path:
    with safe_open(str(source), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        metadata = dict(f.metadata())
    stored.update(tensors or {})
    metadata.update(meta or {})
    save_file(stored, str(target), metadata=metadata)
    return target


# -- YAML ------------------------------------------------------------------------------------------
BINARY = b"seed: \xff\xfe\x00\x01\x80\x81 encoder: {name: \xc3\x28}\n"


def test_binary_yaml_reconstruct_pipeline(work):
    bad = work / "binary-pipeline.yaml"
    bad.write_bytes(BINARY)
    out = work / "bin-out"
    out.mkdir()
    line = _fails("reconstruct", "example:astronaut", "--pipeline", str(bad), "-o", str(out / "a.safetensors"), "-q", folder=out)
    assert bad.name in line and "UTF-8" in line
    assert not list(out.iterdir())


def test_binary_yaml_train(work):
    bad = work / "binary-train.yaml"
    bad.write_bytes(BINARY)
    line = _fails("train", str(bad), "-o", str(work / "train-run"), "-q")
    assert bad.name in line and "UTF-8" in line
    assert not (work / "train-run").exists()


def test_binary_yaml_ablate(work):
    bad = work / "binary-matrix.yaml"
    bad.write_bytes(BINARY)
    line = _fails("ablate", str(bad), "-o", str(work / "ablate-run"))
    assert bad.name in line and "UTF-8" in line


def test_yaml_alias_bomb_fails_fast_with_the_cap(work):
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    lines.append("seed: *a9")
    bomb = work / "bomb.yaml"
    bomb.write_text("\n".join(lines), encoding="utf-8")
    start = time.monotonic()
    line = _fails("reconstruct", "example:astronaut", "--pipeline", str(bomb), "-o", str(work / "bomb.safetensors"), "-q")
    assert time.monotonic() - start < 60
    assert "100000" in line and bomb.name in line


def test_huge_seed_is_one_short_line(work):
    config = tiny_pipeline()
    config["seed"] = 10**400
    path = work / "seed.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    line = _fails("reconstruct", "example:astronaut", "--pipeline", str(path), "-o", str(work / "seed.safetensors"), "-q")
    assert "seed" in line and "2147483647" in line


def test_train_batch_size_cap(work):
    path = work / "batch.yaml"
    path.write_text("pipeline: default\nbatch_size: 100000000\n", encoding="utf-8")
    line = _fails("train", str(path), "-o", str(work / "batch-run"), "-q")
    assert "batch_size" in line and "4096" in line


# -- avatar and weights metadata ---------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("field", "value"),
    [("pipeline", DEEP), ("pipeline", "[1, 2]"), ("encoder_channels", '{"a": 1}'), ("camera_size", '"big"')],
    ids=["pipeline-deep", "pipeline-list", "encoder-channels-dict", "camera-size-string"],
)
def test_hostile_avatar_metadata(work, avatar_file, field, value):
    bad = _tampered(avatar_file, work / f"meta-{field}-{len(value)}.safetensors", meta={field: value})
    out = work / f"meta-out-{field}-{len(value)}"
    out.mkdir()
    line = _fails("reenact", str(bad), "--driver", "demo", "--frames", "4", "--size", "32", "-o", str(out / "x.mp4"), "-q", folder=out)
    assert bad.name in line and field in line
    assert not list(out.iterdir())


def test_face_index_out_of_range(work, avatar_file):
    with safe_open(str(avatar_file), "pt") as f:
        index = f.get_tensor("rig.binding.face_index").clone()
    index[0], index[-1] = 10**9, -(10**9)
    bad = _tampered(avatar_file, work / "face-index.safetensors", tensors={"rig.binding.face_index": index})
    out = work / "face-out"
    out.mkdir()
    line = _fails("reenact", str(bad), "--driver", "demo", "--frames", "4", "--size", "32", "-o", str(out / "x.mp4"), "-q", folder=out)
    assert "face_index" in line and bad.name in line
    assert not list(out.iterdir())


@pytest.mark.parametrize("value", [DEEP, "[1, 2]"], ids=["deep", "list"])
def test_hostile_weights_metadata(work, pipeline_yaml, value):
    from gshead.io.weights import WEIGHTS_FORMAT, WEIGHTS_FORMAT_VERSION

    bad = work / f"weights-{len(value)}.safetensors"
    meta = {"format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION, "pipeline": value, "source": "x"}
    save_file({"encoder.weight": torch.zeros(1)}, str(bad), metadata=meta)
    out = work / f"weights-out-{len(value)}"
    out.mkdir()
    line = _fails(
        "reconstruct", "example:astronaut", "--pipeline", str(pipeline_yaml), "--weights", str(bad),
        "-o", str(out / "a.safetensors"), "-q", folder=out,
    )
    assert bad.name in line and "pipeline" in line
    assert not list(out.iterdir())


# -- file system -------------------------------------------------------------------------------------
def test_output_under_a_regular_file(work, pipeline_yaml):
    blocker = work / "not-a-folder"
    blocker.write_text("x")
    line = _fails("reconstruct", "example:astronaut", "--pipeline", str(pipeline_yaml), "-o", str(blocker / "a.safetensors"), "-q")
    assert "not-a-folder" in line
    assert blocker.read_text() == "x"


def test_cache_dir_that_is_a_file_fails_at_once(work):
    blocker = work / "cache-file"
    blocker.write_text("x")
    start = time.monotonic()
    line = _fails("plugins", env={"GSHEAD_CACHE_DIR": str(blocker)})
    assert "GSHEAD_CACHE_DIR" in line and time.monotonic() - start < 60


@pytest.mark.parametrize(
    "raised",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        "safetensors",
    ],
    ids=["ENOSPC", "EROFS", "SafetensorError"],
)
def test_full_or_read_only_file_system_in_process(tmp_path, pipeline_yaml, monkeypatch, capsys, raised):
    import safetensors.torch
    from safetensors import SafetensorError

    if raised == "safetensors":
        raised = SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        if isinstance(raised, OSError):
            raise OSError(raised.errno, raised.strerror, str(filename))
        raise raised

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    out = tmp_path / "a.safetensors"
    capsys.readouterr()
    code = main(["reconstruct", "example:astronaut", "--pipeline", str(pipeline_yaml), "-o", str(out), "-q"])
    assert code == 2
    line = _one_line(capsys.readouterr().err)
    assert ("space" in line) or ("read-only" in line), line
    assert list(tmp_path.iterdir()) == []


def test_long_messages_are_shortened_in_the_middle(monkeypatch, capsys):
    from gshead import cli
    from gshead.core.errors import InputError

    def boom(argv=None):
        raise InputError("start " + "x" * 5000 + " end")

    monkeypatch.setattr(cli, "build_parser", lambda: _Parser(boom))
    assert cli.main([]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "start" in line and line.endswith("end") and "..." in line


class _Parser:
    def __init__(self, func):
        self.func = func

    def parse_args(self, argv):
        return type("Args", (), {"func": staticmethod(self.func)})()


def test_signal_handlers_are_restored(monkeypatch):
    from gshead import cli

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    monkeypatch.setattr(cli, "build_parser", lambda: _Parser(lambda args: 0))
    assert cli.main([]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


# -- signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)], ids=["TERM", "HUP", "INT"]
)
def test_signal_during_reenact_leaves_nothing(work, avatar_file, signum, code):
    out = work / f"signal-{signum}"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gshead", "reenact", str(avatar_file), "--driver", "demo", "--frames", "2000",
         "--size", "32", "-o", str(out / "x.mp4"), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(out.iterdir()) and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert any(out.iterdir()), "the temporary output never appeared"
        time.sleep(0.3)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err[-2000:]
    assert _one_line(err, INTERRUPTED) == INTERRUPTED
    assert list(out.iterdir()) == []


def test_ctrl_c_during_start_up_is_one_line(work):
    proc = subprocess.Popen(
        [sys.executable, "-m", "gshead", "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.4)  # inside the imports (torch and the plugins take longer than this)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the command finished before the signal came")
    # 130, or (rarely, when the signal lands inside an extension module's import under load) the
    # interpreter re-raising SIGINT after main returned: a shell reports both as 130.
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    assert _one_line(err, INTERRUPTED) == INTERRUPTED
