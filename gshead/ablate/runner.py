"""Run the variants of an ablation matrix: measure each, save one JSON per variant, resume later.

Per variant (``run_variant``): build the pipeline; count parameters per component; optionally
train (``train_variant``, seeded by ``train.seed``) and evaluate on a held-out split
(``heldout_metrics``, ``train.eval``: self-reenactment through ``gshead.eval.protocols``); reconstruct ``measure.repeats`` times (median time); check the contract
on the real pipeline (isolation, immutability, output shape/range, frames that follow the head
parameters); record a self-reconstruction PSNR; then, with the pipeline dropped so only the driving
sessions remain, time ``measure.frames`` single frames at every render size after ``measure.warmup``
untimed ones (median frame time, FPS = 1 / median).

Results: ``OUT/variants/<id>.json``, written atomically. A rerun skips a variant whose JSON says
``ok`` and carries the same config digest (``--force`` reruns it); failed or stale variants run
again. A failing variant records its one-line error in its JSON and its traceback in
``OUT/variants/<id>.traceback.txt``; the other variants still run.

Workers: ``workers > 1`` runs variants in a ``ProcessPoolExecutor`` with the *spawn* start method
(numba's OpenMP layer is not fork-safe), each worker using ``cores // workers`` torch threads.
``run_matrix(..., execute=...)`` hands the tasks to another executor instead (``ray_runner``: one
Ray task per variant); resuming, failure rows and the report stay the same.

Training variants train in ``OUT/variants/<id>.train/`` (checkpoints under ``checkpoints/``). A
variant killed while training resumes from its latest checkpoint the next time it runs (a rerun,
or a Ray retry); ``--force`` or a changed variant digest starts its training from scratch.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gshead.ablate.matrix import LoadedMatrix, Variant
from gshead.core.errors import ConfigError, ContractViolation, GsheadError

RESULT_VERSION = 1


def clock() -> float:
    """Seconds from a monotonic clock (tests may replace it)."""
    return time.perf_counter()


@dataclass(frozen=True)
class VariantTask:
    """Everything a worker process needs to run one variant (plain data: it is pickled to spawn)."""

    id: str
    axes: dict[str, str]  # axis path -> value label
    config: dict[str, Any]  # validated pipeline config (JSON data)
    digest: str
    measure: dict[str, Any]  # MeasureSettings as JSON data
    train: dict[str, Any] | None  # TrainSettings as JSON data, or None
    image: str  # portrait to reconstruct (resolved path or example:...)
    train_config: str | None  # resolved training config path
    out_dir: str  # OUT (results go to OUT/variants)
    threads: int | None  # torch threads for this variant (None: leave as set)
    restart_training: bool = False  # True (--force): drop earlier checkpoints instead of resuming


@dataclass
class RunSummary:
    """What ``run_matrix`` did."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(
        default_factory=list
    )  # every variant of the matrix that has a result


def variants_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "variants"


def result_path(out_dir: str | Path, variant_id: str) -> Path:
    return variants_dir(out_dir) / f"{variant_id}.json"


def traceback_path(out_dir: str | Path, variant_id: str) -> Path:
    return variants_dir(out_dir) / f"{variant_id}.traceback.txt"


def read_result(out_dir: str | Path, variant_id: str) -> dict[str, Any] | None:
    """A variant's stored result, or None when missing or unreadable (it then runs again)."""
    path = result_path(out_dir, variant_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(result: dict[str, Any] | None, variant: Variant) -> bool:
    """Whether a stored result is a success for this exact variant (same config digest)."""
    return bool(result) and result.get("status") == "ok" and result.get("digest") == variant.digest


def _write_text(path: Path, text: str) -> None:
    from gshead.io.media import atomic_output

    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def one_line(exc: BaseException) -> str:
    """An exception as one line: gshead's own messages as they are, others prefixed by their type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, GsheadError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------- hooks
def build_pipeline(config: dict[str, Any], registry=None):
    """Build a variant's pipeline (a module-level hook: tests count calls through it)."""
    from gshead.core.config import validate_pipeline
    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry

    registry = registry or get_registry()
    return Pipeline(validate_pipeline(config, registry, source="variant"), registry)


TRAIN_MARKER = "variant-digest.txt"
"""File in a variant's training folder naming the variant digest its checkpoints belong to."""
TRAIN_METRICS = "train-metrics.json"
"""File in a variant's training folder with the metrics of its finished training run."""


def _accepts(function: Callable, name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _stock_training_resuming(
    pipeline, config: str | None, steps: int, out_dir: Path, seed: int | None = None
) -> dict[str, float]:
    """``gshead.train.run_training`` with ``Trainer.fit(resume=True)``: continue from the latest
    checkpoint in ``out_dir``, and the saved metrics of a variant whose training had finished.
    ``seed``: the training seed (default: the training config's)."""
    from gshead.train.config import TrainConfig, load_train_config
    from gshead.train.trainer import Trainer

    overrides: dict[str, Any] = {"steps": steps} if seed is None else {"steps": steps, "seed": seed}
    settings = load_train_config(config, overrides) if config is not None else TrainConfig(**overrides)
    result = Trainer(settings, out_dir, pipeline=pipeline, quiet=True).fit(resume=True, steps=steps)
    for module in pipeline.trainable_modules().values():
        module.eval()
    saved = out_dir / TRAIN_METRICS
    if result.interrupted:
        raise KeyboardInterrupt  # Ctrl-C: the checkpoint is saved; measuring a half-trained variant is not wanted
    if result.step == result.start_step and saved.is_file():  # finished before (killed while measuring)
        return {str(k): float(v) for k, v in json.loads(saved.read_text(encoding="utf-8")).items()}
    done = [r.loss for r in result.history if not r.skipped][-10:]
    metrics = {
        "train_loss": sum(done) / len(done) if done else float("nan"),
        "bad_steps": float(result.bad_steps),
    }
    _write_text(saved, json.dumps(metrics) + "\n")
    return metrics


def train_variant(
    pipeline, steps: int, config: str | None, out_dir: Path, resume: bool = True, seed: int | None = None
) -> dict[str, float]:
    """The training hook: ``gshead.train.run_training(pipeline, config=PATH|None, steps=N,
    out_dir=DIR) -> {metric: value}`` trains ``pipeline``'s modules in place and returns quality
    metrics (higher-is-better or not, as named, e.g. ``psnr``, ``lpips``) that become ``quality.*``
    columns. Without that function the variant fails with a ConfigError saying so.

    ``resume``: continue from the latest checkpoint in ``out_dir`` (a killed variant picks up where
    it stopped): gshead's own trainer is driven with ``Trainer.fit(resume=True)`` (which also keeps
    the metrics of a run that had finished), another hook gets ``resume=True`` when it takes it, and
    trains from the start otherwise.

    ``seed``: the training seed (``train.seed`` of the matrix; None: the training config's); another
    hook gets it as ``seed=`` when it takes that argument."""
    import importlib

    try:
        train_module = importlib.import_module("gshead.train")
    except ModuleNotFoundError as exc:
        if exc.name not in ("gshead.train", "gshead"):
            raise
        raise ConfigError(
            "train: gshead.train is not installed; expected a trainer package providing "
            "run_training(pipeline, config=, steps=, out_dir=), or remove 'train:' from the matrix"
        ) from None
    run = getattr(train_module, "run_training", None)
    if not callable(run):
        raise ConfigError(
            "train: gshead.train has no run_training(pipeline, config=, steps=, out_dir=) function; "
            "expected that hook, or remove 'train:' from the matrix"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"seed": seed} if seed is not None and _accepts(run, "seed") else {}
    if resume and getattr(run, "__module__", None) == "gshead.train" and hasattr(train_module, "__path__"):
        # keeps a finished run's metrics
        metrics = _stock_training_resuming(pipeline, config, steps, out_dir, seed=seed)
    elif resume and _accepts(run, "resume"):
        metrics = run(pipeline, config=config, steps=steps, out_dir=out_dir, resume=True, **extra) or {}
    else:
        metrics = run(pipeline, config=config, steps=steps, out_dir=out_dir, **extra) or {}
    return {str(k): float(v) for k, v in dict(metrics).items()}


def training_seed(train: dict[str, Any], config: dict[str, Any]) -> int | None:
    """The training seed a variant uses: ``train.seed`` as an integer, the variant's pipeline seed
    for ``pipeline``, None (the training config's) when not set."""
    seed = train.get("seed")
    if seed == "pipeline":
        return int(config.get("seed", 0))
    return None if seed is None else int(seed)


def _training_data_root(train_config: str | None) -> Path:
    """The ``data.root`` of a training config (the trainer's default without one)."""
    from gshead.train.config import TrainConfig, load_train_config

    settings = load_train_config(train_config) if train_config is not None else TrainConfig()
    return Path(settings.data.root)


def heldout_metrics(
    pipeline, settings: dict[str, Any], train_config: str | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Self-reenactment of ``pipeline`` on a held-out split: ``gshead.eval.protocols.evaluate``
    (what ``gshead eval DATASET --protocol self`` runs) without a face tracker or identity model.

    ``settings``: ``HeldOutSettings`` as JSON data (paths already resolved). Returns
    (``{heldout_psnr, heldout_ssim[, heldout_lpips]}`` means over frames, ``{data, split,
    samples, frames}``)."""
    import torch

    from gshead.core.errors import InputError
    from gshead.data import ReenactmentDataset
    from gshead.eval.protocols import MetricSuite, evaluate

    root = Path(settings["data"]) if settings.get("data") else _training_data_root(train_config)
    data = ReenactmentDataset(
        root,
        settings.get("split", "test"),
        targets=int(settings.get("targets", 4)),
        seed=int(settings.get("seed", 0)),
    )
    head = pipeline.config.headmodel.name
    if data.info.head_model != head:
        raise InputError(
            f"{root}: parameters are for head model {data.info.head_model!r}; the pipeline uses {head!r}"
        )
    n = len(data) if settings.get("samples") is None else min(len(data), int(settings["samples"]))
    lpips = None
    if settings.get("lpips_backbone"):
        from gshead.metrics.lpips import load_lpips

        lpips = load_lpips(settings["lpips_backbone"], settings["lpips_lin"])
    suite = MetricSuite(lpips=lpips, reasons={"tracker": "not measured by gshead ablate"})
    parameter = next((p for m in pipeline.trainable_modules().values() for p in m.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.no_grad():
        samples = (data[i].to(device) for i in range(n))
        result, _ = evaluate(pipeline, samples, "self", suite)
    metrics = {f"heldout_{k.lower()}": float(v) for k, v in result.means.items() if v is not None}
    info = {"data": str(root), "split": data.split, "samples": result.samples, "frames": result.frames}
    return metrics, info


# ----------------------------------------------------------------------------------- one variant
def parameter_counts(pipeline) -> dict[str, int]:
    """Parameters per component (0 for components that are not modules) and their ``total``."""
    import torch

    counts: dict[str, int] = {}
    for kind, component in pipeline.components().items():
        n = sum(p.numel() for p in component.parameters()) if isinstance(component, torch.nn.Module) else 0
        counts[kind] = int(n)
    counts["total"] = sum(counts.values())
    return counts


def _check_contract(pipeline, avatar) -> None:
    """The contract on the variant's own pipeline; ContractViolation (one line) when it breaks."""
    import torch

    session = pipeline.session(avatar)  # clause 1: isolation
    params = pipeline.head_model.neutral(2)
    params = params.replace(
        jaw=torch.tensor([[0.0, 0, 0], [0.3, 0, 0]]), rotation=torch.tensor([[0, 0, 0], [0, 0.3, 0.0]])
    )
    frames = session.render(params)  # clause 2 after every stage
    size = pipeline.config.render_size
    if tuple(frames.shape) != (2, 3, size, size):
        raise ContractViolation(f"frames must be [2, 3, {size}, {size}], got {list(frames.shape)}")
    if not torch.isfinite(frames).all() or frames.min() < 0 or frames.max() > 1:
        raise ContractViolation("frames must be finite and lie in [0, 1]")
    if torch.equal(frames[0], frames[1]):
        raise ContractViolation("different head parameters rendered identical frames")


def _self_psnr(pipeline, avatar, image) -> float:
    """PSNR (dB) of the avatar rendered at its source pose and camera against the input crop."""
    import torch

    size = pipeline.config.source_size
    session = pipeline.session(avatar, render_size=size)
    rendered = session.render(avatar.source)  # [1, 3, S, S]
    mse = float(torch.mean((rendered - image) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _time_driving(session, motion, warmup: int, frames: int) -> list[float]:
    n = motion.batch_size
    for i in range(warmup):
        session.render(motion.select(slice(i % n, i % n + 1)))
    times = []
    for i in range(frames):
        j = (warmup + i) % n
        frame = motion.select(slice(j, j + 1))
        start = clock()
        session.render(frame)
        times.append(clock() - start)
    return times


def train_dir_of(out_dir: str | Path, variant_id: str) -> Path:
    """The folder a training variant trains in (its checkpoints are under ``checkpoints/``)."""
    return variants_dir(out_dir) / f"{variant_id}.train"


def prepare_train_dir(task: VariantTask) -> Path:
    """The variant's training folder, kept for resuming when its checkpoints belong to this exact
    variant (same digest) and ``task.restart_training`` is False; emptied otherwise."""
    import shutil

    folder = train_dir_of(task.out_dir, task.id)
    marker = folder / TRAIN_MARKER
    try:
        same = marker.read_text(encoding="utf-8").strip() == task.digest
    except OSError:
        same = False
    if folder.exists() and (task.restart_training or not same):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        _write_text(marker, task.digest + "\n")
    return folder


def measure_variant(task: VariantTask) -> dict[str, Any]:
    """Build, train (optionally), reconstruct, check and time one variant; the result fields."""
    import torch

    from gshead.io.media import read_image
    from gshead.io.motion import demo_motion

    measure = task.measure
    out: dict[str, Any] = {}
    start = clock()
    pipeline = build_pipeline(task.config)
    out["build_s"] = clock() - start
    out["parameters"] = parameter_counts(pipeline)
    quality: dict[str, float] = {}
    if task.train is not None:
        train_dir = prepare_train_dir(task)
        seed = training_seed(task.train, task.config)
        quality.update(
            train_variant(pipeline, int(task.train["steps"]), task.train_config, train_dir, seed=seed)
        )
        if task.train.get("eval") is not None:
            start = clock()
            heldout, out["heldout"] = heldout_metrics(pipeline, task.train["eval"], task.train_config)
            out["heldout"]["seconds"] = clock() - start
            quality.update(heldout)
    with torch.no_grad():
        image = pipeline.prepare_image(read_image(task.image))
        times = []
        for _ in range(int(measure["repeats"])):
            t0 = clock()
            avatar = pipeline.reconstruct(image)
            times.append(clock() - t0)
        out["reconstruct_s"] = statistics.median(times)
        out["reconstruct_times_s"] = times
        out["gaussians"] = {"static": int(avatar.static.count), "driven": int(avatar.rig.dynamic.count)}
        if measure.get("contract", True):
            _check_contract(pipeline, avatar)
            out["contract"] = "passed"
        else:
            out["contract"] = "not checked"
        if measure.get("quality", True):
            quality["self_psnr"] = _self_psnr(pipeline, avatar, image)
        sizes = list(measure.get("render_sizes") or [pipeline.config.render_size])
        sessions = {s: pipeline.session(avatar, render_size=s) for s in sizes}
        n = int(measure["warmup"]) + int(measure["frames"])
        motion = demo_motion(pipeline.head_model, max(n, 10))
        del pipeline  # drop the encoder and lifter: only driving state is left while timing
        gc.collect()
        driving = {}
        for s in sizes:
            frame_times = _time_driving(sessions[s], motion, int(measure["warmup"]), int(measure["frames"]))
            median = statistics.median(frame_times)
            driving[str(s)] = {"frame_median_s": median, "fps": 1.0 / max(median, 1e-12)}
    out["driving"] = driving
    out["quality"] = quality
    return out


def run_variant(task: VariantTask) -> dict[str, Any]:
    """Run one variant and save its result JSON (ok or failed); returns the result. Never raises
    for a failing variant (KeyboardInterrupt still propagates)."""
    import torch

    before = torch.get_num_threads()
    if task.threads:
        torch.set_num_threads(task.threads)
    result: dict[str, Any] = {
        "version": RESULT_VERSION,
        "id": task.id,
        "axes": task.axes,
        "digest": task.digest,
        "config": task.config,
        "threads": torch.get_num_threads(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "torch": torch.__version__,
        },
    }
    start = clock()
    tb_file = traceback_path(task.out_dir, task.id)
    try:
        result.update(measure_variant(task))
        result["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the others
        result["status"] = "failed"
        result["error"] = one_line(exc)
        result["traceback"] = tb_file.name
        _write_text(tb_file, "".join(traceback.format_exception(exc)))
    finally:
        torch.set_num_threads(before)
    result["elapsed_s"] = clock() - start
    if result["status"] == "ok" and tb_file.exists():
        tb_file.unlink()  # an old failure's traceback no longer applies
    _write_text(result_path(task.out_dir, task.id), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


# ----------------------------------------------------------------------------------- a matrix
def default_threads(workers: int) -> int:
    """torch threads per worker: the cores this process may use, shared out."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def make_tasks(
    loaded: LoadedMatrix,
    variants: Iterable[Variant],
    out_dir: str | Path,
    workers: int,
    threads: int | None = None,
    restart_training: bool = False,
) -> list[VariantTask]:
    """One task per variant. torch threads: ``measure.threads``, else ``threads``, else
    ``cores // workers``."""
    m = loaded.matrix
    measure = m.measure.model_dump(mode="json")
    threads = m.measure.threads or threads or default_threads(workers)
    train = m.train.model_dump(mode="json") if m.train else None
    if train and train.get("eval"):  # LPIPS files are relative to the matrix, like its other paths
        for key in ("lpips_backbone", "lpips_lin"):
            if train["eval"].get(key):
                train["eval"][key] = loaded.resolve(train["eval"][key])
    train_config = loaded.resolve(m.train.config) if m.train and m.train.config else None
    return [
        VariantTask(
            id=v.id,
            axes=dict(v.axes),
            config=v.config,
            digest=v.digest,
            measure=measure,
            train=train,
            image=loaded.resolve(m.measure.image),
            train_config=train_config,
            out_dir=str(out_dir),
            threads=threads,
            restart_training=restart_training,
        )
        for v in variants
    ]


def failure_result(task: VariantTask, error: str) -> dict[str, Any]:
    """Record a variant whose worker died (no result of its own): a failed JSON with ``error``."""
    result = {
        "version": RESULT_VERSION,
        "id": task.id,
        "axes": task.axes,
        "digest": task.digest,
        "config": task.config,
        "status": "failed",
        "error": error,
    }
    _write_text(result_path(task.out_dir, task.id), json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


Executor = Callable[[list[VariantTask], Callable[[dict[str, Any]], None]], None]
"""Runs tasks and calls ``done(result)`` for each as it finishes (``run_variant``'s result, or a
``failure_result`` when the task's worker died)."""


def _execute(tasks: list[VariantTask], workers: int, done: Callable[[dict[str, Any]], None]) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(run_variant(task))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # numba's OpenMP layer is not fork-safe
    executor = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context)
    try:
        futures = {executor.submit(run_variant, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                done(future.result())
            except Exception as exc:  # noqa: BLE001 - the worker died (out of memory, native crash)
                done(failure_result(task, f"worker process failed: {one_line(exc)}"))
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def run_matrix(
    loaded: LoadedMatrix,
    out_dir: str | Path,
    workers: int = 1,
    only: list[str] | None = None,
    force: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
    plots: bool = True,
    execute: Executor | None = None,
    threads: int | None = None,
) -> RunSummary:
    """Run the matrix's variants (those in ``only``, default all) into ``out_dir``; skip finished
    ones unless ``force``; write the report tables and plots over every variant with a result.

    ``execute``: run the tasks elsewhere (default: ``workers`` local processes); ``threads``: torch
    threads per variant when ``measure.threads`` is not set (default ``cores // workers``)."""
    from gshead.ablate.report import write_report

    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    out_dir = Path(out_dir)
    variants_dir(out_dir).mkdir(parents=True, exist_ok=True)
    selected = loaded.select(only)
    summary = RunSummary()
    todo = []
    for v in selected:
        if not force and is_finished(read_result(out_dir, v.id), v):
            summary.skipped.append(v.id)
            if on_skip:
                on_skip(v.id)
        else:
            todo.append(v)

    def done(result: dict[str, Any]) -> None:
        summary.ran.append(result["id"])
        if result.get("status") != "ok":
            summary.failed.append(result["id"])
        if on_result:
            on_result(result)

    tasks = make_tasks(loaded, todo, out_dir, workers, threads=threads, restart_training=force)
    if execute is None:
        _execute(tasks, workers, done)
    elif tasks:
        execute(tasks, done)
    summary.ran.sort(key=[v.id for v in selected].index)
    summary.failed.sort(key=[v.id for v in selected].index)
    for v in loaded.variants:
        stored = read_result(out_dir, v.id)
        if stored is not None and stored.get("digest") == v.digest:
            summary.results.append(stored)
    write_report(summary.results, loaded, out_dir, plots=plots)
    return summary


__all__ = [
    "RunSummary",
    "VariantTask",
    "build_pipeline",
    "default_threads",
    "failure_result",
    "heldout_metrics",
    "is_finished",
    "make_tasks",
    "measure_variant",
    "parameter_counts",
    "read_result",
    "result_path",
    "run_matrix",
    "run_variant",
    "train_dir_of",
    "train_variant",
    "training_seed",
]
