"""Numba kernels of the ``cpu`` rasterizer: binning, depth sort, compositing and its backward.

Imported only from inside ``gshead.plugins.renderers.cpu`` functions, never at package import:
importing this module loads numba and (from the on-disk cache, ``cache=True``) the compiled
kernels; the first call in a fresh environment compiles them (~20 s, once per CPU kind).

All arrays are float32 / int32 numpy views of torch tensors, one camera at a time. ``N``
Gaussians, ``C`` channels, image ``H x W``, square tiles of ``S`` pixels, ``P`` Gaussian-tile
pairs. Semantics are gsplat's (see ``torch_tiles.py``); the one liberty taken is *which* pixels
are looked at: a Gaussian is tested only on the pixels of the ellipse where ``o * exp(-sigma)``
can reach 1/255 (slightly enlarged), row span by row span. The image is the same as testing
every pixel of every tile in gsplat's 3-sigma box, since the other pixels are skipped anyway.

Speed (see ../shared/reference/cpu-rasterization.md for the measurements behind these):
- stable LSD radix sort on the depth bits, then a counting scatter into tiles (no argsort);
- per row span, a branch-free pass computes the alphas with a polynomial ``exp`` that LLVM
  vectorises (numba has no vector math library); a scalar pass then blends the few pixels
  that pass the 1/255 test, channels contiguous per pixel (vectorised over ``C``);
- per-row and per-tile counters of live pixels skip rows and tiles already opaque.

Threads: each parallel kernel splits its tiles into ``nthreads`` static chunks, interleaved
(tile t goes to chunk t % nthreads) so the dense face region is shared evenly. Each chunk owns
its scratch (separate allocations: no false sharing) and, in the backward, its own gradient
buffer, summed at the end: no atomics, deterministic results.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# fastmath: only 'contract' (fused multiply-add, and vectorisable loops). No reassociation or
# nnan/ninf: the forward and the backward run the same alpha code, so they make the same skip
# and stop decisions.
_FM = {"contract"}

F32 = np.float32
ALPHA_MIN = F32(1.0 / 255.0)  # a pair with a smaller alpha is skipped
ALPHA_MAX = F32(0.999)  # alpha is clamped to this
T_MIN = F32(1e-4)  # a pixel stops once its transmittance would fall to this
HALF = F32(0.5)
ONE = F32(1.0)
ZERO = F32(0.0)
# Tiles are 16 x 16 pixels, fixed at compile time: a tile row is one AVX-512 register of float32
# (two AVX2 ones), and constant offsets let LLVM vectorise the row passes without alias checks.
TILE = 16
NPX = TILE * TILE
# Room added to the alpha >= 1/255 ellipse (sigma <= ln(255 o)) so that float rounding never
# drops a pixel that the exact per-pixel test would keep.
_T_MARGIN_REL = 1.001
_T_MARGIN_ABS = 1e-2

# Columns of the per-Gaussian parameter table written by ``prepare``.
_MX, _MY, _A, _B, _C, _O, _Z = range(7)
_NPAR = 8  # one spare column: 32-byte rows
# Columns of the per-Gaussian gradient row: mean x, mean y, conic a, b, c, opacity, depth, then C features.
_GRAD_COLS = 7

# exp(-s) = 2^-k exp(-r), k = round(s / ln 2), |r| <= ln(2) / 2, Taylor degree 7: ~1e-7 relative.
_INV_LN2 = F32(1.0 / math.log(2.0))
_LN2_HI = F32(0.693145751953125)
_LN2_LO = F32(1.42860682030941723212e-6)
_SIGMA_CAP = F32(8.0)  # exp(-8) < 1/255: beyond it the value only has to stay below the threshold
_E2, _E3, _E4, _E5, _E6, _E7 = (F32(1.0 / math.factorial(i)) for i in range(2, 8))


@njit(inline="always", fastmath=_FM)
def _exp_neg(sigma):
    """exp(-sigma) for sigma in [0, 8], branch-free (vectorisable); sigma is clamped to that range."""
    s = min(max(sigma, ZERO), _SIGMA_CAP)
    k = np.int32(s * _INV_LN2 + HALF)  # round to nearest (s >= 0)
    kf = F32(k)
    r = (kf * _LN2_HI - s) + kf * _LN2_LO  # -(s - k ln 2), in [-ln2/2, ln2/2]
    p = _E7
    p = p * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + ONE
    p = p * r + ONE
    # 2^-k for k in [0, 12], exact, as a product of selects
    p = p * (HALF if k & 1 else ONE)
    p = p * (F32(0.25) if k & 2 else ONE)
    p = p * (F32(0.0625) if k & 4 else ONE)
    p = p * (F32(0.00390625) if k & 8 else ONE)
    return p


@njit(cache=True, fastmath=_FM, parallel=True)
def prepare(means2d, conics, opacities, depths, valid, width, height):
    """Bin Gaussians into tiles, sorted front to back within each tile.

    Returns ``tile_start [T+1]`` int64 (the pairs of tile t are ``ids[tile_start[t]:tile_start[t+1]]``),
    ``ids [P]`` int32, ``params [N, 10]`` float32 (per-Gaussian constants of the composite) and
    ``rows [N, 2]`` int32 (first and past-the-last pixel row a Gaussian can reach). Ties in depth
    keep the Gaussians' index order (the radix sort is stable).
    """
    n = means2d.shape[0]
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    ntiles = tiles_x * tiles_y
    box = np.zeros((n, 4), np.int32)  # tile box: x0, x1, y0, y1 (exclusive ends)
    rows = np.zeros((n, 2), np.int32)
    cnt = np.zeros(n, np.int32)
    params = np.zeros((n, _NPAR), np.float32)
    for g in prange(n):
        o = opacities[g]
        if not (valid[g] and o >= ALPHA_MIN):
            continue
        a = np.float64(conics[g, 0])
        b = np.float64(conics[g, 1])
        c = np.float64(conics[g, 2])
        det = a * c - b * b
        if not (det > 0.0 and a > 0.0):
            continue
        t = math.log(255.0 * np.float64(o)) * _T_MARGIN_REL + _T_MARGIN_ABS
        ex = math.sqrt(2.0 * t * c / det)
        ey = math.sqrt(2.0 * t * a / det)
        mx = np.float64(means2d[g, 0])
        my = np.float64(means2d[g, 1])
        # pixel px is reached when |mx - (px + 0.5)| <= ex; clamp in float before int conversion
        x0 = max(np.int64(math.ceil(min(max(mx - ex - 0.5, -1.0), width + 1.0))), 0)
        x1 = min(np.int64(math.floor(min(max(mx + ex - 0.5, -1.0), width + 1.0))) + 1, width)
        y0 = max(np.int64(math.ceil(min(max(my - ey - 0.5, -1.0), height + 1.0))), 0)
        y1 = min(np.int64(math.floor(min(max(my + ey - 0.5, -1.0), height + 1.0))) + 1, height)
        if x0 >= x1 or y0 >= y1:
            continue
        box[g, 0] = x0 // TILE
        box[g, 1] = (x1 - 1) // TILE + 1
        box[g, 2] = y0 // TILE
        box[g, 3] = (y1 - 1) // TILE + 1
        cnt[g] = (box[g, 1] - box[g, 0]) * (box[g, 3] - box[g, 2])
        rows[g, 0] = y0
        rows[g, 1] = y1
        params[g, _MX] = means2d[g, 0]
        params[g, _MY] = means2d[g, 1]
        params[g, _A] = conics[g, 0]
        params[g, _B] = conics[g, 1]
        params[g, _C] = conics[g, 2]
        params[g, _O] = o
        params[g, _Z] = depths[g]

    # candidates in index order, then a stable LSD radix sort on the depth bits (depth > near > 0,
    # so the IEEE bit patterns order like the values)
    m = 0
    for g in range(n):
        if cnt[g] > 0:
            m += 1
    order = np.empty(m, np.int32)
    keys = np.empty(m, np.uint32)
    bits = depths.view(np.uint32)
    j = 0
    for g in range(n):
        if cnt[g] > 0:
            order[j] = g
            keys[j] = bits[g]
            j += 1
    order2 = np.empty(m, np.int32)
    keys2 = np.empty(m, np.uint32)
    hist = np.empty(2048, np.int64)
    for shift in (0, 11, 22):
        hist[:] = 0
        for i in range(m):
            hist[(keys[i] >> shift) & 2047] += 1
        if m > 0 and hist[(keys[0] >> shift) & 2047] == m:
            continue  # every key has the same digit: the pass would not move anything
        total = 0
        for d in range(2048):
            h = hist[d]
            hist[d] = total
            total += h
        for i in range(m):
            d = (keys[i] >> shift) & 2047
            pos = hist[d]
            hist[d] = pos + 1
            order2[pos] = order[i]
            keys2[pos] = keys[i]
        order, order2 = order2, order
        keys, keys2 = keys2, keys

    # counting scatter of the sorted Gaussians into their tiles (keeps depth order per tile)
    tile_start = np.zeros(ntiles + 1, np.int64)
    for i in range(m):
        g = order[i]
        for ty in range(box[g, 2], box[g, 3]):
            for tx in range(box[g, 0], box[g, 1]):
                tile_start[ty * tiles_x + tx + 1] += 1
    for t in range(ntiles):
        tile_start[t + 1] += tile_start[t]
    fill = tile_start[:ntiles].copy()
    ids = np.empty(tile_start[ntiles], np.int32)
    for i in range(m):
        g = order[i]
        for ty in range(box[g, 2], box[g, 3]):
            for tx in range(box[g, 0], box[g, 1]):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return tile_start, ids, params, rows




# Per-chunk scratch of the forward: one flat array, fields at constant offsets (no alias checks).
_F_T = 0  # [NPX] transmittance
_F_ALIVE = NPX  # [NPX] 1 while the pixel may still blend, 0 once stopped (or outside the image)
_F_LAST = 2 * NPX  # [NPX] pairs up to and including the last blended one (float: exact below 2^24)
_F_DEP = 3 * NPX  # [NPX] accumulated depth
_F_W = 4 * NPX  # [TILE] blend weights of the current row
_F_SIZE = 4 * NPX + TILE


@njit(cache=True, fastmath=_FM, parallel=True)
def composite(
    params, rows, features, background, tile_start, ids, width, height, nthreads,
    out_image, out_alpha, out_depth, out_last, out_trans,
):  # fmt: skip
    """Blend each tile's Gaussians front to back into ``out_image [C, H, W]``, ``out_alpha``
    and ``out_depth [H, W]``. Also writes what the backward needs: ``out_last [H, W]`` int32
    (pairs of the pixel's tile up to and including its last blended one) and ``out_trans [H, W]``
    (final transmittance, exact where ``1 - alpha`` would round)."""
    nch = features.shape[1]
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    ntiles = tiles_x * tiles_y
    nchunk = max(1, min(nthreads, ntiles))
    for chunk in prange(nchunk):
        st = np.empty(_F_SIZE, np.float32)
        acc = np.empty(nch * NPX, np.float32)  # [C, TILE, TILE] accumulated features
        live = np.empty(TILE, np.int64)  # pixels of each row still blending
        for tid in range(chunk, ntiles, nchunk):
            px0 = (tid % tiles_x) * TILE
            py0 = (tid // tiles_x) * TILE
            ncols = min(TILE, width - px0)
            nrows = min(TILE, height - py0)
            for p in range(NPX):
                inside = (p // TILE < nrows) & (p % TILE < ncols)
                st[_F_T + p] = ONE
                st[_F_ALIVE + p] = ONE if inside else ZERO
                st[_F_LAST + p] = ZERO
                st[_F_DEP + p] = ZERO
            acc[:] = ZERO
            for row in range(TILE):
                live[row] = ncols if row < nrows else 0
            active = ncols * nrows
            s0 = tile_start[tid]
            for k in range(s0, tile_start[tid + 1]):
                g = ids[k]
                mx = params[g, _MX]
                my = params[g, _MY]
                a = params[g, _A]
                b = params[g, _B]
                c = params[g, _C]
                o = params[g, _O]
                z = params[g, _Z]
                count = F32(k - s0 + 1)
                for row in range(max(rows[g, 0] - py0, 0), min(rows[g, 1] - py0, nrows)):
                    if live[row] == 0:
                        continue
                    dy = my - (F32(py0 + row) + HALF)
                    cdy = c * dy * dy
                    bdy = b * dy
                    rb = row * TILE
                    nstop = 0
                    nblend = 0
                    for j in range(TILE):  # branch-free: one vector register per row
                        dx = mx - (F32(px0 + j) + HALF)
                        sigma = HALF * (a * dx * dx + cdy) + bdy * dx
                        alpha = min(ALPHA_MAX, o * _exp_neg(sigma))
                        tp = st[_F_T + rb + j]
                        next_t = tp * (ONE - alpha)
                        ok = (sigma >= ZERO) & (alpha >= ALPHA_MIN) & (st[_F_ALIVE + rb + j] != ZERO)
                        stop = ok & (next_t <= T_MIN)
                        blend = ok & (next_t > T_MIN)
                        w = alpha * tp if blend else ZERO
                        st[_F_W + j] = w
                        st[_F_T + rb + j] = next_t if blend else tp
                        st[_F_ALIVE + rb + j] = ZERO if stop else st[_F_ALIVE + rb + j]
                        st[_F_LAST + rb + j] = count if blend else st[_F_LAST + rb + j]
                        st[_F_DEP + rb + j] += z * w
                        nstop += 1 if stop else 0
                        nblend += 1 if blend else 0
                    if nstop:
                        live[row] -= nstop
                        active -= nstop
                    if nblend:
                        for ch in range(nch):
                            f = features[g, ch]
                            cb = ch * NPX + rb
                            for j in range(TILE):
                                acc[cb + j] += f * st[_F_W + j]
                if active == 0:
                    break
            for ch in range(nch):
                bgc = background[ch]
                for row in range(nrows):
                    for col in range(ncols):
                        out_image[ch, py0 + row, px0 + col] = (
                            acc[ch * NPX + row * TILE + col] + st[_F_T + row * TILE + col] * bgc
                        )
            for row in range(nrows):
                for col in range(ncols):
                    p = row * TILE + col
                    out_alpha[py0 + row, px0 + col] = ONE - st[_F_T + p]
                    out_depth[py0 + row, px0 + col] = st[_F_DEP + p]
                    out_last[py0 + row, px0 + col] = np.int32(st[_F_LAST + p])
                    out_trans[py0 + row, px0 + col] = st[_F_T + p]


# Per-chunk scratch of the backward, same idea: per-pixel planes, per-lane values of the current
# row, per-lane gradient accumulators of the current Gaussian (summed over lanes once per tile).
_B_T = 0  # [NPX] transmittance after the pairs not yet undone (starts at the final T)
_B_TF = NPX  # [NPX] final transmittance
_B_DB = 2 * NPX  # [NPX] depth accumulated behind the current pair
_B_GA = 3 * NPX  # [NPX] incoming gradient of alpha
_B_GD = 4 * NPX  # [NPX] incoming gradient of depth
_B_LAST = 5 * NPX  # [NPX] pairs blended into the pixel (float)
_L = 6 * NPX  # per-lane values of the current row, TILE each:
_L_W, _L_TI, _L_IOM, _L_GAL, _L_AL, _L_V, _L_M = (_L + i * TILE for i in range(7))
_ACC = _L + 7 * TILE  # per-lane accumulators, TILE each: mean x, mean y, conic a, b, c, opacity, depth
_B_SIZE = _ACC + _GRAD_COLS * TILE


@njit(cache=True, fastmath=_FM, parallel=True)
def composite_backward(
    params, rows, features, background, tile_start, ids, width, height, nthreads,
    last_in, trans_in, grad_image, grad_alpha, grad_depth,
):  # fmt: skip
    """Gradients w.r.t. each Gaussian's 2D mean, conic, opacity, depth and features.

    Walks each tile's pairs back to front from the last blended one, recovering the
    transmittance before each pair as ``T / (1 - alpha)`` (standard 3DGS). Returns
    ``[N, 7 + C]``: mean x, mean y, conic a, b, c, opacity, depth, then the features.
    """
    n = params.shape[0]
    nch = features.shape[1]
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    ntiles = tiles_x * tiles_y
    ncol = _GRAD_COLS + nch
    nchunk = max(1, min(nthreads, ntiles))
    grads = np.zeros((nchunk, n, ncol), np.float32)
    for chunk in prange(nchunk):
        gbuf = grads[chunk]
        st = np.empty(_B_SIZE, np.float32)
        behind = np.empty(nch * NPX, np.float32)  # [C, NPX] later pairs' f alpha T, plus T_final bg
        gimg = np.empty(nch * NPX, np.float32)  # [C, NPX] incoming gradient of the image
        gfl = np.empty(nch * TILE, np.float32)  # [C, TILE] per-lane feature gradients
        rowlast = np.empty(TILE, np.int64)
        for tid in range(chunk, ntiles, nchunk):
            px0 = (tid % tiles_x) * TILE
            py0 = (tid // tiles_x) * TILE
            ncols = min(TILE, width - px0)
            nrows = min(TILE, height - py0)
            st[_B_DB : _B_DB + NPX] = ZERO
            st[_B_T : _B_T + NPX] = ONE
            st[_B_TF : _B_TF + NPX] = ONE
            st[_B_GA : _B_GA + 3 * NPX] = ZERO  # GA, GD, LAST
            behind[:] = ZERO
            gimg[:] = ZERO
            rowlast[:] = 0
            for row in range(nrows):
                for col in range(ncols):
                    p = row * TILE + col
                    y = py0 + row
                    x = px0 + col
                    tf = trans_in[y, x]
                    st[_B_T + p] = tf
                    st[_B_TF + p] = tf
                    st[_B_GA + p] = grad_alpha[y, x]
                    st[_B_GD + p] = grad_depth[y, x]
                    st[_B_LAST + p] = F32(last_in[y, x])
                    rowlast[row] = max(rowlast[row], last_in[y, x])
                    for ch in range(nch):
                        behind[ch * NPX + p] = tf * background[ch]
                        gimg[ch * NPX + p] = grad_image[ch, y, x]
            st[_ACC:_B_SIZE] = ZERO
            gfl[:] = ZERO
            s0 = tile_start[tid]
            for kk in range(rowlast.max() - 1, -1, -1):
                g = ids[s0 + kk]
                mx = params[g, _MX]
                my = params[g, _MY]
                a = params[g, _A]
                b = params[g, _B]
                c = params[g, _C]
                o = params[g, _O]
                z = params[g, _Z]
                kkf = F32(kk)
                hit = 0
                for row in range(max(rows[g, 0] - py0, 0), min(rows[g, 1] - py0, nrows)):
                    if kk >= rowlast[row]:
                        continue
                    dy = my - (F32(py0 + row) + HALF)
                    cdy = c * dy * dy
                    bdy = b * dy
                    rb = row * TILE
                    nvalid = 0
                    for j in range(TILE):  # alphas, exactly as in the forward
                        dx = mx - (F32(px0 + j) + HALF)
                        sigma = HALF * (a * dx * dx + cdy) + bdy * dx
                        v = _exp_neg(sigma)
                        alpha = min(ALPHA_MAX, o * v)
                        valid = (sigma >= ZERO) & (alpha >= ALPHA_MIN) & (kkf < st[_B_LAST + rb + j])
                        iom = ONE / (ONE - alpha)
                        ti = st[_B_T + rb + j] * iom
                        st[_L_W + j] = alpha * ti if valid else ZERO
                        st[_L_TI + j] = ti
                        st[_L_IOM + j] = iom
                        st[_L_GAL + j] = ZERO
                        st[_L_AL + j] = alpha
                        st[_L_V + j] = v
                        st[_L_M + j] = ONE if valid else ZERO
                        nvalid += 1 if valid else 0
                    if nvalid == 0:
                        continue
                    hit += nvalid
                    for ch in range(nch):  # dL/dalpha through the channels; feature gradients
                        f = features[g, ch]
                        cb = ch * NPX + rb
                        lb = ch * TILE
                        for j in range(TILE):
                            gp = gimg[cb + j]
                            bh = behind[cb + j]
                            w = st[_L_W + j]
                            st[_L_GAL + j] += gp * (st[_L_TI + j] * f - bh * st[_L_IOM + j])
                            gfl[lb + j] += w * gp
                            behind[cb + j] = bh + f * w
                    for j in range(TILE):  # alpha and depth outputs; chain to o, sigma, mean, conic
                        p = rb + j
                        valid = st[_L_M + j] != ZERO
                        iom = st[_L_IOM + j]
                        ti = st[_L_TI + j]
                        w = st[_L_W + j]
                        alpha = st[_L_AL + j]
                        v = st[_L_V + j]
                        g_alpha = (
                            st[_L_GAL + j]
                            + st[_B_GA + p] * st[_B_TF + p] * iom
                            + st[_B_GD + p] * (ti * z - st[_B_DB + p] * iom)
                        )
                        st[_ACC + 6 * TILE + j] += w * st[_B_GD + p]
                        st[_B_DB + p] += z * w
                        st[_B_T + p] = ti if valid else st[_B_T + p]
                        free = valid & (o * v <= ALPHA_MAX)  # alpha not clamped: depends on o, sigma
                        g_sigma = -alpha * g_alpha if free else ZERO
                        dx = mx - (F32(px0 + j) + HALF)
                        st[_ACC + j] += g_sigma * (a * dx + bdy)
                        st[_ACC + TILE + j] += g_sigma * (b * dx + c * dy)
                        st[_ACC + 2 * TILE + j] += HALF * g_sigma * dx * dx
                        st[_ACC + 3 * TILE + j] += g_sigma * dx * dy
                        st[_ACC + 4 * TILE + j] += HALF * g_sigma * dy * dy
                        st[_ACC + 5 * TILE + j] += v * g_alpha if free else ZERO
                if hit:
                    for col in range(_GRAD_COLS):
                        total = ZERO
                        for j in range(TILE):
                            total += st[_ACC + col * TILE + j]
                        gbuf[g, col] += total
                    for ch in range(nch):
                        total = ZERO
                        for j in range(TILE):
                            total += gfl[ch * TILE + j]
                        gbuf[g, _GRAD_COLS + ch] += total
                    st[_ACC:_B_SIZE] = ZERO
                    gfl[:] = ZERO
    out = grads[0]
    for i in prange(n):
        for chunk in range(1, nchunk):
            for col in range(ncol):
                out[i, col] += grads[chunk, i, col]
    return out
