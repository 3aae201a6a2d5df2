"""Real video data (VFHQ-style): a folder of video clips, each with a tracked sequence.

Layout (any mix of these)::

    FOLDER/<clip>.mp4   + FOLDER/<clip>.safetensors
    FOLDER/videos/<clip>.mp4  + FOLDER/sequences/<clip>.safetensors  (or tracks/<clip>.safetensors)

A sequence (``gshead track``; ``gshead.io.sequence``) holds one row of head parameters and a
camera per video frame, and from format version 2 the crop box each frame was tracked in. Frames
are cropped with that box (the largest centred square when the sequence has none) and resized
to S x S; cameras are rescaled to S. Frames flagged as having no face are never picked.

Clips of one person share an *identity key*: for VFHQ names (``Clip+<video id>+P<person>+C<clip>+F<a>-<b>``)
the video id and person; otherwise the file name, so each clip is its own identity.

``VideoClipDataset`` reads items straight from the videos (decoding up to the last frame it
needs); ``convert_video_folder`` writes the folder once into the shard format of
``gshead.data.format`` so that training reads uint8 crops instead of decoding video.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.types import Camera, CropBox, HeadParams, ReenactmentSample
from gshead.data.format import (
    FORMAT_VERSION,
    SPLITS,
    DatasetInfo,
    item_generator,
    pick_frames,
    split_identities,
)

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoClip",
    "VideoClipDataset",
    "convert_video_folder",
    "find_clips",
    "identity_key",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def identity_key(stem: str) -> str:
    """The person a clip shows, from its file name: ``<video id>+P<n>`` for VFHQ names
    (``Clip+G0DGRma_p48+P0+C0+F11208-11383``), else the whole name."""
    parts = stem.split("+")
    if len(parts) >= 3 and parts[0] == "Clip" and parts[2].startswith("P"):
        return f"{parts[1]}+{parts[2]}"
    return stem


@dataclass(frozen=True)
class VideoClip:
    """One video and its tracked sequence."""

    video: Path
    sequence: Path
    identity: str  # identity key (see ``identity_key``)


def find_clips(folder: str | Path, identity_of: Callable[[str], str] = identity_key) -> list[VideoClip]:
    """Every video under ``folder`` (and ``folder/videos``) paired with its sequence file, sorted by
    name; InputError when the folder has no videos or a video has no sequence."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; expected a folder of videos and tracked sequences")
    videos = sorted(
        p for d in (folder, folder / "videos") if d.is_dir() for p in d.iterdir()
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")
    )  # fmt: skip
    if not videos:
        raise InputError(f"{folder}: no videos found; expected files ending in {', '.join(VIDEO_SUFFIXES)}")
    clips = []
    for video in videos:
        candidates = [video.with_suffix(".safetensors")] + [
            folder / sub / f"{video.stem}.safetensors" for sub in ("sequences", "tracks")
        ]
        sequence = next((c for c in candidates if c.is_file()), None)
        if sequence is None:
            raise InputError(
                f"{video}: no tracked sequence; expected {candidates[0].name} beside it or in "
                f"{folder / 'sequences'} (make one with 'gshead track')"
            )
        clips.append(VideoClip(video, sequence, identity_of(video.stem)))
    return clips


@dataclass(frozen=True)
class _LoadedClip:
    clip: VideoClip
    params: HeadParams  # [T]
    camera: Camera  # [T] at the tracker's crop size
    crop: Tensor  # [T, 3] (left, top, side) source pixels; NaN: unknown
    valid: Tensor  # [T] bool
    width: int  # video frame size
    height: int
    head_model: str

    @property
    def frames(self) -> int:
        return self.params.batch_size

    def usable(self) -> list[int]:
        return [i for i in range(self.frames) if bool(self.valid[i])]


def _load(clip: VideoClip) -> _LoadedClip:
    from gshead.io.media import probe_video
    from gshead.io.sequence import load_sequence

    seq = load_sequence(clip.sequence)
    info = probe_video(clip.video)
    if info.frames != len(seq):
        raise InputError(
            f"{clip.sequence}: {len(seq)} tracked frames, but {clip.video.name} has {info.frames}; "
            "expected one row per video frame"
        )
    crop = getattr(seq, "crop", None)
    if crop is None:  # sequences of format version 1 carry no crop boxes
        crop = torch.full((len(seq), 3), float("nan"))
    return _LoadedClip(clip, seq.params, seq.camera, crop, seq.valid, info.width, info.height, seq.head_model)


def _box(clip: _LoadedClip, index: int) -> CropBox:
    left, top, side = (float(v) for v in clip.crop[index])
    if not all(math.isfinite(v) for v in (left, top, side)) or side <= 0:
        return CropBox.centred(clip.width, clip.height)
    return CropBox(left, top, side)


def _read_frames(clip: _LoadedClip, indices: Sequence[int], size: int) -> Tensor:
    """Crops [K, 3, size, size] float in [0, 1] of video frames ``indices`` (any order, repeats allowed)."""
    from gshead.io.media import crop_square, read_video

    wanted = set(indices)
    last = max(wanted)
    found: dict[int, Tensor] = {}
    frames, _fps, _count = read_video(clip.clip.video)
    for i, frame in enumerate(frames):
        if i in wanted:
            found[i] = crop_square(frame, _box(clip, i), size)[0]
        if i >= last:
            break
    missing = wanted - found.keys()
    if missing:
        raise InputError(f"{clip.clip.video}: frame {min(missing)} could not be read; the video ended early")
    return torch.stack([found[i] for i in indices])


def _select(clip: _LoadedClip, indices: Sequence[int], size: int) -> tuple[HeadParams, Camera]:
    idx = torch.tensor(list(indices), dtype=torch.long)
    params = HeadParams(**{k: v[idx] for k, v in clip.params.tensors().items()})
    cam = clip.camera
    camera = Camera(cam.world_to_camera[idx], cam.intrinsics[idx], cam.width, cam.height).resized(size, size)
    return params, camera


def _common_head_model(clips: list[_LoadedClip], where: Path) -> tuple[str, int, int]:
    names = {c.head_model for c in clips}
    if len(names) != 1:
        raise InputError(
            f"{where}: sequences use different head models ({', '.join(sorted(names))}); expected one"
        )
    dims = {(c.params.identity.shape[1], c.params.expression.shape[1]) for c in clips}
    if len(dims) != 1:
        raise InputError(f"{where}: sequences have different parameter sizes {sorted(dims)}; expected one")
    i, e = dims.pop()
    return names.pop(), i, e


class VideoClipDataset(torch.utils.data.Dataset):
    """``ReenactmentSample`` items read straight from a folder of videos and tracked sequences.

    Item ``index`` is clip ``index`` (of ``split`` when given: identities are split by
    ``splits`` with ``split_seed``, as ``convert_video_folder`` splits them); source and target
    frames are chosen among frames with a face by a generator seeded with (``seed``, ``index``).
    ``cross=True`` takes the targets from a clip of another identity.
    """

    def __init__(
        self,
        root: str | Path,
        size: int = 128,
        targets: int = 1,
        seed: int = 0,
        cross: bool = False,
        split: str | None = None,
        splits: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        identity_of: Callable[[str], str] = identity_key,
    ) -> None:
        if targets < 1:
            raise InputError(f"targets {targets}: expected at least 1 target frame per item")
        if not 16 <= size <= 4096:
            raise InputError(f"size {size}: expected a side between 16 and 4096 pixels")
        if split is not None and split not in SPLITS:
            raise InputError(f"split {split!r}: expected one of: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.size, self.targets, self.seed, self.cross = int(size), int(targets), int(seed), bool(cross)
        found = find_clips(self.root, identity_of)
        names = sorted({c.identity for c in found})
        self.identity_names = tuple(names)
        by_split = split_identities(len(names), splits, torch.Generator().manual_seed(split_seed))
        if split is not None:
            keep = {names[i] for i in by_split[split]}
            found = [c for c in found if c.identity in keep]
        self.clips = [_load(c) for c in found]
        if not self.clips:
            raise InputError(f"{self.root}: no clips in the {split} split; expected at least one")
        for c in self.clips:
            if len(c.usable()) < (1 if cross else 2):
                raise InputError(f"{c.clip.sequence}: fewer than 2 frames with a face; expected at least 2")
        if cross and len({c.clip.identity for c in self.clips}) < 2:
            raise InputError(f"{self.root}: cross-reenactment needs at least 2 identities")
        head_model, ident_dim, expr_dim = _common_head_model(self.clips, self.root)
        index = {n: i for i, n in enumerate(names)}
        self.info = DatasetInfo(
            head_model=head_model,
            size=self.size,
            identities={s: (by_split[s] if split in (None, s) else ()) for s in SPLITS},
            frames=min(c.frames for c in self.clips),
            format_version=FORMAT_VERSION,
            identity_dim=ident_dim,
            expression_dim=expr_dim,
            clips={s: sum(1 for c in self.clips if index[c.clip.identity] in by_split[s]) for s in SPLITS},
            source="video",
        )
        self._identity_index = [index[c.clip.identity] for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def identity_of(self, index: int) -> int:
        """Identity index (into ``identity_names``) of item ``index``'s source."""
        return self._identity_index[index]

    def __getitem__(self, index: int) -> ReenactmentSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} clips")
        index %= len(self)
        g = item_generator(self.seed, index, cross=self.cross)
        clip = self.clips[index]
        usable = clip.usable()
        if self.cross:
            source = usable[int(torch.randint(len(usable), (1,), generator=g))]
            others = [k for k, c in enumerate(self.clips) if c.clip.identity != clip.clip.identity]
            other = self.clips[others[int(torch.randint(len(others), (1,), generator=g))]]
            pool = other.usable()
            picks = [pool[int(i)] for i in torch.randint(len(pool), (self.targets,), generator=g)]
        else:
            s, t = pick_frames(len(usable), self.targets, g)
            source, picks, other = usable[s], [usable[i] for i in t], clip
        src_params, src_cam = _select(clip, [source], self.size)
        tgt_params, tgt_cam = _select(other, picks, self.size)
        return ReenactmentSample(
            source_image=_read_frames(clip, [source], self.size),
            source=src_params,
            source_camera=src_cam,
            target_images=_read_frames(other, picks, self.size),
            targets=tgt_params,
            target_camera=tgt_cam,
        )


def convert_video_folder(
    folder: str | Path,
    root: str | Path,
    size: int = 128,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
    *,
    overwrite: bool = False,
    clips_per_shard: int = 16,
    identity_of: Callable[[str], str] = identity_key,
) -> DatasetInfo:
    """Write the clips of ``folder`` (see the module docstring) as a dataset at ``root``: frames
    cropped to ``size``², identities split by ``splits`` (seeded by ``seed``, the same split as
    ``VideoClipDataset(split_seed=seed)``). Frames without a face are dropped. Written atomically."""
    import sys

    from tqdm import tqdm

    from gshead.io.media import crop_square, read_video
    from gshead.data.format import Clip, dataset_writer

    if not 16 <= size <= 4096:
        raise InputError(f"size {size}: expected a side between 16 and 4096 pixels")
    found = find_clips(folder, identity_of)
    names = sorted({c.identity for c in found})
    by_split = split_identities(len(names), splits, torch.Generator().manual_seed(seed))
    split_of = {names[i]: s for s, ids in by_split.items() for i in ids}
    clips = [_load(c) for c in found]
    head_model, _, _ = _common_head_model(clips, Path(folder))
    total = sum(c.frames for c in clips)
    with dataset_writer(root, overwrite=overwrite, clips_per_shard=clips_per_shard) as builder:
        with tqdm(
            total=total,
            desc="convert",
            unit="frame",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=not progress,
        ) as bar:
            for clip in clips:
                keep = clip.usable()
                if len(keep) < 2:
                    bar.update(clip.frames)
                    continue
                frames, _fps, _count = read_video(clip.clip.video)
                crops = []
                for i, frame in enumerate(frames):
                    if bool(clip.valid[i]):
                        crops.append(crop_square(frame, _box(clip, i), size)[0])
                    bar.update()
                pixels = (torch.stack(crops) * 255.0).round().clamp(0, 255).to(torch.uint8)
                params, camera = _select(clip, keep, size)
                builder.add(
                    split_of[clip.clip.identity],
                    Clip(pixels, params, camera, names.index(clip.clip.identity)),
                )
        return builder.finish(
            head_model,
            by_split,
            source="video",
            extra={"seed": seed, "splits": list(splits), "identity_names": names,
                   "clips": [c.clip.video.name for c in clips]},
        )  # fmt: skip
