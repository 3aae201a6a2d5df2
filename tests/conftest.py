"""Suite-wide settings: converted head models are cached in a per-run folder, not the user's; the
tiny pipeline as a YAML file and an avatar reconstructed with it, made once for the CLI tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _hermetic_gshead_cache(tmp_path_factory):
    if "GSHEAD_CACHE_DIR" in os.environ:  # a caller chose a cache: respect it
        yield
        return
    os.environ["GSHEAD_CACHE_DIR"] = str(tmp_path_factory.mktemp("gshead-cache"))
    yield
    os.environ.pop("GSHEAD_CACHE_DIR", None)


@pytest.fixture(scope="session")
def tiny_pipeline_yaml(tmp_path_factory):
    """``gshead.testing.tiny_pipeline()`` written as a pipeline YAML."""
    import yaml

    from gshead.testing import tiny_pipeline

    path = tmp_path_factory.mktemp("tiny-cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_avatar_file(tiny_pipeline_yaml, tmp_path_factory):
    """``example:astronaut`` reconstructed with the tiny pipeline by ``gshead reconstruct`` (read only)."""
    from gshead.cli import main

    out = tmp_path_factory.mktemp("tiny-avatar") / "astronaut.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(tiny_pipeline_yaml), "-q"]) == 0
    return out
