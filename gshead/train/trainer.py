"""The training loop.

Each step takes this rank's batch of ``ReenactmentSample``s (indices from ``StepIndices``: a pure
function of the step), and for every sample builds the avatar from the source portrait
(``Pipeline.build_avatar``, differentiable), drives it to the T targets (``forward_frames``) and
adds up the loss terms (``gshead.train.losses``); the batch loss is the mean over samples. Each
sample is backpropagated at once (only one sample's graph is alive; gradients accumulate, and under
DDP they are averaged across ranks at the last sample). Then gradient clipping and an AdamW step --
unless the loss or the gradient norm is not finite on any rank, in which case the step is skipped
and counted (``bad_steps``).

Resuming is exact: the model, optimiser, scheduler and every RNG come back from the checkpoint,
and the data order depends only on the step number. Ctrl-C (SIGINT) asks the loop to stop after
the step in progress and save a checkpoint of it; a second Ctrl-C aborts at once (a checkpoint is
still saved when the interrupt did not land inside the parameter update).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gshead.core.errors import ConfigError, InputError
from gshead.core.types import ReenactmentSample
from gshead.train import checkpoints as ckpt
from gshead.train import distributed as dist_util
from gshead.train.config import ScheduleConfig, TrainConfig, build_pipeline
from gshead.train.logging import RunLogger
from gshead.train.losses import TERMS, PerceptualLoss, reenactment_losses

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class StepRecord:
    """What one optimiser step did (the loss is the mean over ranks)."""

    step: int  # steps completed after this one (1 for the first)
    loss: float  # weighted total
    terms: dict[str, float]  # unweighted terms, see losses.TERMS
    lr: float  # learning rate used by this step
    grad_norm: float  # global gradient norm before clipping (nan/inf on a bad step)
    skipped: bool  # True when the NaN guard skipped the update


@dataclass(frozen=True)
class TrainResult:
    """The outcome of ``Trainer.fit``."""

    run_dir: Path
    start_step: int  # step the run started (or resumed) from
    step: int  # steps completed
    bad_steps: int  # skipped steps in total (resumed runs included)
    history: tuple[StepRecord, ...]  # this call's steps
    interrupted: bool  # stopped by Ctrl-C (a checkpoint was saved when possible)
    checkpoint: ckpt.Checkpoint | None  # the last checkpoint written (None on ranks > 0)


def lr_factor(step: int, schedule: ScheduleConfig, total: int) -> float:
    """Learning-rate factor for 0-based ``step`` of ``total``: linear warm-up, then constant,
    cosine or linear decay to ``final_lr_ratio`` at the last step."""
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return 1.0
    span = max(1, total - schedule.warmup_steps - 1)
    progress = min(1.0, max(0.0, (step - schedule.warmup_steps) / span))
    r = schedule.final_lr_ratio
    if schedule.kind == "cosine":
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - (1.0 - r) * progress


def _freeze(pipeline, prefixes: list[str]) -> None:
    """``TrainConfig.freeze``: no gradient for the parameters named ``slot.path`` under a prefix."""
    named = {
        f"{kind}.{name}": p
        for kind, module in pipeline.trainable_modules().items()
        for name, p in module.named_parameters()
    }
    for prefix in prefixes:
        hit = [p for name, p in named.items() if name == prefix or name.startswith(prefix + ".")]
        if not hit:
            raise ConfigError(f"freeze: {prefix!r} names no parameter of the pipeline (expected slot.module, e.g. lifter.image_layer)")
        for p in hit:
            p.requires_grad_(False)


class _TrainModel(torch.nn.Module):
    """The pipeline's trainable modules as one module (for DDP and the optimiser); ``forward``
    computes the mean loss of a batch of samples."""

    def __init__(self, pipeline, config: TrainConfig, perceptual: PerceptualLoss | None) -> None:
        super().__init__()
        parts = {
            kind: module
            for kind, module in pipeline.trainable_modules().items()
            if any(p.requires_grad for p in module.parameters())
        }
        if not parts:
            raise ConfigError("pipeline: no component has trainable parameters; nothing to train")
        self.parts = torch.nn.ModuleDict(parts)
        # Not registered as submodules: the pipeline (plain object) and the frozen loss network.
        object.__setattr__(self, "pipeline", pipeline)
        object.__setattr__(self, "perceptual", perceptual)
        self.config = config

    def sample_losses(self, sample: ReenactmentSample):
        """(LossTerms, render, refined image, render-size targets) of one sample."""
        pipeline, config = self.pipeline, self.config
        size = pipeline.config.render_size
        cam = sample.target_camera
        render_camera = cam.resized(size, max(1, size * cam.height // cam.width))
        with torch.no_grad():
            source_vertices = pipeline.head_model(sample.source).vertices  # [1, V, 3]
            landmarks = pipeline.head_model(sample.targets).landmarks  # [T, L, 3]
            posed = render_camera.expand(sample.frames).moved(sample.targets.pose_matrix())
            from gshead.train.losses import project_points

            face_points = project_points(landmarks, posed)  # [T, L, 2]
        device_type = sample.source_image.device.type
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=config.amp):
            avatar = pipeline.build_avatar(sample.source_image, sample.source, sample.source_camera)
            render, refined = pipeline.forward_frames(avatar, sample.targets, render_camera)
        terms = reenactment_losses(
            render,
            refined,
            sample.target_images,
            face_points,
            avatar.static.means,
            source_vertices,
            config.loss,
            crop_size=config.face_crop_size,
            crop_scale=config.face_crop_scale,
            point_samples=config.point_samples,
            perceptual=self.perceptual if config.stage == 2 else None,
        )
        return terms, render, refined

    def forward(self, sample: ReenactmentSample):
        """(weighted loss [], unweighted terms as floats, detached images to show) of one sample."""
        terms, render, refined = self.sample_losses(sample)
        values = {name: float(value.detach()) for name, value in terms.as_dict().items()}
        shown = (sample.source_image, sample.target_images, render.features[:, :3].detach(), refined.detach())
        return terms.total(self.config.loss), values, shown


class Trainer:
    """Trains a pipeline as ``config`` says, writing checkpoints and logs under ``run_dir``.

    :param dataset: any indexable dataset of ``ReenactmentSample`` (default: ``gshead.data``'s
        ``ReenactmentDataset`` at ``config.data``).
    :param pipeline: an already built pipeline (default: built from ``config.pipeline``).
    :param perceptual_network: the stage-2 feature network (default: ``load_vgg16`` of
        ``config.perceptual_weights``).
    :param on_step: called with each ``StepRecord`` after the step is complete (tests, hooks).
    """

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        dataset=None,
        pipeline=None,
        perceptual_network: torch.nn.Module | None = None,
        quiet: bool = False,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> None:
        if config.stage == 2 and perceptual_network is None:
            weights = config.perceptual_weights
            if weights is None:
                raise ConfigError(
                    "stage 2 needs perceptual_weights: a local VGG-16 weights file (.pth or .safetensors); "
                    "refusing to train with a randomly initialised feature network"
                )
            if not Path(weights).is_file():
                raise ConfigError(
                    f"perceptual_weights {weights}: no such file; expected VGG-16 weights (.pth or .safetensors)"
                )
        self.config = config
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.on_step = on_step
        self.dist = dist_util.setup(config.device)
        self.device = self.dist.device
        self.pipeline = pipeline if pipeline is not None else build_pipeline(config)
        self.dataset = dataset if dataset is not None else _default_dataset(config)
        self._check_dataset()
        perceptual = None
        if config.stage == 2:
            if perceptual_network is None:
                from gshead.nets.vgg import load_vgg16

                perceptual_network = load_vgg16(config.perceptual_weights)
            perceptual = PerceptualLoss(perceptual_network).to(self.device)
        for component in self.pipeline.components().values():
            if isinstance(component, torch.nn.Module):
                component.to(self.device)
        _freeze(self.pipeline, config.freeze)
        self.model = _TrainModel(self.pipeline, config, perceptual)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = config.optimizer
        self.optimizer = torch.optim.AdamW(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        total = config.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.schedule, total)
        )
        self.ddp = None
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=config.ddp_find_unused_parameters
            )
        self.indices = dist_util.StepIndices(
            len(self.dataset), config.batch_size, self.dist.rank, self.dist.world_size, config.seed
        )
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, quiet=quiet)
        self.step = 0
        self.bad_steps = 0
        self._updating = False
        self._stop_requested = False
        self._last_saved: ckpt.Checkpoint | None = None  # rank 0's last checkpoint
        self._saved_step: int | None = None  # the last checkpointed step, known to every rank
        self._shown: tuple[Tensor, ...] | None = None  # first sample's images of the last step
        self._rng_before_step: dict[str, Any] | None = None  # set while a step is unfinished

    # -- setup helpers ----------------------------------------------------------------
    def _check_dataset(self) -> None:
        if len(self.dataset) < 1:
            raise InputError("data: the dataset has no samples; expected at least one")
        first = self.dataset[0]
        if not isinstance(first, ReenactmentSample):
            raise InputError(f"data: expected ReenactmentSample items, got {type(first).__name__}")
        info = getattr(self.dataset, "info", None)  # gshead.data datasets say which head model
        head = self.pipeline.config.headmodel.name
        if info is not None and getattr(info, "head_model", head) != head:
            raise InputError(
                f"data: parameters are for head model {info.head_model!r} but the pipeline uses {head!r}; "
                "expected the same head model"
            )
        size = self.pipeline.config.source_size
        if first.size != size:
            raise InputError(
                f"data: samples are {first.size}x{first.size} but the pipeline's source_size is {size}; "
                "expected equal sizes"
            )

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    # -- state ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The training state saved beside the model tensors (weights_only-loadable)."""
        rngs = [self._rng_before_step or ckpt.rng_state()]
        if dist_util.is_distributed():
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs,
            "bad_steps": int(self.bad_steps),
            "world_size": int(self.dist.world_size),
            "config": self.config.model_dump_json(),
        }

    def save(self) -> ckpt.Checkpoint | None:
        """Checkpoint the current step (rank 0 writes; all ranks take part in gathering RNG)."""
        state = self.state()
        saved = None
        if self.dist.is_main:
            saved = ckpt.save_checkpoint(self.checkpoint_dir, self.step, self.pipeline, state)
            ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_last)
            self._last_saved = saved
        self._saved_step = self.step  # on every rank: fit's final save must be skipped by all or none
        dist_util.barrier()
        return saved

    def resume(self) -> bool:
        """Load the latest checkpoint under ``run_dir`` (all ranks); False when there is none."""
        found = ckpt.latest_checkpoint(self.checkpoint_dir) if self.dist.is_main else None
        path = dist_util.broadcast_object(str(found.path) if found else None)
        if path is None:
            return False
        found = ckpt.Checkpoint(Path(path), int(Path(path).name.split("-")[1]))
        state = ckpt.load_state(found)
        ckpt.load_model(found, self.pipeline)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:  # a different number of processes: data and RNG streams cannot match exactly
            ckpt.set_rng_state(rngs[0])
            self.logger.message(
                f"resuming with {self.dist.world_size} processes from a run with {len(rngs)}: not bit-exact"
            )
        self.step = found.step
        self.bad_steps = int(state["bad_steps"])
        self._last_saved = found
        self._saved_step = found.step
        self.logger.truncate_after(self.step)
        return True

    # -- the loop ---------------------------------------------------------------------
    def batches(self, start: int, total: int):
        """This rank's batches (lists of samples) for steps ``start`` .. ``total - 1``; with
        ``data.workers`` > 0 they are loaded ahead by DataLoader worker processes."""
        workers = self.config.data.workers
        if workers == 0:
            for step in range(start, total):
                yield [self.dataset[i] for i in self.indices(step)]
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[self.indices(step) for step in range(start, total)],
            num_workers=workers,
            collate_fn=list,
            pin_memory=self.device.type == "cuda",
        )
        yield from loader

    def train_step(self, batch: list[ReenactmentSample] | None = None) -> StepRecord:
        """Run step ``self.step`` (0-based) on ``batch`` (default: loaded here) and advance the counter."""
        # A checkpoint taken while this step is unfinished (Ctrl-C twice) must hold the RNG as it
        # was before the step, or a resumed run would draw differently.
        self._rng_before_step = ckpt.rng_state()
        if batch is None:
            batch = [self.dataset[i] for i in self.indices(self.step)]
        batch = [sample.to(self.device) for sample in batch]
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        model = self.ddp if self.ddp is not None else self.model
        # One backward per sample (only one sample's graph alive at a time); under DDP the
        # gradients are averaged across ranks once, at the last sample's backward.
        total = torch.zeros((), device=self.device)
        sums = dict.fromkeys(TERMS, 0.0)
        shown = None
        for i, sample in enumerate(batch):
            last = i == len(batch) - 1
            with contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                loss, values, view = model(sample)
                (loss / len(batch)).backward()
            total = total + loss.detach().float() / len(batch)
            for name, value in values.items():
                sums[name] += value / len(batch)
            shown = shown or view
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        loss = dist_util.all_reduce_mean(total)
        bad = dist_util.any_rank(
            not (bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))), self.device
        )
        self._updating = True
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self._rng_before_step = None
        self._updating = False
        record = StepRecord(self.step, float(loss), sums, float(lr), float(grad_norm), bad)
        self._shown = shown
        return record

    def fit(self, resume: bool = False, steps: int | None = None) -> TrainResult:
        """Train until ``steps`` (default ``config.steps``) steps are complete; returns what happened."""
        total = steps if steps is not None else self.config.steps
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist_util.barrier()
        if not (resume and self.resume()):
            torch.manual_seed(self.config.seed + self.dist.rank)
            if self.dist.is_main and self.logger.csv_path.is_file():
                self.logger.truncate_after(0)
        start = self.step
        history: list[StepRecord] = []
        interrupted = False
        restore = self._install_sigint()
        self.logger.start(start, total)
        window_start, window_steps = time.perf_counter(), 0
        try:
            try:
                for batch in self.batches(self.step, total):
                    record = self.train_step(batch)
                    history.append(record)
                    window_steps += 1
                    self.logger.advance(record.loss, self.bad_steps)
                    if self.step % self.config.log_every == 0 or self.step == total:
                        now = time.perf_counter()
                        speed = window_steps / max(now - window_start, 1e-9)
                        window_start, window_steps = now, 0
                        self.logger.scalars(self.step, _scalars(record, self.bad_steps, speed))
                    if self.config.image_every and self.step % self.config.image_every == 0 and self._shown:
                        self.logger.images(self.step, *self._shown)
                    self._shown = None
                    if self.step % self.config.checkpoint_every == 0:
                        self.save()
                    if self.on_step is not None:
                        self.on_step(record)
                    if dist_util.any_rank(self._stop_requested, self.device):
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
                if self._updating:
                    self.logger.message(
                        "interrupted inside a parameter update: no checkpoint of it was saved"
                    )
                    raise
            if self.step > start and self._saved_step != self.step:
                self.save()
        finally:
            self.logger.close()
            restore()
        return TrainResult(
            self.run_dir,
            start,
            self.step,
            self.bad_steps,
            tuple(history),
            interrupted,
            self._last_saved if self.dist.is_main else None,
        )

    def close(self) -> None:
        """Leave the process group (when this trainer joined one)."""
        dist_util.teardown(self.dist)

    def _install_sigint(self) -> Callable[[], None]:
        """First Ctrl-C: stop after the current step and save; second: KeyboardInterrupt now."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.logger.message("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:
            return lambda: None
        return lambda: signal.signal(signal.SIGINT, previous)


def _scalars(record: StepRecord, bad_steps: int, speed: float) -> dict[str, float]:
    return {
        "loss": record.loss,
        **record.terms,
        "lr": record.lr,
        "grad_norm": record.grad_norm,
        "bad_steps": float(bad_steps),
        "it_per_s": speed,
    }


def _default_dataset(config: TrainConfig):
    try:
        from gshead.data import ReenactmentDataset
    except ImportError:
        raise ConfigError("data: gshead.data is not available in this installation; pass a dataset") from None
    root = Path(config.data.root)
    if not root.is_dir():
        raise InputError(
            f"data.root {root}: no such folder; expected a dataset (see write_synthetic_dataset)"
        )
    return ReenactmentDataset(root, split=config.data.split, targets=config.data.targets, seed=config.seed)
