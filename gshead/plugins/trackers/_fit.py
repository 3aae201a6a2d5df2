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

from typing import Any

import math
import warnings

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
) -> tuple[Tensor, Tensor, Tensor]:
    """(x [B, 9 + E'], identity [I], projected landmarks [B, K, 2]); see the module docstring."""
    b, k = targets.shape[:2]
    dev = targets.device
    n_e, n_i = len(expr_index), head.identity_dim
    sizes = [3, 3, 3, n_e]
    jaw_sqrt = (torch.tensor([1.0, 100.0, 100.0], device=dev) * jaw_weight).sqrt()
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
    local = rig.with_identity(z, n_i + expr_index.to(dev))
    nearest = (torch.arange(b, device=dev)[:, None] - sub[None]).abs().argmin(1)
    x = xs[nearest].clone()
    x[sub] = xs  # the stage-1 frames start from their own solution
    empty = torch.zeros(0, device=dev)
    r, uv = residual(local, x, empty.expand(b, 0), targets, w2c, intrinsics)
    current = r.double().square().sum(1)  # [B]
    mu = torch.full((b,), 1e-3, dtype=torch.float64, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=dev)
    for _ in range(max(iterations, 1) * 2):
        if not bool(active.any()):
            break
        jx, _, _ = jac_x(local, x, empty, targets, w2c, intrinsics)
        jx, rd = jx.double(), r.double()
        a = jx.transpose(1, 2) @ jx
        g = (jx.transpose(1, 2) @ rd[..., None])[..., 0]
        damp = mu[:, None, None] * (a.diagonal(dim1=1, dim2=2)[..., None] * eye + 1e-9 * eye)
        dx = -torch.linalg.solve(a + damp, g[..., None])[..., 0]
        dx = torch.where(active[:, None], dx, torch.zeros_like(dx))
        x_new = x + dx.float()
        r_new, uv_new = residual(local, x_new, empty.expand(b, 0), targets, w2c, intrinsics)
        new = r_new.double().square().sum(1)
        better = active & torch.isfinite(new) & (new < current)
        converged = better & ((current - new < 1e-6 * current) | (dx.abs().amax(1) < 1e-6))
        x = torch.where(better[:, None], x_new, x)
        r = torch.where(better[:, None], r_new, r)
        uv = torch.where(better[:, None, None], uv_new, uv)
        current = torch.where(better, new, current)
        mu = torch.where(better, (mu / 3.0).clamp_min(1e-9), mu * 4.0)
        active = active & ~converged & (mu < 1e8)
    return x, z, uv
