"""``gshead bench PIPELINE.yaml`` (old spelling ``gshead bench --contract PIPELINE.yaml``): the wall-clock check of the contract's independence clause.

The unit tests prove independence by counting flops (``gshead.core.contract``); this command
measures what a user feels. It builds the pipeline twice, with the smallest and the largest encoder
variant that fits in memory (random weights), reconstructs one avatar with each, drives both with the
same frames (after a warm-up) and compares the median per-frame times. The ratio large / small
should be 1: the command exits with status 1 and a one-line message when it leaves
``TOLERANCE`` = [0.95, 1.05].

Variants: the encoder config's ``variant`` or ``size`` field (a ``Literal``), ordered by the encoder
factory's ``parameter_count(config)``; a variant whose float32 weights would exceed the memory budget
(default 8 GB) is skipped. Encoders without such a field (e.g. ``tiny-conv``) need ``sizes``: a list
of variant values or of dicts of encoder fields, e.g. ``[{"channels": 8}, {"channels": 64}]``
(ordered by parameters too; counted by building when the factory cannot count).
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gshead.core.errors import ConfigError

TOLERANCE = (0.95, 1.05)
"""Accepted range of (median frame time with the largest encoder) / (with the smallest)."""
VARIANT_FIELDS = ("variant", "size")
DEFAULT_MEMORY_BUDGET = 8e9  # bytes of encoder weights (float32)
WARMUP_FRAMES = 3


def clock() -> float:
    """Seconds from a monotonic clock (tests replace this)."""
    return time.perf_counter()


def _variant_field(config_class) -> tuple[str, tuple[Any, ...]] | None:
    for field in VARIANT_FIELDS:
        info = config_class.model_fields.get(field)
        if info is not None and typing.get_origin(info.annotation) is typing.Literal:
            return field, typing.get_args(info.annotation)
    return None


def _candidates(config, registry, sizes: Sequence[str | dict] | None) -> list[dict]:
    """Encoder slot dicts to choose from (each with its parameter count under ``_parameters``)."""
    slot = config.encoder.model_dump(mode="json")
    if "weights" in slot:
        slot["weights"] = None  # random weights: one checkpoint cannot fit every variant
    spec = registry.get("encoder", slot["name"])
    found = _variant_field(spec.config_class)
    if sizes is None:
        if found is None:
            raise ConfigError(
                f"bench: encoder {slot['name']!r} has no variant/size field; pass sizes (encoder fields per variant)"
            )
        sizes = list(found[1])
    slots = []
    for size in sizes:
        if isinstance(size, dict):
            slots.append({**slot, **size})
        elif found is not None:
            slots.append({**slot, found[0]: size})
        else:
            raise ConfigError(
                f"bench: encoder {slot['name']!r} has no variant field; give sizes as dicts of fields"
            )
    count = getattr(spec.factory, "parameter_count", None)
    out = []
    for s in slots:
        cfg = spec.config_class.model_validate(s)
        if count is not None:
            n = int(count(cfg))
        else:  # build it to count (small encoders only get here: those without a variant list)
            n = sum(p.numel() for p in spec.factory(cfg, _context(config, registry)).parameters())
        out.append({**cfg.model_dump(mode="json"), "_parameters": n})
    return sorted(out, key=lambda s: s["_parameters"])


def _context(config, registry):
    from gshead.core.components import BuildContext

    return BuildContext(config.feature_channels)


def _frames(head_model, frames: int):
    """A deterministic sequence of ``frames`` head parameters (jaw, expression, eyes, small turns)."""
    p = head_model.neutral(frames)
    t = torch.linspace(0, 2 * torch.pi, frames)[:, None]
    expression = 0.5 * (1 + torch.sin(t + torch.arange(p.expression.shape[1]))) * 0.6
    jaw = torch.cat([0.15 * (1 + torch.sin(2 * t)), torch.zeros(frames, 2)], 1)
    eyes = 0.1 * torch.sin(t + torch.arange(6))
    rotation = torch.cat([torch.zeros(frames, 1), 0.2 * torch.sin(t), torch.zeros(frames, 1)], 1)
    return p.replace(expression=expression.to(p.expression), jaw=jaw, eyes=eyes, rotation=rotation)


def _reconstruct(config, slot: dict, registry, frames: int):
    """Build the pipeline with encoder ``slot``, reconstruct once (timed) and return its driving
    session (which holds no encoder: the pipeline is dropped here), the frames and the result row."""
    from gshead.core.config import validate_pipeline
    from gshead.core.pipeline import Pipeline
    import torch

    from gshead.core.components import Segmenter
    from gshead.io.media import read_image

    data = config.model_dump(mode="json")
    data["encoder"] = {k: v for k, v in slot.items() if k != "_parameters"}
    pipe = Pipeline(validate_pipeline(data, registry, source="bench"), registry)
    # a real face (the built-in portrait, cropped by the pipeline's tracker): landmark trackers need one
    image = pipe.prepare_image(read_image("example:astronaut"))
    # tracking (and a segmentation's start-up) do not depend on the encoder: done once, untimed
    with torch.no_grad():
        tracked = pipe.tracker.track(image)
    if isinstance(pipe.tracker, Segmenter):
        pipe.tracker.segment(image)
    start = clock()
    avatar = pipe.reconstruct(image, tracked.params, tracked.camera)
    reconstruct_s = clock() - start
    session = pipe.session(avatar)
    params = _frames(pipe.head_model, frames)
    row = {"encoder": data["encoder"], "parameters": slot["_parameters"], "reconstruct_s": reconstruct_s}
    return session, params, row


def contract_bench(
    pipeline_yaml: str | Path,
    frames: int = 30,
    sizes: Sequence[str | dict] | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
    registry=None,
    threads: int | None = None,
) -> dict:
    """Drive the pipeline with its smallest and largest encoder; compare per-frame times.

    Both avatars are reconstructed first (each pipeline is dropped once its session exists), then
    frames alternate between the two sessions so slow drifts in machine load hit both alike.

    :param pipeline_yaml: pipeline config file.
    :param frames: timed frames per variant (after ``WARMUP_FRAMES`` untimed ones).
    :param sizes: variants to choose from (values of the variant field, or dicts of encoder fields);
        default: every value of the encoder's variant field.
    :param memory_budget: bytes of float32 encoder weights above which a variant is skipped.
    :param registry: component registry (default: the process-wide one).
    :param threads: torch CPU threads while benchmarking (restored after); default: as set. On a
        machine shared with other work, 1 gives far steadier times (threads stall on busy cores).
    :returns: ``{"pipeline", "frames", "skipped", "variants": [small, large], "ratio", "tolerance",
        "within"}``; each variant has ``encoder``, ``parameters``, ``reconstruct_s``, ``frame_median_s``.
    """
    from gshead.core.config import load_pipeline
    from gshead.core.registry import get_registry

    if frames < 1:
        raise ConfigError(f"bench: frames must be at least 1, got {frames}")
    if threads is not None and threads < 1:
        raise ConfigError(f"bench: threads must be at least 1, got {threads}")
    registry = registry or get_registry()
    config = load_pipeline(pipeline_yaml, registry)
    candidates = _candidates(config, registry, sizes)
    fitting = [c for c in candidates if 4 * c["_parameters"] <= memory_budget]
    skipped = [{k: v for k, v in c.items() if k != "_parameters"} for c in candidates if c not in fitting]
    if len(fitting) < 2:
        raise ConfigError(
            f"bench: need two encoder variants within the memory budget ({memory_budget / 1e9:g} GB), "
            f"found {len(fitting)}"
        )
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        results = _measure(config, registry, (fitting[0], fitting[-1]), frames)
    finally:
        torch.set_num_threads(before)
    ratio = results[1]["frame_median_s"] / max(results[0]["frame_median_s"], 1e-12)
    return {
        "pipeline": str(pipeline_yaml),
        "frames": frames,
        "threads": torch.get_num_threads() if threads is None else threads,
        "skipped": skipped,
        "variants": results,
        "ratio": ratio,
        "tolerance": list(TOLERANCE),
        "within": TOLERANCE[0] <= ratio <= TOLERANCE[1],
    }


def _measure(config, registry, slots, frames: int) -> list[dict]:
    """Reconstruct with each encoder slot, then time alternating frames; one result row per slot."""
    made = []
    for slot in slots:
        made.append(_reconstruct(config, slot, registry, frames))
        gc.collect()  # the pipeline (and its encoder) is gone; only the session remains
    # Frames alternate between the two sessions, so both see the same load on a shared machine.
    for session, params, _ in made:
        for i in range(min(WARMUP_FRAMES, frames)):
            session.render(params.select(i))
    times: list[list[float]] = [[], []]
    for i in range(frames):
        for k, (session, params, _) in enumerate(made):
            start = clock()
            session.render(params.select(i))
            times[k].append(clock() - start)
    return [{**row, "frame_median_s": statistics.median(t)} for (_, _, row), t in zip(made, times)]


def _label(variant: dict) -> str:
    enc = variant["encoder"]
    field = next((f for f in VARIANT_FIELDS if f in enc), None)
    return f"{enc['name']} {enc[field]}" if field else f"{enc['name']} ({variant['parameters'] / 1e6:.2f} M)"


def cmd_bench(args) -> int:
    report = contract_bench(
        bench_pipeline(args), frames=args.frames, memory_budget=args.memory_budget * 1e9, threads=args.threads
    )
    small, large = report["variants"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for v in report["variants"]:
            print(
                f"{_label(v):<28} {v['parameters'] / 1e6:>10.2f} M params   reconstruct {v['reconstruct_s']:8.3f} s"
                f"   frame (median of {report['frames']}) {1e3 * v['frame_median_s']:8.2f} ms"
            )
        for s in report["skipped"]:
            print(f"skipped (over the memory budget): {s['name']} {s.get('variant', s.get('size', ''))}")
        print(f"ratio large/small: {report['ratio']:.3f} (accepted {TOLERANCE[0]}..{TOLERANCE[1]})")
    if not report["within"]:
        print(
            f"gshead: bench: per-frame driving time with {_label(large)} is {report['ratio']:.3f}x that with "
            f"{_label(small)}; the contract needs {TOLERANCE[0]}..{TOLERANCE[1]}",
            file=sys.stderr,
        )
        return 1
    return 0


def add_parser(subparsers) -> None:
    """Add ``bench PIPELINE.yaml`` (old spelling: ``bench --contract PIPELINE.yaml``) to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "bench", help="check that per-frame driving time does not depend on the encoder size (wall clock)",
        usage="gshead bench [-h] PIPELINE.yaml [--contract] [--frames N] [--memory-budget GB]\n"
        "                    [--threads N] [--json]",
        **doc(
            "The wall-clock check of the contract's independence clause: build the pipeline with its "
            "smallest and its largest encoder variant that fit in the memory budget (random weights), "
            "reconstruct one avatar with each, drive both with the same frames and compare the median "
            "per-frame times. Exit status 1 when the ratio large/small leaves "
            f"[{TOLERANCE[0]}, {TOLERANCE[1]}]. The contract check is what bench runs, so --contract "
            "may be left out; 'gshead bench --contract PIPELINE.yaml' (the old spelling) still works.",
            "gshead bench configs/separated-cpu.yaml --threads 1",
            "# the same, the old spelling, with a JSON report on stdout\n"
            "gshead bench --contract configs/separated-cpu.yaml --threads 1 --json",
        ),
    )  # fmt: skip
    p.add_argument(
        "pipeline", nargs="?", default=None, metavar="PIPELINE.yaml", help="pipeline YAML to benchmark"
    )
    p.add_argument(
        "--contract", nargs="?", const=True, default=None, metavar="PIPELINE.yaml",
        help="run the contract check (what bench runs; may be left out); the old spelling "
        "'--contract PIPELINE.yaml' names the pipeline here instead",
    )  # fmt: skip
    p.add_argument(
        "--frames", type=int, default=30, metavar="N", help="timed frames per encoder variant (default 30)"
    )
    p.add_argument(
        "--memory-budget",
        type=float,
        default=DEFAULT_MEMORY_BUDGET / 1e9,
        metavar="GB",
        help="skip encoder variants whose float32 weights exceed this (default 8)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: torch's; 1 is steadier on shared machines)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_bench)


def bench_pipeline(args) -> str:
    """The pipeline YAML of a parsed ``bench`` command line: the positional ``PIPELINE.yaml``, or the
    old spelling's ``--contract PIPELINE.yaml``. InputError when neither or two different ones are given."""
    from gshead.core.errors import InputError

    old = args.contract if isinstance(args.contract, str) else None
    if args.pipeline is not None and old is not None and old != args.pipeline:
        raise InputError(
            f"bench: two pipelines, {args.pipeline} and --contract {old}; give one: gshead bench PIPELINE.yaml"
        )
    pipeline = args.pipeline if args.pipeline is not None else old
    if pipeline is None:
        raise InputError(
            "bench: no pipeline; expected gshead bench PIPELINE.yaml (or --contract PIPELINE.yaml)"
        )
    return pipeline


__all__ = ["TOLERANCE", "add_parser", "bench_pipeline", "cmd_bench", "contract_bench"]
