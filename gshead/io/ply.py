"""Standard 3D Gaussian Splatting ``.ply`` files: write Gaussians for other viewers, read them back.

The layout is the one the original 3DGS code writes and every common viewer reads (SIBR,
SuperSplat, gsplat.js, antimatter15/splat, mkkellogg's GaussianSplats3D): one ``vertex`` element,
binary little-endian float32 properties, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{K-1}  opacity  scale_0..2  rot_0..3

- ``f_dc`` is the degree-0 spherical-harmonics coefficient: ``rgb = 0.5 + SH_C0 * f_dc``;
- ``f_rest`` are the higher bands, all zero here (gshead colours do not depend on the view).
  ``sh_degree=3`` (the default) writes 45 zeros: the original 3DGS loader and the SIBR viewer
  refuse a file whose ``f_rest`` count is not ``3 * ((3 + 1) ** 2 - 1)``, while the web viewers
  read either layout, so degree 3 is the one every viewer opens. ``sh_degree=0`` writes none
  (a file about 3.6x smaller, for web viewers);
- ``opacity`` is a logit, ``scale_*`` are natural logs of the standard deviations, and
  ``rot_*`` is the quaternion (w, x, y, z), as in ``gshead.core.types.Gaussians``;
- normals are zeros (unused by splatting, expected by some readers).

Positions and rotations are written as given. ``gshead export`` first turns them into the
original 3DGS tools' convention (the OpenCV camera frame: x right, y down, z forward, face towards
-z), which SuperSplat and gsplat.js assume, or with ``--up y`` leaves gshead's y-up world
(``gshead.jobs.posing.to_export_frame``); units are metres unless ``--scale`` says otherwise.

Only the first three feature channels (RGB) go into the file; other channels have no place in
the format. The writer and reader are plain NumPy (no dependency), and the file is written
atomically. ``plyfile`` reads the result (the tests check that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gshead.core.errors import InputError, require_finite
from gshead.io.media import atomic_output
from gshead.core.types import Gaussians

SH_C0 = 0.28209479177387814
"""Degree-0 spherical-harmonics constant 1 / (2 sqrt(pi)): rgb = 0.5 + SH_C0 * f_dc."""

OPACITY_EPS = 1e-6
"""Opacities are clamped to [eps, 1 - eps] before the logit, so the file holds finite numbers."""

SH_DEGREES = (0, 1, 2, 3)

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
"""PLY scalar type names -> NumPy dtype codes (without byte order)."""


def property_names(sh_degree: int = 3) -> list[str]:
    """The vertex property names, in file order, for SH degree ``sh_degree``."""
    if sh_degree not in SH_DEGREES:
        raise InputError(f"SH degree {sh_degree}: expected one of {', '.join(map(str, SH_DEGREES))}")
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def ply_table(gaussians: Gaussians, sh_degree: int = 3) -> np.ndarray:
    """The vertex table [N] (a NumPy structured array of float32 fields) for a batch of one."""
    if gaussians.batch_size != 1:
        raise InputError(
            f"PLY export: expected one set of Gaussians (batch 1), got batch {gaussians.batch_size}"
        )
    if gaussians.channels < 3:
        raise InputError(f"PLY export: expected at least 3 feature channels (RGB), got {gaussians.channels}")
    names = property_names(sh_degree)
    g = gaussians.to("cpu")
    require_finite(g.tensors("gaussians."), "PLY export: not written")
    n = g.count
    as64 = lambda t: t[0].detach().to(torch.float64).numpy()
    opacity = np.clip(as64(g.opacities), OPACITY_EPS, 1.0 - OPACITY_EPS)
    columns = {
        "xyz": as64(g.means),
        "f_dc": (as64(g.features)[:, :3] - 0.5) / SH_C0,
        "opacity": np.log(opacity) - np.log1p(-opacity),  # logit
        "scale": np.log(as64(g.scales)),
        "rot": as64(g.quats),
    }
    require_finite(columns, "PLY export: not written (a zero scale has no log)")
    table = np.zeros(n, dtype=[(name, "<f4") for name in names])  # normals and f_rest stay zero
    for i, axis in enumerate("xyz"):
        table[axis] = columns["xyz"][:, i]
    for i in range(3):
        table[f"f_dc_{i}"] = columns["f_dc"][:, i]
        table[f"scale_{i}"] = columns["scale"][:, i]
    for i in range(4):
        table[f"rot_{i}"] = columns["rot"][:, i]
    table["opacity"] = columns["opacity"]
    return table


def write_ply(path: str | Path, gaussians: Gaussians, sh_degree: int = 3) -> Path:
    """Write ``gaussians`` ([1, N], C >= 3 channels) as a binary little-endian 3DGS PLY, atomically."""
    table = ply_table(gaussians, sh_degree)
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by gshead",
        f"element vertex {len(table)}",
    ]
    header += [f"property float {name}" for name in table.dtype.names]
    header.append("end_header")
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())
    return path


def _read_header(f, path: Path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]]]:
    """(byte order '<' or '>', [(element name, count, [(property, dtype code)])])."""
    first = f.readline()
    if first.strip() != b"ply":
        raise InputError(f"{path}: not a PLY file (it does not start with 'ply'); expected a 3DGS .ply file")
    order = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    while True:
        raw = f.readline()
        if not raw:
            raise InputError(
                f"{path}: PLY header has no 'end_header'; the file is truncated or not a PLY file"
            )
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
            if fmt not in ("binary_little_endian", "binary_big_endian"):
                raise InputError(
                    f"{path}: PLY format {fmt!r}; expected binary_little_endian (or binary_big_endian)"
                )
            order = "<" if fmt == "binary_little_endian" else ">"
        elif words[0] == "element" and len(words) == 3:
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                raise InputError(
                    f"{path}: PLY element {elements[-1][0]!r} has a list property; "
                    "expected scalar properties only"
                )
            if words[1] not in _TYPES:
                raise InputError(
                    f"{path}: PLY property type {words[1]!r} is unknown; expected one of {', '.join(_TYPES)}"
                )
            elements[-1][2].append((words[2], _TYPES[words[1]]))
        else:
            raise InputError(f"{path}: unexpected PLY header line {' '.join(words)!r}")
    if order is None:
        raise InputError(
            f"{path}: PLY header has no 'format' line; expected 'format binary_little_endian 1.0'"
        )
    return order, elements


def read_ply_table(path: str | Path) -> np.ndarray:
    """The ``vertex`` element of a binary PLY file as a NumPy structured array."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a 3DGS .ply file")
    with open(path, "rb") as f:
        order, elements = _read_header(f, path)
        for name, count, props in elements:
            dtype = np.dtype([(p, order + code) for p, code in props])
            data = f.read(dtype.itemsize * count)
            if len(data) < dtype.itemsize * count:
                raise InputError(
                    f"{path}: PLY element {name!r} ends early ({len(data)} of {dtype.itemsize * count} "
                    "bytes); the file is truncated"
                )
            if name == "vertex":
                return np.frombuffer(data, dtype=dtype)
    raise InputError(f"{path}: PLY file has no 'vertex' element; expected a 3DGS .ply file")


def read_ply(path: str | Path) -> Gaussians:
    """Read a 3DGS PLY file as Gaussians [1, N] with 3 feature channels (RGB from ``f_dc``).

    Opacities come back through a sigmoid, scales through exp, quaternions normalised;
    higher SH bands (``f_rest_*``) are ignored.
    """
    table = read_ply_table(path)
    needed = property_names(0)
    needed.remove("nx"), needed.remove("ny"), needed.remove("nz")
    missing = [n for n in needed if n not in (table.dtype.names or ())]
    if missing:
        raise InputError(f"{path}: PLY vertex element lacks {', '.join(missing)}; expected the 3DGS layout")
    col = lambda *names: torch.from_numpy(np.stack([table[n].astype(np.float64) for n in names], -1))
    means = col("x", "y", "z")
    rgb = 0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2")
    opacities = torch.sigmoid(col("opacity")[:, 0])
    scales = torch.exp(col("scale_0", "scale_1", "scale_2"))
    quats = torch.nn.functional.normalize(col("rot_0", "rot_1", "rot_2", "rot_3"), dim=-1)
    f32 = lambda t: t.to(torch.float32)[None]
    return Gaussians(f32(means), f32(quats), f32(scales), f32(opacities), f32(rgb))
