"""The import paths of gshead 0.1 keep working for one release: each is an alias of the module's
new home that warns with a DeprecationWarning naming it."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = {
    "gshead.core.io": "gshead.io.media",
    "gshead.core.avatar_io": "gshead.io.avatar",
    "gshead.core.sequence": "gshead.io.sequence",
    "gshead.core.weights": "gshead.io.weights",
    "gshead.core.ply": "gshead.io.ply",
    "gshead.core.motion": "gshead.io.motion",
    "gshead.core.tracking": "gshead.jobs.tracking",
    "gshead.core.fitting": "gshead.jobs.fitting",
    "gshead.plugins.renderers.torch_tiles": "gshead.plugins.rasterizers.torch_tiles",
    "gshead.plugins.renderers.cpu": "gshead.plugins.rasterizers.cpu",
    "gshead.plugins.renderers.auto": "gshead.plugins.rasterizers.auto",
    "gshead.plugins.renderers.gsplat_cuda": "gshead.plugins.rasterizers.gsplat",
    "gshead.plugins.renderers.projection": "gshead.plugins.rasterizers._projection",
    "gshead.plugins.trackers.mediapipe_tracker": "gshead.plugins.trackers.mediapipe",
    "gshead.plugins.trackers.sequence_file": "gshead.plugins.trackers.file",
    "gshead.plugins.headmodels.linear": "gshead.plugins.headmodels._linear",
    "gshead.plugins.headmodels.safe_pickle": "gshead.io.safe_pickle",
    "gshead.plugins.encoders.vit": "gshead.plugins.encoders._vit",
    "gshead.plugins.lifters.dpt": "gshead.plugins.lifters._dpt",
    "gshead.commands.reenact_views": "gshead.commands._views",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_is_the_new_module(old, monkeypatch):
    new = importlib.import_module(MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {MOVED[old]}"):
        alias = importlib.import_module(old)
    assert alias is new
    assert sys.modules[old] is new  # names, private ones included, and monkeypatches are shared


def test_old_paths_are_not_plugins_and_the_layout_names_them_deprecated():
    from gshead.core.registry import DEFAULT_PLUGINS

    assert not set(MOVED) & set(DEFAULT_PLUGINS)
