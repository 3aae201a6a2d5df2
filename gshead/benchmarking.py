"""Building blocks of the benchmark suite (``benchmarks/``), importable by tests and other tools.

- **Scenes**: ``head_scene(count, size, channels)`` lays Gaussians out like a head, as avatars render
  them: ``count - int(count * back_fraction)`` on the surface of an ellipsoid head (a thin shell,
  small flattened splats, mostly opaque), ``int(count * back_fraction)`` (20 % by default) on a
  plane behind it (hair / backdrop), seen by a frontal ``size``² camera that frames the head.
  The rasterizer's reference scenes (issue #10) are ``SCENES``::

      A = head_scene(50_000, 256, 32)    B = head_scene(180_000, 512, 32)

- **Modes**: ``bench_settings()`` reads ``GSHEAD_BENCH`` (``quick``, the default and what CI runs:
  single-threaded, small sizes, few rounds, ratios only; ``full``: the real sizes on all threads,
  and the absolute targets asserted) and ``GSHEAD_BENCH_THREADS`` (overrides the thread count).
- **Pipelines**: ``pipeline_config`` loads a shipped YAML with slots replaced (e.g. the refiner set to
  ``identity``), ``parameter_counts`` counts each component's parameters, ``to_device`` moves a
  built pipeline, ``synchronized`` wraps a callable so timed GPU work has finished when it returns.
- **Tables**: ``markdown_table`` formats result rows for the terminal summary.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gshead.core.errors import ConfigError
from gshead.core.types import Camera, Gaussians

__all__ = [
    "BACK_PLANE_Z",
    "HEAD_RADII",
    "MODES",
    "SCENES",
    "BenchSettings",
    "Scene",
    "bench_settings",
    "head_scene",
    "markdown_table",
    "parameter_counts",
    "pipeline_config",
    "synchronized",
    "to_device",
    "with_tiny_encoder",
]

HEAD_RADII = (0.078, 0.105, 0.092)  # metres: half width, half height, half depth of the head
BACK_PLANE_Z = -0.12  # world z of the plane behind the head (the camera looks down -z)
BACK_FRACTION = 0.2  # default share of the Gaussians on the back plane

SCENES: dict[str, tuple[int, int, int]] = {
    "A": (50_000, 256, 32),
    "B": (180_000, 512, 32),
}
"""The rasterizer's reference scenes: name -> (Gaussians, image size, channels)."""


@dataclass(frozen=True)
class Scene:
    """A named head-like scene ready to rasterize."""

    name: str
    gaussians: Gaussians  # [1, N]
    camera: Camera  # [1]
    background: torch.Tensor  # [C]

    @property
    def label(self) -> str:
        n, size, c = self.gaussians.count, self.camera.width, self.gaussians.channels
        count = f"{n // 1000}k" if n >= 1000 else str(n)
        return f"{self.name}: {count} Gaussians, {size}x{size}, {c} channels"

    @staticmethod
    def build(name: str, count: int, size: int, channels: int, seed: int = 0) -> Scene:
        gaussians, camera, background = head_scene(count, size, channels, seed=seed)
        return Scene(name, gaussians, camera, background)


def head_scene(
    count: int,
    size: int,
    channels: int,
    seed: int = 0,
    back_fraction: float = BACK_FRACTION,
    batch: int = 1,
) -> tuple[Gaussians, Camera, torch.Tensor]:
    """``count`` Gaussians ``[batch, count]`` shaped like a head in front of a plane, a frontal
    ``size``² camera ``[batch]`` and a background ``[channels]``.

    ``int(count * back_fraction)`` Gaussians lie on the back plane (z near ``BACK_PLANE_Z``), the
    rest on the head ellipsoid (``HEAD_RADII``). Splat size scales with 1/sqrt(count) so the screen
    coverage (Gaussians per pixel) stays head-like at any count. Deterministic for a given seed.
    """
    if count < 0 or size < 1 or channels < 1 or batch < 1:
        raise ConfigError(
            f"head_scene: expected count >= 0, size >= 1, channels >= 1, batch >= 1; "
            f"got {count}, {size}, {channels}, {batch}"
        )
    if not 0.0 <= back_fraction <= 1.0:
        raise ConfigError(f"head_scene: back_fraction must lie in [0, 1], got {back_fraction}")
    g = torch.Generator().manual_seed(seed)
    n_back = int(count * back_fraction)
    n_head = count - n_back

    # Head: uniform directions on the unit sphere, stretched to the ellipsoid, small radial jitter.
    d = torch.randn(n_head, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    jitter = 1.0 + 0.03 * torch.randn(n_head, 1, generator=g)
    head = d * torch.tensor(HEAD_RADII) * jitter
    # Back plane: a rectangle behind the head, wider than it (shoulders / hair / backdrop).
    u = torch.rand(n_back, 2, generator=g) * 2.0 - 1.0
    back = torch.stack(
        [0.16 * u[:, 0], 0.16 * u[:, 1] - 0.02, BACK_PLANE_Z + 0.01 * torch.randn(n_back, generator=g)], dim=1
    )
    means = torch.cat([head, back])  # [N, 3]

    base = 0.0035 * math.sqrt(50_000 / max(count, 1))  # ~3.5 mm splats at 50k Gaussians
    scales = base * torch.exp(0.4 * torch.randn(count, 3, generator=g))
    scales[:, 2] *= 0.3  # flattened splats, as trained ones tend to be
    quats = torch.randn(count, 4, generator=g)
    quats = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    opacities = torch.sigmoid(1.5 + 1.5 * torch.randn(count, generator=g))  # mostly opaque, some faint
    features = torch.rand(count, channels, generator=g)
    gaussians = Gaussians(means[None], quats[None], scales[None], opacities[None], features[None])
    camera = Camera.frontal(distance=0.6, fov_degrees=30.0, width=size, height=size, batch_size=batch)
    background = torch.rand(channels, generator=g)
    return gaussians.expand(batch), camera, background


# -- modes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark mode runs. ``quick`` is CI's: small sizes, few rounds, only ratios that
    hold on any machine are asserted. ``full`` runs the issues' sizes and asserts their targets."""

    mode: str
    scenes: Mapping[str, tuple[int, int, int]]  # rasterizer scenes: name -> (Gaussians, size, channels)
    render_sizes: tuple[int, ...]  # square driving resolutions
    rounds: int  # timed rounds per pipeline benchmark (after warm-up)
    warmup_rounds: int
    raster_rounds: int  # timed rounds of the rasterizer forward
    reference_rounds: int  # timed rounds of the slow pure-torch reference rasterizer
    assert_targets: bool  # assert absolute FPS / ms targets (full only: CI machines vary)
    threads: int | None  # torch and numba CPU threads for the run; None: as configured (all cores).
    # 1 in quick mode: on a busy or shared machine multi-threaded kernels stall on taken cores (10x
    # swings seen here), single-threaded runs are steadier and finish sooner.
    include_official_gagavatar: bool  # also benchmark configs/gagavatar.yaml (official sizes)
    tiny_encoders: bool  # build the pipelines with their encoder's ``tiny`` variant (driving cost
    # does not depend on the encoder: the independence test checks exactly that)
    contract_pipeline: str  # pipeline YAML for the encoder-independence check (relative to the repo)
    contract_overrides: Mapping[str, Any]  # settings/slots replaced in that pipeline
    contract_sizes: tuple[str, ...] | None  # its encoder variants; None: every one within the budget
    contract_frames: int
    contract_tolerance: tuple[float, float]  # accepted driving-time ratio largest/smallest encoder
    min_speedup_vs_reference: float  # cpu rasterizer forward vs torch-tiles, same scene, same run
    reconstruct_rounds: int  # timed reconstructions per pipeline
    encoder_size_pipeline: str  # pipeline YAML whose encoder variant is swept for reconstruction time
    encoder_sizes: tuple[str, ...]  # its encoder variants, smallest first


MODES: dict[str, BenchSettings] = {
    "quick": BenchSettings(
        mode="quick",
        scenes={"A-quick": (2_000, 64, 16)},
        render_sizes=(128,),
        rounds=3,
        warmup_rounds=1,
        raster_rounds=5,
        reference_rounds=1,
        assert_targets=False,
        threads=1,
        include_official_gagavatar=False,
        tiny_encoders=True,
        contract_pipeline="configs/gagavatar-anny.yaml",
        contract_overrides={"render_size": 128, "refiner": {"name": "identity"}},
        contract_sizes=("tiny", "vits14"),
        contract_frames=10,
        # Few frames on a busy CI machine: a wider band than the contract's, still catching a driver
        # that reads the encoder (that costs a multiple, not a few percent).
        contract_tolerance=(0.8, 1.25),
        min_speedup_vs_reference=2.0,
        reconstruct_rounds=1,
        encoder_size_pipeline="configs/gagavatar-anny.yaml",
        encoder_sizes=("tiny", "vitb14"),
    ),
    "full": BenchSettings(
        mode="full",
        scenes=dict(SCENES),
        render_sizes=(256, 512),
        rounds=20,
        warmup_rounds=3,
        raster_rounds=15,
        reference_rounds=3,
        assert_targets=True,
        threads=None,
        include_official_gagavatar=True,
        tiny_encoders=False,
        contract_pipeline="configs/separated-cpu.yaml",
        contract_overrides={},
        contract_sizes=("300m", "1b"),  # the smallest published WebSSL and the largest within 8 GB
        contract_frames=30,
        contract_tolerance=(0.95, 1.05),
        min_speedup_vs_reference=10.0,
        reconstruct_rounds=5,
        encoder_size_pipeline="configs/gagavatar-anny.yaml",
        encoder_sizes=("vits14", "vitb14", "vitl14"),
    ),
}


def bench_settings(mode: str | None = None) -> BenchSettings:
    """The settings of ``mode`` (default: ``$GSHEAD_BENCH``, ``quick`` when unset or empty), with the
    thread count replaced by ``$GSHEAD_BENCH_THREADS`` when set (e.g. 1 for full runs on a shared machine)."""
    if mode is None:
        mode = os.environ.get("GSHEAD_BENCH", "").strip() or "quick"
    if mode not in MODES:
        raise ConfigError(f"GSHEAD_BENCH: unknown mode {mode!r}; expected one of: {', '.join(MODES)}")
    settings = MODES[mode]
    threads = os.environ.get("GSHEAD_BENCH_THREADS", "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ConfigError(f"GSHEAD_BENCH_THREADS: expected a positive integer, got {threads!r}")
        settings = dataclasses.replace(settings, threads=int(threads))
    return settings


def portrait_crop(pipeline, device: str = "cpu"):
    """The built-in portrait (scikit-image's astronaut) cropped by ``pipeline``'s tracker at its
    source size, [1, 3, S, S] on ``device``: landmark trackers need a real face to reconstruct."""
    from gshead.io.media import read_image

    return pipeline.prepare_image(read_image("example:astronaut")).to(device)


# -- pipelines ----------------------------------------------------------------------------------
def pipeline_config(path: str | Path, registry=None, **slots: Any) -> dict[str, Any]:
    """The pipeline YAML at ``path``, validated, as a plain dict with ``slots`` replaced
    (``refiner={"name": "identity"}``, ``render_size=512``); validated again by ``Pipeline.from_dict``."""
    from gshead.core.config import load_pipeline
    from gshead.core.registry import get_registry

    data = load_pipeline(path, registry or get_registry()).model_dump(mode="json")
    data.update(slots)
    return data


def with_tiny_encoder(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of pipeline config ``data`` whose encoder is its ``tiny`` variant (random weights), when
    the encoder has one (``dinov2``, ``webssl``); unchanged otherwise."""
    encoder = dict(data["encoder"])
    for field in ("variant", "size"):
        if field in encoder:
            encoder[field] = "tiny"
            if "weights" in encoder:
                encoder["weights"] = None
            break
    return {**data, "encoder": encoder}


def parameter_counts(pipeline) -> dict[str, int]:
    """Parameters of each component of a built ``Pipeline`` (0 for those without weights), by kind."""
    out: dict[str, int] = {}
    for kind, component in pipeline.components().items():
        params = component.parameters() if isinstance(component, torch.nn.Module) else ()
        out[kind] = sum(p.numel() for p in params)
    return out


def to_device(pipeline, device: str | torch.device) -> None:
    """Move every ``nn.Module`` component of a built ``Pipeline`` to ``device`` (in place)."""
    for component in pipeline.components().values():
        if isinstance(component, torch.nn.Module):
            component.to(device)


def synchronized(fn: Callable[..., Any], device: str | torch.device) -> Callable[..., Any]:
    """``fn`` followed by ``torch.cuda.synchronize()`` when ``device`` is CUDA, so a timer around the
    call measures the GPU work, not just its launch. Unchanged for other devices."""
    if torch.device(device).type != "cuda":
        return fn

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out

    return call


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as a markdown table with ``columns`` (missing cells empty; floats to 4 significant
    digits, ints with thousands separators)."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in body]
    return "\n".join(lines)
