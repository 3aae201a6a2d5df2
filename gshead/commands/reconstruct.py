"""``gshead reconstruct``: build an avatar from one portrait.

    gshead reconstruct IMAGE -o AVATAR.safetensors [--pipeline YAML] [--weights FILE]
                             [--fit-steps N] [--fit-lr LR] [--source-track optim.pkl[:FRAME]] [-q]

Reads the portrait, builds the pipeline (the embedded default when ``--pipeline`` is not given,
with ``--weights`` loaded into it), crops, tracks, encodes and lifts it into an avatar, optionally
fits the avatar to its own source crop for ``--fit-steps`` steps (``gshead.jobs.fitting``), and
writes the avatar file atomically. With ``--source-track`` the portrait's head parameters and
camera come from GAGAvatar_track's output (``gshead.io.gagavatar_track``) and the image, which
must be the square crop that tracker used (512 px), is resized to ``source_size``, not cropped.
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
    track = _split_track(args.source_track)[0] if args.source_track else None
    check_output(
        args.output, accepts=(".safetensors",), inputs=(args.image, args.weights, args.pipeline, track), what="an avatar"
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
        if args.source_track:
            source_image, source, camera = _from_track(pipeline, image, args.image, args.source_track)
        else:
            source_image, source, camera = _prepare(pipeline, image, args.image), None, None
        avatar = pipeline.reconstruct(source_image, source=source, camera=camera)
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


def _split_track(spec: str) -> tuple[str, str | None]:
    """``optim.pkl[:FRAME]`` -> (path, frame or None); a path that exists as given wins."""
    from pathlib import Path

    if Path(spec).exists() or ":" not in spec:
        return spec, None
    path, frame = spec.rsplit(":", 1)
    return path, frame


def _from_track(pipeline, image, image_path, spec):
    """The portrait, its ``HeadParams`` [1] and ``Camera`` [1] from GAGAvatar_track output: the
    image is the tracker's square crop, resized (not cropped) to ``source_size``, the camera
    rescaled with it."""
    from gshead.core.errors import InputError
    from gshead.core.geometry import crop_square
    from gshead.core.types import CropBox
    from gshead.io.gagavatar_track import read_gagavatar_track, track_frame

    path, frame = _split_track(spec)
    what = f"--source-track {spec}"
    head_model = pipeline.config.headmodel.name
    if head_model != "flame":
        raise InputError(f"{what}: GAGAvatar_track output holds FLAME codes, but the pipeline's head model is {head_model!r}")
    seq = read_gagavatar_track(path)
    source, camera = track_frame(seq, frame, what=what)
    size = pipeline.config.source_size
    neutral = pipeline.head_model.neutral(1)
    for field in ("identity", "expression"):
        have, want = getattr(source, field).shape[1], getattr(neutral, field).shape[1]
        if have != want:
            raise InputError(
                f"{what}: the track has {have} FLAME {field} codes, the pipeline's head model {want} "
                f"(set headmodel.{field}_dim to {have})"
            )
    width, height = image.shape[-1], image.shape[-2]
    if (width, height) != (camera.width, camera.height):
        raise InputError(
            f"{image_path} is {width}x{height}; with {what} it must be the {camera.width}x{camera.height} "
            "crop GAGAvatar_track tracked (the camera belongs to that crop)"
        )
    if size != camera.width:
        image = crop_square(image, CropBox.centred(width, height), size)
        camera = camera.resized(size, size)
    return image, source, camera


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
    p.add_argument(
        "--source-track", metavar="TRACK[:FRAME]",
        help="take the portrait's FLAME parameters and camera from GAGAvatar_track output (optim.pkl; "
        "FRAME: an index or frame key, default the first) instead of tracking; IMAGE must be the "
        "512-px crop that tracker used (flame pipelines only)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reconstruct)


__all__ = ["add_parser", "cmd_reconstruct"]
