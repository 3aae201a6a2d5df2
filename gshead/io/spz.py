"""Niantic ``.spz`` files: compressed 3D Gaussian splats (about 10x smaller than a ``.ply``).

Written from the published format (the README and ``src/cc/load-spz.cc`` of nianticlabs/spz, the
reference library): no PyPI package of it installs here (``spz`` on PyPI is a Rust source build),
so this is a small NumPy writer and reader of the two current layouts.

**Version 3** (the default, read by every SPZ loader, incl. older ones) is one gzip stream::

    header (16 bytes, little-endian)
        uint32 magic           0x5053474e ("NGSP")
        uint32 version         3
        uint32 numPoints       N
        uint8  shDegree        0 (gshead colours do not depend on the view: no SH stream)
        uint8  fractionalBits  12
        uint8  flags           0 (0x1 would be "trained with antialiasing")
        uint8  reserved        0
    positions  N x 3 x 3 bytes  24-bit signed fixed point, round(x * 2**fractionalBits), little-endian
    alphas     N bytes          round(255 * opacity)            (the sigmoid of the PLY logit)
    colors     N x 3 bytes      round(255 * (0.15 * f_dc + 0.5)), f_dc = (rgb - 0.5) / SH_C0
    scales     N x 3 bytes      round(16 * (log(sigma) + 10))
    rotations  N x 4 bytes      "smallest three": the unit quaternion (x, y, z, w) with its largest
                                component made positive and dropped; a uint32 holding that index in
                                bits 30-31 and the other three, in index order, from bit 20 down,
                                as 10 bits each: a sign bit and round(511 * |q_i| / sqrt(1/2))
    (SH rest coefficients would follow; shDegree 0 has none)

**Version 4** (``version=4``, the reference library's current default; needs the ``zstandard``
package) keeps the same per-attribute bytes but stores each attribute as its own zstd frame after a
plain 32-byte header (magic, version 4, numPoints, shDegree, fractionalBits, flags, numStreams,
uint32 tocByteOffset = 32, 12 reserved zero bytes) and a table of contents, one
(compressed size, uncompressed size) uint64 pair per stream, in the order above; empty streams
(the SH rest here) are left out, so numStreams is 5.

Every value is clamped to its byte range, as the reference does. Positions must fit the 24-bit
range, |x| < 2048 units at 12 fractional bits (resolution 1/4096 unit, 0.24 mm for a head in
metres; ``--scale 10`` gives 0.024 mm); larger scenes are refused, not wrapped.

**Coordinates.** The format stores no frame, but its README fixes one: RUB (x right, y up, z back,
the OpenGL / three.js convention), which loaders convert from (the reference library's
``UnpackOptions.to``; PlayCanvas' splat-transform and SuperSplat read .spz as RUB and turn it into
the PLY's RDF). gshead's own y-up world is RUB (face towards +z, the viewer looking along -z), so
``gshead export -o head.spz`` writes ``--up y`` unless told ``--up=-y`` (the PLY's OpenCV/RDF frame
unconverted, for viewers that read .spz like a .ply). These functions write and read coordinates
as given.

Only the first three feature channels (RGB) are stored. The file is written atomically.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from gshead.core.errors import InputError, require_finite
from gshead.core.types import Gaussians
from gshead.io.media import atomic_output
from gshead.io.ply import SH_C0

MAGIC = 0x5053474E
"""``NGSP`` read as a little-endian uint32."""

VERSIONS = (3, 4)
DEFAULT_VERSION = 3
FRACTIONAL_BITS = 12
COLOR_SCALE = 0.15
"""The format's DC colour scale: colour byte = 255 * (COLOR_SCALE * f_dc + 0.5)."""

ZSTD_LEVEL = 12  # the reference writer's level
_SQRT1_2 = math.sqrt(0.5)
_LEGACY_HEADER = struct.Struct("<IIIBBBB")  # 16 bytes, versions 1-3 (inside the gzip stream)
_HEADER = struct.Struct("<IIIBBBBI12x")  # 32 bytes, version 4 (plain)
_TOC_ENTRY = struct.Struct("<QQ")
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
_MAX_POINTS = (1 << 31) - 1


def _streams(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """The per-attribute byte arrays (uint8, in file order) of a batch of one."""
    if gaussians.batch_size != 1:
        raise InputError(
            f".spz export: expected one set of Gaussians (batch 1), got batch {gaussians.batch_size}"
        )
    if gaussians.channels < 3:
        raise InputError(f".spz export: expected at least 3 feature channels (RGB), got {gaussians.channels}")
    if gaussians.count == 0:
        raise InputError(".spz export: no Gaussians to write (SPZ readers refuse an empty file)")
    g = gaussians.to("cpu")
    require_finite(g.tensors("gaussians."), ".spz export: not written")
    as64 = lambda t: t[0].detach().to(torch.float64).numpy()
    means, scales, quats = as64(g.means), as64(g.scales), as64(g.quats)
    if np.any(scales <= 0):
        raise InputError(".spz export: not written (a Gaussian has a scale <= 0, which has no log)")
    limit = 1 << 23
    fixed = np.round(means * (1 << FRACTIONAL_BITS))
    if np.any(fixed < -limit) or np.any(fixed >= limit):
        raise InputError(
            f".spz export: a position is {np.abs(means).max():.4g} units from the origin; .spz's 24-bit "
            f"positions hold less than {limit >> FRACTIONAL_BITS} (use a smaller --scale)"
        )
    fixed = fixed.astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], -1)  # [N, 3, 3]
    to_u8 = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)
    f_dc = (np.clip(as64(g.features)[:, :3], 0.0, 1.0) - 0.5) / SH_C0
    return {
        "positions": positions.astype(np.uint8).reshape(-1),
        "alphas": to_u8(np.clip(as64(g.opacities), 0.0, 1.0) * 255.0),
        "colors": to_u8((f_dc * COLOR_SCALE + 0.5) * 255.0).reshape(-1),
        "scales": to_u8((np.log(scales) + 10.0) * 16.0).reshape(-1),
        "rotations": pack_quaternions(quats),
    }


def pack_quaternions(quats_wxyz: np.ndarray) -> np.ndarray:
    """Quaternions [N, 4] (w, x, y, z; any length > 0) as the format's "smallest three" bytes [N * 4]."""
    norm = np.linalg.norm(quats_wxyz, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise InputError(".spz export: not written (a Gaussian has a zero quaternion)")
    q = (quats_wxyz / norm)[:, [1, 2, 3, 0]]  # the format's order: x, y, z, w
    largest = np.argmax(np.abs(q), axis=-1)  # first of equals, like the reference
    negate = np.take_along_axis(q, largest[:, None], -1)[:, 0] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        sign = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / _SQRT1_2 + 0.5), 511).astype(np.uint32)
        keep = largest != i
        comp = np.where(keep, (comp << np.uint32(10)) | (sign << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8)


def unpack_quaternions(data: np.ndarray) -> np.ndarray:
    """ "Smallest three" bytes [N * 4] as unit quaternions [N, 4] (w, x, y, z)."""
    comp = data.view("<u4").astype(np.int64)
    largest = comp >> 30
    q = np.zeros((len(comp), 4))
    for i in range(3, -1, -1):
        keep = largest != i
        mag = (comp & 511) / 511.0 * _SQRT1_2
        value = np.where((comp >> 9) & 1, -mag, mag)
        q[:, i] = np.where(keep, value, 0.0)
        comp = np.where(keep, comp >> 10, comp)
    rest = np.clip(1.0 - (q**2).sum(-1), 0.0, None)
    q[np.arange(len(q)), largest] = np.sqrt(rest)
    return q[:, [3, 0, 1, 2]]


def spz_bytes(gaussians: Gaussians, version: int = DEFAULT_VERSION) -> bytes:
    """The bytes of a ``.spz`` file of ``gaussians`` ([1, N], C >= 3) in format ``version`` (3 or 4)."""
    if version not in VERSIONS:
        raise InputError(f"--spz-version {version}: expected one of {', '.join(map(str, VERSIONS))}")
    compress = _zstd_compressor() if version == 4 else None  # before the work: name a missing package
    streams = _streams(gaussians)
    n = gaussians.count
    if version == 3:
        header = _LEGACY_HEADER.pack(MAGIC, 3, n, 0, FRACTIONAL_BITS, 0, 0)
        body = b"".join(s.tobytes() for s in streams.values())
        return gzip.compress(header + body, compresslevel=6, mtime=0)
    frames = [(compress(s.tobytes()), s.size) for s in streams.values() if s.size]
    header = _HEADER.pack(MAGIC, 4, n, 0, FRACTIONAL_BITS, 0, len(frames), _HEADER.size)
    toc = b"".join(_TOC_ENTRY.pack(len(c), size) for c, size in frames)
    return header + toc + b"".join(c for c, _ in frames)


def write_spz(path: str | Path, gaussians: Gaussians, version: int = DEFAULT_VERSION) -> Path:
    """Write ``gaussians`` ([1, N], C >= 3 channels) as a ``.spz`` file (version 3 or 4), atomically."""
    data = spz_bytes(gaussians, version)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def zstandard_module():
    try:
        import zstandard
    except ImportError:
        raise InputError(
            ".spz version 4 is zstd-compressed and needs the zstandard package (pip install zstandard); "
            "version 3 (the default) needs nothing"
        ) from None
    return zstandard


def _zstd_compressor():
    return zstandard_module().ZstdCompressor(level=ZSTD_LEVEL).compress


# ------------------------------------------------------------------------------------- reading
def _sizes(n: int, version: int, sh_degree: int) -> dict[str, int]:
    """Bytes of each attribute stream, in file order."""
    return {
        "positions": n * 9,
        "alphas": n,
        "colors": n * 3,
        "scales": n * 3,
        "rotations": n * (4 if version >= 3 else 3),
        "sh": n * _SH_DIM[sh_degree] * 3,
    }


def _check_header(path: Path, version: int, n: int, sh_degree: int, fractional_bits: int) -> None:
    if version == 1:
        raise InputError(
            f"{path}: .spz version 1 (float16 positions, never released) is not read; expected 2 to 4"
        )
    if not 2 <= version <= 4:
        raise InputError(f"{path}: .spz version {version}; expected 2 to 4")
    if not 0 < n <= _MAX_POINTS:
        raise InputError(f"{path}: .spz header says {n} Gaussians; expected 1 to {_MAX_POINTS}")
    if sh_degree not in _SH_DIM:
        raise InputError(f"{path}: .spz SH degree {sh_degree}; expected 0 to 4")
    if fractional_bits > 24:
        raise InputError(f"{path}: .spz fractional bits {fractional_bits}; expected at most 24")


def _read_legacy(path: Path, data: bytes) -> tuple[dict[str, bytes], int, int]:
    """Versions 2-3: one gzip stream. Decompresses no more than the header says the file holds."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = inflate.decompress(data, _LEGACY_HEADER.size)
        if len(head) < _LEGACY_HEADER.size:
            raise InputError(f"{path}: .spz stream ends inside its 16-byte header; the file is truncated")
        magic, version, n, sh_degree, bits, _flags, _ = _LEGACY_HEADER.unpack(head)
        if magic != MAGIC:
            raise InputError(f"{path}: not a .spz file (no NGSP header); expected a Niantic .spz file")
        _check_header(path, version, n, sh_degree, bits)
        sizes = _sizes(n, version, sh_degree)
        total = sum(sizes.values())
        body = inflate.decompress(inflate.unconsumed_tail, total)
        while len(body) < total and inflate.unconsumed_tail:
            body += inflate.decompress(inflate.unconsumed_tail, total - len(body))
    except zlib.error as exc:
        raise InputError(f"{path}: .spz gzip stream is corrupt ({exc})") from None
    if len(body) < total:
        raise InputError(
            f"{path}: .spz holds {len(body)} of the {total} bytes its header promises; the file is truncated"
        )
    out, offset = {}, 0
    for name, size in sizes.items():
        out[name], offset = body[offset : offset + size], offset + size
    return out, version, bits


def _read_ngsp(path: Path, data: bytes) -> tuple[dict[str, bytes], int, int]:
    """Version 4: plain header, table of contents, one zstd frame per non-empty stream."""
    if len(data) < _HEADER.size:
        raise InputError(f"{path}: .spz file is {len(data)} bytes, shorter than its 32-byte header")
    _magic, version, n, sh_degree, bits, _flags, count, toc = _HEADER.unpack_from(data)
    if version < 4:
        raise InputError(f"{path}: .spz version {version} with a plain NGSP header; expected version 4")
    _check_header(path, version, n, sh_degree, bits)
    sizes = {k: v for k, v in _sizes(n, version, sh_degree).items() if v}
    if count != len(sizes) or toc < _HEADER.size or toc + count * _TOC_ENTRY.size > len(data):
        raise InputError(
            f"{path}: .spz table of contents does not fit the file ({count} streams at byte {toc})"
        )
    zstd = zstandard_module()
    out, offset = {}, toc + count * _TOC_ENTRY.size
    for i, (name, size) in enumerate(sizes.items()):
        packed, unpacked = _TOC_ENTRY.unpack_from(data, toc + i * _TOC_ENTRY.size)
        if unpacked != size or offset + packed > len(data):
            raise InputError(f"{path}: .spz stream {name} is {unpacked} bytes; the header implies {size}")
        try:
            out[name] = zstd.ZstdDecompressor().decompress(
                data[offset : offset + packed], max_output_size=size
            )
        except zstd.ZstdError as exc:
            raise InputError(f"{path}: .spz stream {name} is corrupt ({exc})") from None
        if len(out[name]) != size:
            raise InputError(f"{path}: .spz stream {name} holds {len(out[name])} bytes; expected {size}")
        offset += packed
    out.setdefault("sh", b"")
    return out, version, bits


def read_spz_streams(path: str | Path) -> tuple[dict[str, np.ndarray], int, int]:
    """(the raw uint8 streams by name, format version, fractional bits) of a ``.spz`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; expected a .spz file")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        streams, version, bits = _read_legacy(path, data)
    elif data[:4] == struct.pack("<I", MAGIC):
        streams, version, bits = _read_ngsp(path, data)
    else:
        raise InputError(
            f"{path}: not a .spz file (neither gzip nor an NGSP header); expected a Niantic .spz file"
        )
    return {k: np.frombuffer(v, dtype=np.uint8) for k, v in streams.items()}, version, bits


def read_spz(path: str | Path) -> Gaussians:
    """Read a ``.spz`` file (versions 2-4) as Gaussians [1, N] with 3 feature channels (RGB from the
    DC colour; higher SH bands are ignored). Coordinates come back as stored."""
    s, version, bits = read_spz_streams(path)
    p = s["positions"].reshape(-1, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) / (1 << bits)
    if version >= 3:
        quats = unpack_quaternions(s["rotations"])
    else:  # version 2: x, y, z as bytes, w >= 0 derived
        xyz = s["rotations"].reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.clip(1.0 - (xyz**2).sum(-1), 0.0, None))
        quats = np.concatenate([w[:, None], xyz], -1)
    f_dc = (s["colors"].reshape(-1, 3).astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
    rgb = 0.5 + SH_C0 * f_dc
    scales = np.exp(s["scales"].reshape(-1, 3).astype(np.float64) / 16.0 - 10.0)
    opacities = s["alphas"].astype(np.float64) / 255.0
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]
    quats = torch.nn.functional.normalize(f32(quats), dim=-1)
    return Gaussians(f32(means), quats, f32(scales), f32(opacities), f32(rgb))


__all__ = [
    "COLOR_SCALE", "DEFAULT_VERSION", "FRACTIONAL_BITS", "MAGIC", "VERSIONS", "pack_quaternions",
    "read_spz", "read_spz_streams", "spz_bytes", "unpack_quaternions", "write_spz", "zstandard_module",
]  # fmt: skip
