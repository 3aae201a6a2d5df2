"""Hostile inputs, "finite or nothing" (issue 19, item 2): writers refuse non-finite tensors, CLI
numbers are checked for range and finiteness, a corrupt anny-head cache is rebuilt with a warning.

The CLI cases run the real ``gshead`` in subprocesses on the tiny pipeline: exit 2, one stderr line
``gshead: error: ...`` naming the tensor or flag, no traceback, no output file, inputs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from gshead.core.errors import GsheadError, NonFiniteError, require_finite
from gshead.core.types import Gaussians
from gshead.testing import sample_image, tiny_pipeline


def _gshead(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "gshead", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _refused(result: subprocess.CompletedProcess, *names: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("gshead: error:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the tiny pipeline's YAML, an avatar of it, and a NaN copy of its weights."""
    folder = tmp_path_factory.mktemp("finite")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    made = _gshead(
        "reconstruct", "example:astronaut", "-o", "a.safetensors", "--pipeline", "tiny.yaml", "--fit-steps", "0", "-q",
        cwd=folder,
    )
    assert made.returncode == 0, made.stderr[-2000:]

    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry
    from gshead.train.checkpoints import _model_metadata, model_tensors

    pipe = Pipeline.from_dict(tiny_pipeline(), get_registry())
    tensors = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in model_tensors(pipe).items()}
    save_file(tensors, str(folder / "nan-weights.safetensors"), metadata=_model_metadata(pipe))

    with safe_open(str(folder / "a.safetensors"), framework="pt") as f:
        meta, avatar = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    means = "static.means"  # (rig.dynamic.means is re-derived from the binding when posed)
    avatar[means][..., 0, :] = math.nan
    save_file(avatar, str(folder / "nan-avatar.safetensors"), metadata=meta)
    return {"folder": folder, "nan_means": means}


def _check(work, *args: str, names: tuple[str, ...], output: str) -> str:
    folder = work["folder"]
    before = _digests(folder)
    line = _refused(_gshead(*args, cwd=folder), *names)
    assert not (folder / output).exists()
    assert _digests(folder) == before  # inputs unchanged, nothing new (no partial file)
    return line


def test_reconstruct_refuses_nan_weights(work):
    line = _check(
        work, "reconstruct", "example:astronaut", "-o", "b.safetensors", "--pipeline", "tiny.yaml",
        "--weights", "nan-weights.safetensors", "--fit-steps", "0", "-q",
        names=("nan-weights.safetensors", "non-finite"), output="b.safetensors",
    )  # fmt: skip
    assert "tensor '" in line and "values of" in line


def test_export_refuses_a_nan_avatar(work):
    _check(
        work, "export", "nan-avatar.safetensors", "-o", "x.ply", names=("non-finite", "tensor '"), output="x.ply"
    )


@pytest.mark.parametrize(
    "args, names",
    [
        (["--expression", "jawOpen=nan"], ("--expression jawOpen=nan", "-10 to 10")),
        (["--expression", "jawOpen=1e30"], ("--expression jawOpen=1e+30", "-10 to 10")),
        (["--pose", "nan", "0", "0"], ("--pose nan", "-360 to 360 degrees")),
        (["--pose", "0", "1e9", "0"], ("--pose 1000000000", "degrees")),
        (["--jaw", "nan"], ("--jaw nan", "radians")),
        (["--jaw", "1e30"], ("--jaw", "radians")),
        (["--eyes", "inf", "0", "0", "0", "0", "0"], ("--eyes inf", "radians")),
        (["--translation", "0", "nan", "0"], ("--translation nan", "model units")),
    ],
)
def test_export_refuses_bad_numbers(work, args, names):
    _check(work, "export", "a.safetensors", "-o", "x.ply", *args, names=names, output="x.ply")


@pytest.mark.parametrize(
    "args, names",
    [
        (["--expression", "jawOpen=nan"], ("--expression jawOpen=nan",)),
        (["--jaw", "inf"], ("--jaw inf",)),
        (["--identity", "nan"], ("--identity nan",)),
    ],
)
def test_headmodel_render_refuses_bad_numbers(work, args, names):
    _check(work, "headmodel", "render", "procedural", "-o", "h.png", *args, names=names, output="h.png")


@pytest.mark.parametrize(
    "args, names",
    [
        (["--frames", "100000000"], ("--frames 100000000", "1 to 100000")),
        (["--frames", "0"], ("--frames 0",)),
        (["--fps", "nan"], ("--fps nan",)),
        (["--fps", "0"], ("--fps 0",)),
    ],
)
def test_reenact_refuses_bad_numbers(work, args, names):
    _check(work, "reenact", "a.safetensors", "--driver", "demo", "-o", "r.mp4", "-q", *args, names=names, output="r.mp4")


@pytest.mark.parametrize(
    "args, names",
    [
        (["--splits", "0.5", "0.5", "0.5"], ("--splits 0.5 0.5 0.5", "sum to 1")),
        (["--splits", "nan", "0.5", "0.5"], ("--splits nan",)),
        (["--splits", "1.5", "-0.5", "0"], ("--splits",)),
        (["--seed", "99999999999999999999999999"], ("--seed", "9223372036854775807")),
        (["--seed", "-1"], ("--seed -1",)),
    ],
)
def test_data_synth_refuses_bad_numbers(work, args, names):
    _check(
        work, "data", "synth", "-n", "2", "--frames", "2", "--size", "16", "--head-model", "procedural",
        "-o", "ds", "-q", *args, names=names, output="ds",
    )  # fmt: skip


# ------------------------------------------------------------------------------ the writers


def test_require_finite_names_the_first_bad_tensor():
    require_finite({"a": torch.ones(3), "i": torch.arange(3)}, "x")  # finite and integer: pass
    with pytest.raises(NonFiniteError, match=r"^x: tensor 'b' has 2 non-finite .* of 4"):
        require_finite({"a": torch.ones(3), "b": torch.tensor([1.0, math.nan, math.inf, 0.0]), "c": torch.full((2,), math.nan)}, "x")
    assert issubclass(NonFiniteError, GsheadError)


def _gaussians(n: int = 10) -> Gaussians:
    g = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.1,
        quats=torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1),
        scales=0.001 + 0.02 * torch.rand(1, n, 3, generator=g),
        opacities=0.01 + 0.98 * torch.rand(1, n, generator=g),
        features=torch.rand(1, n, 5, generator=g),
    )


def test_write_ply_refuses_nan(tmp_path):
    from gshead.io.ply import write_ply

    g = _gaussians()
    g.means[0, 3, 1] = math.nan
    with pytest.raises(NonFiniteError, match="gaussians.means"):
        write_ply(tmp_path / "x.ply", g)
    zero = _gaussians()
    zero.scales[0, 0, 0] = 0.0  # log(0): -inf in the file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteError, match="'scale'"):
            write_ply(tmp_path / "x.ply", zero)
    assert list(tmp_path.iterdir()) == []


def test_save_avatar_refuses_nan(tmp_path):
    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry
    from gshead.io.avatar import save_avatar

    pipe = Pipeline.from_dict(tiny_pipeline(), get_registry())
    with torch.no_grad():
        avatar = pipe.build_avatar(sample_image(64))
        pipe.driver.extra_features.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="weights.driver.extra_features.weight"):
        save_avatar(tmp_path / "a.safetensors", avatar, pipe)
    assert list(tmp_path.iterdir()) == []


def test_save_checkpoint_refuses_nan(tmp_path):
    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry
    from gshead.train.checkpoints import save_checkpoint

    pipe = Pipeline.from_dict(tiny_pipeline(), get_registry())
    with torch.no_grad():
        pipe.lifter.out.bias[0] = math.inf
    with pytest.raises(NonFiniteError, match="lifter.out.bias"):
        save_checkpoint(tmp_path / "ck", 1, pipe, {})
    assert not any(p.name.startswith("step-") for p in (tmp_path / "ck").iterdir())


def test_load_pipeline_weights_refuses_nan(work):
    from gshead.core.errors import AvatarFileError
    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry
    from gshead.io.weights import load_pipeline_weights

    pipe = Pipeline.from_dict(tiny_pipeline(), get_registry())
    before = {k: v.clone() for k, v in pipe.encoder.state_dict().items()}
    with pytest.raises(AvatarFileError, match=r"tensor '.*non-finite"):
        load_pipeline_weights(pipe, work["folder"] / "nan-weights.safetensors")
    assert all(torch.equal(v, pipe.encoder.state_dict()[k]) for k, v in before.items())


def test_save_sequence_refuses_nan(tmp_path):
    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry
    from gshead.core.types import Camera
    from gshead.io.sequence import TrackedSequence, load_sequence, save_sequence

    pipe = Pipeline.from_dict(tiny_pipeline(), get_registry())
    params = pipe.head_model.neutral(3)
    camera = Camera.frontal(1.0, 18.0, 32, 32, 3)
    good = TrackedSequence(params=params, camera=camera, valid=torch.ones(3, dtype=torch.bool), fps=25.0, head_model="procedural")
    save_sequence(tmp_path / "ok.safetensors", good)  # NaN crop and fit_error mean "unknown": allowed
    assert len(load_sequence(tmp_path / "ok.safetensors")) == 3
    expression = params.expression.clone()
    expression[1, 0] = math.nan
    bad = TrackedSequence(params=params.replace(expression=expression), camera=camera,
                          valid=torch.ones(3, dtype=torch.bool), fps=25.0, head_model="procedural")
    with pytest.raises(NonFiniteError, match="params.expression"):
        save_sequence(tmp_path / "bad.safetensors", bad)
    assert not (tmp_path / "bad.safetensors").exists()


# ------------------------------------------------------------------------------ the anny-head cache


def test_corrupt_anny_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    from gshead.plugins.headmodels import anny_head
    from gshead.plugins.headmodels.anny_head import AnnyHeadConfig, AnnyHeadModel

    pytest.importorskip("anny", reason="anny-head needs the 'anny' package")
    monkeypatch.setenv("GSHEAD_CACHE_DIR", str(tmp_path))
    config = AnnyHeadConfig(phenotypes=False, local_changes=False)  # a small conversion
    clean = AnnyHeadModel(config)
    path = anny_head.cache_path(config)
    assert path.parent == tmp_path and path.is_file()
    with safe_open(str(path), framework="pt") as f:
        assert len(json.loads(f.metadata()["gshead"])["tensors_sha256"]) == 64
    pristine = path.read_bytes()
    header = 8 + int.from_bytes(pristine[:8], "little")
    size = min(2 * 1024 * 1024, len(pristine) - header)
    path.write_bytes(pristine[:header] + b"\xff" * size + pristine[header + size :])

    with pytest.warns(UserWarning, match=rf"{path.name}.*corrupt anny-head cache"):
        rebuilt = AnnyHeadModel(config)
    assert path.read_bytes() == pristine  # rebuilt, byte for byte
    for name, buffer in clean.state_dict().items():
        other = rebuilt.state_dict()[name]
        assert not other.is_floating_point() or torch.isfinite(other).all(), name
        assert torch.equal(buffer, other), name

    # a cache from before content hashes is stale: rebuilt (and then hashed)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    old = json.loads(meta["gshead"])
    del old["tensors_sha256"]
    save_file(tensors, str(path), metadata={"gshead": json.dumps(old, sort_keys=True)})
    assert anny_head.read_cache(path) is None
    AnnyHeadModel(config)
    assert path.read_bytes() == pristine
