"""``dinov2``: a DINOv2 ViT/14 backbone (transformers ``Dinov2Model``) as the encoder.

As GAGAvatar uses it: the portrait is resized to ``resolution`` (518 -> 37 x 37 patch tokens),
ImageNet-normalised, and the patch tokens of the last 4 blocks (each passed through the final
layernorm, like DINOv2's ``get_intermediate_layers``) become 4 feature maps [B, D, 37, 37]; the
final layer-normed CLS token is the global token [B, D].

``compat: official`` (``configs/gagavatar.yaml``) reproduces the official code instead: its
"global" feature is ``get_intermediate_layers(x, 4)[-1][:, 0]``, and since that function has
already dropped the CLS token, this is the final layer-normed *first patch token* (the top-left
14 x 14 patch), not CLS. GAGAvatar's trained weights expect that vector; ``sane`` (default) uses
CLS, the image-level token, for new training.

Variants (published DINOv2 shapes; patch 14, MLP ratio 4, position embeddings for 518 px in the
released checkpoints):

========  ======  ======  =====  ===========  ===============
variant   hidden  blocks  heads  MLP          parameters
========  ======  ======  =====  ===========  ===============
tiny      32      2       2      GELU         ~45k (tests only)
vits14    384     12      6      GELU         ~22M
vitb14    768     12      12     GELU         ~87M
vitl14    1024    24      16     GELU         ~304M
vitg14    1536    40      24     SwiGLU       ~1.1B
========  ======  ======  =====  ===========  ===============

``registers: true`` adds DINOv2's 4 register tokens (the ``*_reg`` checkpoints); they are
dropped from the maps like the CLS token. ``tiny`` is not a real model: it exists so tests and
CPU experiments can run the whole ViT code path in milliseconds.

Weights come from a local path only (never downloaded): a Hugging Face model folder (e.g. a
snapshot of ``facebook/dinov2-base``) or a torch-hub ``dinov2_vitb14_pretrain.pth``. Without
weights the backbone is randomly initialised and a warning says so (once per process per variant).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from gshead.core.components import BuildContext
from gshead.core.config import EncoderConfig
from gshead.core.hookspecs import hookimpl
from gshead.plugins.encoders._vit import (
    VitEncoder,
    VitShape,
    check_resolution,
    count_parameters,
    resolve_layers,
)

DINOV2_VARIANTS: dict[str, VitShape] = {
    "tiny": VitShape(hidden=32, layers=2, heads=2),
    "vits14": VitShape(hidden=384, layers=12, heads=6),
    "vitb14": VitShape(hidden=768, layers=12, heads=12),
    "vitl14": VitShape(hidden=1024, layers=24, heads=16),
    "vitg14": VitShape(hidden=1536, layers=40, heads=24, swiglu=True),
}
REGISTER_TOKENS = 4  # the DINOv2 "with registers" checkpoints all use 4


class Dinov2Config(EncoderConfig):
    """DINOv2 ViT/14 (transformers): intermediate blocks' patch tokens as maps, CLS as global token."""

    test_fields: ClassVar[dict[str, Any]] = {"variant": "tiny", "resolution": 56}

    name: Literal["dinov2"] = "dinov2"
    variant: Literal["tiny", "vits14", "vitb14", "vitl14", "vitg14"] = "vitb14"
    """Backbone size: vits14 (384-d), vitb14 (768-d, GAGAvatar's), vitl14 (1024-d), vitg14 (1536-d,
    SwiGLU); ``tiny`` (32-d, 2 blocks) is for tests only."""
    registers: bool = False
    """Use the 4-register-token architecture (DINOv2 ``*_reg`` checkpoints)."""
    resolution: int = Field(518, ge=14, le=4102)
    """Side the image is resized to before the ViT, a multiple of 14 (518 -> 37 x 37 token maps)."""
    layers: tuple[int, ...] | None = None
    """Blocks whose patch tokens become FeatureMaps.local, 0-based (negative: from the end);
    default: the last 4 (all blocks if fewer)."""
    layer_norm: bool = True
    """Apply the backbone's final layernorm to the selected blocks' tokens (DINOv2's
    get_intermediate_layers(norm=True), as GAGAvatar)."""
    weights: str | None = None
    """Local path to a Hugging Face model folder (config.json + model.safetensors or
    pytorch_model.bin) or a torch-hub DINOv2 .pth state dict; None: random init (warns once)."""
    frozen: bool = True
    """Freeze the backbone (no gradients, always eval mode); false makes it trainable."""
    compat: Literal["sane", "official"] = "sane"
    """``sane``: the global token is CLS. ``official``: GAGAvatar's global feature, the final
    layer-normed first patch token (what its weights were trained on; see the module docstring)."""

    @field_validator("resolution")
    @classmethod
    def _patch_multiple(cls, value: int) -> int:
        return check_resolution(value)

    @model_validator(mode="after")
    def _layers_in_range(self):
        resolve_layers(self.layers, DINOV2_VARIANTS[self.variant].layers)
        return self


def dinov2_shape(config: Dinov2Config) -> VitShape:
    shape = DINOV2_VARIANTS[config.variant]
    if config.registers:
        shape = dataclasses.replace(shape, registers=REGISTER_TOKENS)
    return shape


class Dinov2Encoder(VitEncoder):
    """DINOv2 backbone: image [B, 3, H, W] -> len(layers) maps [B, D, r/14, r/14] + CLS [B, D]."""

    def __init__(self, config: Dinov2Config, context: BuildContext | None = None) -> None:
        label = f"dinov2 {config.variant}{'-reg' if config.registers else ''}"
        super().__init__(
            label=label,
            shape=dinov2_shape(config),
            resolution=config.resolution,
            layers=config.layers,
            layer_norm=config.layer_norm,
            weights=config.weights,
            frozen=config.frozen,
            global_token="first_patch" if config.compat == "official" else "cls",
        )

    @staticmethod
    def parameter_count(config: Dinov2Config) -> int:
        """Parameters of the encoder this config builds without weights (position embeddings
        sized for ``resolution``), counted on the meta device: no memory, no weights read."""
        return count_parameters(dinov2_shape(config), config.resolution)


@hookimpl
def gshead_register_encoders(register) -> None:
    register.add(Dinov2Config, Dinov2Encoder)
