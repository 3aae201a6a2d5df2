"""The appearance prior (``gshead.plugins._shared.appearance``): what colour the surface Gaussians
read where the source portrait does not show them (issue #17 items 3 and 4).

Small synthetic meshes seen by ``Camera.frontal`` (on +z, looking at the origin) check the rules
one by one; anny-head checks that its mouth interior is found and comes out darker than the lips;
the separated pipeline checks the ``appearance_prior`` switch (off: the old colours exactly).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gshead.core.geometry import posed_frames, project_points
from gshead.core.types import Camera, MeshBinding
from gshead.plugins._shared.appearance import (
    PriorTables,
    anchor_colours,
    fill_vertex_colours,
    mesh_edges,
    mirror_vertices,
    prior_tables,
)
from gshead.plugins._shared.surface import sample_at, seeded_anchors

SIZE = 64
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def _grid(n: int, x0: float, x1: float, y0: float, y1: float, z: float, flip: bool = False):
    """An n x n vertex grid in the plane ``z`` (vertices [n*n, 3], faces [2(n-1)^2, 3]) whose
    triangles face +z (the camera), or -z with ``flip``."""
    xs, ys = torch.linspace(x0, x1, n), torch.linspace(y0, y1, n)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    vertices = torch.stack([x.flatten(), y.flatten(), torch.full((n * n,), z)], -1)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, d], [a, d, c]]
    faces = torch.tensor(faces)
    return vertices, (faces.flip(1) if flip else faces)


def _scene(parts):
    vertices, faces, offset = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + offset)
        offset += v.shape[0]
    return torch.cat(vertices), torch.cat(faces)


def _camera() -> Camera:
    return Camera.frontal(2.0, 40.0, SIZE, SIZE)


def _inputs(vertices: torch.Tensor, faces: torch.Tensor, image: torch.Tensor, camera: Camera):
    """What ``surface_gaussians`` hands ``anchor_colours``, for every triangle's centroid."""
    face_index, bary = seeded_anchors(torch.arange(faces.shape[0]), 1)
    verts = vertices[None]
    anchors = MeshBinding(face_index, bary, torch.zeros_like(bary))
    seen, rot = posed_frames(anchors, verts, faces)
    centre = torch.linalg.inv(camera.world_to_camera)[:, None, :3, 3]
    facing = (F.normalize(centre - seen, dim=-1) * rot[..., 2]).sum(-1)
    sampled = sample_at(image, project_points(seen, camera), SIZE, SIZE)
    vertex_rgb = sample_at(image, project_points(verts, camera), SIZE, SIZE)
    return sampled, seen, facing, face_index, bary, verts, vertex_rgb


def _tables(vertices: torch.Tensor, faces: torch.Tensor) -> PriorTables:
    return prior_tables(vertices, faces, torch.zeros(faces.shape[0]))  # no mouth


def _painted(vertices_where_red: torch.Tensor, camera: Camera) -> torch.Tensor:
    """A blue image, red inside the projected bounding box of ``vertices_where_red`` [N, 3] less a
    2-pixel margin (so what lies just outside it, seen at the contour, samples blue)."""
    image = torch.tensor(BLUE).view(1, 3, 1, 1).expand(1, 3, SIZE, SIZE).clone()
    uv = project_points(vertices_where_red[None], camera)[0]
    (u0, v0), (u1, v1) = (uv.amin(0).floor().long() + 2).tolist(), (uv.amax(0).ceil().long() - 2).tolist()
    image[:, :, v0:v1, u0:u1] = torch.tensor(RED).view(1, 3, 1, 1)
    return image


@pytest.fixture(scope="module")
def occluded():
    """A small red square (front, z = 0.3) over the middle of a large blue-lit grid (back, z = 0)."""
    front = _grid(25, -0.12, 0.12, -0.12, 0.12, 0.3)  # dense: the depth buffer splats its samples
    back = _grid(33, -0.5, 0.5, -0.5, 0.5, 0.0)
    vertices, faces = _scene([front, back])
    camera = _camera()
    image = _painted(front[0], camera)
    inputs = _inputs(vertices, faces, image, camera)
    colour, visible = anchor_colours(*inputs[:6], inputs[6], faces, camera, _tables(vertices, faces))
    n_front = front[1].shape[0]
    return inputs, colour, visible, n_front, vertices, faces


def test_an_anchor_hidden_behind_a_visible_one_gets_the_prior_not_the_front_colour(occluded):
    (sampled, seen, *_), colour, visible, n_front, _, _ = occluded
    back = torch.arange(n_front, colour.shape[1])
    behind = back[(seen[0, back, :2].abs() < 0.08).all(-1)]  # back anchors right behind the square
    assert behind.numel() > 0 and not visible[0, behind].any()
    red = torch.tensor(RED)
    assert torch.allclose(sampled[0, behind], red.expand(behind.numel(), 3), atol=1e-4)  # the front's colour
    # The prior spreads the back grid's own visible colour (blue) over its hidden part.
    assert ((colour[0, behind] - torch.tensor(BLUE)).abs().amax(-1) < 0.15).all()
    assert ((colour[0, behind] - red).abs().amax(-1) > 0.5).all()


def test_a_visible_anchor_keeps_its_sampled_colour_exactly(occluded):
    (sampled, _seen, facing, *_), colour, visible, n_front, _, _ = occluded
    assert visible[0, :n_front].all() and (facing[0, :n_front] > 0.9).all()
    assert visible[0].sum() > n_front  # the back grid's rim is seen too
    assert torch.equal(colour[visible], sampled[visible])


def test_a_back_facing_anchor_takes_its_visible_mirror_anchors_colour():
    # A visible grid left of x = 0 and its mirror image right of it, turned away from the camera
    # (the far side of a turned head); the image is a gradient on the left, red on the right.
    left = _grid(9, -0.5, -0.1, -0.2, 0.2, 0.0)
    right = (left[0] * torch.tensor([-1.0, 1.0, 1.0]), left[1])  # mirrored, same order: faces away
    vertices, faces = _scene([left, right])
    camera = _camera()
    u = torch.linspace(0, 1, SIZE)
    image = torch.stack([u.expand(SIZE, SIZE), 1 - u.expand(SIZE, SIZE), torch.full((SIZE, SIZE), 0.5)])[None]
    image[..., SIZE // 2 :] = torch.tensor(RED).view(1, 3, 1, 1)
    tables = _tables(vertices, faces)
    n = left[0].shape[0]
    assert torch.equal(tables.mirror, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))
    inputs = _inputs(vertices, faces, image, camera)
    colour, visible = anchor_colours(*inputs[:6], inputs[6], faces, camera, tables)
    m = left[1].shape[0]
    assert visible[0, :m].all() and not visible[0, m:].any()
    vertex_rgb = inputs[6][0]
    # Each far-side anchor (a centroid) is the mean of its corners' mirror vertices' colours.
    mirrored = vertex_rgb[tables.mirror[faces[m:]]].mean(1)  # [m, 3]
    assert torch.allclose(colour[0, m:], mirrored, atol=1e-5)
    assert ((colour[0, m:] - torch.tensor(RED)).abs().amax(-1) > 0.3).all()


def test_the_mirror_rule_comes_before_the_nearest_visible_colour():
    # A strip of 5 vertices on y = 0: x = -2..2. Vertex 3 (x = 1) is hidden; its neighbours are
    # visible and green, its mirror (vertex 1, x = -1) is visible and purple.
    vertices = torch.tensor([[x, 0.0, 0.0] for x in (-2.0, -1.0, 0.0, 1.0, 2.0)]) * 0.1
    faces = torch.tensor([[0, 1, 2], [2, 3, 4]])
    tables = PriorTables(
        mouth=torch.zeros(5, dtype=torch.bool), tongue=torch.zeros(5, dtype=torch.bool),
        veiled=torch.zeros(5, dtype=torch.bool), lips=torch.zeros(5, dtype=torch.bool),
        mirror=mirror_vertices(vertices), edges=mesh_edges(faces, 5),
    )  # fmt: skip
    assert tables.mirror.tolist() == [4, 3, 2, 1, 0]
    green, purple = torch.tensor([0.1, 0.8, 0.1]), torch.tensor([0.6, 0.1, 0.7])
    sampled = torch.stack([green, purple, green, torch.tensor([1.0, 0.0, 0.0]), green])[None]
    visible = torch.tensor([[True, True, True, False, True]])
    out = fill_vertex_colours(sampled, visible, tables)
    assert torch.equal(out[0, 3], purple) and torch.equal(out[0, visible[0]], sampled[0, visible[0]])
    # Its mirror hidden too: the mean of its visible neighbours (2 and 4) instead.
    out = fill_vertex_colours(sampled, torch.tensor([[True, False, True, False, True]]), tables)
    assert torch.allclose(out[0, 3], green) and torch.allclose(out[0, 1], green)


def test_anny_heads_mouth_interior_is_found_and_darker_than_its_lips():
    pytest.importorskip("anny", reason="the anny-head model")
    from gshead.plugins._shared.surface import module_prior
    from gshead.plugins.headmodels.anny_head import AnnyHeadConfig, AnnyHeadModel

    hm = AnnyHeadModel(AnnyHeadConfig())
    tables = module_prior(torch.nn.Module(), hm)
    t = hm.template
    mouth, lips = tables.mouth, tables.lips
    assert mouth.sum() > 50 and lips.sum() > 20 and tables.tongue.any()
    assert not (tables.mouth & tables.veiled).any() and (tables.tongue <= tables.mouth).all()
    names = list(hm.landmark_names)
    marks = hm(hm.neutral(1)).landmarks[0]  # [L, 3] on the neutral template
    upper, lower, chin = (marks[names.index(n)] for n in ("upper_lip", "lower_lip", "chin"))
    inner = t[mouth]
    assert (inner[:, 0].abs() < 0.05).all(), "inside the lip corners, not the cheeks' inner walls"
    assert (inner[:, 1] > chin[1]).all(), "above the chin, not under it"
    assert (inner[:, 2] < torch.minimum(upper[2], lower[2])).all(), "behind the lips"
    # A synthetic portrait of a closed mouth: lip-coloured everywhere, the interior hidden.
    lip = torch.tensor([0.75, 0.35, 0.35])
    sampled = lip.expand(1, t.shape[0], 3)
    out = fill_vertex_colours(sampled, (~mouth)[None], tables)[0]
    luminance = out @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert (luminance[mouth] < 0.6 * float(lip @ torch.tensor([0.2126, 0.7152, 0.0722]))).all()
    assert (out[mouth, 0] > out[mouth, 1]).all(), "a dark red"
    assert luminance[tables.tongue].mean() > luminance[mouth & ~tables.tongue].mean(), "the tongue is lighter"
    assert torch.equal(out[~mouth], sampled[0, ~mouth])


# ------------------------------------------------------------------ the switch, in the pipeline
def test_the_switch_off_reproduces_the_sampled_colours_exactly():
    from gshead.core.pipeline import Pipeline
    from gshead.testing import sample_image, tiny_pipeline

    head = {"name": "procedural", "subdivisions": 4}
    colours = {}
    for on in (True, False):
        pipe = Pipeline.from_dict(
            tiny_pipeline(
                headmodel=head,
                lifter={"name": "mesh-anchored", "anchors_per_face": 1, "appearance_prior": on},
                driver={"name": "light-control", "anchors_per_face": 1, "appearance_prior": on},
            )
        )
        image = sample_image(pipe.config.source_size)
        with torch.no_grad():
            avatar = pipe.reconstruct(image)
        colours[on] = (avatar.static.features[..., :3], avatar.rig.dynamic.features[..., :3])
        if not on:  # the old rule: every anchor reads the pixel it projects to
            hm, lifter = pipe.head_model, pipe.lifter
            anchors = MeshBinding(lifter.face_index, lifter.barycentric, torch.zeros(lifter.count, 3))
            view = avatar.camera.moved(avatar.source.pose_matrix())
            seen, _ = posed_frames(anchors, hm(avatar.source).vertices, hm.faces)
            rgb = sample_at(image, project_points(seen, view), view.width, view.height)
            assert torch.allclose(colours[on][0], rgb.clamp(0, 1), atol=1e-5)
            assert "_prior_fields" not in lifter.__dict__ and "_prior_fields" not in pipe.driver.__dict__
    for part in (0, 1):  # the far side of the sphere differs, the near side does not
        differs = (colours[True][part] - colours[False][part]).abs().amax(-1) > 1e-6
        assert differs.any() and not differs.all()


def test_the_shipped_weights_load_with_the_prior_on_or_off_and_other_fields_still_count():
    from gshead.core.config import default_pipeline_path, read_yaml
    from gshead.core.errors import AvatarFileError
    from gshead.core.pipeline import Pipeline
    from gshead.io.weights import load_pipeline_weights

    data = read_yaml(default_pipeline_path(), "pipeline config")
    for on in (False, True):
        config = {**data, "lifter": {**data["lifter"], "appearance_prior": on}}
        config["driver"] = {**data["driver"], "appearance_prior": on}
        load_pipeline_weights(Pipeline.from_dict(config), "builtin:default")  # weights_neutral
    changed = {**data, "lifter": {**data["lifter"], "image_layer_behind": 0.2}}
    with pytest.raises(AvatarFileError, match="image_layer_behind"):
        load_pipeline_weights(Pipeline.from_dict(changed), "builtin:default")


def test_the_eye_region_keeps_its_sampled_colours_with_the_prior_on():
    """light-control skips the prior on the eyes' triangles (eyeballs and lids): there it made shut
    lids show an iris-coloured patch. Its other hidden anchors still take the prior."""
    from gshead.core.pipeline import Pipeline
    from gshead.testing import sample_image, tiny_pipeline

    pytest.importorskip("anny", reason="the anny-head model (its eyelids fold away when open)")
    colours = {}
    for on in (True, False):
        pipe = Pipeline.from_dict(
            tiny_pipeline(
                headmodel={"name": "anny-head"},
                lifter={"name": "mesh-anchored", "anchors_per_face": 1},
                driver={"name": "light-control", "anchors_per_face": 1, "appearance_prior": on},
            )
        )
        with torch.no_grad():
            avatar = pipe.reconstruct(sample_image(pipe.config.source_size))
        colours[on] = avatar.rig.dynamic.features[0, :, :3]
        eyes = pipe.driver.regions(avatar) == 0  # [M]
    assert eyes.any() and not eyes.all()
    assert torch.equal(colours[True][eyes], colours[False][eyes])
    assert not torch.allclose(colours[True][~eyes], colours[False][~eyes])
