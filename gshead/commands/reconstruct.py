"""``gshead reconstruct``: build an avatar from one portrait.

    gshead reconstruct IMAGE -o AVATAR.safetensors [--pipeline YAML] [--weights FILE]
                             [--fit-steps N] [--fit-lr LR] [-q]

Reads the portrait, builds the pipeline (the embedded default when ``--pipeline`` is not given,
with ``--weights`` loaded into it), crops, tracks, encodes and lifts it into an avatar, optionally
fits the avatar to its own source crop for ``--fit-steps`` steps (``gshead.jobs.fitting``), and
writes the avatar file atomically.
"""

from __future__ import annotations

import sys

from gshead.commands._progress import progress


def cmd_reconstruct(args) -> int:
    import torch

    from gshead.core.config import default_pipeline_path
    from gshead.core.errors import InputError
    from gshead.core.pipeline import Pipeline
    from gshead.io.avatar import save_avatar
    from gshead.io.media import check_output, read_image
    from gshead.io.weights import load_pipeline_weights

    if args.fit_steps < 0:
        raise InputError(f"--fit-steps {args.fit_steps}: expected a whole number >= 0 (0 = no fitting)")
    if not args.fit_lr > 0 or args.fit_lr == float("inf"):
        raise InputError(f"--fit-lr {args.fit_lr}: expected a finite number > 0")
    check_output(
        args.output, accepts=(".safetensors",), inputs=(args.image, args.weights, args.pipeline), what="an avatar"
    )
    torch.set_grad_enabled(False)
    fit = None
    with progress(total=5 if args.fit_steps else 4, desc="reconstruct", unit="step", disable=args.quiet) as bar:
        bar.set_postfix_str("reading image")
        image = read_image(args.image)
        bar.update()
        bar.set_postfix_str("building pipeline")
        pipeline = Pipeline.from_yaml(args.pipeline or default_pipeline_path())
        if args.weights:
            load_pipeline_weights(pipeline, args.weights)
        bar.update()
        bar.set_postfix_str("cropping, tracking, encoding, lifting")
        source_image = _prepare(pipeline, image, args.image)
        avatar = pipeline.reconstruct(source_image)
        bar.update()
        if args.fit_steps:
            bar.set_postfix_str(f"fitting {args.fit_steps} steps")
            avatar, fit = _fit(args, pipeline, avatar, source_image)
            bar.update()
        bar.set_postfix_str(f"writing {args.output}")
        save_avatar(args.output, avatar, pipeline)
        bar.update()
    print(
        f"wrote {args.output}: {avatar.static.count} static + {avatar.rig.dynamic.count} driven Gaussians, "
        f"{avatar.static.channels} channels",
        file=sys.stderr,
    )
    if fit is not None:
        print(
            f"fit: {fit.steps} steps in {fit.seconds:.1f} s, source-view PSNR "
            f"{fit.psnr_before:.2f} -> {fit.psnr_after:.2f} dB",
            file=sys.stderr,
        )
    return 0


def _prepare(pipeline, image, path):
    """``pipeline.prepare_image(image)``; when it finds no face in an image that ``read_image``
    downscaled, the error says so (the stored and the searched sizes)."""
    from gshead.core.errors import InputError
    from gshead.io.media import stored_size

    try:
        return pipeline.prepare_image(image)
    except InputError as exc:
        size, read = stored_size(path), (image.shape[-1], image.shape[-2])
        if size is None or size == read:
            raise
        raise InputError(f"{path} ({size[0]}x{size[1]}, read at {read[0]}x{read[1]}): {exc}") from None


def _fit(args, pipeline, avatar, source_image):
    """Test-time fitting of ``avatar`` to its source crop, with a progress bar (see ``gshead.jobs.fitting``)."""
    from gshead.jobs.fitting import fit_avatar

    with progress(total=args.fit_steps, desc="fit", unit="step", leave=False, disable=args.quiet) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            bar.update()

        return fit_avatar(pipeline, avatar, source_image, args.fit_steps, lr=args.fit_lr, progress=on_step)


def add_parser(subparsers) -> None:
    """Add ``reconstruct`` to the ``gshead`` subcommands."""
    p = subparsers.add_parser("reconstruct", help="build an avatar from one portrait")
    p.add_argument("image", help="portrait image file, or example:astronaut")
    p.add_argument("-o", "--output", required=True, help="avatar file to write (.safetensors)")
    p.add_argument("--pipeline", help="pipeline YAML (default: the embedded default)")
    p.add_argument("--weights", help="pipeline-weights file for this pipeline (written by 'gshead import')")
    p.add_argument(
        "--fit-steps", type=int, default=0, metavar="N",
        help="refine the avatar's Gaussians against the portrait for N steps (default 0: off)",
    )  # fmt: skip
    p.add_argument("--fit-lr", type=float, default=0.01, help="base learning rate of the fit (default 0.01)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reconstruct)


__all__ = ["add_parser", "cmd_reconstruct"]
