"""The ``dinov2`` and ``webssl`` ViT encoders (tiny variants only: the whole file runs in seconds).

Weight conversion is checked against an inverse mapping written here independently of
``gshead.plugins.encoders._vit``: a Hugging Face model is renamed to torch-hub keys (q/k/v fused
into qkv, gate/up fused into w12), saved, loaded back through the encoder, and must give the
same outputs as the model it came from.
"""

from __future__ import annotations

import re
import resource
import warnings

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from gshead.core.errors import GsheadError
from gshead.core.registry import Registry
from gshead.core.registry import DEFAULT_PLUGINS as BUILTIN_PLUGINS
from gshead.plugins.encoders import _vit as vit
from gshead.plugins.encoders.dinov2 import Dinov2Config, Dinov2Encoder
from gshead.plugins.encoders.webssl import WebSSLConfig, WebSSLEncoder
from gshead.testing import check_component, check_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:gshead. encoder .* randomly initialised:UserWarning")

VIT_PLUGINS = ("gshead.plugins.encoders.dinov2", "gshead.plugins.encoders.webssl")
RES = 56  # 4 x 4 patch tokens


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(builtin=tuple(dict.fromkeys(BUILTIN_PLUGINS + VIT_PLUGINS)), autoload=False)


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dino(**kw) -> Dinov2Encoder:
    return Dinov2Encoder(Dinov2Config(**{"variant": "tiny", "resolution": RES, **kw}))


def webssl(**kw) -> WebSSLEncoder:
    return WebSSLEncoder(WebSSLConfig(**{"size": "tiny", "resolution": RES, **kw}))


def images(b: int = 2, h: int = 40, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def backbone_input(image: torch.Tensor, res: int = RES) -> torch.Tensor:
    x = torch.nn.functional.interpolate(
        image, size=(res, res), mode="bilinear", align_corners=False, antialias=True
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def same_outputs(a, b, image) -> None:
    fa, fb = a(image), b(image)
    assert len(fa.local) == len(fb.local)
    for ma, mb in zip(fa.local, fb.local):
        torch.testing.assert_close(ma, mb, rtol=0, atol=1e-6)
    torch.testing.assert_close(fa.global_token, fb.global_token, rtol=0, atol=1e-6)


# -- shapes and layers ---------------------------------------------------------------------


def dino_reg(**kw) -> Dinov2Encoder:
    return dino(registers=True, **kw)


THREE = pytest.mark.parametrize("make", [dino, dino_reg, webssl], ids=["dinov2", "dinov2-reg", "webssl"])


@THREE
def test_shapes_for_a_non_square_image(make):
    enc = make()
    image = images(h=40, w=64)
    feats = enc(image)
    assert enc.out_channels == (32, 32) and enc.global_channels == 32  # tiny: 2 blocks, both selected
    assert [tuple(m.shape) for m in feats.local] == [(2, 32, 4, 4)] * 2
    assert feats.global_token.shape == (2, 32)
    assert feats.image is image


def test_maps_are_patch_tokens_in_row_major_order_without_cls_or_registers():
    enc = dino(registers=True, layers=(0, 1), layer_norm=False)
    image = images()
    feats = enc(image)
    out = enc.backbone(pixel_values=backbone_input(image), output_hidden_states=True)
    for level, block in enumerate((0, 1)):
        tokens = out.hidden_states[block + 1]  # [B, 1 + 4 + 16, D]
        assert tokens.shape[1] == 1 + 4 + 16
        for i, j in [(0, 0), (0, 3), (2, 1), (3, 3)]:
            torch.testing.assert_close(feats.local[level][:, :, i, j], tokens[:, 5 + 4 * i + j])
    torch.testing.assert_close(feats.global_token, out.last_hidden_state[:, 0])


def test_layer_selection_and_final_norm():
    image = images()
    enc = dino(layers=(-1, 0))
    assert enc.layers == (1, 0) and enc.out_channels == (32, 32)
    feats = enc(image)
    out = enc.backbone(pixel_values=backbone_input(image), output_hidden_states=True)
    # the last block with the final norm is exactly the model's last_hidden_state
    last = out.last_hidden_state[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(feats.local[0], last)
    first = enc.backbone.layernorm(out.hidden_states[1])[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(feats.local[1], first)

    one = dino(layers=(0,), layer_norm=False)
    assert one.out_channels == (32,) and len(one(image).local) == 1
    raw = out.hidden_states[1][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    one.load_state_dict(enc.state_dict())
    torch.testing.assert_close(one(image).local[0], raw)


def test_default_layers_are_the_last_four():
    assert vit.resolve_layers(None, 12) == (8, 9, 10, 11)
    assert vit.resolve_layers(None, 2) == (0, 1)
    assert vit.resolve_layers((-4, -1), 40) == (36, 39)


@pytest.mark.parametrize(
    "bad",
    [{"layers": (2,)}, {"layers": (-3,)}, {"layers": (0, -2)}, {"layers": ()}, {"resolution": 500}],
)
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValidationError):
        Dinov2Config(variant="tiny", **bad)
    with pytest.raises(ValidationError):
        WebSSLConfig(size="tiny", **bad)


def test_resolution_sets_the_token_grid():
    enc = dino(resolution=98)
    assert enc(images(1, 64, 64)).local[0].shape == (1, 32, 7, 7)


# -- weights: torch-hub .pth round trip (independent inverse mapping) -------------------------


def hf_to_hub(state: dict[str, torch.Tensor], chunks: int = 0) -> dict[str, torch.Tensor]:
    """Installed-transformers Dinov2 names -> torch-hub DINOv2 names (written independently)."""
    top = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    simple = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.o_proj": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.down_proj": "mlp.w3",
    }
    blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    per_chunk = -(-blocks // chunks) if chunks else 0

    def block(i: int) -> str:
        return f"blocks.{i // per_chunk}.{i}." if chunks else f"blocks.{i}."

    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value.clone()
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
        assert m, key
        i, module, param = int(m.group(1)), m.group(2), m.group(3)
        p = f"encoder.layer.{i}."
        if module in simple:
            out[block(i) + simple[module] + "." + param] = value.clone()
        elif module in ("layer_scale1", "layer_scale2"):
            out[block(i) + ("ls1" if module == "layer_scale1" else "ls2") + ".gamma"] = value.clone()
        elif module == "attention.q_proj":
            qkv = [state[f"{p}attention.{n}_proj.{param}"] for n in "qkv"]
            out[block(i) + "attn.qkv." + param] = torch.cat(qkv, 0)
        elif module == "mlp.gate_proj":
            parts = [state[f"{p}mlp.{n}_proj.{param}"] for n in ("gate", "up")]
            out[block(i) + "mlp.w12." + param] = torch.cat(parts, 0)
        else:
            assert module in ("attention.k_proj", "attention.v_proj", "mlp.up_proj"), key
    return out


def hub_file(encoder, tmp_path, name="hub.pth", chunks=0, edit=None):
    state = hf_to_hub(encoder.backbone.state_dict(), chunks)
    if edit:
        edit(state)
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize(
    "make,chunks",
    [(dino, 0), (dino_reg, 0), (webssl, 0), (webssl, 2)],
    ids=["dinov2-mlp", "dinov2-registers", "webssl-swiglu", "webssl-chunked"],
)
def test_torch_hub_state_dict_round_trip(make, chunks, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        source = make()
    path = hub_file(source, tmp_path, chunks=chunks)
    keys = torch.load(path, weights_only=True)
    assert any(".attn.qkv." in k for k in keys) and "pos_embed" in keys
    loaded = make(weights=path)
    same_outputs(source, loaded, images())
    fresh = make()  # a different random init really differs (the check above is not vacuous)
    assert not torch.allclose(fresh(images()).global_token, source(images()).global_token)


def test_swiglu_with_registers_round_trip(tmp_path):
    shape = vit.VitShape(hidden=48, layers=3, heads=3, swiglu=True, registers=4, layerscale=1e-5)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        model = vit.build_backbone(vit.hf_config(shape, RES))
    path = tmp_path / "reg_swiglu.pth"
    hub = hf_to_hub(model.state_dict())
    assert {"register_tokens", "blocks.0.mlp.w12.weight", "blocks.2.mlp.w3.bias"} <= set(hub)
    torch.save({"model": hub}, path)  # a wrapped checkpoint is unwrapped too
    loaded = vit.load_backbone(shape, str(path), "test", RES)
    x = backbone_input(images())
    want = model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(loaded(pixel_values=x).last_hidden_state, want)


def test_hub_checkpoint_at_another_resolution_interpolates(tmp_path):
    source = dino()  # position embeddings for 56 px
    path = hub_file(source, tmp_path)
    big = dino(weights=path, resolution=84)
    assert big.backbone.embeddings.position_embeddings.shape[1] == 17  # kept from the checkpoint
    assert big(images()).local[0].shape == (2, 32, 6, 6)


# -- weights: Hugging Face folders -----------------------------------------------------------


@THREE
def test_hugging_face_folder(make, tmp_path):
    source = make()
    source.backbone.save_pretrained(tmp_path)  # writes the Hub's names (attention.attention.query, ...)
    loaded = make(weights=str(tmp_path))
    same_outputs(source, loaded, images())


def test_hugging_face_folder_with_current_names_and_bin(tmp_path):
    source = webssl()
    source.backbone.config.save_pretrained(tmp_path)
    save_file(dict(source.backbone.state_dict()), str(tmp_path / "model.safetensors"))
    same_outputs(source, webssl(weights=str(tmp_path)), images())
    (tmp_path / "model.safetensors").unlink()
    torch.save(dict(source.backbone.state_dict()), tmp_path / "pytorch_model.bin")
    same_outputs(source, webssl(weights=str(tmp_path)), images())


def test_single_file_with_hugging_face_names(tmp_path):
    source = dino_reg()
    source.backbone.save_pretrained(tmp_path)  # legacy names in model.safetensors
    same_outputs(source, dino_reg(weights=str(tmp_path / "model.safetensors")), images())
    torch.save(dict(source.backbone.state_dict()), tmp_path / "current.pth")  # installed names
    same_outputs(source, dino_reg(weights=str(tmp_path / "current.pth")), images())


def test_hugging_face_config_must_match_the_variant(tmp_path):
    dino().backbone.save_pretrained(tmp_path)  # GELU MLP
    with pytest.raises(GsheadError, match=r"config\.json describes .*mlp.*expects .*swiglu") as err:
        webssl(weights=str(tmp_path))
    assert "\n" not in str(err.value)


# -- weights: errors ---------------------------------------------------------------------------


def one_line_error(fn) -> str:
    with pytest.raises(GsheadError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_missing_path_is_one_line(tmp_path):
    message = one_line_error(lambda: dino(weights=str(tmp_path / "nope.pth")))
    assert "nope.pth" in message and "no such file" in message


def test_corrupt_state_dict_lists_keys(tmp_path):
    def corrupt(state):
        del state["blocks.1.attn.qkv.weight"]
        state["blocks.0.attn.bogus.weight"] = torch.zeros(3)

    path = hub_file(dino(), tmp_path, edit=corrupt)
    message = one_line_error(lambda: dino(weights=path))
    assert "missing 3 keys" in message and "encoder.layer.1.attention.q_proj.weight" in message
    assert "unexpected 1 keys" in message and "attn.bogus.weight" in message


def test_mismatched_architecture_is_one_line(tmp_path):
    path = hub_file(dino(), tmp_path)  # no register tokens
    message = one_line_error(lambda: dino(weights=path, registers=True))
    assert "embeddings.register_tokens" in message and "0 registers" in message
    wrong = hub_file(webssl(), tmp_path, name="swiglu.pth")
    message = one_line_error(lambda: dino(weights=wrong))
    assert "mlp.fc1" in message and "swiglu" in message


def test_unreadable_file_is_one_line(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    assert "not a readable torch state dict" in one_line_error(lambda: dino(weights=str(path)))
    fake = tmp_path / "junk.safetensors"
    fake.write_bytes(b"\x00" * 16)
    assert "unreadable safetensors" in one_line_error(lambda: dino(weights=str(fake)))
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "config.json" in one_line_error(lambda: dino(weights=str(folder)))


# -- freezing, warnings, parameter counts ------------------------------------------------------


def test_frozen_backbone_has_no_gradients():
    enc = dino()
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.backbone.training
    feats = enc(images())
    assert not feats.local[0].requires_grad and not feats.global_token.requires_grad


def test_trainable_backbone_gets_gradients():
    enc = dino(frozen=False)
    enc.train()
    assert enc.backbone.training
    feats = enc(images())
    (sum(m.square().mean() for m in feats.local) + feats.global_token.sum()).backward()
    named = dict(enc.backbone.named_parameters())
    unused = {"embeddings.mask_token"}  # only used for masked-image pretraining
    assert all(named[n].grad is not None for n in named if n not in unused)
    assert named["embeddings.patch_embeddings.projection.weight"].grad.abs().sum() > 0


def test_loaded_weights_can_be_trainable(tmp_path):
    path = hub_file(dino(), tmp_path)
    enc = dino(weights=path, frozen=False)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in enc.parameters())
    enc(images()).global_token.sum().backward()
    assert enc.backbone.layernorm.weight.grad is not None


@pytest.mark.filterwarnings("default")
def test_random_init_warns_once_per_variant(tmp_path):
    vit._WARNED_RANDOM.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = dino()
        dino(layers=(0,))
        dino(registers=True)
        dino(weights=hub_file(source, tmp_path))
    messages = [str(w.message) for w in caught if "randomly initialised" in str(w.message)]
    assert len(messages) == 2, messages
    assert "dinov2 tiny " in messages[0] and "dinov2 tiny-reg" in messages[1]


@pytest.mark.parametrize(
    "cls,config",
    [
        (Dinov2Encoder, Dinov2Config(variant="tiny")),
        (Dinov2Encoder, Dinov2Config(variant="tiny", registers=True, resolution=70)),
        (WebSSLEncoder, WebSSLConfig(size="tiny")),
    ],
)
def test_parameter_count_is_exact_for_tiny(cls, config):
    built = cls(config)
    assert cls.parameter_count(config) == sum(p.numel() for p in built.parameters())


def test_parameter_counts_of_real_sizes_use_no_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    variants = ("vits14", "vitb14", "vitl14", "vitg14")
    d = {v: Dinov2Encoder.parameter_count(Dinov2Config(variant=v)) for v in variants}
    w = {s: WebSSLEncoder.parameter_count(WebSSLConfig(size=s)) for s in ("300m", "1b")}
    assert 21e6 < d["vits14"] < 23e6
    assert 85e6 < d["vitb14"] < 88e6
    assert 300e6 < d["vitl14"] < 308e6
    assert 1.1e9 < d["vitg14"] < 1.2e9
    assert 0.29e9 < w["300m"] < 0.32e9
    assert 1.0e9 < w["1b"] < 1.2e9
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 1_000_000, f"counting grew peak memory by {grown} KiB; should be on the meta device"


# -- the pipeline contract -------------------------------------------------------------------


@pytest.mark.parametrize(
    "slot",
    [
        {"name": "dinov2", "variant": "tiny", "resolution": RES},
        {"name": "dinov2", "variant": "tiny", "registers": True, "resolution": RES},
        {"name": "webssl", "size": "tiny", "resolution": RES},
    ],
    ids=["dinov2", "dinov2-reg", "webssl"],
)
def test_contract(slot, registry):
    check_component("encoder", slot, registry=registry)
    check_pipeline(registry=registry, encoder=slot)
