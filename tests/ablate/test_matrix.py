"""Ablation matrices: expansion, stable ids, validation before anything runs, shipped matrices."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from gshead.ablate.matrix import apply_axis, expand, load_matrix, slug
from gshead.core.errors import ConfigError
from gshead.testing import tiny_pipeline

ABLATIONS = Path(__file__).resolve().parents[2] / "configs" / "ablations"
MATRICES = sorted(p for p in ABLATIONS.glob("*.yaml") if not p.stem.endswith("-train"))
"""The shipped matrices (a matrix's training config sits beside it as ``<matrix>-train.yaml``)."""


def _matrix(**changes):
    data = {
        "base": tiny_pipeline(),
        "axes": {
            "lifter.resolution": [8, 12, 16],
            "refiner": [{"name": "identity"}, {"name": "light-unet", "widths": [4, 8]}],
        },
        "measure": {"frames": 2, "warmup": 1, "repeats": 1},
    }
    data.update(changes)
    return data


def test_product_expands_every_combination_in_axis_order():
    loaded = expand(_matrix())
    ids = [v.id for v in loaded.variants]
    expected = [f"{r}_{s}" for r, s in itertools.product(["8", "12", "16"], ["identity", "light-unet-4-8"])]
    assert ids == expected
    by_id = {v.id: v for v in loaded.variants}
    v = by_id["12_light-unet-4-8"]
    assert v.config["lifter"]["resolution"] == 12 and v.config["lifter"]["name"] == "single-plane"
    assert v.config["refiner"] == {"name": "light-unet", "widths": [4, 8], "max_parameters": 2_000_000}
    assert v.axes == {"lifter.resolution": "12", "refiner": "{name: light-unet, widths: [4, 8]}"}
    # untouched slots keep the base config
    assert v.config["encoder"] == {"name": "tiny-conv", "channels": 8, "depth": 2, "global_channels": 64}


def test_list_mode_runs_only_the_listed_subset():
    data = _matrix(
        mode="list",
        variants=[{"lifter.resolution": 8}, {"lifter.resolution": 16, "refiner": {"name": "identity"}}],
    )
    loaded = expand(data)
    assert [v.id for v in loaded.variants] == ["8", "16_identity"]
    assert loaded.variants[0].axes["refiner"] == "(base)"
    assert loaded.variants[0].config["refiner"]["name"] == "identity"  # from the base


def test_list_mode_explicit_ids_and_no_axes():
    data = {
        "base": tiny_pipeline(),
        "mode": "list",
        "variants": [{"id": "small", "encoder.channels": 4}, {"id": "big", "encoder.channels": 16}],
    }
    loaded = expand(data)
    assert [v.id for v in loaded.variants] == ["small", "big"]
    assert [v.config["encoder"]["channels"] for v in loaded.variants] == [4, 16]
    assert list(loaded.variants[0].axes) == ["encoder.channels"]


def test_ids_are_stable_unique_and_digests_track_the_config():
    first, second = expand(_matrix()), expand(_matrix())
    assert [v.id for v in first.variants] == [v.id for v in second.variants]
    assert [v.digest for v in first.variants] == [v.digest for v in second.variants]
    assert len({v.id for v in first.variants}) == len(first.variants)
    assert len({v.digest for v in first.variants}) == len(first.variants)
    # a change to the measure settings makes every stored result stale
    changed = expand(_matrix(measure={"frames": 3, "warmup": 1, "repeats": 1}))
    assert not {v.digest for v in changed.variants} & {v.digest for v in first.variants}


def test_slugs():
    assert slug("vits14") == "vits14"
    assert slug({"name": "dinov2", "variant": "vitb14", "resolution": 224}) == "dinov2-vitb14-224"
    assert slug({"planes": 1}) == "planes-1"
    assert slug([16, 32]) == "16-32"
    assert slug("Light UNet/2") == "light-unet-2"
    long = {
        "name": "style-unet",
        "resolution": 256,
        "depth": 6,
        "width": 8,
        "max_width": 64,
        "style_channels": 128,
        "mapping_layers": 4,
        "extra": "x" * 30,
    }
    assert slug(long).startswith("style-unet-") and len(slug(long)) == len("style-unet-") + 8
    assert slug(long) == slug(dict(long))


def test_duplicate_ids_are_refused():
    data = _matrix(axes={"refiner": [{"name": "identity"}, "identity"]})
    with pytest.raises(ConfigError, match="both get the id 'identity'"):
        expand(data)


def test_name_axis_resets_fields_of_another_component():
    config = tiny_pipeline(lifter={"name": "single-plane", "resolution": 16})
    apply_axis(config, "lifter.name", "dual-plane")
    assert config["lifter"] == {"name": "dual-plane"}
    config = tiny_pipeline(lifter={"name": "single-plane", "resolution": 16})
    apply_axis(config, "lifter.name", "single-plane")  # same component: fields kept
    assert config["lifter"] == {"name": "single-plane", "resolution": 16}
    apply_axis(config, "lifter", {"hidden": 8})  # mapping without a name: update
    assert config["lifter"] == {"name": "single-plane", "resolution": 16, "hidden": 8}


@pytest.mark.parametrize(
    "axis, message",
    [
        ("encoder.chanels", "axes.encoder.chanels: no registered encoder has a field 'chanels'"),
        ("encodr.channels", "axes.encodr.channels: 'encodr' is not a component slot"),
        ("rendersize", "axes.rendersize: unknown setting or slot"),
        ("encoder.channels.x", "axes.encoder.channels.x: not a config path"),
    ],
)
def test_invalid_axis_path_is_one_line_naming_it(tmp_path, axis, message):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_pipeline(), "axes": {axis: [1, 2]}}))
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text


def test_invalid_variant_value_fails_before_anything_runs(tmp_path, monkeypatch):
    from gshead.ablate import runner

    built = []
    monkeypatch.setattr(runner, "build_pipeline", lambda *a, **k: built.append(a))
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(_matrix(axes={"lifter.resolution": [8, 1]})))
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    text = str(info.value)
    assert "\n" not in text
    assert f"{path}: variant '1': lifter.resolution" in text
    assert built == []
    # and through the command: exit 2, no output folder made
    from gshead.cli import main

    out = tmp_path / "out"
    assert main(["ablate", str(path), "-o", str(out), "-q"]) == 2
    assert not out.exists() and built == []


def test_bad_matrix_shapes(tmp_path):
    with pytest.raises(ConfigError, match="mesure: unknown matrix key"):
        expand({"base": tiny_pipeline(), "mesure": {}})
    with pytest.raises(ConfigError, match="axes.refiner: no values"):
        expand({"base": tiny_pipeline(), "axes": {"refiner": []}})
    with pytest.raises(ConfigError, match="'mode: list' needs"):
        expand({"base": tiny_pipeline(), "mode": "list"})
    with pytest.raises(ConfigError, match="variants\\[0\\].refiner.name: not an axis"):
        expand(_matrix(mode="list", variants=[{"refiner.name": "identity"}]))
    with pytest.raises(ConfigError, match="is not one of the axis values"):
        expand(_matrix(mode="list", variants=[{"lifter.resolution": 9}]))
    with pytest.raises(ConfigError, match="base: .*missing.yaml: cannot read pipeline config"):
        expand({"base": "missing.yaml", "axes": {}}, path=tmp_path / "m.yaml")
    with pytest.raises(ConfigError, match="measure.frames"):
        expand(_matrix(measure={"frames": 0}))


def test_base_path_is_relative_to_the_matrix_file(tmp_path):
    (tmp_path / "pipes").mkdir()
    (tmp_path / "pipes" / "p.yaml").write_text(yaml.safe_dump(tiny_pipeline()))
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "matrix.yaml"
    path.write_text(yaml.safe_dump({"base": "../pipes/p.yaml", "axes": {"render_size": [32, 48]}}))
    loaded = load_matrix(path)
    assert [v.config["render_size"] for v in loaded.variants] == [32, 48]
    assert loaded.resolve("img.png") == str(path.parent / "img.png")
    assert loaded.resolve("example:astronaut") == "example:astronaut"
    with pytest.raises(ConfigError, match="--only 'nope': no such variant"):
        loaded.select(["nope"])
    assert [v.id for v in loaded.select(["48"])] == ["48"]


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: p.stem)
def test_shipped_matrices_validate(path):
    loaded = load_matrix(path)  # expansion + per-variant pipeline validation; nothing is built
    assert loaded.variants and len({v.id for v in loaded.variants}) == len(loaded.variants)


def test_shipped_matrices_cover_the_issue():
    names = {p.stem for p in MATRICES}
    assert {"lifting", "encoder-scaling", "refiner"} <= names
    enc = load_matrix(ABLATIONS / "encoder-scaling.yaml")
    encoders = {
        (v.config["encoder"]["name"], v.config["encoder"].get("variant") or v.config["encoder"].get("size"))
        for v in enc.variants
    }
    assert encoders == {
        ("dinov2", "vits14"),
        ("dinov2", "vitb14"),
        ("dinov2", "vitl14"),
        ("webssl", "300m"),
        ("webssl", "1b"),
    }
    lifters = {
        (v.config["lifter"]["name"], v.config["lifter"].get("planes"))
        for v in load_matrix(ABLATIONS / "lifting.yaml").variants
    }
    assert {("single-plane", None), ("dual-plane", 1), ("dual-plane", 2)} == lifters
    refiners = {v.config["refiner"]["name"] for v in load_matrix(ABLATIONS / "refiner.yaml").variants}
    assert refiners == {"identity", "light-unet", "style-unet"}
