"""Caches are checked by content: a tracking-cache entry whose numbers were overwritten is
rebuilt with a warning, and the same corrupt file given as a driver is refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from PIL import Image
from safetensors import safe_open
from skimage import data


def _gshead(*args, env):
    return subprocess.run([sys.executable, "-m", "gshead", *args], capture_output=True, text=True, env=env)


def _overwrite_with_nan(path, tensor_name: str) -> None:
    """Overwrite the bytes of one float tensor of a safetensors file with 0xFF (NaN), in place."""
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    import json

    header = json.loads(raw[8 : 8 + header_len])
    start, end = header[tensor_name]["data_offsets"]
    base = 8 + header_len
    patched = raw[: base + start] + b"\xff" * (end - start) + raw[base + end :]
    assert tensor_name in keys
    path.write_bytes(patched)


def test_corrupt_tracking_cache_is_rebuilt_and_a_corrupt_driver_is_refused(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, GSHEAD_CACHE_DIR=str(cache))
    image = tmp_path / "portrait.png"
    Image.fromarray(data.astronaut()).save(image)
    first = _gshead("track", str(image), "-o", str(tmp_path / "a.safetensors"), "-q", env=env)
    assert first.returncode == 0, first.stderr
    entries = list((cache / "sequences").glob("*.safetensors"))
    assert len(entries) == 1
    _overwrite_with_nan(entries[0], "params.expression")

    again = _gshead("track", str(image), "-o", str(tmp_path / "b.safetensors"), "-q", env=env)
    assert again.returncode == 0, again.stderr
    assert "tracking cache entry is damaged and is rebuilt" in again.stderr
    with safe_open(str(tmp_path / "b.safetensors"), "pt") as f:
        assert torch.isfinite(f.get_tensor("params.expression")).all()
    with safe_open(str(entries[0]), "pt") as f:  # the cache entry itself was rewritten
        assert torch.isfinite(f.get_tensor("params.expression")).all()

    # The corrupt file as a driving sequence: one line naming the file and the tensor.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((tmp_path / "b.safetensors").read_bytes())
    _overwrite_with_nan(bad, "params.expression")
    given = bad.read_bytes()
    avatar = tmp_path / "x.safetensors"
    made = _gshead("reconstruct", str(image), "-o", str(avatar), "-q", env=env)
    assert made.returncode == 0, made.stderr
    out = _gshead("reenact", str(avatar), "--driver", str(bad), "-o", str(tmp_path / "v.mp4"), "-q", env=env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("gshead: error:") and "bad.safetensors" in lines[0] and "params.expression" in lines[0]
    assert not (tmp_path / "v.mp4").exists()
    assert bad.read_bytes() == given  # the input is left as given
