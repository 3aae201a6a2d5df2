"""The ``flame`` head model and the restricted unpickler, on synthetic FLAME files.

No FLAME file is shipped or downloaded: the fixtures write files with FLAME's real keys, shapes and
on-disk conventions (a latin-1 pickle of a dict, chumpy arrays, a SciPy csc ``J_regressor``, a uint32
``kintree_table`` whose root parent is 2**32 - 1, ``posedirs`` [5023, 3, 36]) filled with random
numbers, and check the model against an independent NumPy implementation of FLAME's equations.
"""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pydantic
import pytest
import scipy.sparse
import torch

from gshead.core.errors import InputError
from gshead.core.registry import Registry
from gshead.core.types import HeadParams
from gshead.plugins.headmodels.flame import (
    FLAME_EXPRESSIONS,
    FlameHeadConfig,
    FlameHeadModel,
    read_landmark_file,
)
from gshead.io.safe_pickle import load_restricted, loads_restricted
from gshead.testing import check_component

V, F, J = 5023, 9976, 5
FLAME_MODULE = "gshead.plugins.headmodels.flame"


# ------------------------------------------------------------------------------ synthetic files
class _FakeCh:
    """Pickles like chumpy's ``Ch``: module ``chumpy.ch``, state a dict holding the array in ``x``."""

    def __init__(self, x):
        self.x = np.asarray(x)
        self._cache = {"r": None}
        self.dterms = ("x",)

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_cache"]  # chumpy drops its caches when pickling
        return state


def _pickle_with_fake_chumpy(obj, protocol: int = 2) -> bytes:
    """Pickle ``obj`` with ``_FakeCh`` living in a fake ``chumpy.ch`` module, then remove the module."""
    pkg, mod = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    fake = type("Ch", (_FakeCh,), {"__module__": "chumpy.ch", "__qualname__": "Ch"})
    mod.Ch, pkg.ch = fake, mod
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, mod
    try:
        converted = {k: fake(v.x) if isinstance(v, _FakeCh) else v for k, v in obj.items()}
        return pickle.dumps(converted, protocol=protocol)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def synthetic_flame(seed: int = 0) -> dict:
    """FLAME's keys and shapes with random contents (a head-sized blob, local joint regressor)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(V, 3))
    template = 0.1 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    faces = np.stack([rng.choice(V, 3, replace=False) for _ in range(F)]).astype(np.uint32)
    reg = scipy.sparse.lil_matrix((J, V))
    for j in range(J):
        cols = rng.choice(V, 12, replace=False)
        w = rng.uniform(0.1, 1.0, 12)
        reg[j, cols] = w / w.sum()
    weights = rng.dirichlet(0.3 * np.ones(J), size=V)
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32)
    return {
        "v_template": _FakeCh(template),
        "f": faces,
        "shapedirs": _FakeCh(2e-3 * rng.normal(size=(V, 3, 400))),
        "posedirs": 1e-2 * rng.normal(size=(V, 3, 36)),
        "J_regressor": reg.tocsc(),
        "kintree_table": kintree,
        "weights": weights,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def plain(arrays: dict) -> dict:
    """The synthetic model as plain float64 arrays (what the reference implementation reads)."""
    out = {}
    for k, v in arrays.items():
        if isinstance(v, _FakeCh):
            v = v.x
        if scipy.sparse.issparse(v):
            v = v.toarray()
        out[k] = v
    return out


@pytest.fixture(scope="module")
def flame_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame")
    arrays = synthetic_flame()
    pkl = root / "generic_model.pkl"
    pkl.write_bytes(_pickle_with_fake_chumpy(arrays))
    assert "chumpy" not in sys.modules
    return root, pkl, plain(arrays)


# ------------------------------------------------------------------------------ reference FLAME
def rodrigues(rotvec: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(rotvec)
    if theta < 1e-12:
        return np.eye(3)
    k = rotvec / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def reference_flame(a: dict, betas, psi, jaw, eyes) -> tuple[np.ndarray, np.ndarray]:
    """FLAME's equations as published: blend shapes, pose correctives, 4x4 LBS (float64).

    Coefficients are zero-padded to FLAME's 300 + 100; ``posedirs`` is used as FLAME's own code
    does, flattened to [36, 3V] and multiplied by the row-major (R - I) pose feature.
    """
    coeffs = np.zeros(400)
    coeffs[: len(betas)] = betas
    coeffs[300 : 300 + len(psi)] = psi
    v_shaped = a["v_template"] + a["shapedirs"] @ coeffs
    joints = a["J_regressor"] @ v_shaped
    parents = a["kintree_table"][0].astype(np.int64)
    pose = [np.zeros(3), np.zeros(3), jaw, eyes[:3], eyes[3:]]
    rots = [rodrigues(p) for p in pose]
    feature = np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])  # [36]
    posedirs = a["posedirs"].reshape(-1, 36).T  # [36, 3V], FLAME's internal layout
    v_posed = v_shaped + (feature @ posedirs).reshape(V, 3)
    world = []
    for j in range(J):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parents[j]] if j else 0)
        world.append(local if j == 0 else world[parents[j]] @ local)
    rel = []
    for j in range(J):
        m = world[j].copy()
        m[:3, 3] -= world[j][:3, :3] @ joints[j]
        rel.append(m)
    t = np.einsum("vj,jab->vab", a["weights"], np.stack(rel))  # [V, 4, 4]
    verts = np.einsum("vab,vb->va", t[:, :3, :3], v_posed) + t[:, :3, 3]
    posed_joints = np.stack([w[:3, 3] for w in world])
    return verts, posed_joints


def random_params(n_id: int, n_expr: int, batch: int, seed: int = 3) -> HeadParams:
    g = torch.Generator().manual_seed(seed)
    r = lambda n, s: s * torch.randn(batch, n, generator=g, dtype=torch.float64).float()
    return HeadParams(r(n_id, 1.0), r(n_expr, 1.0), r(3, 0.3), r(6, 0.3), r(3, 1.0), r(3, 1.0))


def assert_matches_reference(model: FlameHeadModel, arrays: dict, params: HeadParams) -> None:
    mesh = model(params)
    for b in range(params.batch_size):
        ref_v, ref_j = reference_flame(
            arrays,
            params.identity[b].double().numpy(),
            params.expression[b].double().numpy(),
            params.jaw[b].double().numpy(),
            params.eyes[b].double().numpy(),
        )
        np.testing.assert_allclose(mesh.vertices[b].double().numpy(), ref_v, atol=1e-5, rtol=0)
        np.testing.assert_allclose(mesh.joints[b].double().numpy(), ref_j, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ tests
def test_pickle_matches_reference_flame(flame_files):
    _root, pkl, arrays = flame_files
    model = FlameHeadModel(FlameHeadConfig(path=str(pkl)))
    assert model.num_vertices == V and model.faces.shape == (F, 3)
    assert model.identity_dim == 300 and model.expression_names == FLAME_EXPRESSIONS
    assert model.expression_names[0] == "exp00" and model.expression_names[-1] == "exp99"
    assert model.joint_names == ("global", "neck", "jaw", "eye_left", "eye_right")
    assert model.parents == (-1, 0, 1, 1, 1)
    assert (model.jaw_joint, model.eye_joints) == (2, (3, 4))
    assert model.pose_basis is not None and model.pose_basis.shape == (V, 3, 36)
    # the chumpy arrays and the sparse regressor came through as their values
    np.testing.assert_allclose(model.template.double().numpy(), arrays["v_template"], atol=1e-7)
    np.testing.assert_allclose(model.joint_regressor.double().numpy(), arrays["J_regressor"], atol=1e-7)
    assert_matches_reference(model, arrays, random_params(300, 100, batch=2))
    # neutral parameters give the template exactly
    assert torch.equal(model(model.neutral()).vertices[0], model.template)


def test_truncated_dims_and_env_path(flame_files, monkeypatch):
    _root, pkl, arrays = flame_files
    monkeypatch.setenv("GSHEAD_FLAME_PATH", str(pkl))
    model = FlameHeadModel(FlameHeadConfig(identity_dim=20, expression_dim=10))
    assert model.identity_dim == 20 and model.expression_names == FLAME_EXPRESSIONS[:10]
    # the kept expression columns are FLAME's 300.. (not 20..): compare with the padded reference
    assert_matches_reference(model, arrays, random_params(20, 10, batch=1, seed=5))


def test_config_limits():
    with pytest.raises(pydantic.ValidationError, match="less than or equal to 300"):
        FlameHeadConfig(identity_dim=301)
    with pytest.raises(pydantic.ValidationError, match="less than or equal to 100"):
        FlameHeadConfig(expression_dim=101)


def test_pt_layout_loads_weights_only(flame_files, tmp_path, monkeypatch):
    _root, _pkl, arrays = flame_files
    rng = np.random.default_rng(7)
    lmk_faces = rng.integers(0, F, size=(1, 70))
    lmk_bary = rng.dirichlet(np.ones(3), size=(1, 70))
    model_dict = {
        k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if isinstance(v, np.ndarray)
    }
    model_dict["f"] = model_dict["f"].long()
    model_dict["kintree_table"] = model_dict["kintree_table"].long()
    # a port's internal posedirs layout [36, 3V]: the loader reshapes it back to [V, 3, 36]
    model_dict["posedirs"] = torch.from_numpy(arrays["posedirs"].reshape(-1, 36).T.copy())
    pt = tmp_path / "FLAME_with_eye.pt"
    torch.save(
        {
            "flame_model": model_dict,
            "lmk_embeddings": {
                "full_lmk_faces_idx_with_eye": torch.from_numpy(lmk_faces),
                "full_lmk_bary_coords_with_eye": torch.from_numpy(lmk_bary),
                "static_lmk_faces_idx": torch.from_numpy(lmk_faces[0, 17:68]),
                "static_lmk_bary_coords": torch.from_numpy(lmk_bary[0, 17:68]),
            },
        },
        pt,
    )
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = FlameHeadModel(FlameHeadConfig(path=str(pt)))
    assert calls == [True]
    assert model.pose_basis.shape == (V, 3, 36)
    np.testing.assert_allclose(model.pose_basis.double().numpy(), arrays["posedirs"], atol=1e-7)
    assert len(model.landmark_names) == 70 and model.landmark_names[:2] == ("ibug00", "ibug01")
    params = random_params(300, 100, batch=1, seed=11)
    assert_matches_reference(model, arrays, params)
    ref_v, _ = reference_flame(
        arrays,
        *(t[0].double().numpy() for t in (params.identity, params.expression, params.jaw, params.eyes)),
    )
    ref_lmk = np.einsum("lk,lkc->lc", lmk_bary[0], ref_v[arrays["f"][lmk_faces[0]].astype(np.int64)])
    np.testing.assert_allclose(model(params).landmarks[0].double().numpy(), ref_lmk, atol=1e-5)


class _NotWeights:
    pass


def test_pt_with_code_is_refused(tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"flame_model": {"v_template": torch.zeros(3, 3)}, "x": _NotWeights()}, pt)
    with pytest.raises(InputError, match="weights-only"):
        FlameHeadModel(FlameHeadConfig(path=str(pt)))


def _marker_pickle(marker) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"v_template": np.zeros((3, 3)), "shapedirs": Evil()}, protocol=2)


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "MARKER"
    control = tmp_path / "CONTROL"
    pickle.loads(_marker_pickle(control))  # the payload is real: a plain pickle.load runs it
    assert control.exists()

    evil = tmp_path / "generic_model.pkl"
    evil.write_bytes(_marker_pickle(marker))
    with pytest.raises(InputError) as info:
        FlameHeadModel(FlameHeadConfig(path=str(evil)))
    message = str(info.value)
    assert "refused to load" in message and "system" in message and str(evil) in message
    assert "only numpy/scipy arrays are allowed" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("chumpy.ch_ops", "add"),
        ("numpy", "load"),
        ("copyreg", "__newobj__"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(module, name):
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(InputError, match=f"it references {module}.{name};"):
        loads_restricted(data, source="x.pkl")


def test_restricted_unpickler_arrays_across_protocols():
    m = scipy.sparse.random(6, 9, density=0.3, format="csc", random_state=0)
    obj = {"a": np.arange(12.0).reshape(3, 4), "csc": m, "csr": m.tocsr(), "coo": m.tocoo(), "s": "lbs"}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        out = loads_restricted(pickle.dumps(obj, protocol=protocol))
        assert out["s"] == "lbs"
        np.testing.assert_array_equal(out["a"], obj["a"])
        for key in ("csc", "csr", "coo"):
            assert isinstance(out[key], np.ndarray)
            np.testing.assert_array_equal(out[key], m.toarray())


def test_chumpy_stand_in_without_chumpy(tmp_path):
    data = _pickle_with_fake_chumpy({"x": _FakeCh(np.eye(3)), "n": 1}, protocol=0)
    assert "chumpy" not in sys.modules
    out = loads_restricted(data)
    assert isinstance(out["x"], np.ndarray)
    np.testing.assert_array_equal(out["x"], np.eye(3))
    assert "chumpy" not in sys.modules


def test_missing_file_messages(tmp_path, monkeypatch):
    monkeypatch.delenv("GSHEAD_FLAME_PATH", raising=False)
    for config in (FlameHeadConfig(), FlameHeadConfig(path=str(tmp_path / "nope.pkl"))):
        with pytest.raises(InputError) as info:
            FlameHeadModel(config)
        message = str(info.value)
        assert "flame.is.tue.mpg.de" in message and "registration" in message
        assert "GSHEAD_FLAME_PATH" in message and "'path'" in message and "\n" not in message
    with pytest.raises(InputError, match="nope.pkl: no such file"):
        FlameHeadModel(FlameHeadConfig(path=str(tmp_path / "nope.pkl")))


def test_landmark_embedding_files(flame_files, tmp_path):
    _root, pkl, arrays = flame_files
    rng = np.random.default_rng(2)
    # FLAME's flame_static_embedding.pkl: 51 points (iBUG 17..67)
    static = tmp_path / "flame_static_embedding.pkl"
    s_faces, s_bary = rng.integers(0, F, 51).astype(np.uint32), rng.dirichlet(np.ones(3), 51)
    static.write_bytes(pickle.dumps({"lmk_face_idx": s_faces, "lmk_b_coords": s_bary}, protocol=2))
    faces, bary, names = read_landmark_file(static)
    assert faces.dtype == np.int64 and len(names) == 51 and names[0] == "ibug17" and names[-1] == "ibug67"
    np.testing.assert_array_equal(faces, s_faces)
    np.testing.assert_allclose(bary, s_bary)
    # metrical-tracker's mediapipe_landmark_embedding.npz: 105 points
    mp = tmp_path / "mediapipe_landmark_embedding.npz"
    m_idx = rng.choice(468, 105, replace=False)
    np.savez(
        mp,
        lmk_face_idx=rng.integers(0, F, 105),
        lmk_b_coords=rng.dirichlet(np.ones(3), 105),
        landmark_indices=m_idx,
    )
    faces, _bary, names = read_landmark_file(mp)
    assert len(faces) == 105 and names[0] == f"mp{m_idx[0]}"
    # DECA's landmark_embedding.npy: a pickled dict inside a .npy, read without allow_pickle
    deca = tmp_path / "landmark_embedding.npy"
    d_faces, d_bary = rng.integers(0, F, (1, 68)), rng.dirichlet(np.ones(3), (1, 68))
    np.save(
        deca, {"full_lmk_faces_idx": d_faces, "full_lmk_bary_coords": d_bary, "static_lmk_faces_idx": s_faces}
    )
    faces, _bary, names = read_landmark_file(deca)
    assert len(faces) == 68 and names[30] == "ibug30"
    np.testing.assert_array_equal(faces, d_faces[0])

    model = FlameHeadModel(
        FlameHeadConfig(path=str(pkl), landmarks=str(mp), identity_dim=5, expression_dim=5)
    )
    assert model.landmark_names[0] == f"mp{m_idx[0]}"
    params = random_params(5, 5, batch=1, seed=9)
    ref_v, _ = reference_flame(
        arrays,
        *(t[0].double().numpy() for t in (params.identity, params.expression, params.jaw, params.eyes)),
    )
    f_all = arrays["f"].astype(np.int64)
    mp_faces, mp_bary, _ = read_landmark_file(mp)
    ref = np.einsum("lk,lkc->lc", mp_bary, ref_v[f_all[mp_faces]])
    np.testing.assert_allclose(model(params).landmarks[0].double().numpy(), ref, atol=1e-5)

    # a landmark pickle with code in it is refused like a model file
    evil = tmp_path / "evil_embedding.pkl"
    evil.write_bytes(_marker_pickle(tmp_path / "M2"))
    with pytest.raises(InputError, match="refused to load"):
        load_restricted(evil)
    assert not (tmp_path / "M2").exists()


def test_contract(flame_files):
    from gshead.core.registry import DEFAULT_PLUGINS as BUILTIN_PLUGINS

    registry = Registry(builtin=tuple(dict.fromkeys((*BUILTIN_PLUGINS, FLAME_MODULE))), autoload=False)
    _root, pkl, _arrays = flame_files
    check_component("headmodel", {"name": "flame", "path": str(pkl)}, registry=registry)


def test_oversized_sparse_matrix_is_refused():
    m = scipy.sparse.csc_matrix((3, 4))
    m._shape = (10**6, 10**6)  # a tampered shape: densifying it would need terabytes
    with pytest.raises(InputError, match="too large to densify"):
        loads_restricted(pickle.dumps({"J_regressor": m}), source="big.pkl")
