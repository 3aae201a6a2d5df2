"""The compiled AVX2 compositing kernel (``_composite_avx2.c``), loaded with ctypes.

The package's install builds it (``setup.py``, optional: an install without a C compiler still
succeeds). ``unavailable()`` says why it cannot run here (not built, no AVX2/FMA, too many
channels), else None; ``composite`` and ``composite_backward`` have the signatures of their
numba twins in ``_cpu_kernels.py`` and the same outputs. Nothing is loaded at import: the library is opened on
the first call.
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import cache

import numpy as np

from gshead.core.errors import GsheadError

_MODULE = "gshead.plugins.rasterizers._composite_avx2"
_ERRORS = {-1: "out of memory for the per-thread scratch", -2: "bad arguments"}


@cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library, None) or (None, why it cannot be used)."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.origin:
        return None, (
            "the compiled kernel was not built (reinstall gshead with a C compiler available: "
            "pip install -e . builds it)"
        )
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as err:
        return None, f"the compiled kernel {spec.origin} could not be loaded: {err}"
    if not lib.gshead_composite_supported():
        return None, "this CPU lacks AVX2/FMA, which the compiled kernel needs"
    ptr = ctypes.c_void_p
    i64 = ctypes.c_int64
    lib.gshead_composite.restype = ctypes.c_int
    lib.gshead_composite.argtypes = [ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr]
    lib.gshead_composite_backward.restype = ctypes.c_int
    lib.gshead_composite_backward.argtypes = [
        ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr,
    ]  # fmt: skip
    return lib, None


def max_channels() -> int:
    lib, _ = _library()
    return int(lib.gshead_composite_max_channels()) if lib is not None else 0


def unavailable(channels: int = 1) -> str | None:
    """Why the compiled kernel cannot composite ``channels`` channels here, or None."""
    lib, why = _library()
    if lib is None:
        return why
    if channels > max_channels():
        return f"the compiled kernel handles at most {max_channels()} channels, got {channels}"
    return None


def _ptr(array: np.ndarray, dtype) -> int:
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise GsheadError(f"compiled kernel: expected a C-contiguous {np.dtype(dtype)} array, got {array.dtype}")
    return array.ctypes.data


def _check(status: int) -> None:
    if status != 0:
        raise GsheadError(f"cpu rasterizer: compiled kernel failed: {_ERRORS.get(status, status)}")


def _loaded() -> ctypes.CDLL:
    lib, why = _library()
    if lib is None:
        raise GsheadError(f"cpu rasterizer: {why}")
    return lib


def composite(
    params, pbox, features, background, tile_start, ids, width, height, nthreads,
    out_image, out_alpha, out_depth, out_last, out_trans,
):  # fmt: skip
    """``_cpu_kernels.composite``, computed by the compiled kernel (call ``unavailable`` first)."""
    lib = _loaded()
    f32, i32 = np.float32, np.int32
    if ids.size == 0:  # ctypes wants an address even for an empty array
        ids = np.zeros(1, i32)
    status = lib.gshead_composite(
        _ptr(params, f32), _ptr(pbox, i32), _ptr(features, f32), features.shape[1], _ptr(background, f32),
        _ptr(tile_start, np.int64), _ptr(ids, i32), width, height, nthreads,
        _ptr(out_image, f32), _ptr(out_alpha, f32), _ptr(out_depth, f32), _ptr(out_last, i32),
        _ptr(out_trans, f32),
    )  # fmt: skip
    _check(status)


def composite_backward(
    params, pbox, features, background, tile_start, ids, width, height, nthreads,
    last_in, trans_in, grad_image, grad_alpha, grad_depth,
):  # fmt: skip
    """``_cpu_kernels.composite_backward`` by the compiled kernel: returns ``[N, 7 + C]`` float32.
    Its alphas are bit-identical to the compiled forward's, so the two make the same skip and
    stop decisions (use it after ``composite`` from this module)."""
    lib = _loaded()
    f32, i32 = np.float32, np.int32
    n, nch = features.shape
    grads = np.zeros((n, 7 + nch), f32)
    if ids.size == 0:
        ids = np.zeros(1, i32)
    status = lib.gshead_composite_backward(
        _ptr(params, f32), _ptr(pbox, i32), _ptr(features, f32), nch, _ptr(background, f32),
        _ptr(tile_start, np.int64), _ptr(ids, i32), n, width, height, nthreads, _ptr(last_in, i32),
        _ptr(trans_in, f32), _ptr(grad_image, f32), _ptr(grad_alpha, f32), _ptr(grad_depth, f32),
        _ptr(grads, f32),
    )  # fmt: skip
    _check(status)
    return grads
