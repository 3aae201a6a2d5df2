"""The dataset format and ``ReenactmentDataset``: splits, items, determinism, bad files, atomic writes, CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gshead.cli import main
from gshead.core.errors import InputError
from gshead.core.types import ReenactmentSample
from gshead.data import DatasetInfo, ReenactmentDataset, write_synthetic_dataset
from gshead.data.format import split_identities
from gshead.data.synthetic import SyntheticHeads

SIZE, FRAMES, IDENTITIES = 32, 3, 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    info = write_synthetic_dataset(
        root, identities=IDENTITIES, frames=FRAMES, size=SIZE, seed=0, progress=False,
        gaussians_per_face=1, clips_per_shard=2,
    )  # fmt: skip
    return root, info


def _copy(dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset[0], root)
    return root


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_info_and_split_by_identity(dataset):
    root, info = dataset
    assert isinstance(info, DatasetInfo)
    assert (info.head_model, info.size, info.frames, info.format_version) == ("procedural", SIZE, FRAMES, 1)
    ids = [set(info.identities[s]) for s in ("train", "val", "test")]
    assert all(ids)  # 5 identities at 0.8/0.1/0.1: every split gets at least one
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(range(IDENTITIES))
    for split in ("train", "val", "test"):
        data = ReenactmentDataset(root, split)
        assert data.info == ReenactmentDataset(root, "train").info
        assert {data.identity_of(i) for i in range(len(data))} == set(info.identities[split])
    assert len(info.shards["train"]) == 2  # 3 train clips at 2 clips per shard


@pytest.mark.parametrize("identities", [1, 2, 3, 7, 10, 11])
def test_split_counts(identities):
    out = split_identities(identities, (0.8, 0.1, 0.1), torch.Generator().manual_seed(0))
    assert sorted(sum(out.values(), ())) == list(range(identities))
    if identities >= 3:
        assert all(len(v) >= 1 for v in out.values())
    if identities == 10:
        assert [len(out[s]) for s in ("train", "val", "test")] == [8, 1, 1]


def test_self_reenactment_items(dataset):
    root, _ = dataset
    data = ReenactmentDataset(root, "train", targets=2, seed=3)
    item = data[0]
    assert isinstance(item, ReenactmentSample)
    assert item.source_image.shape == (1, 3, SIZE, SIZE) and item.target_images.shape == (2, 3, SIZE, SIZE)
    assert item.source.batch_size == 1 and item.targets.batch_size == 2
    assert item.source_camera.batch_size == 1 and item.target_camera.batch_size == 2
    assert item.source_camera.width == SIZE and item.target_camera.height == SIZE
    assert item.source_image.dtype == torch.float32
    assert 0 <= item.source_image.min() and item.target_images.max() <= 1
    # same person, different frames (each frame of a clip has its own random pose)
    assert torch.equal(item.targets.identity, item.source.identity.expand(2, -1))
    for t in range(2):
        assert not torch.equal(item.targets.rotation[t], item.source.rotation[0])
        assert not torch.equal(item.target_images[t], item.source_image[0])
    assert not torch.equal(item.targets.rotation[0], item.targets.rotation[1])


def test_items_are_deterministic_by_seed_and_index(dataset):
    root, _ = dataset
    a = ReenactmentDataset(root, "train", targets=1, seed=7)
    b = ReenactmentDataset(root, "train", targets=1, seed=7)
    order = [2, 0, 1]
    first = {i: b[i] for i in order}  # access order does not matter
    for i in range(len(a)):
        assert torch.equal(a[i].source_image, first[i].source_image)
        assert torch.equal(a[i].targets.expression, first[i].targets.expression)
    picks = {
        tuple(ReenactmentDataset(root, "train", seed=s)[0].source.rotation.flatten().tolist())
        for s in range(6)
    }
    assert len(picks) > 1  # other seeds choose other frames


def test_pickles_for_dataloader_workers(dataset):
    import pickle

    root, _ = dataset
    data = ReenactmentDataset(root, "train", seed=2)
    first = data[1]  # opens a shard handle, which must not be pickled
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[1].target_images, first.target_images)
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=list)
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 1] and isinstance(batches[0][0], ReenactmentSample)


def test_cross_reenactment_shows_another_identity(dataset):
    root, _ = dataset
    data = ReenactmentDataset(root, "train", targets=2, cross=True, seed=1)
    for i in range(len(data)):
        item = data[i]
        assert item.target_images.shape == (2, 3, SIZE, SIZE)
        assert not torch.equal(item.targets.identity[0], item.source.identity[0])
    with pytest.raises(InputError, match="at least 2 identities"):
        ReenactmentDataset(root, "val", cross=True)


def test_item_matches_a_fresh_render(dataset):
    """The stored frames are the generator's renders of the stored parameters."""
    root, _info = dataset
    data = ReenactmentDataset(root, "test")
    clip = data.clips[0]
    heads = SyntheticHeads(seed=0, gaussians_per_face=1)
    frames, params, _ = heads.clip(heads.identity(clip.identity), 0, FRAMES, SIZE)
    images, stored, camera = data.read_frames(0, range(FRAMES))
    assert torch.equal((images * 255).round().to(torch.uint8), frames)
    assert torch.equal(stored.expression, params.expression)
    assert torch.equal(camera.intrinsics, heads.camera(SIZE, FRAMES).intrinsics)


def test_index_errors(dataset):
    root, _ = dataset
    data = ReenactmentDataset(root, "train")
    with pytest.raises(IndexError):
        data[len(data)]
    with pytest.raises(InputError, match="split 'dev'"):
        ReenactmentDataset(root, "dev")


def test_missing_and_corrupt_index(dataset, tmp_path):
    with pytest.raises(InputError, match="no such dataset folder"):
        ReenactmentDataset(tmp_path / "nowhere")
    root = _copy(dataset, tmp_path)
    (root / "dataset.json").write_text("{ not json")
    with pytest.raises(InputError, match="not a readable dataset index") as exc:
        ReenactmentDataset(root)
    _one_line(exc)
    (root / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a gshead dataset index"):
        ReenactmentDataset(root)
    data = json.loads((dataset[0] / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(InputError, match="version 99 is not supported"):
        ReenactmentDataset(root)
    broken = dict(data, splits=dict(data["splits"]))
    del broken["splits"]["val"]
    (root / "dataset.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match="missing or malformed"):
        ReenactmentDataset(root)
    (root / "dataset.json").unlink()
    with pytest.raises(InputError, match="dataset.json: no such file"):
        ReenactmentDataset(root)


def test_missing_and_truncated_shard(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    shard = root / "shards" / "train-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="train-00000.safetensors: not a readable dataset shard") as exc:
        ReenactmentDataset(root, "train")
    _one_line(exc)
    shard.unlink()
    with pytest.raises(InputError, match="no such dataset shard"):
        ReenactmentDataset(root, "train")
    ReenactmentDataset(root, "val")  # other splits still load


def test_overwrite_refused_unless_asked(dataset, tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    kwargs = {"identities": 2, "frames": 2, "size": 16, "progress": False, "gaussians_per_face": 1}
    with pytest.raises(InputError, match="folder is not empty") as exc:
        write_synthetic_dataset(root, **kwargs)
    _one_line(exc)
    assert (root / "keep.txt").read_text() == "mine"
    write_synthetic_dataset(root, overwrite=True, **kwargs)
    assert not (root / "keep.txt").exists() and (root / "dataset.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary or old folders left
    empty = tmp_path / "empty"
    empty.mkdir()
    write_synthetic_dataset(empty, **kwargs)  # an existing empty folder is fine
    assert ReenactmentDataset(empty, "train").info.size == 16


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, error):
    calls = []
    original = SyntheticHeads.clip

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error("stop")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SyntheticHeads, "clip", failing)
    with pytest.raises(error):
        write_synthetic_dataset(
            tmp_path / "ds",
            identities=3,
            frames=2,
            size=16,
            progress=False,
            gaussians_per_face=1,
            clips_per_shard=1,
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_and_info(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", "-n", "3", "-o", str(out), "--frames", "2", "--size", "16", "-q"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "anny-head" in text and "16x16, 2 per clip" in text  # the default pipeline's head model
    assert main(["data", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "gshead.dataset"
    assert main(["data", "synth", "-n", "3", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gshead: error:") and "not empty" in err and "\n" not in err
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert main(["data", "synth", "-n", "2", "-o", str(tmp_path / "x"), "--frames", "1", "-q"]) == 2
    assert "at least 2" in capsys.readouterr().err
    other = tmp_path / "procedural"
    args = ["data", "synth", "-n", "2", "-o", str(other), "--frames", "2", "--size", "16", "--head-model", "procedural"]
    assert main([*args, "-q"]) == 0
    assert main(["data", "info", str(other)]) == 0
    assert "head model: procedural" in capsys.readouterr().out


def test_parameters_and_cameras_follow_the_pipeline_conventions(dataset):
    """An avatar made from an item's source, driven by the item's target parameters and camera
    (as a trainer does), lands on the target image's head: the same head model, camera and
    head-pose-as-camera-motion rules as ``drive_frames``. Ignoring the pose fits worse."""
    from gshead.core.pipeline import Pipeline
    from gshead.testing import tiny_pipeline

    root, _ = dataset
    pipe = Pipeline.from_dict(tiny_pipeline(source_size=SIZE, render_size=SIZE, rasterizer={"name": "cpu"}))
    data = ReenactmentDataset(root, "train", targets=2, seed=0)
    errors = {"posed": 0.0, "pose ignored": 0.0}
    for index in range(len(data)):
        item = data[index]
        background = item.target_images[:, :, :1, :1]  # corners show the background colour
        head = (item.target_images - background).abs().amax(1) > 0.02  # [T, S, S]
        with torch.no_grad():
            avatar = pipe.reconstruct(item.source_image, item.source, item.source_camera)
            posed = pipe.driver.drive(avatar, item.targets)  # the head mesh only (no static Gaussians)
            cameras = {
                "posed": item.target_camera.moved(item.targets.pose_matrix()),
                "pose ignored": item.target_camera,
            }
            for name, camera in cameras.items():
                render = pipe.rasterizer(posed, camera)
                image = render.features[:, :3] + (1 - render.alpha) * background
                errors[name] += float((image - item.target_images).abs().mean(1)[head].mean())
                if name == "posed":
                    drawn = render.alpha[:, 0] > 0.5
                    iou = (drawn & head).sum() / (drawn | head).sum()
                    assert iou > 0.85, float(iou)
    assert errors["posed"] < 0.9 * errors["pose ignored"], errors


def test_missing_parent_folders_are_created(tmp_path):
    from gshead.data import ReenactmentDataset, write_synthetic_dataset

    root = tmp_path / "a" / "b" / "synth"
    write_synthetic_dataset(root, identities=2, frames=2, size=32, seed=0, splits=(1.0, 0.0, 0.0), progress=False)
    assert len(ReenactmentDataset(root, split="train")) == 2
