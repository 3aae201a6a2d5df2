"""The on-disk dataset format and ``ReenactmentDataset``, which reads it.

A dataset is a folder::

    ROOT/dataset.json                  format name and version, head model, image size, splits
    ROOT/shards/<split>-00000.safetensors
    ROOT/shards/<split>-00001.safetensors ...

Each shard holds several *clips* (one person, several frames). Frames of all the shard's clips
are stored one after another; ``clip_offsets`` says where each clip starts::

    frames                      uint8   [N, 3, S, S]  RGB crops
    params.<field>              float32 [N, ...]      per-frame ``HeadParams`` fields
    camera.world_to_camera      float32 [N, 4, 4]     per-frame camera (head pose lives in params)
    camera.intrinsics           float32 [N, 3, 3]     pixels of the S x S crop
    clip_offsets                int64   [K + 1]       clip k is frames [offsets[k], offsets[k+1])
    clip_identity               int64   [K]           identity index of each clip

``dataset.json`` lists, per split, the identity indices it holds (an identity is in exactly one
split) and its shard file names. ``write_dataset`` builds the folder in a temporary folder beside
ROOT and renames it into place when complete, so an interrupted job leaves no ROOT.

Every problem with a dataset on disk (missing or corrupt ``dataset.json``, a missing or truncated
shard, inconsistent shapes) raises ``InputError`` with one line naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gshead.core.errors import InputError, require_finite
from gshead.core.types import Camera, HeadParams, ReenactmentSample

FORMAT = "gshead.dataset"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
PARAM_FIELDS: tuple[str, ...] = ("identity", "expression", "jaw", "eyes", "rotation", "translation")
INDEX_FILE = "dataset.json"
SHARD_FOLDER = "shards"

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SPLITS",
    "Clip",
    "DatasetInfo",
    "ReenactmentDataset",
    "dataset_writer",
    "item_generator",
    "pick_frames",
    "read_info",
    "split_identities",
]


# --------------------------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class Clip:
    """Consecutive frames of one person, as written to a shard."""

    frames: Tensor  # [F, 3, S, S] uint8
    params: HeadParams  # [F]
    camera: Camera  # [F], S x S
    identity: int  # identity index (the same for every clip of that person)

    def __post_init__(self) -> None:
        f = self.frames.shape[0]
        if self.frames.dtype != torch.uint8 or self.frames.dim() != 4 or self.frames.shape[1] != 3:
            raise InputError(
                f"Clip.frames: expected uint8 [F, 3, S, S], got {self.frames.dtype} {list(self.frames.shape)}"
            )
        if self.params.batch_size != f or self.camera.batch_size != f:
            raise InputError(
                f"Clip: {f} frames but {self.params.batch_size} parameter rows and {self.camera.batch_size} cameras"
            )


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a dataset."""

    head_model: str  # registered head-model name the parameters belong to
    size: int  # S: frames are S x S
    identities: dict[str, tuple[int, ...]]  # split -> identity indices in it (disjoint)
    frames: int  # frames per clip (the shortest clip's, for data converted from videos)
    format_version: int
    identity_dim: int  # I of the stored HeadParams
    expression_dim: int  # E of the stored HeadParams
    shards: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> shard paths under ROOT
    clips: dict[str, int] = field(default_factory=dict)  # split -> number of clips
    source: str = "synthetic"  # "synthetic" or "video"
    extra: dict[str, Any] = field(default_factory=dict)  # generator settings (seed, ...), informational

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "source": self.source,
            "head_model": self.head_model,
            "size": self.size,
            "frames": self.frames,
            "identity_dim": self.identity_dim,
            "expression_dim": self.expression_dim,
            "splits": {
                s: {
                    "identities": list(self.identities.get(s, ())),
                    "clips": self.clips.get(s, 0),
                    "shards": list(self.shards.get(s, ())),
                }
                for s in SPLITS
            },
            "extra": self.extra,
        }

    @staticmethod
    def from_json(data: Any, where: Path) -> DatasetInfo:
        """Parse ``dataset.json`` content; ``InputError`` naming ``where`` when it is not one."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(f"{where}: not a gshead dataset index (format {found!r}, expected {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"{where}: dataset format version {data.get('format_version')!r} is not supported; "
                f"expected {FORMAT_VERSION}"
            )
        try:
            splits = data["splits"]
            info = DatasetInfo(
                head_model=str(data["head_model"]),
                size=int(data["size"]),
                identities={s: tuple(int(i) for i in splits[s]["identities"]) for s in SPLITS},
                frames=int(data["frames"]),
                format_version=int(data["format_version"]),
                identity_dim=int(data["identity_dim"]),
                expression_dim=int(data["expression_dim"]),
                shards={s: tuple(str(p) for p in splits[s]["shards"]) for s in SPLITS},
                clips={s: int(splits[s]["clips"]) for s in SPLITS},
                source=str(data.get("source", "synthetic")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where}: dataset index has missing or malformed entries ({exc!r})") from None
        seen: dict[int, str] = {}
        for s in SPLITS:
            for i in info.identities[s]:
                if i in seen:
                    raise InputError(f"{where}: identity {i} is in both the {seen[i]!r} and {s!r} splits")
                seen[i] = s
        if info.size <= 0 or info.frames <= 0:
            raise InputError(f"{where}: size and frames must be positive, got {info.size} and {info.frames}")
        return info


def read_info(root: str | Path) -> DatasetInfo:
    """``DatasetInfo`` of the dataset folder ``root`` (one-line ``InputError`` when unreadable)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset folder; expected a folder written by 'gshead data synth'")
    index = root / INDEX_FILE
    if not index.is_file():
        raise InputError(f"{index}: no such file; expected the dataset index of a gshead dataset")
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"{index}: not a readable dataset index ({reason}); expected JSON") from None
    return DatasetInfo.from_json(data, index)


# --------------------------------------------------------------------------------------------- splits


def split_identities(
    identities: int, fractions: Sequence[float], generator: torch.Generator
) -> dict[str, tuple[int, ...]]:
    """Assign identity indices 0..identities-1 to train/val/test by ``fractions`` (3 values >= 0).

    Counts are the largest-remainder rounding of the fractions; a split with a positive fraction
    that rounds to nothing takes one identity from the largest split when that split keeps at
    least one. Which identities go where is a seeded permutation.
    """
    if (
        len(fractions) != len(SPLITS)
        or not all(isinstance(f, (int, float)) and 0.0 <= f <= 1.0 for f in fractions)  # NaN fails too
        or abs(sum(fractions) - 1.0) > 1e-6
    ):
        shown = " ".join(f"{f:g}" if isinstance(f, (int, float)) else repr(f) for f in fractions)
        raise InputError(
            f"--splits {shown[:60]}: expected three fractions from 0 to 1 (train, val, test) that sum to 1"
        )
    total = float(sum(fractions))
    exact = [identities * f / total for f in fractions]
    counts = [int(e) for e in exact]
    order = sorted(range(3), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: identities - sum(counts)]:
        counts[k] += 1
    for k in range(3):
        if fractions[k] > 0 and counts[k] == 0:
            big = max(range(3), key=lambda j: counts[j])
            if counts[big] > 1:
                counts[big] -= 1
                counts[k] += 1
    perm = torch.randperm(identities, generator=generator).tolist()
    out, start = {}, 0
    for name, n in zip(SPLITS, counts):
        out[name] = tuple(sorted(perm[start : start + n]))
        start += n
    return out


# --------------------------------------------------------------------------------------------- writing


def _clip_tensors(clips: list[Clip]) -> dict[str, Tensor]:
    """The shard tensors of ``clips`` (see the module docstring)."""
    lengths = [c.frames.shape[0] for c in clips]
    offsets = torch.zeros(len(clips) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    out = {
        "frames": torch.cat([c.frames for c in clips]).contiguous(),
        "camera.world_to_camera": torch.cat([c.camera.world_to_camera for c in clips]).float().contiguous(),
        "camera.intrinsics": torch.cat([c.camera.intrinsics for c in clips]).float().contiguous(),
        "clip_offsets": offsets,
        "clip_identity": torch.tensor([c.identity for c in clips], dtype=torch.int64),
    }
    for name in PARAM_FIELDS:
        out[f"params.{name}"] = torch.cat([getattr(c.params, name) for c in clips]).float().contiguous()
    return out


class _DatasetBuilder:
    """Collects clips split by split, writes full shards to the temporary folder as it goes."""

    def __init__(self, folder: Path, clips_per_shard: int) -> None:
        self.folder = folder
        self.clips_per_shard = clips_per_shard
        self.pending: dict[str, list[Clip]] = {s: [] for s in SPLITS}
        self.shards: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.counts: dict[str, int] = {s: 0 for s in SPLITS}
        self.sizes: set[int] = set()
        self.dims: set[tuple[int, int]] = set()
        self.min_frames: int | None = None
        (folder / SHARD_FOLDER).mkdir()

    def add(self, split: str, clip: Clip) -> None:
        """Queue ``clip`` for ``split``; a full shard is written at once."""
        if split not in SPLITS:
            raise InputError(f"split {split!r}: expected one of: {', '.join(SPLITS)}")
        self.sizes.add(int(clip.frames.shape[-1]))
        self.dims.add((clip.params.identity.shape[1], clip.params.expression.shape[1]))
        if len(self.sizes) > 1 or len(self.dims) > 1:
            raise InputError(
                f"clips of one dataset must share image size and parameter sizes; got {self.sizes}, {self.dims}"
            )
        n = clip.frames.shape[0]
        self.min_frames = n if self.min_frames is None else min(self.min_frames, n)
        self.pending[split].append(clip)
        self.counts[split] += 1
        if len(self.pending[split]) >= self.clips_per_shard:
            self._flush(split)

    def _flush(self, split: str) -> None:
        from safetensors.torch import save_file

        clips = self.pending[split]
        if not clips:
            return
        name = f"{SHARD_FOLDER}/{split}-{len(self.shards[split]):05d}.safetensors"
        path = self.folder / name
        tensors = _clip_tensors(clips)
        require_finite(tensors, f"dataset shard {name}: not written")
        save_file(tensors, str(path), metadata={"format": FORMAT})  # one key: byte-stable
        os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0o600; make it an ordinary file
        self.shards[split].append(name)
        self.pending[split] = []

    def finish(
        self, head_model: str, identities: dict[str, tuple[int, ...]], source: str, extra: dict
    ) -> DatasetInfo:
        for split in SPLITS:
            self._flush(split)
        if not self.sizes or self.min_frames is None:
            raise InputError("dataset has no clips; expected at least one")
        ident_dim, expr_dim = next(iter(self.dims))
        info = DatasetInfo(
            head_model=head_model,
            size=next(iter(self.sizes)),
            identities={s: tuple(identities.get(s, ())) for s in SPLITS},
            frames=self.min_frames,
            format_version=FORMAT_VERSION,
            identity_dim=ident_dim,
            expression_dim=expr_dim,
            shards={s: tuple(self.shards[s]) for s in SPLITS},
            clips=dict(self.counts),
            source=source,
            extra=extra,
        )
        (self.folder / INDEX_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n", encoding="utf-8")
        return info


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``root`` unless ``overwrite``; missing parent folders are created."""
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{root.parent}: cannot create the folder ({exc.strerror or exc}) to write {root.name} in") from None
    if root.exists() and not root.is_dir():
        raise InputError(
            f"{root}: exists and is not a folder; expected a new or empty folder for the dataset"
        )
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise InputError(f"{root}: folder is not empty; expected a new or empty folder (or pass overwrite)")


@contextlib.contextmanager
def dataset_writer(
    root: str | Path, *, overwrite: bool = False, clips_per_shard: int = 64
) -> Iterator[_DatasetBuilder]:
    """Yield a builder writing into a hidden temporary folder beside ``root``; when the block
    succeeds (and the caller called ``builder.finish``), the folder is renamed to ``root``.

    On any exception, KeyboardInterrupt included, the temporary folder is deleted and ``root``
    is left as it was. A non-empty ``root`` is refused unless ``overwrite``; with ``overwrite``
    the old folder is replaced only once the new one is complete.
    """
    root = Path(root)
    _prepare_root(root, overwrite)
    if clips_per_shard < 1:
        raise InputError(f"clips_per_shard {clips_per_shard}: expected at least 1")
    from gshead.io.media import atomic_directory

    with atomic_directory(root) as temporary:
        builder = _DatasetBuilder(temporary, clips_per_shard)
        yield builder
        if not (temporary / INDEX_FILE).is_file():
            raise InputError(f"{root}: the dataset was not finished; no index was written")
        _prepare_root(root, overwrite)  # it may have changed while we worked


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _ClipRef:
    shard: int  # index into the dataset's shard list
    start: int  # first frame in the shard
    length: int  # frames
    identity: int


_REQUIRED = (
    "frames",
    "camera.world_to_camera",
    "camera.intrinsics",
    "clip_offsets",
    "clip_identity",
) + tuple(f"params.{n}" for n in PARAM_FIELDS)


def _scan_shard(path: Path, shard: int, info: DatasetInfo) -> list[_ClipRef]:
    """Check a shard's header and shapes; its clips. One-line InputError when it does not fit."""
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"{path}: no such dataset shard; the dataset folder is incomplete")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = [k for k in _REQUIRED if k not in keys]
            if missing:
                raise InputError(f"{path}: dataset shard lacks {', '.join(missing)}")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in _REQUIRED}
            offsets = f.get_tensor("clip_offsets")
            identity = f.get_tensor("clip_identity")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad headers and short files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{path}: not a readable dataset shard ({reason}); it may be truncated or corrupt"
        ) from None
    n = shapes["frames"][0] if shapes["frames"] else 0
    s = info.size
    want = {
        "frames": (n, 3, s, s),
        "camera.world_to_camera": (n, 4, 4),
        "camera.intrinsics": (n, 3, 3),
        "params.identity": (n, info.identity_dim),
        "params.expression": (n, info.expression_dim),
        "params.jaw": (n, 3),
        "params.eyes": (n, 6),
        "params.rotation": (n, 3),
        "params.translation": (n, 3),
    }
    for key, shape in want.items():
        if shapes[key] != shape:
            raise InputError(f"{path}: {key} has shape {list(shapes[key])}, expected {list(shape)}")
    k = identity.shape[0] if identity.dim() == 1 else -1
    if k < 1 or tuple(offsets.shape) != (k + 1,) or int(offsets[0]) != 0 or int(offsets[-1]) != n:
        raise InputError(f"{path}: clip_offsets / clip_identity do not describe {n} frames")
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths <= 0).any()):
        raise InputError(f"{path}: clip_offsets has an empty clip")
    return [_ClipRef(shard, int(offsets[i]), int(lengths[i]), int(identity[i])) for i in range(k)]


def item_generator(seed: int, index: int, cross: bool = False) -> torch.Generator:
    """The generator that picks item ``index``'s frames: seeded by (``seed``, ``index``, ``cross``)
    only, so an item does not depend on access order, worker or process."""
    mixed = ((seed * 1_000_003 + index) * 7919 + int(cross)) & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator().manual_seed(mixed)


def pick_frames(length: int, targets: int, generator: torch.Generator) -> tuple[int, list[int]]:
    """A source frame and ``targets`` target frames of a clip of ``length`` frames; targets differ
    from the source (and from each other while there are enough frames)."""
    source = int(torch.randint(length, (1,), generator=generator))
    others = [i for i in range(length) if i != source]
    if not others:
        raise InputError(f"a clip of {length} frame(s) cannot give a source and a different target frame")
    if targets <= len(others):
        order = torch.randperm(len(others), generator=generator)[:targets].tolist()
    else:
        order = torch.randint(len(others), (targets,), generator=generator).tolist()
    return source, [others[i] for i in order]


class ReenactmentDataset(torch.utils.data.Dataset):
    """Items of one split of a dataset folder as ``ReenactmentSample`` (see the module docstring).

    Item ``index`` is the split's clip ``index``: a source frame and ``targets`` other frames of
    that clip (self-reenactment), chosen by a generator seeded with (``seed``, ``index``) only, so
    an item is the same whatever the access order, worker or process. With ``cross=True`` the
    targets come from a clip of another identity in the same split (chosen the same way), so the
    target images show a different person than the source.

    Frames are read from the shards on demand (memory-mapped); only the index is read at init.
    """

    def __init__(
        self, root: str | Path, split: str = "train", targets: int = 1, seed: int = 0, cross: bool = False
    ) -> None:
        if split not in SPLITS:
            raise InputError(f"split {split!r}: expected one of: {', '.join(SPLITS)}")
        if targets < 1:
            raise InputError(f"targets {targets}: expected at least 1 target frame per item")
        self.root = Path(root)
        self.info = read_info(self.root)
        self.split, self.targets, self.seed, self.cross = split, int(targets), int(seed), bool(cross)
        self.shard_paths = [self.root / p for p in self.info.shards[split]]
        self.clips: list[_ClipRef] = []
        for i, path in enumerate(self.shard_paths):
            self.clips.extend(_scan_shard(path, i, self.info))
        if len(self.clips) != self.info.clips[split]:
            raise InputError(
                f"{self.root / INDEX_FILE}: lists {self.info.clips[split]} {split} clips, but its shards hold {len(self.clips)}"
            )
        allowed = set(self.info.identities[split])
        stray = {c.identity for c in self.clips} - allowed
        if stray:
            raise InputError(
                f"{self.root}: {split} shards hold identities {sorted(stray)} not listed for that split"
            )
        if any(c.length < 2 for c in self.clips) and not cross:
            raise InputError(f"{self.root}: a {split} clip has fewer than 2 frames; self-reenactment needs 2")
        if cross and len({c.identity for c in self.clips}) < 2:
            raise InputError(
                f"{self.root}: cross-reenactment needs at least 2 identities in the {split} split"
            )
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict:  # open shard handles stay in their process
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, shard: int):
        from safetensors import safe_open

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            try:
                handle = safe_open(str(self.shard_paths[shard]), framework="pt")
            except Exception as exc:  # noqa: BLE001 - any failure is the same user error
                raise InputError(f"{self.shard_paths[shard]}: cannot open dataset shard ({exc})") from None
            self._handles[shard] = handle
        return handle

    def read_frames(self, clip: int, frames: Iterable[int]) -> tuple[Tensor, HeadParams, Camera]:
        """Images [K, 3, S, S] float in [0, 1], parameters [K] and cameras [K] of frames of a clip."""
        ref = self.clips[clip]
        rows = [ref.start + int(i) for i in frames]
        handle = self._handle(ref.shard)

        def take(key: str) -> Tensor:
            sl = handle.get_slice(key)
            return torch.stack([sl[r : r + 1][0] for r in rows])

        images = take("frames").float() / 255.0
        params = HeadParams(**{n: take(f"params.{n}") for n in PARAM_FIELDS})
        s = self.info.size
        camera = Camera(take("camera.world_to_camera"), take("camera.intrinsics"), s, s)
        return images, params, camera

    def __getitem__(self, index: int) -> ReenactmentSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} {self.split} clips")
        index %= len(self)
        g = item_generator(self.seed, index, cross=self.cross)
        ref = self.clips[index]
        if self.cross:
            source = int(torch.randint(ref.length, (1,), generator=g))
            others = [k for k, c in enumerate(self.clips) if c.identity != ref.identity]
            other = others[int(torch.randint(len(others), (1,), generator=g))]
            length = self.clips[other].length
            if self.targets <= length:
                picks = torch.randperm(length, generator=g)[: self.targets].tolist()
            else:
                picks = torch.randint(length, (self.targets,), generator=g).tolist()
            target_clip = other
        else:
            source, picks = pick_frames(ref.length, self.targets, g)
            target_clip = index
        src_img, src_params, src_cam = self.read_frames(index, [source])
        tgt_img, tgt_params, tgt_cam = self.read_frames(target_clip, picks)
        return ReenactmentSample(
            source_image=src_img,
            source=src_params,
            source_camera=src_cam,
            target_images=tgt_img,
            targets=tgt_params,
            target_camera=tgt_cam,
        )

    def identity_of(self, index: int) -> int:
        """Identity index of item ``index``'s source."""
        return self.clips[index].identity

    def __repr__(self) -> str:
        return (
            f"ReenactmentDataset({str(self.root)!r}, split={self.split!r}, {len(self)} clips, "
            f"targets={self.targets}, cross={self.cross}, size={self.info.size})"
        )
