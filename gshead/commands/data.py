"""``gshead data``: make and inspect training datasets.

    gshead data synth -n N -o DIR [--frames F] [--size S] [--seed SEED] [--clips C]
                      [--head-model NAME] [--splits 0.8 0.1 0.1] [--overwrite] [-q]
    gshead data from-videos FOLDER -o DIR [--size S] [--seed SEED] [--overwrite] [-q]
    gshead data info DIR [--json]

``synth`` renders the synthetic multi-identity dataset (``gshead.data.synthetic``) with the head
model of the embedded default pipeline unless ``--head-model`` names another; ``from-videos``
converts a folder of videos and tracked sequences (``gshead.data.videos``). Both write the shard
format of ``gshead.data.format`` atomically: an interrupted run leaves no DIR.
"""

from __future__ import annotations

import json
import sys


def default_head_model() -> str:
    """The head model of the embedded default pipeline (what ``tiny-synthetic`` trains)."""
    from gshead.core.config import default_pipeline_path, read_yaml

    return str(read_yaml(default_pipeline_path(), "pipeline config")["headmodel"]["name"])


MAX_SEED = 2**63 - 1


def cmd_synth(args) -> int:
    from gshead.core.errors import require_int
    from gshead.data.synthetic import write_synthetic_dataset

    require_int(args.seed, "--seed", 0, MAX_SEED)
    from gshead.io.media import check_output

    check_output(args.output, folder=True, what="a dataset")
    info = write_synthetic_dataset(
        args.output,
        identities=args.identities,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        head_model=args.head_model or default_head_model(),
        splits=tuple(args.splits),
        progress=not args.quiet,
        clips_per_identity=args.clips,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.output}: {_summary(info)}", file=sys.stderr)
    return 0


def cmd_from_videos(args) -> int:
    from gshead.core.errors import require_int
    from gshead.data.videos import convert_video_folder

    require_int(args.seed, "--seed", 0, MAX_SEED)
    from gshead.io.media import check_output

    check_output(args.output, folder=True, inputs=(args.folder,), what="a dataset")
    info = convert_video_folder(
        args.folder,
        args.output,
        size=args.size,
        seed=args.seed,
        splits=tuple(args.splits),
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.output}: {_summary(info)}", file=sys.stderr)
    return 0


def _summary(info) -> str:
    parts = ", ".join(
        f"{s} {len(info.identities[s])} identities / {info.clips[s]} clips" for s in info.identities
    )
    return f"{info.head_model}, {info.size}x{info.size}, {info.frames} frames per clip; {parts}"


def cmd_info(args) -> int:
    from gshead.data.format import read_info

    info = read_info(args.dataset)
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
        return 0
    print(f"{args.dataset}: {info.source} dataset, format v{info.format_version}")
    print(f"head model: {info.head_model} (identity {info.identity_dim}, expression {info.expression_dim})")
    print(f"frames: {info.size}x{info.size}, {info.frames} per clip")
    for split, ids in info.identities.items():
        print(f"{split}: {len(ids)} identities, {info.clips[split]} clips, {len(info.shards[split])} shards")
    return 0


def _add_writing_options(s) -> None:
    """Options shared by the commands that write a dataset: splits, overwrite, quiet."""
    s.add_argument(
        "--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of identities per split (default 0.8 0.1 0.1)",
    )  # fmt: skip
    s.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers) -> None:
    """Add ``data {synth,from-videos,info}`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "data", help="make and inspect training datasets",
        **doc(
            "Make training datasets for 'gshead train' and 'gshead eval' (sharded safetensors, split "
            "by identity) and say what one holds.",
            "gshead data synth -n 100 --frames 8 --size 128 -o data/synth",
            "gshead data info data/synth",
        ),
    )  # fmt: skip
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = sub.add_parser(
        "synth", help="render a synthetic multi-identity head dataset",
        **doc(
            "Render a synthetic multi-identity head dataset with gshead's own rasterizer (skin, lips, "
            "brows, irises, hair cap, lighting), split by identity.",
            "# what the shipped builtin:default weights were trained on\n"
            "gshead data synth -n 100 --frames 8 --size 128 -o data/synth",
        ),
    )  # fmt: skip
    s.add_argument("-n", "--identities", type=int, required=True, metavar="N", help="number of identities")
    s.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="dataset folder to create (new or empty)"
    )
    s.add_argument("--frames", type=int, default=8, metavar="N", help="frames per clip (default 8)")
    s.add_argument("--clips", type=int, default=1, metavar="N", help="clips per identity (default 1)")
    s.add_argument("--size", type=int, default=128, metavar="PX", help="image side in pixels (default 128)")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    s.add_argument(
        "--head-model", default=None, metavar="NAME",
        help="registered head model (default: the embedded default pipeline's, anny-head)",
    )  # fmt: skip
    _add_writing_options(s)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser(
        "from-videos", help="convert a folder of videos and tracked sequences (VFHQ-style)",
        **doc(
            "Convert a VFHQ-style folder (videos, each with the tracked sequence 'gshead track' wrote "
            "for it under the same name) into the dataset format.",
            "# clips/talk.mp4 with clips/talk.safetensors (gshead track clips/talk.mp4 -o clips/talk.safetensors), ...\n"
            "gshead data from-videos clips -o data/clips --size 128",
        ),
    )  # fmt: skip
    s.add_argument(
        "folder",
        metavar="FOLDER",
        help="folder of videos, each with a tracked-sequence .safetensors of the same name",
    )
    s.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="dataset folder to create (new or empty)"
    )
    s.add_argument("--size", type=int, default=128, metavar="PX", help="crop side in pixels (default 128)")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the identity split (default 0)")
    _add_writing_options(s)
    s.set_defaults(func=cmd_from_videos)

    s = sub.add_parser(
        "info", help="what a dataset folder holds",
        **doc(
            "Say what a dataset folder holds: its source, head model, frame size, and identities, clips "
            "and shards per split.",
            "gshead data info data/synth --json",
        ),
    )  # fmt: skip
    s.add_argument("dataset", metavar="DIR", help="dataset folder")
    s.add_argument("--json", action="store_true", help="machine-readable output (the dataset index)")
    s.set_defaults(func=cmd_info)
