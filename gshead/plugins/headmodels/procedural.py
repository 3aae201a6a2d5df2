"""``procedural``: a small head model built from maths, for tests and the reference pipeline.

No data files and no random numbers: a geodesic sphere (denser on the face), sculpted into a
head in metres (y up, z out of the face, subject's left is +x), with

- identity directions: width, height, depth, nose size, jaw width, cranium height, eye spacing,
  lip fullness, ... then smooth low-order polynomial bulges (so any ``identity_dim`` <= 64 works);
- ARKit-named expression blendshapes (``PROCEDURAL_EXPRESSIONS``), each a compactly supported,
  smooth displacement of its region (a left-side shape never moves a right-side vertex);
- joints ``root``, ``neck``, ``jaw``, ``eye_left``, ``eye_right`` (FLAME's tree), smooth skinning
  weights, a joint regressor that reproduces the designed joints exactly on the template and
  follows the surrounding vertices when the identity changes, and FLAME-layout pose correctives
  (jaw opening hollows the cheeks a little);
- a named landmark embedding (``PROCEDURAL_LANDMARKS``): eye corners and lids, brows, nose, mouth,
  chin.

Everything is evaluated by ``LinearHeadModel``; this module only builds its buffers.
The mesh is closed: the "mouth" is a shallow slit whose lower lip belongs to the jaw, so opening
the jaw stretches the triangles along the lip line instead of revealing a mouth interior.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from gshead.core.components import BuildContext
from gshead.core.config import HeadModelConfig
from gshead.core.hookspecs import hookimpl
from gshead.plugins.headmodels._linear import LinearHeadModel

# ---------------------------------------------------------------- layout of the face (metres)
HALF_WIDTH, HALF_HEIGHT, HALF_DEPTH = 0.080, 0.115, 0.098  # skull ellipsoid (ears add ~1 cm to x)
EYE_X, EYE_Y = 0.032, 0.025  # eye centres (x = ±EYE_X), on the face surface
EYE_RADIUS = 0.012  # eyeball radius: the eye joints sit this far behind the surface
BROW_Y = 0.047
NOSE_TIP_Y = -0.013
MOUTH_Y, MOUTH_HALF_WIDTH = -0.045, 0.024
CHIN_Y = -0.088
JAW_JOINT = (0.0, -0.015, -0.005)  # between the ears, a little below them: behind the mouth
NECK_JOINT = (0.0, -0.075, -0.02)
JAW_OPEN_ANGLE = 0.3  # radians of jaw rotation that the jawOpen blendshape imitates

PROCEDURAL_EXPRESSIONS: tuple[str, ...] = (
    "jawOpen",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthPucker",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeWideLeft",
    "eyeWideRight",
    "browInnerUp",
    "browDownLeft",
    "browDownRight",
    "cheekPuff",
)

PROCEDURAL_JOINTS: tuple[str, ...] = ("root", "neck", "jaw", "eye_left", "eye_right")
PROCEDURAL_PARENTS: tuple[int, ...] = (-1, 0, 1, 1, 1)

# name -> (x, y) on the front of the template; the landmark is where a ray along -z first hits.
PROCEDURAL_LANDMARKS: dict[str, tuple[float, float]] = {
    "eye_left_outer": (EYE_X + 0.013, EYE_Y),
    "eye_left_inner": (EYE_X - 0.012, EYE_Y),
    "eye_left_upper": (EYE_X, EYE_Y + 0.006),
    "eye_left_lower": (EYE_X, EYE_Y - 0.006),
    "eye_right_inner": (-EYE_X + 0.012, EYE_Y),
    "eye_right_outer": (-EYE_X - 0.013, EYE_Y),
    "eye_right_upper": (-EYE_X, EYE_Y + 0.006),
    "eye_right_lower": (-EYE_X, EYE_Y - 0.006),
    "brow_left": (0.030, BROW_Y),
    "brow_right": (-0.030, BROW_Y),
    "nose_bridge": (0.0, 0.012),
    "nose_tip": (0.0, NOSE_TIP_Y),
    "mouth_left": (MOUTH_HALF_WIDTH, MOUTH_Y),
    "mouth_right": (-MOUTH_HALF_WIDTH, MOUTH_Y),
    "lip_upper": (0.0, MOUTH_Y + 0.008),
    "lip_lower": (0.0, MOUTH_Y - 0.008),
    "chin": (0.0, CHIN_Y),
}


class ProceduralHeadConfig(HeadModelConfig):
    """The built-in procedural head (no data files; metres, y up, z out of the face)."""

    name: Literal["procedural"] = "procedural"
    subdivisions: int = Field(12, ge=2, le=40)
    """Mesh density n (edges per icosahedron edge): 10·n²+2 vertices, 20·n² triangles (12: 1,442/2,880)."""
    identity_dim: int = Field(8, ge=0, le=64)
    """Number of identity (shape) coefficients; the first 12 are named shape changes, then smooth bulges."""
    face_density: float = Field(0.35, ge=0.0, le=0.6)
    """How much the mesh concentrates on the face: 0 is uniform; 0.35 makes face edges ~35% shorter."""
    pose_correctives: bool = True
    """Include FLAME-style pose-corrective blendshapes (jaw opening hollows the cheeks slightly)."""


# ---------------------------------------------------------------- small smooth functions
def _smoothstep(x, e0: float, e1: float):
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _plateau(r, inner: float = 0.5):
    """1 for r <= inner, smoothly down to 0 at r = 1, exactly 0 beyond (compact support)."""
    return 1.0 - _smoothstep(r, inner, 1.0)


def _gauss(dx, dy, sx: float, sy: float):
    return np.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2))


def _ellipse_r(x, y, cx: float, cy: float, rx: float, ry: float):
    return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


# ---------------------------------------------------------------- mesh
_PHI = (1.0 + 5.0**0.5) / 2.0
_ICO_VERTICES = np.array(
    [
        (-1, _PHI, 0), (1, _PHI, 0), (-1, -_PHI, 0), (1, -_PHI, 0),
        (0, -1, _PHI), (0, 1, _PHI), (0, -1, -_PHI), (0, 1, -_PHI),
        (_PHI, 0, -1), (_PHI, 0, 1), (-_PHI, 0, -1), (-_PHI, 0, 1),
    ],
    dtype=np.float64,
)  # fmt: skip
_ICO_FACES = (
    (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
    (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
    (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
)  # fmt: skip


def geodesic_sphere(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit geodesic sphere of frequency ``n``: vertices [10n²+2, 3] float64, faces [20n², 3] int64.

    Every icosahedron face is split into n² triangles; points shared by neighbouring faces are
    merged by an exact key (the icosahedron corners and their integer weights), so the mesh is
    closed and deterministic. Faces are counter-clockwise seen from outside.
    """
    index: dict[tuple, int] = {}
    points: list[np.ndarray] = []
    faces: list[tuple[int, int, int]] = []

    def vertex(corners: tuple[int, int, int], weights: tuple[int, int, int]) -> int:
        key = tuple(sorted((c, w) for c, w in zip(corners, weights) if w))
        if key not in index:
            index[key] = len(points)
            p = sum(w * _ICO_VERTICES[c] for c, w in key)
            points.append(p / np.linalg.norm(p))
        return index[key]

    for tri in _ICO_FACES:
        grid = {}
        for i in range(n + 1):
            for j in range(n + 1 - i):
                grid[i, j] = vertex(tri, (n - i - j, i, j))
        for i in range(n):
            for j in range(n - i):
                faces.append((grid[i, j], grid[i + 1, j], grid[i, j + 1]))
                if i + j <= n - 2:
                    faces.append((grid[i + 1, j], grid[i + 1, j + 1], grid[i, j + 1]))
    verts = np.stack(points)
    f = np.array(faces, dtype=np.int64)
    a, b, c = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
    inward = (np.cross(b - a, c - a) * (a + b + c)).sum(1) < 0
    f[inward] = f[inward][:, [0, 2, 1]]
    return verts, f


def _warp_to_front(unit: np.ndarray, amount: float) -> np.ndarray:
    """Move sphere points towards +z: polar angle t -> t - amount·sin(t) (smooth, monotonic)."""
    if amount == 0.0:
        return unit
    t = np.arccos(np.clip(unit[:, 2], -1.0, 1.0))
    t2 = t - amount * np.sin(t)
    s = np.sin(t)
    scale = np.where(s > 1e-12, np.sin(t2) / np.where(s > 1e-12, s, 1.0), 1.0)
    out = np.stack([unit[:, 0] * scale, unit[:, 1] * scale, np.cos(t2)], 1)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class _Head:
    """The sculpted template plus the per-vertex fields every basis is made from."""

    def __init__(self, n: int, face_density: float) -> None:
        unit, self.faces = geodesic_sphere(n)
        s = _warp_to_front(unit, face_density)
        self.s = s  # [V, 3] direction on the unit sphere
        x0, y0, z0 = HALF_WIDTH * s[:, 0], HALF_HEIGHT * s[:, 1], HALF_DEPTH * s[:, 2]
        self.front = _smoothstep(s[:, 2], 0.25, 0.6)  # 1 on the face, 0 on the sides and back

        # lower face narrower than the skull
        x = x0 * (1.0 - 0.18 * _smoothstep(-y0, 0.01, 0.1))
        # ears: side bulges at eye-to-nose height, a little behind the middle
        side = _smoothstep(np.abs(s[:, 0]), 0.7, 0.95)
        ears = side * _plateau(_ellipse_r(y0, z0, 0.0, -0.01, 0.03, 0.018))
        x = x + np.sign(x0) * 0.010 * ears
        self.x, self.y = x, y0  # face-layout coordinates (y is never sculpted)
        self.nose = self.front * (
            0.010 * _gauss(x, y0 - 0.008, 0.007, 0.018) + 0.020 * _gauss(x, y0 - NOSE_TIP_Y, 0.010, 0.009)
        )
        eyes = sum(_gauss(x - sx, y0 - EYE_Y, 0.014, 0.010) for sx in (EYE_X, -EYE_X))
        balls = sum(_gauss(x - sx, y0 - EYE_Y, 0.008, 0.006) for sx in (EYE_X, -EYE_X))
        self.brow = self.front * sum(_gauss(x - sx, y0 - BROW_Y, 0.02, 0.007) for sx in (0.03, -0.03))
        self.lips = self.front * _gauss(x, y0 - MOUTH_Y, 0.02, 0.009)
        slit = self.front * _gauss(x, y0 - MOUTH_Y, 0.022, 0.0025)
        chin = self.front * _gauss(x, y0 - CHIN_Y - 0.008, 0.018, 0.012)
        cheeks = self.front * sum(_gauss(x - sx, y0 + 0.01, 0.02, 0.02) for sx in (0.045, -0.045))
        z = (
            z0
            + self.nose
            + self.front * (0.005 * balls - 0.010 * eyes)
            + 0.006 * self.brow
            + 0.007 * self.lips
            - 0.004 * slit
            + 0.008 * chin
            + 0.004 * cheeks
        )
        self.vertices = np.stack([x, y0, z], 1)  # [V, 3] metres

    # -- geometry helpers -------------------------------------------------------------
    def surface_z(self, x: float, y: float) -> tuple[int, np.ndarray, float]:
        """Front-most triangle hit by the ray through (x, y) along -z: face, barycentrics, z."""
        v, f = self.vertices, self.faces
        a, b, c = v[f[:, 0], :2], v[f[:, 1], :2], v[f[:, 2], :2]
        den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
        ok = np.abs(den) > 1e-16
        den = np.where(ok, den, 1.0)
        l0 = ((b[:, 1] - c[:, 1]) * (x - c[:, 0]) + (c[:, 0] - b[:, 0]) * (y - c[:, 1])) / den
        l1 = ((c[:, 1] - a[:, 1]) * (x - c[:, 0]) + (a[:, 0] - c[:, 0]) * (y - c[:, 1])) / den
        l2 = 1.0 - l0 - l1
        hit = ok & (l0 >= -1e-12) & (l1 >= -1e-12) & (l2 >= -1e-12)
        bary = np.stack([l0, l1, l2], 1)
        zs = (bary * v[f][:, :, 2]).sum(1)
        zs = np.where(hit, zs, -np.inf)
        k = int(np.argmax(zs))
        if not np.isfinite(zs[k]):
            raise ValueError(f"procedural head: no surface at ({x}, {y})")
        return k, np.clip(bary[k], 0.0, 1.0) / np.clip(bary[k], 0.0, 1.0).sum(), float(zs[k])

    # -- regions ----------------------------------------------------------------------
    def eye_region(self, sign: float) -> np.ndarray:
        """Eyelid window around the eye on side ``sign`` (+1 left, -1 right): 1 inside, compact."""
        return self.front * (self.x * sign > 0) * _plateau(
            _ellipse_r(self.x, self.y, sign * EYE_X, EYE_Y, 0.02, 0.018), inner=0.6
        )

    def jaw_weight(self) -> np.ndarray:
        """1 below the lip line and the jaw line rising to the jaw joint, 0 above them.

        Towards the back it fades out over 8 cm (z from 0.02 to -0.06 m) into the neck: a shorter
        blend folds the triangles under the jaw when the mouth opens wide.
        """
        zf = self.vertices[:, 2]
        # cut height: the mouth line at the front, rising to the jaw joint's height at the sides
        t = _smoothstep(zf, 0.0, 0.06)
        cut = JAW_JOINT[1] + (MOUTH_Y - JAW_JOINT[1]) * t
        below = _smoothstep(cut - self.y, 0.0, 0.007)
        ahead = _smoothstep(zf, -0.06, 0.02)  # a long blend into the neck: no folds when opening
        return below * ahead


def _regressor_row(verts: np.ndarray, target: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Weights w [V] with Σw = 1 and Σ w·v = target, as close as possible to ``prior`` (relative).

    Solves min Σ (w_i - p_i)² / p_i subject to the four linear constraints over the support of
    the prior, so the regressor stays local and reproduces ``target`` exactly on the template.
    """
    p = prior / prior.sum()
    support = p > 1e-8 * p.max()
    a = np.concatenate([verts[support].T, np.ones((1, support.sum()))], 0)  # [4, S]
    d = p[support]
    rhs = np.concatenate([target, [1.0]]) - a @ d
    lam = np.linalg.solve((a * d) @ a.T, rhs)
    w = np.zeros_like(p)
    w[support] = d + d * (a.T @ lam)
    return w


def _build(config: ProceduralHeadConfig) -> dict:
    head = _Head(config.subdivisions, config.face_density)
    v, x, y = head.vertices, head.x, head.y
    n_v = v.shape[0]
    front = head.front
    zeros = np.zeros(n_v)

    # ---- joints and regressor
    eye_z = {sign: head.surface_z(sign * EYE_X, EYE_Y)[2] - EYE_RADIUS for sign in (1.0, -1.0)}
    joints = np.array(
        [
            (0.0, 0.0, 0.0),
            NECK_JOINT,
            JAW_JOINT,
            (EYE_X, EYE_Y, eye_z[1.0]),
            (-EYE_X, EYE_Y, eye_z[-1.0]),
        ]
    )

    def near(point, sigma):
        return np.exp(-0.5 * (np.linalg.norm(v - np.asarray(point), axis=1) / sigma) ** 2)

    def sides(j, sigma):  # left and right surface points at the joint's height and depth
        return sum(near((sg * HALF_WIDTH, j[1], j[2]), sigma) for sg in (1.0, -1.0))

    priors = [
        np.ones(n_v),
        sides(joints[1], 0.02),
        sides(joints[2], 0.02),
    ]
    for sign, j in ((1.0, joints[3]), (-1.0, joints[4])):
        # ring below the lids and beside the eye, plus the back of the head behind it
        r = _ellipse_r(x, y, sign * EYE_X, EYE_Y, 1.0, 1.0)
        ring = front * (x * sign > 0) * np.exp(-0.5 * ((r - 0.022) / 0.004) ** 2) * (y < EYE_Y + 0.004)
        back = near((j[0], j[1], -HALF_DEPTH), 0.015)
        priors.append(ring / ring.sum() + back / back.sum())
    regressor = np.stack([_regressor_row(v, j, p) for j, p in zip(joints, priors)])

    # ---- skinning weights
    w_jaw = head.jaw_weight()
    w_eyes = []
    for sign in (1.0, -1.0):
        r = _ellipse_r(x, y, sign * EYE_X, EYE_Y, 0.011, 0.008)
        w_eyes.append(front * (x * sign > 0) * _plateau(r, inner=0.6))
    w_neck = _smoothstep(-y, 0.07, 0.105) * (1.0 - w_jaw)
    skin = np.stack([zeros, w_neck, w_jaw, w_eyes[0], w_eyes[1]], 1)
    skin[:, 0] = 1.0 - skin[:, 1:].sum(1)
    assert skin.min() >= -1e-12, "procedural head: overlapping skinning regions"

    # ---- expressions [V, 3, E]
    def field(dx=zeros, dy=zeros, dz=zeros):
        return np.stack([np.broadcast_to(c, (n_v,)) for c in (dx, dy, dz)], 1)

    def corner(sign, radius=0.023):  # mouth-corner region; zero before the midline (x = 0)
        return front * (x * sign > 0) * _plateau(
            _ellipse_r(x, y, sign * MOUTH_HALF_WIDTH, MOUTH_Y, radius, radius), inner=0.2
        )

    lips = front * _plateau(_ellipse_r(x, y, 0.0, MOUTH_Y, 0.032, 0.018), inner=0.4)
    upper = _smoothstep(y - EYE_Y, -0.003, 0.0)  # the upper lid half of the eye window

    exprs: dict[str, np.ndarray] = {}
    rel = v - np.asarray(JAW_JOINT)
    exprs["jawOpen"] = w_jaw[:, None] * (rel @ _rot_x(JAW_OPEN_ANGLE).T - rel)
    for name, sign in (("Left", 1.0), ("Right", -1.0)):
        c = corner(sign)
        exprs[f"mouthSmile{name}"] = field(sign * 0.004 * c, 0.007 * c, -0.003 * c)
        exprs[f"mouthFrown{name}"] = field(sign * 0.001 * c, -0.006 * c, zeros)
    exprs["mouthFunnel"] = field(-0.3 * x * lips, 0.3 * (y - MOUTH_Y) * lips, 0.006 * lips)
    exprs["mouthPucker"] = field(-0.35 * x * lips, -0.2 * (y - MOUTH_Y) * lips, 0.008 * lips)
    for name, sign in (("Left", 1.0), ("Right", -1.0)):
        lid = head.eye_region(sign)
        # both lids close towards the eye centre line, keeping the vertices' order (no folds)
        close = -0.95 * (y - EYE_Y) * lid * upper + 0.6 * (EYE_Y - y) * lid * (1.0 - upper)
        exprs[f"eyeBlink{name}"] = field(zeros, close, 0.002 * lid * upper)
        exprs[f"eyeWide{name}"] = field(zeros, 0.35 * (y - EYE_Y) * lid * upper, zeros)
    inner = front * _plateau(_ellipse_r(x, y, 0.0, BROW_Y, 0.032, 0.014))
    exprs["browInnerUp"] = field(zeros, 0.006 * inner, 0.001 * inner)
    for name, sign in (("Left", 1.0), ("Right", -1.0)):
        b = front * (x * sign > 0) * _plateau(_ellipse_r(x, y, sign * 0.03, BROW_Y, 0.022, 0.012))
        exprs[f"browDown{name}"] = field(-sign * 0.001 * b, -0.004 * b, 0.001 * b)
    cheek = front * sum(
        _plateau(_ellipse_r(x, y, sg * 0.045, -0.03, 0.025, 0.025)) * (x * sg > 0) for sg in (1.0, -1.0)
    )
    exprs["cheekPuff"] = field(np.sign(x) * 0.006 * cheek, zeros, 0.003 * cheek)
    expression_basis = np.stack([exprs[k] for k in PROCEDURAL_EXPRESSIONS], 2)

    # ---- identity [V, 3, I]
    s = head.s
    normal = s / np.array([HALF_WIDTH, HALF_HEIGHT, HALF_DEPTH])  # ellipsoid normal direction
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    lower = _smoothstep(-y, 0.02, 0.1)
    top = _smoothstep(y, 0.03, 0.1)
    eye_area = [
        front * (x * sg > 0) * _plateau(_ellipse_r(x, y, sg * EYE_X, EYE_Y, 0.026, 0.02)) for sg in (1, -1)
    ]
    chin_area = front * _plateau(_ellipse_r(x, y, 0.0, CHIN_Y, 0.035, 0.03))
    named = [
        field(0.006 * s[:, 0]),  # head width
        field(dy=0.008 * s[:, 1]),  # head height
        field(dz=0.007 * s[:, 2]),  # head depth
        field(dy=-0.1 * head.nose, dz=0.3 * head.nose),  # nose size
        field(0.005 * s[:, 0] * lower),  # jaw width
        field(dy=0.006 * s[:, 1] * top),  # cranium height
        field(0.003 * (eye_area[0] - eye_area[1])),  # eye spacing
        field(dz=0.003 * head.lips),  # lip fullness
        field(dy=-0.005 * chin_area, dz=0.002 * chin_area),  # chin length
        field(np.sign(x) * 0.004 * cheek),  # cheek fullness
        field(dz=0.003 * head.brow),  # brow ridge
        field(dz=-0.004 * front * s[:, 2]),  # face flatness
    ]
    degrees = range(2, 6)
    monomials = [(i, j, d - i - j) for d in degrees for i in range(d, -1, -1) for j in range(d - i, -1, -1)]
    bulges = []
    for i, j, k in monomials:
        m = s[:, 0] ** i * s[:, 1] ** j * s[:, 2] ** k
        bulges.append(normal * (0.004 * m / np.abs(m).max())[:, None])
    directions = (named + bulges)[: config.identity_dim]
    identity_basis = np.stack(directions, 2) if directions else np.zeros((n_v, 3, 0))

    # ---- pose correctives [V, 3, 36]: feature (R_j - I) of joints 1..4, row-major
    pose_basis = None
    if config.pose_correctives:
        pose_basis = np.zeros((n_v, 3, 9 * (len(PROCEDURAL_JOINTS) - 1)))
        jaw_sin = 9 * (PROCEDURAL_JOINTS.index("jaw") - 1) + 3 * 2 + 1  # entry (2, 1) = sin(angle about x)
        hollow = front * sum(
            _plateau(_ellipse_r(x, y, sg * 0.045, -0.035, 0.03, 0.03)) * (x * sg > 0) for sg in (1, -1)
        )
        pose_basis[:, 0, jaw_sin] = -np.sign(x) * 0.01 * hollow
        pose_basis[:, 2, jaw_sin] = -0.004 * hollow

    # ---- landmarks
    lmk_faces, lmk_bary = [], []
    for px, py in PROCEDURAL_LANDMARKS.values():
        k, bary, _ = head.surface_z(px, py)
        lmk_faces.append(k)
        lmk_bary.append(bary)

    return dict(
        template=v,
        faces=head.faces,
        identity_basis=identity_basis,
        expression_basis=expression_basis,
        expression_names=PROCEDURAL_EXPRESSIONS,
        joint_regressor=regressor,
        parents=PROCEDURAL_PARENTS,
        skin_weights=skin,
        joint_names=PROCEDURAL_JOINTS,
        jaw_joint=PROCEDURAL_JOINTS.index("jaw"),
        eye_joints=(PROCEDURAL_JOINTS.index("eye_left"), PROCEDURAL_JOINTS.index("eye_right")),
        landmark_faces=np.array(lmk_faces, dtype=np.int64),
        landmark_barycentric=np.stack(lmk_bary),
        landmark_names=tuple(PROCEDURAL_LANDMARKS),
        pose_basis=pose_basis,
    )


class ProceduralHeadModel(LinearHeadModel):
    """The procedural head as a ``LinearHeadModel``; the factory registered as ``procedural``."""

    def __init__(
        self, config: ProceduralHeadConfig | None = None, context: BuildContext | None = None
    ) -> None:
        config = config if config is not None else ProceduralHeadConfig()
        super().__init__(**_build(config), name="procedural")
        self.config = config


@hookimpl
def gshead_register_headmodels(register):
    register.add(ProceduralHeadConfig, ProceduralHeadModel)
