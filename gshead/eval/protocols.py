"""Self- and cross-reenactment evaluation, aggregation, and result tables (``gshead eval``).

**Self-reenactment**: reconstruct an avatar from the sample's source portrait (with the sample's
source parameters and camera), drive it with the targets' parameters (the avatar's identity is
kept; the targets' cameras are used) and compare each frame with the target image (the ground
truth): PSNR, SSIM, LPIPS, CSIM (output vs target), AED, APD (tracked output vs tracked target)
and AKD (landmarks of output vs target).

**Cross-reenactment**: the source shows person A, the targets person B, so there is no ground
truth: CSIM compares each output with A's source portrait, AED and APD compare the tracked output
with the tracked driving frame (B's expression and pose should carry over).

Every metric is computed per frame; the table holds the mean over all frames of all samples
(every frame weighs the same) and how many frames it is over. A frame where the tracker found no
face (on the output or the target) is left out of AKD/APD/AED and counted. A metric whose model
was not given (LPIPS, CSIM) or whose tracker is missing is shown as ``–`` with a note saying
why; nothing is ever computed with random weights. PSNR is capped at 100 dB per frame
(``gshead.metrics.image.PSNR_CAP_DB``), so identical images give 100, never ``inf``.

Outputs (``write_results``, each written atomically), one row per method (the pipeline, and
optionally the trivial baseline ``source_baseline`` that returns the source portrait unchanged):
``results.md`` (tables in the layout of the published ones, see ``peers.md``), ``results.csv``
(``method, PSNR, SSIM, LPIPS, CSIM, AED, APD, AKD, xCSIM, xAED, xAPD``, full precision, skipped
as ``–``), ``results.json`` (means, counts and notes per method and protocol) and
``per_frame.csv`` (every frame's values, to recompute the means).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from gshead.core.components import LandmarkTracker
from gshead.core.errors import InputError
from gshead.core.types import HeadParams, ReenactmentSample
from gshead.metrics import face as face_metrics
from gshead.metrics.image import psnr, ssim, to_size

if TYPE_CHECKING:
    from gshead.core.pipeline import Pipeline

ProtocolName = Literal["self", "cross"]

SELF_METRICS: tuple[str, ...] = ("PSNR", "SSIM", "LPIPS", "CSIM", "AED", "APD", "AKD")
"""Self-reenactment columns, in the order of the published tables."""
CROSS_METRICS: tuple[str, ...] = ("CSIM", "AED", "APD")
"""Cross-reenactment columns, in the order of the published tables."""
HIGHER_IS_BETTER = {
    "PSNR": True,
    "SSIM": True,
    "LPIPS": False,
    "CSIM": True,
    "AED": False,
    "APD": False,
    "AKD": False,
}
DECIMALS = {"PSNR": 2}
"""Decimals in the markdown table (3 unless listed); the CSV and JSON keep full precision."""
SKIPPED = "–"
"""How a metric that was not computed is shown in the tables."""


def metrics_of(protocol: ProtocolName) -> tuple[str, ...]:
    return SELF_METRICS if protocol == "self" else CROSS_METRICS


@dataclass(frozen=True)
class MetricSuite:
    """The models metrics need beyond pixels; a ``None`` one skips its metrics (``skipped`` says why).

    ``lpips``: ``(output, target) -> [B]`` (``gshead.metrics.lpips.LPIPS``); ``identity``: an
    ``IdentityEmbedder`` for CSIM; ``tracker``: a ``FaceTracker`` for AED/APD (frames where a
    ``LandmarkTracker`` finds no face are left out), and for AKD when it is also a
    ``LandmarkDetector``. ``reasons`` overrides the default note of a missing model.
    """

    lpips: Callable[[Tensor, Tensor], Tensor] | None = None
    identity: face_metrics.IdentityEmbedder | None = None
    tracker: face_metrics.FaceTracker | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    def skipped(self) -> dict[str, str]:
        """Metric name -> why it is not computed (empty when everything is)."""
        out: dict[str, str] = {}
        if self.lpips is None:
            out["LPIPS"] = self.reasons.get(
                "LPIPS", "no LPIPS weights given (--lpips-backbone and --lpips-lin)"
            )
        if self.identity is None:
            out["CSIM"] = self.reasons.get("CSIM", "no identity model given (--identity-model)")
        if self.tracker is None:
            why = self.reasons.get("tracker", "no face tracker")
            out.update({"AED": why, "APD": why, "AKD": why})
        elif not isinstance(self.tracker, face_metrics.LandmarkDetector):
            out["AKD"] = self.reasons.get(
                "AKD", f"the tracker {type(self.tracker).__name__} detects no 2D landmarks"
            )
        return out


@dataclass(frozen=True)
class ProtocolResult:
    """Means over frames of one protocol on one dataset."""

    protocol: ProtocolName
    samples: int
    frames: int
    means: dict[str, float | None]  # metric -> mean over measured frames; None when skipped
    counts: dict[str, int]  # metric -> frames measured (frames - count = frames without a face)
    notes: tuple[str, ...]  # one line per skipped metric or lost frames


# ----------------------------------------------------------------------------------- running
def reenact(pipeline: Pipeline, sample: ReenactmentSample, batch: int = 8) -> Tensor:
    """Reconstruct from the sample's source and drive with its targets: images [T, 3, S, S].

    The source image is resized to the pipeline's ``source_size`` if it differs; frames are
    rendered at the sample's size S with the targets' cameras.
    """
    s = sample.size
    size = pipeline.config.source_size
    expected = pipeline.head_model.neutral(1).expression.shape[1]
    if sample.targets.expression.shape[1] != expected:
        raise InputError(
            f"dataset samples have {sample.targets.expression.shape[1]} expression coefficients; the pipeline's "
            f"head model {pipeline.config.headmodel.name!r} expects {expected}"
        )
    image = to_size(sample.source_image, (size, size)).clamp(0, 1)
    camera = sample.source_camera.resized(size, size)
    avatar = pipeline.reconstruct(image, source=sample.source, camera=camera)
    session = pipeline.session(avatar, render_size=s)
    target_camera = sample.target_camera.resized(s, s)
    frames = []
    for start in range(0, sample.frames, batch):
        stop = min(sample.frames, start + batch)
        cam = target_camera.replace(
            world_to_camera=target_camera.world_to_camera[start:stop],
            intrinsics=target_camera.intrinsics[start:stop],
        )
        frames.append(session.render(sample.targets.select(slice(start, stop)), cam))
    return torch.cat(frames).clamp(0, 1)


def _track(tracker: face_metrics.FaceTracker, images: Tensor) -> HeadParams:
    """Tracked parameters [B]; frames without a face are NaN (see ``face.mark_untracked``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no face in images [...]": counted in the table instead
        if isinstance(tracker, LandmarkTracker):
            tracked, error = tracker.track_with_error(images)
            return face_metrics.mark_untracked(tracked.params, torch.isfinite(error))
        return tracker.track(images).params


def _landmarks(tracker: face_metrics.LandmarkDetector, images: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tracker.detect_landmarks(images, missing="nan")


@torch.no_grad()
def score_frames(
    protocol: ProtocolName, sample: ReenactmentSample, output: Tensor, suite: MetricSuite
) -> dict[str, Tensor]:
    """Per-frame values {metric: [T]} of ``output`` [T, 3, S, S] for ``sample``; metrics the suite
    skips are absent; NaN marks a frame that could not be measured (no face found)."""
    target = sample.target_images.to(output)
    t = sample.frames
    out: dict[str, Tensor] = {}
    if protocol == "self":
        out["PSNR"] = psnr(output, target)
        out["SSIM"] = ssim(output, target)
        if suite.lpips is not None:
            out["LPIPS"] = suite.lpips(output, target).reshape(t).float()
    if suite.identity is not None:
        reference = target if protocol == "self" else sample.source_image.to(output)
        out["CSIM"] = face_metrics.cosine_similarity(
            suite.identity.embed(output), suite.identity.embed(reference)
        )
    if suite.tracker is not None:
        mine, theirs = _track(suite.tracker, output), _track(suite.tracker, target)
        out["AED"] = face_metrics.expression_distance(mine, theirs).float().cpu()
        out["APD"] = face_metrics.pose_distance(mine, theirs).float().cpu()
        if protocol == "self" and isinstance(suite.tracker, face_metrics.LandmarkDetector):
            out["AKD"] = (
                face_metrics.keypoint_distance(
                    _landmarks(suite.tracker, output), _landmarks(suite.tracker, target)
                )
                .float()
                .cpu()
            )
    return {k: v.detach().float().cpu().reshape(t) for k, v in out.items() if k in metrics_of(protocol)}


def aggregate(
    protocol: ProtocolName, per_sample: list[dict[str, Tensor]], suite: MetricSuite, frames: int | None = None
) -> ProtocolResult:
    """Means over all frames (NaN frames left out and counted) of per-sample ``score_frames`` values;
    ``frames`` is the total frame count (counted from the values when None)."""
    skipped = suite.skipped()
    if frames is None:
        frames = sum(int(next(iter(s.values())).numel()) if s else 0 for s in per_sample)
    means: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    notes: list[str] = []
    for name in metrics_of(protocol):
        values = [s[name] for s in per_sample if name in s]
        if not values:
            means[name], counts[name] = None, 0
            if name in skipped:
                notes.append(f"{name} skipped: {skipped[name]}")
            continue
        v = torch.cat(values).double()
        ok = torch.isfinite(v)
        counts[name] = int(ok.sum())
        means[name] = float(v[ok].mean()) if counts[name] else None
        if counts[name] < v.numel():
            notes.append(
                f"{name}: {v.numel() - counts[name]} of {v.numel()} frames had no face found and are left out"
            )
    return ProtocolResult(protocol, len(per_sample), frames, means, counts, tuple(notes))


def source_baseline(sample: ReenactmentSample) -> Tensor:
    """The trivial baseline: the source portrait returned unchanged for every target, [T, 3, S, S]."""
    return sample.source_image.expand(sample.frames, -1, -1, -1).clone()


def evaluate(
    pipeline: Pipeline,
    samples: Iterable[ReenactmentSample],
    protocol: ProtocolName,
    suite: MetricSuite,
    progress: Callable[[int], Any] | None = None,
    render: Callable[[ReenactmentSample], Tensor] | None = None,
) -> tuple[ProtocolResult, list[dict[str, Tensor]]]:
    """Run ``protocol`` over ``samples``: the aggregated result and every sample's per-frame values.

    ``render(sample) -> [T, 3, S, S]`` makes the outputs (default: ``reenact`` with ``pipeline``;
    ``source_baseline`` for the trivial baseline). ``progress(frames)`` is called after each sample.
    """
    render = render or (lambda sample: reenact(pipeline, sample))
    per_sample = []
    frames = 0
    for sample in samples:
        per_sample.append(score_frames(protocol, sample, render(sample), suite))
        frames += sample.frames
        if progress is not None:
            progress(sample.frames)
    if not per_sample:
        raise InputError(f"{protocol}-reenactment: the dataset gave no samples; expected at least one")
    return aggregate(protocol, per_sample, suite, frames), per_sample


# ----------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class MethodResults:
    """One row of the tables: a method's result per protocol and the per-frame values behind them."""

    method: str
    results: dict[str, ProtocolResult]  # protocol -> aggregated result
    frames: dict[str, list[dict[str, Tensor]]]  # protocol -> per sample {metric: [T]}


def _cell(result: ProtocolResult | None, name: str, decimals: int | None = None) -> str:
    if result is None or result.means.get(name) is None:
        return SKIPPED
    value = result.means[name]
    assert value is not None
    if decimals is None:
        return repr(value) if math.isfinite(value) else str(value)
    return f"{value:.{decimals}f}"


def markdown_table(rows: list[MethodResults], title: str = "gshead evaluation") -> str:
    """Self and cross tables (``Method | PSNR↑ | ...``, one row per method) with counts and notes."""
    lines = [f"# {title}", ""]
    for protocol, heading in (("self", "Self-reenactment"), ("cross", "Cross-reenactment")):
        present = [r for r in rows if protocol in r.results]
        if not present:
            continue
        names = metrics_of(protocol)  # type: ignore[arg-type]
        arrows = ["↑" if HIGHER_IS_BETTER[n] else "↓" for n in names]
        lines += [f"## {heading}", ""]
        lines.append("| Method | " + " | ".join(n + a for n, a in zip(names, arrows)) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for row in present:
            cells = [_cell(row.results[protocol], n, DECIMALS.get(n, 3)) for n in names]
            lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
        first = present[0].results[protocol]
        lines += ["", f"{first.frames} frames from {first.samples} samples; means over frames."]
        shared = set.intersection(*(set(r.results[protocol].notes) for r in present))
        lines += [f"- {note}" for note in first.notes if note in shared]
        for row in present:
            prefix = f"{row.method}: " if len(present) > 1 else ""
            lines += [f"- {prefix}{note}" for note in row.results[protocol].notes if note not in shared]
        lines.append("")
    lines.append(f"`{SKIPPED}`: not computed. PSNR is capped at 100 dB per frame (identical images).")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[MethodResults]) -> str:
    """One row per method in the column layout of ``peers.md``: method, the self metrics, then the
    cross ones prefixed with ``x``; full precision, ``–`` where not computed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *SELF_METRICS, *(f"x{n}" for n in CROSS_METRICS)])
    for row in rows:
        cells = [row.method]
        cells += [_cell(row.results.get("self"), n) for n in SELF_METRICS]
        cells += [_cell(row.results.get("cross"), n) for n in CROSS_METRICS]
        writer.writerow(cells)
    return buffer.getvalue()


def per_frame_csv(rows: list[MethodResults]) -> str:
    """``method, protocol, sample, frame, <metrics>``: every frame's values (empty when not computed)."""
    names = list(dict.fromkeys([*SELF_METRICS, *CROSS_METRICS]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "protocol", "sample", "frame", *names])
    for row in rows:
        for protocol, samples in row.frames.items():
            for i, values in enumerate(samples):
                t = int(next(iter(values.values())).numel()) if values else 0
                for f in range(t):
                    cells = [repr(float(values[n][f])) if n in values else "" for n in names]
                    writer.writerow([row.method, protocol, i, f, *cells])
    return buffer.getvalue()


def write_results(
    out_dir: str | Path, rows: list[MethodResults], info: dict[str, Any] | None = None
) -> list[Path]:
    """Write results.md, results.csv, results.json and per_frame.csv into ``out_dir`` (made if
    missing), each atomically; returns the paths."""
    from gshead.io.media import atomic_output

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; expected a folder for the evaluation results")
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        **(info or {}),
        "methods": {
            row.method: {
                p: {
                    "samples": r.samples,
                    "frames": r.frames,
                    "means": r.means,
                    "counts": r.counts,
                    "notes": list(r.notes),
                }
                for p, r in row.results.items()
            }
            for row in rows
        },
    }
    texts = {
        "results.md": markdown_table(rows),
        "results.csv": csv_table(rows),
        "results.json": json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
        "per_frame.csv": per_frame_csv(rows),
    }
    paths = []
    for name, text in texts.items():
        with atomic_output(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(out / name)
    return paths
