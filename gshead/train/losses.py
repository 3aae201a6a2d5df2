"""Training losses: plain functions on tensors, and ``reenactment_losses`` that combines them.

Stage 1 (reconstruction): L1 on the coarse RGB (feature channels 0..2 of the render) and on the
refined image; the same on face crops, whose box is the bounding square of the target's head-model
landmarks projected with the target camera (enlarged by ``face_crop_scale``); and a point loss
keeping the lifted static Gaussians near the source's head surface. Stage 2 adds a perceptual loss
through a frozen feature network (``gshead.nets.vgg``). Weights: ``TrainConfig.loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.types import Camera, Render

TERMS = ("l1", "l1_refined", "face_l1", "point", "perceptual")
"""Loss term names, as in ``LossWeights`` and the logged scalars."""


def l1(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference (any equal shapes)."""
    return (prediction - target).abs().mean()


def project_points(points: Tensor, camera: Camera) -> Tensor:
    """Pixel coordinates [B, P, 2] (x right, y down; pixel centres at +0.5) of world points [B, P, 3]."""
    w2c = camera.world_to_camera.to(points.dtype)  # [B, 4, 4]
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [B, P, 3]
    z = cam[..., 2:].clamp_min(1e-6)
    k = camera.intrinsics.to(points.dtype)  # [B, 3, 3]
    u = k[:, None, 0, 0] * cam[..., 0] / z[..., 0] + k[:, None, 0, 2]
    v = k[:, None, 1, 1] * cam[..., 1] / z[..., 0] + k[:, None, 1, 2]
    return torch.stack([u, v], -1)


def face_boxes(points: Tensor, scale: float = 1.1, min_side: float = 4.0) -> Tensor:
    """Square boxes [B, 4] (left, top, side, side) around pixel points [B, P, 2]: centred on their
    bounding box, side = ``scale`` x its longer edge (at least ``min_side`` pixels)."""
    lo = points.min(1).values  # [B, 2]
    hi = points.max(1).values
    centre = 0.5 * (lo + hi)
    side = ((hi - lo).max(-1).values * scale).clamp_min(min_side)  # [B]
    corner = centre - side[:, None] / 2
    return torch.stack([corner[:, 0], corner[:, 1], side, side], -1)


def crop_resize(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crops [B, C, size, size] of images [B, C, H, W] at boxes [B, 4] (left, top, width, height in
    pixels), bilinear, zeros outside the image; differentiable with respect to ``images``."""
    b, _c, h, w = images.shape
    boxes = boxes.to(images.dtype)
    # Sample points at the centres of the output pixels, in input pixel coordinates.
    t = (torch.arange(size, dtype=images.dtype, device=images.device) + 0.5) / size  # [S]
    xs = boxes[:, None, 0] + t[None] * boxes[:, None, 2]  # [B, S]
    ys = boxes[:, None, 1] + t[None] * boxes[:, None, 3]
    gx = xs / w * 2 - 1  # align_corners=False normalisation
    gy = ys / h * 2 - 1
    grid = torch.stack(
        [gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], -1
    )  # [B, S, S, 2]
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def nearest_squared_distance(points: Tensor, surface: Tensor, chunk: int = 4096) -> Tensor:
    """For points [N, 3], the squared distance [N] to the nearest of ``surface`` [V, 3].

    The nearest index is found without autograd (chunked ``cdist``); the distance to it is then
    recomputed with autograd, which has the same gradient (the index is piecewise constant) and
    keeps no [N, V] tensor for the backward pass."""
    with torch.no_grad():
        parts = [
            torch.cdist(points[s : s + chunk], surface).argmin(1) for s in range(0, points.shape[0], chunk)
        ]
        nearest = torch.cat(parts) if parts else points.new_zeros(0, dtype=torch.long)
    return (points - surface[nearest]).pow(2).sum(-1)


def point_loss(means: Tensor, vertices: Tensor, max_points: int = 8192) -> Tensor:
    """Mean squared distance from static Gaussian means [1, N, 3] to the nearest head-model vertex
    [1, V, 3]; at most ``max_points`` evenly spaced Gaussians enter (no RNG is drawn)."""
    p = means[0]
    if p.shape[0] == 0:
        return means.sum() * 0
    if p.shape[0] > max_points:
        index = torch.linspace(0, p.shape[0] - 1, max_points, device=p.device).round().long()
        p = p[index]
    return nearest_squared_distance(p, vertices[0].to(p.dtype)).mean()


class PerceptualLoss(torch.nn.Module):
    """Mean over layers of the L1 between feature maps of a frozen network.

    ``features``: a module taking images [B, 3, H, W] in [0, 1] and returning a tuple of feature
    maps (``gshead.nets.vgg.VGG16Features``: relu1_2 .. relu5_3). Its parameters are frozen here.
    """

    def __init__(self, features: torch.nn.Module) -> None:
        super().__init__()
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # the feature network always stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        a = self.features(prediction)
        with torch.no_grad():
            b = self.features(target)
        return torch.stack([l1(x, y) for x, y in zip(a, b)]).mean()


def match_size(images: Tensor, like: Tensor) -> Tensor:
    """``images`` [B, C, h, w] resized (area when shrinking, bilinear otherwise) to ``like``'s H, W."""
    size = like.shape[-2:]
    if images.shape[-2:] == size:
        return images
    shrink = images.shape[-2] >= size[0] and images.shape[-1] >= size[1]
    if shrink:
        return F.interpolate(images, size=tuple(size), mode="area")
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)


@dataclass(frozen=True)
class LossTerms:
    """Unweighted loss terms of one sample (scalars; a term that is off is 0)."""

    l1: Tensor  # [] coarse RGB L1
    l1_refined: Tensor  # [] refined image L1
    face_l1: Tensor  # [] coarse + refined L1 on face crops
    point: Tensor  # [] static Gaussians to head surface
    perceptual: Tensor  # [] perceptual (stage 2)

    def total(self, weights) -> Tensor:
        """Weighted sum with ``weights`` (a ``LossWeights``)."""
        return sum(getattr(weights, name) * getattr(self, name) for name in TERMS)  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in TERMS}


def reenactment_losses(
    render: Render,
    refined: Tensor,
    targets: Tensor,
    face_points: Tensor,
    static_means: Tensor,
    source_vertices: Tensor,
    weights,
    *,
    crop_size: int = 0,
    crop_scale: float = 1.1,
    point_samples: int = 8192,
    perceptual: PerceptualLoss | None = None,
) -> LossTerms:
    """Loss terms for one sample driving T frames.

    :param render: the coarse render, features [T, C, H, W] (channels 0..2 RGB).
    :param refined: refined images [T, 3, H', W'].
    :param targets: ground truth [T, 3, h, w] (resized to each prediction's size).
    :param face_points: [T, L, 2] the targets' landmarks projected into the coarse image's pixels.
    :param static_means: [1, N, 3] the avatar's static Gaussian means (head space).
    :param source_vertices: [1, V, 3] the source's head-model vertices (head space).
    :param weights: ``LossWeights``; terms with weight 0 are not computed.
    :param perceptual: the perceptual loss (required when ``weights.perceptual`` > 0).
    """
    coarse = render.features[:, :3].float()
    refined = refined.float()
    target_c = match_size(targets.float(), coarse)
    target_r = match_size(targets.float(), refined)
    zero = coarse.sum() * 0
    t_l1 = l1(coarse, target_c) if weights.l1 > 0 else zero
    t_l1r = l1(refined, target_r) if weights.l1_refined > 0 else zero
    t_face = zero
    crop_r = crop_t = None
    if weights.face_l1 > 0 or (perceptual is not None and weights.perceptual > 0):
        boxes = face_boxes(face_points.float(), crop_scale)  # coarse-image pixels
        side = crop_size or coarse.shape[-1]
        crop_c = crop_resize(coarse, boxes, side)
        crop_tc = crop_resize(target_c, boxes, side)
        scale_r = refined.shape[-1] / coarse.shape[-1]
        crop_r = crop_resize(refined, boxes * scale_r, side)
        crop_t = crop_resize(target_r, boxes * scale_r, side)
        if weights.face_l1 > 0:
            t_face = l1(crop_c, crop_tc) + l1(crop_r, crop_t)
    t_point = point_loss(static_means.float(), source_vertices, point_samples) if weights.point > 0 else zero
    t_perc = zero
    if weights.perceptual > 0 and perceptual is not None:
        t_perc = perceptual(refined, target_r) + perceptual(crop_r, crop_t)
    return LossTerms(t_l1, t_l1r, t_face, t_point, t_perc)
