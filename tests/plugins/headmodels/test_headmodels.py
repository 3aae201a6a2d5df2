"""LinearHeadModel maths (against an independent numpy LBS) and the procedural head model."""

from __future__ import annotations

import numpy as np
import pluggy
import pydantic
import pytest
import torch

from gshead.core import hookspecs
from gshead.core.components import BuildContext, HeadModel
from gshead.core.errors import ShapeError
from gshead.core.registry import Register
from gshead.core.types import HeadMesh, HeadParams
from gshead.plugins.headmodels import procedural
from gshead.plugins.headmodels._linear import HeadModelError, LinearHeadModel
from gshead.plugins.headmodels.procedural import (
    PROCEDURAL_EXPRESSIONS,
    ProceduralHeadConfig,
    ProceduralHeadModel,
)

PARENTS = (-1, 0, 1, 2, 2)  # a chain: the eyes hang off the jaw, so rotations compose


def random_buffers(seed: int = 0, v: int = 40, n_id: int = 4, n_expr: int = 3, pose: bool = True) -> dict:
    """Buffers of a small random LinearHeadModel (float64 numpy, for the reference too)."""
    rng = np.random.default_rng(seed)
    j = len(PARENTS)
    faces = np.stack([rng.permutation(v)[:3] for _ in range(60)])
    skin = np.exp(3.0 * rng.normal(size=(v, j)))
    reg = rng.uniform(size=(j, v)) ** 4
    return dict(
        template=rng.normal(size=(v, 3)),
        faces=faces,
        identity_basis=0.3 * rng.normal(size=(v, 3, n_id)),
        expression_basis=0.3 * rng.normal(size=(v, 3, n_expr)),
        expression_names=tuple(f"e{i}" for i in range(n_expr)),
        joint_regressor=reg / reg.sum(1, keepdims=True),
        parents=PARENTS,
        skin_weights=skin / skin.sum(1, keepdims=True),
        joint_names=("root", "neck", "jaw", "eye_left", "eye_right"),
        jaw_joint=2,
        eye_joints=(3, 4),
        landmark_faces=np.array([0, 5, 7, 59]),
        landmark_barycentric=rng.dirichlet(np.ones(3), size=4),
        pose_basis=0.2 * rng.normal(size=(v, 3, 9 * (j - 1))) if pose else None,
    )


def random_params(n_id: int, n_expr: int, batch: int = 3, seed: int = 1, scale: float = 0.5) -> HeadParams:
    g = torch.Generator().manual_seed(seed)
    r = lambda n: scale * torch.randn(batch, n, generator=g)  # noqa: E731
    return HeadParams(r(n_id), r(n_expr), r(3), r(6), r(3), r(3))


def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(rotvec)
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def reference_lbs(b: dict, params: HeadParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textbook LBS with 4x4 matrices, one vertex and one joint at a time (float64)."""
    outs, joints_out, lmks = [], [], []
    for n in range(params.batch_size):
        ident = params.identity[n].double().numpy()
        expr = params.expression[n].double().numpy()
        shaped = b["template"] + b["identity_basis"] @ ident + b["expression_basis"] @ expr
        rest = b["joint_regressor"] @ shaped
        nj = len(b["parents"])
        local = [np.eye(3) for _ in range(nj)]
        local[b["jaw_joint"]] = rodrigues(params.jaw[n].double().numpy())
        local[b["eye_joints"][0]] = rodrigues(params.eyes[n, :3].double().numpy())
        local[b["eye_joints"][1]] = rodrigues(params.eyes[n, 3:].double().numpy())
        posed = shaped.copy()
        if b["pose_basis"] is not None:
            feat = np.concatenate([(local[k] - np.eye(3)).reshape(-1) for k in range(1, nj)])
            posed = posed + b["pose_basis"] @ feat
        world = []
        for k in range(nj):
            t = np.eye(4)
            t[:3, :3] = local[k]
            parent = b["parents"][k]
            t[:3, 3] = rest[k] - (rest[parent] if parent >= 0 else 0.0)
            world.append(t if parent < 0 else world[parent] @ t)
        skinning = []
        for k in range(nj):
            unrest = np.eye(4)
            unrest[:3, 3] = -rest[k]
            skinning.append(world[k] @ unrest)
        verts = np.zeros_like(posed)
        for i in range(posed.shape[0]):
            m = sum(b["skin_weights"][i, k] * skinning[k] for k in range(nj))
            verts[i] = (m @ np.append(posed[i], 1.0))[:3]
        tri = verts[b["faces"][b["landmark_faces"]]]  # [L, 3, 3]
        outs.append(verts)
        joints_out.append(np.stack([w[:3, 3] for w in world]))
        lmks.append((b["landmark_barycentric"][:, :, None] * tri).sum(1))
    return np.stack(outs), np.stack(joints_out), np.stack(lmks)


@pytest.fixture(scope="module")
def head() -> ProceduralHeadModel:
    return ProceduralHeadModel(ProceduralHeadConfig(), BuildContext(feature_channels=8))


@pytest.fixture(scope="module")
def head_plain() -> ProceduralHeadModel:
    return ProceduralHeadModel(ProceduralHeadConfig(pose_correctives=False))


# ------------------------------------------------------------------ LinearHeadModel maths
@pytest.mark.parametrize("pose", [True, False])
def test_lbs_matches_independent_numpy_reference(pose):
    b = random_buffers(pose=pose)
    model = LinearHeadModel(**b)
    params = random_params(4, 3, batch=3)
    out = model(params)
    verts, joints, lmks = reference_lbs(b, params)
    assert out.vertices.dtype == torch.float32
    np.testing.assert_allclose(out.vertices.double().numpy(), verts, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.joints.double().numpy(), joints, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.landmarks.double().numpy(), lmks, atol=1e-5, rtol=0)
    # the rotations really mattered (not a trivially passing comparison)
    assert (out.vertices - model.blendshapes(params)).abs().max() > 0.05


def test_zero_params_give_template_exactly():
    model = LinearHeadModel(**random_buffers())
    out = model(model.neutral(2))
    assert torch.equal(out.vertices, model.template.expand(2, -1, -1))
    assert isinstance(out, HeadMesh) and out.landmarks.shape == (2, 4, 3) and out.joints.shape == (2, 5, 3)


def test_procedural_zero_params_give_template_exactly(head):
    out = head(head.neutral(3))
    assert torch.equal(out.vertices, head.template.expand(3, -1, -1))


def test_zero_rotations_leave_blendshapes_unchanged():
    model = LinearHeadModel(**random_buffers())
    p = random_params(4, 3)
    p = p.replace(jaw=torch.zeros(3, 3), eyes=torch.zeros(3, 6))
    assert torch.equal(model(p).vertices, model.blendshapes(p))
    shaped = model.blendshapes(p)
    assert torch.equal(model(p).joints, torch.einsum("jv,bvc->bjc", model.joint_regressor, shaped))


def test_global_pose_is_not_applied():
    model = LinearHeadModel(**random_buffers())
    p = random_params(4, 3)
    moved = p.replace(rotation=torch.randn(3, 3), translation=torch.randn(3, 3))
    assert torch.equal(model(p).vertices, model(moved).vertices)


def test_eye_params_ignored_without_eye_joints():
    b = random_buffers()
    b["eye_joints"] = None
    model = LinearHeadModel(**b)
    p = random_params(4, 3)
    assert torch.equal(model(p).vertices, model(p.replace(eyes=torch.zeros(3, 6))).vertices)
    assert not torch.equal(model(p).vertices, model(p.replace(jaw=torch.zeros(3, 3))).vertices)


def test_gradients_flow_to_every_used_parameter(head):
    p = random_params(head.identity_dim, head.expression_dim, batch=2, scale=0.2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.tensors().items()}
    out = head(HeadParams(**leaves))
    (out.vertices.square().sum() + out.landmarks.sum() + out.joints.sum()).backward()
    for k in ("identity", "expression", "jaw", "eyes"):
        g = leaves[k].grad
        assert g is not None and torch.isfinite(g).all(), k
        assert (g.abs().sum(0) > 0).all(), f"{k}: some coefficient gets no gradient"


def test_batch_elements_are_independent():
    model = LinearHeadModel(**random_buffers())
    p = random_params(4, 3, batch=3)
    full = model(p).vertices
    for i in range(3):
        assert torch.allclose(full[i], model(p.select(i)).vertices[0], atol=1e-6)


BAD = {
    "template": np.zeros((40, 2)),
    "faces": np.zeros((10, 4), dtype=np.int64),
    "identity_basis": np.zeros((39, 3, 4)),
    "expression_basis": np.zeros((40, 3)),
    "joint_regressor": np.zeros((4, 40)),
    "skin_weights": np.full((40, 5), 0.3),
    "pose_basis": np.zeros((40, 3, 35)),
    "landmark_barycentric": np.zeros((3, 3)),
    "landmark_faces": np.array([0, 1, 2, 999]),
    "parents": (0, 0, 1, 2, 2),
    "expression_names": ("a", "b"),
    "jaw_joint": 0,
    "eye_joints": (3, 3),
}


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_buffers_raise_one_line_error(field):
    b = random_buffers()
    b[field] = BAD[field]
    with pytest.raises(ShapeError) as info:
        LinearHeadModel(**b)
    message = str(info.value)
    assert "\n" not in message and message.split(":")[0] in (field, "faces", "landmark_faces")


def test_wrong_parameter_sizes_are_refused(head):
    p = HeadParams.zeros(head.identity_dim + 1, head.expression_dim)
    with pytest.raises(ShapeError, match="identity"):
        head(p)
    with pytest.raises(ShapeError, match="expression"):
        head(HeadParams.zeros(head.identity_dim, 2))


def test_expression_index_and_clear_error(head):
    assert head.expression_index("jawOpen") == PROCEDURAL_EXPRESSIONS.index("jawOpen")
    with pytest.raises(HeadModelError) as info:
        head.expression_index("jawOpn")
    assert "jawOpn" in str(info.value) and "eyeBlinkLeft" in str(info.value)
    assert head.joint_index("jaw") == head.jaw_joint


# ------------------------------------------------------------------ procedural head model
def test_procedural_sizes_and_mesh(head):
    n = ProceduralHeadConfig().subdivisions
    assert head.template.shape == (10 * n * n + 2, 3) and head.faces.shape == (20 * n * n, 3)
    assert 600 <= head.template.shape[0] <= 2500
    assert isinstance(head, HeadModel)
    lo, hi = head.template.min(0).values, head.template.max(0).values
    assert 0.08 < hi[0] < 0.1 and 0.08 < -lo[0] < 0.1  # half-width ~0.09 m, symmetric
    assert 0.1 < hi[1] < 0.13 and 0.1 < -lo[1] < 0.13  # half-height ~0.12 m
    assert hi[2] > -lo[2]  # the nose sticks out at +z
    f = head.faces.tolist()
    edges = {(a, b) for t in f for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    # closed and consistently oriented: every directed edge once, and its reverse too
    assert len(edges) == 3 * len(f) and all((b, a) in edges for a, b in edges)
    v = head.template.double()[head.faces]
    volume = (torch.linalg.cross(v[:, 0], v[:, 1], dim=-1) * v[:, 2]).sum() / 6
    assert volume > 0.002  # outward faces, head-sized (m^3)


def test_procedural_config_fields_are_documented_and_strict():
    for name, field in ProceduralHeadConfig.model_fields.items():
        if name != "name":
            assert field.description, f"{name} has no docstring"
    with pytest.raises(pydantic.ValidationError, match="subdivisons"):
        ProceduralHeadConfig(subdivisons=3)
    small = ProceduralHeadModel(ProceduralHeadConfig(subdivisions=4, identity_dim=20))
    assert small.template.shape[0] == 162 and small.identity_dim == 20
    assert small.identity_basis.abs().amax(dim=(0, 1)).min() > 1e-3  # every direction does something
    assert ProceduralHeadModel(ProceduralHeadConfig(identity_dim=0)).identity_basis.shape[2] == 0
    full = ProceduralHeadModel(ProceduralHeadConfig(subdivisions=4, identity_dim=64)).identity_basis
    assert full.shape[2] == 64 and torch.linalg.matrix_rank(full.reshape(-1, 64).double()) == 64


def test_procedural_is_deterministic(head):
    again = ProceduralHeadModel(ProceduralHeadConfig(), BuildContext(feature_channels=8))
    a, b = head.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_procedural_names(head):
    arkit = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp")
    for n in arkit + ("mouthFunnel",):
        assert n in head.expression_names
    assert head.joint_names == ("root", "neck", "jaw", "eye_left", "eye_right")
    assert 10 <= len(head.landmark_names) <= 20
    lm = head(head.neutral()).landmarks[0]
    assert lm.shape[0] == len(head.landmark_names)
    idx = head.landmark_index
    assert lm[idx("eye_left_outer"), 0] > 0 > lm[idx("eye_right_outer"), 0]  # subject's left is +x
    assert lm[idx("nose_tip"), 2] == lm[:, 2].max()  # nose is the front-most landmark
    assert lm[idx("chin"), 1] < lm[idx("lip_lower"), 1] < lm[idx("lip_upper"), 1] < lm[idx("nose_tip"), 1]


def test_skinning_weights_are_a_partition(head):
    w = head.skin_weights
    assert (w >= 0).all() and torch.allclose(w.sum(1), torch.ones(w.shape[0]), atol=1e-6)
    assert (w[:, head.jaw_joint] > 0.99).sum() > 20


def _pose(head, **changes) -> HeadMesh:
    return head(head.neutral().replace(**changes))


def test_jaw_rotation_opens_the_mouth_and_moves_only_jaw_vertices(head_plain):
    head = head_plain
    base = _pose(head)
    opened = _pose(head, jaw=torch.tensor([[0.3, 0.0, 0.0]]))
    moved = (opened.vertices - base.vertices)[0].norm(dim=1)
    w = head.skin_weights[:, head.jaw_joint]
    assert torch.equal(moved[w == 0], torch.zeros(int((w == 0).sum())))
    assert (moved[w > 0.01] > 0).all()
    i = head.landmark_index
    d = (opened.landmarks - base.landmarks)[0]
    assert d[i("lip_lower"), 1] < -0.01  # lower lip drops by more than a centimetre
    assert d[i("chin"), 1] < -0.01
    assert d[i("lip_upper")].abs().max() < 1e-6  # the upper lip stays
    assert d[i("nose_tip")].abs().max() < 1e-6


def test_jaw_pose_corrective_only_when_the_jaw_turns(head, head_plain):
    p = head.neutral().replace(expression=torch.full((1, head.expression_dim), 0.3))
    assert torch.equal(head(p).vertices, head_plain(p).vertices)
    q = p.replace(jaw=torch.tensor([[0.3, 0.0, 0.0]]))
    diff = (head(q).vertices - head_plain(q).vertices).norm(dim=-1)
    assert 0.001 < diff.max() < 0.01


def test_jaw_open_blendshape_lowers_the_lower_lip(head):
    i = head.landmark_index
    e = torch.zeros(1, head.expression_dim)
    e[0, head.expression_index("jawOpen")] = 1.0
    d = (_pose(head, expression=e).landmarks - _pose(head).landmarks)[0]
    assert d[i("lip_lower"), 1] < -0.01 and d[i("lip_upper")].abs().max() < 1e-6


@pytest.mark.parametrize("side,other", [("left", "right"), ("right", "left")])
def test_blink_closes_only_its_own_eye(head, side, other):
    i = head.landmark_index
    e = torch.zeros(1, head.expression_dim)
    e[0, head.expression_index(f"eyeBlink{side.title()}")] = 1.0
    base, blink = _pose(head), _pose(head, expression=e)
    d = (blink.landmarks - base.landmarks)[0]
    assert d[i(f"eye_{side}_upper"), 1] < -0.003  # upper lid comes down
    up, low = i(f"eye_{side}_upper"), i(f"eye_{side}_lower")
    lid_gap = blink.landmarks[0, up, 1] - blink.landmarks[0, low, 1]
    assert lid_gap < 0.3 * (base.landmarks[0, up, 1] - base.landmarks[0, low, 1])  # the eye closes
    other_side = head.template[:, 0] * (1 if other == "left" else -1) > 0  # subject's left is +x
    assert torch.equal(blink.vertices[0, other_side], base.vertices[0, other_side])


def test_expressions_and_jaw_fold_no_triangle(head):
    def normals(v):
        t = v.double()[head.faces]
        return torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0], dim=-1)

    rest = normals(head.template)
    poses = [head.neutral().replace(expression=torch.eye(head.expression_dim)[k][None]) for k in range(15)]
    poses.append(head.neutral().replace(jaw=torch.tensor([[0.4, 0.0, 0.0]])))
    poses.append(head.neutral().replace(expression=torch.full((1, 15), 0.7), jaw=torch.tensor([[0.2, 0.0, 0.0]])))
    for p in poses:
        flipped = (normals(head(p).vertices[0]) * rest).sum(-1) <= 0
        assert not flipped.any(), f"{int(flipped.sum())} triangles fold over"


def test_smile_raises_its_own_mouth_corner(head):
    i = head.landmark_index
    e = torch.zeros(1, head.expression_dim)
    e[0, head.expression_index("mouthSmileLeft")] = 1.0
    d = (_pose(head, expression=e).landmarks - _pose(head).landmarks)[0]
    assert d[i("mouth_left"), 1] > 0.003 and d[i("mouth_left"), 0] > 0
    assert d[i("mouth_right")].abs().max() == 0


def test_eye_rotation_moves_only_eye_vertices(head):
    base = _pose(head)
    turned = _pose(head, eyes=torch.tensor([[0.0, 0.4, 0.0, 0.0, 0.0, 0.0]]))  # left eye looks sideways
    moved = (turned.vertices - base.vertices)[0].norm(dim=1) > 0
    w = head.skin_weights[:, head.eye_joints[0]]
    assert moved.any() and torch.equal(moved, w > 0)
    assert (head.template[moved, 0] > 0).all()


def test_joints_follow_the_identity(head):
    p = head.neutral()
    j0 = head(p).joints[0]
    assert torch.allclose(j0[head.jaw_joint], torch.tensor(procedural.JAW_JOINT), atol=1e-6)
    wide = p.replace(identity=torch.eye(head.identity_dim)[:1])  # coefficient 0: head width
    j1 = head(wide).joints[0]
    left, right = head.eye_joints
    assert j1[left, 0] - j0[left, 0] > 0.001 and j1[right, 0] - j0[right, 0] < -0.001


def test_registers_through_the_hook():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(procedural)
    into = {}
    pm.hook.gshead_register_headmodels(register=Register("headmodel", "test", into))
    got = [(spec.config_class, spec.factory) for spec in into.values()]
    assert got == [(ProceduralHeadConfig, ProceduralHeadModel)]
    model = got[0][1](ProceduralHeadConfig(subdivisions=3), BuildContext(feature_channels=8))
    assert model.name == "procedural" and model.template.shape == (92, 3)
