"""``gshead bench --contract``: structure, variant choice and the failure path (no timing asserts)."""

from __future__ import annotations

import argparse
import functools

import pytest
import torch
import yaml

from gshead.commands import bench
from gshead.core.errors import ConfigError
from gshead.testing import tiny_pipeline

SIZES = [{"channels": 12}, {"channels": 4}]  # given out of order: the bench sorts by parameters
FRAMES = 2
FAST = tiny_pipeline(
    render_size=16,
    headmodel={"name": "procedural", "subdivisions": 2},
    lifter={"name": "single-plane", "resolution": 4},
)


@pytest.fixture
def pipeline_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


def test_contract_bench_runs_smallest_and_largest(pipeline_yaml):
    threads = torch.get_num_threads()
    report = bench.contract_bench(pipeline_yaml, frames=FRAMES, sizes=SIZES, threads=1)
    assert torch.get_num_threads() == threads and report["threads"] == 1
    assert set(report) == {
        "pipeline",
        "frames",
        "threads",
        "skipped",
        "variants",
        "ratio",
        "tolerance",
        "within",
    }
    small, large = report["variants"]
    assert small["encoder"]["channels"] == 4 and large["encoder"]["channels"] == 12
    assert small["parameters"] < large["parameters"]
    for v in (small, large):
        assert v["reconstruct_s"] > 0 and v["frame_median_s"] > 0
    assert report["ratio"] == pytest.approx(large["frame_median_s"] / small["frame_median_s"])
    assert report["within"] == (0.95 <= report["ratio"] <= 1.05)
    assert report["frames"] == FRAMES and report["skipped"] == []


def test_variant_field_is_ordered_by_parameters_and_the_memory_budget_skips(tmp_path):
    path = tmp_path / "webssl.yaml"
    path.write_text(
        yaml.safe_dump(tiny_pipeline(encoder={"name": "webssl", "size": "tiny", "resolution": 56}))
    )
    with pytest.raises(ConfigError, match="two encoder variants"):
        bench.contract_bench(path, frames=1, memory_budget=1e6)  # only tiny fits in 1 MB
    from gshead.core.config import load_pipeline
    from gshead.core.registry import get_registry

    config = load_pipeline(path, get_registry())
    found = bench._candidates(config, get_registry(), None)
    assert [c["size"] for c in found] == ["tiny", "300m", "1b", "2b", "3b", "5b", "7b"]
    counts = [c["_parameters"] for c in found]
    assert counts == sorted(counts)


def test_encoder_without_variants_needs_sizes(pipeline_yaml):
    with pytest.raises(ConfigError, match="pass sizes"):
        bench.contract_bench(pipeline_yaml, frames=1)


def _fake_clock(slow: float):
    """A clock whose every timed interval lasts 1 s, except frames of the second (large) variant: ``slow`` s.

    The bench times both reconstructions, then frames alternately (small, large, small, ...).
    """
    state = {"calls": 0, "now": 0.0}

    def clock() -> float:
        interval = state["calls"] // 2
        if state["calls"] % 2 == 1:  # a stop: the interval just timed
            large_frame = interval >= 2 and (interval - 2) % 2 == 1
            state["now"] += slow if large_frame else 1.0
        state["calls"] += 1
        return state["now"]

    return clock


def _parse(argv):
    parser = argparse.ArgumentParser(prog="gshead")
    bench.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_fails_with_one_line_when_the_ratio_leaves_the_tolerance(pipeline_yaml, monkeypatch, capsys):
    monkeypatch.setattr(bench, "contract_bench", functools.partial(bench.contract_bench, sizes=SIZES))
    monkeypatch.setattr(bench, "clock", _fake_clock(slow=2.0))
    args = _parse(["bench", "--contract", str(pipeline_yaml), "--frames", str(FRAMES), "--json"])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2.000x" in err[0] and "0.95..1.05" in err[0]

    monkeypatch.setattr(bench, "clock", _fake_clock(slow=1.0))
    args = _parse(["bench", "--contract", str(pipeline_yaml), "--frames", str(FRAMES)])
    assert args.func(args) == 0
    out = capsys.readouterr()
    assert "ratio large/small: 1.000" in out.out and out.err == ""
