"""The viewer (issue #20 item 4): from a slider move to the new real render (driver, rasterizer,
refiner at 256x256, JPEG-encoded and handed to viser) on the server, with the embedded default
pipeline and its shipped weights. The browser is left out: on this 2-core machine a headless
Chromium rendering WebGL in software takes the cores the server needs, which a real browser with a
GPU does not. Full mode asserts the issue's target, <= 100 ms (median over slider moves)::

    GSHEAD_BENCH=full python -m pytest benchmarks/test_viewer_latency.py --benchmark-enable -s
"""

from __future__ import annotations

import socket
import time

import pytest
from conftest import SETTINGS, record_row

pytest.importorskip("viser", reason="the viewer needs viser (pip install 'gshead[viewer]')")

MOVES = 10 if SETTINGS.mode == "quick" else 40
SIZE = 256
TARGET_MS = 100.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.benchmark(group="viewer-latency")
def test_slider_to_new_render(benchmark, tmp_path):
    from gshead.cli import main
    from gshead.io.avatar import load_avatar
    from gshead.viewer import AvatarViewer

    avatar = tmp_path / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(avatar), "--weights", "builtin:default", "-q"]) == 0
    viewer = AvatarViewer(load_avatar(avatar), port=_free_port(), save_dir=tmp_path, render_size=SIZE)
    try:
        viewer.wait_rendered(0)

        def moves():
            latencies = []
            for i in range(MOVES):
                done = viewer.rendered
                start = time.perf_counter()
                viewer.sliders["yaw"].value = float((i % 9) * 4 - 16)
                assert viewer.wait_rendered(done, timeout=30)
                latencies.append(1e3 * (time.perf_counter() - start))
            return sorted(latencies)

        latencies = benchmark.pedantic(moves, rounds=1, iterations=1, warmup_rounds=0)
    finally:
        viewer.close()
    median = latencies[len(latencies) // 2]
    record_row(
        f"viewer: slider move to new render ({SIZE}x{SIZE}, default pipeline, server side)",
        {"moves": MOVES, "median ms": round(median, 1), "max ms": round(latencies[-1], 1),
         "render ms (last)": round(viewer.last_render_ms, 1)},
    )  # fmt: skip
    if SETTINGS.mode == "full" and getattr(benchmark, "stats", None) is not None:
        assert median <= TARGET_MS, latencies
