"""``flame``: the FLAME head model, read from the user's own FLAME file.

FLAME is not bundled and never downloaded: it is licensed per user after registration at
https://flame.is.tue.mpg.de. Point the config field ``path`` (or ``GSHEAD_FLAME_PATH``) at

- ``generic_model.pkl`` (FLAME 2020) or ``flame2023.pkl``: a latin-1 pickle of a dict, read with
  ``safe_pickle.RestrictedUnpickler`` (plain arrays only; chumpy arrays become NumPy arrays, the
  SciPy sparse ``J_regressor`` is densified without SciPy; anything else is refused);
- GAGAvatar's ``FLAME_with_eye.pt``: ``{'flame_model': {...the same keys as tensors...},
  'lmk_embeddings': {...}}``, read with ``torch.load(weights_only=True)``.

Mapping to ``LinearHeadModel`` (which evaluates FLAME's equations: shape blend, pose correctives,
LBS): ``v_template`` -> template, ``f`` -> faces, ``shapedirs[..., :identity_dim]`` -> identity
basis, ``shapedirs[..., 300:300 + expression_dim]`` -> expression basis (names ``exp00``..``exp99``),
``posedirs`` -> pose basis ``[V, 3, 36]`` (FLAME's on-disk layout; the flattened ``[36, 3V]`` and
``[3V, 36]`` layouts are reshaped to it), ``J_regressor`` (dense) -> joint regressor,
``kintree_table[0]`` -> parents (root -1), ``weights`` -> skinning weights. Joints: global, neck,
jaw (2), eye_left (3), eye_right (4). The global and neck joints are not driven (head pose is
camera motion); FLAME's global pose (``HeadParams.root``) is applied about joint 0
(``HeadMesh.joints[:, 0]``) by the pipeline or the driver, not here (``gshead.core.pipeline``).
Units are FLAME's: metres, y up, z out of the face.

Landmarks: the ``landmarks`` file if given (``flame_static_embedding.pkl`` 51 points,
DECA's ``landmark_embedding.npy`` 68 points, ``mediapipe_landmark_embedding.npz`` 105 points),
else the ``.pt`` file's own embedding (70 points: iBUG 68 and two eyes), else none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from gshead.core.components import BuildContext
from gshead.core.config import HeadModelConfig
from gshead.core.errors import InputError
from gshead.core.hookspecs import hookimpl
from gshead.plugins.headmodels._linear import LinearHeadModel
from gshead.io.safe_pickle import load_restricted, loads_restricted

ENV_FLAME_PATH = "GSHEAD_FLAME_PATH"
FLAME_JOINTS: tuple[str, ...] = ("global", "neck", "jaw", "eye_left", "eye_right")
FLAME_IDENTITY_MAX = 300
FLAME_EXPRESSION_MAX = 100
FLAME_EXPRESSIONS: tuple[str, ...] = tuple(f"exp{i:02d}" for i in range(FLAME_EXPRESSION_MAX))
IBUG68: tuple[str, ...] = tuple(f"ibug{i:02d}" for i in range(68))

_OBTAIN = (
    "FLAME is not shipped with gshead: obtain it from the official FLAME website after registration "
    "(https://flame.is.tue.mpg.de) and pass the file via the headmodel config field 'path' "
    f"or the environment variable {ENV_FLAME_PATH}"
)


class FlameHeadConfig(HeadModelConfig):
    """The FLAME head model (300 identity, 100 expression coefficients), from the user's file."""

    name: Literal["flame"] = "flame"
    path: str | None = None
    """FLAME file: ``generic_model.pkl`` (2020), ``flame2023.pkl`` or GAGAvatar's ``FLAME_with_eye.pt``;
    default (None): the environment variable GSHEAD_FLAME_PATH."""
    landmarks: str | None = None
    """Optional landmark embedding: ``flame_static_embedding.pkl`` (51), ``landmark_embedding.npy`` (68)
    or ``mediapipe_landmark_embedding.npz`` (105); default: the ``.pt`` file's own, else none."""
    identity_dim: int = Field(300, ge=0, le=FLAME_IDENTITY_MAX)
    """Identity (shape) coefficients kept: the first ``identity_dim`` of FLAME's 300."""
    expression_dim: int = Field(100, ge=0, le=FLAME_EXPRESSION_MAX)
    """Expression coefficients kept: the first ``expression_dim`` of FLAME's 100 (named exp00..)."""

    @classmethod
    def unavailable(cls) -> str | None:
        if os.environ.get(ENV_FLAME_PATH):
            return None
        return f"needs a FLAME model file (set {ENV_FLAME_PATH}; FLAME comes from flame.is.tue.mpg.de after registration)"


# ----------------------------------------------------------------------------------- reading files
def resolve_flame_path(path: str | None) -> Path:
    """The FLAME file to read: ``path``, else ``$GSHEAD_FLAME_PATH``; one-line ``InputError`` if absent."""
    chosen = path if path else os.environ.get(ENV_FLAME_PATH, "")
    if not chosen:
        raise InputError(f"no FLAME file given. {_OBTAIN}")
    p = Path(chosen).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "no such file"
        raise InputError(f"{p}: {what}. {_OBTAIN}")
    return p


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _torch_load(path: Path) -> dict:
    from gshead.io.weights import load_weights_only

    data = load_weights_only(path, "weights-only torch file", InputError, limit=200)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict in the torch file, got {type(data).__name__}")
    return data


def read_flame_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """The FLAME arrays of ``path`` (``.pkl`` or GAGAvatar ``.pt``) and the ``.pt``'s landmark dict."""
    if path.suffix.lower() in (".pt", ".pth"):
        data = _torch_load(path)
        model = data.get("flame_model", data)
        lmk = data.get("lmk_embeddings")
        if not isinstance(model, dict):
            raise InputError(f"{path}: 'flame_model' is a {type(model).__name__}, expected a dict of tensors")
        arrays = {k: _to_numpy(v) for k, v in model.items() if isinstance(v, (torch.Tensor, np.ndarray))}
        lmks = {k: _to_numpy(v) for k, v in lmk.items()} if isinstance(lmk, dict) else None
        return arrays, lmks
    data = load_restricted(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a pickled dict of FLAME arrays, got {type(data).__name__}")
    return {k: np.asarray(v) for k, v in data.items() if isinstance(v, np.ndarray)}, None


def _embedding(faces: np.ndarray, bary: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    faces = np.asarray(faces).reshape(-1)
    bary = np.asarray(bary, dtype=np.float64).reshape(-1, 3)
    if faces.dtype.kind not in "iu" and not np.array_equal(faces, np.round(faces)):
        raise InputError(f"{source}: landmark face indices are not integers")
    if len(faces) != len(bary):
        raise InputError(f"{source}: {len(faces)} landmark faces but {len(bary)} barycentric rows")
    return faces.astype(np.int64), bary


def read_landmark_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Landmark triangles [L], barycentrics [L, 3] and names from an embedding file.

    ``.pkl``: FLAME's static embedding (``lmk_face_idx``, ``lmk_b_coords``; 51 iBUG points 17..67).
    ``.npy``: DECA's pickled dict (``full_lmk_faces_idx``/``full_lmk_bary_coords``, 68 points;
    else its static 51), read with the restricted unpickler, never ``allow_pickle``.
    ``.npz``: metrical-tracker's MediaPipe embedding (``lmk_face_idx``, ``lmk_b_coords``,
    ``landmark_indices``; named ``mp<index>``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{p}: no such landmark embedding file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{p}: not a readable .npz embedding ({' '.join(str(exc).split())[:160]})"
            ) from None
        missing = [k for k in ("lmk_face_idx", "lmk_b_coords") if k not in d]
        if missing:
            raise InputError(f"{p}: missing {', '.join(missing)}; expected lmk_face_idx, lmk_b_coords")
        faces, bary = _embedding(d["lmk_face_idx"], d["lmk_b_coords"], str(p))
        if "landmark_indices" in d:
            names = tuple(f"mp{int(i)}" for i in np.asarray(d["landmark_indices"]).reshape(-1))
        else:
            names = tuple(f"mp_lmk{i}" for i in range(len(faces)))
        return faces, bary, names
    if suffix == ".npy":
        d = _read_npy_dict(p)
    else:
        d = load_restricted(p)
    if not isinstance(d, dict):
        raise InputError(f"{p}: expected a dict of landmark arrays, got {type(d).__name__}")
    for fkey, bkey, names in (
        ("full_lmk_faces_idx", "full_lmk_bary_coords", IBUG68),
        ("lmk_face_idx", "lmk_b_coords", IBUG68[17:]),
        ("static_lmk_faces_idx", "static_lmk_bary_coords", IBUG68[17:]),
    ):
        if fkey in d and bkey in d:
            faces, bary = _embedding(d[fkey], d[bkey], str(p))
            if len(names) != len(faces):
                names = tuple(f"lmk{i}" for i in range(len(faces)))
            return faces, bary, names
    raise InputError(
        f"{p}: no landmark arrays found (keys: {', '.join(sorted(map(str, d)))}); expected "
        "lmk_face_idx/lmk_b_coords or full_lmk_faces_idx/full_lmk_bary_coords"
    )


def _read_npy_dict(path: Path):
    """A ``.npy`` file: a plain array via ``np.load``, or an object array's pickle, restricted."""
    from numpy.lib import format as npformat

    with open(path, "rb") as fh:
        try:
            version = npformat.read_magic(fh)
            header = (
                npformat.read_array_header_1_0(fh)
                if version == (1, 0)
                else npformat.read_array_header_2_0(fh)
            )
        except ValueError as exc:
            raise InputError(f"{path}: not a .npy file ({exc})") from None
        dtype = header[2]
        if not dtype.hasobject:
            raise InputError(f"{path}: holds a plain {dtype} array, expected a pickled dict of embeddings")
        obj = loads_restricted(fh.read(), source=str(path))
    if isinstance(obj, np.ndarray) and obj.shape == ():
        obj = obj.item()
    return obj


# ----------------------------------------------------------------------------------- conversion
def _pose_basis(posedirs: np.ndarray, v: int, source: str) -> np.ndarray:
    """FLAME ``posedirs`` as [V, 3, P]: on disk it is [V, 3, P]; ports store [P, 3V] or [3V, P]."""
    p = posedirs
    if p.ndim == 3 and p.shape[:2] == (v, 3):
        return p
    if p.ndim == 2 and p.shape[1] == 3 * v:
        return p.T.reshape(v, 3, p.shape[0])
    if p.ndim == 2 and p.shape[0] == 3 * v:
        return p.reshape(v, 3, p.shape[1])
    raise InputError(f"{source}: posedirs has shape {list(p.shape)}; expected [{v}, 3, 36] or [36, {3 * v}]")


def flame_buffers(
    arrays: dict[str, np.ndarray],
    identity_dim: int,
    expression_dim: int,
    source: str,
    landmarks: tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None = None,
) -> dict:
    """``LinearHeadModel`` keyword arguments from FLAME's arrays (see the module docstring)."""
    need = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise InputError(
            f"{source}: not a FLAME model: missing {', '.join(missing)}; expected keys {', '.join(need)}"
        )
    template = np.asarray(arrays["v_template"], dtype=np.float64)
    v = template.shape[0]
    shapedirs = np.asarray(arrays["shapedirs"], dtype=np.float64)
    if shapedirs.ndim != 3 or shapedirs.shape[:2] != (v, 3):
        raise InputError(f"{source}: shapedirs has shape {list(shapedirs.shape)}; expected [{v}, 3, 400]")
    n = shapedirs.shape[2]
    if n < FLAME_IDENTITY_MAX + expression_dim:
        raise InputError(
            f"{source}: shapedirs has {n} components; identity 300 + expression_dim {expression_dim} "
            f"needs {FLAME_IDENTITY_MAX + expression_dim}"
        )
    kintree = np.asarray(arrays["kintree_table"]).astype(np.int64)
    parents = [int(p) for p in kintree[0]]
    parents[0] = -1  # FLAME stores the root's parent as 2**32 - 1
    if len(parents) != len(FLAME_JOINTS):
        raise InputError(f"{source}: {len(parents)} joints in kintree_table; FLAME has 5")
    lmk_faces, lmk_bary, lmk_names = (
        landmarks if landmarks is not None else (np.zeros(0, np.int64), np.zeros((0, 3)), ())
    )
    return dict(
        template=template,
        faces=np.asarray(arrays["f"]).astype(np.int64),
        identity_basis=shapedirs[:, :, :identity_dim],
        expression_basis=shapedirs[:, :, FLAME_IDENTITY_MAX : FLAME_IDENTITY_MAX + expression_dim],
        expression_names=FLAME_EXPRESSIONS[:expression_dim],
        pose_basis=_pose_basis(np.asarray(arrays["posedirs"], dtype=np.float64), v, source),
        joint_regressor=np.asarray(arrays["J_regressor"], dtype=np.float64),
        parents=parents,
        skin_weights=np.asarray(arrays["weights"], dtype=np.float64),
        joint_names=FLAME_JOINTS,
        jaw_joint=FLAME_JOINTS.index("jaw"),
        eye_joints=(FLAME_JOINTS.index("eye_left"), FLAME_JOINTS.index("eye_right")),
        landmark_faces=lmk_faces,
        landmark_barycentric=lmk_bary,
        landmark_names=lmk_names,
    )


def _pt_landmarks(lmk: dict[str, np.ndarray] | None, source: str):
    if not lmk:
        return None
    for fkey, bkey in (
        ("full_lmk_faces_idx_with_eye", "full_lmk_bary_coords_with_eye"),
        ("full_lmk_faces_idx", "full_lmk_bary_coords"),
        ("static_lmk_faces_idx", "static_lmk_bary_coords"),
    ):
        if fkey in lmk and bkey in lmk:
            faces, bary = _embedding(lmk[fkey], lmk[bkey], source)
            n = len(faces)
            if n == 70:
                names = (*IBUG68, "eye68", "eye69")
            elif n == 68:
                names = IBUG68
            elif n == 51:
                names = IBUG68[17:]
            else:
                names = tuple(f"lmk{i}" for i in range(n))
            return faces, bary, names
    return None


class FlameHeadModel(LinearHeadModel):
    """FLAME as a ``LinearHeadModel``; the factory registered as ``flame``."""

    def __init__(self, config: FlameHeadConfig | None = None, context: BuildContext | None = None) -> None:
        config = config if config is not None else FlameHeadConfig()
        path = resolve_flame_path(config.path)
        arrays, pt_lmk = read_flame_file(path)
        landmarks = (
            read_landmark_file(config.landmarks) if config.landmarks else _pt_landmarks(pt_lmk, str(path))
        )
        buffers = flame_buffers(arrays, config.identity_dim, config.expression_dim, str(path), landmarks)
        super().__init__(**buffers, name="flame")
        self.config = config
        self.source_path = path


@hookimpl
def gshead_register_headmodels(register):
    register.add(FlameHeadConfig, FlameHeadModel)
