"""The synthetic head generator: determinism, variation, visibility, shading, placement on the mesh."""

from __future__ import annotations

import pytest
import torch

from gshead.core.geometry import posed_points, posed_rotations, rotmat_to_quat
from gshead.data import write_synthetic_dataset
from gshead.data.synthetic import Lighting, SyntheticHeads, sample_lighting

SIZE = 48


@pytest.fixture(scope="module")
def heads() -> SyntheticHeads:
    return SyntheticHeads(seed=0, gaussians_per_face=2)


def _light(direction=(0.0, 0.0, 1.0), ambient=0.4) -> Lighting:
    d = torch.nn.functional.normalize(torch.tensor(direction), dim=0)
    return Lighting(
        direction=d, ambient=ambient, colour=torch.ones(3), background=torch.tensor([0.1, 0.5, 0.9])
    )


def _foreground(image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """[H, W] bool: pixels of a [3, H, W] render that are not the background colour."""
    return (image - background[:, None, None]).abs().amax(0) > 0.02


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_the_same_bytes_and_other_seeds_differ(tmp_path):
    kwargs = {"identities": 3, "frames": 2, "size": 24, "progress": False, "gaussians_per_face": 1}
    write_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    write_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert any(a.get(k) != c.get(k) for k in a if k.endswith(".safetensors"))


def test_an_identity_does_not_depend_on_what_else_was_made(heads):
    other = SyntheticHeads(seed=0, gaussians_per_face=2)
    other.identity(0)  # make something else first
    p, q = heads.identity(3), other.identity(3)
    assert torch.equal(p.identity, q.identity) and torch.equal(p.albedo, q.albedo)
    frames_p, params_p, _ = heads.clip(p, 1, 2, 24)
    frames_q, params_q, _ = other.clip(q, 1, 2, 24)
    assert torch.equal(frames_p, frames_q) and torch.equal(params_p.expression, params_q.expression)
    assert not torch.equal(heads.identity(4).albedo, p.albedo)


def test_clip_shapes_and_parameter_ranges(heads):
    person = heads.identity(0)
    frames, params, camera = heads.clip(person, 0, 3, SIZE)
    assert frames.dtype == torch.uint8 and frames.shape == (3, 3, SIZE, SIZE)
    assert params.batch_size == 3 and camera.batch_size == 3 and camera.width == SIZE
    assert torch.equal(params.identity, person.identity.expand(3, -1))
    assert params.expression.min() >= 0 and params.expression.max() <= 1
    assert params.rotation.abs().max() < 0.6  # within the documented ~±30 degrees of yaw


def test_head_is_visible_and_centred(heads):
    light = _light()
    for i in range(3):
        person = heads.identity(i)
        image = heads.render(person, heads.model.neutral(1), SIZE, light)[0]
        fg = _foreground(image, light.background)
        coverage = fg.float().mean().item()
        assert 0.15 < coverage < 0.7, coverage
        _ys, xs = torch.nonzero(fg, as_tuple=True)
        assert abs(xs.float().mean().item() - SIZE / 2) < SIZE * 0.1  # frontal: centred horizontally
        assert not fg[0].any() and not fg[:, 0].any()  # the whole head fits in the frame


def test_expressions_change_the_face(heads):
    model = heads.model
    person = heads.identity(1)
    light = _light()
    neutral = model.neutral(1)
    expression = neutral.expression.clone()
    for name in ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight"):
        expression[0, model.expression_names.index(name)] = 1.0
    talking = neutral.replace(expression=expression, jaw=torch.tensor([[0.3, 0.0, 0.0]]))
    images = heads.render(person, HeadParamsCat(neutral, talking), SIZE, light)
    again = heads.render(person, neutral, SIZE, light)
    torch.testing.assert_close(images[0], again[0], atol=1e-5, rtol=0)  # batch size aside, the same
    fg = _foreground(images[0], light.background) | _foreground(images[1], light.background)
    diff = (images[0] - images[1]).abs().amax(0)[fg]
    # The lower half of the face moves: a clear fraction of the head's pixels changes.
    assert (diff > 0.05).float().mean().item() > 0.05, (diff > 0.05).float().mean().item()


def HeadParamsCat(a, b):
    return type(a)(**{k: torch.cat([a.tensors()[k], b.tensors()[k]]) for k in a.tensors()})


def test_lambert_light_from_the_side_brightens_that_side(heads):
    person = heads.identity(2)
    neutral = heads.model.neutral(1)
    # World +x is image right (the camera's x axis is world x).
    right = heads.render(person, neutral, SIZE, _light((1.0, 0.0, 0.3), ambient=0.2))[0]
    left = heads.render(person, neutral, SIZE, _light((-1.0, 0.0, 0.3), ambient=0.2))[0]
    fg = _foreground(right, torch.tensor([0.1, 0.5, 0.9]))
    half = SIZE // 2
    lum_r, lum_l = right.mean(0), left.mean(0)
    mask_r, mask_l = fg.clone(), fg.clone()
    mask_r[:, :half] = False
    mask_l[:, half:] = False
    assert lum_r[mask_r].mean() > lum_r[mask_l].mean() + 0.05
    assert lum_l[mask_l].mean() > lum_l[mask_r].mean() + 0.05


def test_gaussians_ride_on_the_mesh_like_posed_points(heads):
    person = heads.identity(0)
    g = torch.Generator().manual_seed(0)
    params = heads.model.neutral(2).replace(
        expression=torch.rand(2, len(heads.model.expression_names), generator=g),
        jaw=torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        rotation=torch.tensor([[0.0, 0.4, 0.0], [0.1, 0.0, 0.0]]),
    )
    gaussians = heads.posed_gaussians(person, params, sample_lighting(g))
    verts = heads.model(params.replace(identity=person.identity.expand(2, -1))).vertices
    expected = posed_points(person.binding, verts, heads.model.faces)
    torch.testing.assert_close(gaussians.means, expected, atol=1e-6, rtol=0)
    rot = rotmat_to_quat(posed_rotations(person.binding, verts, heads.model.faces))
    same = (gaussians.quats * rot).sum(-1).abs()  # q and -q are the same rotation
    assert same.min() > 1 - 1e-5
    assert gaussians.features.min() >= 0 and gaussians.features.max() <= 1


def test_layout_falls_back_to_the_bounding_box_without_named_landmarks(heads):
    """Head models without the procedural landmark names (anny, FLAME) still get a face."""
    from types import SimpleNamespace

    from gshead.data.synthetic import albedo, face_layout

    verts = heads.model.template.float()
    named = face_layout(heads.model, verts, heads.model(heads.model.neutral(1)).landmarks[0].float())
    plain = face_layout(SimpleNamespace(landmark_names=()), verts, torch.zeros(0, 3))
    assert torch.allclose(plain.eyes[0, :2] * torch.tensor([-1.0, 1.0]), plain.eyes[1, :2])  # mirrored
    assert plain.eyes[0, 1] > plain.mouth[1] and plain.brows[0, 1] > plain.eyes[0, 1]  # brows, eyes, mouth
    assert (plain.eyes[:, :2] - named.eyes[:, :2]).abs().max() < 0.02  # near the real eyes on this head
    colours = albedo(verts, plain, torch.Generator().manual_seed(0))
    assert colours.shape == verts.shape and 0 <= colours.min() and colours.max() <= 1


def test_procedural_identities_are_still_drawn_with_the_default_scale(heads):
    """Models without ``sample_identity`` keep N(0, 0.8²) coefficients (the procedural data is unchanged)."""
    from gshead.data.synthetic import DEFAULT_IDENTITY_SCALE, _gen

    assert not hasattr(heads.model, "sample_identity")
    expected = torch.randn(1, heads.identity_dim, generator=_gen(0, 1, 5)) * DEFAULT_IDENTITY_SCALE
    assert torch.equal(heads.identity(5).identity, expected)
    scaled = SyntheticHeads(seed=0, gaussians_per_face=1, identity_scale=0.1)
    assert torch.allclose(scaled.identity(5).identity, expected / 8)


# ------------------------------------------------------------------ anny-head (the default pipeline's)
ANNY_IDS = range(6)


@pytest.fixture(scope="module")
def anny_heads() -> SyntheticHeads:
    pytest.importorskip("anny")
    return SyntheticHeads(seed=0, head_model="anny-head")  # 3 Gaussians per face: the eyes are small


def _project(heads: SyntheticHeads, points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates [N, 2] (x right, y down) of head-space points [N, 3], frontal camera."""
    camera = heads.camera(size)
    w, k = camera.world_to_camera[0], camera.intrinsics[0]
    uvw = (points @ w[:3, :3].T + w[:3, 3]) @ k.T
    return uvw[:, :2] / uvw[:, 2:]


def test_anny_identities_are_plausible_adults(anny_heads):
    """Sampled by the model (not N(0, 0.8²) over 284 columns): phenotypes in range, local changes
    exact (non-negative), shapes varied but within a few per cent of the head's size."""
    from gshead.plugins.headmodels.anny_head import PHENOTYPE_RANGES

    model = anny_heads.model
    template = model.template
    height = float(template[:, 1].max() - template[:, 1].min())
    shifts = []
    for i in ANNY_IDS:
        ident = anny_heads.identity(i).identity[0]
        for name, (lo, hi) in PHENOTYPE_RANGES.items():
            assert lo <= float(ident[model.identity_names.index(name)]) <= hi
        assert ident[len(PHENOTYPE_RANGES) :].min() >= 0
        verts = model(model.neutral(1).replace(identity=ident[None])).vertices[0]
        shifts.append(float((verts - template).norm(dim=-1).mean()))
    assert all(0.002 < s < 0.06 * height for s in shifts), (shifts, height)
    assert len({round(s, 5) for s in shifts}) == len(shifts)  # all different


def test_anny_identities_are_upright_and_framed(anny_heads):
    """Eyes above the nose above the mouth above the chin in the image, left eye on the image right,
    the face centred and the crown inside the frame."""
    size = 64
    model = anny_heads.model
    light = _light()
    for i in ANNY_IDS:
        person = anny_heads.identity(i)
        mesh = model(model.neutral(1).replace(identity=person.identity))
        lm = dict(zip(model.landmark_names, _project(anny_heads, mesh.landmarks[0].float(), size)))
        eye_left = (lm["eye_left_upper_lid"] + lm["eye_left_lower_lid"]) / 2
        eye_right = (lm["eye_right_upper_lid"] + lm["eye_right_lower_lid"]) / 2
        eyes_y = float(eye_left[1] + eye_right[1]) / 2
        assert eyes_y < lm["nose_tip"][1] < lm["upper_lip"][1] < lm["lower_lip"][1] < lm["chin"][1], i
        assert eye_left[0] > size / 2 > eye_right[0]  # subject's left (+x) is on the image's right
        assert abs(float(lm["nose_tip"][0]) - size / 2) < size * 0.05
        assert 0.1 * size < eyes_y < 0.55 * size and lm["chin"][1] < 0.95 * size
        image = anny_heads.render(person, model.neutral(1), size, light)[0]
        fg = _foreground(image, light.background)
        assert 0.2 < fg.float().mean() < 0.75
        assert not fg[:, 0].any() and not fg[:, -1].any()  # the ears fit
        # Same camera as the frontal tracker's (what reconstruction assumes): the crown may touch
        # the top edge, as in a face crop of a real portrait, but the forehead is inside.
        assert fg[0].sum() < 0.8 * fg.sum(1).max()  # at most the rounded crown is cut (and the neck)


def test_anny_features_are_painted_where_the_landmarks_are(anny_heads):
    """Lips at the projected mouth (redder than the cheek), eyes at the projected eye centres between
    the lids (not skin-coloured): the feature layout uses anny-head's own landmark names."""
    from gshead.data.synthetic import face_layout

    size = 128
    model = anny_heads.model
    light = _light(ambient=1.0)
    for i in ANNY_IDS:
        person = anny_heads.identity(i)
        mesh = model(model.neutral(1).replace(identity=person.identity))
        layout = face_layout(model, mesh.vertices[0].float(), mesh.landmarks[0].float())
        lm = mesh.landmarks[0].float()
        mouth_lm = (lm[model.landmark_index("upper_lip")] + lm[model.landmark_index("lower_lip")]) / 2
        assert (layout.mouth - mouth_lm).norm() < 1e-6
        image = anny_heads.render(person, model.neutral(1), size, light)[0]
        mouth, eye_l, eye_r, nose = (
            _project(
                anny_heads,
                torch.stack([mouth_lm, layout.eyes[0], layout.eyes[1], lm[model.landmark_index("nose_tip")]]),
                size,
            )
            .round()
            .long()
        )
        # the cheek: below the eye, beside the nose
        cheek = torch.stack([(mouth[0] + eye_l[0]) // 2 + 3, (mouth[1] + nose[1]) // 2])

        def pixel(p, r=1, image=image):
            return image[:, p[1] - r : p[1] + r + 1, p[0] - r : p[0] + r + 1].mean((1, 2))

        def redness(c):
            return float(c[0] - c[1]) / max(float(c[0]), 1e-3)

        assert redness(pixel(mouth)) > redness(pixel(cheek)) + 0.08, i
        skin = pixel(cheek)
        for eye in (eye_l, eye_r):  # sclera, iris or pupil within a pixel of the eye centre, not skin
            window = image[:, eye[1] - 1 : eye[1] + 2, eye[0] - 1 : eye[0] + 2]
            assert (window - skin[:, None, None]).abs().max() > 0.1, i
