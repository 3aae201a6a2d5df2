"""Pixel metrics between rendered and ground-truth images: PSNR and SSIM (torchmetrics).

Both take images ``[B, 3, H, W]`` in [0, 1] and return one value per image ``[B]``; averaging
over frames is the caller's job (``gshead.eval``), so a frame-weighted mean and a count are
reported together.

PSNR of identical images is infinite; here it is capped at ``PSNR_CAP_DB`` (100 dB, an MSE of
1e-10 on the [0, 1] range), so that one perfect frame does not turn a mean into ``inf``. Every
PSNR gshead reports is capped the same way.

SSIM is the standard one (Wang et al. 2004): an 11x11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03, data range 1, as torchmetrics (1.9) computes it: the image is padded by
reflection (5 px) and the SSIM map is averaged over every pixel and channel. (Implementations that
crop the 5 px border instead, such as scikit-image, differ in the third decimal on small images;
``tests/metrics/test_image_metrics.py`` pins this convention against a direct implementation.)

torchmetrics is imported inside the functions (``pip install torchmetrics``, the ``eval`` extra).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gshead.core.errors import ShapeError

PSNR_CAP_DB = 100.0
"""Largest PSNR reported, in dB (identical images would otherwise score ``inf``)."""

SSIM_WINDOW = 11
"""Side of SSIM's Gaussian window, in pixels; images must be at least this large."""


def check_pair(output: Tensor, target: Tensor, what: str, min_side: int = 1) -> None:
    """ShapeError unless ``output`` and ``target`` are matching batches [B, 3, H, W] of side >= ``min_side``."""
    if output.dim() != 4 or output.shape[1] != 3 or output.shape != target.shape:
        raise ShapeError(
            f"{what}: expected output and target of one shape [B, 3, H, W], "
            f"got {list(output.shape)} and {list(target.shape)}"
        )
    if min(output.shape[-2:]) < min_side:
        raise ShapeError(
            f"{what}: expected images at least {min_side} px on a side, got {list(output.shape[-2:])}"
        )


def psnr(output: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image [B], in dB, data range 1, capped at ``PSNR_CAP_DB``.

    :param output: [B, 3, H, W] in [0, 1] (values outside are clamped)
    :param target: [B, 3, H, W] in [0, 1]
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    check_pair(output, target, "psnr")
    value = peak_signal_noise_ratio(
        output.detach().float().clamp(0, 1),
        target.detach().float().clamp(0, 1),
        data_range=1.0,
        reduction="none",
        dim=(1, 2, 3),
    )  # [B]; inf where the images are identical
    return value.clamp(max=PSNR_CAP_DB)


def ssim(output: Tensor, target: Tensor) -> Tensor:
    """Structural similarity per image [B] (Gaussian window 11, sigma 1.5, data range 1).

    :param output: [B, 3, H, W] in [0, 1] (values outside are clamped), H and W >= 11
    :param target: [B, 3, H, W] in [0, 1]
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    check_pair(output, target, "ssim", min_side=SSIM_WINDOW)
    value = structural_similarity_index_measure(
        output.detach().float().clamp(0, 1),
        target.detach().float().clamp(0, 1),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        reduction="none",
    )
    return value.reshape(output.shape[0])  # [B]


def to_size(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``images`` [B, C, H, W] resized to ``size`` (h, w) with antialiased bilinear filtering (as is when equal)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return torch.nn.functional.interpolate(
        images, size=size, mode="bilinear", align_corners=False, antialias=True
    )
