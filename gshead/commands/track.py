"""``gshead track``: track a video or an image into a tracked-sequence file.

    gshead track VIDEO|IMAGE -o SEQ.safetensors [--pipeline YAML] [--smoothing X] [--no-cache] [-q]

Uses the pipeline's tracker and head model (the embedded default pipeline when ``--pipeline`` is
not given) through ``gshead.jobs.tracking.track_with_pipeline``, the same code path as
``gshead reenact --driver VIDEO``: per-frame face boxes, batched fitting, one identity, frames
without a face flagged and interpolated, temporal smoothing, and a cache keyed by the input's
content, so a rerun is instant. The output is written atomically, only once tracking succeeded.
"""

from __future__ import annotations

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

    check_output(args.output, accepts=(".safetensors",), inputs=(args.input, args.pipeline), what="a tracked sequence")
    torch.set_grad_enabled(False)
    config = load_pipeline(args.pipeline or default_pipeline_path(), get_registry())

    def bar(total):
        return progress(total=total or None, desc="tracking", unit="frame", disable=args.quiet)

    seq, cached, tracker = track_with_pipeline(
        args.input, config, smoothing=args.smoothing, use_cache=not args.no_cache, progress=bar
    )
    if tracker is not None and not isinstance(tracker, LandmarkTracker):
        print(
            f"note: tracker {config.tracker.name!r} does not fit landmarks; fit errors are NaN",
            file=sys.stderr,
        )
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
    return 0


def add_parser(subparsers) -> None:
    """Register ``gshead track`` on the top-level subparsers."""
    from gshead.jobs.tracking import DEFAULT_SMOOTHING

    p = subparsers.add_parser("track", help="track a video or image into a tracked-sequence file")
    p.add_argument("input", help="video (.mp4, .mov, .mkv, .webm, .avi) or image file, or example:astronaut")
    p.add_argument("-o", "--output", required=True, help="tracked-sequence file to write (.safetensors)")
    p.add_argument("--pipeline", help="pipeline YAML whose tracker and head model to use (default: embedded)")
    p.add_argument(
        "--smoothing",
        type=float,
        default=DEFAULT_SMOOTHING,
        help="temporal smoothing of the parameters and the crop box: standard deviation in frames; "
        f"0 turns it off (default {DEFAULT_SMOOTHING:g})",
    )
    p.add_argument("--no-cache", action="store_true", help="track again even if a cached result exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_track)
