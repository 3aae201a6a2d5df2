"""``gshead train``: train a pipeline from a training config.

    gshead train CONFIG.yaml [-o RUN_DIR] [--resume] [--steps N] [-q]

``CONFIG`` is a YAML file or the name of a shipped config (``tiny-synthetic``:
``gshead/configs/train/tiny-synthetic.yaml``, the default CPU pipeline on ``data/synth``).
Checkpoints go to ``RUN_DIR/checkpoints/step-NNNNNN/`` (``model.safetensors`` is a pipeline-weights
file for ``gshead reconstruct --weights``), scalars to ``RUN_DIR/scalars.csv`` (and TensorBoard when
installed), image grids to ``RUN_DIR/images/``. ``--resume`` continues exactly from the latest
checkpoint. Ctrl-C saves a checkpoint of the last completed step, then exits with status 130.
Multi-process: ``torchrun --nproc-per-node N -m gshead train CONFIG.yaml -o RUN_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gshead.commands import EXIT_INTERRUPTED


def shipped_config(name: str) -> Path:
    """``name`` as a path, or, when no such file exists, the shipped training config of that name
    (``tiny-synthetic`` is ``gshead/configs/train/tiny-synthetic.yaml``)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = Path(__file__).resolve().parent.parent / "configs" / "train" / f"{path.stem}.yaml"
    return shipped if path.parent == Path(".") and shipped.is_file() else path


def cmd_train(args) -> int:
    from gshead.core.errors import InputError
    from gshead.train.config import load_train_config
    from gshead.train.trainer import Trainer

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps {args.steps}: expected at least 1")
    overrides = {"steps": args.steps} if args.steps is not None else None
    config_path = shipped_config(args.config)
    config = load_train_config(config_path, overrides)
    from gshead.io.media import check_output

    run_dir = check_output(args.output or Path("runs") / config_path.stem, folder=True, what="a run folder")
    trainer = Trainer(config, run_dir, quiet=args.quiet)
    try:
        if not args.resume and trainer.dist.is_main:
            from gshead.train.checkpoints import latest_checkpoint

            found = latest_checkpoint(trainer.checkpoint_dir)
            if found is not None:
                raise InputError(
                    f"{run_dir}: already has checkpoints (latest {found.path.name}); "
                    "expected --resume, or a new run folder"
                )
        result = trainer.fit(resume=args.resume)
    finally:
        trainer.close()
    if trainer.dist.is_main:
        where = f"; checkpoint {result.checkpoint.path}" if result.checkpoint else ""
        bad = f", {result.bad_steps} skipped (non-finite)" if result.bad_steps else ""
        verb = "interrupted at" if result.interrupted else "trained to"
        print(f"{verb} step {result.step}{bad}{where}", file=sys.stderr)
    return EXIT_INTERRUPTED if result.interrupted else 0


def add_parser(subparsers) -> None:
    """Add ``train`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "train", help="train a pipeline (stage 1 or 2) from a training config YAML",
        **doc(
            "Train any pipeline from a training config (stage 1: L1, face-crop L1, point loss; stage 2 "
            "adds a perceptual loss from local VGG-16 weights) on a dataset made by 'gshead data'. "
            "Checkpoints are written atomically and resume exactly; run it under torchrun for DDP. The "
            "checkpoint's model.safetensors is a pipeline-weights file for --weights.",
            "# how the shipped builtin:default weights were made (on data/synth, 'gshead data synth')\n"
            "gshead train tiny-synthetic -o runs/demo",
            "# carry on from the latest checkpoint up to 4,000 steps\n"
            "gshead train tiny-synthetic -o runs/demo --resume --steps 4000",
        ),
    )  # fmt: skip
    p.add_argument(
        "config", metavar="CONFIG", help="training config YAML, or the name of a shipped one (tiny-synthetic)"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="run folder for checkpoints and logs (default: runs/<config name>)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the run folder"
    )
    p.add_argument(
        "--steps", type=int, default=None, metavar="N", help="total steps (overrides the config's 'steps')"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
