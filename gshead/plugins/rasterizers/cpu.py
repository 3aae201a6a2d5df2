"""``cpu``: the fast CPU rasterizer (compiled tile compositing, differentiable).

Same semantics as the ``torch-tiles`` reference (gsplat's; see ``torch_tiles.py``), 10x+ faster.
Split of the work:

- projection: when a gradient is needed, ``_projection.project_gaussians`` in torch (autograd
  gives its backward w.r.t. means, quats, scales and the camera); otherwise (inference, the
  per-frame path) the same formulas as one fused numba loop, ~5x faster than the torch ops;
- binning and depth sort (stable radix sort): numba (``_cpu_kernels.prepare``, 16 x 16 tiles);
- front-to-back compositing and its backward: the compiled AVX2 kernels (``_composite_avx2.c``
  via ``_cpu_native.py``) where the install built them and the CPU has AVX2/FMA, else numba's
  ``composite`` and ``composite_backward`` (config ``kernel``: ``auto``, ``native``, ``numba``);
  both pairs write the same outputs, and a backward always runs with the forward of its own
  pair (the two compute bit-identical alphas, so they make the same skip and stop decisions);
  all of it wrapped in one ``torch.autograd.Function`` whose backward returns gradients w.r.t.
  means2d, conics, opacities, features, depths and the background.

Why numba, plus one small C file: numba needs no compiler or build step on the user's machine,
generates code for the CPU it runs on and caches it on disk (``cache=True``: well under a second
to load in a new process, ~20-40 s to compile the first time on this 2-core machine). It could
not make the forward compositing fast enough: LLVM vectorises only long loops (so numba must
blend whole 16-pixel rows, most of them outside a Gaussian's box) and every branch on a blend
result waits for the exp chain. The C kernel works on 8-pixel half rows, one AVX2 register each,
skips half rows that have stopped, and adds features only where a pair blended. On this 2-core
machine it composites about 2x faster; the whole forward is 1.4x faster (scene A 26-33 ms
instead of 37-46, scene B 96-111 ms instead of 134-163; ``benchmarks/test_rasterize.py`` times
both), forward+backward about 1.4x (A 98-104 ms instead of 136-178). It is a plain C11 file
with no Python API, built by ``setup.py`` as an optional extension (an install without a
compiler still works, with the numba kernels); the numba twins stay as the fallback and as the
oracle in the tests.

Who owns the cores: the kernels, with ``numba.get_num_threads()`` threads (all cores by
default; ``NUMBA_NUM_THREADS`` changes it); the C kernel uses the same count, as POSIX threads
that take tiles from a shared counter. Torch runs only the cheap steps around them (finite
check, gradient projection, the final dtype casts), never at the same time. Nothing here calls
BLAS; an application that does should set ``OPENBLAS_NUM_THREADS=1`` so that OpenBLAS's
spinning threads stay off the kernels' cores.

Memory per camera: the output planes, per-tile pair lists (4 bytes per Gaussian-tile pair), a
[N, 8] table of per-Gaussian constants, two [H, W] planes kept for the backward (last blended
pair, final transmittance) and, in the backward, one [N, 7 + C] gradient buffer per thread.
Everything is float32 (float64 inputs are rendered in float32 and cast back).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.errors import GsheadError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Gaussians, Render
from gshead.plugins.rasterizers._projection import (
    EPS2D,
    Projected,
    broadcast_batches,
    check_finite,
    project_gaussians,
)

__all__ = ["CpuRasterizer", "CpuRasterizerConfig", "Kernel", "rasterize_cpu"]

Kernel = Literal["auto", "native", "numba"]


def rasterize_cpu(
    gaussians: Gaussians,  # [B, N] (or [1, N], broadcast to the cameras)
    camera: Camera,  # [B] (or [1], broadcast to the Gaussians)
    background: Tensor | None = None,  # [C] or None (zeros)
    near: float = 0.01,
    kernel: Kernel = "auto",
) -> Render:
    """Render ``gaussians`` through ``camera`` on the CPU (semantics of ``rasterize_tiles``).

    ``kernel`` picks the compositing kernels (forward and backward): ``"native"`` (the compiled
    AVX2 ones), ``"numba"``, or ``"auto"`` (native where built and the CPU has AVX2/FMA, else numba).

    Returns ``Render`` with features [B, C, H, W], alpha [B, 1, H, W], depth [B, 1, H, W] in
    the Gaussians' dtype (computed in float32). Differentiable w.r.t. means, quats, scales,
    opacities, features and the background. Raises ``GsheadError`` on NaN/inf inputs or CUDA
    tensors, ``ShapeError`` on mismatched batches, a bad background shape or zero channels.
    """
    gaussians, camera = broadcast_batches(gaussians, camera)
    channels = gaussians.channels
    if channels < 1:
        raise ShapeError("Gaussians.features: expected at least one channel, got 0")
    if gaussians.means.device.type != "cpu":
        raise GsheadError(
            f"cpu rasterizer: Gaussians are on {gaussians.means.device}; move them to the CPU "
            "or use the 'gsplat' / 'auto' rasterizer"
        )
    dtype = gaussians.means.dtype
    if background is None:
        background = torch.zeros(channels, dtype=dtype)
    elif background.shape != (channels,):
        raise ShapeError(f"background: expected shape [{channels}], got {list(background.shape)}")
    _check_finite(gaussians, camera, background)
    use_native = _use_native(kernel, channels)

    f32 = torch.float32
    inputs = [*gaussians.tensors().values(), camera.world_to_camera, camera.intrinsics]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        proj = project_gaussians(
            gaussians.means.to(f32),
            gaussians.quats.to(f32),
            gaussians.scales.to(f32),
            camera.world_to_camera.to(f32),
            camera.intrinsics.to(f32),
            camera.width,
            camera.height,
            near=near,
            eps2d=EPS2D,
        )
    else:  # inference: the same projection as one fused numba loop (~5x faster than the torch ops)
        proj = _project_no_grad(gaussians, camera, near)
    image, alpha, depth = _Composite.apply(
        proj.means2d,
        proj.conics,
        gaussians.opacities.to(f32),
        gaussians.features.to(f32),
        proj.depths,
        background.to(f32),
        proj.valid,
        camera.width,
        camera.height,
        use_native,
    )
    return Render(features=image.to(dtype), alpha=alpha.to(dtype), depth=depth.to(dtype))


def _use_native(kernel: Kernel, channels: int) -> bool:
    """Whether to composite with the compiled kernel; ``GsheadError`` when ``native`` is asked
    for and cannot run here."""
    if kernel == "numba":
        return False
    if kernel not in ("auto", "native"):
        raise GsheadError(f"cpu rasterizer: unknown kernel {kernel!r}; expected 'auto', 'native' or 'numba'")
    from gshead.plugins.rasterizers import _cpu_native

    why = _cpu_native.unavailable(channels)
    if why is not None and kernel == "native":
        raise GsheadError(f"cpu rasterizer: kernel 'native' cannot run: {why}; use kernel 'auto' or 'numba'")
    return why is None


def _project_no_grad(gaussians: Gaussians, camera: Camera, near: float) -> Projected:
    """``project_gaussians`` computed by the numba ``project`` kernel, for renders without
    gradients (radii are not computed: the compositor bins by its own, tighter boxes)."""
    from gshead.plugins.rasterizers import _cpu_kernels as K

    f32 = torch.float32
    parts = [
        K.project(
            _numpy(gaussians.means[b].to(f32)),
            _numpy(gaussians.quats[b].to(f32)),
            _numpy(gaussians.scales[b].to(f32)),
            _numpy(camera.world_to_camera[b].to(f32)),
            _numpy(camera.intrinsics[b].to(f32)),
            camera.width,
            camera.height,
            np.float32(near),
            np.float32(EPS2D),
        )
        for b in range(camera.batch_size)
    ]
    means2d, conics, depths, valid = (torch.stack([torch.from_numpy(p[i]) for p in parts]) for i in range(4))
    return Projected(means2d, conics, depths, torch.zeros(0, dtype=torch.int32), valid)


def _check_finite(gaussians: Gaussians, camera: Camera, background: Tensor) -> None:
    """``check_finite`` (one-line error naming the tensor), behind a cheaper test: one sum per
    tensor, in a single reduction pass each; a finite sum means every element is finite. Only a
    non-finite sum (NaN/inf, or a huge but finite overflow) runs the element-wise check."""
    tensors = [*gaussians.tensors().values(), *camera.tensors().values(), background]
    sums = torch.stack([t.detach().sum().to(torch.float64) for t in tensors])
    if not bool(torch.isfinite(sums).all()):
        check_finite(gaussians, camera, background)


def _threads() -> int:
    """Work chunks per kernel: one per numba thread (numba is already imported by the caller)."""
    import numba

    return numba.get_num_threads()


def _numpy(t: Tensor):
    """A contiguous numpy view (copy only when needed) of a detached CPU tensor."""
    return t.detach().contiguous().numpy()


class _Composite(torch.autograd.Function):
    """Tile binning + compositing of projected Gaussians, forward and backward (compiled or numba)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        means2d: Tensor,  # [B, N, 2] float32
        conics: Tensor,  # [B, N, 3]
        opacities: Tensor,  # [B, N]
        features: Tensor,  # [B, N, C]
        depths: Tensor,  # [B, N]
        background: Tensor,  # [C]
        valid: Tensor,  # [B, N] bool
        width: int,
        height: int,
        native: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:  # [B, C, H, W], [B, 1, H, W], [B, 1, H, W]
        from gshead.plugins.rasterizers import _cpu_kernels as K

        if native:
            from gshead.plugins.rasterizers._cpu_native import composite
        else:
            composite = K.composite
        ctx.native = native

        batch, _, channels = features.shape
        image = torch.empty(batch, channels, height, width, dtype=torch.float32)
        alpha = torch.empty(batch, 1, height, width, dtype=torch.float32)
        depth = torch.empty(batch, 1, height, width, dtype=torch.float32)
        last = torch.empty(batch, height, width, dtype=torch.int32)
        trans = torch.empty(batch, height, width, dtype=torch.float32)
        bg = _numpy(background)
        saved = []
        for b in range(batch):
            tile_start, ids, params, pbox = K.prepare(
                _numpy(means2d[b]), _numpy(conics[b]), _numpy(opacities[b]), _numpy(depths[b]),
                _numpy(valid[b]), width, height,
            )  # fmt: skip
            binned = (params, pbox, _numpy(features[b]), bg, tile_start, ids, width, height, _threads())
            outputs = (image[b], alpha[b, 0], depth[b, 0], last[b], trans[b])
            composite(*binned, *(t.numpy() for t in outputs))
            saved.append(binned)
        ctx.binned = saved
        ctx.save_for_backward(last, trans)
        return image, alpha, depth

    @staticmethod
    def backward(ctx, grad_image: Tensor, grad_alpha: Tensor, grad_depth: Tensor):  # type: ignore[override]
        from gshead.plugins.rasterizers import _cpu_kernels as K

        if ctx.native:  # the backward that makes the same alpha decisions as the forward did
            from gshead.plugins.rasterizers._cpu_native import composite_backward as backward
        else:
            backward = K.composite_backward
        last, trans = ctx.saved_tensors
        batch, height, width = last.shape
        grads = []
        for b in range(batch):
            binned = ctx.binned[b]
            channels = binned[2].shape[1]
            out = backward(
                *binned,
                last[b].numpy(),
                trans[b].numpy(),
                _grad_plane(grad_image, b, (channels, height, width)),
                _grad_plane(grad_alpha, b, (1, height, width))[0],
                _grad_plane(grad_depth, b, (1, height, width))[0],
            )
            grads.append(torch.from_numpy(out))
        g = torch.stack(grads)  # [B, N, 7 + C]
        g_means2d, g_conics, g_opac, g_depths = g[..., 0:2], g[..., 2:5], g[..., 5], g[..., 6]
        g_feat = g[..., 7:]
        g_bg = None
        if ctx.needs_input_grad[5] and grad_image is not None:
            g_bg = (grad_image * trans[:, None]).sum(dim=(0, 2, 3))  # [C]
        return g_means2d, g_conics, g_opac, g_feat, g_depths, g_bg, None, None, None, None


def _grad_plane(grad: Tensor | None, b: int, shape: tuple[int, ...]):
    """Camera ``b``'s slice of an incoming gradient as float32 numpy (zeros when autograd gave None)."""
    if grad is None:
        return torch.zeros(shape, dtype=torch.float32).numpy()
    return _numpy(grad[b].to(torch.float32))


class CpuRasterizerConfig(RasterizerConfig):
    """Fast CPU rasterizer (compiled AVX2 compositing, numba elsewhere), differentiable, any channel count;
    same images as torch-tiles."""

    name: Literal["cpu"] = "cpu"
    near_plane: float = Field(0.01, gt=0.0)
    """Gaussians whose camera-space z is at or below this (model units) are not drawn."""
    kernel: Kernel = "auto"
    """Compositing kernels, forward and backward: 'native' (compiled AVX2, built by the install;
    ~1.4x faster), 'numba', or 'auto' (native where built and supported by the CPU, else numba)."""


class CpuRasterizer(torch.nn.Module):
    """``Rasterizer`` component wrapping ``rasterize_cpu`` (no weights)."""

    def __init__(self, config: CpuRasterizerConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        gaussians: Gaussians,  # [B, N]
        camera: Camera,  # [B]
        background: Tensor | None = None,  # [C] or None (zeros)
    ) -> Render:
        return rasterize_cpu(gaussians, camera, background, near=self.config.near_plane, kernel=self.config.kernel)


@hookimpl
def gshead_register_rasterizers(register):
    register.add(CpuRasterizerConfig, CpuRasterizer)
