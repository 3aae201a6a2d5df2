"""Test-time fitting: refine a reconstructed avatar's Gaussians against its own source portrait.

``fit_avatar`` renders the avatar from the source view with the source head parameters (through
the pipeline's driver, rasterizer and refiner, all frozen), compares the refined image with the
portrait (L1 plus a D-SSIM term, as in 3DGS) and optimises, with Adam, only Gaussian attributes
(an appearance prior keeps features near the reconstruction: see ``fit_avatar``):

- static Gaussians: features, opacities (as logits), scales (as logs), rotations (raw quaternions,
  normalised in the forward pass) and small offsets of the centres, which a head-surface prior
  keeps near where the lifter put them (mean squared offset, in units of 1% of the head's size);
- dynamic (rig) Gaussians: only the fields the pipeline's driver reads when driving, found by
  probing ``driver.drive`` with autograd (every built-in driver reads scales, opacities and
  features; ``expression-gaussians`` and ``light-control`` also the rest rotations; no driver
  reads the rest centres, which it recomputes from the binding);
- the rig's binding offsets (``MeshBinding.offset``), where the driver reads them (every
  built-in driver does): each dynamic Gaussian's position in its own triangle's
  frame, under the same head-surface prior as the static centres.

Everything fitted lives in the head's local frames: static centres in head space, which the head
pose moves rigidly (the still torso's part stays with the torso), dynamic positions and rotations
in the frames of their triangles, which the expression moves. So detail fitted to the source view
follows expressions and head pose when the avatar is driven; the priors keep what the source view
does not constrain (a Gaussian hidden in the portrait gets no photometric gradient) where the
reconstruction put it.

The avatar's structure never changes: Gaussian counts, the binding, the latent code, the source
parameters, the camera and the provenance are kept, so the fitted avatar saves, loads and drives
exactly like the one it came from. Component weights are never changed (their ``requires_grad``
flags are switched off for the fit and restored afterwards). Deterministic for a deterministic
rasterizer: no randomness is drawn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.types import Avatar, Camera, Gaussians

OPACITY_EPS = 1e-4
"""Opacities are clamped to [eps, 1 - eps] before taking logits."""

# Adam learning rates per attribute, as multiples of ``lr`` (ratios after 3DGS's schedule).
LR_SCALE = {"features": 1.0, "opacities": 5.0, "scales": 0.5, "quats": 0.1, "means": 0.02}
"""``means`` is further multiplied by the head's size (model units per step)."""

GAUSSIAN_FIELDS = ("means", "quats", "scales", "opacities", "features")


@dataclass(frozen=True)
class FitReport:
    """What a fit did."""

    steps: int  # optimiser steps taken
    seconds: float  # wall time of the fit, renders for the PSNRs included
    psnr_before: float  # dB, source view, refined image vs the portrait, before fitting
    psnr_after: float  # dB, the same after fitting
    losses: tuple[float, ...]  # [steps] training loss at each step (before its update)
    fitted: tuple[str, ...]  # avatar fields optimised, e.g. ("static.features", "rig.dynamic.opacities")


def psnr(image: Tensor, target: Tensor) -> float:
    """PSNR in dB of ``image`` against ``target`` (both [B, 3, H, W] in [0, 1])."""
    mse = F.mse_loss(image.clamp(0, 1), target.clamp(0, 1)).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of ``x`` and ``y`` [B, C, H, W] in [0, 1] with a Gaussian window (scalar tensor)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean()


def _head_size(pipeline) -> float:
    template = getattr(pipeline.head_model, "template", None)
    if template is None or template.numel() == 0:
        return 1.0
    return float((template.amax(0) - template.amin(0)).norm())


def _driven_fields(pipeline, avatar: Avatar) -> tuple[tuple[str, ...], bool]:
    """The rig's dynamic-Gaussian fields that ``pipeline.driver.drive`` reads, and whether it reads
    the binding offsets (autograd probe)."""
    d = avatar.rig.dynamic
    leaves = {name: getattr(d, name).detach().clone().requires_grad_(True) for name in GAUSSIAN_FIELDS}
    offset = avatar.rig.binding.offset.detach().clone().requires_grad_(True)
    rig = avatar.rig.replace(dynamic=Gaussians(**leaves), binding=avatar.rig.binding.replace(offset=offset))
    posed = pipeline.driver.drive(avatar.replace(rig=rig), avatar.source)
    total = sum(t.float().sum() for t in posed.tensors().values())
    grads = torch.autograd.grad(total, [*leaves.values(), offset], allow_unused=True)
    fields = tuple(name for name, g in zip(leaves, grads) if g is not None)
    return fields, grads[-1] is not None and offset.numel() > 0


class _Params:
    """Unconstrained tensors for a set of Gaussians, and the Gaussians they stand for."""

    def __init__(self, g: Gaussians, fields: tuple[str, ...]) -> None:
        self.base = g
        self.fields = fields
        self.tensors: dict[str, Tensor] = {}
        if "means" in fields:
            self.tensors["means"] = torch.zeros_like(g.means)  # offsets from the reconstructed centres
        if "quats" in fields:
            self.tensors["quats"] = g.quats.detach().clone()
        if "scales" in fields:
            self.tensors["scales"] = g.scales.detach().clamp_min(1e-12).log()
        if "opacities" in fields:
            self.tensors["opacities"] = torch.logit(g.opacities.detach().clamp(OPACITY_EPS, 1 - OPACITY_EPS))
        if "features" in fields:
            self.tensors["features"] = g.features.detach().clone()
        for t in self.tensors.values():
            t.requires_grad_(True)

    def gaussians(self) -> Gaussians:
        g, t = self.base, self.tensors
        return Gaussians(
            means=g.means + t["means"] if "means" in t else g.means,
            quats=F.normalize(t["quats"], dim=-1) if "quats" in t else g.quats,
            scales=t["scales"].exp() if "scales" in t else g.scales,
            opacities=torch.sigmoid(t["opacities"]) if "opacities" in t else g.opacities,
            features=t.get("features", g.features),
        )

    def feature_change(self) -> Tensor:
        """Sum of squared feature changes from the reconstruction (0 when features are not fitted)."""
        f = self.tensors.get("features")
        return (f - self.base.features).pow(2).sum() if f is not None else torch.zeros(())

    def offsets(self) -> Tensor | None:
        return self.tensors.get("means")

    @torch.no_grad()
    def project(self) -> None:
        """Keep the RGB channels (0..2) in [0, 1] after a step."""
        f = self.tensors.get("features")
        if f is not None:
            f[..., :3].clamp_(0.0, 1.0)


def _check_args(
    avatar: Avatar, image: Tensor, steps, lr, prior_weight, appearance_weight, ssim_weight
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"fit steps {steps!r}: expected a whole number >= 0")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"fit learning rate {lr!r}: expected a finite number > 0")
    if not (isinstance(prior_weight, (int, float)) and math.isfinite(prior_weight) and prior_weight >= 0):
        raise InputError(f"fit prior weight {prior_weight!r}: expected a finite number >= 0")
    if not (
        isinstance(appearance_weight, (int, float))
        and math.isfinite(appearance_weight)
        and appearance_weight >= 0
    ):
        raise InputError(f"fit appearance weight {appearance_weight!r}: expected a finite number >= 0")
    if not (isinstance(ssim_weight, (int, float)) and 0 <= ssim_weight <= 1):
        raise InputError(f"fit SSIM weight {ssim_weight!r}: expected a number in [0, 1]")
    if not isinstance(image, Tensor) or image.dim() != 4 or tuple(image.shape[:2]) != (1, 3):
        got = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"fit: expected the source image as a [1, 3, H, W] tensor, got {got}")
    cam = avatar.camera
    if image.shape[-1] * cam.height != image.shape[-2] * cam.width:
        raise InputError(
            f"fit: the source image is {image.shape[-1]}x{image.shape[-2]}, but the avatar's camera "
            f"is {cam.width}x{cam.height}; expected the same aspect ratio"
        )


def fit_avatar(
    pipeline,
    avatar: Avatar,
    image: Tensor,
    steps: int,
    lr: float = 0.01,
    prior_weight: float = 1.0,
    appearance_weight: float = 10.0,
    ssim_weight: float = 0.2,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Avatar, FitReport]:
    """Refine ``avatar``'s Gaussians so its source-view render matches ``image``.

    :param pipeline: the ``Pipeline`` that reconstructed the avatar (its driver, rasterizer and
        refiner render; nothing in it is changed).
    :param avatar: a reconstructed avatar (not modified).
    :param image: [1, 3, H, W] in [0, 1], the portrait as given to ``reconstruct`` (the source
        crop); rendered at its size from the avatar's source camera.
    :param steps: Adam steps; 0 returns ``avatar`` itself.
    :param lr: base learning rate (of the features; other attributes use ``LR_SCALE`` multiples).
    :param prior_weight: weight of the head-surface prior on static centre offsets.
    :param appearance_weight: weight of the appearance prior: squared change of every fitted
        Gaussian's features, summed and divided by the image's values (3 H W), so that it competes
        with the per-pixel photometric loss. Without it, Adam's normalised steps push Gaussians
        that are barely visible from the source view (the static plane behind the face mesh) to
        extreme colours, which show as blotches when driving reveals them (an open mouth).
    :param ssim_weight: weight of D-SSIM in the photometric loss ``(1 - w) L1 + w (1 - SSIM)``.
    :param progress: called as ``progress(step, loss)`` after every step.
    :returns: the fitted avatar (frozen copy) and a ``FitReport``.
    """
    from gshead.core.pipeline import frozen_copy

    _check_args(avatar, image, steps, lr, prior_weight, appearance_weight, ssim_weight)
    start = time.perf_counter()
    target = image.detach().to(avatar.static.means.dtype)
    camera: Camera = avatar.camera.resized(image.shape[-1], image.shape[-2])

    def render(a: Avatar) -> Tensor:
        return pipeline.forward_frames(a, a.source, camera)[1]

    modules = list(pipeline.trainable_modules().values())
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    try:
        for m in modules:
            m.requires_grad_(False)
        with torch.no_grad():
            before = psnr(render(avatar), target)
        if steps == 0:
            return avatar, FitReport(0, time.perf_counter() - start, before, before, (), ())

        with torch.enable_grad():
            dynamic_fields, fit_binding = _driven_fields(pipeline, avatar)
            static = _Params(avatar.static, GAUSSIAN_FIELDS)
            dynamic = _Params(avatar.rig.dynamic, dynamic_fields)
            binding = avatar.rig.binding
            # offsets of the binding offsets: positions in the triangles' frames
            shift = torch.zeros_like(binding.offset).requires_grad_(True) if fit_binding else None
            head = _head_size(pipeline)
            groups = []
            for name in GAUSSIAN_FIELDS:
                tensors = [p.tensors[name] for p in (static, dynamic) if name in p.tensors]
                if name == "means" and shift is not None:
                    tensors.append(shift)
                scale = LR_SCALE[name] * (head if name == "means" else 1.0)
                if tensors:
                    groups.append({"params": tensors, "lr": lr * scale})
            optimiser = torch.optim.Adam(groups, lr=lr)
            unit = 0.01 * head

            def rig_now():
                rig = avatar.rig.replace(dynamic=dynamic.gaussians())
                return (
                    rig
                    if shift is None
                    else rig.replace(binding=binding.replace(offset=binding.offset + shift))
                )

            losses = []
            for step in range(steps):
                fitted = avatar.replace(static=static.gaussians(), rig=rig_now())
                out = render(fitted)
                loss = (1 - ssim_weight) * (out - target).abs().mean()
                if ssim_weight > 0:
                    loss = loss + ssim_weight * (1 - ssim(out, target))
                offsets = [
                    o for o in (static.offsets(), dynamic.offsets(), shift) if o is not None and o.numel()
                ]
                if prior_weight > 0 and offsets:
                    prior = torch.cat([(o / unit).pow(2).sum(-1).flatten() for o in offsets]).mean()
                    loss = loss + prior_weight * prior
                if appearance_weight > 0:
                    change = sum(p.feature_change() for p in (static, dynamic))
                    loss = loss + appearance_weight * change / target[0].numel()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                static.project()
                dynamic.project()
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(step, losses[-1])

        with torch.no_grad():
            result = frozen_copy(avatar.replace(static=static.gaussians(), rig=rig_now()))
            after = psnr(render(result), target)
    finally:
        for m, saved in zip(modules, flags):
            for p, flag in zip(m.parameters(), saved):
                p.requires_grad_(flag)
    fitted_names = (
        tuple(f"static.{n}" for n in static.tensors)
        + tuple(f"rig.dynamic.{n}" for n in dynamic.tensors)
        + (("rig.binding.offset",) if shift is not None else ())
    )
    report = FitReport(steps, time.perf_counter() - start, before, after, tuple(losses), fitted_names)
    return result, report


__all__ = ["FitReport", "fit_avatar", "psnr", "ssim"]
