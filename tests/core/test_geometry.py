"""The shared conventions (quaternions, projection, view direction, harmonic code, square crops)
and binding points to a mesh: round trip, exactness, rigid invariance."""

from __future__ import annotations

import pytest
import roma
import torch

from gshead.core.errors import ShapeError
from gshead.core.geometry import (
    _closest_on_triangles,
    bind_to_mesh,
    crop_square,
    face_frames,
    harmonic_encoding,
    posed_frames,
    posed_points,
    posed_rotations,
    project_points,
    quat_multiply,
    quat_to_rotmat,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    rotmat_to_quat,
    view_direction,
)
from gshead.core.types import Camera, CropBox
from gshead.plugins.headmodels.procedural import ProceduralHeadConfig, ProceduralHeadModel


@pytest.fixture(scope="module")
def mesh() -> tuple[torch.Tensor, torch.Tensor]:
    head = ProceduralHeadModel(ProceduralHeadConfig(subdivisions=8))
    return head.template, head.faces


def points_around(vertices: torch.Tensor, n: int, spread: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = vertices[torch.randint(0, vertices.shape[0], (n,), generator=g)]
    return centre + spread * torch.randn(n, 3, generator=g)


def brute_force_d2(points: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Squared distance [M, F] from every point to every triangle, by dense sampling (independent check)."""
    tri = vertices.double()[faces]  # [F, 3, 3]
    k = 40
    i, j = torch.meshgrid(torch.arange(k + 1), torch.arange(k + 1), indexing="ij")
    keep = (i + j) <= k
    u, v = i[keep].double() / k, j[keep].double() / k
    w = torch.stack([1 - u - v, u, v], 1)  # [S, 3] barycentric samples incl. edges and corners
    samples = torch.einsum("sk,fkc->fsc", w, tri)  # [F, S, 3]
    d2 = ((points.double()[:, None, None] - samples[None]) ** 2).sum(-1)  # [M, F, S]
    return d2.amin(-1)


def test_face_frames_are_right_handed_orthonormal_and_aligned(mesh):
    verts, faces = mesh
    origins, rot = face_frames(verts[None], faces)
    assert origins.shape == (1, faces.shape[0], 3) and rot.shape == (1, faces.shape[0], 3, 3)
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(1, faces.shape[0]), atol=1e-5)
    tri = verts[faces]
    assert torch.allclose(origins[0], tri.mean(1), atol=1e-7)  # origin = centroid
    edge = torch.nn.functional.normalize(tri[:, 1] - tri[:, 0], dim=-1)
    assert torch.allclose(rot[0, :, :, 0], edge, atol=1e-5)  # first axis along v0 -> v1
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    assert torch.allclose(rot[0, :, :, 2], torch.nn.functional.normalize(normal, dim=-1), atol=1e-5)
    # outward normals on the closed head: the normal points away from the centre
    assert ((rot[0, :, :, 2] * origins[0]).sum(-1) > 0).float().mean() > 0.95


def test_closest_point_matches_dense_sampling():
    g = torch.Generator().manual_seed(3)
    tri = torch.randn(50, 3, 3, generator=g, dtype=torch.float64)
    pts = 1.5 * torch.randn(30, 3, generator=g, dtype=torch.float64)
    d2, bary = _closest_on_triangles(pts[:, None], tri[None])  # [30, 50]
    assert (bary >= -1e-12).all() and torch.allclose(bary.sum(-1), torch.ones_like(d2))
    q = torch.einsum("mfk,fkc->mfc", bary, tri)
    assert torch.allclose(((pts[:, None] - q) ** 2).sum(-1), d2, atol=1e-12)  # barycentrics give that point
    verts, faces = tri.reshape(-1, 3), torch.arange(150).view(50, 3)
    sampled = brute_force_d2(pts, verts, faces)
    assert (d2 <= sampled + 1e-12).all()  # never worse than any sample on the triangle
    spacing = (tri - tri.roll(1, dims=1)).norm(dim=-1).amax(-1) / 40  # [50] sample spacing
    assert (sampled.sqrt() - d2.sqrt() <= spacing[None]).all()  # and as good as the dense search


def test_round_trip_and_closest_triangle(mesh):
    verts, faces = mesh
    pts = points_around(verts, 300, spread=0.01)
    b = bind_to_mesh(pts, verts, faces)
    assert b.face_index.shape == (300,) and b.barycentric.dtype == torch.float32
    assert (b.barycentric >= 0).all() and torch.allclose(b.barycentric.sum(1), torch.ones(300), atol=1e-6)
    back = posed_points(b, verts[None], faces)
    assert back.shape == (1, 300, 3)
    assert torch.allclose(back[0], pts, atol=1e-6)
    # the chosen triangle is the closest: compare with an exhaustive search over every triangle
    d2, _ = _closest_on_triangles(pts.double()[:, None], verts.double()[faces][None])  # [M, F]
    chosen = b.offset.double().norm(dim=1) ** 2  # |point - closest point on chosen triangle|^2
    assert torch.allclose(chosen, d2.amin(1), atol=1e-12)
    assert torch.equal(d2.argmin(1), b.face_index) or torch.allclose(
        d2[torch.arange(300), b.face_index], d2.amin(1), atol=1e-15
    )


def test_pruning_and_chunking_do_not_change_the_answer(mesh):
    verts, faces = mesh
    near = points_around(verts, 200, spread=0.005, seed=1)
    far = torch.tensor([[2.0, 0.0, 0.0], [0.0, -3.0, 1.0], [0.0, 0.0, 0.0], [0.01, 0.02, 0.005]])
    pts = torch.cat([near, far])
    ref = bind_to_mesh(pts, verts, faces, candidates=faces.shape[0])  # no pruning at all
    for kwargs in ({}, {"candidates": 1}, {"candidates": 4, "chunk_pairs": 5000}):
        b = bind_to_mesh(pts, verts, faces, **kwargs)
        d_ref, d_b = ref.offset.norm(dim=1), b.offset.norm(dim=1)
        assert torch.allclose(d_b, d_ref, atol=1e-7), kwargs
        assert torch.allclose(posed_points(b, verts, faces)[0], pts, atol=1e-5)


def test_points_on_the_surface_have_zero_offset(mesh):
    verts, faces = mesh
    g = torch.Generator().manual_seed(2)
    fi = torch.randint(0, faces.shape[0], (100,), generator=g)
    w = torch.distributions.Dirichlet(torch.ones(3)).sample((100,))
    pts = torch.einsum("mk,mkc->mc", w, verts[faces[fi]])
    b = bind_to_mesh(pts, verts, faces)
    assert b.offset.abs().max() < 1e-6
    assert torch.allclose(posed_points(b, verts, faces)[0], pts, atol=1e-6)


def test_rigid_motion_moves_bound_points_rigidly(mesh):
    verts, faces = mesh
    pts = points_around(verts, 150, spread=0.01, seed=4)
    b = bind_to_mesh(pts, verts, faces)
    rotvec = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]])
    rot = roma.rotvec_to_rotmat(rotvec)  # [2, 3, 3]
    shift = torch.tensor([[0.1, -0.2, 0.3], [-1.0, 0.5, 0.0]])
    moved = verts[None] @ rot.transpose(1, 2) + shift[:, None]  # [2, V, 3]
    got = posed_points(b, moved, faces)
    want = pts[None] @ rot.transpose(1, 2) + shift[:, None]
    assert torch.allclose(got, want, atol=2e-6)
    rest = posed_rotations(b, verts[None], faces)  # [1, M, 3, 3]
    now = posed_rotations(b, moved, faces)  # [2, M, 3, 3]
    eye = torch.eye(3).expand_as(now)
    assert torch.allclose(now.transpose(-1, -2) @ now, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(now), torch.ones(2, 150), atol=1e-5)
    assert torch.allclose(now @ rest.transpose(-1, -2), rot[:, None].expand_as(now), atol=1e-5)


def test_deforming_the_mesh_moves_points_with_it_and_passes_gradients(mesh):
    verts, faces = mesh
    pts = points_around(verts, 50, spread=0.003, seed=5)
    b = bind_to_mesh(pts, verts, faces)
    v = verts[None].clone().requires_grad_(True)
    stretched = v * torch.tensor([1.2, 1.0, 1.0])
    p, r = posed_frames(b, stretched, faces)
    assert not torch.allclose(p[0], pts, atol=1e-4)  # points follow the stretch
    assert torch.allclose(p, posed_points(b, stretched, faces))
    assert torch.allclose(r, posed_rotations(b, stretched, faces))
    (p.sum() + r.sum()).backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_shape_errors(mesh):
    verts, faces = mesh
    with pytest.raises(ShapeError, match="points"):
        bind_to_mesh(torch.zeros(5, 2), verts, faces)
    with pytest.raises(ShapeError, match="faces"):
        face_frames(verts[None], faces[:, :2])
    with pytest.raises(ShapeError, match="vertices"):
        face_frames(torch.zeros(1, 2, 5, 3), faces)
    with pytest.raises(ShapeError, match="faces: indices"):
        posed_points(bind_to_mesh(verts[:3], verts, faces), verts[None, :10], faces)


# -- quaternions (w, x, y, z) ---------------------------------------------------------------------
def _random_quats(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_quaternion_order_swaps_are_inverse_and_match_roma():
    q = _random_quats(20)
    xyzw = quat_wxyz_to_xyzw(q)
    assert torch.equal(xyzw[:, 3], q[:, 0]) and torch.equal(xyzw[:, :3], q[:, 1:])
    assert torch.equal(quat_xyzw_to_wxyz(xyzw), q)
    assert torch.equal(
        quat_wxyz_to_xyzw(torch.tensor([1.0, 0.0, 0.0, 0.0])), torch.tensor([0.0, 0.0, 0.0, 1.0])
    )
    assert quat_wxyz_to_xyzw(q.reshape(4, 5, 4)).shape == (4, 5, 4)  # any leading shape


def test_quat_to_rotmat_takes_any_norm_and_matches_roma():
    q = _random_quats(50, seed=1)
    rot = quat_to_rotmat(q)
    want = roma.unitquat_to_rotmat(quat_wxyz_to_xyzw(torch.nn.functional.normalize(q, dim=-1)))
    torch.testing.assert_close(rot, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(quat_to_rotmat(3.5 * q), rot, rtol=0, atol=1e-12)  # the norm does not matter
    assert torch.allclose(torch.linalg.det(rot), torch.ones(50, dtype=rot.dtype))
    assert torch.equal(quat_to_rotmat(torch.tensor([1.0, 0.0, 0.0, 0.0])), torch.eye(3))
    # (w, x, y, z) = (cos 45°, 0, 0, sin 45°): a quarter turn about z takes x to y
    quarter = torch.tensor([2**-0.5, 0.0, 0.0, 2**-0.5], dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(quarter) @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))  # fmt: skip


def test_rotmat_to_quat_inverts_quat_to_rotmat_up_to_sign():
    q = torch.nn.functional.normalize(_random_quats(50, seed=2), dim=-1)
    back = rotmat_to_quat(quat_to_rotmat(q))
    assert back.shape == q.shape
    torch.testing.assert_close((back * q).sum(-1).abs(), torch.ones(50, dtype=q.dtype))  # q and -q agree
    torch.testing.assert_close(quat_to_rotmat(back), quat_to_rotmat(q))
    assert torch.allclose(rotmat_to_quat(torch.eye(3)).abs(), torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_quat_multiply_composes_rotations():
    a, b = _random_quats(30, seed=3), _random_quats(30, seed=4)
    product = quat_multiply(a, b)
    torch.testing.assert_close(quat_to_rotmat(product), quat_to_rotmat(a) @ quat_to_rotmat(b))  # b, then a
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(quat_multiply(identity, b), b)  # broadcasts
    want = quat_xyzw_to_wxyz(roma.quat_product(quat_wxyz_to_xyzw(a), quat_wxyz_to_xyzw(b)))
    torch.testing.assert_close(product, want)


# -- cameras --------------------------------------------------------------------------------------
def test_project_points_follows_the_pinhole():
    camera = Camera.frontal(2.0, 40.0, 64, 48, batch_size=2)
    k = camera.intrinsics[0]
    points = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.2, 0.5]]]).expand(2, -1, -1)
    pixels = project_points(points, camera)
    assert pixels.shape == (2, 2, 2)
    torch.testing.assert_close(pixels[:, 0], k[:2, 2].expand(2, 2))  # the origin is on the optical axis
    # world (x, y, z) -> camera (x, -y, 2 - z): y up in the world is y down in the image
    z = 2.0 - 0.5
    want = torch.stack([k[0, 0] * 0.1 / z + k[0, 2], k[1, 1] * -0.2 / z + k[1, 2]])
    torch.testing.assert_close(pixels[0, 1], want)
    on_the_camera_plane = project_points(torch.tensor([[[0.1, 0.0, 2.0]]]), Camera.frontal(2.0, 40.0, 64, 48))
    assert torch.isfinite(on_the_camera_plane).all()  # depth clamped: no division by zero


def test_view_direction_points_from_the_origin_to_the_camera():
    camera = Camera.frontal(3.0, 30.0, 32, 32)
    torch.testing.assert_close(view_direction(camera), torch.tensor([[0.0, 0.0, 1.0]]))
    turn = torch.eye(4)
    turn[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.3, 0.0]))
    turned = Camera(camera.world_to_camera @ turn, camera.intrinsics, camera.width, camera.height)
    centre = torch.linalg.inv(turned.world_to_camera)[:, :3, 3]  # the camera sits on its optical axis here
    torch.testing.assert_close(view_direction(turned), torch.nn.functional.normalize(centre, dim=-1))
    assert torch.allclose(view_direction(turned).norm(dim=-1), torch.ones(1))


# -- harmonic code --------------------------------------------------------------------------------
def test_harmonic_encoding_layout():
    x = torch.tensor([[0.3, -1.2, 2.0]])
    code = harmonic_encoding(x, 4)
    assert code.shape == (1, 3 * (1 + 2 * 4))
    torch.testing.assert_close(code[:, :3], x)
    for k in range(4):
        torch.testing.assert_close(code[:, 3 + 6 * k : 6 + 6 * k], torch.sin(x * 2**k))
        torch.testing.assert_close(code[:, 6 + 6 * k : 9 + 6 * k], torch.cos(x * 2**k))
    assert torch.equal(harmonic_encoding(x, 0), x)
    with pytest.raises(TypeError):
        harmonic_encoding(x)  # type: ignore[call-arg]  # the number of frequencies is always explicit


# -- square crops ---------------------------------------------------------------------------------
def test_crop_square_crops_pads_black_and_resizes():
    image = torch.arange(100.0).view(1, 1, 10, 10) / 100
    inside = crop_square(image, CropBox(2, 3, 4), 4)
    assert torch.equal(inside, image[:, :, 3:7, 2:6])
    padded = crop_square(torch.ones(1, 3, 10, 10), CropBox(-5, 0, 10), 10)
    assert torch.equal(padded[..., :5], torch.zeros(1, 3, 10, 5))  # black past the left border
    assert torch.equal(padded[..., 5:], torch.ones(1, 3, 10, 5))
    resized = crop_square(torch.rand(2, 3, 10, 10), CropBox(0, 0, 10), 5)
    assert resized.shape == (2, 3, 5, 5) and resized.min() >= 0 and resized.max() <= 1
    with pytest.raises(ShapeError, match="image batch"):
        crop_square(torch.zeros(3, 10, 10), CropBox(0, 0, 4), 4)
    with pytest.raises(ShapeError, match="positive"):
        crop_square(image, CropBox(0, 0, 4), 0)
