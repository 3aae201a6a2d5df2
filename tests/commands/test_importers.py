"""``gshead import gagavatar`` and ``load_pipeline_weights`` on a synthetic GAGAvatar checkpoint.

No real checkpoint is shipped: the checkpoint is built from the reference manifest (every one of
GAGAvatar's 561 keys at its real shape, random values, plus training-only ``percep_loss.*`` keys)
and the head model from a synthetic FLAME file (FLAME's keys and shapes, random contents). The
official-size pipeline is built once for the module; error cases use tiny stride-0 checkpoints.
The expected key mapping and the forward passes are written here independently of gshead's code.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from gshead.cli import main
from gshead.commands.importers import import_gagavatar
from gshead.core.errors import AvatarFileError, ConfigError
from gshead.core.pipeline import Pipeline
from gshead.io.weights import load_pipeline_weights
from gshead.testing import tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
# Every key and shape of GAGAvatar's model state dict (facts copied from shared/reference).
MANIFEST = ROOT / "tests" / "data" / "gagavatar_state_dict_manifest.json"
V_FLAME, F_FLAME = 5023, 9976



def _manifest() -> dict[str, list[int]]:
    return json.loads(MANIFEST.read_text())


def write_synthetic_flame(path: Path, seed: int = 0) -> None:
    """A GAGAvatar-style ``FLAME_with_eye.pt`` (``{'flame_model': {...}}``) with random contents."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(V_FLAME, 3, generator=g, dtype=torch.float64)
    a = torch.randint(0, V_FLAME, (F_FLAME,), generator=g)
    b = (a + 1 + torch.randint(0, 2510, (F_FLAME,), generator=g)) % V_FLAME  # offsets 1..2510
    c = (a + 2511 + torch.randint(0, 2511, (F_FLAME,), generator=g)) % V_FLAME  # offsets 2511..5021
    reg = torch.zeros(5, V_FLAME, dtype=torch.float64)
    for j in range(5):
        reg[j, torch.randint(0, V_FLAME, (12,), generator=g)] = 1 / 12
    w = torch.rand(V_FLAME, 5, generator=g, dtype=torch.float64)
    model = {
        "v_template": 0.1 * d / d.norm(dim=1, keepdim=True),
        "f": torch.stack([a, b, c], dim=1),
        "shapedirs": 2e-3 * torch.randn(V_FLAME, 3, 400, generator=g, dtype=torch.float64),
        "posedirs": 1e-2 * torch.randn(V_FLAME, 3, 36, generator=g, dtype=torch.float64),
        "J_regressor": reg,
        "kintree_table": torch.tensor([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        "weights": w / w.sum(1, keepdim=True),
    }
    torch.save({"flame_model": model}, path)


def expected_weights(ckpt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GAGAvatar keys -> gshead ``<slot>.<param>`` (transformers 5 Dinov2 names), written independently."""
    top = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "mask_token": "embeddings.mask_token",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    renames = {"attn.proj.": "attention.o_proj.", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
    out = {}
    for k, v in ckpt.items():
        if k.startswith(("percep_loss.", "upsampler.toRGB.")):
            continue
        if k.startswith("base_model.dino_model."):
            r = k[len("base_model.dino_model.") :]
            if r in top:
                out["encoder.backbone." + top[r]] = v
                continue
            i, rest = re.fullmatch(r"blocks\.(\d+)\.(.+)", r).groups()
            p = f"encoder.backbone.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                suffix = rest[len("attn.qkv.") :]
                n = v.shape[0] // 3
                for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[f"{p}attention.{name}.{suffix}"] = v[j * n : (j + 1) * n]
                continue
            for old, new in renames.items():
                rest = rest.replace(old, new)
            out[p + rest] = v
        elif k.startswith("base_model."):
            out["lifter.dpt." + k[len("base_model.") :]] = v
        elif m := re.fullmatch(r"gs_generator_l(\d)\.(gaussian_conv\..+)", k):
            out[f"lifter.heads.{m.group(1)}.{m.group(2)}"] = v
        elif k.startswith("gs_generator_g."):
            out["driver." + k[len("gs_generator_g.") :]] = v
        elif k == "head_base":
            out["driver.head_base"] = v
        elif k.startswith("upsampler."):
            out["refiner." + k[len("upsampler.") :]] = v
        else:
            raise AssertionError(f"unmapped manifest key {k}")
    return out


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The official-size pipeline (synthetic FLAME), a synthetic checkpoint, the imported file."""
    root = tmp_path_factory.mktemp("gagavatar")
    flame = root / "FLAME_with_eye.pt"
    write_synthetic_flame(flame)
    cfg = yaml.safe_load((ROOT / "configs" / "gagavatar.yaml").read_text())
    cfg["headmodel"] = {"name": "flame", "path": str(flame)}
    pipeline_yaml = root / "gagavatar.yaml"
    pipeline_yaml.write_text(yaml.safe_dump(cfg))
    with warnings.catch_warnings():  # the DINOv2 backbone starts random (warned once per process)
        warnings.simplefilter("ignore", UserWarning)
        pipeline = Pipeline.from_yaml(pipeline_yaml)

    g = torch.Generator().manual_seed(1)
    model = {k: torch.randn(shape, generator=g) for k, shape in _manifest().items()}
    model["percep_loss.vgg.features.0.weight"] = torch.randn(64, 3, 3, 3, generator=g)
    model["percep_loss.alex.lin0.weight"] = torch.randn(1, 64, 1, 1, generator=g)
    ckpt = root / "gagavatar.pt"
    torch.save({"model": model, "meta_cfg": {"MODEL": {"NAME": "GAGAvatar"}}}, ckpt)
    weights = root / "gagavatar.safetensors"
    summary = import_gagavatar(ckpt, weights, pipeline=pipeline)
    load_pipeline_weights(pipeline, weights)
    return {"root": root, "yaml": pipeline_yaml, "pipeline": pipeline, "model": model, "weights": weights,
            "summary": summary, "ckpt": ckpt}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.startswith("out"))


# ------------------------------------------------------------------------------ the happy path
def test_file_holds_every_mapped_tensor_exactly(official):
    expected = expected_weights(official["model"])
    assert len(official["model"]) == 561 + 2 and len(expected) == 561 - 14 + 12 * 4  # toRGB dropped, qkv split
    with safe_open(str(official["weights"]), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(expected)
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            assert torch.equal(f.get_tensor(key), expected[key]), key
    assert meta["format"] == "gshead.weights" and meta["format_version"] == "1"
    assert meta["source"] == "gagavatar gagavatar.pt"
    stored = json.loads(meta["pipeline"])
    assert stored == official["pipeline"].config.model_dump(mode="json")
    assert stored["lifter"]["feature_size"] == 296 and stored["refiner"]["depth"] == 7
    assert official["summary"]["dropped"] == 16  # 14 upsampler.toRGB.* + 2 percep_loss.*


def test_load_weights_puts_exactly_those_tensors_in_the_modules(official):
    expected = expected_weights(official["model"])
    seen = 0
    for slot in ("encoder", "lifter", "driver", "refiner"):
        state = getattr(official["pipeline"], slot).state_dict()
        for key, value in state.items():
            assert torch.equal(value, expected[f"{slot}.{key}"]), f"{slot}.{key}"
            seen += 1
    assert seen == len(expected)


def test_plane_head_forward_matches_raw_convolutions(official):
    raw = official["model"]
    head = official["pipeline"].lifter.heads[0]
    x = torch.randn(1, 283, 9, 7, generator=torch.Generator().manual_seed(2))

    def conv(t, i, pad):
        p = f"gs_generator_l0.gaussian_conv.{i}."
        return F.conv2d(t, raw[p + "weight"], raw[p + "bias"], padding=pad)

    ref = conv(F.relu(conv(F.relu(conv(F.relu(conv(x, 0, 1)), 2, 1)), 4, 1)), 6, 0)
    with torch.no_grad():
        out = head(x)
    assert out.shape == (1, 41, 9, 7)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_expression_mlp_matches_raw_linear_layers(official):
    raw = official["model"]
    driver = official["pipeline"].driver
    g = torch.Generator().manual_seed(3)
    token = torch.randn(1, 768, generator=g)
    direction = F.normalize(torch.randn(1, 3, generator=g), dim=-1)

    def lin(t, name):
        return F.linear(t, raw[f"gs_generator_g.{name}.weight"], raw[f"gs_generator_g.{name}.bias"])

    x = torch.cat([raw["head_base"], token.expand(V_FLAME, -1)], dim=-1)  # [5023, 1024]
    for i in (0, 2, 4, 6):  # ReLU between the Linears, none after the last (the official MLP)
        x = lin(x, f"feature_layers.{i}")
        x = F.relu(x) if i < 6 else x
    # pytorch3d's HarmonicEmbedding layout: sines (coordinate-major, then frequency), cosines, input
    angles = torch.cat([direction[:, c : c + 1] * 2.0**k for c in range(3) for k in range(4)], dim=-1)
    code = [torch.sin(angles), torch.cos(angles), direction]
    x = torch.cat([x, torch.cat(code, dim=-1).expand(V_FLAME, -1)], dim=-1)  # [5023, 283]

    def head(name):
        return lin(F.relu(lin(x, f"{name}.0")), f"{name}.2")

    colour = head("color_layers")
    with torch.no_grad():
        got = driver.attributes(token, direction)
    tol = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got.features[0], torch.cat([torch.sigmoid(colour[:, :3]), colour[:, 3:]], -1), **tol)
    torch.testing.assert_close(got.opacities[0], torch.sigmoid(head("opacity_layers"))[:, 0], **tol)
    torch.testing.assert_close(got.scales[0], torch.sigmoid(head("scale_layers")) * 0.01, **tol)
    # configs/gagavatar.yaml has compat: official: normalised over the 5,023-vertex axis, as the official code
    torch.testing.assert_close(got.quats[0], F.normalize(head("rotation_layers"), dim=0), **tol)


# ------------------------------------------------------------------------------ errors
def _tiny_checkpoint(path: Path, change=None, wrap: bool = True) -> Path:
    """Every manifest key at its shape as a stride-0 view of one number (a few kB on disk)."""
    one = torch.zeros(1)
    model = {k: one.expand(shape) if shape else one[0] for k, shape in _manifest().items()}
    if change:
        change(model)
    torch.save({"model": model, "meta_cfg": {}} if wrap else model, path)
    return path


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, shape):
    return lambda m: m.__setitem__(key, torch.zeros(1).expand(shape))


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        (_drop("gs_generator_g.color_layers.2.bias"), AvatarFileError, r"missing 1 keys: gs_generator_g\.color_layers\.2\.bias \(driver\.color_layers\.2\.bias\)$"),
        (_drop("base_model.dino_model.blocks.3.attn.qkv.weight"), AvatarFileError,
         r"missing 3 keys: base_model\.dino_model\.\* \(encoder\.backbone\.encoder\.layer\.3\.attention\.k_proj\.weight\)"),
        (_set("gs_generator_x.weight", [3]), AvatarFileError, r"unexpected 1 keys: gs_generator_x\.weight"),
        (_set("upsampler.extra.weight", [3]), AvatarFileError, r"unexpected 1 keys: upsampler\.extra\.weight \(refiner\.extra\.weight\)"),
        (_set("head_base", [5023, 128]), AvatarFileError,
         r"1 keys of the wrong shape: head_base \(driver\.head_base\) \[5023, 128\] != \[5023, 256\]"),
        (_set("base_model.layer_rn.0.weight", [256, 256, 3, 3]), AvatarFileError,
         (r"wrong shape: base_model\.layer_rn\.0\.weight \(lifter\.dpt\.layer_rn\.0\.weight\) "
          r"\[256, 256, 3, 3\] != \[256, 259, 3, 3\]")),
        (_set("head_base", [100, 256]), ConfigError, r"head_base has 100 rows .* 5023 vertices"),
    ],
)
def test_bad_checkpoints_give_one_line_and_no_output(official, tmp_path, change, error, pattern):
    ckpt = _tiny_checkpoint(tmp_path / "bad.pt", change)
    out = tmp_path / "out.safetensors"
    with pytest.raises(error, match=pattern) as info:
        import_gagavatar(ckpt, out, pipeline=official["pipeline"])
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []


def test_bare_state_dict_is_accepted_but_still_checked(official, tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "bare.pt", _drop("head_base"), wrap=False)
    with pytest.raises(AvatarFileError, match=r"missing 1 keys: head_base \(driver\.head_base\)"):
        import_gagavatar(ckpt, tmp_path / "out.safetensors", pipeline=official["pipeline"])


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "not-a-dict"])
def test_unreadable_checkpoints_give_one_line_and_no_output(official, tmp_path, kind):
    ckpt = tmp_path / "bad.pt"
    if kind == "garbage":
        ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    elif kind == "truncated":
        data = _tiny_checkpoint(tmp_path / "whole.pt").read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save([torch.zeros(2)], ckpt)
    out = tmp_path / "out.safetensors"
    with pytest.raises(AvatarFileError, match=r"bad\.pt: (not a readable|expected a state dict)") as info:
        import_gagavatar(ckpt, out, pipeline=official["pipeline"])
    assert "\n" not in str(info.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_cli_import_errors_are_one_line_with_status_2(tmp_path, capsys):
    ckpt = tmp_path / "broken.pth"
    ckpt.write_bytes(b"\x80\x02 not a zip")
    out = tmp_path / "out.safetensors"
    assert main(["import", "gagavatar", str(ckpt), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gshead: error: ") and ("broken.pth: not a readable" in err or "broken.pth: checkpoint refused" in err) and "\n" not in err
    assert not out.exists()


def test_cli_import_writes_the_same_file(official, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(["import", "gagavatar", str(official["ckpt"]), "-o", str(out), "--pipeline", str(official["yaml"])])
    assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().err
    assert _header(out) == _header(official["weights"])  # names, shapes, offsets and metadata
    with open(out, "rb") as a, open(official["weights"], "rb") as b:
        a.seek(8 + struct.unpack("<Q", a.read(8))[0])
        b.seek(8 + struct.unpack("<Q", b.read(8))[0])
        while chunk := a.read(1 << 24):
            assert chunk == b.read(len(chunk))
        assert b.read(1) == b""


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        return json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))


def test_a_pipeline_without_gagavatar_components_is_refused(tmp_path):
    tiny = Pipeline.from_dict(tiny_pipeline())
    ckpt = _tiny_checkpoint(tmp_path / "ok.pt")
    with pytest.raises(ConfigError, match=r"GAGAvatar weights need encoder 'dinov2', lifter 'dual-plane'"):
        import_gagavatar(ckpt, tmp_path / "out.safetensors", pipeline=tiny)
    assert _leftovers(tmp_path) == []


def test_weights_for_a_different_pipeline_are_refused(official, tmp_path):
    tiny = Pipeline.from_dict(tiny_pipeline())
    with pytest.raises(AvatarFileError, match=r"weights for a different pipeline: .* differ") as info:
        load_pipeline_weights(tiny, official["weights"])
    assert "\n" not in str(info.value)


def _tiny_weights(path: Path, pipeline: Pipeline, **meta) -> dict:
    g = torch.Generator().manual_seed(5)
    tensors = {}
    for slot in ("encoder", "lifter", "driver", "refiner"):
        module = getattr(pipeline, slot)
        for k, v in (module.state_dict() if isinstance(module, torch.nn.Module) else {}).items():
            tensors[f"{slot}.{k}"] = torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v
    metadata = {"format": "gshead.weights", "format_version": "1",
                "pipeline": json.dumps(pipeline.config.model_dump(mode="json")), "source": "test"}
    save_file(tensors, str(path), metadata={**metadata, **meta})
    return tensors


def test_bad_weights_files_are_refused_and_nothing_loaded(tmp_path):
    pipeline = Pipeline.from_dict(tiny_pipeline())
    foreign = tmp_path / "avatar.safetensors"
    _tiny_weights(foreign, pipeline, format="gshead.avatar")
    with pytest.raises(AvatarFileError, match="not a gshead pipeline-weights file"):
        load_pipeline_weights(pipeline, foreign)
    whole = tmp_path / "w.safetensors"
    _tiny_weights(whole, pipeline)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(AvatarFileError, match="truncated.safetensors: not a readable"):
        load_pipeline_weights(pipeline, truncated)
    odd = tmp_path / "odd.safetensors"
    tensors = _tiny_weights(odd, pipeline)
    key = next(k for k in tensors if k.startswith("lifter."))  # checked after the driver
    before = {k: v.clone() for k, v in pipeline.driver.state_dict().items()}
    save_file({**tensors, key: torch.zeros(7, 1)}, str(odd), metadata={
        "format": "gshead.weights", "format_version": "1",
        "pipeline": json.dumps(pipeline.config.model_dump(mode="json"))})
    with pytest.raises(AvatarFileError, match=r"do not fit this pipeline: 1 keys of the wrong shape") as info:
        load_pipeline_weights(pipeline, odd)
    assert "\n" not in str(info.value)
    for k, v in pipeline.driver.state_dict().items():  # every slot is checked before any is loaded
        assert torch.equal(v, before[k])


def test_reconstruct_with_weights_uses_them(tmp_path):
    from gshead.io.avatar import load_avatar

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline()))
    pipeline = Pipeline.from_yaml(cfg)
    weights = tmp_path / "tiny.weights.safetensors"
    tensors = _tiny_weights(weights, pipeline)
    avatar = tmp_path / "avatar.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(avatar), "--pipeline", str(cfg),
                 "--weights", str(weights), "-q"]) == 0
    loaded = load_avatar(avatar)
    assert any(k.startswith("driver.") for k in tensors)
    for k, v in loaded.driver.state_dict().items():  # the avatar keeps the driving weights
        assert torch.equal(v, tensors[f"driver.{k}"]), k


@pytest.mark.parametrize(
    ("meta", "pattern"),
    [
        ({"DATASET": {"POINT_PLANE_SIZE": 256}}, r"meta_cfg not supported: DATASET\.POINT_PLANE_SIZE = 256"),
        ({"MODEL": {"NAME": "GAGAvatar_v2"}}, r"MODEL\.NAME = 'GAGAvatar_v2'"),
        ({"DATASET": {"FLAME_SCALE": 1.0, "FOCAL_LENGTH": 12.0}}, r"DATASET\.FLAME_SCALE = 1\.0"),
    ],
)
def test_meta_cfg_gshead_cannot_reproduce_is_refused_in_one_line(tmp_path, meta, pattern):
    from gshead.commands.importers import check_meta

    with pytest.raises(AvatarFileError, match=pattern) as info:
        check_meta(meta, tmp_path / "x.pt")
    assert "\n" not in str(info.value)
    check_meta({"MODEL": {"NAME": "GAGAvatar"}, "DATASET": {"POINT_PLANE_SIZE": 296, "FOCAL_LENGTH": 12}}, tmp_path)
    check_meta(None, tmp_path)  # a bare state dict has none: not checked
