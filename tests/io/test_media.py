"""gshead.io.media: image and video reading with one-line errors, atomic outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gshead.core.errors import InputError, ShapeError
from gshead.io.media import (
    VideoWriter,
    atomic_output,
    probe_video,
    read_image,
    read_video,
    square_resize,
)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


# ------------------------------------------------------------------------------------------ read_image


def test_astronaut_example_loads_as_512_square():
    image = read_image("example:astronaut")
    assert image.shape == (1, 3, 512, 512)
    assert image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1


def test_unknown_example_lists_the_known_ones():
    with pytest.raises(InputError) as exc:
        read_image("example:nope")
    assert "example:astronaut" in _one_line(exc)


def test_rgb_png_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "rgb.png")
    image = read_image(tmp_path / "rgb.png")
    assert image.shape == (1, 3, 12, 20)
    expected = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(image, expected)


def test_grayscale_is_repeated_to_rgb(tmp_path):
    Image.new("L", (10, 6), 128).save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (1, 3, 6, 10)
    assert torch.allclose(image, torch.full_like(image, 128 / 255))


def test_rgba_is_composited_on_black(tmp_path):
    Image.new("RGBA", (8, 8), (255, 100, 0, 128)).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    a = 128 / 255
    assert torch.allclose(image[0, :, 0, 0], torch.tensor([a, 100 / 255 * a, 0.0]), atol=1e-6)


def test_palette_with_transparency_is_composited(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=1)  # colour 1 fully transparent
    image = read_image(tmp_path / "palette.png")
    assert image.shape == (1, 3, 4, 4)
    assert torch.all(image == 0)  # colour 0 is black, colour 1 is transparent -> black


def test_16_bit_grayscale_keeps_precision(tmp_path):
    array = np.zeros((4, 6), np.uint16)
    array[:, :3] = 65535
    array[:, 3:] = 1000  # not representable in 8 bits
    Image.fromarray(array).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 4, 6)
    assert torch.allclose(image[0, :, 0, 0], torch.ones(3))
    assert torch.allclose(image[0, :, 0, 5], torch.full((3,), 1000 / 65535), atol=1e-7)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 8, 8))  # white block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (1, 3, 40, 20)  # portrait once rotated
    assert image[0, :, 2, -3].min() > 0.9  # the block is now at the top-right
    assert image[0, :, 2, 2].max() < 0.1


def test_missing_image_is_one_line(tmp_path):
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "IMAGE.png")
    assert _one_line(exc) == f"{tmp_path / 'IMAGE.png'}: no such file"


def test_directory_instead_of_image(tmp_path):
    with pytest.raises(InputError) as exc:
        read_image(tmp_path)
    assert "is a folder" in _one_line(exc)


def test_corrupt_image_names_the_expected_formats(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"this is not a png" * 10)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "fake.png")
    message = _one_line(exc)
    assert "fake.png: not a readable image" in message and "expected a PNG, JPEG" in message


def test_truncated_png_fails_at_read(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "cut.png")
    assert "cut.png: not a readable image" in _one_line(exc)


def test_very_large_images_are_downscaled_first(tmp_path, monkeypatch):
    from gshead.io import media

    # A pixel budget (patched small here: the real one is 40 MP) decides; the aspect is kept.
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 2048 * 20)
    # 4200 x 42 (more pixels than the budget): left half red, right half blue.
    array = np.zeros((42, 4200, 3), np.uint8)
    array[:, :2100, 0] = 255
    array[:, 2100:, 2] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    image = read_image(tmp_path / "wide.png")
    h, w = image.shape[-2:]
    assert h * w <= media.MAX_IMAGE_PIXELS and image.shape == (1, 3, 20, 2023)  # floor(4200 x 42 * sqrt(40960 / 176400))
    assert torch.allclose(image[0, :, :, 10], torch.tensor([1.0, 0.0, 0.0])[:, None].expand(3, 20))
    assert torch.allclose(image[0, :, :, -10], torch.tensor([0.0, 0.0, 1.0])[:, None].expand(3, 20))
    # A JPEG is decoded at a reduced scale first, then resized to the same budget;
    # EXIF rotation still applies (here after the downscale: a 42 x 4400 portrait).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4400, 42), (0, 128, 255)).save(tmp_path / "wide.jpg", exif=exif, quality=95)
    jpeg = read_image(tmp_path / "wide.jpg")
    assert jpeg.shape[2] * jpeg.shape[3] <= media.MAX_IMAGE_PIXELS and jpeg.shape[2] > 10 * jpeg.shape[3]
    assert torch.allclose(jpeg[0, :, 1000, 10], torch.tensor([0.0, 128 / 255, 1.0]), atol=0.03)
    assert media.stored_size(tmp_path / "wide.jpg") == (42, 4400)  # as stored, EXIF rotation applied
    # At the limit nothing changes.
    Image.new("L", (2048, 20), 50).save(tmp_path / "limit.png")
    assert read_image(tmp_path / "limit.png").shape == (1, 3, 20, 2048)


# ------------------------------------------------------------------------------------------ square_resize


def test_square_resize_crops_the_centre():
    image = torch.zeros(2, 3, 10, 30)
    image[:, :, :, 10:20] = 1.0  # the centre square is white, the sides black
    out = square_resize(image, 10)
    assert out.shape == (2, 3, 10, 10)
    assert torch.equal(out, torch.ones_like(out))


def test_square_resize_antialiases():
    # Columns 1, 2 of every 4 are white: a point-sampled 4x reduction (at 4i + 1.5) sees only white.
    k = torch.arange(64) % 4
    stripes = ((k == 1) | (k == 2)).float()
    image = stripes.expand(1, 3, 64, 64)
    out = square_resize(image, 16)
    assert out.shape == (1, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=0.05)  # the average, not the samples


def test_square_resize_refuses_a_bad_size():
    with pytest.raises(ShapeError):
        square_resize(torch.zeros(1, 3, 8, 8), 0)


# ------------------------------------------------------------------------------------------ atomic_output


def test_atomic_output_renames_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".txt" and temporary != target
        temporary.write_text("new")
        assert target.read_text() == "old"  # not replaced before success
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_output_cleans_up_on_error(tmp_path, error):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(type(error)):
        with atomic_output(target) as temporary:
            temporary.write_text("half")
            raise error
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_output_missing_folder_is_named(tmp_path):
    with pytest.raises(InputError) as exc:
        with atomic_output(tmp_path / "missing" / "out.mp4"):
            pass
    assert _one_line(exc).startswith(f"{tmp_path / 'missing'}: no such folder")
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------------------------------ video


def _colour_frames(n: int, height: int = 48, width: int = 64) -> torch.Tensor:
    """n flat-colour frames, a different colour each (chroma subsampling keeps flat colours)."""
    t = torch.linspace(0.1, 0.9, n)
    colours = torch.stack([t, 1.0 - t, 0.5 + 0.3 * torch.sin(6 * t)], dim=1)  # [n, 3]
    return colours[:, :, None, None].expand(n, 3, height, width).contiguous()


def test_video_round_trip(tmp_path):
    frames = _colour_frames(10)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 25, 64, 48) as writer:
        writer.write(frames[:4])
        writer.write(frames[4:])
    info = probe_video(path)
    assert (info.frames, info.width, info.height) == (10, 64, 48)
    assert info.fps == pytest.approx(25.0)
    iterator, fps, count = read_video(path)
    assert fps == pytest.approx(25.0) and count == 10
    decoded = torch.cat(list(iterator))
    assert decoded.shape == (10, 3, 48, 64)
    assert (decoded - frames).abs().mean() < 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_video_odd_size_is_padded_to_even(tmp_path):
    frames = _colour_frames(2, height=17, width=33)
    with VideoWriter(tmp_path / "odd.mp4", 10, 33, 17) as writer:
        writer.write(frames)
    assert (writer.encoded_width, writer.encoded_height) == (34, 18)
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.frames, info.width, info.height) == (2, 34, 18)


def test_video_writer_refuses_wrong_frame_size(tmp_path):
    with pytest.raises(ShapeError):
        with VideoWriter(tmp_path / "clip.mp4", 25, 64, 48) as writer:
            writer.write(torch.zeros(1, 3, 48, 50))
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_video_writer_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="stop"):
        with VideoWriter(tmp_path / "clip.mp4", 25, 64, 48) as writer:
            writer.write(_colour_frames(3))
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_video_writer_with_no_frames_leaves_no_file(tmp_path):
    with pytest.raises(InputError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", 25, 64, 48):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf")])
def test_video_writer_refuses_a_bad_frame_rate(tmp_path, fps):
    with pytest.raises(InputError, match="frame rate"):
        VideoWriter(tmp_path / "clip.mp4", fps, 64, 48)


def test_video_writer_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        with VideoWriter(tmp_path / "nope" / "clip.mp4", 25, 64, 48):
            pass


def test_missing_video(tmp_path):
    with pytest.raises(InputError) as exc:
        read_video(tmp_path / "none.mp4")
    assert _one_line(exc) == f"{tmp_path / 'none.mp4'}: no such file"


def test_directory_instead_of_video(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        probe_video(tmp_path)


def test_corrupt_video(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 200)
    with pytest.raises(InputError) as exc:
        read_video(tmp_path / "junk.mp4")
    assert "junk.mp4: not a readable video" in _one_line(exc)


def test_truncated_video_fails_clearly(tmp_path):
    rng = torch.Generator().manual_seed(0)
    with VideoWriter(tmp_path / "noise.mp4", 25, 64, 48) as writer:
        writer.write(torch.rand(20, 3, 48, 64, generator=rng))  # noise: large frames
    data = (tmp_path / "noise.mp4").read_bytes()
    # Cut inside the frame data: the index (written first) promises 20 frames.
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        iterator, _, count = read_video(tmp_path / "cut.mp4")
        assert count == 20
        for _ in iterator:
            pass
    assert "cut.mp4" in _one_line(exc) and "truncated" in str(exc.value)
    # Cut inside the header: refused when opened.
    (tmp_path / "head.mp4").write_bytes(data[:200])
    with pytest.raises(InputError, match=r"head.mp4: (not a readable video|contains no video stream)"):
        probe_video(tmp_path / "head.mp4")
