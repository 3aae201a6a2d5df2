"""``gshead track``: track a video or an image into a tracked-sequence file.

    gshead track VIDEO|IMAGE -o SEQ.safetensors|CURVES.csv [--format sequence|arkit-csv]
                 [--pipeline YAML] [--smoothing X] [--no-cache] [--json] [-q]

Uses the pipeline's tracker and head model (the embedded default pipeline when ``--pipeline`` is
not given) through ``gshead.jobs.tracking.track_with_pipeline``, the same code path as
``gshead reenact --driver VIDEO``: per-frame face boxes, batched fitting, one identity, frames
without a face flagged and interpolated, temporal smoothing, and a cache keyed by the input's
content, so a rerun is instant. The output is written atomically, only once tracking succeeded.
``--format arkit-csv`` writes the parameters as a Live Link Face CSV instead (head models with
ARKit-named expressions only; ``gshead.io.arkit``), which ``gshead reenact --driver`` reads back.
"""

from __future__ import annotations

import json
import sys


def cmd_track(args) -> int:
    import torch

    from gshead.commands._progress import progress
    from gshead.core.components import LandmarkTracker
    from gshead.core.config import default_pipeline_path, load_pipeline
    from gshead.core.registry import get_registry
    from gshead.io.media import check_output
    from gshead.io.sequence import save_sequence
    from gshead.jobs.tracking import track_with_pipeline

    arkit = args.format == "arkit-csv"
    accepts, what = ((".csv",), "a Live Link Face CSV") if arkit else ((".safetensors",), "a tracked sequence")
    check_output(args.output, accepts=accepts, inputs=(args.input, args.pipeline), what=what)
    torch.set_grad_enabled(False)
    config = load_pipeline(args.pipeline or default_pipeline_path(), get_registry())
    head_model = None
    if arkit:  # refuse a head model without ARKit names before tracking
        from gshead.core.pipeline import build_components
        from gshead.io.arkit import arkit_indices

        head_model = build_components(config, ("headmodel",), get_registry())[0]["headmodel"]
        arkit_indices(head_model, "--format arkit-csv", config.headmodel.name)

    def bar(total):
        return progress(total=total or None, desc="tracking", unit="frame", disable=args.quiet)

    seq, cached, tracker = track_with_pipeline(
        args.input, config, head_model, smoothing=args.smoothing, use_cache=not args.no_cache, progress=bar
    )
    if tracker is not None and not isinstance(tracker, LandmarkTracker):
        print(
            f"note: tracker {config.tracker.name!r} does not fit landmarks; fit errors are NaN",
            file=sys.stderr,
        )
    if arkit:
        from gshead.io.arkit import write_arkit_csv

        write_arkit_csv(args.output, seq.params, head_model, seq.fps, config.headmodel.name)
    else:
        save_sequence(args.output, seq)
    valid = int(seq.valid.sum())
    errors = seq.fit_error[torch.isfinite(seq.fit_error)]
    error = f", median landmark error {float(errors.median()):.2f} px" if len(errors) else ""
    how = " (from the cache)" if cached else ""
    print(
        f"wrote {args.output}{how}: {len(seq)} frames, {valid} with a face{error}, "
        f"{seq.camera.width}x{seq.camera.height} crops, head model {seq.head_model!r}",
        file=sys.stderr,
    )
    if args.json:
        summary = {
            "output": str(args.output), "format": args.format, "cached": bool(cached),
            "frames": len(seq), "with_face": valid,
            "median_fit_error_px": round(float(errors.median()), 4) if len(errors) else None,
            "crop": [seq.camera.width, seq.camera.height], "head_model": seq.head_model,
            "fps": float(seq.fps),
        }  # fmt: skip
        print(json.dumps(summary, indent=2))
    return 0


def add_parser(subparsers) -> None:
    """Register ``gshead track`` on the top-level subparsers."""
    from gshead.commands._help import doc
    from gshead.jobs.tracking import DEFAULT_SMOOTHING

    p = subparsers.add_parser(
        "track", help="track a video or image into a tracked-sequence file",
        **doc(
            "Track a video (or one image) with the pipeline's tracker and head model into a "
            "tracked-sequence file that 'gshead reenact --driver' reads: per-frame crop boxes, one "
            "identity, frames without a face flagged and interpolated, temporal smoothing. Results are "
            "cached by the input's content, so a rerun is instant; the same path as 'reenact --driver VIDEO'.",
            "# a video into a sequence, then drive an avatar with it\n"
            "gshead track talk.mp4 -o talk.safetensors",
            "gshead reenact astronaut.safetensors --driver talk.safetensors -o astronaut-talk.mp4",
            "# ARKit curves (a Live Link Face CSV), tracked again without the cache, with a JSON summary\n"
            "gshead track talk.mp4 --format arkit-csv -o talk.csv --no-cache --json",
        ),
    )  # fmt: skip
    p.add_argument("input", metavar="VIDEO|IMAGE", help="video (.mp4, .mov, .mkv, .webm, .avi) or image file, or example:astronaut")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE",
        help="file to write: a tracked sequence (.safetensors), or with --format arkit-csv a .csv",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=("sequence", "arkit-csv"), default="sequence",
        help="sequence (default): gshead's tracked-sequence file; arkit-csv: a Live Link Face CSV "
        "(52 ARKit blendshapes, head and eye yaw/pitch/roll in radians) for 'reenact --driver', "
        "only for head models with ARKit-named expressions",
    )  # fmt: skip
    p.add_argument("--pipeline", metavar="YAML", help="pipeline YAML whose tracker and head model to use (default: embedded)")
    p.add_argument(
        "--smoothing",
        type=float,
        default=DEFAULT_SMOOTHING,
        metavar="SIGMA",
        help="temporal smoothing of the parameters and the crop box: standard deviation in frames; "
        f"0 turns it off (default {DEFAULT_SMOOTHING:g})",
    )
    p.add_argument("--no-cache", action="store_true", help="track again even if a cached result exists")
    p.add_argument(
        "--json", action="store_true",
        help="print a JSON summary of the sequence on stdout: frames, frames with a face, median "
        "landmark error, crop size, head model, frame rate, from the cache or not",
    )  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_track)
