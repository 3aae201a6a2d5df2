"""``mediapipe``: MediaPipe face detection and 478-point face mesh, then a head-model fit.

Offline: ``mediapipe==0.10.21`` is the last wheel that bundles the face-detector and face-mesh
models (no download at run time). It declares numpy<2 and pulls jax/opencv-contrib, so it is
installed without its dependencies beside numpy 2::

    pip install --no-deps mediapipe==0.10.21
    pip install "protobuf<5" absl-py attrs flatbuffers "opencv-python-headless<5" matplotlib

(``import mediapipe`` imports ``cv2`` and ``matplotlib`` through its drawing utilities.)

- ``crop_box``: MediaPipe's full-range face detector on the raw image; the largest face is used
  (a warning when there are several), a face narrower than ``min_face_pixels`` or no face at all
  is an ``InputError``. The square crop is sized and placed like the ``frontal`` tracker's (the
  shared ``TrackerConfig`` fields ``face_scale`` and ``face_offset``). The detector itself is
  ``detect_faces``, so the tracker is a ``FaceDetector``.
- ``track``: per crop, MediaPipe's 478 face-mesh landmarks (normalised x, y -> pixels of the
  crop); then the head model's parameters are fitted to the landmarks through a correspondence
  of head-model landmark *names* to MediaPipe mesh indices (``MEDIAPIPE_LANDMARKS``): head
  rotation and translation (camera motion, as the core applies them), jaw, a few expression
  units per image, and one identity for the whole batch (treated as a sequence of one person),
  by batched Levenberg-Marquardt in torch with a fixed focal length (``fov_degrees``).

``track_with_error`` also returns the root-mean-square landmark reprojection error of each image,
in pixels of the crop (the tracker is a ``LandmarkTracker``). ``fit_landmarks`` is the fit alone
(landmarks in, parameters out).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext, HeadModel, LandmarkRigHead, TrackerConfig
from gshead.core.errors import ConfigError, InputError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, CropBox, HeadParams, Located, Tracked
from gshead.plugins.trackers._fit import JawRig, fit_linear

MEDIAPIPE_POINTS = 478
"""Points of MediaPipe's face mesh with iris refinement (468 mesh + 2 x 5 iris)."""
CUT_OFF_SHARE = 0.05
"""``crop_box`` warns that the face is cut off when its detection box reaches more than this share
of its side past an edge of the image."""

# Head-model landmark name -> MediaPipe face-mesh indices whose mean is that landmark.
# "left"/"right" are the subject's (the procedural head's +x side is the subject's left, which
# appears on the image's right in a frontal portrait; MediaPipe's 263/362 eye is that one).
# Checked by drawing them on scikit-image's astronaut (512 px crop): each lands on its feature.
MEDIAPIPE_LANDMARKS: dict[str, tuple[int, ...]] = {
    "eye_left_outer": (263,),
    "eye_left_inner": (362,),
    "eye_left_upper": (386,),
    "eye_left_lower": (374,),
    "eye_right_inner": (133,),
    "eye_right_outer": (33,),
    "eye_right_upper": (159,),
    "eye_right_lower": (145,),
    "brow_left": (334, 282),  # middle of the brow: upper and lower edge
    "brow_right": (105, 52),
    "nose_bridge": (197,),
    "nose_tip": (1,),
    "mouth_left": (291,),
    "mouth_right": (61,),
    "lip_upper": (0,),  # outer edge of the upper lip, on the midline
    "lip_lower": (17,),  # outer edge of the lower lip, on the midline
    "chin": (152,),
}

def mediapipe_indices(name: str) -> tuple[int, ...] | None:
    """MediaPipe face-mesh indices for a head-model landmark name: ``MEDIAPIPE_LANDMARKS``'s named
    features, ``mediapipe_NNN`` for a dense embedding of point NNN (``anny-head`` with
    ``mediapipe_landmarks: true``), or ``mpNNN`` (``flame`` with FLAME's
    ``mediapipe_landmark_embedding.npz``); None when the name is none of these."""
    if name in MEDIAPIPE_LANDMARKS:
        return MEDIAPIPE_LANDMARKS[name]
    prefix, _, number = name.partition("_")
    if prefix != "mediapipe" and name.startswith("mp"):
        prefix, number = "mediapipe", name[2:]
    if prefix == "mediapipe" and number.isdigit() and int(number) < MEDIAPIPE_POINTS:
        return (int(number),)
    return None


DEFAULT_EXPRESSIONS: tuple[str, ...] = (
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "browInnerUp",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthPucker",
)
"""Expression units fitted by default (those the head model has). ``jawOpen`` is left out on
purpose: the jaw rotation is fitted instead, and the two would explain the same landmarks."""


class MediapipeTrackerConfig(TrackerConfig):
    """MediaPipe face detection + face mesh, then a fit of the head model to the landmarks.

    The crop is placed by the shared tracker fields ``face_scale`` and ``face_offset`` (as the
    frontal tracker's); ``crop_box`` refuses faces narrower than ``min_face_pixels``."""

    name: Literal["mediapipe"] = "mediapipe"
    distance: float = Field(1.0, gt=0.0)
    """Distance from the camera to the world origin (the neutral head's centre), model units."""
    fov_degrees: float = Field(18.0, gt=0.0, lt=180.0)
    """Horizontal field of view of the camera, in degrees (fixed: the focal length is not fitted)."""
    min_confidence: float = Field(0.5, gt=0.0, lt=1.0)
    """Detection confidence below which a face is ignored."""
    no_face: Literal["error", "neutral"] = "error"
    """Without a face: 'error' raises InputError; 'neutral' warns, crop_box returns None (centred
    crop) and such images get the neutral pose and expression (with the batch's fitted identity)
    and a NaN error."""
    expressions: tuple[str, ...] | None = None
    """Expression units to fit; None: those of DEFAULT_EXPRESSIONS the head model has."""
    iterations: int = Field(30, ge=1, le=1000)
    """Most Levenberg-Marquardt steps of the fit (it stops earlier once converged)."""
    identity_weight: float = Field(1e-2, ge=0.0)
    """Weight of the identity prior (squared coefficients) against the landmark term."""
    expression_weight: float = Field(1e-2, ge=0.0)
    """Weight of the expression prior (squared coefficients)."""
    jaw_weight: float = Field(1e-1, ge=0.0)
    """Weight of the jaw prior (squared radians; sideways and twisting jaw rotations x100)."""

    test_fields: ClassVar[dict[str, Any]] = {"no_face": "neutral", "iterations": 5}

    @classmethod
    def unavailable(cls) -> str | None:
        # mediapipe imports cv2 and matplotlib when imported; all three must be there.
        found = all(importlib.util.find_spec(m) for m in ("mediapipe", "cv2", "matplotlib"))
        return None if found else _INSTALL_HINT


_INSTALL_HINT = (
    "needs mediapipe 0.10.21 (pip install --no-deps mediapipe==0.10.21 'protobuf<5' absl-py "
    "attrs flatbuffers 'opencv-python-headless<5' matplotlib)"
)


@contextlib.contextmanager
def _native_stderr_quiet():
    """File descriptor 2 pointed at /dev/null inside.

    MediaPipe's C++ side (TFLite, glog) prints INFO and W lines straight to descriptor 2 when its
    graphs are built and first run ("Created TensorFlow Lite XNNPACK delegate", "Feedback manager
    requires ..."), which would break gshead's one-line errors. Python's ``sys.stderr`` is flushed
    first; nothing of gshead's is written inside (errors are raised, not printed)."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (embedded interpreters): nothing to quieten
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _import_mediapipe():
    try:
        import mediapipe
    except ImportError as exc:
        raise InputError(f"mediapipe tracker {_INSTALL_HINT}; importing it failed: {exc}") from None
    return mediapipe


def _to_uint8(image: Tensor):
    """[3, H, W] float in [0, 1] -> contiguous [H, W, 3] uint8 numpy array (MediaPipe's SRGB)."""
    import numpy as np

    # numpy, not torch: torch's thread pool made this 5-30x slower on a busy 2-core machine
    planes = image.detach().to("cpu", torch.float32).numpy()  # [3, H, W]
    levels = (np.clip(planes, 0.0, 1.0) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    return np.ascontiguousarray(levels.transpose(1, 2, 0))


# ------------------------------------------------------------------------------------ the fit
@dataclass(frozen=True)
class LandmarkFit:
    """What ``fit_landmarks`` returns."""

    params: HeadParams  # [B] fitted parameters (pose in rotation/translation)
    camera: Camera  # [B] the fixed frontal camera (head pose not applied)
    projected: Tensor  # [B, K, 2] the fitted model's landmarks (those of the targets), pixels
    error_px: Tensor  # [B] root-mean-square landmark reprojection error, pixels


def project_landmarks(head_model: HeadModel, params: HeadParams, camera: Camera) -> Tensor:
    """The head model's landmarks for ``params`` in pixels [B, L, 2] (head pose as camera motion)."""
    points = head_model(params).landmarks  # [B, L, 3]
    moved = camera.moved(params.pose_matrix())
    w2c = moved.world_to_camera.to(points)
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [B, L, 3]
    uvw = cam @ moved.intrinsics.to(points).transpose(1, 2)
    return uvw[..., :2] / uvw[..., 2:].clamp_min(1e-6)


@contextlib.contextmanager
def _one_thread():
    """One CPU thread, and inference mode off (forward-mode AD gives no tangents under it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(False):
            yield
    finally:
        torch.set_num_threads(before)


def fit_landmarks(
    head_model: HeadModel,
    targets: Tensor,
    camera: Camera,
    indices: Tensor | None = None,
    expressions: tuple[str, ...] = DEFAULT_EXPRESSIONS,
    iterations: int = 30,
    identity_weight: float = 1e-2,
    expression_weight: float = 1e-2,
    jaw_weight: float = 1e-1,
    identity: Tensor | None = None,
    start: HeadParams | None = None,
    jaw_rig: Any = None,
) -> LandmarkFit:
    """Fit head pose, jaw, ``expressions`` and one shared identity to 2D landmarks.

    ``targets`` [B, K, 2] pixels; ``indices`` [K] long, the head-model landmark of each target
    (default: all L landmarks, K = L); ``camera`` [B] or [1], a fixed ``Camera.frontal`` (the
    initial guess assumes one). Minimises the mean squared reprojection error, measured in
    percent of the image side, plus squared-coefficient priors (per image, so their balance
    with the data term does not depend on B), by batched
    Levenberg-Marquardt: Jacobians by forward-mode AD (one pass per parameter of one image, for
    all images at once), the shared identity solved on the Schur complement. It starts from the
    neutral head moved to the landmarks' centroid and scale. Works on the head model's device.

    Runs on one CPU thread (restored afterwards): the tensors are tiny, and on a busy machine
    torch's thread pool made the fit 10-50x slower (re-measured for the fast path: 2 threads
    5-10x slower on a shared 2-core machine).

    Head models with a landmark rig (``LandmarkRigHead``: procedural, anny-head, FLAME) take the fast path
    (``gshead.plugins.trackers._fit``): landmark rows only, identity fitted on up to 4 frames of
    the batch, then every frame's pose, jaw and expression with that identity, warm-started from
    the nearest identity frame, with analytic Jacobians (``_fit.JawRig``). Other head models use
    the generic path below (full forward passes, forward-mode AD).

    For a sequence (fast path only): ``identity`` [I] fixes the identity (no identity fit), and
    ``start`` [1] or [B] gives every image's starting rotation, translation, jaw and expression
    (the previous frame's fit) instead of the neutral head placed on the landmarks; ``jaw_rig``,
    ``_fit.JawRig`` of that identity, the indices and expressions, saves building it again.
    """
    if targets.dim() != 3 or targets.shape[-1] != 2:
        raise ShapeError(f"fit_landmarks: expected targets [B, K, 2], got {list(targets.shape)}")
    fast = isinstance(head_model, LandmarkRigHead)
    with _one_thread():  # measured: 2 threads made the fast fit 5-10x slower on a shared 2-core box
        return _fit_landmarks(
            head_model, targets, camera, indices, expressions, iterations,
            identity_weight, expression_weight, jaw_weight, fast, identity, start, jaw_rig,
        )


def _fit_landmarks(
    head_model: HeadModel,
    targets: Tensor,
    camera: Camera,
    indices: Tensor | None,
    expressions: tuple[str, ...],
    iterations: int,
    identity_weight: float,
    expression_weight: float,
    jaw_weight: float,
    fast: bool,
    identity: Tensor | None = None,
    start: HeadParams | None = None,
    jaw_rig: Any = None,
) -> LandmarkFit:
    b = targets.shape[0]
    dev = head_model.template.device
    targets = targets.detach().to(dev, torch.float32).clone()  # clone: not an inference tensor
    camera = (camera.expand(b) if camera.batch_size == 1 else camera).to(dev)
    indices = torch.arange(targets.shape[1]) if indices is None else indices
    indices = indices.to(dev)
    names = tuple(head_model.expression_names)
    expr_index = torch.tensor([names.index(e) for e in expressions], dtype=torch.long, device=dev)
    neutral = head_model.neutral(b)
    unit = 0.01 * max(camera.width, camera.height)  # residuals in percent of the image side

    def params_of(rot, trans, jaw, expr, ident) -> HeadParams:
        full = torch.zeros(b, len(names), dtype=expr.dtype, device=dev)
        full = full.index_copy(1, expr_index, expr) if len(expr_index) else full
        return HeadParams(ident.expand(b, -1), full, jaw, neutral.eyes, rot, trans)

    def fit_fast(x0: Tensor) -> LandmarkFit:
        """The landmark-rig path (``_fit.fit_linear``) from x0 [B, 9 + E']."""
        with torch.no_grad():
            x, z, proj = fit_linear(
                head_model, targets, camera.world_to_camera.to(targets), camera.intrinsics.to(targets),
                unit, indices, expr_index, x0, iterations, identity_weight, expression_weight, jaw_weight,
                identity=identity, jaw_rig=jaw_rig,
            )
        rot, trans, jaw, expr = x.split([3, 3, 3, len(expr_index)], 1)
        p = params_of(rot, trans, jaw, expr, z[None])
        error = (proj - targets).square().sum(-1).mean(1).sqrt()
        p = HeadParams(
            *(t.detach().clone() for t in (p.identity, p.expression, p.jaw, p.eyes, p.rotation, p.translation))
        )
        return LandmarkFit(params=p, camera=camera, projected=proj.detach(), error_px=error)

    if fast and start is not None and identity is not None:  # a sequence: no placement, no identity fit
        s = start.to(dev)
        x0 = torch.cat([s.rotation, s.translation, s.jaw, s.expression[:, expr_index]], 1)
        return fit_fast(x0.float().expand(b, -1).clone())

    # Initial translation from the landmarks' centroid and spread against the neutral head's.
    with torch.no_grad():
        placed = project_landmarks(head_model, neutral, camera)[:, indices]  # [B, K, 2]
        spread = lambda p: (p - p.mean(1, keepdim=True)).square().sum(-1).mean(1).sqrt()
        ratio = (spread(targets) / spread(placed).clamp_min(1e-6)).clamp(0.2, 5.0)
        d = camera.world_to_camera[:, 2, 3]  # distance of the frontal camera
        tz = d * (1.0 - 1.0 / ratio)
        f = camera.intrinsics[:, 0, 0]
        shift = (targets.mean(1) - placed.mean(1)) * ((d - tz) / f)[:, None]  # [B, 2] model units
        trans0 = torch.stack([shift[:, 0], -shift[:, 1], tz], 1)  # image y is down, world y up

    k = targets.shape[1]
    n_e, n_i = len(expr_index), head_model.identity_dim
    sizes = [3, 3, 3, n_e]  # per image: rotation, translation, jaw, expression
    jaw_sqrt = (torch.tensor([1.0, 100.0, 100.0], device=dev) * jaw_weight).sqrt()

    def residuals(x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per-image residuals [B, 2K + E + 3] (whose squares sum to the cost) and projections."""
        rot, trans, jaw, expr = x.split(sizes, 1)
        p = params_of(rot, trans, jaw, expr, z)
        proj = project_landmarks(head_model, p, camera)[:, indices]
        data = ((proj - targets) / unit).reshape(b, -1) / k**0.5
        return torch.cat([data, expression_weight**0.5 * expr, jaw * jaw_sqrt], 1), proj

    def cost(r: Tensor, z: Tensor) -> float:
        return float(r.double().square().sum() + b * identity_weight * z.double().square().sum())

    def jacobians(x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """d residuals / d x [B, M, n] and d residuals / d z [B, M, I], by forward-mode AD.

        Images are independent given z, so one pass per *local* direction serves every image.
        """
        cols_x, cols_z = [], []
        with warnings.catch_warnings(), fwAD.dual_level():
            # torch loads its forward-AD decompositions on first use through torch.jit.script,
            # which warns (DeprecationWarning) in torch 2.13; nothing for our users to act on.
            warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
            for j in range(x.shape[1]):
                t = torch.zeros_like(x)
                t[:, j] = 1.0
                cols_x.append(fwAD.unpack_dual(residuals(fwAD.make_dual(x, t), z)[0]).tangent)
            for j in range(n_i):
                t = torch.zeros_like(z)
                t[:, j] = 1.0
                cols_z.append(fwAD.unpack_dual(residuals(x, fwAD.make_dual(z, t))[0]).tangent)
        jx = torch.stack(cols_x, -1).double()
        jz = torch.stack(cols_z, -1).double() if n_i else torch.zeros(*jx.shape[:2], 0).to(jx)
        return jx, jz

    if fast:
        return fit_fast(torch.cat([torch.zeros(b, 3, device=dev), trans0, torch.zeros(b, 3 + n_e, device=dev)], 1))

    # Levenberg-Marquardt. The normal equations are block-structured: one n x n block per image
    # plus the shared identity, coupled through C_i = Jx_i^T Jz_i; the identity is solved first
    # on the Schur complement, then every image's step in one batched solve.
    x = torch.cat([torch.zeros(b, 3, device=dev), trans0, torch.zeros(b, 3 + n_e, device=dev)], 1)
    z = torch.zeros(1, n_i, device=dev)
    r, proj = residuals(x, z)
    current = cost(r, z)
    mu = 1e-3
    eye_x = torch.eye(x.shape[1], dtype=torch.float64, device=dev)
    eye_z = torch.eye(n_i, dtype=torch.float64, device=dev)
    for _ in range(iterations):
        jx, jz = jacobians(x, z)
        rd = r.double()
        a = jx.transpose(1, 2) @ jx  # [B, n, n]
        c = jx.transpose(1, 2) @ jz  # [B, n, I]
        dmat = (jz.transpose(1, 2) @ jz).sum(0) + b * identity_weight * eye_z  # [I, I]
        gx = (jx.transpose(1, 2) @ rd[..., None])[..., 0]  # [B, n]
        gz = (jz.transpose(1, 2) @ rd[..., None])[..., 0].sum(0) + b * identity_weight * z[0].double()
        improved = False
        for _ in range(12):
            ad = a + mu * (a.diagonal(dim1=1, dim2=2)[..., None] * eye_x + 1e-9 * eye_x)
            ainv_c = torch.linalg.solve(ad, c)  # [B, n, I]
            ainv_g = torch.linalg.solve(ad, gx[..., None])[..., 0]  # [B, n]
            if n_i:
                dd = dmat + mu * (dmat.diagonal()[:, None] * eye_z + 1e-9 * eye_z)
                schur = dd - (c.transpose(1, 2) @ ainv_c).sum(0)
                rhs = -(gz - (c.transpose(1, 2) @ ainv_g[..., None])[..., 0].sum(0))
                dz = torch.linalg.solve(schur, rhs)
            else:
                dz = torch.zeros(0, dtype=torch.float64, device=dev)
            dx = -(ainv_g + (ainv_c @ dz[:, None])[..., 0])
            x_new, z_new = x + dx.float(), z + dz.float()[None]
            with torch.no_grad():
                r_new, proj_new = residuals(x_new, z_new)
            new = cost(r_new, z_new)
            if math.isfinite(new) and new < current:
                improved = True
                # converged: relative decrease below 1e-6, or steps below float32 resolution
                done = current - new < 1e-6 * current or float(dx.abs().max()) < 1e-6
                x, z, r, proj, current = x_new, z_new, r_new, proj_new, new
                mu = max(mu / 3.0, 1e-9)
                break
            mu *= 4.0
        if not improved or done:
            break

    rot, trans, jaw, expr = x.split(sizes, 1)
    p = params_of(rot, trans, jaw, expr, z)
    error = (proj - targets).square().sum(-1).mean(1).sqrt()
    p = HeadParams(
        *(t.detach().clone() for t in (p.identity, p.expression, p.jaw, p.eyes, p.rotation, p.translation))
    )
    return LandmarkFit(params=p, camera=camera, projected=proj.detach(), error_px=error)


# ------------------------------------------------------------------------------------ tracker
class MediapipeTracker(nn.Module):
    """Images [B, 3, H, W] -> fitted HeadParams [B] and a frontal Camera [B] of size W x H."""

    def __init__(self, config: MediapipeTrackerConfig, context: BuildContext) -> None:
        super().__init__()
        head = context.head_model
        if head is None:
            raise ShapeError("mediapipe: BuildContext.head_model is None; expected the pipeline's head model")
        self.config = config
        # In a tuple, not an attribute: the head model may be an nn.Module, and storing it directly
        # would register it as a submodule (its weights duplicated in this tracker's state dict).
        self._head: tuple[HeadModel] = (head,)
        names = tuple(getattr(head, "landmark_names", ()))
        used = [n for n in names if mediapipe_indices(n) is not None]
        if len(used) < 6:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ConfigError(
                f"mediapipe: the head model has {len(used)} landmarks with a MediaPipe correspondence "
                f"(needs at least 6; its landmarks: {shown or 'none'}); give it MediaPipe's points "
                "(anny-head: mediapipe_landmarks: true; flame: landmarks: mediapipe_landmark_embedding.npz)"
            )
        self.landmark_names = tuple(used)
        self._model_index = torch.tensor([names.index(n) for n in used], dtype=torch.long)
        self._mp_index = [mediapipe_indices(n) for n in used]
        mean = torch.zeros(len(used), MEDIAPIPE_POINTS)  # [K, 478]: each row averages its points
        for row, ix in enumerate(self._mp_index):
            mean[row, list(ix)] = 1.0 / len(ix)
        self._mp_mean = mean
        known = tuple(head.expression_names)
        if config.expressions is None:
            self.expressions = tuple(e for e in DEFAULT_EXPRESSIONS if e in known)
        else:
            unknown = [e for e in config.expressions if e not in known]
            if unknown:
                raise ConfigError(f"mediapipe: expressions {unknown} are not units of the head model")
            self.expressions = tuple(config.expressions)

    # -- MediaPipe ------------------------------------------------------------------------
    @functools.cached_property
    def _detector(self):
        mp = _import_mediapipe()
        with _native_stderr_quiet():
            return mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.config.min_confidence
            )

    @functools.cached_property
    def _mesh(self):
        mp = _import_mediapipe()
        with _native_stderr_quiet():
            return mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=4,
                refine_landmarks=True,
                min_detection_confidence=self.config.min_confidence,
            )

    def detect_faces(self, image: Tensor) -> list[tuple[float, float, float]]:
        """Face boxes (left, top, side) in pixels of ``image`` [1, 3, H, W], largest first.

        MediaPipe's detector sees the image at 192x192, so it misses faces under about 7% of the
        image side. An image longer than ``TILE_SIDE * 1.5`` in which it finds no face is searched
        again in overlapping ``TILE_SIDE``-px tiles (stride 3/4 of a tile), which finds faces
        from about 70 px up (``tile_min_face``); boxes found twice are merged."""
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ShapeError(f"mediapipe: expected one image [1, 3, H, W], got {list(image.shape)}")
        h, w = image.shape[-2:]
        rgb = _to_uint8(image[0])
        boxes = self._detect(rgb, 0, 0)
        if not boxes and max(h, w) > 1.5 * TILE_SIDE:
            stride = TILE_SIDE * 3 // 4
            for top in _tile_starts(h, TILE_SIDE, stride):
                for left in _tile_starts(w, TILE_SIDE, stride):
                    tile = rgb[top : top + TILE_SIDE, left : left + TILE_SIDE]
                    boxes += self._detect(np.ascontiguousarray(tile), left, top)
            boxes = _merge_boxes(boxes)
        return sorted(boxes, key=lambda b: -b[2])

    def _detect(self, rgb: Any, left: int, top: int) -> list[tuple[float, float, float]]:
        """The detector's boxes in an [H, W, 3] uint8 array, shifted by (left, top)."""
        h, w = rgb.shape[:2]
        with _native_stderr_quiet():
            result = self._detector.process(rgb)
        boxes = []
        for det in result.detections or ():
            r = det.location_data.relative_bounding_box
            bw, bh = r.width * w, r.height * h
            side = (bw + bh) / 2
            boxes.append((left + r.xmin * w + (bw - side) / 2, top + r.ymin * h + (bh - side) / 2, side))
        return boxes

    @functools.cached_property
    def _segmenter(self):
        mp = _import_mediapipe()
        with _native_stderr_quiet():
            return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)

    def segment(self, image: Tensor) -> Tensor:
        """MediaPipe's selfie segmentation of ``image`` [1, 3, H, W]: person probability
        [1, 1, H, W] in [0, 1] (the tracker is a ``Segmenter``; ``background: static`` uses it)."""
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise ShapeError(f"mediapipe: expected one image [1, 3, H, W], got {list(image.shape)}")
        rgb = _to_uint8(image[0])
        with _native_stderr_quiet():
            result = self._segmenter.process(rgb)
        mask = getattr(result, "segmentation_mask", None)
        if mask is None:
            raise InputError("mediapipe: the selfie segmentation returned no mask for the portrait")
        return torch.from_numpy(np.asarray(mask, dtype=np.float32).copy())[None, None].clamp(0, 1).to(image.device)

    def crop_box(self, image: Tensor) -> CropBox | None:
        """A square around the largest face, sized and placed like the frontal tracker's.

        No face: ``InputError``, or with ``no_face: neutral`` a warning and None (centred crop).
        """
        faces = self.detect_faces(image)
        h, w = image.shape[-2:]
        if not faces and self.config.no_face == "neutral":
            warnings.warn(
                f"mediapipe: no face found in the {w}x{h} image; using the centred crop", stacklevel=2
            )
            return None
        if not faces:
            if max(h, w) > 1.5 * TILE_SIDE:
                raise InputError(
                    f"mediapipe: no face found in the {w}x{h} image, searched whole and in {TILE_SIDE}-px "
                    f"tiles (expected a face at least {max(tile_min_face(), self.config.min_face_pixels)} "
                    "px wide; crop the image closer to the face)"
                )
            raise InputError(
                f"mediapipe: no face found in the {w}x{h} image (expected a face at least "
                f"{self.config.min_face_pixels} px wide)"
            )
        left, top, side = faces[0]
        if side < self.config.min_face_pixels:
            raise InputError(
                f"mediapipe: the largest face is {side:.0f} px wide, smaller than the minimum "
                f"{self.config.min_face_pixels} px (min_face_pixels); use a larger image of the face"
            )
        if len(faces) > 1:
            warnings.warn(f"mediapipe: {len(faces)} faces found; using the largest", stacklevel=2)
        outside = {
            "left": -left,
            "top": -top,
            "right": left + side - w,
            "bottom": top + side - h,
        }
        cut = {edge: px / side for edge, px in outside.items() if px > CUT_OFF_SHARE * side}
        if cut:
            where = ", ".join(f"{edge} ({share:.0%} of the face box outside)" for edge, share in cut.items())
            warnings.warn(
                f"mediapipe: the face is cut off at the image's {where}; the missing part of the head "
                "is filled in, not reconstructed (use a portrait that shows the whole face)",
                stacklevel=2,
            )
        cx, cy = left + side / 2, top + side / 2 + self.config.face_offset * side
        crop = self.config.face_scale * side
        return CropBox(cx - crop / 2, cy - crop / 2, crop)

    def detect_landmarks(
        self, images: Tensor, missing: Literal["error", "nan"] = "error", mesh: Any = None
    ) -> Tensor:
        """MediaPipe's 478 landmarks [B, 478, 2] in pixels of each image (the largest face).

        An image without a face mesh raises ``InputError`` naming it, or with ``missing='nan'``
        gets NaN landmarks. ``mesh``: the MediaPipe face mesh to use (default: this tracker's,
        in static-image mode; a ``sequence()`` passes its own, in video mode).
        """
        _check_batch(images)
        b, _, h, w = images.shape
        mesh = self._mesh if mesh is None else mesh
        out = torch.empty(b, MEDIAPIPE_POINTS, 2)
        for i in range(b):
            rgb = _to_uint8(images[i])
            with _native_stderr_quiet():
                result = mesh.process(rgb)
            faces = result.multi_face_landmarks or ()
            if not faces and missing == "nan":
                out[i] = float("nan")
                continue
            if not faces:
                raise InputError(
                    f"mediapipe: no face landmarks found in image {i} of {b} ({w}x{h}); "
                    "expected a crop around one face"
                )
            pts = [_mesh_points(f, w, h) for f in faces]
            sizes = [float((p.max(0).values - p.min(0).values).prod()) for p in pts]
            out[i] = pts[max(range(len(pts)), key=sizes.__getitem__)]
        return out

    def landmark_targets(self, mediapipe_points: Tensor) -> Tensor:
        """The head-model landmarks' targets [B, K, 2] from MediaPipe points [B, 478, 2]."""
        return self._mp_mean.to(mediapipe_points) @ mediapipe_points  # NaN rows stay NaN

    # -- fitting --------------------------------------------------------------------------
    def track_with_error(self, images: Tensor) -> tuple[Tracked, Tensor]:
        """``track`` plus the RMS landmark reprojection error of each image [B], in pixels."""
        tracked, error, _ = self.fit_images(images)
        return tracked, error

    def sequence(self) -> MediapipeSequence:
        """A tracker for the frames of one video, in order (see ``MediapipeSequence``)."""
        return MediapipeSequence(self)

    def fit_images(
        self,
        images: Tensor,
        mesh: Any = None,
        identity: Tensor | None = None,
        start: HeadParams | None = None,
    ) -> tuple[Tracked, Tensor, LandmarkFit | None]:
        """``track_with_error`` with the fit's details: (tracked [B], errors [B], the fit of the
        images with a face or None when none has one). ``mesh``, ``identity`` and ``start`` as in
        ``detect_landmarks`` and ``fit_landmarks`` (a known identity is used only by head models
        with a landmark rig)."""
        _check_batch(images)
        _, _, h, w = images.shape
        missing = "nan" if self.config.no_face == "neutral" else "error"
        points = self.detect_landmarks(images, missing, mesh)  # [B, 478, 2]
        tracked, error, fit = self.fit_mediapipe_points(points, w, h, identity, start)
        return tracked.replace(camera=tracked.camera.to(images.dtype)).to(images.device), error, fit

    def fit_mediapipe_points(
        self,
        points: Tensor,
        width: int,
        height: int,
        identity: Tensor | None = None,
        start: HeadParams | None = None,
        jaw_rig: Any = None,
    ) -> tuple[Tracked, Tensor, LandmarkFit | None]:
        """The head-model fit of MediaPipe points [B, 478, 2] (pixels of ``width`` x ``height``
        images, NaN rows: no face) as in ``fit_images``; float32 on the CPU."""
        b, w, h = points.shape[0], width, height
        c = self.config
        targets = self.landmark_targets(points)  # [B, K, 2]
        found = torch.isfinite(targets).all(2).all(1)  # [B]
        head = self._head[0]
        params = head.neutral(b).to("cpu")
        params = params.replace(**{k: v.float() for k, v in params.tensors().items()})
        error = torch.full((b,), float("nan"))
        if not found.all():
            lost = [i for i in range(b) if not found[i]]
            warnings.warn(
                f"mediapipe: no face in images {lost} of {b}; they get the neutral pose", stacklevel=2
            )
        if found.any():
            keep = found.nonzero()[:, 0]
            camera = Camera.frontal(c.distance, c.fov_degrees, w, h, len(keep))
            fit = fit_landmarks(
                head,
                targets[keep],
                camera,
                self._model_index,
                self.expressions,
                c.iterations,
                c.identity_weight,
                c.expression_weight,
                c.jaw_weight,
                identity if isinstance(head, LandmarkRigHead) else None,
                start,
                jaw_rig,
            )
            fields = {k: v.clone() for k, v in params.tensors().items()}
            for k, v in fit.params.tensors().items():
                fields[k][keep] = v.to(fields[k])
            fields["identity"][:] = fit.params.identity[:1].to(fields["identity"])  # one person
            params = HeadParams(**fields)
            error[keep] = fit.error_px.cpu()
        else:
            fit = None
        cam = Camera.frontal(c.distance, c.fov_degrees, w, h, b)
        return Tracked(params=params, camera=cam), error, fit

    def track(self, images: Tensor) -> Tracked:
        return self.track_with_error(images)[0]

    def forward(self, images: Tensor) -> Tracked:
        return self.track(images)


class MediapipeSequence:
    """The ``mediapipe`` tracker following one video (``MediapipeTracker.sequence()``).

    Frames must come in order. Compared with tracking each image on its own:

    - MediaPipe's face mesh runs in video mode (one face; it re-detects only when it loses the
      face, and otherwise follows the previous frame's landmarks), not static-image mode;
    - the identity is fitted once, on the first call's frames (jointly, see ``fit_landmarks``),
      and kept for the rest of the sequence (head models with a landmark rig);
    - every later frame's pose, jaw and expression start from the last fitted frame's.

    Face boxes and crops are the tracker's own (``detect_faces``, ``crop_box``).
    """

    def __init__(self, tracker: MediapipeTracker) -> None:
        self._tracker = tracker
        self.config = tracker.config
        self.identity: Tensor | None = None  # [I] once the first frames are fitted
        self._last: HeadParams | None = None  # [1] the last fitted frame
        self._calibration: tuple[float, float, float] | None = None  # see locate
        self._rig: Any = None  # _fit.JawRig of the identity, built on first use

    @functools.cached_property
    def _mesh(self):
        """The face mesh in video mode, for crops of consecutive frames (``track_with_error``)."""
        return _video_mesh(self.config.min_confidence)

    def detect_faces(self, image: Tensor) -> list[tuple[float, float, float]]:
        return self._tracker.detect_faces(image)

    def crop_box(self, image: Tensor) -> CropBox | None:
        return self._tracker.crop_box(image)

    def track_with_error(self, images: Tensor) -> tuple[Tracked, Tensor]:
        tracked, error, fit = self._tracker.fit_images(images, self._mesh, self.identity, self._last)
        self._remember(fit)
        return tracked, error

    # -- whole frames (FrameLandmarker) ------------------------------------------------------
    @functools.cached_property
    def _frame_mesh(self):
        """Another, for whole frames (``locate``): each graph follows its own stream."""
        return _video_mesh(self.config.min_confidence)

    def locate(self, frame: Tensor) -> Located | None:
        """MediaPipe's 478 points on the whole ``frame`` [1, 3, H, W] (video mode: it follows the
        face from the previous frame's landmarks), and a face box like the detector's.

        The box is the points' bounding square moved and scaled by a calibration measured
        against ``detect_faces`` on the first frame with a face (and again after the face was
        lost), so crops match those of the per-frame detector; the detector's face count is
        reported on those frames (0 on the others)."""
        if frame.dim() != 4 or frame.shape[:2] != (1, 3):
            raise ShapeError(f"mediapipe: expected one frame [1, 3, H, W], got {list(frame.shape)}")
        h, w = frame.shape[-2:]
        rgb = _to_uint8(frame[0])
        with _native_stderr_quiet():
            result = self._frame_mesh.process(rgb)
        meshes = result.multi_face_landmarks or ()
        if not meshes:
            self._calibration = None
            return None
        points = _mesh_points(meshes[0], w, h)
        lo, hi = points.min(0).values, points.max(0).values
        centre, extent = (lo + hi) / 2, float((hi - lo).max().clamp_min(1.0))
        seen = 0
        if self._calibration is None:
            boxes = self._tracker.detect_faces(frame)
            seen = len(boxes)
            self._calibration = _box_calibration(boxes, centre, extent)
        dx, dy, ratio = self._calibration
        side = ratio * extent
        cx, cy = float(centre[0]) + dx * extent, float(centre[1]) + dy * extent
        return Located(face=(cx - side / 2, cy - side / 2, side), points=points, faces=seen)

    def fit_points(self, points: Tensor, size: int) -> tuple[Tracked, Tensor]:
        """Fit MediaPipe points [B, 478, 2] given in pixels of ``size`` x ``size`` crops."""
        tracked, error, fit = self._tracker.fit_mediapipe_points(
            points, size, size, self.identity, self._last, self._jaw_rig()
        )
        self._remember(fit)
        return tracked, error

    def _jaw_rig(self) -> Any:
        """The per-frame rig of the sequence's identity (built once, when the identity is known)."""
        if self.identity is None or not isinstance(self._tracker._head[0], LandmarkRigHead):
            return None
        if self._rig is None:
            head, tracker = self._tracker._head[0], self._tracker
            names = tuple(head.expression_names)
            expr_index = torch.tensor([names.index(e) for e in tracker.expressions], dtype=torch.long)
            dev = head.template.device
            rig = head.landmark_rig(tracker._model_index.to(dev))
            self._rig = JawRig.for_identity(rig, self.identity.to(dev), expr_index.to(dev))
        return self._rig

    def _remember(self, fit: LandmarkFit | None) -> None:
        if fit is None:
            return
        if self.identity is None and isinstance(self._tracker._head[0], LandmarkRigHead):
            self.identity = fit.params.identity[0].detach().clone()
        self._last = fit.params.select(fit.params.batch_size - 1)

    def track(self, images: Tensor) -> Tracked:
        return self.track_with_error(images)[0]


def _video_mesh(confidence: float):
    """MediaPipe's face mesh in video mode for one face (it re-detects only when it loses it)."""
    mp = _import_mediapipe()
    with _native_stderr_quiet():
        return mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=confidence,
            min_tracking_confidence=confidence,
        )


FACE_BOX_OF_POINTS = (0.0073, -0.0432, 0.978)
"""(dx, dy, ratio): the face box of MediaPipe's 478 points when the detector finds no face to
calibrate against: centre moved by (dx, dy) and side scaled by ratio, in units of the points'
bounding-square side. Measured on scikit-image's astronaut (see ``_box_calibration``)."""


def _box_calibration(
    boxes: list[tuple[float, float, float]], centre: Tensor, extent: float
) -> tuple[float, float, float]:
    """(dx, dy, ratio) mapping the points' bounding square (``centre`` [2], side ``extent``) onto
    the detector's face box nearest to it; ``FACE_BOX_OF_POINTS`` without one."""
    if not boxes:
        return FACE_BOX_OF_POINTS
    cx, cy = float(centre[0]), float(centre[1])
    left, top, side = min(boxes, key=lambda b: (b[0] + b[2] / 2 - cx) ** 2 + (b[1] + b[2] / 2 - cy) ** 2)
    return ((left + side / 2 - cx) / extent, (top + side / 2 - cy) / extent, side / extent)


def _mesh_points(face: Any, width: int, height: int) -> Tensor:
    """One MediaPipe face mesh result as [478, 2] pixels."""
    import numpy as np

    xy = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32)  # [478, 2] normalised
    if xy.shape[0] != MEDIAPIPE_POINTS:
        raise InputError(f"mediapipe: expected {MEDIAPIPE_POINTS} landmarks, got {xy.shape[0]}")
    return torch.from_numpy(xy * np.array([width, height], dtype=np.float32))


TILE_SIDE = 1024
"""Side of the tiles a large image is searched in when the whole image shows no face (pixels)."""


def tile_min_face() -> int:
    """About the smallest face the tiled search finds: 7% of a tile (measured: a 104-px face is
    found on a 1536-px canvas, not on a 2048-px one)."""
    return round(0.07 * TILE_SIDE)


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Offsets of tiles covering ``length`` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _merge_boxes(boxes: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Boxes found in several overlapping tiles, once: a box whose centre lies in a larger kept
    box is dropped."""
    kept: list[tuple[float, float, float]] = []
    for left, top, side in sorted(boxes, key=lambda b: -b[2]):
        cx, cy = left + side / 2, top + side / 2
        if not any(kl <= cx <= kl + ks and kt <= cy <= kt + ks for kl, kt, ks in kept):
            kept.append((left, top, side))
    return kept


def _check_batch(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ShapeError(f"mediapipe: expected an image batch [B, 3, H, W], got {list(images.shape)}")


@hookimpl
def gshead_register_trackers(register) -> None:
    register.add(MediapipeTrackerConfig, MediapipeTracker)
