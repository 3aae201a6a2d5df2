"""Face metrics of reenactment: AKD, APD, AED (from a tracker) and CSIM (from an identity model).

- **AKD** (average keypoint distance): mean Euclidean distance, in pixels of the compared images,
  between the 2D landmarks a tracker detects on the output and on the target.
- **APD** (average pose distance): mean absolute difference between the tracked head pose of the
  output and of the target: the 6 numbers rotation (axis-angle, radians) and translation (head
  model units), averaged.
- **AED** (average expression distance): mean absolute difference between the tracked expression
  coefficients of the output and of the target, averaged over the coefficients.
- **CSIM**: cosine similarity of identity embeddings (ArcFace-style) of the output and a reference.

Every function returns one value per image [B]; frames where a tracker found no face carry NaN
landmarks and get NaN here, and the aggregation (``gshead.eval``) leaves them out and counts them.

Trackers and identity models are small protocols: any gshead tracker (``track``; ``detect_landmarks``
for AKD, as the ``mediapipe`` tracker has) and anything with ``embed(images) -> [B, D]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from gshead.core.errors import ShapeError
from gshead.core.types import HeadParams, Tracked


@runtime_checkable
class IdentityEmbedder(Protocol):
    """Maps face images to identity embeddings (compared by cosine similarity)."""

    def embed(self, images: Tensor) -> Tensor:  # images [B, 3, H, W] in [0, 1] -> [B, D]
        ...


@runtime_checkable
class FaceTracker(Protocol):
    """What APD and AED need: head parameters of each image."""

    def track(self, images: Tensor) -> Tracked:  # images [B, 3, H, W] in [0, 1]
        ...


@runtime_checkable
class LandmarkDetector(Protocol):
    """What AKD needs: 2D landmarks of each image (NaN where no face was found)."""

    def detect_landmarks(self, images: Tensor, missing: str = "error") -> Tensor:  # -> [B, K, 2] pixels
        ...


def keypoint_distance(output: Tensor, target: Tensor) -> Tensor:
    """AKD per image [B]: mean over K of the Euclidean distance between landmarks.

    :param output: [B, K, 2] landmarks on the output, pixels (NaN where not found)
    :param target: [B, K, 2] landmarks on the target, pixels
    """
    if output.dim() != 3 or output.shape[-1] != 2 or output.shape != target.shape:
        raise ShapeError(
            f"AKD: expected two landmark sets of one shape [B, K, 2], got {list(output.shape)} and {list(target.shape)}"
        )
    return (output - target).norm(dim=-1).mean(dim=-1)


def pose_distance(output: HeadParams, target: HeadParams) -> Tensor:
    """APD per image [B]: mean |difference| over rotation (3) and translation (3)."""
    _same_batch(output, target, "APD")
    a = torch.cat([output.rotation, output.translation], dim=1)  # [B, 6]
    b = torch.cat([target.rotation, target.translation], dim=1).to(a)
    return (a - b).abs().mean(dim=1)


def expression_distance(output: HeadParams, target: HeadParams) -> Tensor:
    """AED per image [B]: mean |difference| over the expression coefficients [B, E]."""
    _same_batch(output, target, "AED")
    if output.expression.shape != target.expression.shape:
        raise ShapeError(
            f"AED: expression sizes differ ({output.expression.shape[1]} vs {target.expression.shape[1]}); "
            "expected both tracked with one head model"
        )
    return (output.expression - target.expression.to(output.expression)).abs().mean(dim=1)


def cosine_similarity(output: Tensor, reference: Tensor) -> Tensor:
    """CSIM per image [B]: cosine similarity of embeddings ``output`` [B, D] and ``reference``
    [B, D] or [1, D] (one reference for every image)."""
    if output.dim() != 2 or reference.dim() != 2 or reference.shape[1] != output.shape[1]:
        raise ShapeError(
            f"CSIM: expected embeddings [B, D] and [B or 1, D], got {list(output.shape)} and {list(reference.shape)}"
        )
    return torch.nn.functional.cosine_similarity(output.float(), reference.float().expand_as(output), dim=1)


def _same_batch(a: HeadParams, b: HeadParams, what: str) -> None:
    if a.batch_size != b.batch_size:
        raise ShapeError(f"{what}: {a.batch_size} output frames but {b.batch_size} target frames")


def mark_untracked(params: HeadParams, found: Tensor) -> HeadParams:
    """``params`` with every field NaN in frames where ``found`` [B] (bool) is False, so their APD
    and AED are NaN (left out of means) instead of distances to a neutral fallback pose."""
    keep = found.to(torch.bool).reshape(-1, 1)
    return HeadParams(
        **{k: torch.where(keep.to(v.device), v, torch.nan) for k, v in params.tensors().items()}
    )


def load_identity_model(path: str | Path) -> IdentityEmbedder:
    """The identity embedder for CSIM from a local file: an ArcFace IResNet state dict
    (insightface ``arcface_torch`` key names; safetensors, or ``.pth`` read with ``weights_only=True``).
    Nothing is downloaded and no code in the file is run."""
    from gshead.metrics.iresnet import load_iresnet

    return load_iresnet(path)
