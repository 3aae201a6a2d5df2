"""Numba kernels of the ``cpu`` rasterizer: projection, binning, sort, compositing, backward.

``composite`` and ``composite_backward`` here are the fallback and the tests' oracle for the
compiled AVX2 kernels (``_composite_avx2.c``), which take the same arguments and write the same
outputs.

Imported only from inside ``gshead.plugins.rasterizers.cpu`` functions, never at package import:
importing this module loads numba and (from the on-disk cache, ``cache=True``) the compiled
kernels; the first call in a fresh environment compiles them (~20-40 s, once per CPU kind).

All arrays are float32 / int32 numpy views of torch tensors, one camera at a time: ``N``
Gaussians, ``C`` channels, image ``H x W``, 16 x 16 tiles, ``P`` Gaussian-tile pairs.
Semantics are gsplat's (see ``torch_tiles.py``). The one liberty taken is *which* pixels are
looked at: a Gaussian is binned and evaluated only inside the box of its ellipse where
``o * exp(-sigma)`` can reach 1/255 (slightly enlarged; the per-pixel test stays exact), which
gives the same image as gsplat's 3.33-sigma box since the other pixels are skipped anyway.

What makes it fast (measured on the project's 2-core Zen machine, which exposes AVX2 to us):
- stable LSD radix sort on the depth bits, then a counting scatter into tiles (no argsort);
- per (Gaussian, tile) pair, one branch-free loop over the pixels of the rows it can reach
  (``_blend_pixels``), which LLVM vectorises 8 floats wide: polynomial ``exp`` (numba has no
  vector math library), blend decisions as selects, 32-bit counters; then the features are
  added channel by channel over the same pixels (``_accumulate``), also vectorised;
- things that silently block vectorisation in numba, avoided on purpose: possibly-negative
  array indices (wraparound; hence ``np.uint64`` indices), a division's zero check (hence
  ``error_model="numpy"``), int64 arithmetic in the loop, loops of a constant 16 (unrolled
  instead of vectorised), and short loops (LLVM interleaves 4 vectors: 32 iterations minimum);
- a tile stops as soon as all its pixels have stopped; rows already opaque are trimmed.

Threads: the parallel compositing kernels split tiles into ``nthreads`` static chunks, interleaved (tile t
goes to chunk t % nthreads) so the dense face region is shared evenly. Each chunk owns its
scratch (separate allocations: no false sharing) and, in the backward, its own gradient buffer,
summed at the end: no atomics, deterministic results.
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
I0 = np.int32(0)
I1 = np.int32(1)
# Tiles are 16 x 16 pixels (gsplat's default), fixed at compile time.
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


@njit(inline="always", fastmath=_FM, error_model="numpy")
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


@njit(cache=True, fastmath=_FM, error_model="numpy")
def prepare(means2d, conics, opacities, depths, valid, width, height):
    """Bin Gaussians into tiles, sorted front to back within each tile.

    Returns ``tile_start [T+1]`` int64 (the pairs of tile t are ``ids[tile_start[t]:tile_start[t+1]]``),
    ``ids [P]`` int32, ``params [N, 8]`` float32 (per-Gaussian constants of the composite) and
    ``pbox [N, 4]`` int32 (pixel box a Gaussian can reach: rows y0..y1-1, columns x0..x1-1). Ties in depth
    keep the Gaussians' index order (the radix sort is stable).
    """
    n = means2d.shape[0]
    tiles_x = (width + TILE - 1) // TILE
    tiles_y = (height + TILE - 1) // TILE
    ntiles = tiles_x * tiles_y
    box = np.zeros((n, 4), np.int32)  # tile box: x0, x1, y0, y1 (exclusive ends)
    pbox = np.zeros((n, 4), np.int32)
    cnt = np.zeros(n, np.int32)
    params = np.zeros((n, _NPAR), np.float32)
    for g in range(n):  # serial: a parallel version (boxes and tile scatter) measured no faster on 2 cores
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
        pbox[g, 0] = y0
        pbox[g, 1] = y1
        pbox[g, 2] = x0
        pbox[g, 3] = x1
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
    sbox = box[order]  # the boxes in depth order: read once at random, then twice in sequence (B: -10%)
    tile_start = np.zeros(ntiles + 1, np.int64)
    for i in range(m):
        for ty in range(sbox[i, 2], sbox[i, 3]):
            for tx in range(sbox[i, 0], sbox[i, 1]):
                tile_start[ty * tiles_x + tx + 1] += 1
    for t in range(ntiles):
        tile_start[t + 1] += tile_start[t]
    fill = tile_start[:ntiles].copy()
    ids = np.empty(tile_start[ntiles], np.int32)
    for i in range(m):
        g = order[i]
        for ty in range(sbox[i, 2], sbox[i, 3]):
            for tx in range(sbox[i, 0], sbox[i, 1]):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return tile_start, ids, params, pbox


@njit(fastmath=_FM, error_model="numpy")
def _blend_pixels(trans, alive, last, dep, weights, cx, cy, p0, p1, mx, my, a, b, c, o, z, count):
    """One Gaussian over tile pixels ``p0 .. p1 - 1`` (row-major), branch-free so
    that LLVM vectorises it. ``trans``, ``alive`` (1 while the pixel may still blend, then 0),
    ``last`` (pairs up to the last blended one) and ``dep`` are the tile's [NPX] planes, ``cx``
    and ``cy`` its pixel centres; writes the blend weights into ``weights`` and returns (pixels
    stopped, pixels blended). Everything stays 32-bit inside the loop (8 lanes per AVX2 register).

    Many rows in one loop, not one row at a time: LLVM vectorises with 4 interleaved
    registers, so a 16-iteration loop would run entirely in its scalar remainder."""
    nstop = I0
    nblend = I0
    for p in range(p0, p1):
        u = np.uint64(p)  # unsigned index: no negative-index wraparound, which blocks vectorisation
        dx = mx - cx[u]
        dy = my - cy[u]
        sigma = HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = min(ALPHA_MAX, o * _exp_neg(sigma))
        tp = trans[u]
        next_t = tp * (ONE - alpha)
        ok = (sigma >= ZERO) & (alpha >= ALPHA_MIN) & (alive[u] != ZERO)
        stop = ok & (next_t <= T_MIN)
        blend = ok & (next_t > T_MIN)
        w = alpha * tp if blend else ZERO
        weights[u] = w
        trans[u] = next_t if blend else tp
        alive[u] = ZERO if stop else alive[u]
        last[u] = count if blend else last[u]
        dep[u] += z * w
        nstop = np.int32(nstop + (I1 if stop else I0))  # int32 counters: int64 halves the lanes
        nblend = np.int32(nblend + (I1 if blend else I0))
    return nstop, nblend


@njit(fastmath=_FM, error_model="numpy")
def _accumulate(acc, features, g, weights, p0, p1):
    """``acc[ch, p] += features[g, ch] * weights[p]`` over tile pixels ``p0 .. p1 - 1``."""
    for ch in range(features.shape[1]):
        f = features[g, ch]
        for p in range(p0, p1):
            u = np.uint64(p)
            acc[ch, u] += f * weights[u]


@njit(cache=True, fastmath=_FM, parallel=True, error_model="numpy")
def composite(
    params, pbox, features, background, tile_start, ids, width, height, nthreads,
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
        trans = np.empty(NPX, np.float32)
        alive = np.empty(NPX, np.float32)
        last = np.empty(NPX, np.float32)  # float: exact below 2^24 pairs per tile
        dep = np.empty(NPX, np.float32)
        weights = np.empty(NPX, np.float32)
        cx = np.empty(NPX, np.float32)  # pixel centres
        cy = np.empty(NPX, np.float32)
        acc = np.empty((nch, NPX), np.float32)
        live = np.empty(TILE, np.int64)  # pixels of each row still blending
        for tid in range(chunk, ntiles, nchunk):
            px0 = (tid % tiles_x) * TILE
            py0 = (tid // tiles_x) * TILE
            ncols = min(TILE, width - px0)
            nrows = min(TILE, height - py0)
            for p in range(NPX):
                trans[p] = ONE
                alive[p] = ONE if p % TILE < ncols and p // TILE < nrows else ZERO
                last[p] = ZERO
                dep[p] = ZERO
                cx[p] = F32(px0 + p % TILE) + HALF
                cy[p] = F32(py0 + p // TILE) + HALF
            acc[:] = ZERO
            for row in range(TILE):
                live[row] = ncols if row < nrows else 0
            first_live = 0
            end_live = nrows
            s0 = tile_start[tid]
            for k in range(s0, tile_start[tid + 1]):
                g = ids[k]
                r0 = max(pbox[g, 0] - py0, first_live)
                r1 = min(pbox[g, 1] - py0, end_live)
                if r0 >= r1:
                    continue
                # whole rows, except before the box's first column and after its last
                p0 = r0 * TILE + max(pbox[g, 2] - px0, 0)
                p1 = (r1 - 1) * TILE + min(pbox[g, 3] - px0, ncols)
                nstop, nblend = _blend_pixels(
                    trans, alive, last, dep, weights, cx, cy, p0, p1,
                    params[g, _MX], params[g, _MY], params[g, _A], params[g, _B], params[g, _C],
                    params[g, _O], params[g, _Z], F32(k - s0 + 1),
                )  # fmt: skip
                if nblend:  # features over the blended span only (C / 8 vector ops per pixel)
                    while weights[p0] == ZERO:
                        p0 += 1
                    while weights[p1 - 1] == ZERO:
                        p1 -= 1
                    _accumulate(acc, features, g, weights, p0, p1)
                if nstop:  # rare (once per pixel): recount the rows, trim the live row range
                    for row in range(r0, r1):
                        n_alive = 0
                        for col in range(TILE):
                            n_alive += 1 if alive[row * TILE + col] != ZERO else 0
                        live[row] = n_alive
                    while first_live < end_live and live[first_live] == 0:
                        first_live += 1
                    while end_live > first_live and live[end_live - 1] == 0:
                        end_live -= 1
                    if first_live == end_live:
                        break
            for ch in range(nch):
                bgc = background[ch]
                for row in range(nrows):
                    for col in range(ncols):
                        p = row * TILE + col
                        out_image[ch, py0 + row, px0 + col] = acc[ch, p] + trans[p] * bgc
            for row in range(nrows):
                for col in range(ncols):
                    p = row * TILE + col
                    out_alpha[py0 + row, px0 + col] = ONE - trans[p]
                    out_depth[py0 + row, px0 + col] = dep[p]
                    out_last[py0 + row, px0 + col] = np.int32(last[p])
                    out_trans[py0 + row, px0 + col] = trans[p]


_FM_SUM = {"contract", "reassoc"}  # for the gradient sums only: lets LLVM vectorise reductions


@njit(fastmath=_FM, error_model="numpy")
def _undo_pixels(trans, last, cx, cy, p0, p1, mx, my, a, b, c, o, kk, weights, inv_om, vis):
    """Backward, step 1 for one Gaussian (pair ``kk`` of the tile) over pixels ``p0 .. p1 - 1``:
    the same alphas as the forward; ``weights`` = alpha T_before where the pair was blended
    (else 0), ``inv_om`` = 1 / (1 - alpha), ``vis`` = exp(-sigma). Returns the blended count."""
    nvalid = I0
    for p in range(p0, p1):
        u = np.uint64(p)
        dx = mx - cx[u]
        dy = my - cy[u]
        sigma = HALF * (a * dx * dx + c * dy * dy) + b * dx * dy
        v = _exp_neg(sigma)
        alpha = min(ALPHA_MAX, o * v)
        valid = (sigma >= ZERO) & (alpha >= ALPHA_MIN) & (kk < last[u])
        iom = ONE / (ONE - alpha)
        weights[u] = alpha * (trans[u] * iom) if valid else ZERO
        inv_om[u] = iom
        vis[u] = v
        nvalid = np.int32(nvalid + (I1 if valid else I0))
    return nvalid


@njit(fastmath=_FM, error_model="numpy")
def _undo_channels(behind, gimg, trans, weights, gal, features, g, p0, p1):
    """Backward, step 2: ``gal[p] = sum_ch G (T f - behind)`` (the features' part of dL/dalpha,
    before the 1 / (1 - alpha) factor), then add the pair's own contribution to ``behind``, which
    becomes what lies behind the next pair to undo (the one in front of this one)."""
    for p in range(p0, p1):
        gal[np.uint64(p)] = ZERO
    for ch in range(features.shape[1]):
        f = features[g, ch]
        for p in range(p0, p1):
            u = np.uint64(p)
            gp = gimg[ch, u]
            bh = behind[ch, u]
            gal[u] += gp * (trans[u] * f - bh)
            behind[ch, u] = bh + f * weights[u]


@njit(fastmath=_FM_SUM, error_model="numpy")
def _feature_grads(out, gimg, weights, p0, p1):
    """``out[ch] += sum_p weights[p] G[ch, p]``: dL/dfeatures of one pair."""
    for ch in range(gimg.shape[0]):
        total = ZERO
        for p in range(p0, p1):
            u = np.uint64(p)
            total += weights[u] * gimg[ch, u]
        out[ch] += total


@njit(fastmath=_FM_SUM, error_model="numpy")
def _undo_scalars(out, trans, tfin, dbehind, galpha, gdepth, weights, inv_om, vis, gal, cx, cy,
                  p0, p1, mx, my, a, b, c, o, z):  # fmt: skip
    """Backward, step 3: chain dL/dalpha (features, alpha and depth outputs) to the opacity,
    sigma, 2D mean and conic; dL/ddepth; restore T before the pair. Adds to ``out[0:7]``."""
    g_mx = ZERO
    g_my = ZERO
    g_a = ZERO
    g_b = ZERO
    g_c = ZERO
    g_o = ZERO
    g_z = ZERO
    for p in range(p0, p1):
        u = np.uint64(p)
        w = weights[u]
        valid = w > ZERO
        iom = inv_om[u]
        v = vis[u]
        alpha = min(ALPHA_MAX, o * v)
        ti = trans[u] * iom
        g_alpha = (gal[u] + galpha[u] * tfin[u] + gdepth[u] * (trans[u] * z - dbehind[u])) * iom
        g_z += w * gdepth[u]
        dbehind[u] += z * w
        trans[u] = ti if valid else trans[u]
        free = valid & (o * v <= ALPHA_MAX)  # alpha not clamped: it depends on o and sigma
        g_sigma = -alpha * g_alpha if free else ZERO
        g_o += v * g_alpha if free else ZERO
        dx = mx - cx[u]
        dy = my - cy[u]
        g_mx += g_sigma * (a * dx + b * dy)
        g_my += g_sigma * (b * dx + c * dy)
        g_a += g_sigma * dx * dx
        g_b += g_sigma * dx * dy
        g_c += g_sigma * dy * dy
    out[0] += g_mx
    out[1] += g_my
    out[2] += HALF * g_a
    out[3] += g_b
    out[4] += HALF * g_c
    out[5] += g_o
    out[6] += g_z


@njit(cache=True, fastmath=_FM, parallel=True, error_model="numpy")
def composite_backward(
    params, pbox, features, background, tile_start, ids, width, height, nthreads,
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
        trans = np.empty(NPX, np.float32)  # T after the pairs not yet undone (starts at final T)
        tfin = np.empty(NPX, np.float32)
        dbehind = np.empty(NPX, np.float32)  # depth blended behind the pair being undone
        galpha = np.empty(NPX, np.float32)
        gdepth = np.empty(NPX, np.float32)
        last = np.empty(NPX, np.float32)
        cx = np.empty(NPX, np.float32)
        cy = np.empty(NPX, np.float32)
        weights = np.empty(NPX, np.float32)
        inv_om = np.empty(NPX, np.float32)
        vis = np.empty(NPX, np.float32)
        gal = np.empty(NPX, np.float32)
        behind = np.empty((nch, NPX), np.float32)  # features blended behind, plus T_final bg
        gimg = np.empty((nch, NPX), np.float32)
        rowlast = np.empty(TILE, np.int64)
        for tid in range(chunk, ntiles, nchunk):
            px0 = (tid % tiles_x) * TILE
            py0 = (tid // tiles_x) * TILE
            ncols = min(TILE, width - px0)
            nrows = min(TILE, height - py0)
            trans[:] = ONE
            tfin[:] = ONE
            dbehind[:] = ZERO
            galpha[:] = ZERO
            gdepth[:] = ZERO
            last[:] = ZERO
            gimg[:] = ZERO
            rowlast[:] = 0
            for p in range(NPX):
                cx[p] = F32(px0 + p % TILE) + HALF
                cy[p] = F32(py0 + p // TILE) + HALF
            for row in range(nrows):
                for col in range(ncols):
                    p = row * TILE + col
                    y = py0 + row
                    x = px0 + col
                    trans[p] = trans_in[y, x]
                    tfin[p] = trans_in[y, x]
                    galpha[p] = grad_alpha[y, x]
                    gdepth[p] = grad_depth[y, x]
                    last[p] = F32(last_in[y, x])
                    rowlast[row] = max(rowlast[row], last_in[y, x])
                    for ch in range(nch):
                        gimg[ch, p] = grad_image[ch, y, x]
            for ch in range(nch):
                for p in range(NPX):
                    behind[ch, p] = tfin[p] * background[ch]
            s0 = tile_start[tid]
            for kk in range(rowlast.max() - 1, -1, -1):
                g = ids[s0 + kk]
                r0 = max(pbox[g, 0] - py0, 0)
                r1 = min(pbox[g, 1] - py0, nrows)
                while r0 < r1 and rowlast[r0] <= kk:
                    r0 += 1
                while r1 > r0 and rowlast[r1 - 1] <= kk:
                    r1 -= 1
                if r0 >= r1:
                    continue
                p0 = r0 * TILE + max(pbox[g, 2] - px0, 0)
                p1 = (r1 - 1) * TILE + min(pbox[g, 3] - px0, ncols)
                mx = params[g, _MX]
                my = params[g, _MY]
                a = params[g, _A]
                b = params[g, _B]
                c = params[g, _C]
                o = params[g, _O]
                z = params[g, _Z]
                nvalid = _undo_pixels(
                    trans, last, cx, cy, p0, p1, mx, my, a, b, c, o, F32(kk), weights, inv_om, vis
                )
                if nvalid == 0:
                    continue
                _undo_channels(behind, gimg, trans, weights, gal, features, g, p0, p1)
                _feature_grads(gbuf[g, _GRAD_COLS:], gimg, weights, p0, p1)
                _undo_scalars(
                    gbuf[g], trans, tfin, dbehind, galpha, gdepth, weights, inv_om, vis, gal, cx, cy,
                    p0, p1, mx, my, a, b, c, o, z,
                )  # fmt: skip
    out = grads[0]
    for i in prange(n):
        for chunk in range(1, nchunk):
            for col in range(ncol):
                out[i, col] += grads[chunk, i, col]
    return out


@njit(cache=True, fastmath=_FM, parallel=True, error_model="numpy")
def project(means, quats, scales, world_to_camera, intrinsics, width, height, near, eps2d):
    """Forward-only projection of one camera's Gaussians: the same formulas, in the same order
    of operations where it matters, as ``_projection.project_gaussians`` (see its docstring), for
    renders that need no gradient. Returns ``means2d [N, 2]``, ``conics [N, 3]``, ``depths [N]``
    float32 and ``valid [N]`` bool. Every 3x3 product is written out in scalars so it stays in
    registers, and Gaussians are split over the threads (scene A: 3.5 ms serial with 3x3 scratch
    arrays, about 1.5 ms now on 2 cores)."""
    n = means.shape[0]
    means2d = np.zeros((n, 2), np.float32)
    conics = np.zeros((n, 3), np.float32)
    depths = np.zeros(n, np.float32)
    valid = np.zeros(n, np.bool_)
    rc = world_to_camera[:3, :3]
    fx = intrinsics[0, 0]
    fy = intrinsics[1, 1]
    cx = intrinsics[0, 2]
    cy = intrinsics[1, 2]
    tan_fovx = HALF * F32(width) / fx
    tan_fovy = HALF * F32(height) / fy
    lim = F32(0.3)
    u_lo = -(cx / fx + lim * tan_fovx)
    u_hi = (F32(width) - cx) / fx + lim * tan_fovx
    v_lo = -(cy / fy + lim * tan_fovy)
    v_hi = (F32(height) - cy) / fy + lim * tan_fovy
    r00, r01, r02 = rc[0, 0], rc[0, 1], rc[0, 2]
    r10, r11, r12 = rc[1, 0], rc[1, 1], rc[1, 2]
    r20, r21, r22 = rc[2, 0], rc[2, 1], rc[2, 2]
    w0, w1, w2 = world_to_camera[0, 3], world_to_camera[1, 3], world_to_camera[2, 3]
    for g in prange(n):
        x = means[g, 0]
        y = means[g, 1]
        z = means[g, 2]
        t0 = r00 * x + r01 * y + r02 * z + w0
        t1 = r10 * x + r11 * y + r12 * z + w1
        t2 = r20 * x + r21 * y + r22 * z + w2
        depths[g] = t2
        if not t2 > near:
            continue
        qw = quats[g, 0]
        qx = quats[g, 1]
        qy = quats[g, 2]
        qz = quats[g, 3]
        norm = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), F32(1e-12))
        qw /= norm
        qx /= norm
        qy /= norm
        qz /= norm
        # M = R(q) diag(s), scalars only (kept in registers)
        sx = scales[g, 0]
        sy = scales[g, 1]
        sz = scales[g, 2]
        m00 = (ONE - F32(2) * (qy * qy + qz * qz)) * sx
        m01 = (F32(2) * (qx * qy - qw * qz)) * sy
        m02 = (F32(2) * (qx * qz + qw * qy)) * sz
        m10 = (F32(2) * (qx * qy + qw * qz)) * sx
        m11 = (ONE - F32(2) * (qx * qx + qz * qz)) * sy
        m12 = (F32(2) * (qy * qz - qw * qx)) * sz
        m20 = (F32(2) * (qx * qz - qw * qy)) * sx
        m21 = (F32(2) * (qy * qz + qw * qx)) * sy
        m22 = (ONE - F32(2) * (qx * qx + qy * qy)) * sz
        # world covariance M M^T (symmetric)
        c00 = m00 * m00 + m01 * m01 + m02 * m02
        c01 = m00 * m10 + m01 * m11 + m02 * m12
        c02 = m00 * m20 + m01 * m21 + m02 * m22
        c11 = m10 * m10 + m11 * m11 + m12 * m12
        c12 = m10 * m20 + m11 * m21 + m12 * m22
        c22 = m20 * m20 + m21 * m21 + m22 * m22
        # tmp = Rc cov
        a00 = r00 * c00 + r01 * c01 + r02 * c02
        a01 = r00 * c01 + r01 * c11 + r02 * c12
        a02 = r00 * c02 + r01 * c12 + r02 * c22
        a10 = r10 * c00 + r11 * c01 + r12 * c02
        a11 = r10 * c01 + r11 * c11 + r12 * c12
        a12 = r10 * c02 + r11 * c12 + r12 * c22
        a20 = r20 * c00 + r21 * c01 + r22 * c02
        a21 = r20 * c01 + r21 * c11 + r22 * c12
        a22 = r20 * c02 + r21 * c12 + r22 * c22
        # camera covariance tmp Rc^T (the entries the 2D projection needs)
        k00 = a00 * r00 + a01 * r01 + a02 * r02
        k01 = a00 * r10 + a01 * r11 + a02 * r12
        k02 = a00 * r20 + a01 * r21 + a02 * r22
        k11 = a10 * r10 + a11 * r11 + a12 * r12
        k12 = a10 * r20 + a11 * r21 + a12 * r22
        k20 = a20 * r00 + a21 * r01 + a22 * r02
        k21 = a20 * r10 + a21 * r11 + a22 * r12
        k22 = a20 * r20 + a21 * r21 + a22 * r22
        u = min(max(t0 / t2, u_lo), u_hi)
        v = min(max(t1 / t2, v_lo), v_hi)
        tx = t2 * u
        ty = t2 * v
        j00 = fx / t2
        j02 = -fx * tx / (t2 * t2)
        j11 = fy / t2
        j12 = -fy * ty / (t2 * t2)
        # cov2d = J covc J^T with J = [[j00, 0, j02], [0, j11, j12]]
        a0 = j00 * k00 + j02 * k20
        a1 = j00 * k01 + j02 * k21
        a2 = j00 * k02 + j02 * k22
        b1 = j11 * k11 + j12 * k21
        b2 = j11 * k12 + j12 * k22
        s00 = a0 * j00 + a2 * j02 + eps2d
        s01 = a1 * j11 + a2 * j12
        s11 = b1 * j11 + b2 * j12 + eps2d
        det = max(s00 * s11 - s01 * s01, F32(1e-10))
        mx = fx * t0 / t2 + cx
        my = fy * t1 / t2 + cy
        means2d[g, 0] = mx
        means2d[g, 1] = my
        conics[g, 0] = s11 / det
        conics[g, 1] = -s01 / det
        conics[g, 2] = s00 / det
        rx = math.ceil(F32(3.33) * math.sqrt(s00))
        ry = math.ceil(F32(3.33) * math.sqrt(s11))
        valid[g] = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    return means2d, conics, depths, valid
