"""The maths of every built-in morphable head: linear blendshapes + linear blend skinning.

``LinearHeadModel`` holds the buffers of a FLAME-like model and evaluates it; concrete head
models (the procedural one, FLAME, Anny...) only *build* these buffers and pass them in.
Written from the equations below (no third-party model code).

Evaluation for a batch of ``B`` parameter sets (``I`` identity, ``E`` expression coefficients,
``J`` joints, ``V`` vertices)::

    shaped  = template + identity_basis · identity + expression_basis · expression   [B, V, 3]
    rest_j  = joint_regressor @ shaped                                                [B, J, 3]
    R_j     = I, except R_jaw = exp(jaw), R_eye_left = exp(eyes[:3]), R_eye_right = exp(eyes[3:])
    posed   = shaped + pose_basis · flatten(R_1..R_{J-1} - I)   (if a pose basis is given)
    G_j     = G_parent(j) ∘ (R_j, rest_j - rest_parent(j))        (forward kinematics, G_0 = (R_0, rest_0))
    A_j     = G_j ∘ translate(-rest_j)                            (rest pose -> posed, per joint)
    out_v   = Σ_j skin_weights[v, j] · A_j(posed_v)               (linear blend skinning)

The global head pose (``params.rotation``/``translation``) is *not* applied: it is camera motion.

The skinning is evaluated in the algebraically equal "delta" form
``out_v = posed_v + Σ_j w_vj [(G_j.R - I)(posed_v - rest_j) + (G_j.t - rest_j)]`` (valid since each
row of ``skin_weights`` sums to one, which ``__init__`` checks). With every rotation exactly zero
all the deltas are exactly zero, so neutral parameters return the template bit for bit.

Pose-corrective layout (the FLAME ``posedirs`` layout, usable as is): ``pose_basis`` is
``[V, 3, 9·(J-1)]``; the feature is ``(R[:, 1:] - I)`` of shape ``[B, J-1, 3, 3]`` flattened row-major
to ``[B, 9·(J-1)]``, and ``offsets[b, v, c] = Σ_p pose_basis[v, c, p] · feature[b, p]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import roma
import torch
from torch import Tensor

from gshead.core.errors import GsheadError, ShapeError
from gshead.core.geometry import rotvec_to_rotmat
from gshead.core.types import HeadMesh, HeadParams


class HeadModelError(GsheadError, ValueError):
    """A head model was asked for something it does not have (e.g. an unknown expression name)."""


def _float(name: str, value) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ShapeError(f"{name}: expected a float array, got {type(value).__name__} ({exc})") from None


def _long(name: str, value) -> Tensor:
    t = torch.as_tensor(value).detach().clone()
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ShapeError(f"{name}: expected integer indices, got dtype {t.dtype}")
    return t.long()


def _check(name: str, t: Tensor, shape: tuple[int | None, ...]) -> None:
    ok = t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ShapeError(f"{name}: expected shape {want}, got {list(t.shape)}")


class LinearHeadModel(torch.nn.Module):
    """A morphable head given by its buffers: blendshapes, optional pose correctives, joints, LBS.

    All float buffers are stored as float32; ``forward`` is batched and differentiable.
    ``V`` vertices, ``F`` triangles, ``I`` identity and ``E`` expression coefficients, ``J`` joints
    (joint 0 is the root; every other joint's parent has a smaller index), ``L`` landmarks.
    """

    template: Tensor  # [V, 3] neutral mesh
    faces: Tensor  # [F, 3] long, counter-clockwise seen from outside
    identity_basis: Tensor  # [V, 3, I]
    expression_basis: Tensor  # [V, 3, E]
    pose_basis: Tensor | None  # [V, 3, 9·(J-1)] or None
    joint_regressor: Tensor  # [J, V] dense; rest joints = regressor @ shaped vertices
    skin_weights: Tensor  # [V, J] rows sum to one
    landmark_faces: Tensor  # [L] long, triangle of each landmark
    landmark_barycentric: Tensor  # [L, 3] weights of that triangle's corners

    def __init__(
        self,
        *,
        template,
        faces,
        identity_basis,
        expression_basis,
        expression_names: Sequence[str],
        joint_regressor,
        parents: Sequence[int],
        skin_weights,
        joint_names: Sequence[str],
        jaw_joint: int,
        landmark_faces,
        landmark_barycentric,
        landmark_names: Sequence[str] | None = None,
        eye_joints: tuple[int, int] | None = None,
        pose_basis=None,
        name: str = "linear",
    ) -> None:
        """Check and store the buffers; every inconsistency raises a one-line ``ShapeError``.

        ``template`` [V, 3]; ``faces`` [F, 3] int; ``identity_basis`` [V, 3, I];
        ``expression_basis`` [V, 3, E] with ``E == len(expression_names)``; ``joint_regressor`` [J, V];
        ``parents`` J ints (``parents[0] == -1``, ``0 <= parents[j] < j`` otherwise);
        ``skin_weights`` [V, J] (rows sum to 1); ``joint_names`` J names; ``jaw_joint`` and
        ``eye_joints`` (left, right) joint indices other than the root; ``landmark_faces`` [L] int;
        ``landmark_barycentric`` [L, 3]; ``landmark_names`` L names (default ``lmk0..``);
        ``pose_basis`` [V, 3, 9·(J-1)] or None.
        """
        super().__init__()
        template = _float("template", template)
        _check("template", template, (None, 3))
        v = template.shape[0]
        if v < 3:
            raise ShapeError(f"template: expected at least 3 vertices, got {v}")
        faces = _long("faces", faces)
        _check("faces", faces, (None, 3))
        if faces.numel() and (faces.min() < 0 or faces.max() >= v):
            got = f"[{int(faces.min())}, {int(faces.max())}]"
            raise ShapeError(f"faces: indices must lie in [0, {v}), got {got}")
        identity_basis = _float("identity_basis", identity_basis)
        _check("identity_basis", identity_basis, (v, 3, None))
        expression_basis = _float("expression_basis", expression_basis)
        _check("expression_basis", expression_basis, (v, 3, None))
        expression_names = tuple(str(n) for n in expression_names)
        if len(expression_names) != expression_basis.shape[2]:
            raise ShapeError(
                f"expression_names: {len(expression_names)} names for "
                f"{expression_basis.shape[2]} expression coefficients"
            )
        if len(set(expression_names)) != len(expression_names):
            raise ShapeError("expression_names: names must be unique")

        parents = tuple(int(p) for p in parents)
        j = len(parents)
        if j == 0:
            raise ShapeError("parents: expected at least one joint (the root)")
        if parents[0] != -1:
            raise ShapeError(f"parents: joint 0 must be the root (parent -1), got parent {parents[0]}")
        for k in range(1, j):
            if not 0 <= parents[k] < k:
                raise ShapeError(f"parents: joint {k} has parent {parents[k]}; expected 0 <= parent < {k}")
        joint_names = tuple(str(n) for n in joint_names)
        if len(joint_names) != j:
            raise ShapeError(f"joint_names: {len(joint_names)} names for {j} joints")
        joint_regressor = _float("joint_regressor", joint_regressor)
        _check("joint_regressor", joint_regressor, (j, v))
        skin_weights = _float("skin_weights", skin_weights)
        _check("skin_weights", skin_weights, (v, j))
        row_sums = skin_weights.double().sum(1)
        if (row_sums - 1).abs().max() > 1e-3:
            worst = int((row_sums - 1).abs().argmax())
            total = float(row_sums[worst])
            raise ShapeError(f"skin_weights: each row must sum to 1; vertex {worst} sums to {total:.6f}")

        jaw_joint = int(jaw_joint)
        if not 0 < jaw_joint < j:
            raise ShapeError(f"jaw_joint: expected a non-root joint index in [1, {j}), got {jaw_joint}")
        if eye_joints is not None:
            eye_joints = tuple(int(e) for e in eye_joints)  # type: ignore[assignment]
            if len(eye_joints) != 2 or not all(0 < e < j for e in eye_joints):
                raise ShapeError(f"eye_joints: expected two non-root joints in [1, {j}), got {eye_joints}")
            if len({jaw_joint, *eye_joints}) != 3:
                raise ShapeError(f"eye_joints: {eye_joints} must differ from each other and from {jaw_joint}")

        if pose_basis is not None:
            pose_basis = _float("pose_basis", pose_basis)
            _check("pose_basis", pose_basis, (v, 3, 9 * (j - 1)))

        landmark_faces = _long("landmark_faces", landmark_faces)
        _check("landmark_faces", landmark_faces, (None,))
        n_lmk = landmark_faces.shape[0]
        if n_lmk and (landmark_faces.min() < 0 or landmark_faces.max() >= faces.shape[0]):
            raise ShapeError(f"landmark_faces: indices must lie in [0, {faces.shape[0]})")
        landmark_barycentric = _float("landmark_barycentric", landmark_barycentric)
        _check("landmark_barycentric", landmark_barycentric, (n_lmk, 3))
        if landmark_names is None:
            landmark_names = tuple(f"lmk{i}" for i in range(n_lmk))
        landmark_names = tuple(str(n) for n in landmark_names)
        if len(landmark_names) != n_lmk:
            raise ShapeError(f"landmark_names: {len(landmark_names)} names for {n_lmk} landmarks")

        self.name = str(name)
        self.identity_dim = int(identity_basis.shape[2])
        self.expression_names = expression_names
        self.joint_names = joint_names
        self.landmark_names = landmark_names
        self.parents = parents
        self.jaw_joint = jaw_joint
        self.eye_joints = eye_joints
        self.register_buffer("template", template)
        self.register_buffer("faces", faces)
        self.register_buffer("identity_basis", identity_basis)
        self.register_buffer("expression_basis", expression_basis)
        self.register_buffer("pose_basis", pose_basis)
        self.register_buffer("joint_regressor", joint_regressor)
        self.register_buffer("skin_weights", skin_weights)
        self.register_buffer("landmark_faces", landmark_faces)
        self.register_buffer("landmark_barycentric", landmark_barycentric)
        self._identity_memo: tuple | None = None  # (ident, basis, basis version, shape)

    # ------------------------------------------------------------------ sizes and names
    @property
    def expression_dim(self) -> int:
        return len(self.expression_names)

    @property
    def num_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    def _index(self, kind: str, names: tuple[str, ...], name: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            raise HeadModelError(
                f"head model {self.name!r} has no {kind} {name!r}; expected one of: {', '.join(names)}"
            ) from None

    def expression_index(self, name: str) -> int:
        """Index of the expression coefficient called ``name`` (``HeadModelError`` lists the names)."""
        return self._index("expression", self.expression_names, name)

    def joint_index(self, name: str) -> int:
        """Index of the joint called ``name``."""
        return self._index("joint", self.joint_names, name)

    def landmark_index(self, name: str) -> int:
        """Index of the landmark called ``name``."""
        return self._index("landmark", self.landmark_names, name)

    def neutral(self, batch_size: int = 1) -> HeadParams:
        """Zero parameters of this model's sizes (the template), on the model's device."""
        p = HeadParams.zeros(self.identity_dim, self.expression_dim, batch_size)
        return p.to(self.template.device)

    # ------------------------------------------------------------------ evaluation
    def blendshapes(self, params: HeadParams) -> Tensor:
        """Blendshape-only vertices [B, V, 3]: template + identity + expression, no joints."""
        ident, expr = self._coefficients(params)
        return self._shaped(ident, expr)

    def _coefficients(self, params: HeadParams) -> tuple[Tensor, Tensor]:
        if params.identity.shape[1] != self.identity_dim:
            raise ShapeError(
                f"{self.name}: params.identity has {params.identity.shape[1]} coefficients, "
                f"expected {self.identity_dim}"
            )
        if params.expression.shape[1] != self.expression_dim:
            raise ShapeError(
                f"{self.name}: params.expression has {params.expression.shape[1]} coefficients, "
                f"expected {self.expression_dim}"
            )
        return params.identity.to(self.template), params.expression.to(self.template)

    def _shaped(self, ident: Tensor, expr: Tensor) -> Tensor:
        shaped = self._identity_shape(ident)  # [B, V, 3]
        return shaped + torch.einsum("vce,be->bvc", self.expression_basis, expr)

    def _identity_shape(self, ident: Tensor) -> Tensor:
        """template + identity blendshapes [B, V, 3]. Driving evaluates one avatar's identity every
        frame: without autograd the last result is kept and reused while the coefficients (and
        the basis) are the same, which saves the largest product of the evaluation."""
        memo = self._identity_memo
        if torch.is_grad_enabled() or ident.requires_grad:
            return self.template + torch.einsum("vci,bi->bvc", self.identity_basis, ident)
        if (
            memo is not None
            and memo[1] is self.identity_basis
            and memo[2] == self.identity_basis._version
            and memo[0].shape == ident.shape
            and memo[0].device == ident.device
            and torch.equal(memo[0], ident)
        ):
            return memo[3]
        shape = self.template + torch.einsum("vci,bi->bvc", self.identity_basis, ident)
        self._identity_memo = (ident.clone(), self.identity_basis, self.identity_basis._version, shape)
        return shape

    def local_rotations(self, params: HeadParams) -> Tensor:
        """Per-joint local rotation matrices [B, J, 3, 3]: identity except jaw and eyes."""
        b = params.batch_size
        eye = torch.eye(3, dtype=self.template.dtype, device=self.template.device)
        mats = [eye.expand(b, 3, 3)] * self.num_joints
        mats[self.jaw_joint] = roma.rotvec_to_rotmat(params.jaw.to(self.template))
        if self.eye_joints is not None:
            eyes = params.eyes.to(self.template)
            mats[self.eye_joints[0]] = roma.rotvec_to_rotmat(eyes[:, :3])
            mats[self.eye_joints[1]] = roma.rotvec_to_rotmat(eyes[:, 3:])
        return torch.stack(mats, dim=1)

    def forward(self, params: HeadParams) -> HeadMesh:
        """Vertices, landmarks and posed joints for ``params`` (global pose not applied)."""
        ident, expr = self._coefficients(params)
        b = params.batch_size
        shaped = self._shaped(ident, expr)  # [B, V, 3]
        rest = torch.einsum("jv,bvc->bjc", self.joint_regressor, shaped)  # [B, J, 3]
        rot = self.local_rotations(params)  # [B, J, 3, 3]
        eye = torch.eye(3, dtype=shaped.dtype, device=shaped.device)

        posed = shaped
        if self.pose_basis is not None and self.num_joints > 1:
            feature = (rot[:, 1:] - eye).reshape(b, -1)  # [B, 9·(J-1)] row-major
            posed = shaped + torch.einsum("vcp,bp->bvc", self.pose_basis, feature)

        # Forward kinematics, written as deltas from the rest pose so zero rotations are exact:
        # global rotation Gr_j = Gr_parent · R_j; displacement of the joint d_j = G_j.t - rest_j
        # obeys d_j = d_parent + (Gr_parent - I)(rest_j - rest_parent), d_root = 0.
        g_rot = [rot[:, 0]]
        disp = [torch.zeros_like(rest[:, 0])]
        for k in range(1, self.num_joints):
            p = self.parents[k]
            g_rot.append(g_rot[p] @ rot[:, k])
            bone = rest[:, k] - rest[:, p]  # [B, 3]
            disp.append(disp[p] + ((g_rot[p] - eye) @ bone[..., None])[..., 0])
        g_minus_i = torch.stack(g_rot, 1) - eye  # [B, J, 3, 3]
        disp_t = torch.stack(disp, 1)  # [B, J, 3]
        # Per-joint affine delta: x -> (Gr_j - I)(x - rest_j) + d_j = (Gr_j - I) x + c_j.
        c = disp_t - (g_minus_i @ rest[..., None])[..., 0]  # [B, J, 3]
        m_v = torch.einsum("vj,bjxy->bvxy", self.skin_weights, g_minus_i)  # [B, V, 3, 3]
        c_v = torch.einsum("vj,bjx->bvx", self.skin_weights, c)  # [B, V, 3]
        vertices = posed + (m_v @ posed[..., None])[..., 0] + c_v  # [B, V, 3]

        joints = rest + disp_t  # [B, J, 3]
        return HeadMesh(vertices=vertices, landmarks=self.landmarks(vertices), joints=joints)

    def landmarks(self, vertices: Tensor) -> Tensor:
        """Landmarks [B, L, 3] of vertices [B, V, 3] by barycentric interpolation."""
        corners = vertices[:, self.faces[self.landmark_faces]]  # [B, L, 3 corners, 3]
        return (self.landmark_barycentric[None, :, :, None] * corners).sum(2)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, vertices={self.num_vertices}, faces={self.faces.shape[0]}, "
            f"identity_dim={self.identity_dim}, expressions={self.expression_dim}, joints={self.num_joints}, "
            f"pose_basis={self.pose_basis is not None}"
        )


    def landmark_rig(self, landmarks: Tensor | None = None) -> LandmarkRig:
        """This model restricted to ``landmarks`` (indices; default all): an exact, cheap
        evaluator of just those points for landmark fits (``gshead.core.components.LandmarkRigHead``)."""
        return LandmarkRig(self, landmarks)

# ------------------------------------------------------------------ landmarks only
class LandmarkRig:
    """``LinearHeadModel`` restricted to some of its landmarks: exact, and a few hundred times
    cheaper than the full mesh (what a landmark fit evaluates hundreds of times per frame).

    A landmark is ``Σ bary · vertex`` over its triangle's corners, and every step of the model is
    per vertex except the rest joints (``joint_regressor @ shaped``, linear in the coefficients).
    So only the corner vertices' rows of template, bases, pose correctives and skin weights are
    kept (``C`` corners), plus the joints' rows of the regressed template and bases::

        shaped_c = template_c + basis_c · coefficients        [.., C, 3]
        rest     = joint_template + joint_basis · coefficients [.., J, 3]

    ``template``/``basis`` may be replaced by ``with_identity`` (identity folded in, only the
    expression columns left), so a per-frame fit never touches the identity basis. Every method is
    plain tensor code (no data-dependent control flow), usable under ``torch.func`` transforms.
    """

    def __init__(self, model: LinearHeadModel, landmarks: Tensor | None = None) -> None:
        lmk = torch.arange(len(model.landmark_names)) if landmarks is None else landmarks.long().cpu()
        dev = model.template.device
        tri = model.faces[model.landmark_faces[lmk.to(dev)]]  # [K, 3] vertex ids
        corners, inverse = torch.unique(tri.reshape(-1), return_inverse=True)
        self.corner_index = inverse.view(-1, 3)  # [K, 3] into the C corners
        self.barycentric = model.landmark_barycentric[lmk.to(dev)]  # [K, 3]
        basis = torch.cat([model.identity_basis, model.expression_basis], 2)  # [V, 3, I + E]
        self.identity_dim = model.identity_dim
        self.template = model.template[corners]  # [C, 3]
        self.basis = basis[corners]  # [C, 3, I + E]
        self.joint_template = model.joint_regressor @ model.template  # [J, 3]
        self.joint_basis = torch.einsum("jv,vcn->jcn", model.joint_regressor, basis)  # [J, 3, I + E]
        self.pose_basis = None if model.pose_basis is None else model.pose_basis[corners]
        self.skin_weights = model.skin_weights[corners]  # [C, J]
        self.parents = model.parents
        self.jaw_joint = model.jaw_joint
        self.eye_joints = model.eye_joints

    def with_identity(self, identity: Tensor, columns: Tensor) -> LandmarkRig:
        """A copy with ``identity`` [I] folded into the template and only basis ``columns`` kept
        (indices into the I + E coefficient columns, e.g. ``I + expression indices``)."""
        rig = object.__new__(LandmarkRig)
        rig.__dict__.update(self.__dict__)
        ident = identity.to(self.template)
        i = self.identity_dim
        rig.template = self.template + self.basis[..., :i] @ ident
        rig.joint_template = self.joint_template + self.joint_basis[..., :i] @ ident
        rig.basis = self.basis[..., columns]
        rig.joint_basis = self.joint_basis[..., columns]
        rig.identity_dim = 0
        return rig

    def rotations(self, jaw: Tensor, eyes: Tensor | None = None) -> Tensor:
        """Local joint rotations [.., J, 3, 3] from jaw [.., 3] and eyes [.., 6] axis-angles."""
        eye = torch.eye(3, dtype=jaw.dtype, device=jaw.device).expand(*jaw.shape[:-1], 3, 3)
        mats = [eye] * len(self.parents)
        mats[self.jaw_joint] = rotvec_to_rotmat(jaw)
        if self.eye_joints is not None and eyes is not None:
            mats[self.eye_joints[0]] = rotvec_to_rotmat(eyes[..., :3])
            mats[self.eye_joints[1]] = rotvec_to_rotmat(eyes[..., 3:])
        return torch.stack(mats, -3)

    def skin(self, shaped: Tensor, rest: Tensor, rot: Tensor, offsets: Tensor | None = None) -> Tensor:
        """Landmarks [.., K, 3] of corners ``shaped`` [.., C, 3] with rest joints [.., J, 3] posed by
        local rotations ``rot`` [.., J, 3, 3] (``LinearHeadModel.forward``'s delta form).

        Linear in (shaped, rest) for fixed ``rot``; ``offsets`` [.., C, 3] (pose correctives) are
        added to ``shaped`` before skinning but take no part in the rest joints."""
        eye = torch.eye(3, dtype=shaped.dtype, device=shaped.device)
        posed = shaped if offsets is None else shaped + offsets
        g_rot = [rot[..., 0, :, :]]
        disp = [torch.zeros_like(rest[..., 0, :])]
        for k in range(1, len(self.parents)):
            p = self.parents[k]
            g_rot.append(g_rot[p] @ rot[..., k, :, :])
            bone = rest[..., k, :] - rest[..., p, :]
            disp.append(disp[p] + ((g_rot[p] - eye) @ bone[..., None])[..., 0])
        g_minus_i = torch.stack(g_rot, -3) - eye  # [.., J, 3, 3]
        c = torch.stack(disp, -2) - (g_minus_i @ rest[..., None])[..., 0]  # [.., J, 3]
        m_v = torch.einsum("vj,...jxy->...vxy", self.skin_weights, g_minus_i)  # [.., C, 3, 3]
        c_v = torch.einsum("vj,...jx->...vx", self.skin_weights, c)
        verts = posed + (m_v @ posed[..., None])[..., 0] + c_v  # [.., C, 3]
        corners = verts[..., self.corner_index, :]  # [.., K, 3, 3]
        return (self.barycentric[..., None] * corners).sum(-2)

    def pose_offsets(self, rot: Tensor) -> Tensor | None:
        """Pose-corrective offsets [.., C, 3] of local rotations [.., J, 3, 3] (None without a basis)."""
        if self.pose_basis is None or len(self.parents) < 2:
            return None
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        feature = (rot[..., 1:, :, :] - eye).flatten(-3)  # [.., 9·(J-1)]
        return torch.einsum("vcp,...p->...vc", self.pose_basis, feature)

    def __call__(self, coefficients: Tensor, jaw: Tensor, eyes: Tensor | None = None) -> Tensor:
        """Landmarks [.., K, 3] for basis ``coefficients`` [.., N], jaw [.., 3], eyes [.., 6]."""
        shaped = self.template + (self.basis @ coefficients[..., None, :, None])[..., 0]
        rest = self.joint_template + (self.joint_basis @ coefficients[..., None, :, None])[..., 0]
        rot = self.rotations(jaw, eyes)
        return self.skin(shaped, rest, rot, self.pose_offsets(rot))
