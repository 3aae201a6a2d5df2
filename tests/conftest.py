"""Suite-wide settings: converted head models are cached in a per-run folder, not the user's."""

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
