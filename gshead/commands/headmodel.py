"""``gshead headmodel``: inspect a registered head model and render it for checking by eye.

    gshead headmodel info NAME [--set field=value ...] [--json]
    gshead headmodel render NAME [--set field=value ...] [--expression jawOpen=1 ...]
                                 [--identity 0.5 -0.2 ...] [--jaw 0.2] [--size 512] -o image.png

``render`` draws the mesh seen from the front (+z, orthographic, y up) with a z-buffer and Lambert
shading of interpolated vertex normals: a plain software rasterizer in NumPy, for looking at a model,
not a renderer of avatars. The PNG is written atomically.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gshead.core.errors import ConfigError, InputError, require_number

if TYPE_CHECKING:
    from gshead.core.registry import Registry

KIND = "headmodel"


# ----------------------------------------------------------------------------------- building
def build_head_model(name: str, fields: dict[str, Any] | None = None, registry: Registry | None = None):
    """Build the head model registered as ``name`` with config ``fields`` (one-line errors)."""
    from pydantic import ValidationError

    from gshead.core.components import BuildContext
    from gshead.core.registry import get_registry

    registry = registry or get_registry()
    spec = registry.get(KIND, name)
    try:
        config = spec.config_class.model_validate({**(fields or {}), "name": name})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        known = ", ".join(f for f in spec.config_class.model_fields if f != "name") or "(none)"
        raise ConfigError(f"headmodel {name!r}: {where}: {err['msg']} (fields: {known})") from None
    with torch.no_grad():
        model = spec.build(config, BuildContext(feature_channels=3))
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model


def parse_assignments(items: list[str] | None, what: str, as_float: bool = False) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars, or floats)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected NAME=VALUE")
        if as_float:
            try:
                out[key] = float(value)
            except ValueError:
                raise ConfigError(f"{what} {item!r}: {value!r} is not a number") from None
        else:
            out[key] = yaml.safe_load(value) if value.strip() else None
    return out


# ----------------------------------------------------------------------------------- info
def info(name: str, fields: dict[str, Any] | None = None, registry: Registry | None = None) -> dict:
    """Sizes and names of a head model: vertices, faces, identity, expressions, joints, landmarks."""
    model = build_head_model(name, fields, registry)
    parents = getattr(model, "parents", None)
    joint_names = getattr(model, "joint_names", ())
    out = {
        "name": name,
        "vertices": int(model.template.shape[0]),
        "faces": int(model.faces.shape[0]),
        "identity_dim": int(model.identity_dim),
        "expression_dim": len(model.expression_names),
        "expression_names": list(model.expression_names),
        "joints": [
            {"name": n, "parent": None if parents is None or parents[i] < 0 else joint_names[parents[i]]}
            for i, n in enumerate(joint_names)
        ],
        "landmarks": list(getattr(model, "landmark_names", ())),
        "pose_correctives": getattr(model, "pose_basis", None) is not None,
    }
    if hasattr(model, "identity_names"):
        out["identity_names"] = list(model.identity_names)
    extent = model.template.max(0).values - model.template.min(0).values
    out["extent"] = [round(float(e), 5) for e in extent]
    return out


# ----------------------------------------------------------------------------------- render
EXPRESSION_LIMIT = 10.0  # |expression value|: units of the model's expression basis
IDENTITY_LIMIT = 10.0  # |identity coefficient|
ANGLE_LIMIT = round(2 * math.pi, 4)  # |axis-angle| in radians (one full turn)


def head_params(model, expression: dict[str, float] | None, identity: list[float] | None, jaw: float):
    """Neutral parameters with named expression values, leading identity coefficients, jaw opening."""
    params = model.neutral(1)
    expr = params.expression.clone()
    for key, value in (expression or {}).items():
        if key not in model.expression_names:
            raise InputError(
                f"head model has no expression {key!r}; expected one of: {', '.join(model.expression_names)}"
            )
        value = require_number(value, f"--expression {key}=", -EXPRESSION_LIMIT, EXPRESSION_LIMIT)
        expr[0, model.expression_names.index(key)] = value
    ident = params.identity.clone()
    if identity:
        if len(identity) > model.identity_dim:
            raise InputError(f"--identity: {len(identity)} values, but the model has {model.identity_dim}")
        identity = [require_number(v, "--identity", -IDENTITY_LIMIT, IDENTITY_LIMIT) for v in identity]
        ident[0, : len(identity)] = torch.tensor(identity, dtype=ident.dtype)
    jaw = require_number(jaw, "--jaw", -ANGLE_LIMIT, ANGLE_LIMIT, "radians")
    jaw_t = torch.tensor([[float(jaw), 0.0, 0.0]], dtype=params.jaw.dtype)  # about +x: positive opens
    return params.replace(expression=expr, identity=ident, jaw=jaw_t)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals [V, 3] (unit; zero where no face touches the vertex)."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


def orthographic_pixels(vertices: np.ndarray, size: int, margin: float = 0.06) -> np.ndarray:
    """Pixel coordinates [V, 2] (column, row) of ``rasterize``'s front view: the mesh's x/y bounding
    box fitted into a ``size`` square with ``margin``, y up -> rows down."""
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v[:, :2].min(0), v[:, :2].max(0)
    scale = (1.0 - 2 * margin) * size / max(float((hi - lo).max()), 1e-12)
    centre = 0.5 * (lo + hi)
    return np.stack([(v[:, 0] - centre[0]) * scale + size / 2.0, size / 2.0 - (v[:, 1] - centre[1]) * scale], 1)


def rasterize(vertices: np.ndarray, faces: np.ndarray, size: int, margin: float = 0.06) -> np.ndarray:
    """A shaded front view [size, size, 3] in [0, 1]: orthographic along -z, z-buffer, Lambert.

    The mesh's x/y bounding box is fitted into the image with ``margin``; larger z is nearer.
    Shading uses interpolated vertex normals, two-sided (|n·l|), a key light from the upper
    left front plus ambient.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    pixels = orthographic_pixels(v, size, margin)
    px, py = pixels[:, 0], pixels[:, 1]
    z = v[:, 2]
    normals = vertex_normals(v, f)
    light = np.array([-0.35, 0.45, 0.82])
    light /= np.linalg.norm(light)
    shade_v = 0.22 + 0.78 * np.abs(normals @ light)

    depth = np.full((size, size), -np.inf)
    shade = np.zeros((size, size))
    for i0, i1, i2 in f:
        xs = (px[i0], px[i1], px[i2])
        ys = (py[i0], py[i1], py[i2])
        x0, x1 = max(int(np.floor(min(xs))), 0), min(int(np.ceil(max(xs))), size - 1)
        y0, y1 = max(int(np.floor(min(ys))), 0), min(int(np.ceil(max(ys))), size - 1)
        if x0 > x1 or y0 > y1:
            continue
        den = (ys[1] - ys[2]) * (xs[0] - xs[2]) + (xs[2] - xs[1]) * (ys[0] - ys[2])
        if abs(den) < 1e-12:
            continue
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        l0 = ((ys[1] - ys[2]) * (gx - xs[2]) + (xs[2] - xs[1]) * (gy - ys[2])) / den
        l1 = ((ys[2] - ys[0]) * (gx - xs[2]) + (xs[0] - xs[2]) * (gy - ys[2])) / den
        l2 = 1.0 - l0 - l1
        inside = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        if not inside.any():
            continue
        zz = l0 * z[i0] + l1 * z[i1] + l2 * z[i2]
        window = depth[y0 : y1 + 1, x0 : x1 + 1]
        nearer = inside & (zz > window)
        if nearer.any():
            window[nearer] = zz[nearer]
            s = l0 * shade_v[i0] + l1 * shade_v[i1] + l2 * shade_v[i2]
            shade[y0 : y1 + 1, x0 : x1 + 1][nearer] = s[nearer]
    skin = np.array([0.93, 0.76, 0.64])
    background = np.array([0.16, 0.17, 0.2])
    covered = np.isfinite(depth)[..., None]
    return np.where(covered, shade[..., None] * skin, background).clip(0.0, 1.0)


def render(
    name: str,
    expression: dict[str, float] | None,
    identity: list[float] | None,
    jaw: float,
    output: str | Path,
    size: int = 512,
    *,
    fields: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> Path:
    """Render head model ``name`` (config ``fields``) posed by the arguments to a PNG; returns its path.

    ``expression``: {name: value}; ``identity``: the leading identity coefficients; ``jaw``: jaw
    opening in radians (rotation about +x; positive opens the mouth).
    """
    from PIL import Image

    from gshead.io.media import atomic_output, check_output

    if not 16 <= int(size) <= 4096:
        raise InputError(f"--size {size}: expected 16..4096 pixels")
    output = check_output(output, accepts=(".png",), what="a PNG image")
    model = build_head_model(name, fields, registry)
    with torch.no_grad():
        mesh = model(head_params(model, expression, identity, jaw))
    image = rasterize(mesh.vertices[0].double().numpy(), model.faces.numpy(), int(size))
    with atomic_output(output) as tmp:
        Image.fromarray((image * 255.0 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    return output


# ----------------------------------------------------------------------------------- CLI
def cmd_info(args) -> int:
    result = info(args.name, parse_assignments(args.set, "--set"))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    joints = ", ".join(j["name"] + (f"<-{j['parent']}" if j["parent"] else "") for j in result["joints"])
    print(
        f"{result['name']}: {result['vertices']} vertices, {result['faces']} faces, "
        f"extent {result['extent']} m"
    )
    print(f"identity: {result['identity_dim']} coefficients")
    print(f"expressions ({result['expression_dim']}): {', '.join(result['expression_names'])}")
    print(f"joints: {joints or '-'}; pose correctives: {'yes' if result['pose_correctives'] else 'no'}")
    print(f"landmarks ({len(result['landmarks'])}): {', '.join(result['landmarks']) or '-'}")
    return 0


def cmd_render(args) -> int:
    path = render(
        args.name,
        expression=parse_assignments(args.expression, "--expression", as_float=True),
        identity=args.identity,
        jaw=args.jaw,
        output=args.output,
        size=args.size,
        fields=parse_assignments(args.set, "--set"),
    )
    print(f"wrote {path}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Add ``headmodel {info,render}`` to the ``gshead`` subcommands."""
    from gshead.commands._help import doc

    p = subparsers.add_parser(
        "headmodel", help="inspect a head model or render it for checking by eye",
        **doc(
            "Inspect a registered head model (sizes, expression names, joints, landmarks) or render its "
            "posed mesh for checking by eye.",
            "gshead headmodel info anny-head",
            "gshead headmodel render anny-head --expression jawOpen=1 -o head.png",
        ),
    )  # fmt: skip
    sub = p.add_subparsers(dest="headmodel_command", required=True, metavar="ACTION")
    set_help = "config field of the head model, e.g. --set path=generic_model.pkl (repeatable)"

    s = sub.add_parser(
        "info", help="sizes and names: vertices, faces, identity, expressions, joints, landmarks",
        **doc(
            "Print a head model's vertices, faces, extent, identity size, expression names (what "
            "'export --expression' and 'headmodel render --expression' take), joints and landmarks.",
            "gshead headmodel info anny-head",
            "# your own FLAME model, as JSON\n"
            "gshead headmodel info flame --set path=generic_model.pkl --json",
        ),
    )  # fmt: skip
    s.add_argument("name", metavar="NAME", help="registered head model name (see 'gshead plugins')")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=set_help)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "render", help="a shaded front view of the posed mesh, as a PNG",
        **doc(
            "Render a shaded front view of the head model's mesh, posed by expression values, identity "
            "coefficients and jaw opening, as a PNG.",
            "gshead headmodel render anny-head --expression jawOpen=1 --expression eyeBlinkLeft=1 -o head.png",
        ),
    )  # fmt: skip
    s.add_argument("name", metavar="NAME", help="registered head model name (see 'gshead plugins')")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help=set_help)
    s.add_argument(
        "--expression",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="expression value (repeatable)",
    )
    s.add_argument(
        "--identity", nargs="+", type=float, default=None, metavar="X", help="leading identity coefficients"
    )
    s.add_argument("--jaw", type=float, default=0.0, metavar="RAD", help="jaw opening in radians (default 0)")
    s.add_argument("--size", type=int, default=512, metavar="PX", help="image side in pixels (default 512)")
    s.add_argument("-o", "--output", required=True, metavar="FILE", help="PNG file to write")
    s.set_defaults(func=cmd_render)
