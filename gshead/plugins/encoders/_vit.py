"""Shared code for the DINOv2-family ViT encoders (``dinov2``, ``webssl``).

Not a plugin itself (it registers nothing). What it provides:

- ``VitShape``: the architecture of one variant (width, depth, heads, MLP kind, registers);
- ``build_backbone``: a ``transformers`` ``Dinov2Model`` (``Dinov2WithRegistersModel`` when the
  variant has register tokens) built from a shape;
- weight loading from a LOCAL path only (nothing is ever downloaded):
  a Hugging Face model folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
  sharded or not) or a torch-hub style DINOv2 state dict (``.pth``/``.pt``), converted to the
  installed transformers' parameter names by ``hub_to_hf``;
- ``VitEncoder``: resize to ``resolution``, ImageNet-normalise, run the ViT with
  ``output_hidden_states=True``, and return the chosen blocks' patch tokens as maps
  [B, D, resolution/14, resolution/14] plus the final layer-normed CLS token as the global token.

Parameter names. The installed transformers (5.x) names Dinov2 parameters ``encoder.layer.N.
attention.{q,k,v,o}_proj`` and ``mlp.{fc1,fc2}`` / ``mlp.{gate,up,down}_proj`` (SwiGLU). Older
Hugging Face checkpoints (the ones on the Hub) use ``attention.attention.{query,key,value}``,
``attention.output.dense`` and ``mlp.weights_in`` / ``mlp.weights_out``; ``legacy_hf_to_hf``
renames those. torch-hub (facebookresearch/dinov2 and webssl) names map as follows:

=================================  ===================================================
torch hub                          transformers (installed)
=================================  ===================================================
``cls_token``                      ``embeddings.cls_token``
``pos_embed``                      ``embeddings.position_embeddings``
``mask_token``                     ``embeddings.mask_token``
``register_tokens``                ``embeddings.register_tokens``
``patch_embed.proj.*``             ``embeddings.patch_embeddings.projection.*``
``blocks.N.norm1.*`` / ``norm2.*`` ``encoder.layer.N.norm1.*`` / ``norm2.*``
``blocks.N.attn.qkv.*``            split in 3 along dim 0: ``...attention.{q,k,v}_proj.*``
``blocks.N.attn.proj.*``           ``encoder.layer.N.attention.o_proj.*``
``blocks.N.ls1.gamma`` / ``ls2``   ``encoder.layer.N.layer_scale1.lambda1`` / ``layer_scale2``
``blocks.N.mlp.fc1.*`` / ``fc2.*`` ``encoder.layer.N.mlp.fc1.*`` / ``fc2.*``
``blocks.N.mlp.w12.*``             split in 2 along dim 0: ``mlp.gate_proj.*``, ``mlp.up_proj.*``
``blocks.N.mlp.w3.*``              ``encoder.layer.N.mlp.down_proj.*``
``norm.*``                         ``layernorm.*``
=================================  ===================================================

Chunked checkpoints (``block_chunks=4``: ``blocks.C.N.*``, as the WebSSL .pth files) are
un-chunked first; a ``module.`` prefix and a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper
are removed. A single ``.pth``/``.safetensors`` file may also use Hugging Face names (legacy or
current); it is then loaded without a config (the variant's shape, position embeddings from the
file). Anything else that does not map (e.g. classifier heads) is reported as unexpected.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gshead.core.errors import AvatarFileError, GsheadError, ShapeError
from gshead.core.types import FeatureMaps
from gshead.io.weights import preview_keys, state_dict_problems

PATCH = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_LAYERS = 4  # GAGAvatar (and DINOv2's DPT heads) read the last 4 blocks

_WARNED_RANDOM: set[str] = set()  # labels already warned about random initialisation


@dataclass(frozen=True)
class VitShape:
    """The architecture of one ViT variant (patch 14, MLP ratio 4)."""

    hidden: int  # token width D
    layers: int  # transformer blocks
    heads: int  # attention heads (hidden % heads == 0)
    swiglu: bool = False  # SwiGLU MLP (DINOv2-g, WebSSL) instead of GELU fc1/fc2
    registers: int = 0  # register tokens after the CLS token
    layerscale: float = 1.0  # LayerScale init (only matters for random init)

    def describe(self) -> str:
        mlp = "swiglu" if self.swiglu else "mlp"
        return (
            f"hidden={self.hidden}, {self.layers} blocks, {self.heads} heads, {mlp}, "
            f"{self.registers} registers"
        )


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is installed in the dev env
        raise GsheadError(
            "ViT encoders need the `transformers` package; install it with `pip install 'gshead[vit]'`"
        ) from exc
    return transformers


def hf_config(shape: VitShape, image_size: int):
    """A ``Dinov2Config`` (or ``Dinov2WithRegistersConfig``) for ``shape``; ``image_size`` sizes the
    position embeddings ((image_size/14)^2 + 1 of them)."""
    tf = _transformers()
    common = dict(
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        mlp_ratio=4,
        image_size=image_size,
        patch_size=PATCH,
        layerscale_value=shape.layerscale,
        use_swiglu_ffn=shape.swiglu,
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    if shape.registers:
        return tf.Dinov2WithRegistersConfig(num_register_tokens=shape.registers, **common)
    return tf.Dinov2Config(**common)


def build_backbone(config) -> nn.Module:
    """A randomly initialised transformers Dinov2 model for ``config`` (on the current default device)."""
    tf = _transformers()
    if getattr(config, "model_type", "") == "dinov2_with_registers":
        model = tf.Dinov2WithRegistersModel(config)
    else:
        model = tf.Dinov2Model(config)
    probe = "encoder.layer.0.attention.q_proj.weight"
    if config.num_hidden_layers and probe not in dict(model.named_parameters()):
        raise GsheadError(
            f"transformers {tf.__version__} names Dinov2 parameters differently from what gshead maps to "
            f"(expected {probe!r}); install transformers>=5"
        )
    return model


def shape_of_hf_config(config) -> VitShape:
    """The ``VitShape`` a Hugging Face Dinov2 config describes."""
    if int(getattr(config, "mlp_ratio", 4)) != 4 or getattr(config, "patch_size", PATCH) != PATCH:
        raise GsheadError(
            f"unsupported Dinov2 config: mlp_ratio={config.mlp_ratio}, patch_size={config.patch_size}; "
            f"expected mlp_ratio=4, patch_size={PATCH}"
        )
    return VitShape(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        swiglu=bool(config.use_swiglu_ffn),
        registers=int(getattr(config, "num_register_tokens", 0) or 0),
        layerscale=float(config.layerscale_value),
    )


def _same_architecture(a: VitShape, b: VitShape) -> bool:
    def key(s: VitShape) -> tuple:
        return (s.hidden, s.layers, s.heads, s.swiglu, s.registers)

    return key(a) == key(b)


def count_parameters(shape: VitShape, image_size: int) -> int:
    """Parameters of the backbone for ``shape`` built on the ``meta`` device (no memory is allocated)."""
    with torch.device("meta"):
        model = build_backbone(hf_config(shape, image_size))
    return sum(p.numel() for p in model.parameters())


# -- key mapping ---------------------------------------------------------------------------

_HUB_BLOCK_RENAMES = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.proj.", "attention.o_proj."),
    ("ls1.gamma", "layer_scale1.lambda1"),
    ("ls2.gamma", "layer_scale2.lambda1"),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
    ("mlp.w3.", "mlp.down_proj."),
)
_HUB_TOP_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _split(value: Tensor, parts: int, key: str) -> tuple[Tensor, ...]:
    if value.shape[0] % parts:
        raise AvatarFileError(f"weights: {key} has {value.shape[0]} rows, not divisible by {parts}")
    return tuple(t.clone() for t in value.chunk(parts, dim=0))


def hub_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torch-hub DINOv2 state dict renamed to the installed transformers' Dinov2 names.

    Keys that have no mapping are kept under their own name (a strict load then reports them
    as unexpected)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = _CHUNKED.sub(r"blocks.\1.", key)
        if key in _HUB_TOP_RENAMES:
            out[_HUB_TOP_RENAMES[key]] = value
            continue
        m = _BLOCK.match(key)
        if m is None:
            out[key] = value
            continue
        prefix, rest = f"encoder.layer.{m.group(1)}.", m.group(2)
        if rest.startswith("attn.qkv."):
            suffix = rest[len("attn.qkv.") :]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), _split(value, 3, key)):
                out[f"{prefix}attention.{name}.{suffix}"] = part
        elif rest.startswith("mlp.w12."):
            suffix = rest[len("mlp.w12.") :]
            gate, up = _split(value, 2, key)  # DINOv2's SwiGLU: silu(first half) * second half
            out[f"{prefix}mlp.gate_proj.{suffix}"] = gate
            out[f"{prefix}mlp.up_proj.{suffix}"] = up
        else:
            for old, new in _HUB_BLOCK_RENAMES:
                if rest.startswith(old):
                    out[prefix + new + rest[len(old) :]] = value
                    break
            else:
                out[key] = value
    return out


_LEGACY_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
    (".mlp.weights_out.", ".mlp.down_proj."),
)


def legacy_hf_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Older Hugging Face Dinov2 names (as on the Hub) renamed to the installed transformers' names.

    Also drops a ``dinov2.`` prefix (a ``Dinov2ForImageClassification`` checkpoint's backbone)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("dinov2."):
            key = key[len("dinov2.") :]
        if ".mlp.weights_in." in key:
            gate, up = _split(value, 2, key)
            out[key.replace(".mlp.weights_in.", ".mlp.gate_proj.")] = gate
            out[key.replace(".mlp.weights_in.", ".mlp.up_proj.")] = up
            continue
        for old, new in _LEGACY_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def shape_of_state_dict(state: dict[str, Tensor]) -> str:
    """What a (converted) state dict looks like, for error messages."""
    cls = state.get("embeddings.cls_token")
    hidden = cls.shape[-1] if cls is not None else "?"
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^encoder\.layer\.(\d+)\.", k))}
    mlp = "swiglu" if any(".mlp.gate_proj." in k for k in state) else "mlp"
    reg = state.get("embeddings.register_tokens")
    registers = reg.shape[1] if reg is not None and reg.dim() == 3 else 0
    return f"hidden={hidden}, {len(blocks)} blocks, {mlp}, {registers} registers"


def load_strict(model: nn.Module, state: dict[str, Tensor], source: str, expected: str) -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or mis-shaped key is a one-line error."""
    problems = state_dict_problems(model.state_dict(), state)
    if problems:
        raise AvatarFileError(
            f"weights {source} do not fit ({expected}); checkpoint looks like "
            f"{shape_of_state_dict(state)}: " + "; ".join(problems)
        )
    # float32 like a randomly built backbone; ``assign`` so a model built on the meta device
    # takes the checkpoint's tensors without first allocating (and initialising) its own
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise AvatarFileError(f"weights {source}: nothing loaded into {preview_keys(left, 4)}")


# -- reading local weights -----------------------------------------------------------------


def _torch_load(path: Path) -> Any:
    from gshead.io.weights import load_weights_only

    return load_weights_only(path, "torch state dict", AvatarFileError, mmap=True)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """A plain ``{name: tensor}`` dict from a loaded checkpoint object."""
    if isinstance(obj, dict) and not all(isinstance(v, Tensor) for v in obj.values()):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise AvatarFileError(f"weights {path}: expected a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AvatarFileError(f"weights {file}: unreadable safetensors file ({first})") from exc


def _read_hf_weights(folder: Path) -> dict[str, Tensor]:
    def read(file: Path) -> dict[str, Tensor]:
        if file.suffix == ".safetensors":
            return _read_safetensors(file)
        return _unwrap(_torch_load(file), file)

    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return read(folder / single)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except Exception as exc:
                raise AvatarFileError(f"weights {folder / index}: unreadable index ({exc})") from exc
            state: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                state.update(read(folder / shard))
            return state
    raise AvatarFileError(
        f"weights {folder}: no model.safetensors or pytorch_model.bin (or a sharded index) in this folder"
    )


def _read_hf_config(folder: Path):
    tf = _transformers()
    try:
        raw = json.loads((folder / "config.json").read_text())
    except Exception as exc:
        raise AvatarFileError(f"weights {folder / 'config.json'}: unreadable ({exc})") from exc
    kind = raw.get("model_type")
    classes = {"dinov2": tf.Dinov2Config, "dinov2_with_registers": tf.Dinov2WithRegistersConfig}
    if kind not in classes:
        raise AvatarFileError(
            f"weights {folder}: config.json has model_type {kind!r}; "
            "expected 'dinov2' or 'dinov2_with_registers'"
        )
    try:
        return classes[kind].from_dict(raw)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise AvatarFileError(f"weights {folder / 'config.json'}: invalid Dinov2 config ({first})") from exc


def load_backbone(shape: VitShape, weights: str | None, label: str, default_image_size: int) -> nn.Module:
    """The backbone for ``shape``: random (``weights`` None, warns once per ``label``) or loaded
    from a local Hugging Face folder or torch-hub ``.pth``; its architecture must match ``shape``."""
    if weights is None:
        if label not in _WARNED_RANDOM:
            _WARNED_RANDOM.add(label)
            warnings.warn(
                f"gshead: encoder {label} has no `weights` configured and runs randomly initialised",
                stacklevel=3,
            )
        return build_backbone(hf_config(shape, default_image_size))

    path = Path(weights).expanduser()
    if not path.exists():
        raise AvatarFileError(f"weights {path} for encoder {label}: no such file or folder")
    expected = f"encoder {label} expects {shape.describe()}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AvatarFileError(f"weights {path}: a Hugging Face model folder needs a config.json")
        config = _read_hf_config(path)
        found = shape_of_hf_config(config)
        if not _same_architecture(found, shape):
            raise AvatarFileError(
                f"weights {path}: config.json describes {found.describe()}, but {expected}"
            )
        state = legacy_hf_to_hf(_read_hf_weights(path))
        with torch.device("meta"):  # filled by load_strict; the folder's config is authoritative
            model = build_backbone(config)
    else:
        if path.suffix == ".safetensors":
            raw = _read_safetensors(path)
        else:
            raw = _unwrap(_torch_load(path), path)
        state = legacy_hf_to_hf(hub_to_hf(raw))  # torch-hub names, or Hugging Face names in one file
        pos = state.get("embeddings.position_embeddings")
        if pos is None or pos.dim() != 3:
            raise AvatarFileError(
                f"weights {path}: no pos_embed [1, N, D]; expected a torch-hub DINOv2 state dict "
                f"(keys like {preview_keys(list(state))})"
            )
        side = round((pos.shape[1] - 1) ** 0.5)
        if side * side != pos.shape[1] - 1:
            raise AvatarFileError(
                f"weights {path}: pos_embed has {pos.shape[1]} tokens, not a square grid + CLS"
            )
        with torch.device("meta"):  # filled by load_strict
            model = build_backbone(hf_config(shape, side * PATCH))
    load_strict(model, state, str(path), expected)
    return model


# -- the encoder ---------------------------------------------------------------------------


def resolve_layers(layers: tuple[int, ...] | None, depth: int) -> tuple[int, ...]:
    """Block indices (0-based; negative count from the end) as non-negative indices.

    ``None``: the last ``min(4, depth)`` blocks. Raises ``ValueError`` on an out-of-range or
    repeated index, or an empty selection."""
    if layers is None:
        return tuple(range(max(depth - DEFAULT_LAYERS, 0), depth))
    if not layers:
        raise ValueError("layers: select at least one block")
    out = []
    for i in layers:
        if not -depth <= i < depth:
            raise ValueError(
                f"layers: block {i} is out of range for a {depth}-block ViT "
                f"(use 0..{depth - 1} or -1..-{depth})"
            )
        out.append(i % depth)
    if len(set(out)) != len(out):
        raise ValueError(f"layers: repeated block in {list(layers)}")
    return tuple(out)


def check_resolution(resolution: int) -> int:
    if resolution % PATCH:
        raise ValueError(
            f"resolution {resolution} is not a multiple of the patch size {PATCH} (e.g. 224 or 518)"
        )
    return resolution


class VitEncoder(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> one [B, D, r/14, r/14] map per selected block + CLS token [B, D].

    The image is resized (bilinear, antialiased) to ``resolution`` x ``resolution`` whatever its
    size or aspect, then ImageNet-normalised. A frozen backbone runs under ``torch.no_grad`` and
    stays in eval mode even when the encoder is put in training mode.
    """

    def __init__(
        self,
        label: str,
        shape: VitShape,
        resolution: int,
        layers: tuple[int, ...] | None,
        layer_norm: bool,
        weights: str | None,
        frozen: bool,
        global_token: str = "cls",
    ) -> None:
        """``global_token``: ``"cls"`` (the final layer-normed CLS token) or ``"first_patch"`` (the
        final layer-normed first *patch* token: what GAGAvatar's code calls its global feature,
        because DINOv2's ``get_intermediate_layers`` drops the CLS token before it takes ``[:, 0]``)."""
        super().__init__()
        if global_token not in ("cls", "first_patch"):
            raise ValueError(f"{label}: global_token must be 'cls' or 'first_patch', got {global_token!r}")
        self.global_token = global_token
        self.label = label
        self.resolution = check_resolution(resolution)
        self.layers = resolve_layers(layers, shape.layers)
        self.layer_norm = layer_norm
        self.frozen = frozen
        self.prefix_tokens = 1 + shape.registers  # CLS, then registers, then patches
        self.backbone = load_backbone(shape, weights, label, resolution)
        self.out_channels: tuple[int, ...] = (shape.hidden,) * len(self.layers)
        self.global_channels: int = shape.hidden
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, image: Tensor) -> FeatureMaps:
        # image: [B, 3, H, W] in [0, 1]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ShapeError(f"{self.label}: expected an image batch [B, 3, H, W], got {list(image.shape)}")
        r = self.resolution
        x = image.to(self.mean.dtype)
        if tuple(x.shape[-2:]) != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std  # [B, 3, r, r]
        grid = r // PATCH
        context = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with context:
            out = self.backbone(pixel_values=x, output_hidden_states=True)
            hidden = out.hidden_states  # embeddings, then one [B, T, D] per block
            maps = []
            for i in self.layers:
                tokens = hidden[i + 1]
                if self.layer_norm:
                    tokens = self.backbone.layernorm(tokens)
                patches = tokens[:, self.prefix_tokens :]  # [B, grid*grid, D]
                b, n, d = patches.shape
                maps.append(patches.transpose(1, 2).reshape(b, d, grid, grid))
            first = self.prefix_tokens if self.global_token == "first_patch" else 0
            token = out.last_hidden_state[:, first]  # [B, D] final layer-normed CLS (or first patch)
        return FeatureMaps(image=image, local=tuple(maps), global_token=token)


__all__ = [
    "PATCH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VitShape",
    "VitEncoder",
    "hf_config",
    "build_backbone",
    "count_parameters",
    "hub_to_hf",
    "legacy_hf_to_hf",
    "load_backbone",
    "load_strict",
    "resolve_layers",
]
