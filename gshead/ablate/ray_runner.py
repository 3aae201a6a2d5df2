"""Run an ablation matrix on a Ray cluster: one Ray task per variant (optional; needs ``ray``).

The task is the same ``gshead.ablate.runner.run_variant`` that local workers run, so results land
in the same ``OUT/variants/<id>.json`` files (``OUT`` must be a folder every Ray node can write,
e.g. a shared file system), finished variants are skipped the same way, and the tables and plots
are written at the end by the driver::

    python -m gshead.ablate.ray_runner configs/ablations/encoder-scaling.yaml -o /shared/runs/enc \\
        --address auto --cpus-per-variant 8 [--gpus-per-variant 1] [--only ID ...] [--force]

``ray`` is imported only when this runs (``pip install "ray[default]"`` on the cluster);
importing this module without it is fine, running it raises ``ConfigError`` saying so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gshead.core.errors import ConfigError, GsheadError


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            'ray is not installed; expected `pip install "ray[default]"` to run on a Ray cluster'
        ) from None
    return ray


def run_on_ray(
    matrix_path: str | Path,
    out_dir: str | Path,
    address: str | None = "auto",
    cpus_per_variant: int = 4,
    gpus_per_variant: float = 0,
    only: list[str] | None = None,
    force: bool = False,
):
    """Submit one Ray task per unfinished variant, wait for all, write the report; the summary."""
    from gshead.ablate.matrix import load_matrix
    from gshead.ablate.report import write_report
    from gshead.ablate.runner import (
        RunSummary,
        is_finished,
        make_tasks,
        read_result,
        run_variant,
        variants_dir,
    )

    ray = _ray()
    loaded = load_matrix(matrix_path)  # validated before anything is submitted
    selected = loaded.select(only)
    out_dir = Path(out_dir)
    variants_dir(out_dir).mkdir(parents=True, exist_ok=True)
    summary = RunSummary()
    todo = []
    for v in selected:
        if not force and is_finished(read_result(out_dir, v.id), v):
            summary.skipped.append(v.id)
        else:
            todo.append(v)
    tasks = make_tasks(loaded, todo, out_dir, workers=1)
    tasks = [t.__class__(**{**t.__dict__, "threads": cpus_per_variant}) for t in tasks]
    ray.init(address=address, ignore_reinit_error=True)
    remote = ray.remote(num_cpus=cpus_per_variant, num_gpus=gpus_per_variant)(run_variant)
    pending = {remote.remote(task): task.id for task in tasks}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            vid = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the task died (node lost, out of memory)
                print(f"gshead: variant {vid}: Ray task failed: {type(exc).__name__}", file=sys.stderr)
                summary.failed.append(vid)
                continue
            summary.ran.append(vid)
            if result.get("status") != "ok":
                summary.failed.append(vid)
                print(f"gshead: variant {vid} failed: {result.get('error')}", file=sys.stderr)
    for v in loaded.variants:
        stored = read_result(out_dir, v.id)
        if stored is not None and stored.get("digest") == v.digest:
            summary.results.append(stored)
    write_report(summary.results, loaded, out_dir)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gshead.ablate.ray_runner", description=__doc__.split("\n")[0])
    p.add_argument("matrix", metavar="MATRIX.yaml")
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="results folder on a shared file system"
    )
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    p.add_argument("--cpus-per-variant", type=int, default=4)
    p.add_argument("--gpus-per-variant", type=float, default=0)
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
        f"{args.output}: {len(summary.ran)} run, {len(summary.skipped)} skipped, {len(summary.failed)} failed"
    )
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
