"""Image and video files: reading with one-line errors, writing atomically.

Every failure a user can cause (a missing, truncated or foreign file, a missing output folder)
raises ``InputError`` with one line naming the file, what was wrong and what was expected.
Outputs are written to a temporary file beside the target and renamed over it only on success,
so an interrupted or failed run never leaves a half-written file under the requested name.

Images are tensors ``[B, 3, H, W]``, float32 in [0, 1], channels first (see ``gshead.core.types``).
PIL, NumPy and PyAV are imported inside the functions that need them (nothing at import time).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.errors import InputError, ShapeError
from gshead.core.geometry import crop_square
from gshead.core.types import CropBox

if TYPE_CHECKING:
    from types import TracebackType

EXAMPLES = {"example:astronaut": "astronaut"}
"""Special image paths served from scikit-image's bundled data instead of the file system."""

_IMAGE_FORMATS = "a PNG, JPEG, WebP, BMP or TIFF file"
_VIDEO_FORMATS = "an MP4, MOV, MKV, WebM or AVI video"


def _check_input_file(path: Path, what: str) -> None:
    """InputError unless ``path`` names an existing regular file; ``what`` is e.g. "an image file"."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected {what}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; expected {what}")


def _reason(exc: BaseException) -> str:
    """A short, single-line reason for a library exception."""
    # FFmpeg errors (PyAV) carry a clean strerror; their str() repeats the errno and file name.
    strerror = getattr(exc, "strerror", None)
    text = " ".join(str(strerror or exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------------------------- images


def read_image(path: str | Path) -> Tensor:
    """Read an image as a [1, 3, H, W] float32 tensor in [0, 1].

    ``example:astronaut`` is scikit-image's 512x512 astronaut. Grayscale is repeated to RGB,
    alpha is composited on black, 16-bit images keep their precision, palettes are expanded and
    the EXIF orientation is applied. The whole image is decoded here, so a truncated file fails
    here (with ``InputError``) rather than later. An image of more than ``MAX_IMAGE_PIXELS`` pixels
    is downscaled first (box filter, in PIL, before conversion to float) to about that many: a
    144-megapixel photo would otherwise take gigabytes as float32. Smaller images keep their full
    resolution, so a small face in a large photo still has its pixels (trackers search a large
    image on a downscaled copy themselves; see ``frontal.detect_faces``). Images above PIL's
    decompression-bomb limit are refused.
    """
    import numpy as np

    key = str(path)
    if key in EXAMPLES:
        from skimage import data

        array = getattr(data, EXAMPLES[key])()  # [H, W, 3] uint8
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 255.0
    if key.startswith("example:"):
        raise InputError(f"{key}: unknown example image; expected one of: {', '.join(EXAMPLES)}")

    from PIL import Image, ImageOps

    path = Path(path)
    _check_input_file(path, "an image file")
    try:
        with warnings.catch_warnings():
            # Between PIL's warning and error limits the image is read and downscaled here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            target = _budget_size(*opened.size)
            if target is not None:  # JPEG: decode at a reduced scale (>= the target)
                opened.draft(opened.mode, target)
            opened.load()  # full decode: truncated data fails here
            image = _downscale(ImageOps.exif_transpose(opened))
            array = _to_rgb_array(image)  # [H, W, 3] float32 in [0, 1]
    except PermissionError:
        raise InputError(f"{path}: permission denied; expected a readable image file") from None
    except (Image.DecompressionBombError, MemoryError) as exc:
        raise InputError(f"{path}: image too large to load ({_reason(exc)})") from None
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise InputError(
            f"{path}: not a readable image ({_reason(exc)}); expected {_IMAGE_FORMATS}"
        ) from None
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


MAX_IMAGE_PIXELS = 40_000_000
"""Images with more pixels than this are downscaled to about this many when read (6000 x 6000 is
read at full resolution, 12000 x 12000 at 6324 x 6324; 480 MB as float32 RGB)."""


def stored_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of the image file ``path`` as stored (before ``read_image`` downscales it;
    EXIF orientation applied), or None when it cannot be read (or is an ``example:`` image)."""
    from PIL import Image

    if str(path) in EXAMPLES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            w, h = opened.size
            turned = opened.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # only a detail for messages; read_image reports the real problem
        return None
    return (h, w) if turned else (w, h)


def _budget_size(w: int, h: int) -> tuple[int, int] | None:
    """(width, height) that a ``w`` x ``h`` image is downscaled to (aspect kept, at most
    ``MAX_IMAGE_PIXELS`` pixels), or None when it is small enough already."""
    if w * h <= MAX_IMAGE_PIXELS:
        return None
    scale = math.sqrt(MAX_IMAGE_PIXELS / (w * h))
    return max(1, math.floor(w * scale)), max(1, math.floor(h * scale))


def _downscale(image):
    """``image`` (PIL) resized to ``_budget_size`` when it has more than ``MAX_IMAGE_PIXELS``
    pixels; otherwise unchanged."""
    from PIL import Image

    size = _budget_size(*image.size)
    return image if size is None else image.resize(size, Image.Resampling.BOX)


def _to_rgb_array(image):
    """A loaded PIL image as an [H, W, 3] float32 array in [0, 1] (alpha composited on black)."""
    import numpy as np

    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit (or 32-bit int) grayscale
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
    if mode == "F":  # float grayscale: assumed in [0, 1]
        gray = np.asarray(image, dtype=np.float32)
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0  # [H, W, 4]
        return np.ascontiguousarray(rgba[..., :3] * rgba[..., 3:])
    array = np.asarray(image.convert("RGB"), dtype=np.float32)  # a new array: divided in place
    array /= 255.0
    return array


def square_resize(image: Tensor, size: int) -> Tensor:
    """Centre-crop ``image`` [B, 3, H, W] to a square, then resize it (antialiased) to [B, 3, size, size]."""
    if image.dim() != 4:
        raise ShapeError(f"square_resize: expected an image batch [B, C, H, W], got {list(image.shape)}")
    return crop_square(image, CropBox.centred(image.shape[-1], image.shape[-2]), size)


# --------------------------------------------------------------------------------------------- outputs

VIDEO_OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi")
"""Containers ``VideoWriter`` can put H.264 into (WebM cannot hold H.264)."""


def check_output(
    path: str | os.PathLike,
    *,
    accepts: tuple[str, ...] = (),
    inputs: Iterable[str | os.PathLike | None] = (),
    what: str = "the output",
    folder: bool = False,
) -> Path:
    """Refuse, with a one-line InputError naming ``path``, an output a command must not write.

    Refused: ``-`` (standard output is not supported); a target that exists and is not a regular
    file (a folder, a device such as /dev/null, a FIFO) or, with ``folder=True``, not a folder;
    a suffix not in ``accepts`` (lower-case, with the dot; empty = any); and a target that is the
    same file as one of ``inputs`` (resolved paths, and ``os.path.samefile`` for hard links) or,
    for a folder, that is or contains an input. ``inputs`` may hold None and non-file names such
    as ``example:astronaut`` or ``demo``; those are skipped. Returns ``Path(path)``.
    """
    text = os.fspath(path)
    if text == "-":
        raise InputError(f"-: writing {what} to standard output is not supported; give a file name")
    if not text.strip():
        raise InputError(f"{text!r}: empty output name; give a file name")
    out = Path(text)
    try:
        info = os.stat(out)  # follows symlinks: a link to /dev/null is a device
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise InputError(f"{out}: cannot check the output ({_reason(exc)})") from None
    if info is not None:
        import stat

        if folder:
            if not stat.S_ISDIR(info.st_mode):
                raise InputError(f"{out}: exists and is not a folder; expected a folder name for {what}")
        elif stat.S_ISDIR(info.st_mode):
            raise InputError(f"{out}: is a folder; expected a file name to write {what} to")
        elif not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"{out}: exists and is not a regular file (a device, FIFO or socket); refusing to replace it"
            )
    if accepts and out.suffix.lower() not in accepts:
        got = f"suffix {out.suffix!r}" if out.suffix else "no suffix"
        names = accepts[0] if len(accepts) == 1 else f"{', '.join(accepts[:-1])} or {accepts[-1]}"
        raise InputError(f"{out}: cannot write {what} with {got}; expected a {names} file name")
    resolved = out.resolve()
    for source in inputs:
        if source is None:
            continue
        source_path = Path(os.fspath(source))
        if not source_path.exists():
            continue  # example:astronaut, demo, or a missing file (its reader reports that)
        same = source_path.resolve() == resolved
        if not same and info is not None:
            with contextlib.suppress(OSError):
                same = os.path.samefile(source_path, out)
        if same:
            raise InputError(f"{out}: is the same file as the input {source}; choose another output name")
        if folder and resolved in source_path.resolve().parents:
            raise InputError(f"{out}: contains the input {source}; choose an output folder outside it")
    return out


def _new_file_mode() -> int:
    """``0o666 & ~umask``: the mode an ordinary new file gets."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _honour_umask(temporary: Path) -> None:
    """Give the regular files at or under ``temporary`` the mode of an ordinary new file.

    Some writers (safetensors) replace the temporary file with one of mode 0o600; the output
    should instead be ``0o666 & ~umask``, like any file the user creates.
    """
    mode = _new_file_mode()
    files = [temporary] if not temporary.is_dir() else [p for p in temporary.rglob("*") if p.is_file()]
    for file in files:
        with contextlib.suppress(OSError):
            if not file.is_symlink():
                os.chmod(file, mode)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds.

    The temporary file keeps ``path``'s suffix (writers that pick the format from the name still
    work) and already exists, empty, with the usual permissions. If the block raises anything,
    KeyboardInterrupt included, the temporary file is deleted and the exception propagates; the
    file at ``path``, if any, is left untouched. The parent folder must exist (InputError otherwise).
    Stale temporary files for the same ``path`` that a killed earlier run left behind are removed
    first (see ``remove_stale_partials``).
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: no such folder; expected an existing folder to write {path.name} into")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a file name to write to")
    remove_stale_partials(parent, path.stem, path.suffix)
    temporary = _create_temporary(parent, path)
    try:
        yield temporary
        _honour_umask(temporary)  # writers such as safetensors recreate the file as 0o600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a new hidden temporary folder beside ``path``; when the block succeeds it becomes
    ``path`` by one rename (an existing folder there is moved aside first and deleted after).

    If the block raises anything, KeyboardInterrupt included, the temporary folder is deleted and
    ``path`` is left as it was. The parent folder must exist. Stale temporary folders for the same
    ``path`` that a killed earlier run left behind are removed first (see ``remove_stale_partials``).
    """
    import shutil

    path = Path(path)
    remove_stale_partials(path.parent, path.name, "")
    temporary = path.parent / f".{path.name}.{_owner_tag()}.partial"
    temporary.mkdir()
    try:
        yield temporary
        old = None
        if path.is_dir() and any(path.iterdir()):
            old = path.parent / f".{path.name}.{_owner_tag()}.old"
            os.replace(path, old)
        elif path.is_dir():
            path.rmdir()
        _honour_umask(temporary)
        os.replace(temporary, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


STALE_PARTIAL_AGE = 24 * 3600
"""Seconds after which a temporary output is stale even if the process that made it still runs."""

_TAG = r"(?P<pid>[1-9][0-9]{0,9})-(?P<time>[0-9]{1,12})-[0-9a-f]{8}"
_LEGACY_TAG = r"[0-9a-f]{8}"  # before the owner was encoded: ``.<name>.<random>.partial<suffix>``


def _owner_tag() -> str:
    """``<pid>-<unix time>-<random>``: who made a temporary output, and when."""
    return f"{os.getpid()}-{int(time.time())}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (signal 0 delivers nothing; it only checks)."""
    if pid <= 0:
        return True  # never signal a process group; treat as "not known dead"
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's process, or cannot tell: keep it
        return True
    return True


def remove_stale_partials(parent: str | Path, stem: str, suffix: str) -> list[Path]:
    """Delete temporary outputs that a killed earlier run left in ``parent`` for one target.

    Only names that ``atomic_output``/``atomic_directory`` create for this target are looked at:
    ``.<stem>.<pid>-<time>-<random>.partial<suffix>`` (files and folders), and the
    ``.<stem>.<pid>-<time>-<random>.old`` folder ``atomic_directory`` moves a previous version to.
    One is stale when process ``pid`` no longer exists, or when it is older than
    ``STALE_PARTIAL_AGE`` (a reused pid). Old-style names without an owner
    (``.<stem>.<random>.partial<suffix>``) are stale once older than ``STALE_PARTIAL_AGE``.
    A stale ``.old`` folder is removed only while the target itself exists (otherwise it is the
    last complete version and is kept). Errors are ignored: cleaning up is best effort.
    Returns the paths removed.
    """
    import re
    import shutil

    parent = Path(parent)
    name = re.escape(stem)
    ext = re.escape(suffix)
    current = re.compile(rf"\.{name}\.{_TAG}\.(?P<kind>partial{ext}|old)")
    legacy = re.compile(rf"\.{name}\.{_LEGACY_TAG}\.partial{ext}")
    now = time.time()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = current.fullmatch(entry.name)
        if match is not None:
            if match["kind"] == "old" and not (parent / f"{stem}{suffix}").exists():
                continue
            if match["kind"] == "old" and not entry.is_dir(follow_symlinks=False):
                continue
            stale = not _pid_alive(int(match["pid"])) or now - int(match["time"]) > STALE_PARTIAL_AGE
        elif legacy.fullmatch(entry.name) is not None:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_PARTIAL_AGE
            except OSError:
                continue
        else:
            continue
        if not stale:
            continue
        target = parent / entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(target)
            else:
                target.unlink()
        except OSError:
            continue
        removed.append(target)
    return removed


def _create_temporary(parent: Path, path: Path) -> Path:
    """Create a new empty hidden file ``.<stem>.<pid>-<time>-<random>.partial<suffix>`` in ``parent``."""
    for _ in range(100):
        candidate = parent / f".{path.stem}.{_owner_tag()}.partial{path.suffix}"
        try:
            # 0o666 & ~umask, like an ordinary new file (mkstemp would make it 0o600).
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except PermissionError:
            raise InputError(
                f"{parent}: permission denied; expected a writable folder for {path.name}"
            ) from None
        os.close(fd)
        return candidate
    raise InputError(f"{parent}: cannot create a temporary file for {path.name}")


# --------------------------------------------------------------------------------------------- videos


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` reports about a video's first video stream."""

    frames: int  # frame count (from the container header, or counted when the header has none)
    width: int
    height: int
    fps: float


def _even(n: int) -> int:
    return n + (n % 2)


class VideoWriter:
    """Write frames to an H.264 video (libx264, yuv420p) atomically.

    Use as a context manager; ``write(frames)`` takes [B, 3, height, width] floats in [0, 1].
    yuv420p needs even sizes: an odd width or height is padded by repeating the last column or
    row, so the file is ``encoded_width`` x ``encoded_height`` (at most one pixel larger). The
    file appears under ``path`` only when the block exits without an exception and at least one
    frame was written (InputError otherwise: an empty file would not be a playable video).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        width: int,
        height: int,
        crf: int = 18,
        preset: str = "medium",
    ) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise InputError(f"{path}: frame rate must be a positive number, got {fps}")
        if width <= 0 or height <= 0:
            raise InputError(f"{path}: video size must be positive, got {width}x{height}")
        check_output(path, accepts=VIDEO_OUTPUT_SUFFIXES, what="an H.264 video")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.width, self.height = int(width), int(height)
        self.encoded_width, self.encoded_height = _even(self.width), _even(self.height)
        self.crf, self.preset = crf, preset
        self.frames_written = 0
        self._atomic: contextlib.AbstractContextManager[Path] | None = None
        self._container = None
        self._stream = None

    def __enter__(self) -> VideoWriter:
        import av

        self._atomic = atomic_output(self.path)
        temporary = self._atomic.__enter__()
        try:
            # MP4/MOV: put the index first (faststart), so players can start before the file is complete.
            mp4 = self.path.suffix.lower() in (".mp4", ".m4v", ".mov")
            options = {"movflags": "+faststart"} if mp4 else {}
            self._container = av.open(str(temporary), mode="w", options=options)
            stream = self._container.add_stream("libx264", rate=self.fps)
            stream.width, stream.height = self.encoded_width, self.encoded_height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(self.crf), "preset": self.preset}
            self._stream = stream
        except BaseException as exc:
            self._close_container()
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            if isinstance(exc, Exception):  # FFmpeg refused (no libx264 in this PyAV build, bad options...)
                raise InputError(
                    f"{self.path}: cannot start the H.264 encoder ({_reason(exc)}); "
                    "expected PyAV with libx264"
                ) from None
            raise
        return self

    def write(self, frames: Tensor) -> None:
        """Append ``frames`` [B, 3, height, width] (or one [3, height, width]) in [0, 1]."""
        import av

        if self._stream is None:
            raise RuntimeError("VideoWriter.write called outside its 'with' block")
        if frames.dim() == 3:
            frames = frames[None]
        expected = [3, self.height, self.width]
        if frames.dim() != 4 or list(frames.shape[1:]) != expected:
            want = ", ".join(map(str, expected))
            raise ShapeError(f"{self.path}: expected frames [B, {want}], got {list(frames.shape)}")
        pad_w, pad_h = self.encoded_width - self.width, self.encoded_height - self.height
        if pad_w or pad_h:
            frames = F.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
        pixels = (frames.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)  # [B, 3, H', W']
        pixels = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # [B, H', W', 3]
        for array in pixels:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = self.frames_written
            frame.time_base = 1 / self.fps
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._atomic is not None
        atomic, self._atomic = self._atomic, None
        if exc_type is None:
            try:
                if self.frames_written == 0:
                    raise InputError(f"{self.path}: no frames were written; a video needs at least one frame")
                for packet in self._stream.encode(None):  # flush the encoder
                    self._container.mux(packet)
                self._container.close()
            except BaseException as error:
                self._close_container()
                atomic.__exit__(type(error), error, error.__traceback__)
                raise
            self._stream = self._container = None
            atomic.__exit__(None, None, None)  # rename into place
            return
        self._close_container()
        atomic.__exit__(exc_type, exc, tb)  # deletes the temporary file; the caller re-raises

    def _close_container(self) -> None:
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()


def _open_video(path: Path):
    """Open ``path`` with PyAV and return (container, its first video stream); InputError otherwise."""
    import av

    _check_input_file(path, "a video file")
    try:
        container = av.open(str(path), mode="r")
    except PermissionError:
        raise InputError(f"{path}: permission denied; expected a readable video file") from None
    except Exception as exc:  # av.error.InvalidDataError and other FFmpeg errors
        raise InputError(
            f"{path}: not a readable video ({_reason(exc)}); expected {_VIDEO_FORMATS}"
        ) from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: contains no video stream; expected {_VIDEO_FORMATS}")
    return container, container.streams.video[0]


def _frame_to_tensor(frame) -> Tensor:
    """A decoded PyAV frame as [1, 3, H, W] float32 in [0, 1]."""
    import numpy as np

    array = frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
    # numpy, not torch: one pass, and torch's thread pool made this 40x slower on a busy 2-core machine
    planes = np.multiply(array.transpose(2, 0, 1), np.float32(1 / 255), dtype=np.float32)  # [3, H, W]
    return torch.from_numpy(planes)[None]


def _inspect(path: Path) -> tuple[VideoInfo, bool]:
    """Probe a video (decoding its first frame); returns (info, whether the count is from the header)."""
    container, stream = _open_video(path)
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        frames = int(stream.frames or 0)
        from_header = frames > 0
        try:
            first = next(container.decode(stream), None)
            if first is None:
                raise InputError(f"{path}: video stream has no frames; expected at least one frame")
            width, height = first.width, first.height
            if not from_header:  # some containers (MKV, WebM) do not store a count: count packets
                container.seek(0)
                frames = sum(1 for p in container.demux(stream) if p.size > 0)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"{path}: video cannot be decoded ({_reason(exc)}); the file may be corrupt"
            ) from None
    finally:
        container.close()
    return VideoInfo(frames=frames, width=width, height=height, fps=fps), from_header


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, size and frame rate of a video's first video stream (InputError if unreadable)."""
    return _inspect(Path(path))[0]


def read_video(path: str | Path) -> tuple[Iterator[Tensor], float, int]:
    """Open a video: (iterator of [1, 3, H, W] float32 frames in [0, 1], fps, frame count).

    The file is checked (opened, first frame decoded) before this returns; frames are decoded
    lazily as the iterator advances, and the file is closed when it is exhausted or discarded.
    A file that fails to decode midway, or ends before the frame count its header promised,
    raises InputError from the iterator.
    """
    path = Path(path)
    info, from_header = _inspect(path)
    return _frames(path, info.frames if from_header else None), info.fps, info.frames


def _frames(path: Path, expected: int | None) -> Iterator[Tensor]:
    container, stream = _open_video(path)
    count = 0
    try:
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded, None)
            except Exception as exc:
                raise InputError(
                    f"{path}: video cannot be decoded after frame {count} ({_reason(exc)}); "
                    "the file may be truncated"
                ) from None
            if frame is None:
                break
            count += 1
            yield _frame_to_tensor(frame)
    finally:
        container.close()
    if expected is not None and count < expected:
        raise InputError(f"{path}: video ended after {count} of {expected} frames; the file looks truncated")


# --------------------------------------------------------------------------------------------- safetensors


def read_safetensors(path: str | Path, what: str, error: type[Exception] = InputError) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; ``error`` (one line naming ``what``)
    when it is missing, truncated or not safetensors. Nothing is unpickled."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for bad headers and short files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{path}: not a readable {what} ({reason}); it may be truncated or corrupt") from None
    return tensors, metadata
