"""Multi-process training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc-per-node N -m gshead train CONFIG.yaml`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``setup`` reads them and joins the group
(NCCL with one GPU per process on CUDA, gloo on CPU). Without them it is a single process and
nothing is initialised. Only rank 0 logs and writes checkpoints; every rank reads the same
checkpoint when resuming. Each rank draws its own share of every epoch from a
``DistributedSampler`` (``step_indices``), so the data order is a pure function of the step:
that is what makes resuming exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    initialised: bool  # True when this process joined a process group (and must leave it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    from gshead.core.errors import ConfigError

    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment {name}={value!r}: expected an integer (set by torchrun)") from None


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (one GPU per local rank) or ``auto`` (CUDA when available)."""
    from gshead.core.errors import ConfigError

    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' asked for, but CUDA is not available; expected 'cpu' or 'auto'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device_preference: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any."""
    import torch.distributed as dist

    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    device = pick_device(device_preference, local_rank)
    if world <= 1:
        return DistInfo(0, 0, 1, device, False)
    if dist.is_initialized():  # joined by the caller (e.g. a test harness)
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device, False)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, local_rank, world, device, True)


def teardown(info: DistInfo) -> None:
    """Leave the process group that ``setup`` joined."""
    import torch.distributed as dist

    if info.initialised and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over all ranks (``value`` itself in a single process)."""
    import torch.distributed as dist

    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (so all ranks take the same branch)."""
    import torch.distributed as dist

    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def broadcast_object(value, src: int = 0):
    """``value`` from rank ``src`` on every rank."""
    import torch.distributed as dist

    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class StepIndices:
    """Dataset indices of each step's batch on this rank, a pure function of the step.

    Sample k of this rank's stream lies in epoch k // L (L: this rank's share of an epoch); the
    epoch's order is ``DistributedSampler(seed, epoch)``'s, so ranks see disjoint shares and a run
    resumed at step s sees exactly the samples the uninterrupted run saw.
    """

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        from torch.utils.data.distributed import DistributedSampler

        from gshead.core.errors import ConfigError

        if length < 1:
            raise ConfigError("data: the dataset is empty; expected at least one sample")

        class _Sized:
            def __len__(self) -> int:
                return length

        self.sampler = DistributedSampler(
            _Sized(),
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=False,  # type: ignore[arg-type]
        )
        self.batch_size = batch_size
        self.per_epoch = len(self.sampler)
        self._epoch: int | None = None
        self._order: list[int] = []

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = list(iter(self.sampler))
            self._epoch = epoch
        return self._order

    def __call__(self, step: int) -> list[int]:
        """Indices for step ``step`` (0-based: the step about to run)."""
        out = []
        for k in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(self._epoch_order(k // self.per_epoch)[k % self.per_epoch])
        return out
