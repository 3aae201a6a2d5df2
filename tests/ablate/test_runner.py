"""The ablation runner: per-variant JSON, tables matching it, resuming, failures, workers, plots."""

from __future__ import annotations

import csv
import json
import sys
import types

import pytest
import yaml

from gshead.ablate import runner
from gshead.ablate.matrix import expand, load_matrix
from gshead.ablate.report import table_rows
from gshead.cli import main
from gshead.testing import tiny_pipeline

MEASURE = {"frames": 2, "warmup": 1, "repeats": 1, "render_sizes": [32, 48]}
SMALL = {"frames": 1, "warmup": 0, "repeats": 1, "render_sizes": [32]}


def _base():
    return tiny_pipeline(rasterizer={"name": "cpu"})  # the numba kernel: far faster than torch-tiles


TIMING = ("reconstruct_s", "frame_s@", "fps@")


def _write_matrix(path, axes, **extra):
    extra.setdefault("measure", SMALL)
    path.write_text(yaml.safe_dump({"base": _base(), "axes": axes, **extra}))
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2 x 2 matrix run once through the command (workers 1): (matrix path, output folder)."""
    root = tmp_path_factory.mktemp("grid")
    matrix = _write_matrix(
        root / "grid.yaml",
        {
            "lifter.resolution": [8, 12],
            "refiner": [{"name": "identity"}, {"name": "light-unet", "widths": [4, 8]}],
        },
        measure=MEASURE,
    )
    out = root / "out"
    assert main(["ablate", str(matrix), "-o", str(out), "-q"]) == 0
    return matrix, out


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_each_variant_gets_a_json_result(grid):
    matrix, out = grid
    loaded = load_matrix(matrix)
    assert [v.id for v in loaded.variants] == [
        "8_identity",
        "8_light-unet-4-8",
        "12_identity",
        "12_light-unet-4-8",
    ]
    for v in loaded.variants:
        r = json.loads((out / "variants" / f"{v.id}.json").read_text())
        assert r["status"] == "ok" and r["digest"] == v.digest and r["config"] == v.config
        assert r["contract"] == "passed"
        params = r["parameters"]
        assert params["total"] == sum(n for k, n in params.items() if k != "total")
        assert params["encoder"] > 0 and params["lifter"] > 0
        assert (params["refiner"] > 0) == ("light-unet" in v.id)
        assert r["gaussians"]["static"] == v.config["lifter"]["resolution"] ** 2
        assert set(r["driving"]) == {"32", "48"}
        for d in r["driving"].values():
            assert d["frame_median_s"] > 0 and d["fps"] == pytest.approx(1 / d["frame_median_s"])
        assert r["reconstruct_s"] > 0 and len(r["reconstruct_times_s"]) == 1
        assert 0 < r["quality"]["self_psnr"] < 200
    assert not list((out / "variants").glob("*.traceback.txt"))
    assert not list(out.rglob(".*partial*"))  # atomic writes leave no temporaries


def test_parameter_counts_match_the_built_modules(grid):
    matrix, out = grid
    v = load_matrix(matrix).variants[1]
    pipe = runner.build_pipeline(v.config)
    r = json.loads((out / "variants" / f"{v.id}.json").read_text())
    assert r["parameters"]["refiner"] == sum(p.numel() for p in pipe.refiner.parameters())
    assert r["parameters"]["encoder"] == sum(p.numel() for p in pipe.encoder.parameters())


def test_tables_match_the_json(grid):
    matrix, out = grid
    rows = _csv(out / "results.csv")
    loaded = load_matrix(matrix)
    assert [row["id"] for row in rows] == [v.id for v in loaded.variants]
    for row in rows:
        r = json.loads((out / "variants" / f"{row['id']}.json").read_text())
        assert row["status"] == "ok" and row["error"] == ""
        assert row["lifter.resolution"] == r["axes"]["lifter.resolution"]
        assert row["refiner"] == r["axes"]["refiner"]
        for kind, n in r["parameters"].items():
            assert int(row[f"params.{kind}"]) == n
        assert float(row["reconstruct_s"]) == r["reconstruct_s"]
        for size, d in r["driving"].items():
            assert float(row[f"fps@{size}"]) == d["fps"]
            assert float(row[f"frame_s@{size}"]) == d["frame_median_s"]
        assert float(row["quality.self_psnr"]) == r["quality"]["self_psnr"]
    md = (out / "results.md").read_text().splitlines()
    body = [line for line in md if line.startswith("| ") and not line.startswith("| id")]
    assert [line.split(" | ")[0][2:] for line in body] == [v.id for v in loaded.variants]
    assert "![fps_vs_params](fps_vs_params.png)" in md


def test_plots_are_written(grid):
    _, out = grid
    for name in ("fps_vs_params.png", "quality_vs_encoder.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_rerun_skips_finished_variants_and_force_reruns(grid, monkeypatch):
    matrix, out = grid
    built = []
    real = runner.build_pipeline
    monkeypatch.setattr(
        runner, "build_pipeline", lambda config, registry=None: built.append(config) or real(config)
    )
    before = {p.name: p.stat().st_mtime_ns for p in (out / "variants").glob("*.json")}
    summary = runner.run_matrix(load_matrix(matrix), out, plots=False)
    assert built == [] and summary.ran == [] and len(summary.skipped) == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "variants").glob("*.json")} == before
    assert len(summary.results) == 4  # the report still covers every variant
    assert (
        main(["ablate", str(matrix), "-o", str(out), "-q", "--no-plots", "--only", "12_identity", "--force"])
        == 0
    )
    assert [c["lifter"]["resolution"] for c in built] == [12]
    after = {p.name: p.stat().st_mtime_ns for p in (out / "variants").glob("*.json")}
    assert [n for n in after if after[n] != before[n]] == ["12_identity.json"]
    assert len(_csv(out / "results.csv")) == 4


def test_a_stale_or_failed_result_runs_again(tmp_path, monkeypatch):
    matrix = _write_matrix(tmp_path / "m.yaml", {"lifter.resolution": [8, 12]})
    loaded = load_matrix(matrix)
    out = tmp_path / "out"
    (out / "variants").mkdir(parents=True)
    old = {"id": "8", "status": "ok", "digest": "0" * 16, "axes": {"lifter.resolution": "8"}}
    (out / "variants" / "8.json").write_text(json.dumps(old))  # made with other settings
    fresh = {**old, "id": "12", "status": "failed", "digest": loaded.variants[1].digest, "error": "x"}
    (out / "variants" / "12.json").write_text(json.dumps(fresh))  # failed last time
    assert not runner.is_finished(old, loaded.variants[0])
    assert not runner.is_finished(fresh, loaded.variants[1])
    assert runner.is_finished({**fresh, "status": "ok"}, loaded.variants[1])
    built = []

    def build(config, registry=None):
        built.append(config["lifter"]["resolution"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "build_pipeline", build)
    summary = runner.run_matrix(loaded, out, plots=False)
    assert built == [8, 12] and summary.ran == ["8", "12"] and summary.failed == ["8", "12"]
    r = json.loads((out / "variants" / "8.json").read_text())
    assert r["error"] == "RuntimeError: stop here" and r["digest"] == loaded.variants[0].digest


def _failing_matrix(path):
    return _write_matrix(
        path, {"refiner": [{"name": "identity"}, {"name": "light-unet", "widths": [4], "max_parameters": 1}]}
    )


def test_a_failing_variant_is_recorded_and_the_others_complete(tmp_path, capsys):
    matrix = _failing_matrix(tmp_path / "m.yaml")
    out = tmp_path / "out"
    assert main(["ablate", str(matrix), "-o", str(out), "-q", "--no-plots"]) == 1
    ids = [v.id for v in load_matrix(matrix).variants]
    ok, bad = (json.loads((out / "variants" / f"{i}.json").read_text()) for i in ids)
    assert ok["status"] == "ok" and "driving" in ok
    assert bad["status"] == "failed" and "\n" not in bad["error"]
    assert bad["error"].startswith("light-unet:") and "max_parameters" in bad["error"]
    tb = (out / "variants" / bad["traceback"]).read_text()
    assert "Traceback" in tb and "ConfigError" in tb
    rows = _csv(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[1]["error"] == bad["error"]
    assert "1 variant(s) failed" in (out / "results.md").read_text()
    assert f"variant {ids[1]} failed" in capsys.readouterr().err
    # a rerun retries the failed variant only
    summary = runner.run_matrix(load_matrix(matrix), out, plots=False)
    assert summary.ran == [ids[1]] and summary.skipped == [ids[0]] and summary.failed == [ids[1]]


def _untimed(rows):
    return [
        {k: v for k, v in row.items() if not k.startswith(TIMING) and k != "quality.self_psnr"}
        for row in rows
    ]


@pytest.mark.slow
def test_two_workers_give_the_same_rows_as_one(tmp_path):
    matrix = _failing_matrix(tmp_path / "m.yaml")
    loaded = load_matrix(matrix)
    one = runner.run_matrix(loaded, tmp_path / "one", workers=1, plots=False)
    two = runner.run_matrix(loaded, tmp_path / "two", workers=2, plots=False)
    assert one.failed == two.failed == [loaded.variants[1].id]
    rows_one, rows_two = _csv(tmp_path / "one" / "results.csv"), _csv(tmp_path / "two" / "results.csv")
    assert _untimed(rows_one) == _untimed(rows_two)
    # the seeded pipeline gives the same avatar in both, so the same self-reconstruction PSNR
    assert rows_one[0]["quality.self_psnr"] == rows_two[0]["quality.self_psnr"]
    r = json.loads((tmp_path / "two" / "variants" / f"{loaded.variants[0].id}.json").read_text())
    assert r["threads"] == runner.default_threads(2)


def test_training_hook_missing_and_present(tmp_path, monkeypatch):
    data = {"base": _base(), "axes": {"lifter.resolution": [8]}, "measure": SMALL, "train": {"steps": 3}}
    loaded = expand(data)
    monkeypatch.setitem(sys.modules, "gshead.train", types.ModuleType("gshead.train"))
    summary = runner.run_matrix(loaded, tmp_path / "a", plots=False)
    r = json.loads((tmp_path / "a" / "variants" / "8.json").read_text())
    assert summary.failed == ["8"] and "gshead.train has no run_training(" in r["error"]

    calls = []

    def run_training(pipeline, config, steps, out_dir):
        calls.append((steps, config, out_dir.name))
        return {"psnr": 21.5}

    trainer = types.ModuleType("gshead.train")
    trainer.run_training = run_training
    monkeypatch.setitem(sys.modules, "gshead.train", trainer)
    summary = runner.run_matrix(loaded, tmp_path / "b", plots=False)
    assert summary.failed == [] and calls == [(3, None, "8.train")]
    row = _csv(tmp_path / "b" / "results.csv")[0]
    assert float(row["quality.psnr"]) == 21.5


def test_dry_run_lists_validated_variants_and_runs_nothing(tmp_path, capsys, monkeypatch):
    built = []
    monkeypatch.setattr(runner, "build_pipeline", lambda *a, **k: built.append(a))
    matrix = _failing_matrix(tmp_path / "m.yaml")
    out = tmp_path / "out"
    assert main(["ablate", str(matrix), "-o", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == [
        "identity",
        "light-unet-1-4",
    ]  # safe_dump sorts keys: max_parameters, widths
    assert built == [] and not (out / "variants").exists()
    for v in load_matrix(matrix).variants:  # pipelines written for cluster jobs (torchrun training)
        assert yaml.safe_load((out / "pipelines" / f"{v.id}.yaml").read_text()) == v.config


def test_table_rows_for_failed_and_missing_fields():
    columns, rows = table_rows(
        [
            {"id": "a", "status": "failed", "axes": {"x": "1"}, "error": "boom"},
            {
                "id": "b",
                "status": "ok",
                "axes": {"x": "2"},
                "parameters": {"encoder": 5, "total": 5},
                "driving": {
                    "64": {"frame_median_s": 0.5, "fps": 2.0},
                    "32": {"frame_median_s": 0.25, "fps": 4.0},
                },
            },
        ],
        ["x"],
    )
    assert columns.index("fps@32") < columns.index("fps@64")
    assert rows[0]["error"] == "boom" and rows[0]["fps@32"] == ""
    assert rows[1]["params.encoder"] == 5 and rows[1]["fps@64"] == 2.0


def test_plots_are_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    from gshead.ablate.report import write_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    columns, rows = table_rows(
        [
            {
                "id": "b",
                "status": "ok",
                "axes": {},
                "parameters": {"encoder": 5, "total": 5},
                "driving": {"32": {"frame_median_s": 0.5, "fps": 2.0}},
            }
        ],
        [],
    )
    written, notes = write_plots(rows, columns, tmp_path)
    assert written == [] and list(tmp_path.iterdir()) == []
    assert notes and "matplotlib is not installed" in notes[0]


def test_ray_runner_imports_without_ray_and_says_what_is_missing(tmp_path, monkeypatch):
    from gshead.ablate import ray_runner
    from gshead.core.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)
    matrix = _write_matrix(tmp_path / "m.yaml", {"lifter.resolution": [8]})
    with pytest.raises(ConfigError, match="ray is not installed"):
        ray_runner.run_on_ray(matrix, tmp_path / "out")
    assert ray_runner.main([str(matrix), "-o", str(tmp_path / "out")]) == 2


def test_training_folder_is_kept_for_resuming_only_for_the_same_variant(tmp_path):
    loaded = expand(
        {"base": _base(), "axes": {"lifter.resolution": [8]}, "measure": SMALL, "train": {"steps": 2}}
    )
    (task,) = runner.make_tasks(loaded, loaded.variants, tmp_path, workers=1)
    folder = runner.prepare_train_dir(task)
    assert folder == runner.train_dir_of(tmp_path, "8") and folder.is_dir()
    (folder / "checkpoints").mkdir()
    assert (runner.prepare_train_dir(task) / "checkpoints").is_dir()  # same digest: kept (resumes)
    other = runner.VariantTask(**{**task.__dict__, "digest": "f" * 16})
    assert not (runner.prepare_train_dir(other) / "checkpoints").exists()  # another variant's: emptied
    (folder / "checkpoints").mkdir()
    forced = runner.VariantTask(**{**other.__dict__, "restart_training": True})
    assert not (runner.prepare_train_dir(forced) / "checkpoints").exists()  # --force: from scratch
    (forced_task,) = runner.make_tasks(loaded, loaded.variants, tmp_path, workers=1, restart_training=True)
    assert forced_task.restart_training


def test_a_training_hook_that_takes_resume_is_asked_to_resume(tmp_path, monkeypatch):
    calls = []

    def run_training(pipeline, config, steps, out_dir, resume=False):
        calls.append(resume)
        return {"psnr": 1.0}

    trainer = types.ModuleType("gshead.train")
    trainer.run_training = run_training
    monkeypatch.setitem(sys.modules, "gshead.train", trainer)
    assert runner.train_variant(None, 2, None, tmp_path / "t") == {"psnr": 1.0}
    assert runner.train_variant(None, 2, None, tmp_path / "t", resume=False) == {"psnr": 1.0}
    assert calls == [True, False]
