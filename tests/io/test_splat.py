"""``gshead.io.splat``: the antimatter15 ``.splat`` writer, checked against an independent reading
of the byte layout (a NumPy structured dtype written out here, not imported)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gshead.core.errors import InputError, NonFiniteError
from gshead.core.types import Gaussians
from gshead.io.splat import read_splat, write_splat

LAYOUT = np.dtype(
    {
        "names": ["x", "y", "z", "sx", "sy", "sz", "r", "g", "b", "a", "qw", "qx", "qy", "qz"],
        "formats": ["<f4"] * 6 + ["u1"] * 8,
        "offsets": [0, 4, 8, 12, 16, 20, 24, 25, 26, 27, 28, 29, 30, 31],
        "itemsize": 32,
    }
)


def _gaussians(n: int = 40, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.1,
        quats=torch.randn(1, n, 4, generator=g),  # not normalised: the writer normalises
        scales=0.001 + 0.02 * torch.rand(1, n, 3, generator=g),
        opacities=torch.rand(1, n, generator=g),
        features=torch.rand(1, n, 5, generator=g) * 1.2 - 0.1,  # a little outside [0, 1]
    )


def test_bytes_follow_the_documented_layout(tmp_path):
    g = _gaussians()
    path = write_splat(tmp_path / "g.splat", g)
    data = path.read_bytes()
    assert len(data) == 32 * g.count
    t = np.frombuffer(data, dtype=LAYOUT)
    means, scales = g.means[0].double().numpy(), g.scales[0].double().numpy()
    opacity = g.opacities[0].double().numpy()
    # sorted by descending volume x opacity, as antimatter15's convert.py does
    order = np.argsort(-(scales.prod(-1) * opacity))
    assert np.allclose(np.stack([t["x"], t["y"], t["z"]], -1), means[order], atol=1e-7)
    assert np.allclose(np.stack([t["sx"], t["sy"], t["sz"]], -1), scales[order], rtol=1e-6)  # linear
    rgb = np.clip(g.features[0, :, :3].double().numpy(), 0, 1)[order]
    assert np.abs(np.stack([t["r"], t["g"], t["b"]], -1) / 255.0 - rgb).max() <= 0.5 / 255 + 1e-9
    assert np.abs(t["a"] / 255.0 - opacity[order]).max() <= 0.5 / 255 + 1e-9
    q = g.quats[0].double().numpy()
    q = (q / np.linalg.norm(q, axis=-1, keepdims=True))[order]
    back = (np.stack([t["qw"], t["qx"], t["qy"], t["qz"]], -1).astype(np.float64) - 128) / 128  # w first
    assert np.abs(back - q).max() <= 0.5 / 128 + 1e-9


def test_round_trip_with_our_reader(tmp_path):
    g = _gaussians(n=25, seed=1)
    back = read_splat(write_splat(tmp_path / "g.splat", g))
    assert back.count == g.count and back.channels == 3
    # match each read Gaussian to its source by position
    d = torch.cdist(back.means[0], g.means[0])
    idx = d.argmin(-1)
    assert torch.unique(idx).numel() == g.count and float(d.min(-1).values.max()) < 1e-6
    assert torch.allclose(back.scales[0], g.scales[0, idx], rtol=1e-6)
    assert torch.allclose(back.opacities[0], g.opacities[0, idx], atol=1 / 255)
    dots = (back.quats[0] * torch.nn.functional.normalize(g.quats[0, idx], dim=-1)).sum(-1).abs()
    assert float(dots.min()) > 0.99


def test_refuses_bad_input_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "g.splat"
    target.write_bytes(b"old")
    g = _gaussians(n=3)
    with pytest.raises(InputError, match="3 feature channels"):
        write_splat(target, g.replace(features=g.features[..., :2]))
    with pytest.raises(InputError, match="zero quaternion"):
        write_splat(target, g.replace(quats=torch.zeros_like(g.quats)))
    with pytest.raises(NonFiniteError, match="not written"):
        write_splat(target, g.replace(means=torch.full_like(g.means, float("nan"))))
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["g.splat"]
    with pytest.raises(InputError, match="32-byte"):
        read_splat(target)
