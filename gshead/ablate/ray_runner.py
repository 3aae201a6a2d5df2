"""Run an ablation matrix on a Ray cluster: one Ray task per variant (optional; needs ``ray``).

``gshead ablate MATRIX -o DIR --ray [ADDRESS]`` (or ``run_on_ray``) goes through the same
``gshead.ablate.runner.run_matrix`` as local workers, with this module's executor: finished variants
are skipped the same way, every task is the same ``run_variant`` writing the same
``OUT/variants/<id>.json``, a failing variant gets the same failure row, and the driver writes the
tables and plots at the end. ``OUT`` must be a folder every Ray node can write (a shared file
system); relative paths are made absolute on the driver, and each task runs in the driver's working
folder when that folder exists on its node (so relative dataset paths in a training config work).

- No ADDRESS: a local Ray instance with the cores this process may use (or the Ray instance this
  process is already connected to); with ADDRESS (``HOST:PORT`` of a ``ray start --head``, or
  ``auto``): connect to that cluster, which must answer within ``CONNECT_TIMEOUT_S``.
- Resources per variant task: ``resources: {cpus: C, gpus: G}`` in the matrix, overridden by
  ``--cpus-per-variant`` / ``--gpus-per-variant``; torch threads per variant: ``measure.threads``,
  else ``floor(C)``. A variant must fit on one node.
- A task whose worker dies (node lost, out of memory, killed) is retried ``TASK_RETRIES`` times by
  Ray; a training variant then resumes from its latest checkpoint in ``OUT/variants/<id>.train``.
  When the retries are spent it gets a failure row.

The old entry point still works as a thin alias::

    python -m gshead.ablate.ray_runner MATRIX.yaml -o DIR [--address ADDRESS] [--cpus-per-variant C]

``ray`` is imported only when a Ray run starts (``pip install -e ".[ray]"``); importing this module
without it is fine, running it raises ``ConfigError`` saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gshead.core.errors import ConfigError, GsheadError

TASK_RETRIES = 2
"""Times Ray reruns a variant task whose worker process died before giving up on it."""

CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a TCP connection to a cluster address before calling it unreachable."""

INSTALL_HINT = 'pip install -e ".[ray]"'


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--ray: ray is not installed; expected `{INSTALL_HINT}` (or `pip install ray`) on every node"
        ) from None
    return ray


@dataclasses.dataclass(frozen=True)
class RayResources:
    """What each variant task reserves on the cluster."""

    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        """torch threads per variant (when the matrix does not set ``measure.threads``)."""
        return max(1, math.floor(self.cpus))


def resources_for(loaded, cpus: float | None = None, gpus: float | None = None) -> RayResources:
    """The matrix's ``resources``, overridden by the flags given (ConfigError for bad values)."""
    base = loaded.matrix.resources
    cpus = base.cpus if cpus is None else cpus
    gpus = base.gpus if gpus is None else gpus
    if not cpus > 0:
        raise ConfigError(f"--cpus-per-variant {cpus}: expected more than 0")
    if gpus < 0:
        raise ConfigError(f"--gpus-per-variant {gpus}: expected 0 or more")
    return RayResources(cpus=float(cpus), gpus=float(gpus))


def _split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``HOST:PORT`` address; None for ``auto`` and ``ray://`` addresses."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--ray {address}: not a cluster address; expected HOST:PORT of `ray start --head` "
            "(e.g. 10.0.0.1:6379), auto, or nothing for a local Ray"
        )
    return host.strip("[]"), int(port)


def _check_reachable(address: str) -> None:
    """ConfigError (one line) unless something answers at ``address`` and speaks Ray's GCS."""
    import socket

    parts = _split_address(address)
    if parts is None:
        return
    try:
        socket.create_connection(parts, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"--ray {address}: cannot reach a Ray cluster there ({reason}); expected the address "
            "`ray start --head` printed, reachable from this machine"
        ) from None
    try:
        from ray._raylet import GcsClient  # private; fails within ~40 s where ray.init would retry for ever
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except Exception as exc:  # noqa: BLE001 - any failure means no Ray GCS answers there
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "AuthToken" in reason or type(exc).__name__ == "AuthenticationError":
            raise ConfigError(
                f"--ray {address}: the cluster refused this machine's Ray auth token; expected the head's "
                "token (`ray get-auth-token` there) in ~/.ray/auth_token and RAY_AUTH_MODE=token here"
            ) from None
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({reason[:120]})") from None


def connect(ray, address: str | None) -> bool:
    """Connect this process to Ray; True when it started (or joined) a connection that the caller
    should shut down afterwards, False when one was already open."""
    import logging

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--ray {address}: cannot connect ({text[:160]})") from None
        return True
    from gshead.ablate.runner import default_threads

    ray.init(  # "local": a new instance, even where an old `ray start` left its address behind
        address="local", num_cpus=default_threads(1), include_dashboard=False, logging_level=logging.WARNING
    )
    return True


def _largest_node(ray) -> dict[str, float]:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return {
        "CPU": max((float(n.get("CPU", 0)) for n in nodes), default=0.0),
        "GPU": max((float(n.get("GPU", 0)) for n in nodes), default=0.0),
    }


def check_fits(ray, resources: RayResources) -> None:
    """ConfigError when no node of the cluster has the CPUs/GPUs one variant asks for (Ray would
    otherwise wait for such a node for ever)."""
    largest = _largest_node(ray)
    if resources.cpus > largest["CPU"]:
        raise ConfigError(
            f"--cpus-per-variant {resources.cpus:g}: the largest Ray node has {largest['CPU']:g} CPUs; "
            "expected at most that (or resources.cpus in the matrix)"
        )
    if resources.gpus > largest["GPU"]:
        raise ConfigError(
            f"--gpus-per-variant {resources.gpus:g}: the largest Ray node has {largest['GPU']:g} GPUs; "
            "expected at most that (or resources.gpus in the matrix)"
        )


def ray_variant(task, cwd: str) -> dict[str, Any]:
    """The Ray task: ``run_variant`` in the driver's working folder (when this node has it)."""
    from gshead.ablate.runner import run_variant

    if os.path.isdir(cwd):
        os.chdir(cwd)
    return run_variant(task)


def _absolute(task):
    """The task with its paths made absolute on the driver (Ray workers run elsewhere)."""

    def absolute(path: str | None) -> str | None:
        if path is None or path.startswith("example:"):
            return path
        return str(Path(path).resolve())

    return dataclasses.replace(
        task,
        out_dir=absolute(task.out_dir),
        image=absolute(task.image),
        train_config=absolute(task.train_config),
    )


def ray_executor(ray, resources: RayResources) -> Callable:
    """A ``runner.Executor`` that runs each task as a Ray task with ``resources``."""
    from gshead.ablate.runner import failure_result, one_line

    def execute(tasks, done) -> None:
        remote = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=TASK_RETRIES)(
            ray_variant
        )
        cwd = os.getcwd()
        pending = {}
        for task in tasks:
            task = _absolute(task)
            pending[remote.remote(task, cwd)] = task
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the task died for good (node lost, OOM)
                        result = failure_result(task, f"Ray task failed: {one_line(exc)}")
                    done(result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    return execute


@contextlib.contextmanager
def ray_session(loaded, address: str | None = None, cpus: float | None = None, gpus: float | None = None):
    """Connect to Ray (``address`` None: a local Ray), check that one variant fits on a node, and
    yield ``(executor, torch threads per variant)`` for ``runner.run_matrix``; disconnect after
    (a connection this process already had is left open)."""
    ray = _ray()
    resources = resources_for(loaded, cpus, gpus)
    started = connect(ray, address)
    try:
        check_fits(ray, resources)
        yield ray_executor(ray, resources), resources.threads
    finally:
        if started:
            ray.shutdown()


def run_on_ray(
    matrix,
    out_dir: str | Path,
    address: str | None = None,
    cpus_per_variant: float | None = None,
    gpus_per_variant: float | None = None,
    only: list[str] | None = None,
    force: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
    plots: bool = True,
):
    """Run ``matrix`` (a path or a ``LoadedMatrix``) with one Ray task per unfinished variant; the
    ``RunSummary``. ``address``: None for a local Ray, else the cluster's ``HOST:PORT`` or ``auto``."""
    from gshead.ablate.matrix import LoadedMatrix, load_matrix
    from gshead.ablate.runner import run_matrix

    _ray()
    loaded = matrix if isinstance(matrix, LoadedMatrix) else load_matrix(matrix)  # validated first
    loaded.select(only)  # an unknown --only id fails before connecting
    with ray_session(loaded, address, cpus_per_variant, gpus_per_variant) as (execute, threads):
        return run_matrix(
            loaded,
            out_dir,
            only=only,
            force=force,
            on_result=on_result,
            on_skip=on_skip,
            plots=plots,
            execute=execute,
            threads=threads,
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m gshead.ablate.ray_runner``: an alias of ``gshead ablate MATRIX -o DIR --ray``."""
    p = argparse.ArgumentParser(prog="python -m gshead.ablate.ray_runner", description=__doc__.split("\n")[0])
    p.add_argument("matrix", metavar="MATRIX.yaml")
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="results folder on a shared file system"
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--cpus-per-variant", type=float, default=None)
    p.add_argument("--gpus-per-variant", type=float, default=None)
    p.add_argument("--only", nargs="+", metavar="ID")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    try:
        summary = run_on_ray(
            args.matrix,
            args.output,
            args.address,
            args.cpus_per_variant,
            args.gpus_per_variant,
            args.only,
            args.force,
        )
    except GsheadError as exc:
        print(f"gshead: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.output}: {len(summary.ran)} run, {len(summary.skipped)} skipped, {len(summary.failed)} failed",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


__all__ = [
    "RayResources",
    "connect",
    "main",
    "ray_executor",
    "ray_session",
    "ray_variant",
    "resources_for",
    "run_on_ray",
]


if __name__ == "__main__":
    sys.exit(main())
