"""LPIPS from its definition, on tiny random backbones (no downloaded weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gshead.core.errors import AvatarFileError, ShapeError
from gshead.metrics.lpips import LPIPS, load_lin_weights, normalize_channels


class TinyBackbone(nn.Module):
    """Two conv+ReLU stages returning both feature maps (like VGG's relu taps)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.a(x))
        return (f1, torch.relu(self.b(f1)))


def _lin(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 4, 1, 1, generator=g), torch.rand(1, 6, 1, 1, generator=g)]


def _images(seed: int, b: int = 2, size: int = 12) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference(backbone, lin, x, y) -> np.ndarray:
    """LPIPS by loops over pixels in NumPy: per-pixel unit channel vectors, weighted squared
    difference summed over channels, mean over pixels, sum over layers."""
    with torch.no_grad():
        fx, fy = backbone(x), backbone(y)
    out = np.zeros(x.shape[0])
    for a, b, w in zip(fx, fy, lin):
        a, b, w = a.double().numpy(), b.double().numpy(), w.double().numpy()[0, :, 0, 0]
        for n in range(a.shape[0]):
            total = 0.0
            for i in range(a.shape[2]):
                for j in range(a.shape[3]):
                    u, v = a[n, :, i, j], b[n, :, i, j]
                    u = u / (np.sqrt((u * u).sum()) + 1e-10)
                    v = v / (np.sqrt((v * v).sum()) + 1e-10)
                    total += float((w * (u - v) ** 2).sum())
            out[n] += total / (a.shape[2] * a.shape[3])
    return out


def test_lpips_matches_hand_computation():
    backbone, lin = TinyBackbone(), _lin()
    metric = LPIPS(backbone, lin)
    x, y = _images(0), _images(1)
    np.testing.assert_allclose(metric(x, y).double().numpy(), _reference(backbone, lin, x, y), rtol=1e-4)


def test_normalize_channels_gives_unit_vectors():
    f = torch.randn(2, 5, 3, 4)
    n = normalize_channels(f)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(2, 3, 4), atol=1e-5, rtol=0)
    assert torch.isfinite(normalize_channels(torch.zeros(1, 3, 2, 2))).all()


def test_lpips_is_zero_on_identical_symmetric_and_grows_with_distortion():
    metric = LPIPS(TinyBackbone(), _lin())
    x = _images(2, b=1, size=16)
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert metric(x, x).item() == 0.0
    y = (x + 0.1 * noise).clamp(0, 1)
    assert metric(x, y).item() == pytest.approx(metric(y, x).item(), rel=1e-6)
    d = [metric(x, (x + s * noise).clamp(0, 1)).item() for s in (0.02, 0.1, 0.4)]
    assert 0 < d[0] < d[1] < d[2]


def test_lpips_rejects_bad_lin_weights():
    with pytest.raises(ShapeError, match="negative"):
        LPIPS(TinyBackbone(), [-_lin()[0], _lin()[1]])
    with pytest.raises(ShapeError, match=r"\[1, C, 1, 1\]"):
        LPIPS(TinyBackbone(), [torch.ones(4), torch.ones(1, 6, 1, 1)])
    with pytest.raises(ShapeError, match="channels"):
        LPIPS(TinyBackbone(), [torch.ones(1, 5, 1, 1), torch.ones(1, 6, 1, 1)])(_images(0), _images(1))


def test_lin_weights_load_from_official_layout_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    channels = (64, 128, 256, 512, 512)
    state = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(channels)}
    torch.save(state, tmp_path / "vgg.pth")
    save_file(state, str(tmp_path / "vgg.safetensors"))
    for name in ("vgg.pth", "vgg.safetensors"):
        loaded = load_lin_weights(tmp_path / name)
        for i, w in enumerate(loaded):
            torch.testing.assert_close(w, state[f"lin{i}.model.1.weight"])
    del state["lin3.model.1.weight"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(AvatarFileError, match="lin3"):
        load_lin_weights(tmp_path / "short.pth")
    with pytest.raises(AvatarFileError, match="no such"):
        load_lin_weights(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AvatarFileError, match="not a readable"):
        load_lin_weights(tmp_path / "junk.pth")


def test_lpips_runs_on_the_vgg16_backbone(tmp_path):
    vgg = pytest.importorskip("gshead.nets.vgg")
    torch.manual_seed(0)
    backbone = vgg.VGG16Features()
    metric = LPIPS(backbone, [torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)])
    x = _images(5, b=2, size=32)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    d = metric(x, y)
    assert d.shape == (2,) and (d > 0).all() and metric(x, x).abs().max().item() == 0.0
