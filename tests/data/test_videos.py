"""VFHQ-style video folders: pairing, crops, frame choice, conversion to shards, errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from gshead.cli import main
from gshead.core.errors import InputError
from gshead.io.media import VideoWriter
from gshead.io.sequence import TrackedSequence, save_sequence
from gshead.core.types import Camera, HeadParams
from gshead.data import ReenactmentDataset
from gshead.data.videos import VideoClipDataset, convert_video_folder, find_clips, identity_key

W, H, T, S = 56, 40, 5, 24
CLIPS = ("Clip+abc+P0+C0+F1-5", "Clip+abc+P0+C1+F9-13", "Clip+xyz+P1+C0+F0-4")
INVALID = 2  # frame without a face in every clip


def _level(clip: int, frame: int) -> float:
    return 0.1 + 0.12 * frame + 0.05 * clip


def _write_clip(folder, name: str, clip: int, sequences_dir: bool = False) -> None:
    frames = torch.empty(T, 3, H, W)
    for i in range(T):
        frames[i, :, :, : W // 2] = _level(clip, i)  # left half: says which frame this is
        frames[i, :, :, W // 2 :] = 0.9  # right half: bright
    with VideoWriter(folder / f"{name}.mp4", fps=25, width=W, height=H) as video:
        video.write(frames)
    params = HeadParams.zeros(8, 15, T).replace(
        rotation=torch.stack([torch.zeros(T), torch.arange(T) * 0.1, torch.zeros(T)], -1),
        identity=torch.full((T, 8), float(clip)),
    )
    crop = torch.full((T, 3), float("nan"))
    crop[1] = torch.tensor([W / 2, 0.0, W / 2])  # frame 1: the bright right half only
    valid = torch.ones(T, dtype=torch.bool)
    valid[INVALID] = False
    seq = TrackedSequence(params, Camera.frontal(1.0, 18.0, 32, 32, T), valid, 25.0, "procedural", crop=crop)
    target = folder / "sequences" if sequences_dir else folder
    target.mkdir(exist_ok=True)
    save_sequence(target / f"{name}.safetensors", seq)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfhq")
    for k, name in enumerate(CLIPS):
        _write_clip(root, name, k, sequences_dir=(k == 2))
    return root


def _frame_of(item_params: HeadParams, row: int) -> int:
    return round(float(item_params.rotation[row, 1]) / 0.1)


def _expected_mean(clip: int, frame: int) -> float:
    if frame == 1:
        return 0.9  # cropped to the right half
    # centred square: columns 8..48, half left (the level), half right (0.9)
    return (_level(clip, frame) + 0.9) / 2


def test_identity_keys_and_pairing(folder):
    assert identity_key("Clip+G0DGRma_p48+P0+C0+F11208-11383") == "G0DGRma_p48+P0"
    assert identity_key("my_video") == "my_video"
    clips = find_clips(folder)
    assert [c.video.stem for c in clips] == sorted(CLIPS)
    assert clips[2].sequence.parent.name == "sequences"
    assert len({c.identity for c in clips}) == 2


def test_items_crop_and_skip_frames_without_a_face(folder):
    data = VideoClipDataset(folder, size=S, targets=3, seed=0)
    assert len(data) == 3 and data.info.head_model == "procedural" and data.info.source == "video"
    seen = set()
    for index in range(len(data)):
        item = data[index]
        clip = int(item.source.identity[0, 0])
        assert item.source_image.shape == (1, 3, S, S) and item.target_images.shape == (3, 3, S, S)
        assert item.source_camera.width == S and item.target_camera.batch_size == 3
        frames = [_frame_of(item.source, 0)] + [_frame_of(item.targets, r) for r in range(3)]
        assert INVALID not in frames and frames[0] not in frames[1:]
        images = torch.cat([item.source_image, item.target_images])
        for image, frame in zip(images, frames):
            assert abs(image.mean().item() - _expected_mean(clip, frame)) < 0.04, (clip, frame)
            seen.add(frame)
        assert torch.equal(item.targets.identity, item.source.identity.expand(3, -1))
    again = VideoClipDataset(folder, size=S, targets=3, seed=0)[1]
    assert torch.equal(again.targets.rotation, data[1].targets.rotation)
    assert 1 in seen  # the crop-box frame was exercised


def test_cross_items_show_another_identity(folder):
    data = VideoClipDataset(folder, size=S, targets=2, cross=True, seed=4)
    names = data.identity_names
    for index in range(len(data)):
        item = data[index]
        source_clip, target_clip = int(item.source.identity[0, 0]), int(item.targets.identity[0, 0])
        assert identity_key(CLIPS[source_clip]) != identity_key(CLIPS[target_clip])
        assert len(names) == 2


def test_bad_folders(folder, tmp_path):
    with pytest.raises(InputError, match="no videos found"):
        VideoClipDataset(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / f"{CLIPS[0]}.mp4", bad / "lonely.mp4")
    with pytest.raises(InputError, match="lonely.mp4: no tracked sequence") as exc:
        VideoClipDataset(bad)
    assert "\n" not in str(exc.value)
    short = TrackedSequence(
        HeadParams.zeros(8, 15, 3),
        Camera.frontal(1.0, 18.0, 32, 32, 3),
        torch.ones(3, dtype=torch.bool),
        25.0,
        "procedural",
    )
    save_sequence(bad / "lonely.safetensors", short)
    with pytest.raises(InputError, match="3 tracked frames, but lonely.mp4 has 5"):
        VideoClipDataset(bad)


def test_convert_to_shards(folder, tmp_path, capsys):
    root = tmp_path / "ds"
    info = convert_video_folder(folder, root, size=S, seed=0, splits=(0.5, 0.5, 0.0), progress=False)
    assert info.source == "video" and info.frames == T - 1 and info.size == S
    assert sum(info.clips.values()) == 3 and not info.identities["test"]
    direct = VideoClipDataset(folder, size=S, split_seed=0, splits=(0.5, 0.5, 0.0), split="train")
    stored = ReenactmentDataset(root, "train")
    assert len(stored) == len(direct) and stored.info.identities["train"] == direct.info.identities["train"]
    images, params, camera = stored.read_frames(0, range(T - 1))
    frames = [_frame_of(params, r) for r in range(T - 1)]
    assert frames == [0, 1, 3, 4]  # the frame without a face was dropped
    clip = int(params.identity[0, 0])
    for image, frame in zip(images, frames):
        assert abs(image.mean().item() - _expected_mean(clip, frame)) < 0.04
    assert camera.width == S and torch.allclose(camera.intrinsics[0, 0, 2], torch.tensor(S / 2))
    assert main(["data", "from-videos", str(folder), "-o", str(tmp_path / "cli"), "--size", "16", "-q"]) == 0
    assert main(["data", "info", str(tmp_path / "cli")]) == 0
    assert "video dataset" in capsys.readouterr().out
