"""A separately installed distribution with a `gshead` entry point appears and is usable by name,
and the README's contract test for it (the ``gshead_check`` fixture of gshead's pytest plugin)
passes against the installed plugin, and fails against a broken one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from gshead.testing import tiny_pipeline

REPO = Path(__file__).resolve().parents[1]


def _readme_block(marker: str) -> str:
    """The fenced code block of README.md whose first line is ``marker``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if b.startswith(marker))


# The README's own example is what this test installs, so the docs cannot drift from the code.
PLUGIN = _readme_block("# gshead_pool_plugin.py")
ENTRY_POINTS = _readme_block("# pyproject.toml of the plugin package")
PLUGIN_TEST = _readme_block("# test_gshead_pool_plugin.py")

# The README's plugin with one lie: it announces one more channel than its feature map has.
HONEST_CHANNELS = "self.out_channels, self.global_channels = (config.width,), config.width"
BROKEN_PLUGIN = PLUGIN.replace(HONEST_CHANNELS, HONEST_CHANNELS.replace("(config.width,)", "(config.width + 1,)"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    (src / "gshead_pool_plugin.py").write_text(PLUGIN, encoding="utf-8")
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "gshead-pool-plugin"
            version = "0.0.1"
            """
        )
        + ENTRY_POINTS,
        encoding="utf-8",
    )
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    env.pop("GSHEAD_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def _gshead(env, *args):
    return subprocess.run([sys.executable, "-m", "gshead", *args], env=env, capture_output=True, text=True)


def test_installed_plugin_is_listed_with_its_distribution(installed):
    out = _gshead(installed, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    row = next(r for r in rows if r["name"] == "pool-encoder")
    assert row["kind"] == "encoder" and row["source"] == "gshead-pool-plugin"
    assert [f["name"] for f in row["fields"]] == ["width"]


def test_installed_plugin_is_usable_by_name_from_yaml(installed, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline(encoder={"name": "pool-encoder", "width": 5})), encoding="utf-8")
    out = _gshead(installed, "reconstruct", "example:astronaut", "-o", str(tmp_path / "a.safetensors"), "--pipeline", str(cfg), "-q")
    assert out.returncode == 0, out.stderr
    meta = json.loads(__import__("safetensors").safe_open(str(tmp_path / "a.safetensors"), "pt").metadata()["pipeline"])
    assert meta["encoder"] == {"name": "pool-encoder", "width": 5}


def test_autoload_switch_and_block_list_hide_it(installed):
    off = _gshead(dict(installed, GSHEAD_DISABLE_PLUGIN_AUTOLOAD="1"), "plugins", "--json")
    blocked = _gshead(dict(installed, GSHEAD_BLOCK_PLUGINS="pool"), "plugins", "--json")
    for out in (off, blocked):
        assert out.returncode == 0, out.stderr
        assert "pool-encoder" not in {r["name"] for r in json.loads(out.stdout)}


def _run_readme_test(env, folder: Path) -> subprocess.CompletedProcess:
    """``python -m pytest`` on the README's test file alone, in ``folder`` (outside this repo, so
    no conftest or ini file of gshead's own suite applies: the fixture must come from the
    ``pytest11`` entry point)."""
    folder.mkdir()
    (folder / "test_gshead_pool_plugin.py").write_text(PLUGIN_TEST, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gshead_pool_plugin.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_readme_contract_test_passes_against_the_installed_plugin(installed, tmp_path):
    assert "gshead_check" in PLUGIN_TEST and "import" not in PLUGIN_TEST  # fixtures only, as the README says
    out = _run_readme_test(installed, tmp_path / "suite")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout, out.stdout


def test_readme_contract_test_fails_against_a_broken_plugin(installed, tmp_path):
    assert BROKEN_PLUGIN != PLUGIN, f"the README's plugin no longer contains {HONEST_CHANNELS!r}"
    # The broken module shadows the installed one: the installed entry point `pool =
    # "gshead_pool_plugin"` now imports it.
    shadow = tmp_path / "broken"
    shadow.mkdir()
    (shadow / "gshead_pool_plugin.py").write_text(BROKEN_PLUGIN, encoding="utf-8")
    env = dict(installed, PYTHONPATH=os.pathsep.join([str(shadow), installed["PYTHONPATH"]]))
    out = _run_readme_test(env, tmp_path / "suite")
    assert out.returncode == 1, out.stdout + out.stderr  # 1: tests ran and one failed
    assert "1 failed" in out.stdout, out.stdout
    # the failure names the component and the promise it broke
    assert re.search(r"^E .*encoder 'pool-encoder'.*out_channels", out.stdout, flags=re.M), out.stdout
