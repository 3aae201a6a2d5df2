"""Self/cross protocols on tiny hand-made samples: the tables equal means recomputed here."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from gshead.core.components import LandmarkTracker
from gshead.core.errors import InputError
from gshead.core.pipeline import Pipeline
from gshead.core.types import Camera, HeadParams, ReenactmentSample, Tracked
from gshead.eval.protocols import (
    MethodResults,
    MetricSuite,
    evaluate,
    reenact,
    source_baseline,
    write_results,
)
from gshead.metrics import face as face_metrics
from gshead.metrics.image import PSNR_CAP_DB, psnr, ssim
from gshead.testing import sample_image, tiny_pipeline

pytest.importorskip("torchmetrics")

S = 32  # sample side


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline.from_dict(tiny_pipeline(source_size=S, render_size=S))


def _sample(pipe: Pipeline, seed: int, frames: int = 2) -> ReenactmentSample:
    g = torch.Generator().manual_seed(seed)
    head = pipe.head_model
    targets = head.neutral(frames)
    targets = targets.replace(
        expression=0.3 * torch.rand(targets.expression.shape, generator=g),
        rotation=0.1 * (torch.rand(frames, 3, generator=g) - 0.5),
    )
    return ReenactmentSample(
        source_image=sample_image(S, seed),
        source=head.neutral(1),
        source_camera=Camera.frontal(1.0, 18.0, S, S),
        target_images=torch.rand(frames, 3, S, S, generator=g),
        targets=targets,
        target_camera=Camera.frontal(1.0, 18.0, S, S, batch_size=frames),
    )


class FakeTracker:
    """Deterministic 'tracking' from image statistics; no face found when the image is all dark."""

    def track_with_error(self, images):
        b = images.shape[0]
        m = images.mean(dim=(2, 3))  # [B, 3]
        params = HeadParams(
            identity=torch.zeros(b, 2),
            expression=m.clone(),
            jaw=torch.zeros(b, 3),
            eyes=torch.zeros(b, 6),
            rotation=m * 0.5,
            translation=images.std(dim=(2, 3)),
        )
        error = torch.where(images.amax(dim=(1, 2, 3)) > 0.05, 1.0, float("nan"))
        return Tracked(params, Camera.frontal(1.0, 18.0, S, S, b)), error

    def track(self, images):
        return self.track_with_error(images)[0]

    def detect_landmarks(self, images, missing="error"):
        ys, xs = torch.meshgrid(
            torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij"
        )
        w = images.mean(1) + 1e-6  # [B, H, W]
        centroid = torch.stack([(w * xs).sum((1, 2)), (w * ys).sum((1, 2))], -1) / w.sum((1, 2))[:, None]
        pts = torch.stack([centroid, centroid + 1.0], 1)  # [B, 2, 2]
        lost = images.amax(dim=(1, 2, 3)) <= 0.05
        pts[lost] = float("nan")
        return pts


class FakeIdentity:
    def embed(self, images):
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], 1)


def fake_lpips(x, y):
    return (x - y).abs().mean(dim=(1, 2, 3))


def _expected(outputs, samples, protocol, with_lpips=True):
    """Per-frame metric values recomputed directly from the outputs, concatenated over samples."""
    track, ident = FakeTracker(), FakeIdentity()
    values: dict[str, list[torch.Tensor]] = {}
    for out, smp in zip(outputs, samples):
        tgt = smp.target_images
        a, _ = track.track_with_error(out)
        b, _ = track.track_with_error(tgt)
        row = {
            "AED": face_metrics.expression_distance(a.params, b.params),
            "APD": face_metrics.pose_distance(a.params, b.params),
        }
        if protocol == "self":
            row.update(
                PSNR=psnr(out, tgt),
                SSIM=ssim(out, tgt),
                CSIM=face_metrics.cosine_similarity(ident.embed(out), ident.embed(tgt)),
                AKD=face_metrics.keypoint_distance(track.detect_landmarks(out), track.detect_landmarks(tgt)),
            )
            if with_lpips:
                row["LPIPS"] = fake_lpips(out, tgt)
        else:
            row["CSIM"] = face_metrics.cosine_similarity(ident.embed(out), ident.embed(smp.source_image))
        for k, v in row.items():
            values.setdefault(k, []).append(v)
    return {k: torch.cat(v).double() for k, v in values.items()}


def test_self_and_cross_tables_equal_recomputed_means(pipeline, tmp_path):
    samples = [_sample(pipeline, 1), _sample(pipeline, 2)]
    suite = MetricSuite(lpips=fake_lpips, identity=FakeIdentity(), tracker=FakeTracker())
    calls = []
    results, per_sample = {}, {}
    outputs = []  # recorded in the self run; the cross run renders again (deterministic)

    def recorded(smp):
        outputs.append(reenact(pipeline, smp))
        return outputs[-1]

    results["self"], per_sample["self"] = evaluate(pipeline, samples, "self", suite, calls.append, recorded)
    results["cross"], per_sample["cross"] = evaluate(pipeline, samples, "cross", suite, calls.append)
    assert calls == [2, 2, 2, 2]
    base, base_frames = {}, {}
    base["self"], base_frames["self"] = evaluate(pipeline, samples, "self", suite, render=source_baseline)
    rows = [MethodResults("tiny", results, per_sample), MethodResults("source (baseline)", base, base_frames)]
    write_results(tmp_path / "out", rows)

    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    for protocol in ("self", "cross"):
        want = _expected(outputs, samples, protocol)
        got = summary["methods"]["tiny"][protocol]
        assert got["frames"] == 4 and got["samples"] == 2
        assert set(got["means"]) == set(want)
        for name, v in want.items():
            assert got["means"][name] == pytest.approx(v.mean().item(), rel=1e-5, abs=1e-7), (protocol, name)
            assert got["counts"][name] == 4

    rows = list(csv.reader((tmp_path / "out" / "results.csv").open()))
    assert rows[0] == [
        "method",
        "PSNR",
        "SSIM",
        "LPIPS",
        "CSIM",
        "AED",
        "APD",
        "AKD",
        "xCSIM",
        "xAED",
        "xAPD",
    ]
    assert rows[1][0] == "tiny" and rows[2][0] == "source (baseline)"
    base_psnr = torch.cat([psnr(source_baseline(smp), smp.target_images) for smp in samples]).mean()
    assert float(rows[2][1]) == pytest.approx(base_psnr.item(), rel=1e-5)
    assert rows[2][8:] == ["–", "–", "–"]  # the baseline ran no cross protocol
    want_self = _expected(outputs, samples, "self")
    assert float(rows[1][1]) == pytest.approx(want_self["PSNR"].mean().item(), rel=1e-5)
    assert float(rows[1][9]) == pytest.approx(summary["methods"]["tiny"]["cross"]["means"]["AED"], rel=1e-9)

    md = (tmp_path / "out" / "results.md").read_text()
    assert "| Method | PSNR↑ | SSIM↑ | LPIPS↓ | CSIM↑ | AED↓ | APD↓ | AKD↓ |" in md
    assert "| Method | CSIM↑ | AED↓ | APD↓ |" in md
    line = next(x for x in md.splitlines() if x.startswith("| tiny |"))
    assert line.split(" | ")[1] == f"{want_self['PSNR'].mean().item():.2f}"
    assert "–" not in line

    frames = list(csv.DictReader((tmp_path / "out" / "per_frame.csv").open()))
    assert len(frames) == 12  # 2 samples x 2 frames x (tiny self, tiny cross, baseline self)
    self_psnr = [float(r["PSNR"]) for r in frames if r["protocol"] == "self" and r["method"] == "tiny"]
    assert sum(self_psnr) / 4 == pytest.approx(summary["methods"]["tiny"]["self"]["means"]["PSNR"], rel=1e-9)
    assert not list((tmp_path / "out").glob(".*partial*"))  # atomic writes leave no temporary files


def test_missing_models_show_dash_and_a_note(pipeline, tmp_path):
    samples = [_sample(pipeline, 3, frames=1)]
    result, per = evaluate(pipeline, samples, "self", MetricSuite())
    assert result.means["LPIPS"] is None and result.means["CSIM"] is None and result.means["AKD"] is None
    assert result.means["PSNR"] is not None
    write_results(tmp_path, [MethodResults("gshead", {"self": result}, {"self": per})])
    md = (tmp_path / "results.md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| gshead |")).strip("| ").split(" | ")
    assert row[3:] == ["–"] * 5  # LPIPS, CSIM, AED, APD, AKD
    assert "LPIPS skipped: no LPIPS weights given" in md and "CSIM skipped" in md
    rows = list(csv.reader((tmp_path / "results.csv").open()))
    assert rows[1][3] == "–" and rows[1][8:] == ["–", "–", "–"]  # LPIPS, and cross was not run


def test_identical_output_caps_psnr_and_lost_faces_are_counted(pipeline):
    smp = _sample(pipeline, 4, frames=2)
    out = reenact(pipeline, smp)
    dark = torch.zeros_like(out[:1])
    smp = smp.replace(target_images=torch.cat([out[:1], dark]))  # frame 0 perfect, frame 1 has "no face"
    result, per = evaluate(pipeline, [smp], "self", MetricSuite(tracker=FakeTracker()))
    values = per[0]["PSNR"]
    assert values[0].item() == PSNR_CAP_DB and math.isfinite(result.means["PSNR"])
    assert per[0]["SSIM"][0].item() == pytest.approx(1.0, abs=1e-5)
    assert result.counts["AKD"] == 1 and result.counts["PSNR"] == 2
    assert any("1 of 2 frames had no face" in n for n in result.notes)


class PlainTracker:
    """Only ``track``: FakeTracker's parameters, but no fit errors and no landmarks."""

    def track(self, images):
        return FakeTracker().track_with_error(images)[0]


def test_a_tracker_without_fit_errors_or_landmarks_scores_every_frame(pipeline):
    smp = _sample(pipeline, 4, frames=2)
    out = reenact(pipeline, smp)
    smp = smp.replace(target_images=torch.cat([out[:1], torch.zeros_like(out[:1])]))  # frame 1: "no face"
    plain = PlainTracker()
    assert not isinstance(plain, LandmarkTracker) and not isinstance(plain, face_metrics.LandmarkDetector)
    assert isinstance(FakeTracker(), LandmarkTracker)
    suite = MetricSuite(tracker=plain)
    assert "AKD" in suite.skipped() and "APD" not in suite.skipped()
    result, per = evaluate(pipeline, [smp], "self", suite)
    # Without track_with_error nothing marks a frame as lost: both frames are scored.
    assert result.counts["APD"] == 2 and result.counts["AED"] == 2 and "AKD" not in per[0]
    assert result.means["AKD"] is None
    assert any(n.startswith("AKD skipped") and "detects no 2D landmarks" in n for n in result.notes)
    # The same frames with fit errors: the face-less frame is left out.
    marked, _ = evaluate(pipeline, [smp], "self", MetricSuite(tracker=FakeTracker()))
    assert marked.counts["APD"] == 1 and marked.counts["AED"] == 1


def test_mismatched_head_parameters_are_an_input_error(pipeline):
    smp = _sample(pipeline, 5, frames=1)
    bad = smp.replace(targets=smp.targets.replace(expression=torch.zeros(1, 1)))
    with pytest.raises(InputError, match="expression coefficients"):
        reenact(pipeline, bad)
    with pytest.raises(InputError, match="no samples"):
        evaluate(pipeline, [], "self", MetricSuite())


def _write_dataset(root, pipe, identities=2, frames=3):
    from gshead.data.format import Clip, dataset_writer

    with dataset_writer(root) as builder:
        for i in range(identities):
            g = torch.Generator().manual_seed(10 + i)
            params = pipe.head_model.neutral(frames)
            params = params.replace(expression=0.2 * torch.rand(params.expression.shape, generator=g))
            pixels = (torch.rand(frames, 3, S, S, generator=g) * 255).to(torch.uint8)
            builder.add("test", Clip(pixels, params, Camera.frontal(1.0, 18.0, S, S, batch_size=frames), i))
        builder.finish("procedural", {"test": tuple(range(identities))}, source="synthetic", extra={})


def test_cli_eval_writes_tables_and_reports_bad_options(pipeline, tmp_path, capsys):
    import yaml

    from gshead.cli import main

    _write_dataset(tmp_path / "data", pipeline)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline(source_size=S, render_size=S)))
    base = [str(tmp_path / "data"), "--pipeline", str(config), "--targets", "2", "-q"]
    code = main(
        ["eval", *base, "--max-samples", "1", "--tracker", "none", "--baseline", "-o", str(tmp_path / "out")]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    got = summary["methods"]["gshead"]
    assert got["self"]["frames"] == 2 and got["cross"]["frames"] == 2
    assert got["self"]["means"]["LPIPS"] is None
    assert summary["methods"]["source (baseline)"]["self"]["means"]["PSNR"] is not None
    md = (tmp_path / "out" / "results.md").read_text()
    assert "AED skipped: no tracker (--tracker none)" in md

    capsys.readouterr()
    assert main(["eval", *base, "--lpips-lin", str(tmp_path / "vgg.pth")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("gshead: error: --lpips-lin was given without --lpips-backbone")
        and err.count("\n") == 1
    )
    assert (
        main(["eval", *base, "--identity-model", str(tmp_path / "absent.safetensors"), "--tracker", "none"])
        == 2
    )
    assert "no such identity-model file" in capsys.readouterr().err
    assert (
        main(["eval", str(tmp_path / "nothing"), "--pipeline", str(config), "--tracker", "none", "-q"]) == 2
    )


def test_metric_tracker_choice(pipeline):
    from gshead.commands.eval import _metric_tracker

    assert _metric_tracker("none", pipeline) == (None, "no tracker (--tracker none)")
    tracker, why = _metric_tracker("frontal", pipeline)
    assert tracker is None and "fits nothing" in why
    pytest.importorskip("mediapipe")
    tracker, why = _metric_tracker("mediapipe", pipeline)
    if tracker is None:
        pytest.skip(why)
    assert isinstance(tracker, face_metrics.LandmarkDetector) and tracker.config.no_face == "neutral"
    result, _ = evaluate(pipeline, [_sample(pipeline, 6, frames=1)], "self", MetricSuite(tracker=tracker))
    # random pixels hold no face: the frame is counted as lost, not scored against a neutral pose
    assert result.counts["AKD"] == 0 and result.means["APD"] is None
    assert any("APD: 1 of 1 frames had no face" in n for n in result.notes)
