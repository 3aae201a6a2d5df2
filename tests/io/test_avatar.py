"""Avatar files: round trip, self-contained driving, and clean failures on bad files."""

from __future__ import annotations

import json

import pytest
import torch

from gshead.io import avatar as avatar_io
from gshead.io.avatar import load_avatar, save_avatar
from gshead.core.components import Driver, HeadModel, Rasterizer, Refiner
from gshead.core.config import PipelineConfig
from gshead.core.errors import AvatarFileError
from gshead.core.pipeline import Pipeline
from gshead.core.registry import Registry
from gshead.testing import sample_image, tiny_pipeline


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(autoload=False)


@pytest.fixture(scope="module")
def made(registry, tmp_path_factory):
    pipe = Pipeline.from_dict(tiny_pipeline(), registry)
    avatar = pipe.reconstruct(sample_image(64))
    path = tmp_path_factory.mktemp("av") / "head.safetensors"
    save_avatar(path, avatar, pipe)
    return pipe, avatar, path


def _rewrite(src, dst, change_meta=None, change_tensors=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if change_meta:
        change_meta(meta)
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(dst), metadata=meta)


def test_round_trip_keeps_every_tensor_and_drives_identically(made, registry):
    pipe, avatar, path = made
    loaded = load_avatar(path, registry)
    original = avatar.tensors()
    for key, value in loaded.avatar.tensors().items():
        assert torch.equal(value, original[key]), key
    assert loaded.avatar.provenance == avatar.provenance
    assert loaded.config == pipe.config
    params = pipe.head_model.neutral(2).replace(jaw=torch.tensor([[0.0, 0, 0], [0.25, 0, 0]]))
    expected = pipe.session(avatar).render(params)
    got = loaded.session().render(params)
    assert torch.allclose(got, expected, atol=1e-6)


def test_loaded_parts_are_typed_by_the_component_protocols(made, registry):
    loaded = load_avatar(made[2], registry)
    assert isinstance(loaded.config, PipelineConfig)
    assert isinstance(loaded.head_model, HeadModel) and isinstance(loaded.driver, Driver)
    assert isinstance(loaded.rasterizer, Rasterizer) and isinstance(loaded.refiner, Refiner)


def test_the_driver_weights_travel_in_the_file(made, registry, tmp_path):
    pipe, avatar, path = made
    bad = tmp_path / "zeroed.safetensors"

    def zero_driver_weights(tensors):
        for k in tensors:
            if k.startswith("weights.driver."):
                tensors[k] = torch.zeros_like(tensors[k])

    _rewrite(path, bad, change_tensors=zero_driver_weights)
    assert any(k.startswith("weights.driver.") for k in avatar_io._read(path)[0])
    loaded = load_avatar(bad, registry)
    assert all(float(p.detach().abs().sum()) == 0 for p in loaded.driver.parameters())


def test_truncated_file_fails_cleanly(made, registry, tmp_path):
    _, _, path = made
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 7):
        short = tmp_path / f"short{cut}.safetensors"
        short.write_bytes(data[:cut])
        with pytest.raises(AvatarFileError, match=r"not a readable gshead avatar file .*truncated or corrupt"):
            load_avatar(short, registry)


def test_missing_or_foreign_files(made, registry, tmp_path):
    with pytest.raises(AvatarFileError, match="no such gshead avatar file"):
        load_avatar(tmp_path / "nope.safetensors", registry)
    _, _, path = made
    foreign = tmp_path / "foreign.safetensors"
    _rewrite(path, foreign, change_meta=lambda m: m.update(format="someone.else"))
    with pytest.raises(AvatarFileError, match="not a gshead avatar file"):
        load_avatar(foreign, registry)


def test_incompatible_version_or_pipeline_is_refused(made, registry, tmp_path):
    _, _, path = made
    newer = tmp_path / "newer.safetensors"
    _rewrite(path, newer, change_meta=lambda m: m.update(format_version="99"))
    with pytest.raises(AvatarFileError, match="format version '99'.*reads version '1'"):
        load_avatar(newer, registry)

    def other_plugin(meta):
        cfg = json.loads(meta["pipeline"])
        cfg["driver"] = {"name": "somebody-elses-driver"}
        meta["pipeline"] = json.dumps(cfg)

    alien = tmp_path / "alien.safetensors"
    _rewrite(path, alien, change_meta=other_plugin)
    with pytest.raises(AvatarFileError, match="cannot rebuild .*unknown driver 'somebody-elses-driver'"):
        load_avatar(alien, registry)

    missing = tmp_path / "missing.safetensors"
    _rewrite(path, missing, change_tensors=lambda t: t.pop("rig.latent"))
    with pytest.raises(AvatarFileError, match="missing or has malformed entries"):
        load_avatar(missing, registry)


def test_failed_save_leaves_nothing_behind(made, tmp_path, monkeypatch):
    pipe, avatar, _ = made
    import safetensors.torch

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", explode)
    target = tmp_path / "out.safetensors"
    with pytest.raises(KeyboardInterrupt):
        save_avatar(target, avatar, pipe)
    assert list(tmp_path.iterdir()) == []
