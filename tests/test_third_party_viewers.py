"""The exported avatar in real third-party WebGL splat viewers (issue #20, item 8).

Four independent viewers from npm, run in headless Chromium with software WebGL (SwiftShader):

- mkkellogg's GaussianSplats3D (``@mkkellogg/gaussian-splats-3d``): the exported ``.ply`` and
  ``.splat`` (its ``.spz`` reader stops at format version 2; gshead writes version 3 or 4);
- World Labs' Spark (``@sparkjsdev/spark``): ``.ply``, ``.splat`` and ``.spz``;
- the PlayCanvas engine (``playcanvas``), the engine SuperSplat is built on: ``.ply`` (its
  gsplat loader reads .ply and .sog, no .splat or .spz);
- gsplat.js (``gsplat``): ``.ply`` and ``.splat`` (no .spz reader).

Each page (``tests/viewers/``, bundled with esbuild into a cache folder, served from 127.0.0.1,
nothing from a CDN) loads the file, sets its camera from ``NAME.camera.json`` (three.js and
PlayCanvas: position, up and target, ``tests/viewers/common.js``; gsplat.js, an OpenCV camera:
the world-to-camera matrix and the focal lengths), draws 256x256 on black and sets
``window.__ready``. The screenshot of the canvas must match gshead's own picture of the same
Gaussians from the source camera (its rasterizer's first three feature channels, no refiner,
black background) to ``MIN_PSNR``; the same screenshot against that picture turned upside down,
and a file exported with the wrong ``--up``, must score ``UPSIDE_DOWN_MARGIN`` lower; and the face
must be upright: MediaPipe's face mesh (an independent judge; it finds no face upside down) finds
the eyes above the nose above the mouth, where it finds them in gshead's picture.

``--layers all`` (the portrait's background as a lattice of splats behind the head): in Spark,
outside the head the ``all`` export must match gshead's composite over its static background
(``MIN_BACKGROUND_PSNR``) and beat the ``head`` export there by ``BACKGROUND_MARGIN``.

The npm packages (exact versions: ``tests/viewers/package-lock.json``) are installed with
``npm ci`` into ``$GSHEAD_NPM_VIEWER_CACHE`` or ``~/.cache/gshead-tests/npm-viewers`` (also by
``scripts/install_viewer_test_deps.sh``). Skipped, with the reason, when node/npm, the registry,
Chromium, playwright, mediapipe (the default pipeline's tracker) or WebGL 2 in headless Chromium
is missing. Measured numbers: ``docs/exports.md``. Set ``GSHEAD_VIEWER_SHOTS=DIR`` to keep the
screenshots and gshead's reference picture.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from gshead.cli import main

VIEWERS = Path(__file__).resolve().parent / "viewers"
PACKAGE_FILES = ("package.json", "package-lock.json")
SOURCES = ("common.js", "gs3d.js", "spark.js", "playcanvas.js", "gsplatjs.js")
PAGES = tuple(s for s in SOURCES if s != "common.js")
"""The viewer pages: each is bundled on its own (``NAME.bundle.js``) and picked by ``?viewer=NAME``."""
SIZE = 256

CASES = [
    ("gs3d", "ply"), ("gs3d", "splat"),
    ("spark", "ply"), ("spark", "splat"), ("spark", "spz"),
    ("playcanvas", "ply"),
    ("gsplatjs", "ply"), ("gsplatjs", "splat"),
]  # fmt: skip
"""(viewer, format) pairs: every format each viewer reads; the PLY in all four."""

VIEWER_NAMES = ("gs3d", "spark", "playcanvas", "gsplatjs")

MIN_PSNR = {"gs3d": 30.0, "spark": 30.0, "playcanvas": 27.0, "gsplatjs": 30.0}
"""dB, screenshot against gshead's picture, per viewer. Measured (docs/exports.md):
GaussianSplats3D 37.4-37.6, Spark 35.1-35.6, gsplat.js 35.8, PlayCanvas 31.4: the viewers
quantise colours and opacities to 8 bits (and .spz positions, scales and rotations), sort whole
splats rather than per tile and cut the kernels off differently (PlayCanvas's kernel is cut at
e^-4 and renormalised to reach 0 there, which darkens faint overlapping splats). The floors leave
4-7 dB for other SwiftShader/Chromium builds (30 also passes Spark's default radial sort, 34.1 dB)
and are far above what a wrong picture scores: upside down 11 dB, mirrored left-right 10 dB,
wrong --up 10 dB."""

UPSIDE_DOWN_MARGIN = 10.0
"""dB by which the upside-down controls must score lower (the issue asks for >= 3; measured 20.6-26.8)."""

FACE_ROWS = {"eyes": (33, 263), "nose": (1,), "mouth": (13, 14)}
"""MediaPipe face-mesh points whose mean row says where the eyes, the nose tip and the mouth are."""

MIN_BACKGROUND_PSNR = 32.0
"""dB, ``--layers all`` in Spark outside the head (gshead's head alpha below 0.5) against gshead's
composite over the static background. Measured 40.3 dB; the ``head`` export scores 2.4 there
(black where the background should be)."""

BACKGROUND_MARGIN = 20.0
"""dB by which ``--layers all`` must beat ``--layers head`` outside the head (measured 37.9)."""

MAX_ROW_SHIFT = 4.0
"""Pixels (of 256) by which a feature found in a screenshot may lie from where it is in gshead's
picture. Measured: within 0.48 px."""

LAUNCH_ARGS = [
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]


# ------------------------------------------------------------------------------------------ helpers
def _chromium() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) or shutil.which(name, path="/usr/lib/chromium")
        if found:
            return found
    return None


def _cache() -> Path:
    base = os.environ.get("GSHEAD_NPM_VIEWER_CACHE")
    if base:
        return Path(base)
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "gshead-tests" / "npm-viewers"


def _installed(folder: Path) -> bool:
    """The cache holds ``npm ci`` of this very lock file (``scripts/install_viewer_test_deps.sh``
    writes the same marker)."""
    lock = folder / "package-lock.json"
    return (
        (folder / ".installed").is_file()
        and lock.is_file()
        and lock.read_bytes() == (VIEWERS / "package-lock.json").read_bytes()
    )


def _install(folder: Path) -> None:
    npm = shutil.which("npm")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".installed").unlink(missing_ok=True)
    for name in PACKAGE_FILES:
        shutil.copyfile(VIEWERS / name, folder / name)
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--fetch-retries=2",
             "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=10000"],
            cwd=folder, check=False, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip("npm ci of the viewers (tests/viewers/package-lock.json) took over 5 minutes")
    if done.returncode != 0:
        why = " / ".join(
            line for line in done.stderr.splitlines() if line.strip() and "complete log" not in line
        )
        pytest.skip(f"npm ci of the viewers failed (no registry?): {why[:300]}")
    (folder / ".installed").write_text("ok\n", encoding="utf-8")


def _bundles(folder: Path) -> Path:
    """esbuild bundles of the pages, rebuilt when a source or the lock file changes."""
    digest = hashlib.sha256()
    for name in (*SOURCES, "package-lock.json"):
        digest.update((VIEWERS / name).read_bytes())
    out = folder / "bundles" / digest.hexdigest()[:16]
    if all((out / f"{Path(s).stem}.bundle.js").is_file() for s in PAGES):
        return out
    for old in (folder / "bundles").glob("*"):  # bundles of earlier sources
        shutil.rmtree(old, ignore_errors=True)
    src = folder / "src"
    src.mkdir(exist_ok=True)
    for name in SOURCES:
        shutil.copyfile(VIEWERS / name, src / name)
    esbuild = folder / "node_modules" / ".bin" / "esbuild"
    done = subprocess.run(
        [str(esbuild), *(f"src/{s}" for s in PAGES), "--bundle", "--format=esm", f"--outdir={out}",
         "--entry-names=[name].bundle", "--log-level=error"],
        cwd=folder, check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"esbuild failed: {done.stdout[-1000:]}{done.stderr[-2000:]}"
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _rows(face_mesh, image: np.ndarray) -> dict[str, float] | None:
    """Rows (pixels from the top) of the eyes, the nose tip and the mouth that MediaPipe's face
    mesh finds in ``image``, or None when it finds no face (it finds none upside down)."""
    found = face_mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
    if not found:
        return None
    points = found[0].landmark
    return {k: float(np.mean([points[i].y for i in ids])) * image.shape[0] for k, ids in FACE_ROWS.items()}


def _upright(rows: dict[str, float] | None) -> bool:
    return rows is not None and rows["eyes"] < rows["nose"] < rows["mouth"]


def _save(image: np.ndarray, name: str) -> None:
    folder = os.environ.get("GSHEAD_VIEWER_SHOTS")
    if folder:
        from PIL import Image

        Path(folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(Path(folder) / name)


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundles() -> Path:
    if _chromium() is None:
        pytest.skip("no Chromium installed (apt-get install chromium-headless-shell)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the third-party viewers cannot be installed")
    folder = _cache()
    if not _installed(folder):
        _install(folder)
    return _bundles(folder)


@pytest.fixture(scope="module")
def site(bundles, tmp_path_factory):
    """The served folder: the page, the bundles, the exported files and their cameras; and gshead's
    own picture of the exported Gaussians (uint8 [SIZE, SIZE, 3])."""
    pytest.importorskip("mediapipe", reason="mediapipe (the default pipeline's tracker) is not installed")
    import torch

    from gshead.commands.export import export_params
    from gshead.io.avatar import load_avatar
    from gshead.jobs.layers import without_torso
    from gshead.jobs.posing import export_gaussians

    root = tmp_path_factory.mktemp("viewer-site")
    shutil.copyfile(VIEWERS / "page.html", root / "page.html")
    for bundle in bundles.glob("*.bundle.js"):
        shutil.copyfile(bundle, root / bundle.name)
    avatar = root / "astronaut.safetensors"
    assert (
        main(["reconstruct", "example:astronaut", "--weights", "builtin:default", "-o", str(avatar), "-q"])
        == 0
    )
    exports = {
        "head_ply.ply": [],  # SH degree 3 (45 zero f_rest), the default every 3DGS tool opens
        "head_splat.splat": [],
        "head_spz.spz": [],  # y up (RUB), the format's convention and export's default
        "wrong_up.ply": ["--up", "y"],  # the control: gshead's y-up world
        "all_ply.ply": ["--layers", "all"],  # with the portrait's background behind the head
    }
    for name, extra in exports.items():
        assert main(["export", str(avatar), "-o", str(root / name), *extra]) == 0

    loaded = load_avatar(avatar)
    gaussians = export_gaussians(loaded, export_params(loaded))  # in gshead's world
    gaussians = without_torso(gaussians, loaded.avatar.body)  # what export writes (--layers head)
    camera = loaded.avatar.camera.resized(SIZE, SIZE)
    with torch.no_grad():
        render = loaded.rasterizer(gaussians, camera, torch.zeros(gaussians.features.shape[-1]))
    picture = render.features[0, :3].clamp(0, 1).permute(1, 2, 0).numpy()
    picture = (picture * 255.0).round().astype(np.uint8)
    _save(picture, "gshead.png")
    return root, picture


@pytest.fixture(scope="module")
def composite(site):
    """gshead's composite over the avatar's static background (what ``reenact`` shows, without the
    refiner), uint8 [SIZE, SIZE, 3], and where the head covers it (its alpha >= 0.5, [SIZE, SIZE])."""
    import torch
    import torch.nn.functional as F

    from gshead.commands.export import export_params
    from gshead.io.avatar import load_avatar
    from gshead.jobs.posing import export_gaussians

    root, _ = site
    loaded = load_avatar(root / "astronaut.safetensors")
    assert loaded.avatar.background is not None, "the premise: the default pipeline keeps a static background"
    gaussians = export_gaussians(loaded, export_params(loaded))
    camera = loaded.avatar.camera.resized(SIZE, SIZE)
    with torch.no_grad():
        render = loaded.rasterizer(gaussians, camera, torch.zeros(gaussians.features.shape[-1]))
        background = loaded.avatar.background  # resized as gshead.core.pipeline._over_background does
        shrink = background.shape[-1] > SIZE
        background = F.interpolate(
            background, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=shrink
        )
        features = render.features + (1.0 - render.alpha) * background
    picture = (features[0, :3].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    _save(picture, "gshead-composite.png")
    return picture, render.alpha[0, 0].numpy() >= 0.5


@pytest.fixture(scope="module")
def face_mesh():
    mediapipe = pytest.importorskip("mediapipe", reason="mediapipe is not installed")
    solutions = getattr(mediapipe, "solutions", None)
    if solutions is None:
        pytest.skip(f"mediapipe {mediapipe.__version__} has no face_mesh solution (0.10.21 has)")
    with solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def browser(site):
    """(open(viewer, file, camera) -> screenshot uint8 [SIZE, SIZE, 3]) on a local server."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    root, _ = site

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pw = sync_playwright().start()
    try:
        try:
            chromium = pw.chromium.launch(executable_path=_chromium(), args=LAUNCH_ARGS)
        except PlaywrightError as error:  # a broken or foreign Chromium
            pytest.skip(f"headless Chromium ({_chromium()}) did not start: {str(error)[:300]}")
        probe = chromium.new_page()
        probe.goto(f"{base}/page.html")
        webgl2 = probe.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
        probe.close()
        if not webgl2:
            pytest.skip("headless Chromium has no WebGL 2 here (SwiftShader missing?)")

        @functools.cache  # each view is opened once per module (3-6 s a page)
        def open_view(viewer: str, file: str, camera: str) -> np.ndarray:
            import io

            from PIL import Image

            page = chromium.new_page(viewport={"width": SIZE, "height": SIZE})
            logs: list[str] = []
            page.on("console", lambda message: logs.append(message.text))
            try:
                page.goto(f"{base}/page.html?viewer={viewer}&file={file}&camera={camera}&size={SIZE}")
                page.wait_for_function("window.__ready || window.__error", timeout=90_000)
                error = page.evaluate("window.__error")
                assert error is None, f"{viewer} failed on {file}: {error}\n" + "\n".join(logs[-10:])
                shot = page.locator("#view").screenshot()
            finally:
                page.close()
            image = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
            assert image.shape == (SIZE, SIZE, 3), image.shape
            _save(image, f"{viewer}-{file}.png")
            image.setflags(write=False)
            return image

        yield open_view
        chromium.close()
    finally:
        pw.stop()
        server.shutdown()
        server.server_close()


# -------------------------------------------------------------------------------------------- tests
def test_camera_json_is_in_each_files_convention(site):
    """The pages take ``up``, ``position``, ``target`` and ``fov_y_degrees`` as they are and assume
    a centred principal point; the image's up is -y in the 3DGS files and +y in the RUB .spz."""
    import json

    root, _ = site
    for name, up in (("head_ply", [0, -1, 0]), ("head_splat", [0, -1, 0]), ("head_spz", [0, 1, 0])):
        camera = json.loads((root / f"{name}.camera.json").read_text(encoding="utf-8"))
        assert np.allclose(camera["up"], up, atol=1e-6), (name, camera["up"])
        assert camera["cx"] == camera["width"] / 2 and camera["cy"] == camera["height"] / 2, name
        assert camera["width"] == camera["height"], name


@pytest.mark.parametrize(("viewer", "fmt"), CASES, ids=[f"{v}-{f}" for v, f in CASES])
def test_viewer_shows_the_upright_face_gshead_renders(browser, site, face_mesh, viewer, fmt):
    _, picture = site
    shot = browser(viewer, f"head_{fmt}.{fmt}", f"head_{fmt}.camera.json")
    psnr = _psnr(shot, picture)
    upside_down = _psnr(shot, picture[::-1])
    print(f"{viewer} {fmt}: PSNR {psnr:.2f} dB, against gshead's picture upside down {upside_down:.2f} dB")
    floor = MIN_PSNR[viewer]
    assert psnr >= floor, f"{viewer} {fmt}: PSNR {psnr:.2f} dB against gshead's render (< {floor})"
    assert upside_down <= psnr - UPSIDE_DOWN_MARGIN, (psnr, upside_down)
    want = _rows(face_mesh, picture)
    assert _upright(want), f"the premise: gshead's own picture shows an upright face ({want})"
    got = _rows(face_mesh, shot)
    assert _upright(got), f"{viewer} {fmt}: no upright face in the viewer ({got})"
    shift = max(abs(got[k] - want[k]) for k in FACE_ROWS)
    print(
        f"{viewer} {fmt}: eyes, nose, mouth at rows {[round(got[k], 1) for k in FACE_ROWS]}, {shift:.2f} px from gshead's"
    )
    assert shift <= MAX_ROW_SHIFT, f"{viewer} {fmt}: features {shift:.1f} px from gshead's ({got} vs {want})"


@pytest.mark.parametrize("viewer", VIEWER_NAMES)
def test_wrong_up_export_is_upside_down_in_the_viewer(browser, site, face_mesh, viewer):
    """The control: a .ply in gshead's y-up world (``--up y``) seen from the camera a 3DGS
    (OpenCV-convention) file has, i.e. what a 3DGS viewer shows of it, is upside down."""
    _, picture = site
    right = _psnr(browser(viewer, "head_ply.ply", "head_ply.camera.json"), picture)
    shot = browser(viewer, "wrong_up.ply", "head_ply.camera.json")
    wrong = _psnr(shot, picture)
    print(f"{viewer}: right --up {right:.2f} dB, wrong --up {wrong:.2f} dB")
    assert wrong <= right - UPSIDE_DOWN_MARGIN, (right, wrong)
    assert not _upright(_rows(face_mesh, shot)), f"{viewer}: the wrong --up shows an upright face"


def test_layers_all_shows_the_background(browser, site, composite):
    """``--layers all``: the PLY gains the 128x128 background lattice, finite and behind the head
    from the exported camera, and in Spark it shows the portrait's background where gshead's
    composite does, far closer than the ``head`` export (black there)."""
    import json

    from gshead.io.ply import read_ply
    from gshead.jobs.layers import BACKGROUND_GRID

    root, _ = site
    head, both = read_ply(root / "head_ply.ply"), read_ply(root / "all_ply.ply")
    from gshead.io.avatar import load_avatar
    from gshead.jobs.layers import TORSO_WEIGHT

    layer = BACKGROUND_GRID**2
    body = load_avatar(root / "astronaut.safetensors").avatar.body  # torso: still: 'all' adds the torso too
    torso = 0 if body is None else int((body >= TORSO_WEIGHT).sum())
    assert both.count == head.count + torso + layer, (head.count, torso, both.count)
    for name, t in both.tensors().items():
        assert np.isfinite(t.numpy()).all(), name
    camera = json.loads((root / "all_ply.camera.json").read_text(encoding="utf-8"))
    w2c = np.asarray(camera["world_to_camera"])
    depth = both.means[0].double().numpy() @ w2c[2, :3] + w2c[2, 3]  # camera-space z, file convention
    assert depth[-layer:].min() > depth[:-layer].max(), "the background lattice must lie behind the head"
    picture, on_head = composite
    outside = ~on_head
    assert outside.mean() > 0.3, "the premise: the background shows around the head"
    scores = {}
    for name in ("all_ply", "head_ply"):
        shot = browser("spark", f"{name}.ply", f"{name}.camera.json")
        scores[name] = _psnr(shot[outside], picture[outside])
    print(
        f"spark outside the head vs gshead's composite: --layers all {scores['all_ply']:.2f} dB, head {scores['head_ply']:.2f} dB"
    )
    assert scores["all_ply"] >= MIN_BACKGROUND_PSNR, scores
    assert scores["all_ply"] >= scores["head_ply"] + BACKGROUND_MARGIN, scores
