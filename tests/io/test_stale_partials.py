"""Stale temporary outputs (``.partial`` files and folders) that a killed run left are removed by
the next atomic write of the same target, and nothing else is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gshead.io.media import STALE_PARTIAL_AGE, atomic_directory, atomic_output, remove_stale_partials


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid no longer names a process
    return child.pid


def _tag(pid: int, when: float | None = None) -> str:
    return f"{pid}-{int(time.time() if when is None else when)}-0123abcd"


def test_atomic_output_names_its_temporary_after_the_writer(tmp_path):
    with atomic_output(tmp_path / "out.mp4") as temporary:
        assert temporary.name.startswith(f".out.{os.getpid()}-") and temporary.name.endswith(".partial.mp4")
    with atomic_directory(tmp_path / "data") as folder:
        assert folder.name.startswith(f".data.{os.getpid()}-") and folder.name.endswith(".partial")


def test_atomic_output_removes_dead_partials_and_keeps_live_ones(tmp_path):
    dead = tmp_path / f".out.{_tag(_dead_pid())}.partial.mp4"
    live = tmp_path / f".out.{_tag(os.getpid())}.partial.mp4"
    old = tmp_path / f".out.{_tag(os.getpid(), time.time() - STALE_PARTIAL_AGE - 60)}.partial.mp4"
    other_target = tmp_path / f".other.{_tag(_dead_pid())}.partial.mp4"
    other_suffix = tmp_path / f".out.{_tag(_dead_pid())}.partial.txt"
    not_ours = tmp_path / ".out.12345.partial.mp4"  # not the strict pattern
    for path in (dead, live, old, other_target, other_suffix, not_ours):
        path.write_bytes(b"half")
    with atomic_output(tmp_path / "out.mp4") as temporary:
        temporary.write_bytes(b"whole")
    assert not dead.exists() and not old.exists()
    assert live.exists() and other_target.exists() and other_suffix.exists() and not_ours.exists()
    assert (tmp_path / "out.mp4").read_bytes() == b"whole"


def test_legacy_partials_go_only_when_old(tmp_path):
    fresh = tmp_path / ".out.0123abcd.partial.mp4"
    stale = tmp_path / ".out.4567cdef.partial.mp4"
    fresh.write_bytes(b"x")
    stale.write_bytes(b"x")
    past = time.time() - STALE_PARTIAL_AGE - 60
    os.utime(stale, (past, past))
    assert remove_stale_partials(tmp_path, "out", ".mp4") == [stale]
    assert fresh.exists()


def test_atomic_directory_removes_dead_partial_folders(tmp_path):
    dead = tmp_path / f".data.{_tag(_dead_pid())}.partial"
    live = tmp_path / f".data.{_tag(os.getpid())}.partial"
    dead_old = tmp_path / f".data.{_tag(_dead_pid())}.old"
    for folder in (dead, live, dead_old):
        folder.mkdir()
        (folder / "shard.bin").write_bytes(b"half")
    (tmp_path / "data").mkdir()  # the target exists, so a dead ".old" copy of it is garbage
    with atomic_directory(tmp_path / "data") as temporary:
        (temporary / "index.json").write_text("{}")
    assert not dead.exists() and not dead_old.exists() and live.exists()
    assert (tmp_path / "data" / "index.json").is_file()


def test_dead_old_folder_is_kept_while_the_target_is_missing(tmp_path):
    # killed between moving the previous version aside and renaming the new one in:
    # the ".old" folder is the only complete copy, so it stays.
    keep = tmp_path / f".data.{_tag(_dead_pid())}.old"
    keep.mkdir()
    assert remove_stale_partials(tmp_path, "data", "") == []
    assert keep.exists()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_data_synth_leaves_nothing_after_the_next_run(tmp_path):
    out = tmp_path / "synth"
    command = [sys.executable, "-m", "gshead.cli", "data", "synth", "-n", "2", "--frames", "2",
               "--size", "16", "-o", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
            break
        time.sleep(0.01)
    if child.poll() is None:
        child.send_signal(signal.SIGKILL)
    child.wait()
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    if not left:  # the run finished before we could kill it mid-write: fake what a kill leaves
        if out.exists():
            import shutil

            shutil.rmtree(out)
        (tmp_path / f".synth.{_tag(_dead_pid())}.partial").mkdir()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"], (child.returncode, result.stderr)
