"""Hostile outputs through the real CLI (issue 19, Deliver 1).

Each refused case runs ``python -m gshead`` in a subprocess and checks: exit code 2, one stderr
line ``gshead: error: ...`` naming the output, no traceback, no partial or temporary file left
beside it, and every input byte-identical afterwards. New files follow the umask.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gshead.testing import tiny_pipeline

TIMEOUT = 300


def _gshead(*args: str, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gshead", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        umask=-1 if umask is None else umask,
        check=False,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with a tiny pipeline YAML, a portrait PNG and an avatar built from it."""
    folder = tmp_path_factory.mktemp("hostile-outputs")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 90, 60)).save(folder / "a.png")
    done = _gshead(
        "reconstruct", "example:astronaut", "-o", "avatar.safetensors",
        "--pipeline", "tiny.yaml", "--fit-steps", "0", "-q",
        cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = _gshead("export", "avatar.safetensors", "-o", "avatar.ply", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


def _refused(work: Path, args: list[str], names: str, inputs: list[str]) -> str:
    """Run ``gshead *args`` in ``work``; assert it is refused cleanly and return the error line."""
    before = _listing(work)
    hashes = {name: _digest(work / name) for name in inputs}
    done = _gshead(*args, cwd=work)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gshead: error: "), lines
    assert names in lines[0], lines
    assert _listing(work) == before, "a partial or temporary file was left behind"
    for name, digest in hashes.items():
        assert _digest(work / name) == digest, f"{name} changed"
    return lines[0]


def test_reconstruct_onto_its_input_image(work):
    line = _refused(work, ["reconstruct", "a.png", "-o", "a.png", "-q"], "a.png", ["a.png"])
    assert ".safetensors" in line


def test_reconstruct_onto_its_weights_file(work):
    args = ["reconstruct", "a.png", "--weights", "avatar.safetensors", "-o", "avatar.safetensors", "-q"]
    line = _refused(work, args, "avatar.safetensors", ["avatar.safetensors", "a.png"])
    assert "same file" in line


def test_export_onto_a_hard_link_of_its_avatar(work):
    link = work / "hard.ply"
    os.link(work / "avatar.safetensors", link)
    try:
        line = _refused(work, ["export", "hard.ply", "-o", "hard.ply"], "hard.ply", ["avatar.safetensors"])
        assert "same file" in line
        line = _refused(work, ["export", "avatar.safetensors", "-o", "hard.ply"], "hard.ply", ["avatar.safetensors"])
        assert "same file" in line
    finally:
        link.unlink()


def test_export_onto_a_symlink_of_its_avatar(work):
    link = work / "soft.ply"
    link.symlink_to("avatar.safetensors")
    try:
        line = _refused(work, ["export", "avatar.safetensors", "-o", "soft.ply"], "soft.ply", ["avatar.safetensors"])
        assert "same file" in line
    finally:
        link.unlink()


def test_export_a_ply_onto_itself(work):
    _refused(work, ["export", "avatar.ply", "-o", "avatar.ply"], "avatar.ply", ["avatar.ply"])


@pytest.mark.parametrize(
    "args",
    [
        ["reconstruct", "a.png", "-q", "-o"],
        ["export", "avatar.safetensors", "-o"],
        ["track", "a.png", "-q", "-o"],
        ["reenact", "avatar.safetensors", "--driver", "demo", "--frames", "2", "-q", "-o"],
    ],
    ids=["reconstruct", "export", "track", "reenact"],
)
def test_device_node_is_not_replaced(work, args):
    _refused(work, [*args, "/dev/null"], "/dev/null", ["avatar.safetensors", "a.png"])
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_output_onto_a_folder(work):
    folder = work / "out.ply"
    folder.mkdir()
    try:
        line = _refused(work, ["export", "avatar.safetensors", "-o", "out.ply"], "out.ply", ["avatar.safetensors"])
        assert "folder" in line
        assert folder.is_dir() and not any(folder.iterdir())
    finally:
        folder.rmdir()


@pytest.mark.parametrize(
    "args",
    [
        ["reconstruct", "a.png", "-q", "-o", "-"],
        ["export", "avatar.safetensors", "-o", "-"],
        ["reenact", "avatar.safetensors", "--driver", "demo", "--frames", "2", "-q", "-o", "-"],
    ],
    ids=["reconstruct", "export", "reenact"],
)
def test_standard_output_is_refused(work, args):
    line = _refused(work, args, "-", ["avatar.safetensors", "a.png"])
    assert "standard output is not supported" in line


def test_reconstruct_to_a_text_file(work):
    line = _refused(work, ["reconstruct", "a.png", "-o", "a.txt", "-q"], "a.txt", ["a.png"])
    assert ".safetensors" in line


def test_track_to_a_png(work):
    line = _refused(work, ["track", "a.png", "-o", "seq.png", "-q"], "seq.png", ["a.png"])
    assert ".safetensors" in line


@pytest.mark.parametrize("name", ["x.gif", "x.txt", "x", "x.webm"])
def test_reenact_to_an_unsupported_container(work, name):
    args = ["reenact", "avatar.safetensors", "--driver", "demo", "--frames", "2", "-q", "-o", name]
    line = _refused(work, args, name, ["avatar.safetensors"])
    assert ".mp4" in line and ".png" in line
    assert "libx264" not in line and "encoder" not in line


def test_import_onto_its_checkpoint(work):
    checkpoint = work / "ckpt.safetensors"
    checkpoint.write_bytes(b"not really a checkpoint")
    try:
        args = ["import", "gagavatar", "ckpt.safetensors", "-o", "ckpt.safetensors"]
        line = _refused(work, args, "ckpt.safetensors", ["ckpt.safetensors"])
        assert "same file" in line
    finally:
        checkpoint.unlink()


def test_dataset_onto_a_file(work):
    line = _refused(work, ["data", "synth", "-n", "1", "-o", "a.png", "-q"], "a.png", ["a.png"])
    assert "not a folder" in line


def test_dataset_onto_its_video_folder(work):
    videos = work / "videos"
    videos.mkdir()
    try:
        _refused(work, ["data", "from-videos", "videos", "-o", "videos", "-q"], "videos", [])
        assert videos.is_dir()
    finally:
        videos.rmdir()


def test_new_files_follow_the_umask(work):
    done = _gshead(
        "reconstruct", "example:astronaut", "-o", "umask.safetensors",
        "--pipeline", "tiny.yaml", "--fit-steps", "0", "-q",
        cwd=work, umask=0o022,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = _gshead("export", "umask.safetensors", "-o", "umask.ply", cwd=work, umask=0o027)
    assert done.returncode == 0, done.stderr
    try:
        assert stat.S_IMODE(os.stat(work / "umask.safetensors").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(work / "umask.ply").st_mode) == 0o640
    finally:
        (work / "umask.safetensors").unlink()
        (work / "umask.ply").unlink(missing_ok=True)
