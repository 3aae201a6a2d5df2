"""Hostile inputs, the last cases of issue 19, through the real ``gshead`` command.

- a face on a large canvas is found (the image is searched on a downscaled copy, the face located
  again at full resolution); a face too small for the search says at what size it was searched;
- a pickle payload is refused without running, and the message never repeats torch's advice to
  load it with ``weights_only=False``;
- weights that do not fit a component name the keys;
- an unwritable anny-head cache fails before the (slow) conversion, naming the folder.

Each CLI case checks: exit 2, exactly one ``gshead: error:`` line of at most 300 characters that
names the problem, no traceback, no partial or output file, the inputs unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from gshead.testing import tiny_pipeline

LIMIT = 300


def _gshead(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gshead", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _refused(folder: Path, *args: str, names: tuple[str, ...], output: str, env: dict | None = None) -> str:
    """Run ``gshead *args`` in ``folder``: exit 2, one bounded error line naming ``names``, no
    traceback, nothing written (``output`` absent, every file unchanged, nothing new)."""
    before = _digests(folder)
    run = _gshead(*args, cwd=folder, env=env)
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("gshead: error:")]
    assert len(errors) == 1 and len(lines) == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and len(errors[0]) <= LIMIT, errors[0]
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert not (folder / output).exists()
    assert _digests(folder) == before
    return errors[0]


def _canvas(path: Path, side: int, face_scale: float = 1.0) -> None:
    """scikit-image's astronaut (face about 97 px wide), scaled by ``face_scale``, in the middle
    of a black ``side`` x ``side`` canvas."""
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    if face_scale != 1.0:
        n = round(512 * face_scale)
        photo = photo.resize((n, n), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(photo, ((side - photo.width) // 2, (side - photo.height) // 2))
    canvas.save(path, compress_level=1)


# ----------------------------------------------------------------------------- faces on large canvases
def test_a_small_face_on_a_6000_px_canvas_is_found(tmp_path):
    # The astronaut's 97-px face: the image used to be shrunk to 2048 px (a 33-px face) and refused.
    _canvas(tmp_path / "big.png", 6000)
    run = _gshead("reconstruct", "big.png", "-o", "a.safetensors", "--fit-steps", "0", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "a.safetensors").is_file()
    assert "Warning" not in run.stderr, run.stderr[-2000:]


def test_a_512_px_face_on_a_12000_px_canvas_is_found(tmp_path):
    _canvas(tmp_path / "big.png", 12000, face_scale=512 / 97)
    run = _gshead("reconstruct", "big.png", "-o", "a.safetensors", "--fit-steps", "0", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "a.safetensors").is_file()
    assert "DecompressionBomb" not in run.stderr  # the image is within the limit, downscaled on reading


def test_a_face_too_small_for_the_search_says_where_it_searched(tmp_path):
    # a 97-px face; 12000 px are read at 6324, where it is 51 px: below what the tiled search finds
    _canvas(tmp_path / "big.png", 12000)
    line = _refused(
        tmp_path, "reconstruct", "big.png", "-o", "a.safetensors", "--fit-steps", "0", "-q",
        names=("big.png (12000x12000, read at 6324x6324)", "no face found", "1024-px tiles", "px wide"),
        output="a.safetensors",
    )  # fmt: skip
    assert "at least 40 px" not in line


def test_detect_faces_on_a_large_image_matches_the_full_resolution_box():
    from skimage import data

    from gshead.plugins.trackers.frontal import SEARCH_SIDE, detect_faces, search_size

    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    big = torch.nn.functional.interpolate(photo, scale_factor=6.0, mode="bilinear")  # 3072 px, face ~580 px
    assert max(big.shape[-2:]) > SEARCH_SIDE
    full = detect_faces(photo)[0]
    found = detect_faces(big)[0]
    # the cascade's boxes come in steps of 1.2 in size: compare centres, and sizes within a step
    centre = [found[0] + found[2] / 2, found[1] + found[2] / 2]
    expected = [6 * (full[0] + full[2] / 2), 6 * (full[1] + full[2] / 2)]
    assert all(abs(a - b) < 0.15 * 6 * full[2] for a, b in zip(centre, expected, strict=True)), (found, full)
    assert 1 / 1.3 < found[2] / (6 * full[2]) < 1.3, (found, full)
    sh, sw, smallest = search_size(6000, 6000)
    assert (sh, sw) == (SEARCH_SIDE, SEARCH_SIDE) and smallest == 71  # 24 px of the copy


# ----------------------------------------------------------------------------- refused pickles
def _payload(path: Path, marker: Path) -> None:
    script = (
        "import sys, torch\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        "        return (open, (sys.argv[2], 'w'))\n"
        "torch.save({'model': {'w': torch.zeros(2)}, 'x': Evil()}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), str(marker)], check=True)
    assert path.is_file() and not marker.exists()


def test_import_refuses_a_pickle_payload_without_torchs_advice(tmp_path):
    marker = tmp_path.parent / f"{tmp_path.name}-marker"
    _payload(tmp_path / "evil.pt", marker)
    line = _refused(
        tmp_path, "import", "gagavatar", "evil.pt", "-o", "w.safetensors",
        names=("evil.pt", "refused", "not plain tensors", "nothing in it was run"), output="w.safetensors",
    )  # fmt: skip
    assert "weights_only" not in line and "\x1b" not in line
    assert not marker.exists()


def test_every_torch_load_refuses_a_pickle_payload_without_torchs_advice(tmp_path):
    from gshead.core.errors import GsheadError
    from gshead.io.weights import read_state_dict
    from gshead.plugins.encoders._vit import _torch_load as vit_load
    from gshead.plugins.headmodels.flame import _torch_load as flame_load
    from gshead.train.checkpoints import load_state

    marker = tmp_path / "marker"
    _payload(tmp_path / "evil.pt", marker)
    path = tmp_path / "evil.pt"
    loads = {
        "read_state_dict": lambda: read_state_dict(path, "LPIPS lin-weights file", "a state dict"),
        "load_state": lambda: load_state(SimpleNamespace(state=path)),
        "flame": lambda: flame_load(path),
        "vit": lambda: vit_load(path),
    }
    for name, load in loads.items():
        with pytest.raises(GsheadError) as caught:
            load()
        text = str(caught.value)
        assert "refused" in text and "not plain tensors" in text and "io.open" in text, (name, text)
        assert "weights_only" not in text and "\n" not in text and len(text) <= LIMIT, (name, text)
    assert not marker.exists()


def test_a_foreign_file_is_refused_without_torchs_advice(tmp_path):
    from gshead.core.errors import torch_load_reason

    (tmp_path / "x.pt").write_bytes(b"(lp0\nI1\na." + bytes(range(256)))
    try:
        torch.load(tmp_path / "x.pt", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = torch_load_reason(exc)
    else:
        pytest.skip("torch read the file")
    assert "weights_only" not in reason and "\n" not in reason and len(reason) <= 220


# ----------------------------------------------------------------------------- weight mismatches
@pytest.fixture(scope="module")
def avatars(tmp_path_factory):
    """An avatar of the tiny pipeline, and copies with one driver tensor removed and one reshaped."""
    folder = tmp_path_factory.mktemp("mismatch")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    made = _gshead(
        "reconstruct", "example:astronaut", "-o", "a.safetensors", "--pipeline", "tiny.yaml", "--fit-steps", "0", "-q",
        cwd=folder,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    with safe_open(str(folder / "a.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    driver = sorted(k for k in tensors if k.startswith("weights.driver."))
    assert driver
    key = driver[0]
    save_file({k: v for k, v in tensors.items() if k != key}, str(folder / "missing.safetensors"), metadata=meta)
    reshaped = dict(tensors)
    reshaped[key] = torch.zeros(*tensors[key].shape[:-1], tensors[key].shape[-1] + 1)
    save_file(reshaped, str(folder / "reshaped.safetensors"), metadata=meta)
    (folder / "a.safetensors").unlink()
    return {"folder": folder, "key": key}


@pytest.mark.parametrize("avatar", ["missing", "reshaped"])
def test_a_weight_mismatch_names_the_key(avatars, avatar):
    line = _refused(
        avatars["folder"], "export", f"{avatar}.safetensors", "-o", "x.ply",
        names=(f"{avatar}.safetensors", avatars["key"], "driver weights do not fit"), output="x.ply",
    )  # fmt: skip
    assert ("missing 1 keys" in line) if avatar == "missing" else ("wrong shape" in line)
    assert not line.rstrip().endswith(":") and "Error(s) in loading state_dict" not in line


# ----------------------------------------------------------------------------- unwritable caches
def _no_conversion(monkeypatch) -> list:
    from gshead.plugins.headmodels import anny_head

    calls = []
    monkeypatch.setattr(anny_head, "convert", lambda *a, **k: calls.append(a) or pytest.fail("converted"))
    return calls


def test_a_read_only_empty_cache_fails_before_converting(tmp_path, monkeypatch, capsys):
    from gshead.cli import main

    cache = tmp_path / "cache"
    cache.mkdir()
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # root ignores permission bits: simulate EROFS
        if dir is not None and Path(dir).resolve() == cache.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setenv("GSHEAD_CACHE_DIR", str(cache))
    calls = _no_conversion(monkeypatch)
    status = main(["headmodel", "info", "anny-head"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("gshead: error: ") and str(cache) in err[0] and "Read-only file system" in err[0]
    assert len(err[0]) <= LIMIT and not calls and not list(cache.iterdir())


def test_a_cache_folder_inside_a_file_fails_before_converting(tmp_path, monkeypatch, capsys):
    from gshead.cli import main

    (tmp_path / "afile").write_text("x")
    calls = _no_conversion(monkeypatch)
    status = main(["headmodel", "info", "anny-head", "--set", f"cache_dir={tmp_path / 'afile' / 'sub'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert str(tmp_path / "afile" / "sub") in err[0] and "cannot write the anny-head cache" in err[0]
    assert not calls and (tmp_path / "afile").read_text() == "x"


def test_a_cache_folder_inside_a_file_is_one_line_from_the_real_command(tmp_path):
    (tmp_path / "afile").write_text("x")
    _refused(
        tmp_path, "headmodel", "info", "anny-head", "--set", "cache_dir=afile/sub",
        names=("afile/sub", "cannot write the anny-head cache"), output="afile/sub",
    )  # fmt: skip


def test_a_writable_cache_check_leaves_nothing_behind(tmp_path):
    from gshead.plugins.headmodels.anny_head import check_cache_writable

    check_cache_writable(tmp_path / "new" / "cache")
    assert (tmp_path / "new" / "cache").is_dir() and not list((tmp_path / "new" / "cache").iterdir())
