"""Niantic ``.spz`` (``gshead.io.spz``) and ``gshead export -o x.spz``: per-field round-trip bounds
against the PLY values, the byte layout, refusals, the coordinate convention, and an independent
decoder: PlayCanvas' splat-transform (npm), which reads .spz with the reference library (nianticlabs/spz)
compiled to WebAssembly. That check installs the npm package into a cache folder and is skipped
when node/npm or the registry is not there."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.core.errors import GsheadError, InputError
from gshead.core.geometry import quat_to_rotmat
from gshead.core.types import Gaussians
from gshead.io.ply import SH_C0, read_ply, write_ply
from gshead.io.spz import (
    COLOR_SCALE,
    FRACTIONAL_BITS,
    MAGIC,
    pack_quaternions,
    read_spz,
    read_spz_streams,
    spz_bytes,
    unpack_quaternions,
    write_spz,
)
from gshead.jobs.posing import to_export_frame
from gshead.testing import tiny_pipeline

SPLAT_TRANSFORM = "@playcanvas/splat-transform@2.7.1"

# Quantisation bounds of the format (half a step of each field, plus float32 slack).
POSITION_BOUND = 0.5 / (1 << FRACTIONAL_BITS) + 1e-6  # units
RGB_BOUND = 0.5 * SH_C0 / (COLOR_SCALE * 255.0) + 1e-6  # 0.0037
OPACITY_BOUND = 0.5 / 255.0 + 1e-6
LOG_SCALE_BOUND = 0.5 / 16.0 + 1e-5  # 3.2 % of a size
QUAT_BOUND = 1e-5  # 1 - |<q, q'>|: 9-bit magnitudes of the smallest three


def _gaussians(n: int = 300, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.1,
        quats=torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1),
        scales=0.0005 + 0.02 * torch.rand(1, n, 3, generator=g),
        opacities=0.01 + 0.98 * torch.rand(1, n, generator=g),
        features=torch.rand(1, n, 5, generator=g),
    )


def _covariances(g: Gaussians) -> torch.Tensor:
    r = quat_to_rotmat(g.quats[0].double())
    return r @ torch.diag_embed(g.scales[0].double() ** 2) @ r.transpose(-1, -2)


def _assert_close_to_ply(back: Gaussians, ply: Gaussians, quats: bool = True) -> None:
    assert back.count == ply.count and back.channels == 3
    assert (back.means - ply.means).abs().max() <= POSITION_BOUND
    assert (back.features - ply.features).abs().max() <= RGB_BOUND
    assert (back.opacities - ply.opacities).abs().max() <= OPACITY_BOUND
    assert (back.scales / ply.scales).log().abs().max() <= LOG_SCALE_BOUND
    if quats:
        assert (1 - (back.quats * ply.quats).sum(-1).abs()).max() <= QUAT_BOUND
    # the Gaussians' shapes: covariances agree to the scale quantisation (~2 x 3.2 %)
    a, b = _covariances(back), _covariances(ply)
    assert ((a - b).norm(dim=(-1, -2)) / b.norm(dim=(-1, -2))).max() < 0.07


# ------------------------------------------------------------------------------------ format
@pytest.mark.parametrize("version", [3, 4])
def test_round_trip_error_is_within_the_format_quantisation_of_the_ply_values(tmp_path, version):
    g = _gaussians()
    ply = read_ply(write_ply(tmp_path / "g.ply", g, sh_degree=0))
    back = read_spz(write_spz(tmp_path / "g.spz", g, version=version))
    _assert_close_to_ply(back, ply)


def test_version_3_is_one_gzip_stream_with_the_16_byte_header(tmp_path):
    g = _gaussians(n=7)
    data = (write_spz(tmp_path / "g.spz", g)).read_bytes()
    assert data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data)
    assert struct.unpack_from("<IIIBBBB", raw) == (MAGIC, 3, 7, 0, FRACTIONAL_BITS, 0, 0)
    assert raw[:4] == b"NGSP"
    assert len(raw) == 16 + 7 * (9 + 1 + 3 + 3 + 4)  # positions, alphas, colours, scales, rotations


def test_version_4_is_a_plain_header_a_table_of_contents_and_zstd_streams(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    g = _gaussians(n=7)
    data = write_spz(tmp_path / "g.spz", g, version=4).read_bytes()
    magic, version, n, sh, bits, flags, streams, toc = struct.unpack_from("<IIIBBBBI12x", data)
    assert (magic, version, n, sh, bits, flags, streams, toc) == (MAGIC, 4, 7, 0, FRACTIONAL_BITS, 0, 5, 32)
    sizes = [struct.unpack_from("<QQ", data, 32 + 16 * i) for i in range(5)]
    assert [u for _c, u in sizes] == [7 * 9, 7, 7 * 3, 7 * 3, 7 * 4]
    offset = 32 + 16 * 5
    first = zstandard.ZstdDecompressor().decompress(data[offset : offset + sizes[0][0]])
    assert len(first) == 7 * 9
    assert offset + sum(c for c, _u in sizes) == len(data)


def test_fields_are_encoded_as_the_format_says():
    g = Gaussians(
        means=torch.tensor([[[1.0, -0.5, 2.0**-12]]]),
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),
        scales=torch.tensor([[[math.exp(-10.0), 1.0, math.exp(5.9375)]]]),
        opacities=torch.tensor([[0.5]]),
        features=torch.tensor([[[0.5, 1.0, 0.0]]]),
    )
    raw = gzip.decompress(spz_bytes(g))[16:]
    fixed = [int.from_bytes(raw[i : i + 3], "little", signed=True) for i in (0, 3, 6)]
    assert fixed == [4096, -2048, 1]
    assert raw[9] == 128  # round(255 * 0.5)
    expected_colour = [round(255 * (COLOR_SCALE * (c - 0.5) / SH_C0 + 0.5)) for c in (0.5, 1.0, 0.0)]
    assert list(raw[10:13]) == expected_colour
    assert list(raw[13:16]) == [0, 160, 255]  # (log s + 10) * 16
    assert raw[16:20] == bytes([0, 0, 0, 0xC0])  # identity: index 3 (w) largest, the rest zero


def test_smallest_three_packing_matches_a_hand_computed_word():
    # (w, x, y, z) = (0.5, -0.5, 0.5, 0.5): x comes first among the equal largest; it is negative,
    # so the quaternion is negated and y, z, w get sign bits; magnitude round(511 * 0.5 / sqrt(1/2)).
    word = int.from_bytes(pack_quaternions(np.array([[0.5, -0.5, 0.5, 0.5]])).tobytes(), "little")
    part = (1 << 9) | 361
    assert word == (0 << 30) | (part << 20) | (part << 10) | part
    back = unpack_quaternions(pack_quaternions(np.array([[0.5, -0.5, 0.5, 0.5]])))
    assert np.allclose(np.abs(back @ np.array([0.5, -0.5, 0.5, 0.5])), 1.0, atol=1e-5)


def test_random_quaternions_round_trip_as_the_same_rotation():
    q = torch.nn.functional.normalize(
        torch.randn(2000, 4, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    back = unpack_quaternions(pack_quaternions(q.double().numpy()))
    assert np.max(1 - np.abs((back * q.double().numpy()).sum(-1))) < QUAT_BOUND


def test_refusals_name_what_is_wrong(tmp_path):
    g = _gaussians(n=4)
    with pytest.raises(InputError, match="24-bit"):
        spz_bytes(g.replace(means=g.means + 3000.0))
    with pytest.raises(InputError, match="batch 1"):
        spz_bytes(g.expand(2))
    with pytest.raises(InputError, match="zero quaternion"):
        spz_bytes(g.replace(quats=torch.zeros_like(g.quats)))
    with pytest.raises(InputError, match="expected one of 3, 4"):
        spz_bytes(g, version=2)
    with pytest.raises(GsheadError, match="not written"):
        spz_bytes(g.replace(opacities=torch.full_like(g.opacities, float("nan"))))
    assert not list(tmp_path.iterdir())


def test_reader_refuses_foreign_truncated_and_overclaiming_files(tmp_path):
    (tmp_path / "text.spz").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="not a .spz file"):
        read_spz(tmp_path / "text.spz")
    good = spz_bytes(_gaussians(n=20))
    (tmp_path / "cut.spz").write_bytes(gzip.compress(gzip.decompress(good)[:100]))
    with pytest.raises(InputError, match="truncated"):
        read_spz(tmp_path / "cut.spz")
    header = struct.pack("<IIIBBBB", MAGIC, 3, 2_000_000_000, 0, 12, 0, 0)
    (tmp_path / "claim.spz").write_bytes(gzip.compress(header + bytes(64)))
    with pytest.raises(InputError, match="truncated"):  # decompresses only what is there, never 40 GB
        read_spz(tmp_path / "claim.spz")
    with pytest.raises(InputError, match="no such file"):
        read_spz(tmp_path / "missing.spz")


def test_reader_reads_version_2_first_three_rotations(tmp_path):
    g = _gaussians(n=30)
    streams, _version, _bits = read_spz_streams(write_spz(tmp_path / "g.spz", g))
    q = g.quats[0].double().numpy()
    q = q * np.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0
    xyz = np.clip(np.round(q[:, 1:] * 127.5 + 127.5), 0, 255).astype(np.uint8)
    body = b"".join(streams[k].tobytes() for k in ("positions", "alphas", "colors", "scales")) + xyz.tobytes()
    header = struct.pack("<IIIBBBB", MAGIC, 2, 30, 0, 12, 0, 0)
    (tmp_path / "v2.spz").write_bytes(gzip.compress(header + body))
    back = read_spz(tmp_path / "v2.spz")
    assert (1 - (back.quats[0].double() * torch.from_numpy(q)).sum(-1).abs()).max() < 2e-3


# ------------------------------------------------------------------------------------ gshead export
@pytest.fixture(scope="module")
def avatar_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spz-export")
    cfg = folder / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    out = folder / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(cfg), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(avatar_file, tmp_path_factory):
    """The avatar exported as .ply (default -y), .spz v3 and v4 (default: y up, RUB)."""
    folder = tmp_path_factory.mktemp("spz-files")
    out = {}
    for name, extra in (("a.ply", ["--sh-degree", "0"]), ("a.spz", []), ("a4.spz", ["--spz-version", "4"])):
        if name == "a4.spz" and not _has_zstandard():
            continue
        path = folder / name
        assert main(["export", str(avatar_file), "-o", str(path), *extra]) == 0
        out[name] = path
    return out


def _has_zstandard() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


RDF_FROM_RUB = torch.tensor([1.0, -1.0, -1.0])


def test_export_spz_is_rub_so_the_head_is_upright_in_spz_viewers(exported, capsys):
    ply = read_ply(exported["a.ply"])  # OpenCV / RDF: y down
    spz = read_spz(exported["a.spz"])  # RUB: y up
    flipped = ply.replace(means=ply.means * RDF_FROM_RUB)
    assert (spz.means - flipped.means).abs().max() <= POSITION_BOUND
    # y up: the top of the head (largest y) lies above the mean in the .spz, below it in the .ply
    assert spz.means[0, :, 1].max() - spz.means[0, :, 1].mean() > 0.05
    assert (ply.means[0, :, 1] + spz.means[0, :, 1]).abs().max() <= 2 * POSITION_BOUND
    rotation = torch.diag(RDF_FROM_RUB.double())
    assert torch.allclose(rotation @ _covariances(spz) @ rotation, _covariances(ply), atol=1e-7, rtol=0.07)


def test_export_spz_writes_a_camera_in_the_same_convention(exported):
    import json

    camera = json.loads(exported["a.spz"].with_name("a.camera.json").read_text(encoding="utf-8"))
    assert camera["up_axis"] == "y" and camera["up"][1] > 0.9  # a.spz came last: y up, like the file
    camera4 = exported.get("a4.spz")
    if camera4 is not None:
        c = json.loads(camera4.with_name("a4.camera.json").read_text(encoding="utf-8"))
        assert c["up_axis"] == "y" and c["up"][1] > 0.9  # y up, like the file


def test_export_spz_versions_decode_to_the_same_gaussians(exported):
    if "a4.spz" not in exported:
        pytest.skip("zstandard is not installed")
    a, b = read_spz(exported["a.spz"]), read_spz(exported["a4.spz"])
    for name in ("means", "quats", "scales", "opacities", "features"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_export_spz_up_minus_y_writes_the_opencv_frame(avatar_file, exported, tmp_path):
    out = tmp_path / "cv.spz"
    assert main(["export", str(avatar_file), "-o", str(out), "--up=-y"]) == 0
    ply = read_ply(exported["a.ply"])
    assert (read_spz(out).means - ply.means).abs().max() <= POSITION_BOUND


def test_export_spz_refusals(avatar_file, tmp_path, capsys, monkeypatch):
    assert main(["export", str(avatar_file), "-o", str(tmp_path / "a.ply"), "--spz-version", "4"]) == 2
    assert "--spz-version 4: applies to a .spz output only" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "zstandard", None)  # as if it were not installed
    assert main(["export", str(avatar_file), "-o", str(tmp_path / "b.spz"), "--spz-version", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gshead: error: .spz version 4") and "zstandard" in err and err.count("\n") == 1
    assert main(["export", str(avatar_file), "-o", str(tmp_path / "x.spzz")]) == 2
    assert ".ply, .splat or .spz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_spz_version_choice_is_checked_by_the_parser(avatar_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(avatar_file), "-o", str(tmp_path / "a.spz"), "--spz-version", "2"])
    assert exc.value.code == 2
    assert "--spz-version" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ independent decoder
def _npm_cache() -> Path:
    base = os.environ.get("GSHEAD_NPM_TEST_CACHE")
    if base:
        return Path(base)
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "gshead-tests" / "npm-spz"


@pytest.fixture(scope="module")
def splat_transform() -> Path:
    """The splat-transform CLI (installed with npm into a cache folder, not the repository)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the independent .spz decoder is not available")
    folder = _npm_cache()
    cli = folder / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
    if not cli.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--ignore-scripts",
                 "--no-save", SPLAT_TRANSFORM],
                check=False, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install {SPLAT_TRANSFORM} took over 5 minutes")
        if done.returncode != 0 or not cli.is_file():
            pytest.skip(f"npm install {SPLAT_TRANSFORM} failed: {done.stderr.strip()[-300:]}")
    return cli


def _decode_with_splat_transform(cli: Path, spz: Path, out: Path) -> Gaussians:
    done = subprocess.run(
        ["node", str(cli), "-w", str(spz), str(out)], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return read_ply(out)


@pytest.mark.parametrize("version", [3, 4])
def test_reference_decoder_reads_our_spz_as_the_ply_we_write(splat_transform, tmp_path, version):
    """splat-transform decodes .spz with the reference library's WebAssembly build and converts
    the spec's RUB to the PLY's RDF: our .spz of gshead's y-up world must come back as our PLY of the
    same Gaussians in the OpenCV frame (-y), to the format's quantisation."""
    if version == 4 and not _has_zstandard():
        pytest.skip("zstandard is not installed")
    world = _gaussians(n=500, seed=1)
    ply = read_ply(write_ply(tmp_path / "cv.ply", to_export_frame(world, "-y"), sh_degree=0))
    spz = write_spz(tmp_path / "g.spz", to_export_frame(world, "y"), version=version)
    back = _decode_with_splat_transform(splat_transform, spz, tmp_path / "back.ply")
    # RUB -> RDF conjugates the rotations (q -> x, -y, -z), export turns them (q_M q): the same
    # Gaussians, quaternions differing by a half turn of the local axes, so compare covariances.
    _assert_close_to_ply(back, ply, quats=False)
    ours = read_spz(spz)
    assert torch.equal(back.means, ours.means * RDF_FROM_RUB)  # bit-identical positions


def test_reference_decoder_reads_an_exported_avatar(splat_transform, exported, tmp_path):
    ply = read_ply(exported["a.ply"])
    back = _decode_with_splat_transform(splat_transform, exported["a.spz"], tmp_path / "back.ply")
    _assert_close_to_ply(back, ply, quats=False)
