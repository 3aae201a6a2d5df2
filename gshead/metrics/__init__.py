"""Metrics for comparing rendered heads with ground truth (one value per image, ``[B]``).

- ``image``: PSNR (capped at 100 dB) and SSIM, via torchmetrics;
- ``lpips``: LPIPS-VGG from its definition, weights from local files only;
- ``face``: AKD, APD, AED from a tracker, CSIM from an identity model (``iresnet``: ArcFace).

Means over frames, skipped metrics and the reenactment protocols live in ``gshead.eval``.
"""

from gshead.metrics.face import cosine_similarity, expression_distance, keypoint_distance, pose_distance
from gshead.metrics.image import PSNR_CAP_DB, psnr, ssim

__all__ = [
    "PSNR_CAP_DB",
    "cosine_similarity",
    "expression_distance",
    "keypoint_distance",
    "pose_distance",
    "psnr",
    "ssim",
]
