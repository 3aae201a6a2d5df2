"""Live driving (``gshead live``, ``gshead.jobs.live``): a video file streamed at its own frame
rate is tracked and rendered frame by frame; frames the loop could not take are counted, never
lost silently; the local page serves the frames. Speed targets are in
``benchmarks/test_live.py``, not here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.core.errors import InputError
from gshead.io.media import VideoWriter
from gshead.testing import tiny_pipeline

pytest.importorskip("mediapipe", reason="live driving tracks with the mediapipe tracker")


def _astronaut_frames(n: int, size: int) -> torch.Tensor:
    """[n, 3, size, size]: the astronaut rolled about her face by +-12 degrees over the clip."""
    from PIL import Image
    from skimage.data import astronaut

    image = Image.fromarray(astronaut())
    out = []
    for i in range(n):
        angle = 12.0 * math.sin(2 * math.pi * i / n)
        moved = image.rotate(angle, resample=Image.BILINEAR, center=(235, 115)).resize((size, size), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(moved).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    pipeline = root / "tiny-mediapipe.yaml"
    pipeline.write_text(yaml.safe_dump(tiny_pipeline(tracker={"name": "mediapipe"}, rasterizer={"name": "cpu"})))
    avatar = root / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(avatar), "--pipeline", str(pipeline), "-q"]) == 0
    clip = root / "clip.mp4"
    with VideoWriter(clip, 25, 256, 256) as writer:
        writer.write(_astronaut_frames(30, 256))
    grey = root / "grey.mp4"
    with VideoWriter(grey, 25, 64, 64) as writer:
        writer.write(torch.full((5, 3, 64, 64), 0.5))
    frontal = root / "frontal.safetensors"
    frontal_yaml = root / "tiny-frontal.yaml"
    frontal_yaml.write_text(yaml.safe_dump(tiny_pipeline()))
    assert main(["reconstruct", "example:astronaut", "-o", str(frontal), "--pipeline", str(frontal_yaml), "-q"]) == 0
    return {"avatar": avatar, "clip": clip, "grey": grey, "frontal": frontal}


def _run(files, realtime=True, key="clip", avatar="avatar", **kwargs):
    from gshead.io.avatar import load_avatar
    from gshead.jobs.live import FileSource, run_live

    shown = []
    report = run_live(
        load_avatar(files[avatar]),
        FileSource(files[key], realtime=realtime),
        lambda image, stats: shown.append((image.clone(), stats)),
        size=48,
        **kwargs,
    )
    return report, shown


def test_a_paced_file_is_tracked_frame_by_frame_and_drops_are_counted(files):
    report, shown = _run(files)
    assert report.arrived == 30 and report.shown == len(shown) >= 2
    assert report.dropped == report.arrived - report.shown  # every frame is accounted for
    assert report.no_face == 0 and math.isfinite(report.startup_s)
    stats = [s for _, s in shown]
    assert [s.shown for s in stats] == list(range(1, len(stats) + 1))
    assert all(a.dropped <= b.dropped for a, b in zip(stats, stats[1:]))
    assert all(b.index > a.index for a, b in zip(stats, stats[1:]))  # newest frames, in order
    assert all(s.face and s.fit_error_px < 0.05 * 64 for s in stats)
    assert shown[0][0].shape == (1, 3, 48, 48)
    assert report.source_fps == pytest.approx(25.0)
    assert f"{report.shown} of 30 frames shown ({report.dropped} dropped" in report.line()


def test_unpaced_file_drops_nothing_and_the_motion_reaches_the_render(files):
    report, shown = _run(files, realtime=False)
    assert report.shown == report.arrived == 30 and report.dropped == 0
    images = torch.cat([image for image, _ in shown])
    # the head rolls +-12 degrees: the renders follow (frames at the extremes differ from the start)
    change = (images - images[:1]).abs().mean(dim=(1, 2, 3))
    assert float(change[7]) > 0.01 and float(change[22]) > 0.01, change.tolist()


def test_max_frames_stops_early(files):
    report, shown = _run(files, realtime=False, max_frames=5)
    assert report.shown == 5 and shown[-1][1].index == 4


def test_a_video_without_a_face_is_one_error_naming_it(files):
    with pytest.raises(InputError, match=r"grey\.mp4: no face found in any of its 5 frames shown"):
        _run(files, realtime=False, key="grey")


def test_a_tracker_without_motion_is_refused(files):
    with pytest.raises(InputError, match=r"'frontal' fits no motion"):
        _run(files, avatar="frontal")


def test_the_page_stream_frame_and_stats_are_served():
    from gshead.commands.live import BOUNDARY, LiveServer, _jpeg

    server = LiveServer("127.0.0.1", 0, "a.safetensors", show=256)
    try:
        page = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert '<img id="live" src="/stream.mjpg"' in page and "/stats.json" in page and "http" not in page.split("<script>")[1]
        image = torch.zeros(1, 3, 32, 32)
        image[:, 0] = 1.0  # red
        server.publish(_jpeg(image), {"shown": 1, "fps": 25.0})
        jpeg = urllib.request.urlopen(server.url + "frame.jpg", timeout=10).read()
        from io import BytesIO

        from PIL import Image

        decoded = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"))
        assert decoded.shape == (32, 32, 3) and decoded[..., 0].mean() > 200 and decoded[..., 2].mean() < 60
        assert json.loads(urllib.request.urlopen(server.url + "stats.json", timeout=10).read()) == {"shown": 1, "fps": 25.0}
        stream = urllib.request.urlopen(server.url + "stream.mjpg", timeout=10)
        assert BOUNDARY in stream.headers["Content-Type"]
        assert stream.readline().strip() == f"--{BOUNDARY}".encode()
        assert stream.readline().strip() == b"Content-Type: image/jpeg"
        stream.close()
    finally:
        server.close()


def test_the_command_reports_and_logs_every_shown_frame(files, tmp_path):
    log = tmp_path / "live.csv"
    result = subprocess.run(
        [sys.executable, "-m", "gshead", "live", str(files["avatar"]), "--video", str(files["clip"]),
         "--port", "0", "--size", "48", "--log", str(log)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "gshead live: open http://127.0.0.1:" in result.stderr
    line = [l for l in result.stderr.splitlines() if "frames shown" in l][-1]
    shown = int(line.split(": ")[2].split(" of ")[0])
    rows = log.read_text().strip().splitlines()
    assert rows[0] == "frame,shown,dropped,latency_ms,fps,fit_error_px,face" and len(rows) == shown + 1
    assert "dropped" in line and "latency median" in line


def test_bad_arguments_are_one_line(files, tmp_path, capsys):
    assert main(["live", str(files["avatar"]), "--video", str(tmp_path / "missing.mp4"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gshead: error:") and "missing.mp4" in err[0]
    assert main(["live", str(files["avatar"]), "--video", str(files["clip"]), "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
