"""The encoder-scaling matrix (``configs/ablations/scaling.yaml``, docs/scaling.md) and the held-out
evaluation a training variant runs after its training (``train.eval``, ``train.seed: pipeline``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from gshead.ablate import runner
from gshead.ablate.matrix import expand, load_matrix
from gshead.core.config import validate_pipeline
from gshead.core.registry import get_registry
from gshead.testing import tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
SCALING = ROOT / "configs" / "ablations" / "scaling.yaml"


def _encoder_parameters(config: dict) -> int:
    """Parameters of the variant's real encoder, built on the meta device (no memory, no time)."""
    registry = get_registry()
    validated = validate_pipeline(config, registry, source="test")
    spec = registry.get("encoder", validated.encoder.name)
    with torch.device("meta"):
        encoder = spec.build(validated.encoder, None)
    return sum(p.numel() for p in encoder.parameters())


def test_scaling_matrix_spans_sizes_and_seeds_at_one_budget():
    loaded = load_matrix(SCALING)
    m = loaded.matrix
    assert (
        isinstance(m.base, str)
        and (SCALING.parent / m.base).resolve() == (ROOT / "gshead" / "configs" / "default.yaml").resolve()
    )  # follows the embedded default pipeline
    sizes = {v.axes["encoder.channels"] for v in loaded.variants}
    seeds = {v.axes["seed"] for v in loaded.variants}
    assert len(sizes) >= 4 and len(seeds) >= 2 and len(loaded.variants) == len(sizes) * len(seeds)
    counts = {v.axes["encoder.channels"]: _encoder_parameters(v.config) for v in loaded.variants}
    assert max(counts.values()) >= 30 * min(counts.values())
    assert sorted(counts.values()) == [counts[s] for s in sorted(counts, key=int)]  # wider: larger
    # One budget and one seed policy for every variant: the same training settings, evaluation,
    # and training config; the training seed follows each variant's pipeline seed.
    assert m.train is not None and m.train.seed == "pipeline" and m.train.eval is not None
    assert m.train.eval.split == "test"
    train = yaml.safe_load((SCALING.parent / m.train.config).read_text())
    assert train["data"]["split"] == "train" and "seed" not in train
    for v in loaded.variants:
        assert runner.training_seed(m.train.model_dump(mode="json"), v.config) == int(v.axes["seed"])
        assert v.config["source_size"] == v.config["render_size"] == m.set["source_size"]

    # everything but the encoder width and the seed is the same pipeline
    def rest(config):
        return {k: v for k, v in config.items() if k not in ("encoder", "seed")}

    assert len({yaml.safe_dump(rest(v.config)) for v in loaded.variants}) == 1


def test_set_applies_to_the_base_without_changing_ids_and_is_checked():
    data = {"base": tiny_pipeline(), "set": {"render_size": 48}, "axes": {"lifter.resolution": [8, 12]}}
    loaded = expand(data)
    assert [v.id for v in loaded.variants] == ["8", "12"]
    assert all(v.config["render_size"] == 48 for v in loaded.variants)
    from gshead.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"set\.no_such: unknown setting"):
        expand({**data, "set": {"no_such": 1}})


def test_training_variants_report_held_out_quality(tmp_path, monkeypatch):
    from gshead.data import write_synthetic_dataset

    write_synthetic_dataset(
        tmp_path / "synth", identities=3, frames=3, size=32, seed=0, splits=(0.67, 0, 0.33), progress=False
    )
    train = {
        "data": {"root": "synth", "targets": 2},  # relative: taken from the folder ablate runs in
        "batch_size": 1,
        "optimizer": {"lr": 1e-2},
        "log_every": 1,
        "image_every": 0,
        "point_samples": 64,
        "device": "cpu",
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    base = tiny_pipeline(
        headmodel={"name": "procedural", "subdivisions": 4, "pose_correctives": False},
        source_size=32,
        render_size=32,
        encoder={"name": "tiny-conv", "channels": 8},
        lifter={"name": "single-plane", "resolution": 8},
        rasterizer={"name": "cpu"},
    )
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        yaml.safe_dump(
            {
                "base": base,
                "axes": {"seed": [0, 1]},
                "measure": {"frames": 1, "warmup": 0, "repeats": 1, "contract": False},
                "train": {"steps": 2, "config": "train.yaml", "seed": "pipeline", "eval": {"targets": 2}},
            }
        )
    )
    seeds = []
    stock = runner._stock_training_resuming

    def spy(pipeline, config, steps, out_dir, seed=None):
        seeds.append(seed)
        return stock(pipeline, config, steps, out_dir, seed=seed)

    monkeypatch.setattr(runner, "_stock_training_resuming", spy)
    monkeypatch.chdir(tmp_path)
    summary = runner.run_matrix(load_matrix(matrix), tmp_path / "out", plots=False)
    assert summary.failed == [] and sorted(seeds) == [0, 1]
    for result in summary.results:
        q = result["quality"]
        assert math.isfinite(q["heldout_psnr"]) and 0 < q["heldout_psnr"] < 100
        assert 0 < q["heldout_ssim"] <= 1 and "heldout_lpips" not in q  # no LPIPS weights given
        assert result["heldout"]["split"] == "test" and result["heldout"]["frames"] == 2
    report = (tmp_path / "out" / "results.md").read_text()
    assert "quality.heldout_psnr" in report and "## Over the seeds" in report and "0, 1" in report
