"""AKD, APD, AED and CSIM against hand-made inputs; the ArcFace IResNet loader."""

from __future__ import annotations

import math

import pytest
import torch

from gshead.core.errors import AvatarFileError, ShapeError
from gshead.core.types import HeadParams
from gshead.metrics.face import (
    IdentityEmbedder,
    cosine_similarity,
    expression_distance,
    keypoint_distance,
    load_identity_model,
    mark_untracked,
    pose_distance,
)


def _params(rotation, translation, expression) -> HeadParams:
    b = len(rotation)
    return HeadParams(
        identity=torch.zeros(b, 2),
        expression=torch.tensor(expression, dtype=torch.float32),
        jaw=torch.zeros(b, 3),
        eyes=torch.zeros(b, 6),
        rotation=torch.tensor(rotation, dtype=torch.float32),
        translation=torch.tensor(translation, dtype=torch.float32),
    )


def test_akd_is_mean_euclidean_distance_in_pixels():
    target = torch.zeros(2, 3, 2)
    output = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]], [[1.0, 0.0]] * 3])
    got = keypoint_distance(output, target)
    torch.testing.assert_close(got, torch.tensor([(5.0 + 0.0 + 2.0) / 3, 1.0]))
    output[1, 0] = float("nan")  # a frame without a face
    assert math.isnan(keypoint_distance(output, target)[1].item())
    with pytest.raises(ShapeError, match="one shape"):
        keypoint_distance(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2))


def test_apd_and_aed_are_mean_absolute_differences():
    a = _params(
        [[0.1, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.2], [0.0, 0.0, 0.0]], [[1.0, 0.0], [0.5, 0.5]]
    )
    b = _params(
        [[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0], [0.5, 0.1]]
    )
    torch.testing.assert_close(pose_distance(a, b), torch.tensor([0.3 / 6, 0.3 / 6]))
    torch.testing.assert_close(expression_distance(a, b), torch.tensor([0.5, 0.2]))
    assert pose_distance(a, a).abs().max().item() == 0.0
    lost = mark_untracked(a, torch.tensor([True, False]))
    d = pose_distance(lost, b)
    assert d[0].item() == pytest.approx(0.05) and math.isnan(d[1].item())
    with pytest.raises(ShapeError, match="expression sizes"):
        expression_distance(a, a.replace(expression=torch.zeros(2, 3)))


def test_csim_is_cosine_similarity_with_broadcast_reference():
    out = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    ref = torch.tensor([[3.0, 0.0]])
    torch.testing.assert_close(cosine_similarity(out, ref), torch.tensor([1.0, 1 / math.sqrt(2), -1.0]))
    with pytest.raises(ShapeError, match="embeddings"):
        cosine_similarity(out, torch.zeros(1, 3))


def test_iresnet_state_dict_round_trip_with_arcface_key_names(tmp_path):
    from safetensors.torch import save_file

    from gshead.metrics.iresnet import IResNet

    torch.manual_seed(0)
    model = IResNet((1, 1, 1, 1), embedding=8)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    state = model.state_dict()
    for key in (
        "conv1.weight",
        "prelu.weight",
        "layer1.0.downsample.0.weight",
        "layer2.0.prelu.weight",
        "layer4.0.bn3.running_var",
        "bn2.weight",
        "fc.weight",
        "features.running_mean",
    ):
        assert key in state
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "arcface.safetensors"))
    loaded = load_identity_model(tmp_path / "arcface.safetensors")
    assert isinstance(loaded, IdentityEmbedder)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(images), model.embed(images))
    assert loaded.embed(images).shape == (2, 8)

    save_file({"conv1.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AvatarFileError, match="not an ArcFace IResNet"):
        load_identity_model(tmp_path / "other.safetensors")
    with pytest.raises(AvatarFileError, match="no such"):
        load_identity_model(tmp_path / "absent.safetensors")
