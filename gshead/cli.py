"""The ``gshead`` command: one command, one subcommand per job.

Errors that gshead raises on purpose (``GsheadError``) print one line and exit with status 2;
outputs are written atomically, so a failed or interrupted run leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr (``disable=True`` hides it)."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


# -- plugins / config -------------------------------------------------------------------------
def _field_rows(config_class) -> list[dict]:
    rows = []
    for name, field in config_class.model_fields.items():
        if name == "name":
            continue
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        rows.append(
            {
                "name": name,
                "type": annotation.replace("typing.", ""),
                "default": default,
                "required": field.is_required(),
                "description": field.description or "",
            }
        )
    return rows


VARIANT_FIELDS = ("variant", "size")
"""Config fields whose Literal values ``plugins --params`` enumerates (one count per value)."""


def _parameter_counts(spec) -> dict[str, int]:
    """Parameter count per variant (or of the default config) for components whose factory
    has ``parameter_count(config)`` (computed without allocating weights); else empty."""
    import typing

    count = getattr(spec.factory, "parameter_count", None)
    if count is None:
        return {}
    cls = spec.config_class
    for field in VARIANT_FIELDS:
        info = cls.model_fields.get(field)
        if info is not None and typing.get_origin(info.annotation) is typing.Literal:
            return {str(v): int(count(cls(**{field: v}))) for v in typing.get_args(info.annotation)}
    return {"default": int(count(cls()))}


def cmd_plugins(args) -> int:
    from gshead.core.registry import get_registry

    specs = get_registry().all()
    if args.params:
        rows = [{"kind": s.kind, "name": s.name, "parameters": _parameter_counts(s)} for s in specs]
        rows = [r for r in rows if r["parameters"]]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            for variant, n in r["parameters"].items():
                print(f"{r['kind']:<10}  {r['name']:<10}  {variant:<10}  {n / 1e6:>10.2f} M")
        return 0
    rows = [
        {
            "kind": s.kind,
            "name": s.name,
            "source": s.source,
            "config": f"{s.config_class.__module__}.{s.config_class.__qualname__}",
            "fields": _field_rows(s.config_class),
        }
        for s in specs
    ]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        fields = ", ".join(f"{f['name']}={f['default']!r}" for f in r["fields"]) or "-"
        print(f"{r['kind']:<10}  {r['name']:<{width}}  [{r['source']}]  {fields}")
    return 0


def cmd_config_schema(args) -> int:
    from gshead.core.config import pipeline_model
    from gshead.core.registry import get_registry

    print(json.dumps(pipeline_model(get_registry()).model_json_schema(), indent=2))
    return 0


# -- reconstruct ------------------------------------------------------------------------------
def cmd_reconstruct(args) -> int:
    import torch

    from gshead.core.avatar_io import save_avatar
    from gshead.core.config import default_pipeline_path
    from gshead.core.errors import InputError
    from gshead.core.io import read_image
    from gshead.core.pipeline import Pipeline

    if args.fit_steps < 0:
        raise InputError(f"--fit-steps {args.fit_steps}: expected a whole number >= 0 (0 = no fitting)")
    if not args.fit_lr > 0 or args.fit_lr == float("inf"):
        raise InputError(f"--fit-lr {args.fit_lr}: expected a finite number > 0")
    torch.set_grad_enabled(False)
    fit = None
    with _progress(total=5 if args.fit_steps else 4, desc="reconstruct", unit="step", disable=args.quiet) as bar:
        bar.set_postfix_str("reading image")
        image = read_image(args.image)
        bar.update()
        bar.set_postfix_str("building pipeline")
        pipeline = Pipeline.from_yaml(args.pipeline or default_pipeline_path())
        if args.weights:
            pipeline.load_weights(args.weights)
        bar.update()
        bar.set_postfix_str("cropping, tracking, encoding, lifting")
        source_image = pipeline.prepare_image(image)
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


def _fit(args, pipeline, avatar, source_image):
    """Test-time fitting of ``avatar`` to its source crop, with a progress bar (see ``gshead.core.fitting``)."""
    from gshead.core.fitting import fit_avatar

    with _progress(total=args.fit_steps, desc="fit", unit="step", leave=False, disable=args.quiet) as bar:

        def progress(step: int, loss: float) -> None:
            bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            bar.update()

        return fit_avatar(pipeline, avatar, source_image, args.fit_steps, lr=args.fit_lr, progress=progress)


# -- reenact ----------------------------------------------------------------------------------
def _driving_params(args, loaded):
    """Head parameters [T] for ``--driver`` (demo motion, a sequence file, or a video)."""
    from gshead.core.errors import InputError
    from gshead.core.motion import demo_motion

    driver = args.driver
    if driver == "demo":
        return demo_motion(loaded.head_model, args.frames)
    path = Path(driver)
    if path.suffix == ".safetensors":
        from gshead.core.sequence import load_sequence

        seq = load_sequence(path)
        if seq.head_model != loaded.avatar.provenance.head_model:
            raise InputError(
                f"{path}: tracked with head model {seq.head_model!r}, but the avatar uses "
                f"{loaded.avatar.provenance.head_model!r}"
            )
        return seq.params
    from gshead.core.tracking import is_video, track_with_pipeline

    if is_video(path):
        # The same path as 'gshead track' (per-frame crops, smoothing, flagged frames), cached.
        def bar(total):
            return _progress(total=total or None, desc="tracking", unit="frame", disable=args.quiet)

        seq, _cached, _tracker = track_with_pipeline(path, loaded.config, loaded.head_model, progress=bar)
        return seq.params
    raise InputError(
        f"--driver {driver!r}: expected 'demo', a tracked-sequence .safetensors file, or a video (.mp4, .mov, ...)"
    )


def cmd_reenact(args) -> int:
    import torch

    from gshead.core.avatar_io import load_avatar
    from gshead.core.errors import InputError
    from gshead.core.io import VideoWriter

    if args.size is not None and not 16 <= args.size <= 4096:
        raise InputError(f"--size {args.size}: expected a side between 16 and 4096 pixels")
    if args.batch < 1:
        raise InputError(f"--batch {args.batch}: expected at least 1 frame per step")

    from gshead.commands import reenact_views as views

    if not 0.0 <= args.orbit_degrees <= 180.0:
        raise InputError(f"--orbit-degrees {args.orbit_degrees:g}: expected 0 to 180 degrees")
    grid = Path(args.output).suffix.lower() == ".png"

    torch.set_grad_enabled(False)
    loaded = load_avatar(args.avatar)
    params = _driving_params(args, loaded)
    session = loaded.session(render_size=args.size)
    cam = session.camera
    n = params.batch_size
    cameras = None  # None: the source camera for every frame
    if args.camera == "orbit":
        cameras = views.orbit_cameras(cam, n, args.orbit_degrees, views.head_centre(loaded))
    panels = views.DriverPanels(loaded, args.driver) if args.side_by_side else None
    width = cam.width * (2 if panels is not None else 1)
    if grid:
        sink = views.GridWriter(args.output, n, width, cam.height)
    else:
        sink = VideoWriter(args.output, fps=args.fps, width=width, height=cam.height)
    with sink as out:
        with _progress(total=n, desc="reenact", unit="frame", disable=args.quiet) as bar:
            for start in range(0, n, args.batch):
                index = slice(start, min(n, start + args.batch))
                chunk = params.select(index)
                view = cam.expand(chunk.batch_size) if cameras is None else views.camera_slice(cameras, index)
                frames = session.render(chunk, camera=view)
                if panels is not None:
                    frames = torch.cat([panels.render(chunk, view), frames], dim=-1)  # driver | result
                out.write(frames)
                bar.update(chunk.batch_size)
    if grid:
        what = f"{n} frames in a {sink.rows}x{sink.columns} grid, {sink.width}x{sink.height}"
    else:
        what = f"{n} frames, {width}x{cam.height} at {args.fps:g} fps"
    print(f"wrote {args.output}: {what}", file=sys.stderr)
    return 0


# -- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from gshead import __version__

    parser = argparse.ArgumentParser(prog="gshead", description="One-shot 3D Gaussian head avatars.")
    parser.add_argument("--version", action="version", version=f"gshead {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list registered components (kind, name, source, config fields)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--params", action="store_true", help="parameter counts per variant (no weights allocated)")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("config", help="pipeline config tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    s = csub.add_parser("schema", help="print the pipeline JSON schema (for editors)")
    s.set_defaults(func=cmd_config_schema)

    p = sub.add_parser("reconstruct", help="build an avatar from one portrait")
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

    p = sub.add_parser("reenact", help="drive an avatar into a video (or a PNG grid of frames)")
    p.add_argument("avatar", help="avatar file written by 'gshead reconstruct'")
    p.add_argument("--driver", required=True, help="'demo', a tracked-sequence .safetensors file, or a video")
    p.add_argument(
        "-o", "--output", required=True,
        help="video file to write (.mp4, .mkv, ...), or .png for all frames tiled in one grid image",
    )  # fmt: skip
    p.add_argument(
        "--side-by-side", action="store_true",
        help="driver | result: the cropped driving video frame, or for demo/sequence drivers the "
        "head-model mesh posed by the frame's parameters, seen from the same camera",
    )  # fmt: skip
    p.add_argument(
        "--camera", choices=("fixed", "orbit"), default="fixed",
        help="fixed: the source view (default); orbit: a novel-view path swinging the camera "
        "around the head, yaw ±--orbit-degrees over the clip, starting and ending in front",
    )  # fmt: skip
    p.add_argument("--orbit-degrees", type=float, default=30.0, help="largest yaw of --camera orbit (default 30)")
    p.add_argument("--frames", type=int, default=100, help="frames of demo motion (default 100)")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    p.add_argument("--size", type=int, default=None, help="output side in pixels (default: the pipeline's)")
    p.add_argument("--batch", type=int, default=4, help="frames rendered per step (default 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reenact)

    from gshead.commands import bench as bench_cmd
    from gshead.commands import headmodel as headmodel_cmd
    from gshead.commands import importers as importers_cmd

    headmodel_cmd.add_parser(sub)
    importers_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    from gshead.commands import track as track_cmd

    track_cmd.add_parser(sub)
    from gshead.commands import train as train_cmd

    train_cmd.add_parser(sub)
    from gshead.commands import data as data_cmd

    data_cmd.add_parser(sub)
    from gshead.commands import ablate as ablate_cmd

    ablate_cmd.add_parser(sub)
    from gshead.commands import export as export_cmd

    export_cmd.add_parser(sub)
    from gshead.commands import eval as eval_cmd

    eval_cmd.add_parser(sub)
    from gshead.commands import view as view_cmd

    view_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gshead.core.errors import GsheadError

    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands switch autograd off for speed; a caller running main() in-process (tests, notebooks)
    # gets its own grad mode back afterwards.
    grad_mode = sys.modules["torch"].is_grad_enabled() if "torch" in sys.modules else True
    try:
        return args.func(args)
    except GsheadError as exc:
        print(f"gshead: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gshead: interrupted; no partial output was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if "torch" in sys.modules:
            sys.modules["torch"].set_grad_enabled(grad_mode)


if __name__ == "__main__":
    sys.exit(main())
