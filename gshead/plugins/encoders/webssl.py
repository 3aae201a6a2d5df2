"""``webssl``: a WebSSL ("Web-DINO") ViT/14 backbone (transformers ``Dinov2Model``) as the encoder.

WebSSL (Fan et al. 2025, facebookresearch/webssl) are ViTs trained with the DINOv2 recipe on web
images; they load with transformers' ``Dinov2Model`` and are the backbone family of the
"reconstruction and reenactment separated" Gaussian head method. Features are taken exactly as
in ``dinov2``: the chosen blocks' patch tokens as maps [B, D, r/14, r/14] (final layernorm applied
by default) and the final layer-normed CLS token as the global token.

Sizes (hidden/blocks/heads as published; patch 14, MLP ratio 4):

=====  ======  ======  =====  ==============================
size   hidden  blocks  heads  parameters (this architecture)
=====  ======  ======  =====  ==============================
tiny   32      2       2      ~53k (tests only)
300m   1024    24      16     ~0.30B
1b     1536    40      24     ~1.1B
2b     2688    24      21     ~2.1B
3b     3072    26      24     ~2.9B
5b     3584    32      28     ~4.9B
7b     4096    32      32     ~6.4B
=====  ======  ======  =====  ==============================

Assumption: every size uses SwiGLU MLPs, LayerScale (init 1e-5) and no register tokens. That is
read from the 300M's published config and from the model builders in facebookresearch/webssl
(all sizes ``ffn_layer='swiglu'``, ``init_values=1e-5``, ``block_chunks=4``), but check the real
``config.json`` of each size: when ``weights`` is a Hugging Face folder its ``config.json`` is
authoritative, and a config that disagrees with ``size`` (width, depth, heads, MLP kind,
registers) is refused with an error naming both. Released models are trained at 224 px (the 7B
also at 378 and 518); other resolutions interpolate the position embeddings.
"""

from __future__ import annotations

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

_LS = 1e-5
WEBSSL_SIZES: dict[str, VitShape] = {
    "tiny": VitShape(hidden=32, layers=2, heads=2, swiglu=True, layerscale=_LS),
    "300m": VitShape(hidden=1024, layers=24, heads=16, swiglu=True, layerscale=_LS),
    "1b": VitShape(hidden=1536, layers=40, heads=24, swiglu=True, layerscale=_LS),
    "2b": VitShape(hidden=2688, layers=24, heads=21, swiglu=True, layerscale=_LS),
    "3b": VitShape(hidden=3072, layers=26, heads=24, swiglu=True, layerscale=_LS),
    "5b": VitShape(hidden=3584, layers=32, heads=28, swiglu=True, layerscale=_LS),
    "7b": VitShape(hidden=4096, layers=32, heads=32, swiglu=True, layerscale=_LS),
}


class WebSSLConfig(EncoderConfig):
    """WebSSL (Web-DINO) ViT/14 (transformers): intermediate blocks' patch tokens as maps, CLS as global
    token."""

    test_fields: ClassVar[dict[str, Any]] = {"size": "tiny", "resolution": 56}

    name: Literal["webssl"] = "webssl"
    size: Literal["tiny", "300m", "1b", "2b", "3b", "5b", "7b"] = "300m"
    """Backbone size (300m: 1024-d, 24 blocks ... 7b: 4096-d, 32 blocks); ``tiny`` (32-d, 2 blocks)
    is for tests only."""
    resolution: int = Field(224, ge=14, le=4102)
    """Side the image is resized to before the ViT, a multiple of 14 (224 -> 16 x 16 token maps)."""
    layers: tuple[int, ...] | None = None
    """Blocks whose patch tokens become FeatureMaps.local, 0-based (negative: from the end);
    default: the last 4 (all blocks if fewer)."""
    layer_norm: bool = True
    """Apply the backbone's final layernorm to the selected blocks' tokens (as DINOv2's
    get_intermediate_layers(norm=True))."""
    weights: str | None = None
    """Local path to a Hugging Face model folder (config.json + model.safetensors or
    pytorch_model.bin, e.g. a snapshot of facebook/webssl-dino300m-full2b-224) or a torch-hub style
    .pth state dict; None: random init (warns once)."""
    frozen: bool = True
    """Freeze the backbone (no gradients, always eval mode); false makes it trainable."""

    @field_validator("resolution")
    @classmethod
    def _patch_multiple(cls, value: int) -> int:
        return check_resolution(value)

    @model_validator(mode="after")
    def _layers_in_range(self):
        resolve_layers(self.layers, WEBSSL_SIZES[self.size].layers)
        return self


class WebSSLEncoder(VitEncoder):
    """WebSSL backbone: image [B, 3, H, W] -> len(layers) maps [B, D, r/14, r/14] + CLS [B, D]."""

    def __init__(self, config: WebSSLConfig, context: BuildContext | None = None) -> None:
        super().__init__(
            label=f"webssl {config.size}",
            shape=WEBSSL_SIZES[config.size],
            resolution=config.resolution,
            layers=config.layers,
            layer_norm=config.layer_norm,
            weights=config.weights,
            frozen=config.frozen,
        )

    @staticmethod
    def parameter_count(config: WebSSLConfig) -> int:
        """Parameters of the encoder this config builds without weights (position embeddings
        sized for ``resolution``), counted on the meta device: no memory, no weights read."""
        return count_parameters(WEBSSL_SIZES[config.size], config.resolution)


@hookimpl
def gshead_register_encoders(register) -> None:
    register.add(WebSSLConfig, WebSSLEncoder)
