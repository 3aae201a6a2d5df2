#!/usr/bin/env python
"""Record GAGAvatar reference outputs from the official code, for ``tests/plugins/test_gagavatar_parity.py``.

    python scripts/record_gagavatar_reference.py --official /path/to/GAGAvatar \\
        --dinov2 /path/to/dinov2 [--pytorch3d /path/to/pytorch3d] -o tests/data/gagavatar_reference/

``--official`` is a checkout of ``xg-chu/GAGAvatar``, ``--dinov2`` one of
``facebookresearch/dinov2`` (what the official ``torch.hub.load`` would download), and
``--pytorch3d`` one of ``facebookresearch/pytorch3d`` (only its pure-torch
``renderer/implicit/harmonic_embedding.py`` is loaded; nothing is compiled). Everything runs on
CPU, in float32, outside this repository; the official modules are imported from the checkout
with stubs only for what needs CUDA or a download: the 32-channel CUDA rasterizer (never
called) and the training-only perceptual loss. No official code is copied into gshead: the
output is numbers.

Both this script and the parity test build the same inputs from fixed seeds:

* ``synthetic_checkpoint()``: every key of the official state dict at its official shape
  (``tests/data/gagavatar_state_dict_manifest.json``), plus two training-only
  ``percep_loss.*`` keys, values drawn from ``SEED`` and scaled by 1/sqrt(fan-in) so that
  activations stay O(1) through the 12 ViT blocks (layer norms ~1, biases ~0.1);
* ``fixed_inputs()``: a 512 x 512 source image in [0, 1], a pytorch3d ``[R|T]`` source
  camera (FLAME x 5 units, focal 12), 5,023 synthetic "FLAME" vertices, and a 32-channel
  512 x 512 feature image for the StyleUNet.

Recorded (``reference.safetensors``; a sampled subset of each tensor, with the indices):

========================  ==========================================================
``dino.tokens``           [4, T, 768] normalised patch tokens of blocks 8-11 at T sampled tokens
``dino.global``           [768] official global feature (first patch token of block 11)
``dpt.values``            DPT map [1, 256, 296, 296] at ``dpt.index`` (flat indices)
``l{k}.<attr>``           plane layer k: xyz, colors, opacities, scales, rotations at ``gauss.index``
``g.<attr>``              expression Gaussians at ``g.index`` (xyz = the synthetic vertices)
``unet.logits/values``    StyleUNet output before/after its sigmoid [1, 3, 512, 512] (stored
                          noise, ``randomize_noise=False``) at ``unet.index``
``unet.fresh.logits``     the same with the official default ``randomize_noise=True`` (fresh
                          noise per layer from torch's generator) after
                          ``torch.manual_seed(FRESH_NOISE_SEED)``, at ``unet.index``
``flame.<p>.<param>``     FLAME parameters (``flame_params()``) of the source (``src``) and of a
                          driven frame (``drv``): shape [300], exp [100], pose [6] (global, jaw),
                          eyes [6]
``flame.<p>.vertices``    the official ``FLAMEModel(300, 100, scale=5, no_lmks=True)`` vertices
                          [5023, 3] (FLAME x 5) for those parameters, on the synthetic FLAME file
                          ``write_synthetic_flame()``: the expression Gaussians' positions
                          (official: ``xyz = t_points``; rotations, scales, colours stay as at
                          the source)
========================  ==========================================================

``global_pose.safetensors`` (a few KB; ``--only global-pose`` records just this file) is the
official *inference* path for one driven frame with a **non-zero FLAME global pose**: the official
``DriverData`` (``core/data/loader_track.py``, given the frame as a dict, as ``inference.py`` does
for a tracked image) evaluates ``FLAMEModel`` on the frame's ``posecode`` = [global, jaw], and
``GAGAvatar.forward_expression`` builds the Gaussians it hands to ``render_gaussian`` (stubbed to
capture its arguments and stop; nothing is rendered):

========================  ==========================================================
``pose.<param>``          the frame (``global_pose_frame()``): shape [300] (the source's: the
                          official ``DriverData`` uses ``f_shape``), exp [100], pose [6] with a
                          non-zero global part, eyes [6], transform [3, 4] (the frame's camera)
``pose.g.<attr>``         the expression Gaussians handed to the rasterizer at ``pose.g.index``:
                          xyz (FLAME x 5; the mesh turned about joint 0), rotations (the
                          generator's, as at the source), scales
``pose.l{k}.xyz``         plane layer k's positions in that frame at ``pose.l.index`` (they stay
                          where the source camera put them)
``pose.cam``              the ``cam_matrix`` handed to the rasterizer [3, 4] (the frame's own)
``pose.joint0``           FLAME joint 0 of the frame's shaped mesh (official ``J_regressor[0]``
                          on ``v_template + shapedirs [shape, exp]``, x 5), for the docs/test
========================  ==========================================================

The synthetic ``FLAME_with_eye.pt`` (``write_synthetic_flame(path, seed)``: every key the
official ``FLAMEModel`` reads, FLAME's shapes, random contents, every vertex in some triangle) is
written to a temporary folder and read by both the official ``FLAMEModel`` and gshead's ``flame``
head model; it is never stored (25 MB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "data" / "gagavatar_state_dict_manifest.json"
SEED = 18
PLANE = 296
VERTICES = 5023
# Two of the 36 training-only keys (frozen VGG-Face / AlexNet); an importer must drop them.
PERCEP_KEYS = {"percep_loss.vggface.conv_1_1.weight": [64, 3, 3, 3], "percep_loss.net.lin0.weight": [1, 64, 1, 1]}
# Samples per stage (a few MB in all).
N_TOKENS, N_DPT, N_GAUSS, N_EXPR, N_UNET = 32, 16384, 1024, 1024, 16384
N_POSE_EXPR, N_POSE_PLANE = 256, 64  # global_pose.safetensors: a few KB
FRESH_NOISE_SEED = 1234
FLAME_FACES, FLAME_JOINTS = 9976, 5


# ---------------------------------------------------------------------------- shared inputs
def _scale(key: str, shape: list[int]) -> tuple[float, float]:
    """(mean, std) for a synthetic tensor: weights ~ 1/sqrt(fan-in), norms ~ 1, biases ~ 0.1."""
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) <= 1:
        if ("norm" in key and leaf == "weight") or leaf == "gamma":
            return 1.0, 0.1
        if "modulation" in key and leaf == "bias":
            return 1.0, 0.1
        return 0.0, 0.1
    if key.endswith(("cls_token", "mask_token", "pos_embed")):
        return 0.0, 0.02
    if key == "head_base" or "noises." in key or "constant_input" in key:
        return 0.0, 1.0
    if ".bias" in key or leaf == "bias":  # [1, C, 1, 1] biases of the StyleGAN convs
        return 0.0, 0.1
    if "resize_layers.0" in key or "resize_layers.1" in key:  # ConvTranspose2d [in, out, k, k]
        fan = shape[0]
    else:
        fan = math.prod(shape[1:])
        if leaf == "weight" and len(shape) == 5:  # modulated conv [1, out, in, k, k]
            fan = math.prod(shape[2:])
    return 0.0, 1.0 / math.sqrt(fan)


def synthetic_checkpoint(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Every official state-dict key at its shape, values from ``seed`` (see the module docstring)."""
    manifest = json.loads(MANIFEST.read_text())
    manifest.update(PERCEP_KEYS)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in manifest.items():
        mean, std = _scale(key, shape)
        out[key] = torch.randn(shape, generator=g) * std + mean
    return out


def official_transform(yaw_deg: float = 12.0, pitch_deg: float = -6.0) -> torch.Tensor:
    """A pytorch3d [R|T] [3, 4] (x_cam = x R + T, +X left, +Y up), FLAME x 5 units, focal 12."""
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    r = (ry @ rx).float()
    t = torch.tensor([0.04, -0.03, 14.0])
    return torch.cat([r, t[:, None]], dim=1)


def fixed_inputs(seed: int = SEED) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    low = torch.rand(1, 3, 32, 32, generator=g)  # a smooth image plus some fine detail
    image = F.interpolate(low, size=(512, 512), mode="bilinear", align_corners=False)
    image = (0.8 * image + 0.2 * torch.rand(1, 3, 512, 512, generator=g)).clamp(0, 1)
    vertices = 1.2 * (torch.rand(1, VERTICES, 3, generator=g) - 0.5)  # FLAME x 5 units
    features = torch.randn(1, 32, 512, 512, generator=g)
    return {"image": image, "transform": official_transform(), "vertices": vertices, "unet_input": features}


def write_synthetic_flame(path: Path, seed: int = SEED) -> Path:
    """A GAGAvatar-style ``FLAME_with_eye.pt`` with FLAME's keys and shapes and random contents
    (float32; a 0.1 m head-sized sphere, local joint regressor, every vertex used by a triangle)."""
    g = torch.Generator().manual_seed(seed + 3)
    v, f, j = VERTICES, FLAME_FACES, FLAME_JOINTS
    d = torch.randn(v, 3, generator=g)
    template = 0.1 * d / d.norm(dim=1, keepdim=True)
    cover = torch.cat([torch.randperm(v, generator=g), torch.randperm(v, generator=g)[: (-v) % 3]]).reshape(-1, 3)
    rest = torch.stack([torch.randperm(v, generator=g)[:3] for _ in range(f - cover.shape[0])])
    faces = torch.cat([cover, rest])
    reg = torch.zeros(j, v)
    for k in range(j):
        cols = torch.randperm(v, generator=g)[:12]
        w = torch.rand(12, generator=g) + 0.1
        reg[k, cols] = w / w.sum()
    weights = torch.rand(v, j, generator=g) ** 3
    weights = weights / weights.sum(1, keepdim=True)
    lmk_faces = torch.randint(0, f, (70,), generator=g)
    lmk_bary = torch.rand(70, 3, generator=g)
    lmk_bary = lmk_bary / lmk_bary.sum(1, keepdim=True)
    model = {
        "v_template": template,
        "f": faces.long(),
        "shapedirs": 2e-3 * torch.randn(v, 3, 400, generator=g),
        "posedirs": 1e-2 * torch.randn(v, 3, 36, generator=g),
        "J_regressor": reg,
        "kintree_table": torch.tensor([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
        "weights": weights,
    }
    lmk = {
        "static_lmk_faces_idx": lmk_faces[17:68].clone(),
        "static_lmk_bary_coords": lmk_bary[17:68].clone(),
        "dynamic_lmk_faces_idx": torch.randint(0, f, (79, 17), generator=g),
        "dynamic_lmk_bary_coords": torch.rand(79, 17, 3, generator=g),
        "full_lmk_faces_idx_with_eye": lmk_faces[None].clone(),
        "full_lmk_bary_coords_with_eye": lmk_bary[None].clone(),
    }
    path = Path(path)
    torch.save({"flame_model": model, "lmk_embeddings": lmk}, path)
    return path


def flame_params(seed: int = SEED) -> dict[str, torch.Tensor]:
    """FLAME parameters (official layout) of the source and of one driven frame: ``{src,drv}.shape``
    [300] (shared), ``.exp`` [100], ``.pose`` [6] (global 0, jaw), ``.eyes`` [6] (left, right)."""
    g = torch.Generator().manual_seed(seed + 4)
    shape = 0.5 * torch.randn(300, generator=g)
    out = {}
    for name, amount in (("src", 0.3), ("drv", 1.0)):
        jaw = amount * torch.tensor([0.2, 0.03, -0.02]) + 0.02 * torch.randn(3, generator=g)
        out[f"flame.{name}.shape"] = shape.clone()
        out[f"flame.{name}.exp"] = amount * torch.randn(100, generator=g)
        out[f"flame.{name}.pose"] = torch.cat([torch.zeros(3), jaw])
        out[f"flame.{name}.eyes"] = amount * 0.15 * torch.randn(6, generator=g)
    return out


def global_pose_frame(seed: int = SEED) -> dict[str, torch.Tensor]:
    """One driven frame (official layout) with a non-zero FLAME global pose (radians: about
    22 degrees of yaw, some pitch and roll), the driven expression / jaw / eyes of
    ``flame_params()``, the source's shape, and a camera of its own."""
    p = flame_params(seed)
    glob = torch.tensor([0.12, -0.38, 0.09])
    return {
        "pose.shape": p["flame.src.shape"].clone(),
        "pose.exp": p["flame.drv.exp"].clone(),
        "pose.pose": torch.cat([glob, p["flame.drv.pose"][3:]]),
        "pose.eyes": p["flame.drv.eyes"].clone(),
        "pose.transform": official_transform(-7.0, 4.0),
    }


def global_pose_indices(seed: int = SEED) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 5)
    return {
        "pose.g.index": torch.randperm(VERTICES, generator=g)[:N_POSE_EXPR],
        "pose.l.index": torch.randint(0, PLANE * PLANE, (N_POSE_PLANE,), generator=g),
    }


def sample_indices(seed: int = SEED) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 2)
    tokens = torch.cat([torch.tensor([0, 1, 36, 37, 1368]), torch.randperm(1369, generator=g)[: N_TOKENS - 5]])
    dpt = torch.randint(0, 256 * PLANE * PLANE, (N_DPT,), generator=g)
    n = PLANE * PLANE
    # columns 0-2 (where the official colour sigmoid lands) and random points
    edge = torch.arange(0, n, PLANE)[:, None] + torch.arange(3)[None]
    gauss = torch.cat([edge.reshape(-1)[:: max(1, edge.numel() // 128)], torch.randint(0, n, (N_GAUSS,), generator=g)])
    expr = torch.randperm(VERTICES, generator=g)[:N_EXPR]
    unet = torch.randint(0, 3 * 512 * 512, (N_UNET,), generator=g)
    return {"dino.index": tokens, "dpt.index": dpt, "gauss.index": gauss, "g.index": expr, "unet.index": unet}


# ---------------------------------------------------------------------------- official code
def _load_file_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_function(path: Path, name: str):
    """One top-level function of an official file (with the file's constants), without running its
    imports (the loader imports lmdb and the FLAME model)."""
    import ast

    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.Assign) or (isinstance(n, ast.FunctionDef) and n.name == name)]
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def _official_flame(official: Path, flame_file: Path):
    """The official ``FLAMEModel`` (n_shape 300, n_exp 100, scale 5, no landmarks: what the official
    loader builds), reading ``flame_file`` instead of ``<checkout>/assets/FLAME_with_eye.pt``.
    ``core.libs.flame_model/__init__`` is skipped (it imports the pytorch3d mesh renderer)."""
    package = types.ModuleType("core.libs.flame_model")
    package.__path__ = [str(official / "core" / "libs" / "flame_model")]
    sys.modules["core.libs.flame_model"] = package
    import importlib

    flame_module = importlib.import_module("core.libs.flame_model.FLAME")
    package.FLAMEModel = flame_module.FLAMEModel
    real_load = torch.load

    def load(f, *args, **kwargs):
        return real_load(flame_file if str(f).endswith("FLAME_with_eye.pt") else f, *args, **kwargs)

    torch.load = load
    try:
        return flame_module.FLAMEModel(n_shape=300, n_exp=100, scale=5.0, no_lmks=True).eval()
    finally:
        torch.load = real_load


def _install_stubs(official: Path, dinov2: Path, pytorch3d: Path | None) -> None:
    import torch.nn as nn

    # pytorch3d: only HarmonicEmbedding (pure torch), from a checkout when given
    p3d = types.ModuleType("pytorch3d")
    renderer = types.ModuleType("pytorch3d.renderer")
    implicit = types.ModuleType("pytorch3d.renderer.implicit")
    if pytorch3d is not None:
        harmonic = _load_file_module(
            "pytorch3d.renderer.implicit.harmonic_embedding",
            pytorch3d / "pytorch3d" / "renderer" / "implicit" / "harmonic_embedding.py",
        )
    else:  # pytorch3d's documented layout: [sin(x f) coordinate-major, cos(x f), x]
        harmonic = types.ModuleType("pytorch3d.renderer.implicit.harmonic_embedding")

        class HarmonicEmbedding(nn.Module):
            def __init__(self, n_harmonic_functions=6, omega_0=1.0, logspace=True, append_input=True):
                super().__init__()
                self.register_buffer("_frequencies", omega_0 * 2.0 ** torch.arange(n_harmonic_functions))
                self.append_input = append_input

            def forward(self, x):
                e = (x[..., None] * self._frequencies).reshape(*x.shape[:-1], -1)
                return torch.cat([e.sin(), e.cos(), x] if self.append_input else [e.sin(), e.cos()], dim=-1)

        harmonic.HarmonicEmbedding = HarmonicEmbedding
    sys.modules.update({
        "pytorch3d": p3d, "pytorch3d.renderer": renderer, "pytorch3d.renderer.implicit": implicit,
        "pytorch3d.renderer.implicit.harmonic_embedding": harmonic,
    })
    # the 32-channel CUDA rasterizer: imported, never called here
    rast = types.ModuleType("diff_gaussian_rasterization_32d")
    rast.GaussianRasterizationSettings = rast.GaussianRasterizer = None
    sys.modules["diff_gaussian_rasterization_32d"] = rast
    # training-only perceptual loss (downloads VGG-Face)
    percep = types.ModuleType("core.libs.utils_perceptual")
    percep.FacePerceptualLoss = lambda *a, **k: nn.Module()
    sys.modules["core.libs.utils_perceptual"] = percep
    try:  # the official code uses two torchvision functions; where it is missing, the same maths
        import torchvision.transforms.functional  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")

        class Normalize(nn.Module):  # torchvision.transforms.Normalize on a tensor
            def __init__(self, mean, std):
                super().__init__()
                self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

            def forward(self, x):
                return (x - self.mean) / self.std

        def resize(x, size, antialias=True):  # torchvision's tensor resize: bilinear, half-pixel, [..., H, W]
            lead = x.shape[:-3]
            y = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=tuple(size), mode="bilinear", align_corners=False,
                              antialias=antialias)
            return y.reshape(*lead, *y.shape[1:])

        tv.transforms.Normalize = Normalize
        tv.transforms.functional.resize = resize
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                            "torchvision.transforms.functional": tv.transforms.functional})
    # torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14', pretrained=True) -> the local checkout
    sys.path.insert(0, str(dinov2))
    sys.path.insert(0, str(official))

    def hub_load(repo, name, pretrained=True, **kwargs):
        from dinov2.hub import backbones

        return getattr(backbones, name)(pretrained=False, **kwargs)

    torch.hub.load = hub_load


@torch.no_grad()
def record(
    official: Path, dinov2: Path, pytorch3d: Path | None, out_dir: Path, only: str | None = None
) -> dict[str, torch.Tensor]:
    import os

    os.environ.setdefault("XFORMERS_DISABLED", "1")
    _install_stubs(official, dinov2, pytorch3d)
    from core.models.GAGAvatar.models import GAGAvatar

    build_points_planes = _official_function(official / "core" / "data" / "loader_track.py", "build_points_planes")

    torch.manual_seed(0)
    model = GAGAvatar().eval()
    ckpt = synthetic_checkpoint()
    missing, unexpected = model.load_state_dict(ckpt, strict=False)
    assert not missing, missing
    assert all(k.startswith("percep_loss.") for k in unexpected), unexpected
    out_dir.mkdir(parents=True, exist_ok=True)
    _save(record_global_pose(model, official), out_dir / "global_pose.safetensors")
    if only == "global-pose":
        return {}
    inputs, idx = fixed_inputs(), sample_indices()
    out: dict[str, torch.Tensor] = dict(idx)

    # the official data path: 512 -> 518 (antialiased), planes from the source transform
    f_image = torchvision_resize(inputs["image"], 518)
    planes = build_points_planes(PLANE, inputs["transform"])
    plane_points, plane_dirs = planes["plane_points"][None], planes["plane_dirs"][None]

    base = model.base_model
    normed = base.dino_normlize(f_image)
    tokens = base.dino_model.get_intermediate_layers(normed, 4)  # 4 x [1, 1369, 768]
    out["dino.tokens"] = torch.stack([t[0, idx["dino.index"]] for t in tokens])
    f_feature0, f_feature1 = base(f_image)
    out["dino.global"] = f_feature1[0]
    out["dpt.values"] = f_feature0.reshape(-1)[idx["dpt.index"]]

    direnc = model.harmo_encoder(plane_dirs)
    out["direction.code"] = direnc[0]
    out["plane.points"] = plane_points[0, idx["gauss.index"]]
    out["plane.dir"] = plane_dirs[0]
    for k, gen in enumerate((model.gs_generator_l0, model.gs_generator_l1)):
        p = gen(f_feature0, direnc)
        sign = 1.0 if k == 0 else -1.0
        p["xyz"] = plane_points + sign * p["positions"] * plane_dirs[:, None]
        for name in ("xyz", "colors", "opacities", "scales", "rotations", "positions"):
            out[f"l{k}.{name}"] = p[name][0, idx["gauss.index"]]

    gin = torch.cat([model.head_base[None], f_feature1[:, None].expand(-1, VERTICES, -1)], dim=-1)
    p = model.gs_generator_g(gin, direnc)
    p["xyz"] = inputs["vertices"]
    for name in ("xyz", "colors", "opacities", "scales", "rotations"):
        out[f"g.{name}"] = p[name][0, idx["g.index"]]

    model.upsampler.activation = False  # the logits (the sigmoid saturates on random weights)
    logits = model.upsampler(inputs["unet_input"], randomize_noise=False)
    out["unet.logits"] = logits.reshape(-1)[idx["unet.index"]]
    out["unet.values"] = torch.sigmoid(logits).reshape(-1)[idx["unet.index"]]
    torch.manual_seed(FRESH_NOISE_SEED)  # the official inference default: fresh noise every call
    fresh = model.upsampler(inputs["unet_input"])
    out["unet.fresh.logits"] = fresh.reshape(-1)[idx["unet.index"]]

    # FLAME: the expression Gaussians' positions at the source and at a driven frame
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        flame = _official_flame(official, write_synthetic_flame(Path(tmp) / "FLAME_with_eye.pt"))
    params = flame_params()
    out.update(params)
    for name in ("src", "drv"):
        verts = flame(
            shape_params=params[f"flame.{name}.shape"][None], pose_params=params[f"flame.{name}.pose"][None],
            expression_params=params[f"flame.{name}.exp"][None], eye_pose_params=params[f"flame.{name}.eyes"][None],
        )
        out[f"flame.{name}.vertices"] = verts[0].float()

    _save(out, out_dir / "reference.safetensors")
    return out


def _save(out: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    out.update({k: v.contiguous() for k, v in out.items()})
    save_file(out, str(path), metadata={
        "source": "xg-chu/GAGAvatar (official modules on CPU, float32)",
        "seed": str(SEED),
        "recorded_by": "scripts/record_gagavatar_reference.py",
    })


class _Captured(Exception):
    """Raised by the stubbed ``render_gaussian`` once it has the Gaussians (nothing is rendered)."""


def record_global_pose(model, official: Path) -> dict[str, torch.Tensor]:
    """The official inference path for a driven frame with a non-zero FLAME global pose (module
    docstring): ``DriverData`` -> ``forward_expression`` -> the arguments of ``render_gaussian``."""
    import tempfile

    official_models = sys.modules["core.models.GAGAvatar.models"]  # imported by record()

    inputs, frame, idx = fixed_inputs(), global_pose_frame(), global_pose_indices()
    with tempfile.TemporaryDirectory() as tmp:
        flame_file = write_synthetic_flame(Path(tmp) / "FLAME_with_eye.pt")
        flame = _official_flame(official, flame_file)  # installs core.libs.flame_model (FLAMEModel)
        lmdb_stub = types.ModuleType("core.libs.utils_lmdb")  # the loader imports it; a dict replaces it
        lmdb_stub.LMDBEngine = None
        sys.modules["core.libs.utils_lmdb"] = lmdb_stub
        loader = _load_file_module("gagavatar_loader_track", official / "core" / "data" / "loader_track.py")
        feature = {"image": inputs["image"][0], "transform_matrix": inputs["transform"], "shapecode": frame["pose.shape"]}
        record = {
            "posecode": frame["pose.pose"], "expcode": frame["pose.exp"], "eyecode": frame["pose.eyes"],
            "transform_matrix": frame["pose.transform"], "image": torch.zeros(3, 512, 512),
        }
        real_load = torch.load

        def load(f, *args, **kwargs):
            return real_load(flame_file if str(f).endswith("FLAME_with_eye.pt") else f, *args, **kwargs)

        torch.load = load
        try:
            data = loader.DriverData({"frame_0": record}, feature, PLANE)
        finally:
            torch.load = real_load
    batch = torch.utils.data.default_collate([data[0]])
    captured: dict = {}

    def render_gaussian(gs_params, cam_matrix, cam_params):
        captured.update(gs=gs_params, cam=cam_matrix)
        raise _Captured

    real_render = official_models.render_gaussian
    official_models.render_gaussian = render_gaussian
    try:
        if hasattr(model, "_gs_params"):
            del model._gs_params
        model.forward_expression(batch)
    except _Captured:
        pass
    finally:
        official_models.render_gaussian = real_render
    gs, n = captured["gs"], PLANE * PLANE
    out: dict[str, torch.Tensor] = {**frame, **idx}
    for name in ("xyz", "rotations", "scales"):
        out[f"pose.g.{name}"] = gs[name][0, :VERTICES][idx["pose.g.index"]]
    for k in (0, 1):
        out[f"pose.l{k}.xyz"] = gs["xyz"][0, VERTICES + k * n :][idx["pose.l.index"]]
    out["pose.cam"] = captured["cam"][0].float()
    betas = torch.cat([frame["pose.shape"], frame["pose.exp"]])[None]
    shaped = flame.v_template[None] + torch.einsum("bl,mkl->bmk", betas, flame.shapedirs)
    out["pose.joint0"] = (flame.J_regressor[0] @ shaped[0]) * flame.scale
    return out


def torchvision_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """What the official loader does: torchvision resize (bilinear, antialias) to size x size."""
    return sys.modules["torchvision.transforms.functional"].resize(image, (size, size), antialias=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True, type=Path, help="checkout of xg-chu/GAGAvatar")
    p.add_argument("--dinov2", required=True, type=Path, help="checkout of facebookresearch/dinov2")
    p.add_argument("--pytorch3d", type=Path, help="checkout of facebookresearch/pytorch3d (HarmonicEmbedding)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the .safetensors files")
    p.add_argument("--only", choices=("global-pose",), help="record only global_pose.safetensors")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    record(args.official, args.dinov2, args.pytorch3d, args.output, only=args.only)
    for name in ("global_pose.safetensors",) + (() if args.only else ("reference.safetensors",)):
        size = (args.output / name).stat().st_size
        print(f"wrote {args.output / name}: {size / 1e6:.3f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
