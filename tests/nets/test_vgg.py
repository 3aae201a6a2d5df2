import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gshead.core.errors import AvatarFileError
from gshead.nets.vgg import TAP_CHANNELS, VGG16Features, load_vgg16


def _reference(model: VGG16Features, image: torch.Tensor) -> list[torch.Tensor]:
    """The same network written out with functional ops, reading the module's weights by key."""
    sd = model.state_dict()
    x = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    blocks = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]
    out = []
    for b, convs in enumerate(blocks):
        if b:
            x = F.max_pool2d(x, 2)
        for i in convs:
            x = F.relu(F.conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
        out.append(x)
    return out


def test_taps_match_functional_reference():
    torch.manual_seed(0)
    model = VGG16Features().eval()
    image = torch.rand(2, 3, 32, 32)
    got = model(image)
    want = _reference(model, image)
    assert [t.shape[1] for t in got] == list(TAP_CHANNELS)
    assert [t.shape[-1] for t in got] == [32, 16, 8, 4, 2]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_load_torchvision_layout_from_pth_and_safetensors(tmp_path):
    torch.manual_seed(1)
    model = VGG16Features()
    full = dict(model.state_dict())
    full["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's head is ignored
    torch.save(full, tmp_path / "vgg16.pth")
    bare = {k.removeprefix("features."): v for k, v in model.state_dict().items()}
    save_file(bare, str(tmp_path / "vgg16.safetensors"))
    image = torch.rand(1, 3, 32, 32)
    for name in ("vgg16.pth", "vgg16.safetensors"):
        loaded = load_vgg16(tmp_path / name)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        torch.testing.assert_close(loaded(image)[2], model(image)[2])


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(AvatarFileError, match="no such VGG-16 weights file"):
        load_vgg16(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(AvatarFileError, match="not a readable VGG-16 weights file"):
        load_vgg16(tmp_path / "junk.pth")
    sd = VGG16Features().state_dict()
    sd.pop("features.28.bias")
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(AvatarFileError, match=r"missing 1 keys: features\.28\.bias") as info:
        load_vgg16(tmp_path / "short.pth")
    assert "\n" not in str(info.value)


def test_arbitrary_pickle_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"features.0.weight": Evil()}))
    with pytest.raises(AvatarFileError):
        load_vgg16(tmp_path / "evil.pth")
