"""The fast landmark fit of the ``mediapipe`` tracker, for head models with ``landmark_rig`` (the linear ones).

Same cost function as ``mediapipe.fit_landmarks``'s generic path (mean squared reprojection error
in percent of the image side, squared-coefficient priors), minimised in two stages:

1. **Identity**, jointly with pose, jaw and expression, on up to ``identity_frames`` frames spread
   over the batch (all of them for small batches): Levenberg-Marquardt with the shared identity
   solved on the Schur complement, as before.
2. **Per frame**, identity fixed (folded into the template): head rotation and translation, jaw
   and the expression units, each frame warm-started from the nearest stage-1 frame's solution,
   by a batched Levenberg-Marquardt with per-frame damping and per-frame convergence.

Nothing evaluates the full mesh: ``LandmarkRig`` keeps only the landmarks' triangle corners and
the joints' rows (exact, see ``gshead.plugins.headmodels._linear.LandmarkRig``, reached through the head model's ``landmark_rig``). Jacobians with respect to the per-frame
parameters come from ``torch.func.jacfwd`` (vectorised over the ~15 directions and the frames,
one call per iteration); the identity's are analytic: the landmarks are linear in the identity for
fixed rotations, so their columns are the rig's skinning applied to the identity basis, chained
with the projection's 2x3 Jacobian per landmark.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from gshead.core.components import LandmarkRigHead
from gshead.core.geometry import rotvec_to_rotmat


def _project(points: Tensor, rot: Tensor, trans: Tensor, w2c: Tensor, k: Tensor) -> Tensor:
    """Pixels [.., K, 2] of head-space points [.., K, 3] posed by (rot, trans), seen by (w2c, k)."""
    r = rotvec_to_rotmat(rot)
    world = points @ r.transpose(-1, -2) + trans[..., None, :]
    cam = world @ w2c[..., :3, :3].transpose(-1, -2) + w2c[..., None, :3, 3]
    h = cam @ k.transpose(-1, -2)
    return h[..., :2] / h[..., 2:].clamp_min(1e-6)


def fit_linear(
    head: LandmarkRigHead,
    targets: Tensor,  # [B, K, 2]
    w2c: Tensor,  # [B, 4, 4]
    intrinsics: Tensor,  # [B, 3, 3]
    unit: float,
    indices: Tensor,  # [K]
    expr_index: Tensor,  # [E']
    x0: Tensor,  # [B, 9 + E'] initial (rotation, translation, jaw, expression)
    iterations: int,
    identity_weight: float,
    expression_weight: float,
    jaw_weight: float,
    identity_frames: int = 4,
    identity: Tensor | None = None,  # [I] known identity: stage 1 is skipped
    jaw_rig: JawRig | None = None,  # with identity: its JawRig, when the caller keeps one
) -> tuple[Tensor, Tensor, Tensor]:
    """(x [B, 9 + E'], identity [I], projected landmarks [B, K, 2]); see the module docstring.

    With ``identity`` given (a sequence whose identity was fitted on its first frames), only
    stage 2 runs, every frame starting from its row of ``x0``."""
    b, k = targets.shape[:2]
    dev = targets.device
    n_e, n_i = len(expr_index), head.identity_dim
    sizes = [3, 3, 3, n_e]
    jaw_sqrt = (torch.tensor([1.0, 100.0, 100.0], device=dev) * jaw_weight).sqrt()
    if identity is not None:
        z = identity.to(dev, targets.dtype)
        if jaw_rig is None:
            jaw_rig = JawRig.for_identity(head.landmark_rig(indices), z, expr_index.to(dev))
        x, uv = fit_frames(
            jaw_rig, targets, w2c, intrinsics, unit, x0, max(iterations, 1) * 2, expression_weight, jaw_weight
        )
        return x, z, uv
    rig = head.landmark_rig(indices)
    columns = torch.cat([torch.arange(n_i, device=dev), n_i + expr_index.to(dev)])
    full = rig.with_identity(torch.zeros(n_i, device=dev), columns)  # identity as coefficients
    full.identity_dim = n_i
    scale = 1.0 / (unit * math.sqrt(k))

    def residual(rig_: Any, x: Tensor, z: Tensor, target: Tensor, w: Tensor, kk: Tensor):
        rot, trans, jaw, expr = x.split(sizes, -1)
        coef = torch.cat([z, expr], -1)
        uv = _project(rig_(coef, jaw), rot, trans, w, kk)
        data = ((uv - target) * scale).flatten(-2)
        return torch.cat([data, expression_weight**0.5 * expr, jaw * jaw_sqrt], -1), uv

    def jac_x(rig_, x, z, t, w, kk):
        def f(x1, t1, w1, k1):
            r1, uv1 = residual(rig_, x1, z, t1, w1, k1)
            return r1, (r1, uv1)

        with warnings.catch_warnings():
            # forward-AD decompositions load through torch.jit.script, which warns in torch 2.13
            warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", DeprecationWarning)
            j, (r, uv) = torch.func.vmap(torch.func.jacfwd(f, has_aux=True))(x, t, w, kk)
        return j, r, uv

    # ---------------------------------------------------------------- stage 1: identity
    n_id = min(b, max(1, identity_frames))
    sub = torch.linspace(0, b - 1, n_id, device=dev).round().long().unique()
    xs, ts, ws, ks = x0[sub].clone(), targets[sub], w2c[sub], intrinsics[sub]
    z = torch.zeros(n_i, device=dev)
    m = len(sub)

    def z_jacobian(x: Tensor, z: Tensor) -> Tensor:
        """d data residuals / d identity [m, 2K, I] (analytic), zero rows for the priors."""
        rot, trans, jaw, expr = x.split(sizes, -1)
        rotj = full.rotations(jaw)  # [m, J, 3, 3]
        basis = full.basis[..., :n_i].permute(2, 0, 1)  # [I, C, 3]
        jbasis = full.joint_basis[..., :n_i].permute(2, 0, 1)  # [I, J, 3]
        a_z = full.skin(basis.expand(len(x), -1, -1, -1), jbasis.expand(len(x), -1, -1, -1), rotj[:, None])  # [m, I, K, 3] (linear part)
        pts = full(torch.cat([z.expand(len(x), -1), expr], -1), jaw)  # [m, K, 3]
        r = rotvec_to_rotmat(rot)
        m_cam = ks @ ws[:, :3, :3] @ r  # [m, 3, 3]  d h / d point
        h = (pts @ r.transpose(1, 2) + trans[:, None]) @ ws[:, :3, :3].transpose(1, 2) + ws[:, None, :3, 3]
        h = h @ ks.transpose(1, 2)  # [m, K, 3]
        inv = 1.0 / h[..., 2:].clamp_min(1e-6)  # [m, K, 1]
        uv = h[..., :2] * inv
        d_uv_h = torch.cat([torch.diag_embed(inv.expand(-1, -1, 2)), -(uv * inv)[..., None]], -1)
        d_uv_p = d_uv_h @ m_cam[:, None]  # [m, K, 2, 3]
        jz = torch.einsum("mkab,mikb->mkai", d_uv_p, a_z) * scale  # [m, K, 2, I]
        jz = jz.reshape(len(x), 2 * k, n_i)
        return torch.cat([jz, torch.zeros(len(x), n_e + 3, n_i, device=dev)], 1)

    def cost(r: Tensor, zz: Tensor, count: int) -> float:
        return float(r.double().square().sum() + count * identity_weight * zz.double().square().sum())

    if n_i:
        r, _ = residual(full, xs, z.expand(m, -1), ts, ws, ks)
        current, mu = cost(r, z, m), 1e-3
        n = xs.shape[1]
        eye_x = torch.eye(n, dtype=torch.float64, device=dev)
        eye_z = torch.eye(n_i, dtype=torch.float64, device=dev)
        for _ in range(iterations):
            jx, r, _ = jac_x(full, xs, z, ts, ws, ks)
            jx, jz, rd = jx.double(), z_jacobian(xs, z).double(), r.double()
            a = jx.transpose(1, 2) @ jx
            c = jx.transpose(1, 2) @ jz
            dmat = (jz.transpose(1, 2) @ jz).sum(0) + m * identity_weight * eye_z
            gx = (jx.transpose(1, 2) @ rd[..., None])[..., 0]
            gz = (jz.transpose(1, 2) @ rd[..., None])[..., 0].sum(0) + m * identity_weight * z.double()
            improved = done = False
            for _ in range(12):
                ad = a + mu * (a.diagonal(dim1=1, dim2=2)[..., None] * eye_x + 1e-9 * eye_x)
                ainv_c = torch.linalg.solve(ad, c)
                ainv_g = torch.linalg.solve(ad, gx[..., None])[..., 0]
                dd = dmat + mu * (dmat.diagonal()[:, None] * eye_z + 1e-9 * eye_z)
                schur = dd - (c.transpose(1, 2) @ ainv_c).sum(0)
                rhs = -(gz - (c.transpose(1, 2) @ ainv_g[..., None])[..., 0].sum(0))
                dz = torch.linalg.solve(schur, rhs)
                dx = -(ainv_g + (ainv_c @ dz[:, None])[..., 0])
                x_new, z_new = xs + dx.float(), z + dz.float()
                r_new, _ = residual(full, x_new, z_new.expand(m, -1), ts, ws, ks)
                new = cost(r_new, z_new, m)
                if math.isfinite(new) and new < current:
                    improved = True
                    done = current - new < 1e-6 * current or float(dx.abs().max()) < 1e-6
                    xs, z, current = x_new, z_new, new
                    mu = max(mu / 3.0, 1e-9)
                    break
                mu *= 4.0
            if not improved or done:
                break

    # ---------------------------------------------------------------- stage 2: per frame
    nearest = (torch.arange(b, device=dev)[:, None] - sub[None]).abs().argmin(1)
    x = xs[nearest].clone()
    x[sub] = xs  # the stage-1 frames start from their own solution
    jaw_rig = JawRig.for_identity(rig, z, expr_index.to(dev))
    x, uv = fit_frames(
        jaw_rig, targets, w2c, intrinsics, unit, x, max(iterations, 1) * 2, expression_weight, jaw_weight
    )
    return x, z, uv


# ------------------------------------------------------------------------------ per-frame fit
FRAME_TOLERANCE = 1e-4
"""A frame's fit stops once a step lowers its cost by less than this fraction (or moves no
parameter by 1e-6)."""


class JawRig:
    """A ``LandmarkRig`` with its identity folded in, in closed form for the per-frame fit.

    With every joint but the jaw at rest, linear blend skinning reduces to one rotation about the
    jaw joint blended by each corner's total skin weight ``s`` on the jaw's subtree (the joints'
    chain terms cancel), and everything else is linear in the expression coefficients ``e``.
    Summed over each landmark's barycentric corners::

        landmark = P + (R - I) Q,   P = p0 + pb e + o f,   Q = q0 + qb e + os f,   f = vec(R - I)

    (``o``/``os``: the pose correctives of the jaw, absent without a pose basis). Exact: equal to
    ``rig(e, jaw)`` with the eyes at rest (checked in the tests), and a few matrix products per
    frame, so its Jacobian is written out (``fit_frames``) instead of differentiated through.
    """

    def __init__(self, rig: Any) -> None:
        parents, jaw = rig.parents, rig.jaw_joint
        subtree = {jaw}
        for k, p in enumerate(parents):  # parents come before their children
            if p in subtree:
                subtree.add(k)
        s = rig.skin_weights[:, sorted(subtree)].sum(1)  # [C]
        rest, rest_b = rig.joint_template[jaw], rig.joint_basis[jaw]  # [3], [3, E]
        bary, corner = rig.barycentric, rig.corner_index  # [K, 3], [K, 3]

        def at_landmarks(per_corner: Tensor) -> Tensor:  # [C, ...] -> [K, ...]
            shape = (*bary.shape, *([1] * (per_corner.dim() - 1)))
            return (bary.view(shape) * per_corner[corner]).sum(1)

        self.p0 = at_landmarks(rig.template)  # [K, 3]
        self.pb = at_landmarks(rig.basis)  # [K, 3, E]
        self.q0 = at_landmarks(s[:, None] * (rig.template - rest))  # [K, 3]
        self.qb = at_landmarks(s[:, None, None] * (rig.basis - rest_b))  # [K, 3, E]
        self.o = self.os = None
        if rig.pose_basis is not None and len(parents) > 1:
            block = rig.pose_basis[:, :, 9 * (jaw - 1) : 9 * jaw]  # [C, 3, 9] the jaw's correctives
            self.o = at_landmarks(block)  # [K, 3, 9]
            self.os = at_landmarks(s[:, None, None] * block)

    @classmethod
    def for_identity(cls, rig: Any, identity: Tensor, expr_index: Tensor) -> JawRig:
        """The jaw rig of a ``LandmarkRig`` with ``identity`` [I] folded in and the expression
        units ``expr_index`` [E] kept."""
        return cls(rig.with_identity(identity, rig.identity_dim + expr_index))

    def parts(self, expression: Tensor, jaw: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """(P [B, K, 3], Q [B, K, 3]) for expression [B, E], jaw [B, 3] and its rotation ``r`` [B, 3, 3]."""
        p = self.p0 + torch.einsum("kxe,be->bkx", self.pb, expression)
        q = self.q0 + torch.einsum("kxe,be->bkx", self.qb, expression)
        if self.o is not None:
            f = (r - torch.eye(3, dtype=r.dtype, device=r.device)).flatten(-2)  # [B, 9]
            p = p + torch.einsum("kxf,bf->bkx", self.o, f)
            q = q + torch.einsum("kxf,bf->bkx", self.os, f)
        return p, q

    def __call__(self, expression: Tensor, jaw: Tensor) -> Tensor:
        """Landmarks [B, K, 3] for expression [B, E] and jaw [B, 3] (axis-angle)."""
        r = rotvec_to_rotmat(jaw)
        p, q = self.parts(expression, jaw, r)
        return p + q @ (r - torch.eye(3, dtype=r.dtype, device=r.device)).transpose(1, 2)


def frame_residuals(
    rig: JawRig,
    x: Tensor,  # [B, 9 + E] (rotation, translation, jaw, expression)
    targets: Tensor,  # [B, K, 2]
    w2c: Tensor,  # [B, 4, 4]
    intrinsics: Tensor,  # [B, 3, 3]
    unit: float,
    expression_weight: float,
    jaw_weight: float,
    jacobian: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(residuals [B, 2K + E + 3], projected landmarks [B, K, 2], Jacobian [B, 2K + E + 3, 9 + E]
    or None) of ``fit_frames``'s cost, the Jacobian written out analytically."""
    from gshead.core.geometry import rotvec_derivatives

    b, k = targets.shape[:2]
    dev, dt = targets.device, targets.dtype
    n = x.shape[1]
    n_e = n - 9
    scale = 1.0 / (unit * math.sqrt(k))
    jaw_sqrt = (torch.tensor([1.0, 100.0, 100.0], device=dev, dtype=dt) * jaw_weight).sqrt()
    m3 = intrinsics @ w2c[:, :3, :3]  # [B, 3, 3] world -> homogeneous pixels
    c3 = (intrinsics @ w2c[:, :3, 3:])[..., 0]  # [B, 3]
    eye3 = torch.eye(3, dtype=dt, device=dev)
    rot, trans, jaw, expr = x.split([3, 3, 3, n_e], -1)
    both = torch.stack([rot, jaw], 1)  # [B, 2, 3] head, jaw: one call each below, not two
    rh, rj = rotvec_to_rotmat(both).unbind(1)
    p, q = rig.parts(expr, jaw, rj)
    a = rj - eye3
    lm = p + q @ a.transpose(1, 2)  # [B, K, 3]
    world = lm @ rh.transpose(1, 2) + trans[:, None]
    h = world @ m3.transpose(1, 2) + c3[:, None]  # [B, K, 3]
    inv = 1.0 / h[..., 2:].clamp_min(1e-6)
    uv = h[..., :2] * inv
    res = torch.cat([((uv - targets) * scale).flatten(1), expression_weight**0.5 * expr, jaw * jaw_sqrt], 1)
    if not jacobian:
        return res, uv, None
    # d uv / d world [B, K, 2, 3]
    d_uv = (m3[:, None, :2, :] - uv[..., :, None] * m3[:, None, 2:, :]) * inv[..., None]
    d_rh, d_rj = rotvec_derivatives(both).unbind(1)  # [B, 3(a), 3, 3] each
    d_rot = torch.einsum("baxy,bky->bkxa", d_rh, lm)  # [B, K, 3, 3(a)] d world / d rotation
    d_lm_jaw = torch.einsum("baxy,bky->bkxa", d_rj, q)  # (dR_a) Q
    if rig.o is not None:
        df = d_rj.flatten(-2)  # [B, 3(a), 9]
        d_lm_jaw = d_lm_jaw + torch.einsum("kxf,baf->bkxa", rig.o, df)
        d_lm_jaw = d_lm_jaw + torch.einsum("bxy,kyf,baf->bkxa", a, rig.os, df)
    d_lm_expr = rig.pb + torch.einsum("bxy,kye->bkxe", a, rig.qb)  # [B, K, 3, E]
    d_lm = torch.cat([d_lm_jaw, d_lm_expr], -1)  # [B, K, 3, 3 + E]
    d_world = torch.cat(
        [d_rot, eye3.expand(b, k, 3, 3), torch.einsum("bxy,bkyn->bkxn", rh, d_lm)], -1
    )  # [B, K, 3, n]
    j_data = (d_uv @ d_world * scale).reshape(b, 2 * k, n)
    j_prior = torch.zeros(b, n_e + 3, n, dtype=dt, device=dev)
    j_prior[:, :n_e, 9:] = expression_weight**0.5 * torch.eye(n_e, dtype=dt, device=dev)
    j_prior[:, n_e:, 6:9] = torch.diag(jaw_sqrt)
    return res, uv, torch.cat([j_data, j_prior], 1)


def fit_frames(
    rig: JawRig,
    targets: Tensor,  # [B, K, 2]
    w2c: Tensor,  # [B, 4, 4]
    intrinsics: Tensor,  # [B, 3, 3]
    unit: float,
    x0: Tensor,  # [B, 9 + E] initial (rotation, translation, jaw, expression)
    iterations: int,
    expression_weight: float,
    jaw_weight: float,
    tolerance: float = FRAME_TOLERANCE,
) -> tuple[Tensor, Tensor]:
    """Per-frame Levenberg-Marquardt of head rotation, translation, jaw and expression with the
    identity fixed: (x [B, 9 + E], projected landmarks [B, K, 2]).

    Same residuals as ``fit_linear`` (reprojection in percent of the image side over sqrt(K), the
    expression and jaw priors); the Jacobian is analytic (``JawRig``, ``rotvec_derivatives`` and
    the pinhole's 2x3 derivative), frames are damped and stopped independently, and a frame's
    Jacobian is reused while its step is being rejected. A good ``x0`` (the previous frame) makes
    it converge in a few iterations.
    """
    b, n = x0.shape
    dev, dt = targets.device, targets.dtype

    def evaluate(x: Tensor, jacobian: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        return frame_residuals(
            rig, x, targets, w2c, intrinsics, unit, expression_weight, jaw_weight, jacobian
        )

    x = x0.to(dt).clone()
    r, uv, jac = evaluate(x, True)
    current = r.double().square().sum(1)  # [B]
    mu = torch.full((b,), 1e-3, dtype=torch.float64, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    eye = torch.eye(n, dtype=torch.float64, device=dev)
    jd = jac.double()
    a_mat = jd.transpose(1, 2) @ jd
    g = (jd.transpose(1, 2) @ r.double()[..., None])[..., 0]
    for _ in range(max(iterations, 1)):
        if not bool(active.any()):
            break
        damp = mu[:, None, None] * (a_mat.diagonal(dim1=1, dim2=2)[..., None] * eye + 1e-9 * eye)
        dx = -torch.linalg.solve(a_mat + damp, g[..., None])[..., 0]
        dx = torch.where(active[:, None], dx, torch.zeros_like(dx))
        x_new = x + dx.to(dt)
        r_new, uv_new, jac_new = evaluate(x_new, True)
        new = r_new.double().square().sum(1)
        better = active & torch.isfinite(new) & (new < current)
        converged = better & ((current - new < tolerance * current) | (dx.abs().amax(1) < 1e-6))
        x = torch.where(better[:, None], x_new, x)
        r = torch.where(better[:, None], r_new, r)
        uv = torch.where(better[:, None, None], uv_new, uv)
        if bool(better.any()):
            jd_new = jac_new.double()
            a_mat = torch.where(better[:, None, None], jd_new.transpose(1, 2) @ jd_new, a_mat)
            g_new = (jd_new.transpose(1, 2) @ r_new.double()[..., None])[..., 0]
            g = torch.where(better[:, None], g_new, g)
        current = torch.where(better, new, current)
        mu = torch.where(better, (mu / 3.0).clamp_min(1e-9), mu * 4.0)
        active = active & ~converged & (mu < 1e8)
    return x, uv
