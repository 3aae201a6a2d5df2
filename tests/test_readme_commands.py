"""The README's commands work as written: every ``gshead ...`` line in its bash code blocks (the
main job, the walkthrough, the data/train/eval block) and a few of the CLI table's runnable
examples, each run through the real CLI in a subprocess, in order, in one temporary folder.

Substitutions, only where the README's own values take too long on a 2-core CPU (each listed in
``SUBSTITUTIONS``): ``--fit-steps 100`` -> ``0``; the demo reenactments get ``--frames 4``; the
dataset is ``-n 5 --frames 4 --splits 0.4 0.2 0.4`` instead of ``-n 100 --frames 8`` (still two
test identities, so cross-reenactment runs); training stops after ``--steps 2`` and ``eval`` reads
that checkpoint (``step-000002`` instead of ``step-002000``). Skipped, with the reason:
``SKIPPED``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

SUBSTITUTIONS: dict[str, tuple[str, str]] = {
    "fit steps": ("--fit-steps 100", "--fit-steps 0"),
    "demo frames": ("--driver demo", "--driver demo --frames 4"),
    "dataset size": ("-n 100 --frames 8 --size 128", "-n 5 --frames 4 --size 128 --splits 0.4 0.2 0.4"),
    "training steps": ("-o runs/tiny", "-o runs/tiny --steps 2"),
    "checkpoint": ("step-002000", "step-000002"),
}
SKIPPED = {
    "torchrun": "a DDP training run in several processes (minutes on this CPU); DDP is tested in tests/train",
    "pip install": "installs packages; the test runs in the installed environment",
}
TABLE_EXAMPLES = ["gshead plugins --json", "gshead config schema", "gshead headmodel info anny-head", "gshead --version"]
"""Commands of the README's CLI table (and walkthrough step 1) that run as they stand."""


def readme_commands() -> list[str]:
    """Every ``gshead`` command in README.md's bash code blocks, in order (``&&`` chains split,
    trailing comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.split("  #")[0].strip()
                if part:
                    commands.append(part)
    return commands


def _runnable(command: str) -> str | None:
    for prefix in SKIPPED:
        if command.startswith(prefix):
            return None
    for old, new in SUBSTITUTIONS.values():
        if old in command and new not in command:
            command = command.replace(old, new)
    return command


def test_readme_has_the_commands_this_test_runs():
    commands = readme_commands()
    assert any(c.startswith("gshead reconstruct example:astronaut") for c in commands)
    assert any(c.startswith("gshead eval ") for c in commands)
    assert any(c.startswith("gshead export ") for c in commands)
    table = README.read_text(encoding="utf-8")
    for example in TABLE_EXAMPLES:
        assert " ".join(example.split()[:3]).split(" --json")[0] in table, example
    for old, _ in SUBSTITUTIONS.values():  # a substitution that no longer matches is stale
        assert any(old in c for c in commands), old


def test_readme_commands_run(tmp_path):
    # gshead/configs/... in the eval command is relative to a clone's root: link it here.
    (tmp_path / "gshead").symlink_to(ROOT / "gshead")
    ran = []
    for command in readme_commands() + TABLE_EXAMPLES:
        runnable = _runnable(command)
        if runnable is None or not runnable.startswith("gshead"):
            continue
        argv = [sys.executable, "-m", "gshead.cli", *shlex.split(runnable)[1:]]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{runnable}\n{result.stderr[-2000:]}"
        ran.append(runnable)
    assert (tmp_path / "astronaut.mp4").is_file() and (tmp_path / "astronaut.ply").is_file()
    assert (tmp_path / "eval" / "results.md").is_file()
    assert len(ran) >= 9, ran


def test_eval_on_a_missing_dataset_names_the_dataset(tmp_path):
    missing = tmp_path / "no-such-data"
    result = subprocess.run(
        [sys.executable, "-m", "gshead.cli", "eval", str(missing), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"gshead: error: {missing}: no such dataset folder; expected a folder written by 'gshead data synth'"
    )
