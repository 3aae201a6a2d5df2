"""An independent judge for real portraits, which have no ground-truth video (``gshead eval portraits``).

Each portrait is reconstructed by the pipeline (with optional test-time fitting, as ``gshead
reconstruct --fit-steps``), driven through the demo motion (``gshead.io.motion``: talk, smile,
blink, head turn; relative to the source as ``gshead reenact`` does) and rendered along an orbit
of the camera about the head's centre (the template's bounding-box centre, placed by the source
pose; the source expression, yaw ``±orbit_degrees``). Every frame is then
looked at by a *judge* that is not the tracker that fitted the avatar: dlib's HOG frontal face
detector, its 68-point shape predictor and its ResNet face descriptor (``dlib-bin`` and
``face-recognition-models``, the ``judge`` extra; run offline from the files those packages
install). Where dlib is missing, the judge's measures are ``–`` with a note; the pixel measures
are still computed.

Measures (``PortraitResult.measures``), each with its target (``TARGETS``; GOOD when met):

- **detection**: share of driven and orbit frames in which the judge finds a face. Frames are
  resized to ``JUDGE_SIZE`` px first; where the detector finds nothing it is run again on the
  image upsampled once. Target: 100%.
- **identity**: 128-d descriptor Euclidean distance of each frame to the source portrait's
  descriptor (the whole portrait as given, at its own resolution); a frame without a face counts
  as a miss. Target: distance < 0.5 (dlib's usual same-person threshold is 0.6) on >= 90% of frames.
- **mouth**: inner-lip opening (mean of the distances 61-67, 62-66, 63-65 of the 0-based
  68-point layout) over the inter-ocular distance (outer eye corners 36-45), against the commanded
  jaw rotation on the talk frames: Pearson r and range (max - min, in inter-ocular distances).
  Target: r >= 0.7 and range >= 0.10.
- **blink**: eye aspect ratio (Soukupová and Čech 2016, both eyes averaged) on the frames whose
  commanded blink is fully shut, over the median on the driven frames with no blink commanded.
  Target: <= 0.6. ``–`` for a head model without ``eyeBlinkLeft``/``eyeBlinkRight``.
- **yaw**: head yaw estimated from the landmarks, against the commanded yaw on the turn frames
  (Pearson r; the gain, measured over commanded degrees, is reported too). The estimate is
  ``atan(offset / NOSE_DEPTH_RATIO)`` where ``offset`` is the nose tip's (30) horizontal offset
  from the outer eye corners' midpoint over the inter-ocular distance and ``NOSE_DEPTH_RATIO``
  a generic face proportion (the nose tip stands about 0.42 inter-ocular distances in front of the
  outer eye corners); only r is a target, the degrees are rough. Positive: towards the subject's
  left (image right), as the demo commands it. Target: r >= 0.8. The same r along the orbit
  (the camera's yaw as the command) is reported for information.
- **background**: mean absolute grey-level change (0-255, ITU-R 601 luma) outside the head of
  the source-view frame 0, over the turn frames; the largest frame mean is the measure. "The
  head" is the person mask of MediaPipe's selfie segmentation on the source crop (head, hair,
  neck and shoulders: the model segments the whole person), dilated by ``MASK_DILATION`` of the
  side; where mediapipe is not installed, the judge's face box on the source crop grown by
  ``BOX_GROWTH`` (``background_mask`` says which). Target: <= 4 grey levels.
- **source view**: PSNR and SSIM (``gshead.metrics.image``) of the avatar rendered from the
  source view with the source parameters at ``source_size`` against the portrait crop (after
  fitting, when fitting); and the PSNR of frame 0 of the demo (render size) against the same
  crop. Target: frame 0 within 1 dB of the source-view (fit) PSNR.

A portrait is GOOD overall when every target is met; "not" when one fails; ``–`` when none fails
but some could not be measured. Outputs (``write_portrait_results``, each file written
atomically): ``results.md``, ``results.csv``, ``results.json`` (every measure, verdicts and
per-frame values) and one contact sheet ``<portrait>.png`` per portrait (``contact_sheet``:
the source crop and sampled driven and orbit frames with the judge's landmarks drawn).

Licences of the judge (see ``docs/eval-portraits.md``): dlib is under the Boost Software
Licence; ``face-recognition-models`` ships Davis King's model files under CC0 1.0 (its package
metadata says MIT). The 68-point shape predictor was trained on the iBUG 300-W dataset, whose
licence excludes commercial use: treat its output as research-only.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gshead.core.errors import InputError

if TYPE_CHECKING:
    from gshead.core.pipeline import Pipeline
    from gshead.core.types import Camera, HeadParams

JUDGE_SIZE = 256
"""Side (px) frames are resized to before the judge looks at them."""
DEMO_FRAMES = 100
ORBIT_FRAMES = 40
ORBIT_DEGREES = 30.0
NOSE_DEPTH_RATIO = 0.42
"""Nose tip's depth in front of the outer eye corners, in inter-ocular distances (a generic proportion)."""
MASK_DILATION = 0.03
"""Dilation of the person mask, as a share of the image side."""
BOX_GROWTH = (0.6, 1.0, 0.6, 0.5)
"""Growth of the judge's face box for the fallback head mask: (left, top, right, bottom), in box sides."""
SHUT = 0.99
"""A commanded blink at or above this is a shut-eye frame."""

# Targets (``Measure.good``)
DETECTION_GOAL = 1.0
IDENTITY_DISTANCE = 0.5
IDENTITY_SHARE = 0.9
MOUTH_R, MOUTH_RANGE = 0.7, 0.10
BLINK_RATIO = 0.6
YAW_R = 0.8
BACKGROUND_GREY = 4.0
PSNR_GAP_DB = 1.0

SKIPPED = "–"
NO_JUDGE = (
    "the judge (dlib) is not installed: pip install 'gshead[judge]' (dlib-bin, face-recognition-models)"
)

# 0-based indices of the 68-point layout (iBUG 300-W)
RIGHT_EYE = tuple(range(36, 42))  # the subject's right eye, image left
LEFT_EYE = tuple(range(42, 48))
OUTER_CORNERS = (36, 45)
NOSE_TIP = 30
INNER_LIPS = ((61, 67), (62, 66), (63, 65))


# ----------------------------------------------------------------------------------- the judge
def _models_dir() -> Path | None:
    """The folder of face-recognition-models' model files, found without importing the package
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ships)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):  # a broken or blocked installation
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


PREDICTOR = "shape_predictor_68_face_landmarks.dat"
DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"


def judge_unavailable() -> str | None:
    """Why the dlib judge cannot run (None when it can)."""
    try:
        missing = importlib.util.find_spec("dlib") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        return NO_JUDGE
    folder = _models_dir()
    if folder is None:
        return NO_JUDGE
    for name in (PREDICTOR, DESCRIPTOR):
        if not (folder / name).is_file():
            return f"the judge's model file {folder / name} is missing (reinstall face-recognition-models)"
    return None


@dataclass(frozen=True, eq=False)
class Face:
    """What the judge sees in one image (coordinates in that image's pixels)."""

    box: tuple[float, float, float, float]  # left, top, right, bottom
    landmarks: np.ndarray  # [68, 2] x, y
    descriptor: np.ndarray  # [128]
    upsampled: bool  # found only on the image upsampled once


def to_uint8(image: Tensor, size: int | None = None) -> np.ndarray:
    """[3, H, W] (or [1, 3, H, W]) in [0, 1] -> H x W x 3 uint8, resized to ``size`` (bicubic) when given."""
    from PIL import Image

    if image.dim() == 4:
        image = image[0]
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    if size is not None and array.shape[:2] != (size, size):
        array = np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))
    return np.ascontiguousarray(array)


class Judge:
    """dlib's detector, 68-point predictor and face descriptor (loaded on construction)."""

    def __init__(self) -> None:
        reason = judge_unavailable()
        if reason:
            raise InputError(reason)
        import dlib

        folder = _models_dir()
        assert folder is not None
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(folder / PREDICTOR))
        self._encoder = dlib.face_recognition_model_v1(str(folder / DESCRIPTOR))

    def observe(self, image: np.ndarray) -> Face | None:
        """The largest face in an H x W x 3 uint8 image, or None; tried as it is, then upsampled once."""
        upsampled = False
        boxes = list(self._detector(image, 0))
        if not boxes:
            boxes, upsampled = list(self._detector(image, 1)), True
        if not boxes:
            return None
        box = max(boxes, key=lambda r: r.width() * r.height())
        shape = self._predictor(image, box)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        descriptor = np.array(self._encoder.compute_face_descriptor(image, shape), dtype=np.float64)
        return Face(
            (float(box.left()), float(box.top()), float(box.right()), float(box.bottom())),
            points,
            descriptor,
            upsampled,
        )


# ----------------------------------------------------------------------------------- landmark measures
def inter_ocular(points: np.ndarray) -> float:
    """Distance between the outer eye corners (36, 45) of 68 points [68, 2]."""
    return float(np.linalg.norm(points[OUTER_CORNERS[0]] - points[OUTER_CORNERS[1]]))


def mouth_opening(points: np.ndarray) -> float:
    """Mean inner-lip gap (61-67, 62-66, 63-65) over the inter-ocular distance."""
    gap = np.mean([np.linalg.norm(points[a] - points[b]) for a, b in INNER_LIPS])
    return float(gap) / max(inter_ocular(points), 1e-9)


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Eye aspect ratio (p2-p6 + p3-p5) / (2 p1-p4), the mean of both eyes."""

    def ear(eye: tuple[int, ...]) -> float:
        p = points[list(eye)]
        vertical = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
        return float(vertical / max(2.0 * np.linalg.norm(p[0] - p[3]), 1e-9))

    return 0.5 * (ear(RIGHT_EYE) + ear(LEFT_EYE))


def yaw_degrees(points: np.ndarray) -> float:
    """Rough head yaw in degrees from the nose tip's offset between the outer eye corners;
    positive when the nose is right of the corners' midpoint in the image (the subject's left)."""
    mid = 0.5 * (points[OUTER_CORNERS[0]] + points[OUTER_CORNERS[1]])
    offset = (points[NOSE_TIP, 0] - mid[0]) / max(inter_ocular(points), 1e-9)
    return math.degrees(math.atan(offset / NOSE_DEPTH_RATIO))


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r, 0.0 when one side does not vary, None with fewer than 3 pairs."""
    if len(x) < 3:
        return None
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------------- motion and renders
@dataclass(frozen=True)
class Commanded:
    """The demo motion's commanded values per driven frame [T]."""

    phase: tuple[str, ...]  # talk, smile, blink, turn
    jaw: np.ndarray  # jaw opening rotation, radians
    blink: np.ndarray | None  # eyeBlink weight 0..1 (None: the head model has no blink unit)
    yaw: np.ndarray  # head yaw, degrees, positive towards the subject's left


def commanded_motion(head_model, frames: int = DEMO_FRAMES) -> tuple[HeadParams, Commanded]:
    """The demo motion [frames] and what it commands."""
    from gshead.io.motion import PHASES, demo_motion

    params = demo_motion(head_model, frames)
    t = torch.arange(frames, dtype=torch.float32)
    phase = torch.clamp((t * len(PHASES) / frames).long(), max=len(PHASES) - 1)
    names = tuple(head_model.expression_names)
    blink = None
    if "eyeBlinkLeft" in names:
        blink = params.expression[:, names.index("eyeBlinkLeft")].detach().double().cpu().numpy()
    return params, Commanded(
        phase=tuple(PHASES[int(i)] for i in phase),
        jaw=params.jaw[:, 0].detach().double().cpu().numpy(),
        blink=blink,
        yaw=np.degrees(params.rotation[:, 1].detach().double().cpu().numpy()),
    )


def orbit_cameras(camera: Camera, frames: int, degrees: float, pivot: Tensor) -> tuple[Camera, np.ndarray]:
    """``camera`` [1] turned about the vertical axis through ``pivot`` [3] by
    ``degrees * sin(2 pi t / frames)`` (the scene turns as a head yaw of that angle would turn it):
    the cameras [frames] and the yaws in degrees."""
    yaw = np.radians(degrees) * np.sin(2 * math.pi * np.arange(frames) / frames)
    c, s = torch.tensor(np.cos(yaw)), torch.tensor(np.sin(yaw))
    move = torch.zeros(frames, 4, 4, dtype=torch.float64)
    move[:, 0, 0], move[:, 0, 2], move[:, 2, 0], move[:, 2, 2] = c, s, -s, c
    move[:, 1, 1] = move[:, 3, 3] = 1.0
    p = pivot.detach().double().cpu()
    move[:, :3, 3] = p - move[:, :3, :3] @ p
    dtype = camera.world_to_camera.dtype
    return camera.expand(frames).moved(
        move.to(dtype=dtype, device=camera.world_to_camera.device)
    ), np.degrees(yaw)


@dataclass(frozen=True, eq=False)
class Rendered:
    """One portrait's avatar seen by the protocol."""

    crop: Tensor  # [1, 3, S, S] the source crop the avatar was built from
    driven: Tensor  # [T, 3, H, W] the demo motion from the source camera
    orbit: Tensor  # [N, 3, H, W] neutral (source) expression along the orbit
    orbit_yaw: np.ndarray  # [N] camera yaw, degrees
    fit_psnr: float  # source view, fitted avatar (dB; the reconstruction when no fitting)
    fit_ssim: float
    psnr_before_fit: float | None  # source view before fitting (None without fitting)
    frame0_psnr: float  # demo frame 0 (render size) against the crop


def _render(session, params: HeadParams, cameras: Camera | None, batch: int) -> Tensor:
    out = []
    for start in range(0, params.batch_size, batch):
        index = slice(start, min(params.batch_size, start + batch))
        view = None
        if cameras is not None:
            from gshead.core.types import Camera as _Camera

            view = _Camera(
                cameras.world_to_camera[index], cameras.intrinsics[index], cameras.width, cameras.height
            )
        out.append(session.render(params.select(index), camera=view))
    return torch.cat(out)


def render_portrait(
    pipeline: Pipeline,
    crop: Tensor,
    motion: HeadParams,
    fit_steps: int = 0,
    fit_lr: float = 0.01,
    orbit_frames: int = ORBIT_FRAMES,
    orbit_degrees: float = ORBIT_DEGREES,
    batch: int = 10,
    on_fit_step: Callable[[int, float], None] | None = None,
) -> Rendered:
    """Reconstruct ``crop`` [1, 3, S, S] (``pipeline.prepare_image``), fit it for ``fit_steps``,
    and render the driven ``motion`` [T] (relative to the source) and the orbit."""
    from gshead.jobs.driving import relative_to_source
    from gshead.jobs.fitting import fit_avatar
    from gshead.metrics.image import psnr, ssim, to_size

    with torch.no_grad():
        avatar = pipeline.reconstruct(crop)
    before = None
    if fit_steps:
        avatar, report = fit_avatar(pipeline, avatar, crop, fit_steps, lr=fit_lr, progress=on_fit_step)
        before = report.psnr_before
    with torch.no_grad():
        source_view = pipeline.session(avatar, render_size=crop.shape[-1]).render(avatar.source)
        session = pipeline.session(avatar)
        neutral = pipeline.head_model.neutral(1)
        driven = _render(session, relative_to_source(motion, avatar.source, neutral), None, batch)
        # The orbit turns about the head's centre where the source pose puts it in the world.
        template = pipeline.head_model.template
        centre = 0.5 * (template.min(0).values + template.max(0).values)
        pose = avatar.source.pose_matrix()[0].to(centre.dtype)
        pivot = pose[:3, :3] @ centre + pose[:3, 3]
        cameras, yaw = orbit_cameras(session.camera, orbit_frames, orbit_degrees, pivot)
        still = relative_to_source(pipeline.head_model.neutral(orbit_frames), avatar.source, neutral)
        orbit = _render(session, still, cameras, batch)
        small = to_size(crop, tuple(driven.shape[-2:]))
    return Rendered(
        crop=crop,
        driven=driven,
        orbit=orbit,
        orbit_yaw=yaw,
        fit_psnr=float(psnr(source_view, crop)[0]),
        fit_ssim=float(ssim(source_view, crop)[0]),
        psnr_before_fit=before,
        frame0_psnr=float(psnr(driven[:1], small)[0]),
    )


# ----------------------------------------------------------------------------------- the head mask
def background_mask(crop: Tensor, size: int, face: Face | None) -> tuple[np.ndarray | None, str]:
    """(True outside the head, [size, size]; how it was made) for the source crop [1, 3, S, S];
    (None, why) when neither MediaPipe nor a judge's face is at hand. ``face`` is the judge's
    face on the crop at ``JUDGE_SIZE``."""
    from PIL import Image

    if importlib.util.find_spec("mediapipe") is not None:
        person = _selfie_mask(to_uint8(crop, size))
        radius = max(1, round(MASK_DILATION * size))
        grown = Image.fromarray((person * 255).astype(np.uint8)).filter(_max_filter(2 * radius + 1))
        outside = np.asarray(grown) < 128
        return outside, f"MediaPipe selfie segmentation (person) on the source crop, dilated {radius} px"
    if face is not None:
        scale = size / JUDGE_SIZE
        left, top, right, bottom = (v * scale for v in face.box)
        w, h = right - left, bottom - top
        gl, gt, gr, gb = BOX_GROWTH
        ys, xs = np.mgrid[0:size, 0:size]
        inside = (
            (xs >= left - gl * w) & (xs <= right + gr * w) & (ys >= top - gt * h) & (ys <= bottom + gb * h)
        )
        return ~inside, "the judge's face box on the source crop, grown (mediapipe is not installed)"
    return None, "no head mask: neither mediapipe nor the judge (dlib) is installed"


def _max_filter(size: int):
    from PIL import ImageFilter

    return ImageFilter.MaxFilter(size if size % 2 else size + 1)


def _selfie_mask(image: np.ndarray) -> np.ndarray:
    """Person mask (bool, H x W) of an RGB uint8 image by MediaPipe's bundled selfie segmentation."""
    import os
    import sys

    from mediapipe.python.solutions import selfie_segmentation

    # MediaPipe's C++ side prints INFO/W lines to descriptor 2 when its graph starts: silenced here
    # (as the mediapipe tracker does; eval reaches plugins only through the registry).
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        with selfie_segmentation.SelfieSegmentation(model_selection=0) as model:
            result = model.process(image)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return np.asarray(result.segmentation_mask) > 0.5


def grey(frames: Tensor) -> np.ndarray:
    """[T, 3, H, W] in [0, 1] -> [T, H, W] grey levels 0..255 (ITU-R 601 luma)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return ((frames.clamp(0, 1) * weights).sum(1) * 255.0).double().cpu().numpy()


# ----------------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class FrameScore:
    """The judge's reading of one frame (None: no face, or no judge)."""

    kind: str  # "driven" or "orbit"
    index: int
    phase: str  # talk, smile, blink, turn; "orbit" for the orbit
    found: bool | None  # None: no judge
    mouth: float | None
    ear: float | None
    yaw: float | None  # degrees
    identity: float | None  # descriptor distance to the source portrait


@dataclass(frozen=True)
class Measure:
    """One measure of a portrait, its target and verdict."""

    key: str
    label: str
    value: float | None  # the headline number (None: not measured)
    text: str  # how it is shown, e.g. "100% (140/140)" or "–"
    goal: str  # the target, e.g. ">= 0.7"
    good: bool | None  # None: no target, or not measured
    note: str = ""
    extra: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PortraitResult:
    """Every measure of one portrait and the per-frame readings behind them."""

    name: str
    image: str
    measures: tuple[Measure, ...]
    frames: tuple[FrameScore, ...]
    notes: tuple[str, ...]

    def measure(self, key: str) -> Measure:
        return next(m for m in self.measures if m.key == key)

    @property
    def verdict(self) -> bool | None:
        """True (GOOD) when every target is met, False when one fails, None when none fails but
        some are unmeasured."""
        verdicts = [m.good for m in self.measures if m.goal]
        if any(v is False for v in verdicts):
            return False
        return True if all(v is True for v in verdicts) else None


def verdict_text(good: bool | None) -> str:
    return {True: "GOOD", False: "not", None: SKIPPED}[good]


def _score_frames(
    judge: Judge | None,
    frames: Tensor,
    kind: str,
    phases: Sequence[str],
    source: Face | None,
    step: Callable[[int], None] | None,
) -> tuple[list[FrameScore], list[Face | None]]:
    scores, faces = [], []
    for i in range(frames.shape[0]):
        face = judge.observe(to_uint8(frames[i], JUDGE_SIZE)) if judge is not None else None
        if judge is None:
            scores.append(FrameScore(kind, i, phases[i], None, None, None, None, None))
        elif face is None:
            scores.append(FrameScore(kind, i, phases[i], False, None, None, None, None))
        else:
            distance = (
                float(np.linalg.norm(face.descriptor - source.descriptor)) if source is not None else None
            )
            p = face.landmarks
            scores.append(
                FrameScore(
                    kind, i, phases[i], True, mouth_opening(p), eye_aspect_ratio(p), yaw_degrees(p), distance
                )
            )
        faces.append(face)
        if step is not None:
            step(1)
    return scores, faces


def _fmt(value: float | None, decimals: int = 3) -> str:
    return SKIPPED if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def score_portrait(
    name: str,
    image: str,
    rendered: Rendered,
    commanded: Commanded,
    judge: Judge | None,
    source: Face | None,
    step: Callable[[int], None] | None = None,
) -> tuple[PortraitResult, dict[str, list[Face | None]]]:
    """The measures of one portrait's renders. ``judge`` None: the judge's measures are ``–``;
    ``source``: the judge's face on the source portrait (for identity). Returns the result and
    the judge's faces per frame (``driven``, ``orbit``) for the contact sheet."""
    from gshead.metrics.image import to_size

    notes: list[str] = []
    t = rendered.driven.shape[0]
    if len(commanded.phase) != t:
        raise InputError(f"{name}: {t} driven frames but {len(commanded.phase)} commanded ones")
    driven, driven_faces = _score_frames(judge, rendered.driven, "driven", commanded.phase, source, step)
    orbit_phases = ["orbit"] * rendered.orbit.shape[0]
    orbit, orbit_faces = _score_frames(judge, rendered.orbit, "orbit", orbit_phases, source, step)
    frames = driven + orbit
    measures: list[Measure] = []
    judged = judge is not None
    if not judged:
        notes.append(NO_JUDGE)

    def unmeasured(key: str, label: str, goal: str, note: str) -> Measure:
        return Measure(key, label, None, SKIPPED, goal, None if not judged else False, note)

    # detection
    if judged:
        found = sum(bool(f.found) for f in frames)
        share = found / len(frames)
        text = f"{100 * share:.0f}% ({found}/{len(frames)})"
        misses = {k: sum(not f.found for f in frames if f.kind == k) for k in ("driven", "orbit")}
        measures.append(
            Measure(
                "detection",
                "face found",
                share,
                text,
                "100% of frames",
                share >= DETECTION_GOAL,
                extra={"missed_driven": misses["driven"], "missed_orbit": misses["orbit"]},
            )
        )
    else:
        measures.append(unmeasured("detection", "face found", "100% of frames", NO_JUDGE))

    # identity
    goal = f"< {IDENTITY_DISTANCE} on >= {100 * IDENTITY_SHARE:.0f}%"
    if judged and source is not None:
        close = sum(f.identity is not None and f.identity < IDENTITY_DISTANCE for f in frames)
        share = close / len(frames)
        distances = [f.identity for f in frames if f.identity is not None]
        median = float(np.median(distances)) if distances else None
        # The floor that resolution alone sets: the source crop itself at the render size.
        floor_face = judge.observe(
            to_uint8(to_size(rendered.crop, tuple(rendered.driven.shape[-2:])), JUDGE_SIZE)
        )
        floor = (
            float(np.linalg.norm(floor_face.descriptor - source.descriptor))
            if floor_face is not None
            else None
        )
        measures.append(
            Measure(
                "identity",
                "identity distance",
                share,
                f"{100 * share:.0f}% < {IDENTITY_DISTANCE} (median {_fmt(median)}, crop {_fmt(floor)})",
                goal,
                share >= IDENTITY_SHARE,
                extra={"median": median, "max": max(distances) if distances else None, "crop": floor},
            )
        )
    else:
        measures.append(
            unmeasured("identity", "identity distance", goal, NO_JUDGE if not judged else "no source face")
        )

    # mouth
    goal = f"r >= {MOUTH_R}, range >= {MOUTH_RANGE:.2f} IOD"
    talk = [(f.mouth, commanded.jaw[f.index]) for f in driven if f.phase == "talk" and f.mouth is not None]
    if judged and len(talk) >= 3:
        opening = [m for m, _ in talk]
        r = _pearson(opening, [j for _, j in talk])
        span = max(opening) - min(opening)
        good = r is not None and r >= MOUTH_R and span >= MOUTH_RANGE
        measures.append(
            Measure(
                "mouth",
                "mouth opening vs jaw",
                r,
                f"r {_fmt(r, 2)}, range {span:.3f} IOD",
                goal,
                good,
                extra={"range": span, "min": min(opening), "max": max(opening), "frames": len(talk)},
            )
        )
    else:
        measures.append(
            unmeasured(
                "mouth",
                "mouth opening vs jaw",
                goal,
                NO_JUDGE if not judged else "fewer than 3 talk frames with a face",
            )
        )

    # blink
    goal = f"<= {BLINK_RATIO} of open"
    if commanded.blink is None:
        measures.append(
            Measure(
                "blink",
                "eye aspect ratio, shut/open",
                None,
                SKIPPED,
                goal,
                None,
                "the head model has no eyeBlinkLeft unit; no blink is commanded",
            )
        )
    else:
        shut = [f.ear for f in driven if f.ear is not None and commanded.blink[f.index] >= SHUT]
        open_ = [f.ear for f in driven if f.ear is not None and commanded.blink[f.index] <= 0.0]
        if judged and shut and open_:
            ratio = float(np.median(shut)) / max(float(np.median(open_)), 1e-9)
            blink_frames = [f for f in driven if f.phase == "blink" and f.ear is not None]
            r = _pearson([f.ear for f in blink_frames], [commanded.blink[f.index] for f in blink_frames])
            measures.append(
                Measure(
                    "blink",
                    "eye aspect ratio, shut/open",
                    ratio,
                    f"{ratio:.2f} (EAR {np.median(shut):.3f} / {np.median(open_):.3f})",
                    goal,
                    ratio <= BLINK_RATIO,
                    extra={"ear_shut": float(np.median(shut)), "ear_open": float(np.median(open_)), "r": r},
                )
            )
        else:
            measures.append(
                unmeasured(
                    "blink",
                    "eye aspect ratio, shut/open",
                    goal,
                    NO_JUDGE if not judged else "no face on the shut or the open frames",
                )
            )

    # yaw
    goal = f"r >= {YAW_R}"
    turn = [(f.yaw, commanded.yaw[f.index]) for f in driven if f.phase == "turn" and f.yaw is not None]
    orbit_pairs = [(f.yaw, rendered.orbit_yaw[f.index]) for f in orbit if f.yaw is not None]
    orbit_r = _pearson([y for y, _ in orbit_pairs], [c for _, c in orbit_pairs])
    if judged and len(turn) >= 3:
        measured, wanted = np.array([y for y, _ in turn]), np.array([c for _, c in turn])
        r = _pearson(measured, wanted)
        gain = float(np.polyfit(wanted, measured, 1)[0]) if wanted.std() > 0 else None
        text = f"r {_fmt(r, 2)}, gain {_fmt(gain, 2)} (orbit r {_fmt(orbit_r, 2)})"
        measures.append(
            Measure(
                "yaw",
                "yaw vs command",
                r,
                text,
                goal,
                r is not None and r >= YAW_R,
                extra={
                    "gain": gain,
                    "orbit_r": orbit_r,
                    "measured_min": float(measured.min()),
                    "measured_max": float(measured.max()),
                },
            )
        )
    else:
        measures.append(
            unmeasured(
                "yaw",
                "yaw vs command",
                goal,
                NO_JUDGE if not judged else "fewer than 3 turn frames with a face",
            )
        )

    # background
    goal = f"<= {BACKGROUND_GREY:g} grey levels"
    size = rendered.driven.shape[-1]
    crop_face = judge.observe(to_uint8(rendered.crop, JUDGE_SIZE)) if judge is not None else None
    mask, how = background_mask(rendered.crop, size, crop_face)
    turn_index = [i for i, p in enumerate(commanded.phase) if p == "turn"]
    if mask is not None and mask.any() and turn_index and rendered.driven.shape[-2] == size:
        levels = grey(rendered.driven[[0, *turn_index]])
        change = np.abs(levels[1:] - levels[:1])[:, mask].mean(axis=1)  # [turn frames]
        worst = float(change.max())
        measures.append(
            Measure(
                "background",
                "background change (turn)",
                worst,
                f"{worst:.2f} (mean {change.mean():.2f})",
                goal,
                worst <= BACKGROUND_GREY,
                how,
                extra={"mean": float(change.mean()), "outside_share": float(mask.mean())},
            )
        )
    else:
        why = how if mask is None else "no pixels outside the head, or no turn frames"
        measures.append(Measure("background", "background change (turn)", None, SKIPPED, goal, None, why))

    # source view
    gap = rendered.frame0_psnr - rendered.fit_psnr
    before = f", before fit {rendered.psnr_before_fit:.2f}" if rendered.psnr_before_fit is not None else ""
    measures.append(
        Measure(
            "source_view",
            "source-view PSNR / SSIM",
            rendered.fit_psnr,
            f"{rendered.fit_psnr:.2f} dB / {rendered.fit_ssim:.3f}{before}",
            "",
            None,
            extra={"ssim": rendered.fit_ssim, "psnr_before_fit": rendered.psnr_before_fit},
        )
    )
    measures.append(
        Measure(
            "frame0",
            "demo frame 0 PSNR",
            rendered.frame0_psnr,
            f"{rendered.frame0_psnr:.2f} dB ({gap:+.2f})",
            f"within {PSNR_GAP_DB:g} dB of the fit",
            abs(gap) <= PSNR_GAP_DB,
            extra={"gap": gap},
        )
    )
    result = PortraitResult(name, image, tuple(measures), tuple(frames), tuple(notes))
    return result, {"driven": driven_faces, "orbit": orbit_faces}


# ----------------------------------------------------------------------------------- contact sheet
SHEET_TILE = 192
SHEET_COLUMNS = 8


def contact_sheet(
    rendered: Rendered,
    result: PortraitResult,
    faces: dict[str, list[Face | None]],
    source: Face | None = None,
) -> np.ndarray:
    """A grid (H x W x 3 uint8): the source crop and sampled driven frames (two rows), then
    sampled orbit frames (one row), each with the judge's landmarks drawn (green; a red frame
    where it found no face) and a label (phase, frame, measured values)."""
    from PIL import Image, ImageDraw

    t, n = rendered.driven.shape[0], rendered.orbit.shape[0]
    driven_pick = np.unique(np.linspace(0, t - 1, 2 * SHEET_COLUMNS - 1).round().astype(int))
    orbit_pick = np.unique(np.linspace(0, n - 1, SHEET_COLUMNS).round().astype(int))
    scores = {(f.kind, f.index): f for f in result.frames}
    tiles: list[tuple[Tensor, Face | None, str, bool | None]] = [
        (rendered.crop[0], source, "source crop", True)
    ]
    for i in driven_pick:
        s = scores[("driven", int(i))]
        tiles.append((rendered.driven[i], faces["driven"][i], _label(s), s.found))
    while len(tiles) % SHEET_COLUMNS:
        tiles.append((torch.zeros_like(rendered.driven[0]), None, "", True))
    for i in orbit_pick:
        s = scores[("orbit", int(i))]
        tiles.append(
            (
                rendered.orbit[i],
                faces["orbit"][i],
                f"yaw {rendered.orbit_yaw[i]:+.0f}°: " + _label(s),
                s.found,
            )
        )
    rows = math.ceil(len(tiles) / SHEET_COLUMNS)
    sheet = Image.new("RGB", (SHEET_COLUMNS * SHEET_TILE, rows * SHEET_TILE), (0, 0, 0))
    scale = SHEET_TILE / JUDGE_SIZE
    for k, (frame, face, label, found) in enumerate(tiles):
        tile = Image.fromarray(to_uint8(frame, SHEET_TILE))
        draw = ImageDraw.Draw(tile)
        if face is not None:
            for x, y in face.landmarks * (scale if face is not source else 1.0):
                draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(40, 255, 60))
        if found is False:
            draw.rectangle((0, 0, SHEET_TILE - 1, SHEET_TILE - 1), outline=(255, 40, 40), width=3)
        if label:
            draw.rectangle((0, SHEET_TILE - 14, SHEET_TILE, SHEET_TILE), fill=(0, 0, 0))
            draw.text((3, SHEET_TILE - 13), label, fill=(255, 255, 255))
        sheet.paste(tile, ((k % SHEET_COLUMNS) * SHEET_TILE, (k // SHEET_COLUMNS) * SHEET_TILE))
    return np.asarray(sheet)


def _label(s: FrameScore) -> str:
    head = f"{s.phase} {s.index}" if s.kind == "driven" else ""
    if s.found is None:
        return head
    if not s.found:
        return f"{head} no face".strip()
    return (
        f"{head} m{s.mouth:.2f} e{s.ear:.2f} y{s.yaw:+.0f} d{s.identity:.2f}"
        if s.identity is not None
        else head
    )


# ----------------------------------------------------------------------------------- tables
COLUMNS = ("detection", "identity", "mouth", "blink", "yaw", "background", "source_view", "frame0")


def markdown_report(results: Sequence[PortraitResult], info: dict[str, Any] | None = None) -> str:
    """A summary table (one row per portrait) and, per portrait, each measure, its target and verdict."""
    lines = ["# gshead portrait evaluation (independent judge)", ""]
    if info and info.get("command"):
        lines += [f"`{info['command']}`", ""]
    head = ["Portrait"] + [results[0].measure(k).label for k in COLUMNS] + ["Verdict"] if results else []
    if results:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---" * len(head) + "|")
        for r in results:
            cells = [r.name] + [r.measure(k).text for k in COLUMNS] + [verdict_text(r.verdict)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for r in results:
        lines += [f"## {r.name}", "", f"Image: `{r.image}`; contact sheet: `{r.name}.png`.", ""]
        lines += ["| Measure | Measured | Target | Verdict |", "|---|---|---|---|"]
        for m in r.measures:
            verdict = verdict_text(m.good) if m.goal else ""
            lines.append(f"| {m.label} | {m.text} | {m.goal or '(reported)'} | {verdict} |")
        lines.append(f"| **overall** | | every target | **{verdict_text(r.verdict)}** |")
        lines.append("")
        notes = [*r.notes, *(f"{m.label}: {m.note}" for m in r.measures if m.note and m.note not in r.notes)]
        lines += [f"- {n}" for n in dict.fromkeys(notes)]
        if notes:
            lines.append("")
    lines.append(
        f'`{SKIPPED}`: not measured. IOD: inter-ocular distance (outer eye corners). Identity "crop": the '
        "source crop itself at the render size against the portrait (what resolution alone costs). "
        "Background: "
        "the worst turn frame (and the mean over them). Judge: dlib HOG detector, 68-point predictor (iBUG "
        "300-W: non-commercial) and ResNet descriptor, not the pipeline's tracker."
    )
    return "\n".join(lines) + "\n"


def csv_report(results: Sequence[PortraitResult]) -> str:
    """One row per portrait: every measure's value (full precision), its extras and verdicts
    (``–``: not measured)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not results:
        return ""
    header, rows = ["portrait", "image"], []
    for m in results[0].measures:
        header += [m.key] + [f"{m.key}_{k}" for k in m.extra] + ([f"{m.key}_good"] if m.goal else [])
    header.append("verdict")
    for r in results:
        row = [r.name, r.image]
        for m in r.measures:
            row.append(SKIPPED if m.value is None else repr(m.value))
            row += [SKIPPED if v is None else repr(v) for v in m.extra.values()]
            if m.goal:
                row.append(verdict_text(m.good))
        row.append(verdict_text(r.verdict))
        rows.append(row)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def json_report(results: Sequence[PortraitResult], info: dict[str, Any] | None = None) -> str:
    def number(v):
        return v if v is None or math.isfinite(v) else None

    data = {
        **(info or {}),
        "portraits": {
            r.name: {
                "image": r.image,
                "verdict": verdict_text(r.verdict),
                "notes": list(r.notes),
                "measures": {
                    m.key: {
                        "label": m.label,
                        "value": number(m.value),
                        "text": m.text,
                        "goal": m.goal,
                        "good": m.good,
                        "note": m.note,
                        **{k: number(v) for k, v in m.extra.items()},
                    }
                    for m in r.measures
                },
                "frames": [vars(f) for f in r.frames],
            }
            for r in results
        },
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_portrait_results(
    out_dir: str | Path,
    results: Sequence[PortraitResult],
    sheets: dict[str, np.ndarray],
    info: dict[str, Any] | None = None,
) -> list[Path]:
    """Write results.md, results.csv, results.json and ``<name>.png`` per sheet into ``out_dir``
    (made if missing), each atomically; returns the paths."""
    from PIL import Image

    from gshead.io.media import atomic_output

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; expected a folder for the evaluation results")
    texts = {
        "results.md": markdown_report(results, info),
        "results.csv": csv_report(results),
        "results.json": json_report(results, info),
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        with atomic_output(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(out / name)
    for name, sheet in sheets.items():
        with atomic_output(out / f"{name}.png") as tmp:
            Image.fromarray(sheet).save(tmp, format="PNG")
        paths.append(out / f"{name}.png")
    return paths


# ----------------------------------------------------------------------------------- the protocol
def portrait_name(path: str, taken: set[str]) -> str:
    """A file-name-safe, unique name for a portrait: ``example:astronaut`` -> ``astronaut``, else the stem."""
    import re

    from gshead.io.media import EXAMPLES

    base = EXAMPLES.get(str(path)) or Path(path).stem or "portrait"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "portrait"
    name, k = base, 2
    while name in taken or name in ("results",):
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


@dataclass(frozen=True, eq=False)
class Portrait:
    """A portrait read and checked before any model is built."""

    name: str
    path: str
    image: Tensor  # [1, 3, H, W]
    face: Face | None  # the judge's face on the whole image (None without a judge)

    def to(self, device) -> Portrait:
        """This portrait with its image on ``device``."""
        return Portrait(self.name, self.path, self.image.to(device), self.face)


def read_portraits(paths: Sequence[str], judge: Judge | None) -> list[Portrait]:
    """Read every portrait and find its face with the judge; InputError naming the first bad one."""
    from gshead.io.media import read_image

    taken: set[str] = set()
    portraits = []
    for path in paths:
        image = read_image(path)
        face = None
        if judge is not None:
            face = judge.observe(to_uint8(image))
            if face is None:
                raise InputError(f"{path}: the judge (dlib) finds no face in it; expected a portrait")
        portraits.append(Portrait(portrait_name(path, taken), str(path), image, face))
    return portraits


def frames_per_portrait(demo_frames: int, orbit_frames: int) -> int:
    """Frames the judge reads per portrait (for a progress bar)."""
    return demo_frames + orbit_frames


def evaluate_portrait(
    pipeline: Pipeline,
    portrait: Portrait,
    judge: Judge | None,
    fit_steps: int = 0,
    fit_lr: float = 0.01,
    demo_frames: int = DEMO_FRAMES,
    orbit_frames: int = ORBIT_FRAMES,
    orbit_degrees: float = ORBIT_DEGREES,
    step: Callable[[int], None] | None = None,
    on_fit_step: Callable[[int, float], None] | None = None,
) -> tuple[PortraitResult, np.ndarray]:
    """Run the protocol on one portrait: (its result, its contact sheet)."""
    if orbit_frames < 1:
        raise InputError(f"orbit frames {orbit_frames}: expected at least 1")
    crop = pipeline.prepare_image(portrait.image)
    motion, commanded = commanded_motion(pipeline.head_model, demo_frames)
    rendered = render_portrait(
        pipeline, crop, motion, fit_steps, fit_lr, orbit_frames, orbit_degrees, on_fit_step=on_fit_step
    )
    result, faces = score_portrait(
        portrait.name, portrait.path, rendered, commanded, judge, portrait.face, step
    )
    crop_face = judge.observe(to_uint8(crop, SHEET_TILE)) if judge is not None else None
    return result, contact_sheet(rendered, result, faces, crop_face)


__all__ = [
    "Commanded",
    "Face",
    "FrameScore",
    "Judge",
    "Measure",
    "Portrait",
    "PortraitResult",
    "Rendered",
    "background_mask",
    "commanded_motion",
    "contact_sheet",
    "csv_report",
    "evaluate_portrait",
    "eye_aspect_ratio",
    "judge_unavailable",
    "markdown_report",
    "mouth_opening",
    "read_portraits",
    "render_portrait",
    "score_portrait",
    "write_portrait_results",
    "yaw_degrees",
]
