"""A separately installed distribution with a `gshead` entry point appears and is usable by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import re
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
