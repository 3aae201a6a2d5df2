"""``background: static`` (issue #17 item 2, first part): the portrait's background is cut from the
static Gaussians and kept as an image behind the avatar, so a head turn leaves it where it was.
Checked against the ``lifted`` behaviour on the same portrait, where the background turns too."""

from __future__ import annotations

import pytest
import torch

from gshead.core.errors import ConfigError
from gshead.core.geometry import fill_holes
from gshead.core.pipeline import Pipeline
from gshead.io.media import read_image
from gshead.testing import tiny_pipeline


def test_fill_holes_keeps_known_pixels_and_fills_from_around():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 40, 56, generator=gen)
    known = torch.ones(1, 1, 40, 56)
    known[..., 5:30, 10:45] = 0
    out = fill_holes(image, known)
    assert torch.equal(out[..., :5, :], image[..., :5, :]) and torch.isfinite(out).all()
    flat = fill_holes(torch.full((1, 3, 40, 56), 0.25), known)
    assert torch.allclose(flat, torch.full_like(flat, 0.25), atol=1e-6)  # a constant stays constant
    halves = torch.zeros(1, 1, 32, 32)
    halves[..., 16:] = 1.0
    holes = torch.ones(1, 1, 32, 32)
    holes[..., 8:24, 12:20] = 0
    filled = fill_holes(halves, holes)
    assert 0.0 <= float(filled.min()) and float(filled.max()) <= 1.0
    assert float(filled[0, 0, 16, 12]) < float(filled[0, 0, 16, 19])  # the fill follows the sides


def test_static_background_needs_a_segmenting_tracker():
    pipe = Pipeline.from_dict(tiny_pipeline(background="static"))  # the tiny pipeline tracks with frontal
    image = torch.rand(1, 3, pipe.config.source_size, pipe.config.source_size)
    with pytest.raises(ConfigError, match="background: static needs a tracker that segments"):
        pipe.reconstruct(image)


@pytest.fixture(scope="module")
def avatars():
    pytest.importorskip("mediapipe", reason="the segmentation is mediapipe's")
    out = {}
    for mode in ("lifted", "static"):
        pipe = Pipeline.from_dict(tiny_pipeline(tracker={"name": "mediapipe"}, background=mode, source_size=128, render_size=128))
        image = pipe.prepare_image(read_image("example:astronaut"))
        out[mode] = (pipe, pipe.reconstruct(image), image)
    return out


def test_the_background_is_cut_and_kept_as_an_image(avatars, tmp_path):
    from gshead.io.avatar import load_avatar, save_avatar

    lifted, static = avatars["lifted"][1], avatars["static"][1]
    assert lifted.background is None and static.background is not None
    assert static.background.shape == (1, static.static.channels, 128, 128)
    assert 0 < static.static.count < lifted.static.count  # the plane's background Gaussians are gone
    pipe = avatars["static"][0]
    save_avatar(tmp_path / "s.safetensors", static, pipe)
    loaded = load_avatar(tmp_path / "s.safetensors")
    assert torch.equal(loaded.avatar.background, static.background)
    frame = loaded.session().render(static.source)
    assert torch.allclose(frame, pipe.session(static).render(static.source))


def test_a_head_turn_leaves_the_static_background_in_place(avatars):
    """Yaw 25 degrees: the top corners (background only, far from the person) stay put with
    ``static`` and move with ``lifted``."""
    changes = {}
    for mode, (pipe, avatar, _image) in avatars.items():
        session = pipe.session(avatar)
        still = session.render(avatar.source)
        turned = avatar.source.replace(rotation=avatar.source.rotation + torch.tensor([[0.0, 0.44, 0.0]]))
        moved = session.render(turned)
        corners = torch.cat([(moved - still)[..., :24, :24], (moved - still)[..., :24, -24:]], -1)
        changes[mode] = float(corners.abs().mean())
    assert changes["static"] < 2e-3, changes  # measured 5e-4: the tails of the moving Gaussians
    assert changes["lifted"] > 20 * changes["static"], changes  # measured 0.11


@pytest.mark.parametrize("mode", ["white", "none"])
def test_reenact_background_white_or_transparent(avatars, tmp_path, mode):
    """``gshead reenact --background``: white behind the person, or alpha in a PNG grid (the
    corners, background only, are transparent; the face is opaque)."""
    import numpy as np
    from PIL import Image

    from gshead.cli import main
    from gshead.io.avatar import save_avatar

    pipe, avatar, _image = avatars["static"]
    save_avatar(tmp_path / "s.safetensors", avatar, pipe)
    out = tmp_path / f"{mode}.png"
    args = ["reenact", str(tmp_path / "s.safetensors"), "--driver", "demo", "--frames", "4", "-o", str(out),
            "--background", mode, "-q"]  # fmt: skip
    assert main(args) == 0
    with Image.open(out) as im:
        pixels = np.asarray(im)
        assert im.mode == ("RGBA" if mode == "none" else "RGB")
    tile = pixels[:128, :128]  # frame 0
    corner, face = tile[:12, :12], tile[56:72, 56:72]
    if mode == "none":
        assert corner[..., 3].max() < 10 and face[..., 3].min() > 245
    else:
        assert corner.min() > 245 and face.mean() < 230


def test_a_segmentation_without_a_person_is_refused(avatars, monkeypatch):
    """A portrait the selfie segmentation finds no person in would leave an avatar without a head:
    one-line InputError naming it, nothing built."""
    from gshead.core.errors import InputError

    pipe, _avatar, image = avatars["static"]
    monkeypatch.setattr(pipe.tracker, "segment", lambda img: torch.zeros(1, 1, *img.shape[-2:]))
    with pytest.raises(InputError, match="segmentation found no person"):
        pipe.reconstruct(image)
