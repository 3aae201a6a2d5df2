"""antimatter15 ``.splat`` files: a compact, headerless list of Gaussians for web viewers.

The layout is the one antimatter15/splat's ``convert.py`` writes and its viewer (and
GaussianSplats3D, gsplat.js, SuperSplat, Spark) reads: no header, 32 bytes per Gaussian,
little-endian::

    offset  size  field
     0      12    position  x, y, z          float32 x 3
    12      12    scale     sx, sy, sz       float32 x 3   standard deviations (linear, not log)
    24       4    colour    r, g, b, a       uint8 x 4     rgb = clip(255 * colour), a = 255 * opacity
    28       4    rotation  w, x, y, z       uint8 x 4     clip(round(128 * q / |q| + 128), 0, 255)

Gaussians are sorted by descending ``sx * sy * sz * opacity`` (the reference converter's order,
which its viewer relies on to draw the big, opaque ones first while streaming). Colours are the
first three feature channels (gshead's colours do not depend on the view; the format has no
higher SH bands). The count is the file size / 32. The file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gshead.core.errors import InputError, require_finite
from gshead.core.types import Gaussians
from gshead.io.media import atomic_output

RECORD = np.dtype(
    [("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rotation", "u1", (4,))]
)
"""One Gaussian of a ``.splat`` file (32 bytes)."""

assert RECORD.itemsize == 32


def splat_table(gaussians: Gaussians) -> np.ndarray:
    """The records [N] (``RECORD``) of a batch of one, in the file's order (largest first)."""
    if gaussians.batch_size != 1:
        raise InputError(
            f".splat export: expected one set of Gaussians (batch 1), got batch {gaussians.batch_size}"
        )
    if gaussians.channels < 3:
        raise InputError(
            f".splat export: expected at least 3 feature channels (RGB), got {gaussians.channels}"
        )
    g = gaussians.to("cpu")
    require_finite(g.tensors("gaussians."), ".splat export: not written")
    as64 = lambda t: t[0].detach().to(torch.float64).numpy()
    means, scales, quats = as64(g.means), as64(g.scales), as64(g.quats)
    opacity = np.clip(as64(g.opacities), 0.0, 1.0)
    rgb = np.clip(as64(g.features)[:, :3], 0.0, 1.0)
    norm = np.linalg.norm(quats, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise InputError(".splat export: not written (a Gaussian has a zero quaternion)")
    order = np.argsort(-(np.prod(scales, axis=-1) * opacity), kind="stable")
    table = np.zeros(len(order), dtype=RECORD)
    table["position"] = means[order]
    table["scale"] = scales[order]
    table["rgba"][:, :3] = np.clip(np.round(rgb[order] * 255.0), 0, 255)
    table["rgba"][:, 3] = np.clip(np.round(opacity[order] * 255.0), 0, 255)
    table["rotation"] = np.clip(np.round((quats / norm)[order] * 128.0 + 128.0), 0, 255)
    return table


def write_splat(path: str | Path, gaussians: Gaussians) -> Path:
    """Write ``gaussians`` ([1, N], C >= 3 channels) as an antimatter15 ``.splat`` file, atomically."""
    table = splat_table(gaussians)
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(table.tobytes())
    return path


def read_splat(path: str | Path) -> Gaussians:
    """Read a ``.splat`` file as Gaussians [1, N] with 3 feature channels (quantised colour,
    opacity and rotation come back to 1/255 and 1/128)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a .splat file")
    data = path.read_bytes()
    if len(data) % RECORD.itemsize:
        raise InputError(f"{path}: {len(data)} bytes is not a whole number of 32-byte .splat records")
    table = np.frombuffer(data, dtype=RECORD)
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
    quats = torch.nn.functional.normalize(f32((table["rotation"].astype(np.float32) - 128.0) / 128.0), dim=-1)
    rgba = table["rgba"].astype(np.float32) / 255.0
    return Gaussians(f32(table["position"]), quats, f32(table["scale"]), f32(rgba[:, 3]), f32(rgba[:, :3]))


__all__ = ["RECORD", "read_splat", "splat_table", "write_splat"]
