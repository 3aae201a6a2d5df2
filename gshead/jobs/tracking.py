"""Tracking a video or an image into a ``TrackedSequence`` (``gshead track``, ``reenact --driver VIDEO``).

Any registered tracker works; what it offers decides what is done:

- **Face boxes, per frame.** A ``FaceDetector`` tracker (``detect_faces(image) -> [(left, top,
  side), ...]``, largest first; the ``mediapipe`` tracker) is asked for faces in every frame; the
  largest is used, a face narrower than its ``config.min_face_pixels`` counts as no face, and the
  square crop is ``config.face_scale`` times the face box, its centre ``config.face_offset`` box
  sides below the box's (as the trackers' own ``crop_box``; see ``TrackerConfig``). Other
  trackers are asked for ``crop_box(frame)``: an ``InputError`` there means "no face in this
  frame", None means "this tracker does not crop" (centred square).
  In a video the box (centre and side) is smoothed over time by a causal One-Euro filter, so the
  crop follows the head without jitter; frames are cropped as they are decoded (nothing but the
  crops is kept in memory).
- **Fitting, in batches** of ``batch_size`` crops at the pipeline's ``source_size``. A
  ``LandmarkTracker`` (``track_with_error``; the ``mediapipe`` tracker) gives the RMS landmark fit
  error of each frame (pixels of the crop; NaN there means it found no face); other trackers get
  NaN fit errors.
- **One identity per sequence.** A ``SequenceTracker`` (``mediapipe``) is asked for a
  ``sequence()`` tracker per video, which fits the identity once, on the first batch's frames,
  and starts every later frame from the previous fit (and runs MediaPipe in video mode). Other
  trackers are called batch by batch; the sequence's identity is then the mean of the valid
  frames' identities, written into every frame. Trackers that fit no identity (``frontal``) give
  the head model's neutral identity.
- **Frames without a face** are flagged (``valid`` False, fit error NaN); their parameters are
  interpolated linearly from the nearest valid frames on each side (held at the ends), their
  cameras copied from the nearest valid frame. A video with no face in any frame is an
  ``InputError``; so is an image without one.
- **Temporal smoothing** of expression, jaw, eyes, rotation and translation: a centred Gaussian
  window whose standard deviation is ``smoothing`` frames (0: off), renormalised at the ends so a
  constant sequence stays constant. Rotations are smoothed as axis-angle vectors, which is exact
  enough for the small frame-to-frame changes of a head (not for turns near 180 degrees).

Results are cached (``track_file``): the key is the SHA-256 of the input file's bytes, the
tracker's and head model's configs as JSON, the crop size, the smoothing and the sequence format
version; the file is ``<cache>/sequences/<key>.safetensors`` with ``<cache>`` =
``$GSHEAD_CACHE_DIR``, else ``~/.cache/gshead``. Writes are atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gshead.core.components import (
    ComponentConfig,
    Configured,
    FaceDetector,
    FrameLandmarker,
    HeadModel,
    LandmarkTracker,
    SequenceTracker,
    Tracker,
)
from gshead.core.errors import InputError
from gshead.core.types import Camera, CropBox, HeadParams, Located
from gshead.io.sequence import TrackedSequence

if TYPE_CHECKING:
    from gshead.core.config import PipelineConfig
    from gshead.core.registry import Registry

DEFAULT_SMOOTHING = 1.0
"""Default standard deviation of the temporal smoothing window, in frames."""
DEFAULT_BATCH = 32
"""Crops fitted together (the ``mediapipe`` tracker shares one identity within a batch)."""
DEFAULT_FPS = 25.0
"""Frame rate written for a single image, and assumed for a video that does not state one."""
SMOOTHED_FIELDS = ("expression", "jaw", "eyes", "rotation", "translation")
"""HeadParams fields smoothed over time and interpolated over frames without a face."""
BOX_MIN_CUTOFF_HZ = 1.0
"""One-Euro filter of the crop box: cutoff frequency at rest (Hz), divided by ``smoothing``."""
BOX_BETA = 4.0
"""One-Euro filter of the crop box: cutoff increase per box side per second of motion."""
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})
"""Input files with these suffixes are tracked as videos; anything else as an image."""
ENV_CACHE_DIR = "GSHEAD_CACHE_DIR"


# ----------------------------------------------------------------------------- sequence maths
def interpolate_missing(values: Tensor, valid: Tensor) -> Tensor:
    """``values`` [T, ...] with the frames where ``valid`` [T] is False replaced by the linear
    interpolation of the nearest valid frames before and after (held at the ends).

    Valid frames are returned unchanged; InputError when no frame is valid.
    """
    t = values.shape[0]
    index = valid.nonzero()[:, 0]  # [V] valid frame numbers, ascending
    if len(index) == 0:
        raise InputError("interpolate_missing: no valid frame to interpolate from")
    pos = torch.arange(t)
    after = torch.searchsorted(index, pos).clamp(max=len(index) - 1)  # first valid >= pos (or last)
    before = (torch.searchsorted(index, pos, right=True) - 1).clamp(min=0)  # last valid <= pos (or first)
    i0, i1 = index[before], index[after]
    span = (i1 - i0).clamp(min=1).to(torch.float64)
    w = ((pos - i0).clamp(min=0) / span).clamp(0, 1)  # 0 where held at the start, i1 == i0 otherwise
    w = w.view(t, *([1] * (values.dim() - 1))).to(torch.float64)
    mixed = values[i0].double() * (1 - w) + values[i1].double() * w
    keep = valid.view(t, *([1] * (values.dim() - 1)))
    return torch.where(keep, values, mixed.to(values.dtype))


def nearest_valid(valid: Tensor) -> Tensor:
    """For each frame [T], the number of the nearest valid frame (itself when valid; ties go earlier)."""
    index = valid.nonzero()[:, 0]
    if len(index) == 0:
        raise InputError("nearest_valid: no valid frame")
    pos = torch.arange(valid.shape[0])
    return index[(pos[:, None] - index[None]).abs().argmin(1)]


def smooth_sequence(values: Tensor, sigma: float) -> Tensor:
    """``values`` [T, ...] smoothed along T by a centred Gaussian of ``sigma`` frames (0: a copy).

    The window is cut at the ends and renormalised there, so a constant sequence is unchanged
    (up to float rounding) and nothing is pulled towards zero.
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise InputError(f"smoothing: expected a finite number >= 0 (frames), got {sigma}")
    t = values.shape[0]
    if sigma == 0 or t < 2:
        return values.clone()
    radius = min(math.ceil(3 * sigma), t - 1)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)  # [2R + 1]
    flat = values.reshape(t, -1).double().T[:, None]  # [D, 1, T]
    ones = torch.ones(1, 1, t, dtype=torch.float64)
    k = kernel.view(1, 1, -1)
    total = torch.nn.functional.conv1d(flat, k, padding=radius)  # [D, 1, T]
    weight = torch.nn.functional.conv1d(ones, k, padding=radius)  # [1, 1, T]
    return (total / weight)[:, 0].T.reshape(values.shape).to(values.dtype)


class OneEuroFilter:
    """Causal One-Euro filter (Casiez et al., CHI 2012) of a crop box's (centre x, centre y, side).

    The cutoff rises with speed, measured in box sides per second, so a still head gets a steady
    box and a moving one is followed without lag. ``min_cutoff`` and ``beta`` as in the paper.
    """

    def __init__(self, fps: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> None:
        self.fps, self.min_cutoff, self.beta, self.d_cutoff = fps, min_cutoff, beta, d_cutoff
        self._x: Tensor | None = None  # [3] last filtered value
        self._dx = torch.zeros(3, dtype=torch.float64)  # [3] last filtered derivative

    def _alpha(self, cutoff: Tensor | float) -> Tensor:
        tau = 1.0 / (2 * math.pi * torch.as_tensor(cutoff, dtype=torch.float64))
        return 1.0 / (1.0 + tau * self.fps)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.double()
        if self._x is None:
            self._x = x
            return x
        dx = (x - self._x) * self.fps
        self._dx = self._dx + self._alpha(self.d_cutoff) * (dx - self._dx)
        speed = self._dx.abs() / max(float(self._x[2]), 1e-6)  # box sides per second
        self._x = self._x + self._alpha(self.min_cutoff + self.beta * speed) * (x - self._x)
        return self._x


# ----------------------------------------------------------------------------- faces
def _face_box(tracker: Tracker, frame: Tensor) -> tuple[CropBox | None, int, str | None, list[str]]:
    """Where to crop ``frame`` [1, 3, H, W]: (box or None, faces found, why not when no usable
    face, warnings the tracker gave). (None, 0, None, ...) means the tracker does not crop."""
    if isinstance(tracker, FaceDetector):
        faces = tracker.detect_faces(frame)
        box, why = _crop_of_face(tracker.config, faces[0] if faces else None, frame)
        return box, len(faces), why, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            box = tracker.crop_box(frame)
        except InputError as exc:
            return None, 0, str(exc), []
    said = [str(c.message) for c in caught]
    return box, (1 if box is not None else 0), None, said


def _crop_of_face(
    config: Any, face: tuple[float, float, float] | None, frame: Tensor
) -> tuple[CropBox | None, str | None]:
    """The crop box of a face box (left, top, side) by the tracker config's ``face_scale`` and
    ``face_offset``; (None, why) without a face or for one narrower than ``min_face_pixels``."""
    h, w = frame.shape[-2:]
    min_px = int(config.min_face_pixels)
    if face is None:
        return None, f"no face found in the {w}x{h} image (expected a face at least {min_px} px wide)"
    left, top, side = face
    if side < min_px:
        why = f"the largest face is {side:.0f} px wide, smaller than the minimum {min_px} px"
        return None, why + "; use a larger image of the face"
    scale = float(config.face_scale)
    cx, cy = left + side / 2, top + side / 2 + float(config.face_offset) * side
    return CropBox(cx - scale * side / 2, cy - scale * side / 2, scale * side), None


def _box_vector(box: CropBox) -> Tensor:
    return torch.tensor([box.left + box.side / 2, box.top + box.side / 2, box.side], dtype=torch.float64)


def _box_of(vector: Tensor) -> CropBox:
    cx, cy, side = (float(v) for v in vector)
    return CropBox(cx - side / 2, cy - side / 2, side)


# ----------------------------------------------------------------------------- fitting
def _fit(tracker: Tracker, crops: Tensor) -> tuple[HeadParams, Camera, Tensor]:
    """(params [B], camera [B], fit error [B], NaN where the tracker found no face) for crops [B, 3, S, S]."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*no face")  # flagged and reported by track_video
        if isinstance(tracker, LandmarkTracker):
            tracked, error = tracker.track_with_error(crops)
            error = error.detach().float().cpu()
        else:
            tracked = tracker.track(crops)
            error = torch.full((crops.shape[0],), float("nan"))
    return tracked.params.to("cpu"), tracked.camera.to("cpu"), error


def _fit_batch(
    tracker: Tracker, crops: Tensor
) -> tuple[list[HeadParams | None], list[Camera | None], Tensor, Tensor]:
    """Fit crops [B, 3, S, S] together; if the tracker refuses the batch (InputError, e.g. no face
    mesh in one crop), fit them one by one so only the failing crops are lost.

    Returns per-crop params and cameras (None when lost), errors [B] and found [B] bool.
    """
    b = crops.shape[0]
    detects_landmarks = isinstance(tracker, LandmarkTracker)
    try:
        params, camera, error = _fit(tracker, crops)
        found = torch.isfinite(error) if detects_landmarks else torch.ones(b, dtype=torch.bool)
        return (
            [params.select(i) for i in range(b)],
            [_camera_at(camera, i) for i in range(b)],
            error,
            found,
        )
    except InputError:
        if b == 1:
            return [None], [None], torch.full((1,), float("nan")), torch.zeros(1, dtype=torch.bool)
    out_p, out_c, errors, found = [], [], [], []
    for i in range(b):
        p, c, e, f = _fit_batch(tracker, crops[i : i + 1])
        out_p += p
        out_c += c
        errors.append(e)
        found.append(f)
    return out_p, out_c, torch.cat(errors), torch.cat(found)


def _fit_points(
    tracker: FrameLandmarker, points: Tensor, size: int
) -> tuple[list[HeadParams | None], list[Camera | None], Tensor, Tensor]:
    """``_fit_batch`` for a ``FrameLandmarker``: landmarks [B, P, 2] in pixels of size-``size`` crops."""
    tracked, error = tracker.fit_points(points, size)
    params, camera = tracked.params.to("cpu"), tracked.camera.to("cpu")
    error = error.detach().float().cpu()
    b = points.shape[0]
    return [params.select(i) for i in range(b)], [_camera_at(camera, i) for i in range(b)], error, torch.isfinite(error)


def _box_filter(fps: float, smoothing: float) -> OneEuroFilter | None:
    """The crop box's One-Euro filter at ``fps`` (an unusable rate: ``DEFAULT_FPS``); None when
    ``smoothing`` is 0."""
    rate = fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    return OneEuroFilter(rate, BOX_MIN_CUTOFF_HZ / smoothing, BOX_BETA) if smoothing > 0 else None


def _find_face(
    tracker: Tracker, frame: Tensor
) -> tuple[CropBox | None, int, str | None, list[str], Located | None]:
    """Where to crop ``frame`` [1, 3, H, W]: ``_face_box``'s (box, faces, why not, warnings), plus
    the whole-frame landmarks of a ``FrameLandmarker`` (None for other trackers)."""
    if not isinstance(tracker, FrameLandmarker):
        return (*_face_box(tracker, frame), None)
    located = tracker.locate(frame)
    box, reason = _crop_of_face(tracker.config, located.face if located else None, frame)
    return box, (located.faces if located else 0), reason, [], located


def _fit_input(frame: Tensor, box: CropBox, located: Located | None, size: int) -> Tensor:
    """What the fit takes for one frame: a ``FrameLandmarker``'s landmarks in the crop's pixels
    [P, 2], else the crop [1, 3, size, size]."""
    from gshead.io.media import crop_square

    if located is None:
        return crop_square(frame, box, size)
    corner = torch.tensor([box.left, box.top], dtype=located.points.dtype)
    return (located.points - corner) * (size / box.side)


def _fit_inputs(
    tracker: Tracker, inputs: list[Tensor], size: int
) -> tuple[list[HeadParams | None], list[Camera | None], Tensor, Tensor]:
    """``_fit_points`` or ``_fit_batch`` of several ``_fit_input`` results, as the tracker takes them."""
    if isinstance(tracker, FrameLandmarker):
        return _fit_points(tracker, torch.stack(inputs), size)
    return _fit_batch(tracker, torch.cat(inputs))


def _camera_at(camera: Camera, i: int) -> Camera:
    return Camera(
        camera.world_to_camera[i : i + 1], camera.intrinsics[i : i + 1], camera.width, camera.height
    )


# ----------------------------------------------------------------------------- video / image
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on ``n`` CPU threads inside, restored afterwards.

    Tracking runs torch on one thread: its work per frame is small tensors (crops, the fit), and on
    this project's 2-core machines torch's thread pool made them 5-40x slower whenever anything
    else ran (MediaPipe's own threads, the decoder), while MediaPipe and PyAV use the other core.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def track_video(
    tracker: Tracker,
    frames: Iterable[Tensor],
    *,
    head_model: str,
    crop_size: int,
    fps: float = DEFAULT_FPS,
    smoothing: float = DEFAULT_SMOOTHING,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], Any] | None = None,
    source: str = "video",
) -> TrackedSequence:
    """Track ``frames`` (an iterable of [1, 3, H, W] in [0, 1]) into a ``TrackedSequence``.

    :param tracker: a built tracker component (see the module docstring for what it may offer).
    :param head_model: registered name of the head model the tracker fits (stored in the result).
    :param crop_size: side of the square crops given to the tracker (the pipeline's ``source_size``).
    :param fps: the video's frame rate (used by the box filter and stored).
    :param smoothing: standard deviation of the temporal smoothing, in frames; 0 turns smoothing
        (of the parameters and of the crop box) off.
    :param batch_size: crops fitted together.
    :param progress: called with the number of frames just finished, as tracking goes.
    :param source: how to name the input in messages.

    Runs torch on one thread (``torch_threads``).
    """
    with torch_threads(1):
        return _track_video(
            tracker, frames, head_model=head_model, crop_size=crop_size, fps=fps, smoothing=smoothing,
            batch_size=batch_size, progress=progress, source=source,
        )


def _track_video(
    tracker: Tracker,
    frames: Iterable[Tensor],
    *,
    head_model: str,
    crop_size: int,
    fps: float,
    smoothing: float,
    batch_size: int,
    progress: Callable[[int], Any] | None,
    source: str,
) -> TrackedSequence:
    if batch_size < 1:
        raise InputError(f"batch_size: expected at least 1, got {batch_size}")
    _check_smoothing(smoothing)
    recorded = tracker  # whose config the sequence records
    if isinstance(tracker, SequenceTracker):
        tracker = tracker.sequence()  # one identity, warm starts, MediaPipe's video mode
    rate = fps if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS
    box_filter = _box_filter(rate, smoothing)

    params: dict[int, HeadParams] = {}
    cameras: dict[int, Camera] = {}
    errors: dict[int, float] = {}
    boxes: list[Tensor] = []  # [3] (left, top, side) per frame
    pending: list[tuple[int, Tensor]] = []  # (frame number, ``_fit_input``) waiting to be fitted
    first_reason: str | None = None
    most_faces, crowded = 0, 0
    said: dict[str, None] = {}  # the tracker's own warnings, once each
    last: Tensor | None = None  # last (filtered) box as (centre x, centre y, side)

    def flush() -> None:
        if not pending:
            return
        p, c, e, f = _fit_inputs(tracker, [item for _, item in pending], crop_size)
        for j, (i, _) in enumerate(pending):
            if bool(f[j]) and p[j] is not None:
                params[i], cameras[i], errors[i] = p[j], c[j], float(e[j])
        if progress is not None:
            progress(len(pending))
        pending.clear()

    count = 0
    for i, frame in enumerate(frames):
        count += 1
        box, faces, reason, messages, located = _find_face(tracker, frame)
        said.update(dict.fromkeys(messages))
        most_faces, crowded = max(most_faces, faces), crowded + (faces > 1)
        if reason is not None:  # no usable face: flagged, nothing to fit; the box is held
            first_reason = first_reason or reason
            held = _box_of(last) if last is not None else CropBox.centred(frame.shape[-1], frame.shape[-2])
            boxes.append(torch.tensor([held.left, held.top, held.side]))
            if progress is not None:
                progress(1)
            continue
        box = box or CropBox.centred(frame.shape[-1], frame.shape[-2])
        last = box_filter(_box_vector(box)) if box_filter is not None else _box_vector(box)
        box = _box_of(last)
        boxes.append(torch.tensor([box.left, box.top, box.side]))
        pending.append((i, _fit_input(frame, box, located, crop_size)))
        if len(pending) >= batch_size:
            flush()
    flush()

    if count == 0:
        raise InputError(f"{source}: the video has no frames")
    for message in said:
        warnings.warn(message, stacklevel=3)
    if crowded:
        warnings.warn(
            f"{source}: up to {most_faces} faces found ({crowded} of {count} frames); tracking the largest",
            stacklevel=3,
        )
    if not params:
        reason = first_reason or "the tracker found no face landmarks in the face crops"
        raise InputError(f"{source}: no face found in any of its {count} frames ({reason})")
    valid = torch.zeros(count, dtype=torch.bool)
    valid[sorted(params)] = True
    lost = (~valid).nonzero()[:, 0].tolist()
    if lost:
        shown = ", ".join(map(str, lost[:10])) + (", ..." if len(lost) > 10 else "")
        warnings.warn(
            f"{source}: no face in {len(lost)} of {count} frames ({shown}); "
            "their parameters are interpolated",
            stacklevel=3,
        )
    error = torch.full((count,), float("nan"))
    for i, e in errors.items():
        error[i] = e
    return _assemble(
        params, cameras, valid, error, torch.stack(boxes).float(), rate, head_model, smoothing, recorded
    )


class StreamTracker:
    """Tracks frames one at a time as they arrive (``gshead live``), causally.

    The same steps as ``track_video`` for each frame, without looking ahead: the face box, the
    crop box and its One-Euro filter, the tracker's ``sequence()`` (identity once, warm starts;
    whole-frame landmarks for a ``FrameLandmarker``), one fit per frame. No temporal smoothing
    of the parameters (it would need future frames); a frame without a face returns None and the
    caller holds the last result.
    """

    def __init__(self, tracker: Tracker, crop_size: int, fps: float = DEFAULT_FPS, smoothing: float = 1.0) -> None:
        _check_smoothing(smoothing)
        self.tracker = tracker.sequence() if isinstance(tracker, SequenceTracker) else tracker
        self.crop_size = int(crop_size)
        self._filter = _box_filter(fps, smoothing)
        self.last_reason: str | None = None  # why the last frame had no usable face

    def __call__(self, frame: Tensor) -> tuple[HeadParams | None, float]:
        """(params [1] or None without a usable face, RMS fit error in pixels or NaN) for ``frame`` [1, 3, H, W]."""
        tracker, size = self.tracker, self.crop_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # per-frame chatter; the caller counts frames without a face
            box, _faces, reason, _said, located = _find_face(tracker, frame)
            if reason is not None:
                self.last_reason = reason
                return None, float("nan")
            box = box or CropBox.centred(frame.shape[-1], frame.shape[-2])
            vector = _box_vector(box)
            box = _box_of(self._filter(vector) if self._filter is not None else vector)
            p, _c, e, f = _fit_inputs(tracker, [_fit_input(frame, box, located, size)], size)
        if not bool(f[0]) or p[0] is None:
            self.last_reason = "the tracker found no face landmarks in the face crop"
            return None, float("nan")
        return p[0], float(e[0])


def track_image(
    tracker: Tracker,
    image: Tensor,
    *,
    head_model: str,
    crop_size: int,
    source: str = "image",
) -> TrackedSequence:
    """Track one image [1, 3, H, W] into a one-frame ``TrackedSequence`` (fps ``DEFAULT_FPS``).

    No face (or only one narrower than the tracker's minimum) is an ``InputError`` naming the
    minimum size; several faces: the largest, with a warning naming how many.
    """
    from gshead.io.media import crop_square

    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise InputError(f"{source}: expected one RGB image [1, 3, H, W], got {list(image.shape)}")
    h, w = image.shape[-2:]
    box, faces, reason, messages = _face_box(tracker, image)
    if reason is not None:
        raise InputError(f"{source}: {reason}")
    for message in messages:
        warnings.warn(message, stacklevel=2)
    if faces > 1:
        warnings.warn(f"{source}: {faces} faces found; using the largest", stacklevel=2)
    box = box or CropBox.centred(w, h)
    p, c, e, f = _fit_batch(tracker, crop_square(image, box, crop_size))
    if not bool(f[0]) or p[0] is None:
        raise InputError(
            f"{source}: the tracker found no face landmarks in the face crop of the {w}x{h} image"
        )
    crop = torch.tensor([[box.left, box.top, box.side]], dtype=torch.float32)
    return _assemble(
        {0: p[0]},
        {0: c[0]},
        torch.ones(1, dtype=torch.bool),
        e.float(),
        crop,
        DEFAULT_FPS,
        head_model,
        0.0,
        tracker,
    )


def _check_smoothing(smoothing: float) -> None:
    if not (isinstance(smoothing, (int, float)) and math.isfinite(smoothing) and smoothing >= 0):
        raise InputError(f"--smoothing {smoothing}: expected a finite number of frames >= 0")


def _assemble(
    params: dict[int, HeadParams],
    cameras: dict[int, Camera],
    valid: Tensor,
    error: Tensor,
    crop: Tensor,
    fps: float,
    head_model: str,
    smoothing: float,
    tracker: Tracker,
) -> TrackedSequence:
    """Frames -> sequence: one identity, missing frames interpolated, parameters smoothed."""
    t = valid.shape[0]
    nearest = nearest_valid(valid)
    fields: dict[str, Tensor] = {}
    for key in params[next(iter(params))].tensors():
        rows = [params[int(nearest[i])].tensors()[key][0].float() for i in range(t)]
        fields[key] = torch.stack(rows)  # [T, ...] (missing frames: nearest valid, replaced below)
    ident = fields["identity"][valid].mean(0, keepdim=True)
    fields["identity"] = ident.expand(t, -1).clone()
    for key in SMOOTHED_FIELDS:
        fields[key] = smooth_sequence(interpolate_missing(fields[key], valid), smoothing)
    cams = [cameras[int(nearest[i])] for i in range(t)]
    camera = Camera(
        torch.cat([c.world_to_camera.float() for c in cams]),
        torch.cat([c.intrinsics.float() for c in cams]),
        cams[0].width,
        cams[0].height,
    )
    return TrackedSequence(
        params=HeadParams(**fields),
        camera=camera,
        valid=valid,
        fps=float(fps),
        head_model=head_model,
        crop=crop.float(),
        fit_error=error.float(),
        tracker=_config_json(tracker),
    )


def _config_json(component: object) -> str:
    """The component's config as JSON, or "" when it keeps no validated config."""
    if isinstance(component, Configured) and isinstance(component.config, ComponentConfig):
        return component.config.model_dump_json()
    return ""


# ----------------------------------------------------------------------------- files and cache
def cache_dir() -> Path:
    """Where tracked sequences are cached: ``$GSHEAD_CACHE_DIR/sequences``, else
    ``~/.cache/gshead/sequences``."""
    root = os.environ.get(ENV_CACHE_DIR) or str(Path.home() / ".cache" / "gshead")
    return Path(root).expanduser() / "sequences"


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, or of the pixels of a built-in ``example:`` image."""
    from gshead.io.media import EXAMPLES, read_image

    if str(path) in EXAMPLES:
        image = read_image(path)
        return hashlib.sha256(str(path).encode() + image.numpy().tobytes()).hexdigest()
    path = Path(path)
    from gshead.io.media import _check_input_file

    _check_input_file(path, "an image or video file")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except PermissionError:
        raise InputError(f"{path}: permission denied; expected a readable image or video file") from None
    return digest.hexdigest()


def cache_key(
    source_sha256: str, tracker_config: str, head_model_config: str, crop_size: int, smoothing: float
) -> str:
    """The cache key (hex SHA-256) of a tracking job; the sequence format version is part of it."""
    from gshead.io.sequence import FORMAT_VERSION

    job = {
        "source_sha256": source_sha256,
        "tracker": tracker_config,
        "head_model": head_model_config,
        "crop_size": int(crop_size),
        "smoothing": float(smoothing),
        "format_version": FORMAT_VERSION,
        "batch": DEFAULT_BATCH,
    }
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is tracked as a video (by its suffix, see ``VIDEO_SUFFIXES``)."""
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


def track_file(
    path: str | Path,
    build_tracker: Callable[[], Tracker],
    *,
    head_model: str,
    crop_size: int,
    tracker_config: str,
    head_model_config: str = "",
    smoothing: float = DEFAULT_SMOOTHING,
    use_cache: bool = True,
    progress: Callable[[int | None], Any] | None = None,
) -> tuple[TrackedSequence, bool]:
    """Track an image or a video file, through the cache; returns (sequence, whether it was cached).

    :param build_tracker: makes the tracker; called only on a cache miss.
    :param tracker_config: the tracker's config as JSON (part of the cache key; stored).
    :param head_model_config: the head model's config as JSON (part of the cache key).
    :param progress: ``progress(total_frames)`` returns a progress bar (an object with
        ``update(n)`` and ``close()``) for a video; not called for an image or a cache hit.

    The video is decoded as it is tracked; if it turns out unreadable or truncated midway the
    ``InputError`` propagates and nothing is written (neither cache nor caller's output).
    """
    from gshead.io.media import read_image, read_video
    from gshead.io.sequence import load_sequence, save_sequence

    _check_smoothing(smoothing)
    digest = file_sha256(path)
    key = cache_key(digest, tracker_config, head_model_config, crop_size, smoothing)
    cached = cache_dir() / f"{key}.safetensors"
    if use_cache and cached.is_file():
        try:
            seq = load_sequence(cached)
        except InputError as exc:  # a damaged cache entry: say so, track again and overwrite it
            warnings.warn(f"tracking cache entry is damaged and is rebuilt: {exc}", stacklevel=2)
            seq = None
        if seq is not None and seq.source_sha256 == digest and seq.head_model == head_model:
            return seq, True
    tracker = build_tracker()
    if is_video(path):
        frames, fps, total = read_video(path)
        bar = progress(total) if progress is not None else None
        try:
            seq = track_video(
                tracker,
                frames,
                head_model=head_model,
                crop_size=crop_size,
                fps=fps,
                smoothing=smoothing,
                progress=bar.update if bar is not None else None,
                source=str(path),
            )
        finally:
            if bar is not None:
                bar.close()
    else:
        seq = track_image(
            tracker, read_image(path), head_model=head_model, crop_size=crop_size, source=str(path)
        )
    seq = seq.replace(source_sha256=digest, tracker=tracker_config)
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_sequence(cached, seq)
        except (OSError, InputError) as exc:  # an unwritable cache must not fail the job
            warnings.warn(f"could not write the tracking cache {cached} ({exc})", stacklevel=2)
    return seq, False


def track_with_pipeline(
    path: str | Path,
    config: PipelineConfig,
    head_model: HeadModel | None = None,
    *,
    smoothing: float = DEFAULT_SMOOTHING,
    use_cache: bool = True,
    progress: Callable[[int | None], Any] | None = None,
    registry: Registry | None = None,
) -> tuple[TrackedSequence, bool, Tracker | None]:
    """``track_file`` with the tracker and head model of a validated pipeline ``config``.

    The head model (built when not given) and the tracker are built only on a cache miss; crops
    are the pipeline's ``source_size``. Returns (sequence, cached, the tracker or None when cached).
    """
    from gshead.core.pipeline import build_components
    from gshead.core.registry import get_registry

    registry = registry or get_registry()
    if is_video(path) and not type(config.tracker).fits_motion:
        raise InputError(
            f"{path}: tracker {config.tracker.name!r} fits no motion (every frame would get the "
            f"neutral face); expected a pipeline whose tracker fits one, e.g. tracker: {{name: mediapipe}}"
        )
    built: list[Tracker] = []

    def build() -> Tracker:
        tracker = build_components(config, ("tracker",), registry, head_model=head_model)[0]["tracker"]
        built.append(tracker)
        return tracker

    seq, cached = track_file(
        path,
        build,
        head_model=config.headmodel.name,
        crop_size=config.source_size,
        tracker_config=config.tracker.model_dump_json(),
        head_model_config=config.headmodel.model_dump_json(),
        smoothing=smoothing,
        use_cache=use_cache,
        progress=progress,
    )
    return seq, cached, (built[0] if built else None)
