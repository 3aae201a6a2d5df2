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
    from gshead.core.io import read_image
    from gshead.core.pipeline import Pipeline

    torch.set_grad_enabled(False)
    with _progress(total=4, desc="reconstruct", unit="step", disable=args.quiet) as bar:
        bar.set_postfix_str("reading image")
        image = read_image(args.image)
        bar.update()
        bar.set_postfix_str("building pipeline")
        pipeline = Pipeline.from_yaml(args.pipeline or default_pipeline_path())
        if args.weights:
            pipeline.load_weights(args.weights)
        bar.update()
        bar.set_postfix_str("cropping, tracking, encoding, lifting")
        avatar = pipeline.reconstruct(pipeline.prepare_image(image))
        bar.update()
        bar.set_postfix_str(f"writing {args.output}")
        save_avatar(args.output, avatar, pipeline)
        bar.update()
    print(
        f"wrote {args.output}: {avatar.static.count} static + {avatar.rig.dynamic.count} driven Gaussians, "
        f"{avatar.static.channels} channels",
        file=sys.stderr,
    )
    return 0


# -- reenact ----------------------------------------------------------------------------------
def _driving_params(args, loaded):
    """Head parameters [T] for ``--driver`` (demo motion, a sequence file, or a video)."""
    import torch

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
    if path.suffix.lower() in {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}:
        from gshead.core.components import BuildContext
        from gshead.core.io import crop_square, read_video
        from gshead.core.pipeline import build_component
        from gshead.core.registry import get_registry
        from gshead.core.types import CropBox

        cfg = loaded.config
        tracker = build_component(cfg, "tracker", BuildContext(cfg.feature_channels, loaded.head_model), get_registry())
        frames, _fps, count = read_video(path)
        tracked = []
        box = None
        for frame in _progress(frames, total=count, desc="tracking", unit="frame", disable=args.quiet):
            box = box or tracker.crop_box(frame) or CropBox.centred(frame.shape[-1], frame.shape[-2])
            tracked.append(tracker.track(crop_square(frame, box, cfg.source_size)).params)
        if not tracked:
            raise InputError(f"{path}: the video has no frames")
        fields = tracked[0].tensors().keys()
        return type(tracked[0])(**{k: torch.cat([p.tensors()[k] for p in tracked]) for k in fields})
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

    torch.set_grad_enabled(False)
    loaded = load_avatar(args.avatar)
    params = _driving_params(args, loaded)
    session = loaded.session(render_size=args.size)
    cam = session.camera
    n = params.batch_size
    with VideoWriter(args.output, fps=args.fps, width=cam.width, height=cam.height) as video:
        with _progress(total=n, desc="reenact", unit="frame", disable=args.quiet) as bar:
            for start in range(0, n, args.batch):
                chunk = params.select(slice(start, min(n, start + args.batch)))
                video.write(session.render(chunk))
                bar.update(chunk.batch_size)
    print(f"wrote {args.output}: {n} frames, {cam.width}x{cam.height} at {args.fps:g} fps", file=sys.stderr)
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("reenact", help="drive an avatar into a video")
    p.add_argument("avatar", help="avatar file written by 'gshead reconstruct'")
    p.add_argument("--driver", required=True, help="'demo', a tracked-sequence .safetensors file, or a video")
    p.add_argument("-o", "--output", required=True, help="video file to write (.mp4)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    from gshead.core.errors import GsheadError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GsheadError as exc:
        print(f"gshead: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gshead: interrupted; no partial output was kept", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
