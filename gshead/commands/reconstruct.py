"""``gshead reconstruct``: build an avatar from a portrait, or one avatar each from several.

    gshead reconstruct IMAGE -o AVATAR.safetensors [--pipeline YAML] [--weights FILE]
                             [--fit-steps N] [--fit-lr LR] [--source-track optim.pkl[:FRAME]]
                             [--device cpu|cuda|auto] [--json] [-q]
    gshead reconstruct IMAGE IMAGE ... | FOLDER -o DIR [the same options, no --source-track]

Reads the portrait, builds the pipeline (the embedded default when ``--pipeline`` is not given,
with ``--weights`` loaded into it), crops, tracks, encodes and lifts it into an avatar, optionally
fits the avatar to its own source crop for ``--fit-steps`` steps (``gshead.jobs.fitting``), and
writes the avatar file atomically. With ``--source-track`` the portrait's head parameters and
camera come from GAGAvatar_track's output (``gshead.io.gagavatar_track``) and the image, which
must be the square crop that tracker used (512 px), is resized to ``source_size``, not cropped.

Several images, or a folder (its ``IMAGE_SUFFIXES`` files, not recursing, in name order), make
one avatar each with one pipeline: ``-o DIR`` is a folder (made when missing) and image
``photos/anna.jpg`` becomes ``DIR/anna.safetensors`` (``example:astronaut``: ``astronaut``). Two
images with the same stem are refused before any work. An image that fails (unreadable, no face,
...) is reported and skipped, the others go on; each avatar is written atomically, so a failed
image leaves no file. At the end a table lists every image: its avatar (or why it failed), the
source-view PSNR after fitting (``-`` without ``--fit-steps``) and its seconds; the exit status is 1
when any image failed. ``--device`` (cpu, the default; cuda; auto) is where the models run
(``gshead.commands._device``).
"""

from __future__ import annotations

from gshead.commands._help import WEIGHTS_HELP

import json
import sys
import time
from pathlib import Path

from gshead.commands._progress import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""Files of a folder given to ``reconstruct`` that are read as portraits."""

EXIT_SOME_FAILED = 1
"""Status of a several-image run in which at least one image failed."""


def _check_options(args) -> None:
    from gshead.core.errors import InputError

    if args.fit_steps < 0:
        raise InputError(f"--fit-steps {args.fit_steps}: expected a whole number >= 0 (0 = no fitting)")
    if not args.fit_lr > 0 or args.fit_lr == float("inf"):
        raise InputError(f"--fit-lr {args.fit_lr}: expected a finite number > 0")


def _build_pipeline(args, device):
    from gshead.commands._device import pipeline_to
    from gshead.core.config import default_pipeline_path
    from gshead.core.pipeline import Pipeline
    from gshead.io.weights import load_pipeline_weights

    pipeline = Pipeline.from_yaml(args.pipeline or default_pipeline_path())
    if args.weights:
        load_pipeline_weights(pipeline, args.weights)
    return pipeline_to(pipeline, device)


def _many(args) -> bool:
    """True for the several-image form: more than one image, or a folder."""
    return len(args.images) > 1 or Path(args.images[0]).is_dir()


def cmd_reconstruct(args) -> int:
    from gshead.commands._device import resolve_device

    _check_options(args)
    device = resolve_device(args.device)
    if _many(args):
        return _reconstruct_many(args, device)
    return _reconstruct_one(args, device)


def _reconstruct_one(args, device) -> int:
    import torch

    from gshead.io.avatar import save_avatar
    from gshead.io.media import check_output, read_image

    image_path = args.images[0]
    track = _split_track(args.source_track)[0] if args.source_track else None
    check_output(
        args.output,
        accepts=(".safetensors",),
        inputs=(image_path, args.weights, args.pipeline, track),
        what="an avatar",
    )
    torch.set_grad_enabled(False)
    fit = None
    with progress(
        total=5 if args.fit_steps else 4, desc="reconstruct", unit="step", disable=args.quiet
    ) as bar:
        bar.set_postfix_str("reading image")
        image = read_image(image_path)
        bar.update()
        bar.set_postfix_str("building pipeline")
        pipeline = _build_pipeline(args, device)
        bar.update()
        bar.set_postfix_str("cropping, tracking, encoding, lifting")
        avatar, source_image = _avatar(args, pipeline, image, image_path, device)
        bar.update()
        if args.fit_steps:
            bar.set_postfix_str(f"fitting {args.fit_steps} steps")
            avatar, fit = _fit(args, pipeline, avatar, source_image)
            bar.update()
        bar.set_postfix_str(f"writing {args.output}")
        save_avatar(args.output, avatar.to("cpu"), pipeline)
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
    if args.json:
        summary = {"image": image_path, **_avatar_summary(args.output, avatar, fit)}
        print(json.dumps(summary, indent=2))
    return 0


def _fit_summary(fit) -> dict | None:
    """The ``fit`` entry of ``--json``: steps, seconds and source-view PSNR before/after (None: no fit)."""
    if fit is None:
        return None
    return {
        "steps": fit.steps, "seconds": round(fit.seconds, 3),
        "psnr_before": round(fit.psnr_before, 3), "psnr_after": round(fit.psnr_after, 3),
    }  # fmt: skip


def _avatar_summary(path, avatar, fit) -> dict:
    """An avatar written by the command, as ``--json`` reports it."""
    return {
        "avatar": str(path),
        "static_gaussians": int(avatar.static.count),
        "driven_gaussians": int(avatar.rig.dynamic.count),
        "channels": int(avatar.static.channels),
        "fit": _fit_summary(fit),
    }


def _avatar(args, pipeline, image, image_path, device):
    """(avatar, the source crop it was made from) for one raw portrait, on ``device``."""
    if args.source_track:
        source_image, source, camera = _from_track(pipeline, image, image_path, args.source_track)
        source, camera = source.to(device), camera.to(device)
    else:
        source_image, source, camera = _prepare(pipeline, image.to(device), image_path), None, None
    source_image = source_image.to(device)
    return pipeline.reconstruct(source_image, source=source, camera=camera), source_image


def image_list(images: list[str]) -> list[str]:
    """The portraits named by ``images``: files and ``example:`` names as given, folders as their
    ``IMAGE_SUFFIXES`` files in name order (hidden files left out). InputError for an empty folder."""
    from gshead.core.errors import InputError

    out: list[str] = []
    for item in images:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )  # fmt: skip
            if not found:
                raise InputError(
                    f"{path}: a folder with no images; expected {', '.join(IMAGE_SUFFIXES)} files in it"
                )
            out.extend(str(p) for p in found)
        else:
            out.append(item)
    return out


def avatar_name(image: str) -> str:
    """The avatar file name for a portrait: its stem (``example:astronaut`` -> ``astronaut``)."""
    from gshead.io.media import EXAMPLES

    stem = EXAMPLES.get(image) or Path(image).stem
    return f"{stem}.safetensors"


def _plan(args) -> list[tuple[str, Path]]:
    """(image, avatar path) for every portrait; InputError before any work for a bad ``-o``, a
    shared avatar name, or an output that is one of the inputs."""
    from gshead.core.errors import InputError
    from gshead.io.media import check_output

    if args.source_track:
        raise InputError(
            "--source-track: belongs to one image (the crop its tracker saw); give one IMAGE with -o FILE"
        )
    folder = check_output(args.output, folder=True, what="the avatars (several images need -o DIR)")
    if folder.suffix.lower() == ".safetensors":
        raise InputError(
            f"{folder}: several images make one avatar each; expected a folder name for -o, not a .safetensors file"
        )
    images = image_list(args.images)
    seen: dict[str, str] = {}
    plan = []
    for image in images:
        name = avatar_name(image)
        if name in seen:
            raise InputError(
                f"{image} and {seen[name]} would both be written to {folder / name}; rename one of them"
            )
        seen[name] = image
        out = folder / name
        check_output(
            out, accepts=(".safetensors",), inputs=(*images, args.weights, args.pipeline), what="an avatar"
        )
        plan.append((image, out))
    return plan


def _reconstruct_many(args, device) -> int:
    import torch

    from gshead.core.errors import GsheadError
    from gshead.io.avatar import save_avatar
    from gshead.io.media import read_image

    plan = _plan(args)
    torch.set_grad_enabled(False)
    pipeline = _build_pipeline(args, device)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    entries: list[dict] = []  # --json
    failed = 0
    with progress(total=len(plan), desc="reconstruct", unit="image", disable=args.quiet) as bar:
        for image_path, out in plan:
            bar.set_postfix_str(Path(image_path).name)
            start = time.perf_counter()
            try:
                image = read_image(image_path)
                avatar, source_image = _avatar(args, pipeline, image, image_path, device)
                fit = None
                if args.fit_steps:
                    avatar, fit = _fit(args, pipeline, avatar, source_image)
                save_avatar(out, avatar.to("cpu"), pipeline)
            except (GsheadError, OSError) as exc:
                failed += 1
                reason = _short(exc)
                print(f"gshead: {image_path}: skipped: {reason}", file=sys.stderr)
                brief = reason if len(reason) <= 60 else reason[:57] + "..."
                seconds = time.perf_counter() - start
                rows.append((image_path, f"failed: {brief}", "-", f"{seconds:.1f}"))
                entries.append(
                    {"image": image_path, "avatar": None, "error": reason, "seconds": round(seconds, 3)}
                )
            else:
                seconds = time.perf_counter() - start
                psnr = f"{fit.psnr_after:.2f}" if fit is not None else "-"
                rows.append((image_path, str(out), psnr, f"{seconds:.1f}"))
                entries.append(
                    {
                        "image": image_path,
                        **_avatar_summary(out, avatar, fit),
                        "error": None,
                        "seconds": round(seconds, 3),
                    }
                )
            bar.update()
    print(summary_table(rows), file=sys.stderr)
    done = len(plan) - failed
    print(
        f"reconstruct: {done} of {len(plan)} avatars written to {args.output}"
        + (f"; {failed} image{'s' if failed != 1 else ''} failed" if failed else ""),
        file=sys.stderr,
    )
    if args.json:
        summary = {"output": str(args.output), "written": done, "failed": failed, "images": entries}
        print(json.dumps(summary, indent=2))
    return EXIT_SOME_FAILED if failed else 0


def _short(exc: BaseException) -> str:
    """One line for a failed image's row (OS errors in the commands' wording)."""
    from gshead.commands._errors import _os_error_message

    text = _os_error_message(exc) if isinstance(exc, OSError) else str(exc)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def summary_table(rows: list[tuple[str, str, str, str]]) -> str:
    """The end-of-run table: image, avatar (or the failure), PSNR after fitting (dB), seconds."""
    header = ("image", "avatar", "PSNR after fit (dB)", "seconds")
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    line = lambda r: "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    ).rstrip()
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


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
        raise InputError(
            f"{what}: GAGAvatar_track output holds FLAME codes, but the pipeline's head model is {head_model!r}"
        )
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
    from gshead.commands._device import add_device_argument
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "reconstruct", help="build an avatar from one portrait (or one avatar each from several, or a folder)",
        **doc(
            "Crop, track, encode and lift a portrait into an avatar file (optionally fitted to the "
            "portrait for --fit-steps steps), which 'gshead reenact', 'live', 'view' and 'export' read. "
            "Several images or a folder make one avatar each with one pipeline, carry on past an image "
            "that fails and end with a summary table (exit status 1 when any failed).",
            "# the built-in portrait, with the shipped trained weights and 100 fitting steps\n"
            "gshead reconstruct example:astronaut -o astronaut.safetensors --weights builtin:default --fit-steps 100",
            "# every portrait of a folder: avatars/<stem>.safetensors each, a JSON summary on stdout\n"
            "gshead reconstruct photos/ -o avatars/ --weights builtin:default --json",
            "# another pipeline with weights imported from GAGAvatar ('gshead import gagavatar')\n"
            "gshead reconstruct portrait.jpg -o portrait.safetensors --pipeline configs/gagavatar.yaml "
            "--weights gagavatar.safetensors",
        ),
    )  # fmt: skip
    p.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="portrait image file, or example:astronaut; several files or a folder make one avatar each",
    )  # fmt: skip
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE|DIR",
        help="avatar file to write (.safetensors); with several images or a folder, the folder to "
        "write NAME.safetensors into (made when missing)",
    )  # fmt: skip
    p.add_argument("--pipeline", metavar="YAML", help="pipeline YAML (default: the embedded default)")
    p.add_argument(
        "--weights", metavar="WEIGHTS",
        help=WEIGHTS_HELP,
    )  # fmt: skip
    p.add_argument(
        "--fit-steps", type=int, default=0, metavar="N",
        help="refine the avatar's Gaussians against the portrait for N steps (default 0: off)",
    )  # fmt: skip
    p.add_argument(
        "--fit-lr",
        type=float,
        default=0.01,
        metavar="LR",
        help="base learning rate of the fit (default 0.01)",
    )
    p.add_argument(
        "--source-track", metavar="TRACK[:FRAME]",
        help="take the portrait's FLAME parameters and camera from GAGAvatar_track output (optim.pkl; "
        "FRAME: an index or frame key, default the first) instead of tracking; IMAGE must be the "
        "512-px crop that tracker used (flame pipelines only)",
    )  # fmt: skip
    add_device_argument(p)
    p.add_argument(
        "--json", action="store_true",
        help="print a JSON summary on stdout: the avatar, its Gaussian counts and the fit (several "
        "images: one entry per image)",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reconstruct)


__all__ = ["IMAGE_SUFFIXES", "add_parser", "avatar_name", "cmd_reconstruct", "image_list", "summary_table"]
