"""Appearance prior: a colour for the surface points the source portrait does not show.

Surface Gaussians (``gshead.plugins._shared.surface``) read the source RGB where their anchor
projects into the portrait. A point hidden behind other surface (the inside of the mouth behind
the lips, an eyelid folded into its crease, the far side of a turned head, under the chin) would
take the colour of whatever is in front of it at that pixel; this module gives such points a
colour *prior* instead, which ``surface_gaussians`` feeds to the ``AnchorHead`` in place of the
sampled colour (only the inputs of hidden anchors change, so trained heads stay valid).

Per head model (``prior_tables``, once, on the neutral template):

- the mouth interior: vertices that the mouth probes move (``face_motion``) and that are
  *enclosed* (hidden behind other surface seen orthographically from the front, both sides, above
  and below: ``enclosed_vertices``), grown over the mesh through the vertices hidden from the
  front and from below. The lips, the chin and the underside of the jaw are each seen from one of
  those directions; the tongue, the inner lips and the cavity's walls are not. It is split in
- ``mouth``: the part the front view sees through the lips (the front-most surface over it is the
  interior or lies within ``LIP_RINGS`` edges of it): what an opened mouth shows; and
- ``veiled``: the rest (the cavity's side walls behind the cheeks, its floor behind the chin);
- ``tongue``: the ``mouth`` vertices of the cavity's lower half whose normals point up;
- ``lips``: the mouth vertices next to the interior (the inner lip margin, whose visible colour
  sets the cavity's);
- ``mirror``: each vertex's mirror-symmetric vertex across the sagittal plane x = 0 (the nearest
  vertex to (-x, y, z), -1 when none is within ``MIRROR_TOLERANCE``);
- ``edges``: the mesh's edges, both directions, for spreading colours over the surface (less the
  ones between the eyeballs and the rest, when the caller names the eyeballs).

Per source (``anchor_colours``): the source mesh is splatted into a depth buffer
(``gshead.plugins._shared.depth.splat_depth``); a point is *visible* when it faces the camera
(cosine > 0), projects inside the image and is no further than a tolerance behind the buffer's
nearest depth in its cell (``DEPTH_TOLERANCE`` of the mesh's width plus the depth change across one
cell at the point's slant). Each hidden vertex then gets, in order of preference:

1. ``mouth``: a dark cavity colour, the visible inner-lip colour times ``CAVITY_SHADE``
   (``TONGUE_SHADE`` on the tongue: a little lighter);
2. ``veiled``, or facing the camera at most ``VEIL_DEPTH`` behind the surface in front (an eye
   socket under the lid): its sampled colour, i.e. that surface's. Such points show only where
   their Gaussians poke through the surface, which then stays invisible;
3. its mirror vertex's sampled colour, when the mirror vertex is visible (the symmetric prior: a
   turned head's far cheek takes the near cheek's colour);
4. the mean colour of its nearest known vertices on the mesh surface, spread over the mesh's edges
   ring by ring (under the chin: the chin's and the neck's colour);
5. (unreachable from any known vertex) the mean visible colour.

A hidden anchor's prior is the barycentric mix of its triangle's vertex colours (visible vertices
keep their sampled colour); a visible anchor keeps its sampled colour exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.types import Camera
from gshead.plugins._shared.depth import splat_depth

__all__ = [
    "CAVITY_SHADE",
    "DEPTH_RESOLUTION",
    "DEPTH_TOLERANCE",
    "MIRROR_TOLERANCE",
    "MOUTH_MOTION",
    "TONGUE_SHADE",
    "VEIL_DEPTH",
    "PriorTables",
    "anchor_colours",
    "enclosed_vertices",
    "fill_vertex_colours",
    "mesh_edges",
    "mirror_vertices",
    "point_visibility",
    "prior_tables",
    "vertex_normals",
]

MOUTH_MOTION = 0.01
"""A vertex belongs to the mouth when the mouth probes move it more than this fraction of the head's size."""
ENCLOSED_CELLS = 150
"""Cells across the head's size in the orthographic buffers of ``enclosed_vertices``."""
ENCLOSED_DEPTH = 0.015
"""How far behind the nearest surface (fraction of the head's size) a vertex counts as hidden there."""
DEPTH_RESOLUTION = 96
"""Cells per side of the source view's depth buffer."""
DEPTH_TOLERANCE = 0.02
"""How far behind the nearest surface a point may lie and still be visible, in mesh widths
(plus the depth change across one cell at the point's slant)."""
VEIL_DEPTH = 0.06
"""Hidden points facing the camera at most this far (in mesh widths) behind the surface in front
keep that surface's colour: they show only where they poke through it (an eye socket under the lid)."""
MIRROR_TOLERANCE = 0.01
"""Largest distance, as a fraction of the head's size, from a vertex's mirror image to its mirror vertex."""
CAVITY_SHADE = (0.35, 0.2, 0.2)
"""Mouth-cavity colour as a per-channel factor of the visible inner-lip colour (a dark red)."""
TONGUE_SHADE = (0.6, 0.35, 0.35)
"""Tongue colour as a per-channel factor of the visible inner-lip colour (lighter than the cavity)."""
_FALLBACK_LIP = (0.6, 0.35, 0.35)
_SUBDIVISION = 4  # surface samples per triangle edge in the orthographic buffers
LIP_RINGS = 8
"""How many edge rings around the mouth interior count as the lips (``prior_tables``)."""
_MAX_SLANT = 4.0  # bound on tan(angle to the view ray) in the depth tolerance


@dataclass(frozen=True, eq=False)
class PriorTables:
    """What the prior knows of a head model (see the module docstring); every tensor on one device."""

    mouth: Tensor  # [V] bool, mouth interior
    tongue: Tensor  # [V] bool, part of ``mouth``
    veiled: Tensor  # [V] bool, the rest of the mouth interior (behind the cheeks and chin)
    lips: Tensor  # [V] bool, mouth vertices next to the interior
    mirror: Tensor  # [V] long, mirror-symmetric vertex, -1 when none
    edges: Tensor  # [2, E] long, (from, to), both directions of every mesh edge

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ------------------------------------------------------------------ per head model
def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals [B, V, 3] of ``vertices`` [B, V, 3], ``faces`` [F, 3]."""
    tri = vertices[:, faces]  # [B, F, 3, 3]
    n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])  # [B, F, 3]
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(1, faces[:, k], n)
    return F.normalize(out, dim=-1)


def mesh_edges(faces: Tensor, vertices: int) -> Tensor:
    """Every edge of ``faces`` [F, 3] once per direction: [2, E] (from, to)."""
    f = faces.long()
    pairs = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])  # [3F, 2]
    pairs = torch.cat([pairs, pairs.flip(1)])
    key = torch.unique(pairs[:, 0] * vertices + pairs[:, 1])
    return torch.stack([key // vertices, key % vertices])


def _hidden_along(
    template: Tensor, faces: Tensor, axis: int, sign: float, cell: float, depth: float
) -> Tensor:
    """[V] bool: vertices of ``template`` [V, 3] more than ``depth`` behind the nearest surface
    sample seen orthographically from ``sign`` x infinity along ``axis``, in cells of ``cell``."""
    v = template.shape[0]
    n = _SUBDIVISION
    grid = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    bary = torch.tensor(grid, dtype=template.dtype) / n  # [S, 3] a barycentric grid
    on_faces = torch.einsum("sk,fkc->fsc", bary, template[faces]).reshape(-1, 3)  # [F*S, 3]
    points = torch.cat([template, on_faces])  # [V + F*S, 3] the vertices first
    across = points[:, [a for a in range(3) if a != axis]]  # [P, 2]
    ij = ((across - across.amin(0)) / cell).floor().long()
    n = (ij.amax(0) + 1).tolist()
    cells = ij[:, 0] * n[1] + ij[:, 1]
    near = sign * points[:, axis]  # larger: nearer the viewer
    front = torch.full((n[0] * n[1],), -math.inf, dtype=near.dtype).scatter_reduce(0, cells, near, "amax")
    grid = front.view(1, 1, n[0], n[1])
    grid = torch.where(torch.isfinite(grid), grid, F.max_pool2d(grid, 3, 1, 1))  # close one-cell holes
    return near[:v] < grid.flatten()[cells[:v]] - depth


def enclosed_vertices(template: Tensor, faces: Tensor) -> Tensor:
    """[V] bool: vertices of ``template`` [V, 3] (y up, z out of the face) hidden from the front
    (+z), both sides (+-x), above (+y) and below (-y)."""
    size = float((template.amax(0) - template.amin(0)).norm())
    cell, depth = size / ENCLOSED_CELLS, ENCLOSED_DEPTH * size
    hidden = torch.ones(template.shape[0], dtype=torch.bool)
    for axis, sign in ((2, 1.0), (0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0)):
        hidden &= _hidden_along(template, faces, axis, sign, cell, depth)
    return hidden


def _front_hidden(template: Tensor, faces: Tensor) -> Tensor:
    """[V] bool: vertices of ``template`` [V, 3] hidden from the front (+z) and from below (-y)."""
    size = float((template.amax(0) - template.amin(0)).norm())
    cell, depth = size / ENCLOSED_CELLS, ENCLOSED_DEPTH * size
    return _hidden_along(template, faces, 2, 1.0, cell, depth) & _hidden_along(
        template, faces, 1, -1.0, cell, depth
    )


def _grown(seed: Tensor, allowed: Tensor, edges: Tensor) -> Tensor:
    """[V] bool: ``seed`` [V] grown over ``edges`` [2, E] through the ``allowed`` [V] vertices."""
    region = seed.clone()
    while True:
        reach = torch.zeros_like(region)
        reach[edges[1, region[edges[0]]]] = True
        new = reach & allowed & ~region
        if not bool(new.any()):
            return region
        region |= new


def _within_rings(region: Tensor, edges: Tensor, rings: int) -> Tensor:
    """[V] bool: ``region`` [V] and the vertices at most ``rings`` edges (``edges`` [2, E]) from it."""
    out = region.clone()
    for _ in range(rings):
        reach = out.clone()
        reach[edges[1, out[edges[0]]]] = True
        out = reach
    return out


def _front_owner(template: Tensor, faces: Tensor) -> Tensor:
    """[V] long: for each vertex of ``template`` [V, 3], the vertex nearest the surface sample that
    the front view (+z, orthographic) sees first in that vertex's cell."""
    size = float((template.amax(0) - template.amin(0)).norm())
    v = template.shape[0]
    n = _SUBDIVISION
    grid = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    bary = torch.tensor(grid, dtype=template.dtype) / n  # [S, 3]
    on_faces = torch.einsum("sk,fkc->fsc", bary, template[faces]).reshape(-1, 3)  # [F*S, 3]
    points = torch.cat([template, on_faces])  # [P, 3]
    nearest = faces.gather(1, bary.argmax(1).repeat(faces.shape[0], 1))  # [F, S] the closest corner
    vertex = torch.cat([torch.arange(v), nearest.reshape(-1)])  # [P]
    ij = ((points[:, :2] - points[:, :2].amin(0)) / (size / ENCLOSED_CELLS)).floor().long()
    cols = int(ij[:, 1].max()) + 1
    cells = ij[:, 0] * cols + ij[:, 1]
    count = int(cells.max()) + 1
    front = torch.full((count,), -math.inf).scatter_reduce(0, cells, points[:, 2], "amax")
    first = points[:, 2] >= front[cells]  # [P] the front-most sample of its cell
    owner = torch.full((count,), -1, dtype=torch.long)
    owner[cells[first]] = vertex[first]
    return owner[cells[:v]].clamp_min(0)


def mirror_vertices(template: Tensor, tolerance: float = MIRROR_TOLERANCE) -> Tensor:
    """[V] long: the vertex of ``template`` [V, 3] nearest each vertex mirrored across x = 0,
    -1 when it is further than ``tolerance`` head sizes."""
    size = float((template.amax(0) - template.amin(0)).norm())
    mirrored = template * torch.tensor([-1.0, 1.0, 1.0], dtype=template.dtype)
    index = torch.empty(template.shape[0], dtype=torch.long)
    for start in range(0, template.shape[0], 1024):
        d = torch.cdist(mirrored[start : start + 1024], template)  # [chunk, V]
        best, at = d.min(1)
        index[start : start + 1024] = torch.where(best <= tolerance * size, at, -1)
    return index


@torch.no_grad()
def prior_tables(
    template: Tensor, faces: Tensor, mouth_motion: Tensor, eyeballs: Tensor | None = None
) -> PriorTables:
    """The tables of a head model: ``template`` [V, 3] neutral vertices (y up, z out of the face,
    x = 0 the sagittal plane), ``faces`` [F, 3], ``mouth_motion`` [F] how far the mouth probes move
    each triangle (``face_motion(...)[:, MOUTH]``, fractions of the head's size) and, optionally,
    ``eyeballs`` [V] bool the vertices that turn with the eyes: colours never spread between them and
    the rest (an eyelid fold takes the lid's colour, not the iris's)."""
    template, faces = template.detach().float().cpu(), faces.long().cpu()
    v = template.shape[0]
    moving = torch.zeros(v).scatter_reduce(
        0, faces.flatten(), mouth_motion.float().cpu().repeat_interleave(3), "amax"
    )
    edges = mesh_edges(faces, v)
    if eyeballs is not None:
        eyeballs = eyeballs.cpu()
        edges = edges[:, eyeballs[edges[0]] == eyeballs[edges[1]]]
    inside = _grown(enclosed_vertices(template, faces), _front_hidden(template, faces), edges)
    inside &= moving > MOUTH_MOTION  # the whole mouth interior
    lips = _grown(inside, _within_rings(inside, edges, LIP_RINGS), edges) & ~inside
    owner = _front_owner(template, faces)  # [V] what the front view sees over each vertex
    mouth = inside & (inside | lips)[owner]  # behind the lips: seen through the opened mouth
    veiled = inside & ~mouth  # behind the cheeks and chin
    tongue = torch.zeros(v, dtype=torch.bool)
    if mouth.any():
        up = vertex_normals(template[None], faces)[0, :, 1]  # [V]
        y = template[:, 1]
        tongue = mouth & (up > 0.5) & (y < y[mouth].median())
    margin = _within_rings(inside, edges, 1) & ~inside & (moving > MOUTH_MOTION)
    return PriorTables(
        mouth=mouth, tongue=tongue, veiled=veiled, lips=margin, mirror=mirror_vertices(template), edges=edges
    )


# ------------------------------------------------------------------ per source
def point_visibility(
    points: Tensor, facing: Tensor, camera: Camera, zbuf: Tensor, resolution: int, width: Tensor
) -> tuple[Tensor, Tensor]:
    """(visible [B, M] bool, shallow [B, M] bool) of ``points`` [B, M, 3] (world) facing the
    camera by ``facing`` [B, M] (cosines) against the depth buffer ``zbuf`` [B, R*R]
    (``splat_depth``), ``width`` [B] the mesh's width. Visible: facing it (cosine > 0), inside the
    image and not behind the buffer by more than the tolerance; shallow: not visible, but facing it,
    inside the image and at most ``VEIL_DEPTH`` mesh widths behind the surface in front."""
    r = resolution
    w2c = camera.world_to_camera.to(points)
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [B, M, 3]
    z = cam[..., 2]
    k = camera.intrinsics.to(points)
    uvw = cam @ k.transpose(1, 2)
    uv = uvw[..., :2] / uvw[..., 2:].clamp_min(1e-6)  # [B, M, 2] pixels
    inside = (
        (uv[..., 0] >= 0) & (uv[..., 0] < camera.width) & (uv[..., 1] >= 0) & (uv[..., 1] < camera.height)
    )
    ij = torch.stack([uv[..., 0] * r / camera.width, uv[..., 1] * r / camera.height], -1).floor().long()
    ij = ij.clamp(0, r - 1)
    grid = zbuf.view(-1, 1, r, r)
    grid = torch.where(torch.isfinite(grid), grid, -F.max_pool2d(-grid, 3, 1, 1))  # one-cell holes
    nearest = grid.flatten(1).gather(1, ij[..., 1] * r + ij[..., 0])  # [B, M]
    footprint = z * (camera.width / r) / k[:, 0, 0, None]  # [B, M] world size of a cell at depth z
    c = facing.clamp(1e-3, 1.0)
    slant = (torch.sqrt(1.0 - c * c) / c).clamp(max=_MAX_SLANT)
    tolerance = DEPTH_TOLERANCE * width[:, None] + footprint * slant
    in_front = ~torch.isfinite(nearest) | (z <= nearest + tolerance)
    seen = (facing > 0) & inside & (z > 1e-6)
    visible = seen & in_front
    return visible, seen & ~in_front & (z <= nearest + VEIL_DEPTH * width[:, None])


def fill_vertex_colours(
    sampled: Tensor, visible: Tensor, tables: PriorTables, shallow: Tensor | None = None
) -> Tensor:
    """[B, V, 3]: ``sampled`` [B, V, 3] where ``visible`` [B, V], the prior elsewhere (rules 1-5 of
    the module docstring; ``shallow`` [B, V]: the vertices just behind the surface in front, rule 2)."""
    b, v, _ = sampled.shape
    dtype = sampled.dtype
    known = visible.clone()
    colour = torch.where(visible[..., None], sampled, torch.zeros_like(sampled))
    # 1. the mouth interior: shades of the visible inner-lip colour
    lip_seen = (visible & tables.lips).to(dtype)  # [B, V]
    count = lip_seen.sum(1, keepdim=True)  # [B, 1]
    lip = (sampled * lip_seen[..., None]).sum(1) / count.clamp_min(1.0)  # [B, 3]
    lip = torch.where(count > 0, lip, torch.tensor(_FALLBACK_LIP, dtype=dtype, device=sampled.device))
    shade = torch.where(
        tables.tongue[None, :, None],
        torch.tensor(TONGUE_SHADE, dtype=dtype, device=sampled.device),
        torch.tensor(CAVITY_SHADE, dtype=dtype, device=sampled.device),
    )  # [1, V, 3]
    inner = tables.mouth[None] & ~known  # [B, V]
    colour = torch.where(inner[..., None], lip[:, None] * shade, colour)
    known = known | inner
    # 2. the interior behind the cheeks and chin, and what lies just behind the surface in front,
    # keep the colour of that surface
    veiled = tables.veiled[None] & ~known
    if shallow is not None:
        veiled = veiled | (shallow & ~known)
    colour = torch.where(veiled[..., None], sampled, colour)
    known = known | veiled
    # 3. the mirror-symmetric vertex, when it is visible
    has = tables.mirror >= 0
    mirror = tables.mirror.clamp_min(0)
    use = ~known & has[None] & visible[:, mirror]
    colour = torch.where(use[..., None], sampled[:, mirror], colour)
    known = known | use
    # 4. spread over the surface, ring by ring, from every known vertex
    src, dst = tables.edges[0], tables.edges[1]
    for _ in range(v):
        if bool(known.all()):
            break
        weight = known[:, src].to(dtype)  # [B, E]
        sums = torch.zeros_like(colour).index_add(1, dst, colour[:, src] * weight[..., None])
        counts = torch.zeros(b, v, dtype=dtype, device=sampled.device).index_add(1, dst, weight)
        new = ~known & (counts > 0)
        if not bool(new.any()):
            break
        colour = torch.where(new[..., None], sums / counts.clamp_min(1.0)[..., None], colour)
        known = known | new
    # 5. unreachable: the mean visible colour (the sampled colour when nothing is visible)
    seen = visible.to(dtype)
    mean = (sampled * seen[..., None]).sum(1) / seen.sum(1, keepdim=True).clamp_min(1.0)  # [B, 3]
    fallback = torch.where(visible.any(1)[:, None, None], mean[:, None].expand_as(sampled), sampled)
    return torch.where(known[..., None], colour, fallback)


def anchor_colours(
    sampled: Tensor,
    points: Tensor,
    facing: Tensor,
    face_index: Tensor,
    barycentric: Tensor,
    vertices: Tensor,
    vertex_rgb: Tensor,
    faces: Tensor,
    camera: Camera,
    tables: PriorTables,
) -> tuple[Tensor, Tensor]:
    """(colour [B, M, 3], visible [B, M] bool) of anchors ``face_index`` [M] / ``barycentric`` [M, 3]
    at ``points`` [B, M, 3] facing the camera by ``facing`` [B, M], sampled colour ``sampled``
    [B, M, 3], on the source mesh ``vertices`` [B, V, 3] / ``faces`` [F, 3] whose vertices sample
    ``vertex_rgb`` [B, V, 3], seen by ``camera`` [B]: visible anchors keep ``sampled`` exactly,
    hidden ones take the prior."""
    with torch.no_grad():
        vertices = vertices.detach()
        zbuf, _ = splat_depth(camera, vertices, faces, DEPTH_RESOLUTION)  # [B, R*R]
        width = (vertices[..., 0].amax(1) - vertices[..., 0].amin(1)).clamp_min(1e-6)  # [B]
        centre = torch.linalg.inv(camera.world_to_camera.to(vertices))[:, None, :3, 3]  # [B, 1, 3]
        normals = vertex_normals(vertices, faces)  # [B, V, 3]
        vertex_facing = (F.normalize(centre - vertices, dim=-1) * normals).sum(-1)  # [B, V]
        vertex_seen, shallow = point_visibility(
            vertices, vertex_facing, camera, zbuf, DEPTH_RESOLUTION, width
        )
        filled = fill_vertex_colours(vertex_rgb.detach(), vertex_seen, tables, shallow)  # [B, V, 3]
        corners = filled[:, faces[face_index]]  # [B, M, 3 corners, 3]
        prior = (corners * barycentric.to(filled)[None, :, :, None]).sum(2)  # [B, M, 3]
        visible, _ = point_visibility(points.detach(), facing.detach(), camera, zbuf, DEPTH_RESOLUTION, width)
    return torch.where(visible[..., None], sampled, prior.to(sampled)), visible
