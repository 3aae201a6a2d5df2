"""The training loop: exact resume, NaN guard, overfitting a sample, logs, the CLI."""

from __future__ import annotations

import csv
import signal

import pytest
import torch
from conftest import ListDataset, make_sample, train_config

from gshead.train.trainer import Trainer


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _csv_steps(run_dir) -> list[int]:
    with open(run_dir / "scalars.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, dataset):
    config = train_config(steps=4, batch_size=1, checkpoint_every=100)
    whole = Trainer(config, tmp_path / "whole", dataset=dataset, quiet=True).fit()
    assert whole.step == 4 and not whole.interrupted

    def stop_at_two(record):
        if record.step == 2:
            raise KeyboardInterrupt

    first = Trainer(config, tmp_path / "split", dataset=dataset, quiet=True, on_step=stop_at_two).fit()
    assert first.interrupted and first.step == 2
    assert first.checkpoint is not None and first.checkpoint.path.name == "step-000002"
    # Steps 3 and 4 were never run; a row past the checkpoint (as a killed run may leave) is dropped.
    with open(tmp_path / "split" / "scalars.csv", "a") as f:
        f.write("3,9,9,9,9,9,9,9,9,9,9\n")

    # The resumed run loads its batches in a DataLoader worker: the same samples in the same order.
    with_worker = train_config(steps=4, batch_size=1, checkpoint_every=100, data={"workers": 1})
    resumed_trainer = Trainer(with_worker, tmp_path / "split", dataset=dataset, quiet=True)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.start_step == 2 and resumed.step == 4
    curve_whole = torch.tensor([r.loss for r in whole.history])
    curve_split = torch.tensor([r.loss for r in first.history + resumed.history])
    assert torch.allclose(curve_whole, curve_split, rtol=1e-6, atol=0), (curve_whole, curve_split)
    final_whole = Trainer(config, tmp_path / "whole", dataset=dataset, quiet=True)
    final_whole.resume()
    for key, value in _params(final_whole).items():
        assert torch.allclose(value, _params(resumed_trainer)[key], rtol=1e-6, atol=1e-7), key
    assert _csv_steps(tmp_path / "split") == [1, 2, 3, 4]


def test_nan_guard_skips_and_counts(tmp_path):
    good = make_sample(0)
    bad = good.replace(target_images=torch.full_like(good.target_images, float("nan")))
    snapshots = []
    config = train_config(steps=4, batch_size=1, grad_clip=None)
    trainer = Trainer(config, tmp_path / "run", dataset=ListDataset([good, bad]), quiet=True)
    initial = _params(trainer)
    trainer.on_step = lambda record: snapshots.append((record, _params(trainer)))
    result = trainer.fit()
    assert result.bad_steps == 2  # one bad sample per epoch of two
    assert sum(r.skipped for r in result.history) == 2
    previous = initial
    for record, params in snapshots:
        same = all(torch.equal(params[k], previous[k]) for k in params)
        assert same == record.skipped, f"step {record.step}: skipped={record.skipped} but unchanged={same}"
        assert all(torch.isfinite(v).all() for v in params.values())
        previous = params
    with open(tmp_path / "run" / "scalars.csv", newline="") as f:
        assert [float(r["bad_steps"]) for r in csv.DictReader(f)][-1] == 2


@pytest.mark.slow
def test_loss_decreases_when_overfitting_one_sample(tmp_path):
    config = train_config(steps=20, batch_size=1, optimizer={"lr": 2e-2})
    result = Trainer(config, tmp_path / "run", dataset=ListDataset([make_sample(0)]), quiet=True).fit()
    losses = [r.loss for r in result.history]
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses


def test_logs_images_and_amp(tmp_path, dataset):
    from PIL import Image

    import importlib.util
    import warnings

    config = train_config(steps=1, batch_size=1, image_every=1, amp=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(config, tmp_path / "run", dataset=dataset).fit()
    missing = [w for w in caught if "tensorboard is not installed" in str(w.message)]
    if importlib.util.find_spec("tensorboard") is None:
        assert len(missing) == 1, "expected one warning that scalars go to CSV only"
    else:
        assert not missing and list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents*"))
    assert result.step == 1 and torch.isfinite(torch.tensor(result.history[0].loss))
    with open(tmp_path / "run" / "scalars.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1]
    for key in ("loss", "l1", "l1_refined", "face_l1", "point", "perceptual", "lr", "grad_norm", "it_per_s"):
        assert key in rows[0]
    assert float(rows[0]["loss"]) == pytest.approx(result.history[0].loss, rel=1e-6)
    with Image.open(tmp_path / "run" / "images" / "step-000001.png") as grid:
        # two target rows, four columns (source | target | coarse | output) of 32 px with 2 px gaps
        assert grid.size == (4 * 34 + 2, 2 * 34 + 2)
    assert (tmp_path / "run" / "checkpoints" / "step-000001").is_dir()


def _write_config(path, **changes) -> None:
    import yaml

    config = train_config(**changes)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))


def test_cli_train_resume_and_ctrl_c(tmp_path, dataset, monkeypatch, capsys):
    from gshead import cli
    from gshead.train import trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "_default_dataset", lambda config: dataset)
    cfg = tmp_path / "train.yaml"
    _write_config(cfg, steps=2, batch_size=1, checkpoint_every=1, keep_last=2)
    run = tmp_path / "run"
    assert cli.main(["train", str(cfg), "-o", str(run), "-q"]) == 0
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000001", "step-000002"]
    capsys.readouterr()
    assert cli.main(["train", str(cfg), "-o", str(run), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already has checkpoints" in err and "\n" not in err

    # Ctrl-C during step 3: the step completes, is saved, and the command exits with 130.
    real_step = trainer_mod.Trainer.train_step

    def step_then_sigint(self, batch=None):
        record = real_step(self, batch)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
        return record

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step_then_sigint)
    assert cli.main(["train", str(cfg), "-o", str(run), "--resume", "--steps", "5", "-q"]) == 130
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000002", "step-000003"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_cli_stage2_without_weights(tmp_path, capsys):
    from gshead import cli

    cfg = tmp_path / "train.yaml"
    cfg.write_text("stage: 2\ndevice: cpu\n")
    assert cli.main(["train", str(cfg), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gshead: error:") and "perceptual_weights" in err and "\n" not in err


@pytest.mark.slow
def test_cli_trains_on_a_synthetic_dataset(tmp_path, capsys):
    pytest.importorskip("gshead.data")
    from gshead import cli
    from gshead.data import write_synthetic_dataset

    root = tmp_path / "synth"
    write_synthetic_dataset(root, identities=3, frames=3, size=32, seed=0, splits=(1, 0, 0), progress=False)
    cfg = tmp_path / "train.yaml"
    _write_config(cfg, data={"root": str(root), "targets": 2}, steps=2, batch_size=1)
    assert cli.main(["train", str(cfg), "-o", str(tmp_path / "run"), "-q"]) == 0
    assert "trained to step 2" in capsys.readouterr().err
    assert _csv_steps(tmp_path / "run") == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()


@pytest.mark.slow
def test_stage2_perceptual_with_vgg_weights(tmp_path, dataset):
    vgg = pytest.importorskip("gshead.nets.vgg")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.VGG16Features().state_dict().items()}, str(weights))
    config = train_config(steps=1, batch_size=1, stage=2, perceptual_weights=str(weights))
    trainer = Trainer(config, tmp_path / "run", dataset=dataset, quiet=True)
    result = trainer.fit()
    assert result.history[0].terms["perceptual"] > 0
    assert all(not p.requires_grad for p in trainer.model.perceptual.parameters())
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in trainer.model.perceptual.parameters()}  # the loss net is not trained


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_curve(tmp_path):
    """SIGKILL a ``gshead train`` process after its second checkpoint, resume, compare curves."""
    import subprocess
    import sys
    import time

    pytest.importorskip("gshead.data")
    from gshead import cli
    from gshead.data import ReenactmentDataset, write_synthetic_dataset

    root = tmp_path / "synth"
    write_synthetic_dataset(root, identities=3, frames=3, size=32, seed=0, splits=(1, 0, 0), progress=False)
    data = {"root": str(root), "targets": 2}
    cfg = tmp_path / "train.yaml"
    _write_config(cfg, data=data, steps=40, batch_size=1, checkpoint_every=1, keep_last=10)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gshead", "train", str(cfg), "-o", str(run), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "step-000002").is_dir():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the training process made no second checkpoint"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert cli.main(["train", str(cfg), "-o", str(run), "--resume", "--steps", "4", "-q"]) == 0
    assert _csv_steps(run) == [1, 2, 3, 4]
    with open(run / "scalars.csv", newline="") as f:
        resumed = torch.tensor([float(r["loss"]) for r in csv.DictReader(f)], dtype=torch.float64)

    config = train_config(data=data, steps=4, batch_size=1)
    dataset = ReenactmentDataset(root, split="train", targets=2, seed=config.seed)
    whole = Trainer(config, tmp_path / "whole", dataset=dataset, quiet=True).fit()
    expected = torch.tensor([r.loss for r in whole.history], dtype=torch.float64)
    assert torch.allclose(resumed, expected, rtol=1e-6, atol=0), (resumed, expected)


def test_tensorboard_receives_scalars_and_grids(tmp_path, monkeypatch):
    import sys
    import types

    from gshead.train.logging import RunLogger

    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append(("scalar", tag, value, step))

        def add_image(self, tag, image, step):
            calls.append(("image", tag, tuple(image.shape), step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    logger = RunLogger(tmp_path, quiet=True)
    logger.scalars(3, {"loss": 0.5})
    logger.images(
        3, torch.rand(1, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(2, 5, 8, 8), torch.rand(2, 3, 16, 16)
    )
    logger.close()
    assert calls[0] == ("init", str(tmp_path / "tensorboard"))
    assert ("scalar", "train/loss", 0.5, 3) in calls
    assert ("image", "train/grid", (3, 2 * 10 + 2, 4 * 10 + 2), 3) in calls
    assert calls[-1] == ("close",)
    assert RunLogger(tmp_path / "other", enabled=False).images(1, *[torch.rand(1, 3, 4, 4)] * 4) is None


def test_interrupt_inside_a_step_saves_the_step_before(tmp_path, dataset):
    from gshead.train import checkpoints as ckpt

    trainer = Trainer(train_config(steps=3, batch_size=1), tmp_path / "run", dataset=dataset, quiet=True)
    rng_after_first = []
    trainer.on_step = lambda record: rng_after_first.append(torch.get_rng_state())
    real_forward = trainer.model.forward

    def forward(batch):
        if trainer.step == 1:
            torch.rand(7)  # the unfinished step draws from the RNG, then Ctrl-C arrives
            raise KeyboardInterrupt
        return real_forward(batch)

    trainer.model.forward = forward
    result = trainer.fit()
    assert result.interrupted and result.step == 1 and result.checkpoint.step == 1
    state = ckpt.load_state(result.checkpoint)
    assert torch.equal(state["rng"][0]["torch"], rng_after_first[0])


def test_cli_shipped_config_without_its_dataset(tmp_path, monkeypatch, capsys):
    from gshead import cli

    monkeypatch.chdir(tmp_path)  # no data/synth here
    assert cli.main(["train", "tiny-synthetic", "--steps", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "gshead: error: data.root data/synth: no such folder; expected a dataset (see write_synthetic_dataset)"
    )
    assert not (tmp_path / "runs" / "tiny-synthetic" / "checkpoints").exists()


def test_tensorboard_event_file_holds_scalars_and_grids(tmp_path):
    """The real TensorBoard writer (when installed): an event file that TensorBoard's own reader parses."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'gshead[train]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gshead.train.logging import RunLogger

    logger = RunLogger(tmp_path, quiet=True)
    logger.scalars(3, {"loss": 0.5})
    logger.images(3, torch.rand(1, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(2, 5, 8, 8), torch.rand(2, 3, 16, 16))
    logger.close()
    events = list(tmp_path.rglob("events.out.tfevents*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"] and acc.Tags()["images"] == ["train/grid"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(3, 0.5)]
