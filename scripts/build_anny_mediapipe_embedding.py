"""Build the MediaPipe 478-point landmark embedding of ``anny-head`` and measure its accuracy.

    python scripts/build_anny_mediapipe_embedding.py [--size 512] [--output PATH]

How: the neutral anny head is rendered (shaded, orthographic: ``gshead headmodel render``'s
rasterizer) from a grid of head rotations; MediaPipe's face mesh (478 points with iris
refinement, bundled in mediapipe 0.10.21, offline) is run on each render, and every detected
point is cast back along the view ray onto the rotated mesh, which gives a triangle and
barycentric weights for that view. Per landmark the hits from all views are turned into 3D
points on the neutral mesh and the *medoid* (the hit closest to all others) is kept, so the
result always lies on the surface. Accuracy is measured on held-out rotations that were not
used for building: the embedded points are projected and compared with MediaPipe's detections
(pixels at ``--size``, and as a fraction of the inter-ocular distance, outer eye corners 33-263).

Output (format 2): a safetensors file with, per landmark, the three vertices of the triangle it
lies in (``vertex_index`` [478, 3] int64), its barycentric weights there (``barycentric``
[478, 3] float32) and the resulting point on the neutral template (``points`` [478, 3] float32,
metres). Vertex ids + weights do not depend on the triangulation (Anny splits quads whose
diagonals tie either way, depending on float rounding); ``anny-head`` puts each point back on
its own triangulation when loading (``mediapipe_embedding``). The metadata records the mesh
(vertex and face counts), the views and the accuracy; ``anny-head`` refuses a file whose vertex
count differs or whose points do not land on its template.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

BUILD_VIEWS = [(yaw, pitch) for yaw in (-24, -12, 0, 12, 24) for pitch in (-10, 0, 10)]
HELD_OUT_VIEWS = [(-18, -5), (-6, 6), (6, -6), (18, 5), (30, 0), (-30, 0)]
POINTS = 478
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "gshead/plugins/headmodels/data/anny_head_mediapipe478.safetensors"


def rotation(yaw_degrees: float, pitch_degrees: float) -> np.ndarray:
    """Head rotation: yaw about +y, then pitch about +x (degrees)."""
    y, p = math.radians(yaw_degrees), math.radians(pitch_degrees)
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rx @ ry


def detect(image: np.ndarray, face_mesh) -> np.ndarray | None:
    """MediaPipe's 478 points [478, 2] in pixels, or None when no face is found."""
    h, w = image.shape[:2]
    result = face_mesh.process(np.ascontiguousarray((image * 255).round().astype(np.uint8)))
    if not result.multi_face_landmarks:
        return None
    pts = np.array([(p.x * w, p.y * h) for p in result.multi_face_landmarks[0].landmark])
    return pts if pts.shape[0] == POINTS else None


def cast(points_px: np.ndarray, pixels: np.ndarray, depth: np.ndarray, faces: np.ndarray):
    """For each pixel position [K, 2], the nearest triangle under it (orthographic rays along -z):
    face index [K] (-1 on a miss) and barycentric weights [K, 3]."""
    tri = pixels[faces]  # [F, 3, 2]
    z = depth[faces]  # [F, 3]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    den = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])  # [F]
    ok = np.abs(den) > 1e-12
    face_index = np.full(len(points_px), -1)
    bary = np.zeros((len(points_px), 3))
    for k, (x, y) in enumerate(points_px):
        l0 = ((b[:, 1] - c[:, 1]) * (x - c[:, 0]) + (c[:, 0] - b[:, 0]) * (y - c[:, 1])) / np.where(ok, den, 1)
        l1 = ((c[:, 1] - a[:, 1]) * (x - c[:, 0]) + (a[:, 0] - c[:, 0]) * (y - c[:, 1])) / np.where(ok, den, 1)
        l2 = 1 - l0 - l1
        inside = ok & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        if not inside.any():
            continue
        zz = np.where(inside, l0 * z[:, 0] + l1 * z[:, 1] + l2 * z[:, 2], -np.inf)
        best = int(np.argmax(zz))
        face_index[k] = best
        bary[k] = (l0[best], l1[best], l2[best])
    return face_index, bary


def embed(vertices: np.ndarray, faces: np.ndarray, face_index: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Points [K, 3] of (face, barycentric) pairs on ``vertices``."""
    return np.einsum("kj,kjd->kd", bary, vertices[faces[face_index]])


def build(size: int, verbose: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    import mediapipe as mp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gshead.commands.headmodel import build_head_model, orthographic_pixels, rasterize

    model = build_head_model("anny-head")
    vertices = model.template.detach().double().numpy()
    faces = model.faces.numpy().astype(np.int64)
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1)

    def view(yaw, pitch):
        rotated = vertices @ rotation(yaw, pitch).T
        image = rasterize(rotated, faces, size)
        return rotated, orthographic_pixels(rotated, size), detect(image, mesh)

    hits: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(POINTS)]
    used = []
    for yaw, pitch in BUILD_VIEWS:
        rotated, pixels, detected = view(yaw, pitch)
        if detected is None:
            print(f"view yaw={yaw} pitch={pitch}: no face detected, skipped", file=sys.stderr)
            continue
        used.append([yaw, pitch])
        fi, bc = cast(detected, pixels, rotated[:, 2], faces)
        for k in range(POINTS):
            if fi[k] >= 0:
                hits[k].append((int(fi[k]), bc[k]))
        if verbose:
            print(f"view yaw={yaw:+d} pitch={pitch:+d}: {int((fi >= 0).sum())}/{POINTS} points hit the mesh", file=sys.stderr)
    face_index = np.zeros(POINTS, dtype=np.int64)
    barycentric = np.zeros((POINTS, 3), dtype=np.float32)  # float32: what is stored and measured
    spread = np.zeros(POINTS)
    for k in range(POINTS):
        if not hits[k]:
            raise RuntimeError(f"landmark {k} never hit the mesh; widen the views")
        fi = np.array([h[0] for h in hits[k]])
        bc = np.stack([h[1] for h in hits[k]])
        pts = embed(vertices, faces, fi, bc)
        dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1).sum(1)
        best = int(np.argmin(dist))
        face_index[k], barycentric[k] = fi[best], bc[best] / bc[best].sum()
        spread[k] = np.median(np.linalg.norm(pts - pts[best], axis=-1))

    # Accuracy on held-out views.
    errors, normalised = [], []
    for yaw, pitch in HELD_OUT_VIEWS:
        rotated, pixels, detected = view(yaw, pitch)
        if detected is None:
            continue
        # Project the embedded points with the same orthographic mapping as the render.
        pts = embed(rotated, faces, face_index, barycentric.astype(np.float64))
        proj = _project_like(rotated, pts, size)
        err = np.linalg.norm(proj - detected, axis=1)
        iod = np.linalg.norm(detected[33] - detected[263])
        errors.append(err)
        normalised.append(err / iod)
    errors_a = np.concatenate(errors)
    norm_a = np.concatenate(normalised)
    accuracy = {
        "held_out_views": HELD_OUT_VIEWS,
        "image_size": size,
        "mean_px": round(float(errors_a.mean()), 2),
        "median_px": round(float(np.median(errors_a)), 2),
        "p95_px": round(float(np.percentile(errors_a, 95)), 2),
        "mean_iod": round(float(norm_a.mean()), 4),
        "p95_iod": round(float(np.percentile(norm_a, 95)), 4),
        "median_build_spread_m": round(float(np.median(spread)), 5),
    }
    meta = {
        "format": "gshead.landmark-embedding",
        "format_version": "2",
        "head_model": "anny-head",
        "landmarks": "mediapipe-478",
        "vertices": str(vertices.shape[0]),
        "faces": str(faces.shape[0]),
        "anny_version": _anny_version(),
        "build_views": json.dumps(used),
        "accuracy": json.dumps(accuracy),
    }
    points = embed(vertices, faces, face_index, barycentric.astype(np.float64)).astype(np.float32)
    return {"vertex_index": faces[face_index], "barycentric": barycentric, "points": points}, meta


def _project_like(rotated: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Pixels of ``points`` under the mapping that ``rasterize`` fits to the ``rotated`` mesh."""
    from gshead.commands.headmodel import orthographic_pixels

    both = orthographic_pixels(np.concatenate([rotated, points]), size)
    # The mapping is fitted to the bounding box; the points lie on the mesh, so the box is the mesh's.
    return both[len(rotated):]


def _anny_version() -> str:
    from gshead.plugins.headmodels.anny_head import anny_version

    return anny_version()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="render side in pixels (default 512)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="embedding file to write")
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gshead.io.media import atomic_output

    arrays, meta = build(args.size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.output) as tmp:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(tmp), metadata=meta)
    print(f"wrote {args.output}", file=sys.stderr)
    print(json.dumps(json.loads(meta["accuracy"]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
