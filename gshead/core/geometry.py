"""Shared geometry, each convention written once. Pure torch.

Conventions (every module of gshead uses these, none writes its own):

- **Quaternions** are stored (w, x, y, z), scalar first, as in ``Gaussians.quats`` and the 3DGS
  PLY. roma (and scipy) use (x, y, z, w): cross only through ``quat_wxyz_to_xyzw`` and
  ``quat_xyzw_to_wxyz``. ``quat_to_rotmat``, ``rotmat_to_quat`` and ``quat_multiply`` work in
  (w, x, y, z).
- **Cameras** are OpenCV pinholes (x right, y down, z forward); ``project_points`` maps world
  points to pixels, ``view_direction`` is the unit vector from the world origin towards the
  camera along its optical axis.
- **Harmonic code**: ``harmonic_encoding`` is ``[x, sin(x), cos(x), sin(2x), cos(2x), ...]``.

Binding points (Gaussian centres) to a triangle mesh and moving them with it:

A bound point remembers a triangle, the barycentric coordinates of its *closest point on that
triangle* (the anchor: all weights >= 0, summing to 1) and its offset from the anchor expressed
in the triangle's frame. When the mesh deforms, the point follows the anchor and the frame::

    point = Σ_k barycentric[k] · corner_k  +  R_face · offset

Triangle frame (columns of ``R_face``, right-handed, orthonormal):
    e1 = unit(v1 - v0)                  along the first edge
    e3 = unit((v1 - v0) × (v2 - v0))    the face normal (outward for counter-clockwise faces)
    e2 = e3 × e1                        in the plane, pointing towards v2
The frame *origin* returned by ``face_frames`` is the triangle's centroid; bindings do not use
it (they anchor at their own barycentric point), so it is only a convenient per-face position.

Offsets are metric (not scaled with the triangle), so a rigid motion of the mesh moves bound
points rigidly, and a Gaussian's rotation follows ``R_now · R_rest⁻¹`` (see ``posed_rotations``).
Degenerate (zero-area) triangles have no defined normal; avoid them in meshes used for binding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.errors import ShapeError
from gshead.core.types import Camera, CropBox, Gaussians, MeshBinding

__all__ = [
    "frames_from_corners",
    "body_weights",
    "still_body",
    "held_still",
    "torso_held",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_wxyz",
    "quat_to_rotmat",
    "rotmat_to_quat",
    "quat_multiply",
    "rotvec_derivatives",
    "rotvec_to_rotmat",
    "project_points",
    "view_direction",
    "harmonic_encoding",
    "crop_square",
    "fill_holes",
    "face_frames",
    "bind_to_mesh",
    "posed_points",
    "posed_rotations",
    "posed_frames",
]


# -- quaternions (w, x, y, z) -------------------------------------------------------------------
def quat_wxyz_to_xyzw(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z) -> [..., 4] (x, y, z, w), the order of roma and scipy."""
    return torch.cat([quats[..., 1:], quats[..., :1]], dim=-1)


def quat_xyzw_to_wxyz(quats: Tensor) -> Tensor:
    """[..., 4] (x, y, z, w) -> [..., 4] (w, x, y, z), gshead's order."""
    return torch.cat([quats[..., 3:], quats[..., :3]], dim=-1)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (w, x, y, z) of any norm (normalised
    first). Written out rather than through roma so it is cheap and twice differentiable."""
    q = F.normalize(quats, p=2.0, dim=-1)  # [..., 4]
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(rotations: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z).

    Shepperd's method, as ``roma.rotmat_to_unitquat`` computes it (same pivot choice, the largest
    of the diagonal and the trace, and the same sign: the pivot component positive), without its
    per-branch index assignments: the four candidate rows are formed and the pivot's gathered
    (about 5x faster on a few thousand matrices, the driver's per-frame case)."""
    m = rotations.reshape(*rotations.shape[:-2], 9)
    r00, r01, r02, r10, r11, r12, r20, r21, r22 = m.unbind(-1)
    trace = r00 + r11 + r22
    # candidate k (pivot x, y, z, w) in (w, x, y, z) order, each 4 q_pivot times the quaternion
    rows = torch.stack(
        (
            r21 - r12, 1 + r00 - r11 - r22, r01 + r10, r02 + r20,
            r02 - r20, r01 + r10, 1 - r00 + r11 - r22, r12 + r21,
            r10 - r01, r02 + r20, r12 + r21, 1 - r00 - r11 + r22,
            1 + trace, r21 - r12, r02 - r20, r10 - r01,
        ),
        dim=-1,
    ).reshape(*m.shape[:-1], 4, 4)  # fmt: skip
    pivot = torch.stack((r00, r11, r22, trace), dim=-1).argmax(-1)  # [...]
    index = pivot[..., None, None].expand(*pivot.shape, 1, 4)
    return F.normalize(rows.gather(-2, index)[..., 0, :], dim=-1)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of (w, x, y, z) quaternions [..., 4] (broadcast): the rotation
    ``b`` followed by ``a``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def rotvec_to_rotmat(v: Tensor) -> Tensor:
    """Rodrigues' formula [.., 3] -> [.., 3, 3], smooth at zero (Taylor terms below 1e-4 rad) and
    free of data-dependent branches (``torch.func``-safe)."""
    th2 = (v * v).sum(-1, keepdim=True)[..., None]  # [.., 1, 1]
    small = th2 < 1e-8
    safe = torch.where(small, torch.ones_like(th2), th2)
    th = safe.sqrt()
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / safe)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = torch.zeros_like(x)
    k = torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).view(*v.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye + a * k + b * (k @ k)


def rotvec_derivatives(v: Tensor) -> Tensor:
    """Derivatives of ``rotvec_to_rotmat`` [.., 3] -> [.., 3 (component), 3, 3]: entry ``a`` is
    dR/dv_a (Gallego and Yezzi, "A compact formula for the derivative of a 3-D rotation in
    exponential coordinates", 2015). Below |v| = 1e-4 rad, where that formula divides by ~0, the
    series ``[e_a]x + ([e_a]x [v]x + [v]x [e_a]x) / 2`` is used (error O(|v|^2)). Branch-free."""
    r = rotvec_to_rotmat(v)  # [.., 3, 3]
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    basis = _skew(eye)  # [3, 3, 3]: [e_a]x
    th2 = (v * v).sum(-1)[..., None, None, None]  # [.., 1, 1, 1]
    small = th2 < 1e-8
    # v_a [v]x + [v x ((I - R) e_a)]x, all over |v|^2, times R
    i_minus_r = eye - r  # [.., 3, 3]; column a is (I - R) e_a
    cross = torch.linalg.cross(v[..., None, :].expand(*v.shape[:-1], 3, 3), i_minus_r.transpose(-1, -2), dim=-1)
    big = (v[..., :, None, None] * _skew(v)[..., None, :, :] + _skew(cross)) / torch.where(
        small, torch.ones_like(th2), th2
    )
    big = big @ r[..., None, :, :]
    tiny = basis + 0.5 * (_skew(v)[..., None, :, :] @ basis + basis @ _skew(v)[..., None, :, :])
    return torch.where(small, tiny, big)


def _skew(v: Tensor) -> Tensor:
    """[.., 3] -> the cross-product matrices [.., 3, 3] ([v]x w = v x w)."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).view(*v.shape[:-1], 3, 3)


# -- cameras --------------------------------------------------------------------------------------
def project_points(points: Tensor, camera: Camera, min_depth: float = 1e-6) -> Tensor:
    """World points [B, M, 3] -> pixel coordinates [B, M, 2] through ``camera`` [B] (OpenCV
    pinhole; depths below ``min_depth`` are clamped to it)."""
    w2c = camera.world_to_camera  # [B, 4, 4]
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [B, M, 3]
    uvw = cam @ camera.intrinsics.transpose(1, 2)  # [B, M, 3]
    return uvw[..., :2] / uvw[..., 2:].clamp(min=min_depth)


def view_direction(camera: Camera) -> Tensor:
    """Unit vectors [B, 3] from the world origin towards each camera along its optical axis (world frame)."""
    return -F.normalize(camera.world_to_camera[:, 2, :3], dim=-1)  # row 2 of R: the camera's z axis


def harmonic_encoding(x: Tensor, frequencies: int) -> Tensor:
    """[..., D] -> [..., D (1 + 2 F)]: ``[x, sin(x), cos(x), sin(2x), cos(2x), ...]`` up to 2^(F-1)."""
    parts = [x]
    for k in range(frequencies):
        parts += [torch.sin(x * 2.0**k), torch.cos(x * 2.0**k)]
    return torch.cat(parts, dim=-1)


# -- images -------------------------------------------------------------------------------------
def crop_square(image: Tensor, box: CropBox, size: int) -> Tensor:
    """The square ``box`` of ``image`` [B, C, H, W] (black past the borders), resized to [B, C, size, size]."""
    if image.dim() != 4:
        raise ShapeError(f"crop_square: expected an image batch [B, C, H, W], got {list(image.shape)}")
    if size <= 0 or box.side <= 0:
        raise ShapeError(f"crop_square: sizes must be positive, got output {size} and box side {box.side}")
    h, w = image.shape[-2:]
    left, top, side = round(box.left), round(box.top), max(1, round(box.side))
    pad = (max(0, -left), max(0, left + side - w), max(0, -top), max(0, top + side - h))
    if any(pad):
        image = F.pad(image, pad)  # zeros: matted on black
        left, top = left + pad[0], top + pad[2]
    square = image[:, :, top : top + side, left : left + side]  # [B, C, side, side]
    if side == size:
        return square
    resized = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0) if image.is_floating_point() else resized


def fill_holes(image: Tensor, known: Tensor) -> Tensor:
    """``image`` [B, C, H, W] with the pixels where ``known`` [B, 1, H, W] is 0 filled in from
    the known ones around them ("push-pull": mask-weighted averages down a pyramid until nothing
    is unknown, then blended back up coarse to fine). Known pixels are returned unchanged; smooth
    fills, no texture (a background behind a head, not an inpainting network)."""
    weight = known.to(image.dtype).clamp(0, 1)
    levels = [(image * weight, weight)]
    while min(levels[-1][0].shape[-2:]) > 1 and bool((levels[-1][1] <= 0).any()):
        value, w = levels[-1]
        levels.append((F.avg_pool2d(value, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    value, w = levels[-1]
    filled = value / w.clamp_min(1e-8)
    for value, w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=value.shape[-2:], mode="bilinear", align_corners=False)
        own = value / w.clamp_min(1e-8)
        share = w.clamp(0, 1)
        filled = share * own + (1 - share) * up
    return torch.where(known > 0.5, image, filled)


# -- a still torso under a moving head ------------------------------------------------------------
NECK_START = 0.15
NECK_LENGTH = 0.6
"""``body_weights``: the neck blend starts ``NECK_START`` and is complete ``NECK_START +
NECK_LENGTH`` half face heights below the chin."""


def body_weights(means: Tensor, landmarks: Tensor) -> Tensor:
    """How much each point stays with a still torso: [B, N] in [0, 1] for head-space ``means``
    [B, N, 3], from the head model's ``landmarks`` [B, L, 3] (head space, y up). 0 at and above the
    chin (the lowest landmark), rising smoothly (smoothstep) over the neck to 1 below it; lengths
    in half the landmarks' height (about the chin-to-eye distance), so any head model's scale fits."""
    y = landmarks[..., 1]  # [B, L]
    chin = y.amin(1, keepdim=True)  # [B, 1]
    half = 0.5 * (y.amax(1, keepdim=True) - chin).clamp_min(1e-6)
    t = ((chin - NECK_START * half - means[..., 1]) / (NECK_LENGTH * half)).clamp(0.0, 1.0)  # [B, N]
    return t * t * (3.0 - 2.0 * t)


def still_body(gaussians: Gaussians, weight: Tensor, relative: Tensor) -> Gaussians:
    """Head-space ``gaussians`` [1, N] with the parts of weight ``weight`` [1, N] held still while
    the head moves: ``relative`` [B, 4, 4] = pose(frame)^-1 pose(source) takes a point the source
    pose put in the world back into the frame's head space. Linear blend between not moving (0)
    and ``relative`` (1): means x + w (A x - x); rotations turned by the rotation of ``relative``
    blended from the identity by w (normalised linear interpolation of the quaternions: exact at
    0 and 1, within 0.1 degrees of the spherical blend for turns up to 40 degrees, and no
    trigonometry per Gaussian; ``held_still``). Returns [B, N]."""
    b = relative.shape[0]
    moving = (weight[0] > 0).nonzero()[:, 0]  # only the torso and neck: the head's Gaussians stay
    means, quats = held_still(gaussians.means[:, moving], gaussians.quats[:, moving], weight[:, moving], relative)
    all_means = gaussians.means.expand(b, -1, -1).clone()
    all_quats = gaussians.quats.expand(b, -1, -1).clone()
    all_means[:, moving] = means
    all_quats[:, moving] = quats
    return gaussians.moved(all_means, all_quats)


def held_still(means: Tensor, quats: Tensor, weight: Tensor, relative: Tensor) -> tuple[Tensor, Tensor]:
    """``still_body`` on the moving Gaussians only: means [1, K, 3] and quats [1, K, 4] (w, x, y,
    z) of weight ``weight`` [1, K] under ``relative`` [B, 4, 4] -> means [B, K, 3], quats [B, K, 4]."""
    import roma

    a = relative.to(means.dtype)
    w = weight.to(means.dtype)[..., None]  # [1, K, 1]
    moved = means @ a[:, :3, :3].transpose(1, 2) + a[:, None, :3, 3]  # [B, K, 3]
    full = quat_xyzw_to_wxyz(roma.rotmat_to_unitquat(a[:, :3, :3]))[:, None]  # [B, 1, 4]
    full = full * torch.where(full[..., :1] < 0, -1.0, 1.0)  # the short way round
    identity = torch.zeros_like(full)
    identity[..., 0] = 1.0
    turn = F.normalize(identity + w * (full - identity), dim=-1)  # [B, K, 4]
    return means + w * (moved - means), F.normalize(quat_multiply(turn, quats), dim=-1)


def torso_held(gaussians: Gaussians, weight: Tensor, pose: Tensor, source_pose: Tensor) -> Gaussians:
    """``still_body`` for a frame whose head pose is ``pose`` [B, 4, 4] (object to world) when the
    portrait's is ``source_pose`` [1, 4, 4]: the relative motion is ``pose^-1 source_pose``."""
    return still_body(gaussians, weight, torch.linalg.inv(pose) @ source_pose.to(pose))


# -- binding points to a mesh ---------------------------------------------------------------------


def _batched_vertices(name: str, vertices: Tensor) -> Tensor:
    if vertices.dim() == 2:
        vertices = vertices[None]
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ShapeError(f"{name}: expected shape [B, V, 3] or [V, 3], got {list(vertices.shape)}")
    return vertices


def _check_faces(faces: Tensor, num_vertices: int) -> Tensor:
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ShapeError(f"faces: expected shape [F, 3], got {list(faces.shape)}")
    if faces.numel() == 0:
        raise ShapeError("faces: expected at least one triangle")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise ShapeError(f"faces: indices must lie in [0, {num_vertices}), got up to {int(faces.max())}")
    return faces.long()


def frames_from_corners(corners: Tensor) -> Tensor:
    """Rotation [..., 3, 3] (columns e1, e2, e3) of triangles given by corners [..., 3, 3]."""
    v0, v1, v2 = corners.unbind(-2)
    edge = v1 - v0
    e1 = F.normalize(edge, dim=-1, eps=1e-20)
    e3 = F.normalize(torch.linalg.cross(edge, v2 - v0, dim=-1), dim=-1, eps=1e-20)
    e2 = torch.linalg.cross(e3, e1, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def face_frames(vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """One orthonormal frame per triangle.

    ``vertices`` [B, V, 3] (or [V, 3], treated as B = 1); ``faces`` [F, 3] long.
    Returns ``origins`` [B, F, 3] (triangle centroids) and ``rotations`` [B, F, 3, 3] whose
    columns are (edge direction, in-plane normal, face normal): world = R @ local + origin.
    """
    vertices = _batched_vertices("vertices", vertices)
    faces = _check_faces(faces, vertices.shape[1])
    corners = vertices[:, faces]  # [B, F, 3 corners, 3]
    return corners.mean(2), frames_from_corners(corners)


def _closest_on_triangles(p: Tensor, corners: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distance [...] and barycentrics [..., 3] of the closest point on each triangle.

    ``p`` [..., 3] and ``corners`` [..., 3, 3] broadcast together. Inside the triangle the
    closest point is the plane projection; otherwise it lies on one of the three edges.
    Coordinates are handled as separate x/y/z tensors (reductions over a size-3 axis are slow).
    """
    P = p.unbind(-1)
    A, B, C = (c.unbind(-1) for c in corners.unbind(-2))

    def sub(u, v):
        return tuple(x - y for x, y in zip(u, v))

    def dot(u, v):
        return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]

    ab, ac, ap = sub(B, A), sub(C, A), sub(P, A)
    d00, d01, d11 = dot(ab, ab), dot(ab, ac), dot(ac, ac)
    d20, d21 = dot(ap, ab), dot(ap, ac)
    denom = d00 * d11 - d01 * d01  # = |ab x ac|^2
    nondegenerate = denom > 1e-12 * d00 * d11
    safe = torch.where(nondegenerate, denom, torch.ones_like(denom))
    bv = (d11 * d20 - d01 * d21) / safe
    bw = (d00 * d21 - d01 * d20) / safe
    bu = 1.0 - bv - bw
    inside = nondegenerate & (bu >= 0) & (bv >= 0) & (bw >= 0)
    diff = tuple(x - v * e - w * f for x, e, f, v, w in zip(ap, ab, ac, [bv] * 3, [bw] * 3))
    best_d2 = torch.where(inside, dot(diff, diff), torch.full_like(denom, float("inf")))
    bary = [bu, bv, bw]

    for x, y, (i, j) in ((A, B, (0, 1)), (B, C, (1, 2)), (C, A, (2, 0))):
        e, px = sub(y, x), sub(P, x)
        t = (dot(px, e) / dot(e, e).clamp_min(1e-30)).clamp(0.0, 1.0)
        r = tuple(q - t * ec for q, ec in zip(px, e))
        d2 = dot(r, r)
        closer = (~inside) & (d2 < best_d2)
        best_d2 = torch.where(closer, d2, best_d2)
        w = [torch.zeros_like(t)] * 3
        w[i], w[j] = 1.0 - t, t
        bary = [torch.where(closer, wk, bk) for wk, bk in zip(w, bary)]
    return best_d2, torch.stack(bary, -1)


@torch.no_grad()
def bind_to_mesh(
    points: Tensor,
    vertices: Tensor,
    faces: Tensor,
    *,
    candidates: int = 32,
    chunk_pairs: int = 1 << 22,
) -> MeshBinding:
    """Bind each point to its closest triangle of the mesh.

    ``points`` [M, 3]; ``vertices`` [V, 3] (or [1, V, 3]); ``faces`` [F, 3] long.
    Returns a ``MeshBinding`` with ``face_index`` [M], ``barycentric`` [M, 3] (of the closest
    point on the triangle) and ``offset`` [M, 3] (point minus that closest point, in the face
    frame), in the points' dtype and device. Not differentiable (binding is done once).

    Exact, like a brute-force search, but pruned: a cheap lower bound of every point-triangle
    distance (the larger of centroid distance minus circumradius and distance to the plane)
    orders the triangles; the ``candidates`` best are tested exactly, and a point whose winner
    cannot be proven (some untested bound is smaller) is retried with 4x more candidates, up to
    all triangles. Memory stays about ``chunk_pairs`` (point, triangle) pairs per step.
    """
    if points.dim() != 2 or points.shape[1] != 3:
        raise ShapeError(f"points: expected shape [M, 3], got {list(points.shape)}")
    if vertices.dim() == 3 and vertices.shape[0] == 1:
        vertices = vertices[0]
    if vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ShapeError(f"vertices: expected shape [V, 3], got {list(vertices.shape)}")
    faces = _check_faces(faces, vertices.shape[0])
    out_dtype, device = points.dtype, points.device
    m = points.shape[0]

    corners = vertices.detach().to(device=device, dtype=torch.float64)[faces.to(device)]  # [F, 3, 3]
    n_faces = corners.shape[0]
    centroid = corners.mean(1)  # [F, 3]
    radius = (corners - centroid[:, None]).norm(dim=-1).amax(1)  # [F] circumradius about the centroid
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    normal = F.normalize(torch.linalg.cross(edge1, edge2, dim=-1), dim=-1)  # [F, 3]
    plane = (normal * centroid).sum(-1)  # [F]
    extent = float((corners.reshape(-1, 3).amax(0) - corners.reshape(-1, 3).amin(0)).norm())
    slack = 1e-9 * extent + 1e-12  # float64 rounding of the bounds
    pts = points.detach().to(torch.float64)
    exact_pairs = max(1, chunk_pairs // 32)  # exact tests need ~30x the memory of a bound

    face_index = torch.empty(m, dtype=torch.long, device=device)
    bary = torch.empty(m, 3, dtype=torch.float64, device=device)
    step = max(1, chunk_pairs // n_faces)
    for s in range(0, m, step):
        p = pts[s : s + step]  # [m', 3]
        lower = torch.cdist(p, centroid).sub_(radius)  # [m', F] lower bounds of the distances
        torch.maximum(lower, torch.addmm(plane, p, normal.T, beta=-1).abs_(), out=lower)
        todo = torch.arange(p.shape[0], device=device)
        k = max(1, candidates)
        while todo.numel():
            k = min(k, n_faces)
            take = min(k + 1, n_faces)  # one more: the smallest bound left untested
            proven = torch.zeros(todo.numel(), dtype=torch.bool, device=device)
            sub = max(1, exact_pairs // k)
            for u in range(0, todo.numel(), sub):
                ids = todo[u : u + sub]
                bound, idx = torch.topk(lower[ids], take, dim=1, largest=False, sorted=True)
                cand = idx[:, :k]  # [u', K]
                d2, b = _closest_on_triangles(p[ids, None], corners[cand])  # [u', K], [u', K, 3]
                best = d2.argmin(1)
                rows = torch.arange(ids.numel(), device=device)
                face_index[s + ids] = cand[rows, best]
                bary[s + ids] = b[rows, best]
                if take > k:
                    proven[u : u + sub] = d2[rows, best].sqrt() <= bound[:, k] - slack
                else:
                    proven[u : u + sub] = True  # every triangle was tested
            todo = todo[~proven]
            k *= 4

    tri = corners[face_index]  # [M, 3, 3]
    anchor = (bary[..., None] * tri).sum(1)  # [M, 3]
    rot = frames_from_corners(tri)  # [M, 3, 3]
    offset = (rot.transpose(1, 2) @ (pts - anchor)[..., None])[..., 0]  # R^T (p - anchor)
    return MeshBinding(face_index=face_index, barycentric=bary.to(out_dtype), offset=offset.to(out_dtype))


def posed_frames(binding: MeshBinding, vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Bound points [B, M, 3] and their triangles' rotations [B, M, 3, 3] on ``vertices`` [B, V, 3]."""
    vertices = _batched_vertices("vertices", vertices)
    faces = _check_faces(faces, vertices.shape[1])
    corners = vertices[:, faces[binding.face_index]]  # [B, M, 3 corners, 3]
    rot = frames_from_corners(corners)  # [B, M, 3, 3]
    bary = binding.barycentric.to(corners.dtype)
    anchor = (bary[None, :, :, None] * corners).sum(2)  # [B, M, 3]
    points = anchor + (rot @ binding.offset.to(corners.dtype)[None, :, :, None])[..., 0]
    return points, rot


def posed_points(binding: MeshBinding, vertices: Tensor, faces: Tensor) -> Tensor:
    """Positions [B, M, 3] of the bound points on the mesh ``vertices`` [B, V, 3] (``faces`` [F, 3])."""
    return posed_frames(binding, vertices, faces)[0]


def posed_rotations(binding: MeshBinding, vertices: Tensor, faces: Tensor) -> Tensor:
    """Frame rotations [B, M, 3, 3] of each bound point's triangle on ``vertices`` [B, V, 3].

    To carry a Gaussian's orientation from the rest mesh to a posed one:
    ``R_gauss_now = posed_rotations(now) @ posed_rotations(rest).transpose(-1, -2) @ R_gauss_rest``
    (with quaternions: ``q_now = q(R_now) * q(R_rest)^-1 * q_rest``).
    """
    return posed_frames(binding, vertices, faces)[1]
