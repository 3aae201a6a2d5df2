"""``gshead ablate MATRIX.yaml -o DIR``: run an ablation matrix (see ``gshead.ablate``).

    gshead ablate configs/ablations/refiner.yaml -o runs/refiner [--workers N] [--only ID ...]
                  [--force] [--dry-run] [-q]
    gshead ablate MATRIX.yaml -o /shared/DIR --ray [HOST:PORT] [--cpus-per-variant C]
                  [--gpus-per-variant G]

Every variant is expanded and validated first (a bad matrix fails before anything runs, exit 2).
``--dry-run`` lists the variants, writes each one's pipeline to ``DIR/pipelines/<id>.yaml`` (for
cluster jobs) and stops. Otherwise finished variants are skipped (``--force``
reruns them), the rest run (``--workers N`` in parallel processes), and ``DIR`` gets
``variants/<id>.json``, ``results.csv``, ``results.md`` and PNG plots. Exit status 1 when any
variant failed (its error is in the table and its traceback beside its JSON).

``--ray`` runs each variant as a Ray task instead of a local process (``gshead.ablate.ray_runner``):
on a local Ray with this machine's cores, or on the cluster at ``HOST:PORT``; the same resuming,
failure rows and outputs. Put ``--ray`` after the matrix (or write ``--ray=HOST:PORT``).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

EXIT_FAILED_VARIANTS = 1


def write_pipelines(variants, out_dir) -> Path:
    """Each variant's validated pipeline as ``OUT/pipelines/<id>.yaml`` (for cluster jobs: one
    ``gshead reconstruct --pipeline`` or training run per file); the folder."""
    import yaml

    from gshead.io.media import atomic_output

    folder = Path(out_dir) / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    for v in variants:
        with atomic_output(folder / f"{v.id}.yaml") as temporary:
            temporary.write_text(yaml.safe_dump(v.config, sort_keys=False), encoding="utf-8")
    return folder


def _run(args, loaded, selected, execute, threads):
    """Run the selected variants under a progress bar; the ``RunSummary``."""
    from gshead.ablate.runner import run_matrix
    from gshead.commands._progress import progress

    with progress(total=len(selected), desc="ablate", unit="variant", disable=args.quiet) as bar:

        def on_result(result):
            status = "ok" if result.get("status") == "ok" else f"FAILED: {result.get('error', '')}"
            bar.set_postfix_str(f"{result['id']} {status}"[:80])
            if result.get("status") != "ok":
                bar.write(f"{result['id']}: failed: {result.get('error', '')}", file=sys.stderr)
            bar.update()

        def on_skip(variant_id):
            bar.set_postfix_str(f"{variant_id} already done")
            bar.update()

        return run_matrix(
            loaded,
            args.output,
            workers=args.workers,
            only=args.only,
            force=args.force,
            on_result=on_result,
            on_skip=on_skip,
            plots=not args.no_plots,
            execute=execute,
            threads=threads,
        )


def cmd_ablate(args) -> int:
    from gshead.ablate.matrix import load_matrix
    from gshead.ablate.runner import result_path
    from gshead.core.errors import ConfigError
    from gshead.io.media import check_output

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1")
    use_ray = args.ray is not None
    if use_ray and args.workers != 1:
        raise ConfigError(
            f"--workers {args.workers} with --ray: expected one of them (Ray schedules the variants)"
        )
    if not use_ray and (args.cpus_per_variant is not None or args.gpus_per_variant is not None):
        raise ConfigError(
            "--cpus-per-variant/--gpus-per-variant: only used with --ray; expected --ray as well"
        )
    check_output(args.output, folder=True, what="ablation results")
    loaded = load_matrix(args.matrix)
    selected = loaded.select(args.only)
    if args.dry_run:
        folder = write_pipelines(selected, args.output)
        for v in selected:
            axes = ", ".join(f"{k}={val}" for k, val in v.axes.items())
            print(f"{v.id:<40} {axes}")
        print(
            f"{len(selected)} variant(s) valid; their pipelines are in {folder}; nothing run (--dry-run)",
            file=sys.stderr,
        )
        return 0
    with contextlib.ExitStack() as stack:
        execute = threads = None
        if use_ray:  # connect (or start a local Ray) before the progress bar: errors stay one line
            from gshead.ablate.ray_runner import ray_session

            session = ray_session(loaded, args.ray or None, args.cpus_per_variant, args.gpus_per_variant)
            execute, threads = stack.enter_context(session)
        summary = _run(args, loaded, selected, execute, threads)
    print(
        f"{args.output}: {len(summary.ran)} run, {len(summary.skipped)} skipped (already done), "
        f"{len(summary.failed)} failed; tables in results.md and results.csv",
        file=sys.stderr,
    )
    if summary.failed:
        for vid in summary.failed:
            print(f"gshead: variant {vid} failed; see {result_path(args.output, vid)}", file=sys.stderr)
        return EXIT_FAILED_VARIANTS
    return 0


def add_parser(subparsers) -> None:
    """Add ``ablate MATRIX.yaml -o DIR`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "ablate", help="run an ablation matrix of pipeline variants (tables and plots)",
        **doc(
            "Run every pipeline variant of an ablation matrix: parameter counts, reconstruction time, "
            "driving FPS, the contract check and optional short training, as CSV/markdown tables and "
            "plots in DIR. Reruns resume; exit status 1 when any variant failed (docs/ablate.md).",
            "# list the variants and write their pipelines, run nothing\n"
            "gshead ablate configs/ablations/refiner.yaml -o runs/refiner --dry-run",
            "# run them, two at a time\n"
            "gshead ablate configs/ablations/refiner.yaml -o runs/refiner --workers 2",
        ),
    )  # fmt: skip
    p.add_argument("matrix", metavar="MATRIX.yaml", help="ablation matrix (see configs/ablations/)")
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="results folder (created; reruns resume)"
    )
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="parallel worker processes (default 1)"
    )
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these variant ids")
    p.add_argument("--force", action="store_true", help="rerun variants that already have a result")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and list the variants, write DIR/pipelines/<id>.yaml; run nothing",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run the variants as Ray tasks: on a local Ray with this machine's cores, or on the cluster "
        "at ADDRESS (HOST:PORT of `ray start --head`, or auto); DIR must be shared by every node",
    )
    p.add_argument(
        "--cpus-per-variant",
        type=float,
        default=None,
        metavar="C",
        help="with --ray: CPUs per variant task (default: the matrix's resources.cpus, else 1)",
    )
    p.add_argument(
        "--gpus-per-variant",
        type=float,
        default=None,
        metavar="G",
        help="with --ray: GPUs per variant task (default: the matrix's resources.gpus, else 0)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib figures)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ablate)


__all__ = ["add_parser", "cmd_ablate"]
