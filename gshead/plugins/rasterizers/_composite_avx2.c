/* Tile compositing of the ``cpu`` rasterizer and its backward, hand-vectorised for AVX2 + FMA.
 *
 * The same computations as ``composite`` and ``composite_backward`` in ``_cpu_kernels.py`` (their
 * docstrings have the semantics: gsplat's front-to-back blending, alpha = min(0.999, o
 * exp(-sigma)), pairs below alpha 1/255 skipped, a pixel stops before the pair that would take its
 * transmittance to 1e-4 or below), with the same inputs (the tables written by ``prepare``) and
 * outputs. The forward and the backward here compute alpha with the same operations, bit for
 * bit, so the backward's skip and stop decisions are the forward's. Built by the package's
 * install as an optional plain shared library (no Python API), loaded with ctypes by
 * ``_cpu_native.py``; when it is missing, or the CPU lacks AVX2/FMA, the numba kernels run.
 *
 * Why it is faster than the numba kernel (which lets LLVM vectorise long pixel spans):
 * - the unit of work is one 8-pixel half row of a 16 x 16 tile, one AVX2 register: a pair
 *   visits only the half rows its pixel box touches, and skips half rows whose 8 pixels have
 *   all stopped (a bit mask per half row), with no scalar remainder loops;
 * - features are accumulated pixel by pixel only where the pair blended (pixel-major
 *   accumulator, channels in registers), not over whole spans channel by channel.
 *
 * Threads: ``nthreads`` POSIX threads (the caller's thread included), each with its own scratch,
 * take tiles one at a time from a shared counter: a thread that the OS parks (another process
 * busy on the same cores) delays only the tile it holds, not a fixed share of the image. Each
 * tile is computed by one thread in a fixed order, so results do not depend on the threads.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 16
#define NPX (TILE * TILE)
#define NUNIT (NPX / 8) /* 8-pixel half rows: unit u = row * 2 + half, pixels u*8 .. u*8+7 */
#define MAX_CHANNELS 64
#define PREFETCH 8 /* pairs ahead */
#define NPAR 8 /* columns of the per-Gaussian table: mean x, mean y, conic a, b, c, opacity, depth, spare */

#define AVX2 __attribute__((target("avx2,fma")))

static const float ALPHA_MIN = 1.0f / 255.0f;
static const float ALPHA_MAX = 0.999f;
static const float T_MIN = 1e-4f;

/* 1 when this CPU can run the kernel (AVX2 and FMA). Compiled without AVX so that it is safe to
 * call anywhere. */
int gshead_composite_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int gshead_composite_max_channels(void) { return MAX_CHANNELS; }

/* exp(-s) for s in [0, 8] (clamped), the numba kernel's polynomial: s = k ln2 - r with
 * k = round(s / ln2), Taylor degree 7 in r, then an exact scaling by 2^-k (k <= 12). */
AVX2 static inline __m256 exp_neg(__m256 sigma) {
    const __m256 s = _mm256_min_ps(_mm256_max_ps(sigma, _mm256_setzero_ps()), _mm256_set1_ps(8.0f));
    const __m256i k = _mm256_cvttps_epi32(_mm256_fmadd_ps(s, _mm256_set1_ps(1.4426950408889634f), _mm256_set1_ps(0.5f)));
    const __m256 kf = _mm256_cvtepi32_ps(k);
    const __m256 r = _mm256_fmadd_ps(kf, _mm256_set1_ps(1.42860682030941723212e-6f),
                                     _mm256_fmsub_ps(kf, _mm256_set1_ps(0.693145751953125f), s));
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^-k as float bits: exponent field 127 - k */
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127), k), 23));
    return _mm256_mul_ps(p, scale);
}

/* The one formula for sigma = 0.5 (a dx^2 + c dy^2) + b dx dy over a half row (dx per lane;
 * cdy2 = c dy dy and bdy = b dy per row). Both kernels call it, so their alphas match bit for bit. */
AVX2 static inline __m256 sigma_of(__m256 a, __m256 bdy, __m256 cdy2, __m256 dx) {
    const __m256 quad = _mm256_fmadd_ps(_mm256_mul_ps(a, dx), dx, cdy2);
    return _mm256_fmadd_ps(bdy, dx, _mm256_mul_ps(_mm256_set1_ps(0.5f), quad));
}

/* The part of a pair's pixel box inside its tile: rows [*r0, *r1) clipped to [row_lo, row_hi),
 * half rows h0..h1 of the columns; 0 when empty. */
static inline int clip_box(const int32_t *box, int64_t px0, int64_t py0, int64_t row_lo, int64_t row_hi,
                           int64_t ncols, int64_t *r0, int64_t *r1, int *h0, int *h1) {
    const int64_t y0 = box[0] - py0, y1 = box[1] - py0, x0 = box[2] - px0, x1 = box[3] - px0;
    const int64_t c0 = x0 > 0 ? x0 : 0, c1 = x1 < ncols ? x1 : ncols;
    *r0 = y0 > row_lo ? y0 : row_lo;
    *r1 = y1 < row_hi ? y1 : row_hi;
    *h0 = (int)(c0 >> 3);
    *h1 = (int)((c1 - 1) >> 3);
    return *r0 < *r1 && c0 < c1;
}

/* acc[lane, 0:cp] += w[lane] * f[0:cp] for each blended lane (bit) of one half row; acc is
 * pixel-major with cp (a multiple of 8) floats per pixel. */
AVX2 static inline __attribute__((always_inline)) void add_features(float *restrict acc, const float *restrict f,
                                                                  const float *restrict w, unsigned bits, int64_t cp) {
    __m256 fv[MAX_CHANNELS / 8];
    for (int64_t c = 0; c < cp / 8; c++) fv[c] = _mm256_load_ps(f + 8 * c);
    for (; bits; bits &= bits - 1) {
        const int lane = __builtin_ctz(bits);
        const __m256 wv = _mm256_broadcast_ss(w + lane);
        float *ap = acc + lane * cp;
        for (int64_t c = 0; c < cp / 8; c++) _mm256_store_ps(ap + 8 * c, _mm256_fmadd_ps(fv[c], wv, _mm256_load_ps(ap + 8 * c)));
    }
}

typedef struct {
    const float *params;         /* [N, 8] */
    const int32_t *pbox;         /* [N, 4]: rows y0, y1, columns x0, x1 (exclusive ends) */
    const float *features;       /* [N, C] */
    const float *background;     /* [C] */
    const int64_t *tile_start;   /* [T + 1] */
    const int32_t *ids;          /* [P] */
    int64_t nch, width, height;
    float *out_image;            /* [C, H, W] */
    float *out_alpha, *out_depth, *out_trans; /* [H, W] */
    int32_t *out_last;           /* [H, W] */
    int64_t *next_tile;          /* shared counter: each thread takes the next tile from it */
    int status;                  /* 0, or -1 when scratch memory could not be allocated */
} job_t;

AVX2 static void run_worker(job_t *job) {
    const int64_t width = job->width, height = job->height, nch = job->nch;
    const int64_t cpad = (nch + 7) & ~(int64_t)7;
    const int64_t tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
    const int64_t ntiles = tiles_x * tiles_y;
    float *scratch = aligned_alloc(32, sizeof(float) * (size_t)(NPX * (3 + cpad) + cpad));
    if (!scratch) {
        job->status = -1;
        return;
    }
    float *trans = scratch, *dep = trans + NPX, *lastf = dep + NPX, *acc = lastf + NPX; /* acc [NPX, cpad] */
    float *fbuf = acc + NPX * cpad;                                                     /* [cpad] */
    int32_t *last = (int32_t *)lastf;
    uint8_t alive[NUNIT];
    uint8_t uvis[NUNIT], bvis[NUNIT]; /* half rows visited by the current pair, their blend masks */
    float wvis[NUNIT * 8] __attribute__((aligned(32))); /* and their blend weights */
    const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 lane_x = _mm256_setr_ps(0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();

    for (;;) {
        const int64_t tid = __atomic_fetch_add(job->next_tile, 1, __ATOMIC_RELAXED);
        if (tid >= ntiles) break;
        const int64_t px0 = (tid % tiles_x) * TILE, py0 = (tid / tiles_x) * TILE;
        const int64_t ncols = width - px0 < TILE ? width - px0 : TILE;
        const int64_t nrows = height - py0 < TILE ? height - py0 : TILE;
        for (int p = 0; p < NPX; p++) {
            trans[p] = 1.0f;
            dep[p] = 0.0f;
            last[p] = 0;
        }
        memset(acc, 0, sizeof(float) * (size_t)(NPX * cpad));
        for (int u = 0; u < NUNIT; u++) {
            const int64_t row = u >> 1, c0 = (u & 1) * 8;
            int64_t n = ncols - c0;
            n = n < 0 ? 0 : (n > 8 ? 8 : n);
            alive[u] = row < nrows ? (uint8_t)((1u << n) - 1u) : 0;
        }
        const __m256 cx[2] = {_mm256_add_ps(_mm256_set1_ps((float)px0), lane_x),
                              _mm256_add_ps(_mm256_set1_ps((float)(px0 + 8)), lane_x)};
        int64_t first_live = 0, end_live = nrows;
        const int64_t s0 = job->tile_start[tid], s1 = job->tile_start[tid + 1];
        for (int64_t k = s0; k < s1 && first_live < end_live; k++) {
            if (k + PREFETCH < s1) { /* the per-Gaussian rows are scattered in memory: fetch ahead */
                const int64_t gn = job->ids[k + PREFETCH];
                __builtin_prefetch(job->params + gn * NPAR);
                __builtin_prefetch(job->pbox + gn * 4);
                __builtin_prefetch(job->features + gn * nch);
            }
            const int64_t g = job->ids[k];
            int64_t r0, r1;
            int h0, h1;
            if (!clip_box(job->pbox + g * 4, px0, py0, first_live, end_live, ncols, &r0, &r1, &h0, &h1)) continue;
            const float *P = job->params + g * NPAR;
            const float mx = P[0], my = P[1], ca = P[2], cb = P[3], cc = P[4];
            const __m256 a = _mm256_set1_ps(ca), o = _mm256_set1_ps(P[5]), z = _mm256_set1_ps(P[6]);
            const __m256i count = _mm256_set1_epi32((int32_t)(k - s0 + 1));
            __m256 dxs[2];
            dxs[0] = _mm256_sub_ps(_mm256_set1_ps(mx), cx[0]);
            dxs[1] = _mm256_sub_ps(_mm256_set1_ps(mx), cx[1]);
            /* Phase 1, branch-free per half row (a branch on the blend result would wait for the
             * whole exp chain and then often mispredict): update T, depth, last and the alive bits,
             * and keep each visited half row's weights and blend mask for phase 2. */
            int nvis = 0;
            unsigned stopped = 0;
            for (int64_t row = r0; row < r1; row++) {
                const float dy = my - ((float)(py0 + row) + 0.5f);
                const __m256 cdy2 = _mm256_set1_ps(cc * dy * dy), bdy = _mm256_set1_ps(cb * dy);
                for (int h = h0; h <= h1; h++) {
                    const int u = (int)(row * 2 + h);
                    const unsigned m = alive[u];
                    if (!m) continue; /* every pixel of this half row has stopped */
                    const __m256 dx = dxs[h];
                    const __m256 sigma = sigma_of(a, bdy, cdy2, dx);
                    const __m256 alpha = _mm256_min_ps(_mm256_set1_ps(ALPHA_MAX), _mm256_mul_ps(o, exp_neg(sigma)));
                    const __m256i am = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), lane_bits), lane_bits);
                    const __m256 ok = _mm256_and_ps(
                        _mm256_and_ps(_mm256_cmp_ps(sigma, zero, _CMP_GE_OQ),
                                      _mm256_cmp_ps(alpha, _mm256_set1_ps(ALPHA_MIN), _CMP_GE_OQ)),
                        _mm256_castsi256_ps(am));
                    float *tp_ptr = trans + u * 8;
                    const __m256 tp = _mm256_load_ps(tp_ptr);
                    const __m256 next_t = _mm256_mul_ps(tp, _mm256_sub_ps(one, alpha));
                    const __m256 blend = _mm256_and_ps(ok, _mm256_cmp_ps(next_t, _mm256_set1_ps(T_MIN), _CMP_GT_OQ));
                    const unsigned bm = (unsigned)_mm256_movemask_ps(blend);
                    const unsigned sm = (unsigned)_mm256_movemask_ps(ok) & ~bm;
                    alive[u] = (uint8_t)(m & ~sm);
                    stopped |= sm;
                    const __m256 w = _mm256_and_ps(_mm256_mul_ps(alpha, tp), blend);
                    _mm256_store_ps(tp_ptr, _mm256_blendv_ps(tp, next_t, blend));
                    float *dp = dep + u * 8;
                    _mm256_store_ps(dp, _mm256_fmadd_ps(z, w, _mm256_load_ps(dp)));
                    __m256i *lp = (__m256i *)(last + u * 8);
                    _mm256_store_si256(lp, _mm256_blendv_epi8(_mm256_load_si256(lp), count, _mm256_castps_si256(blend)));
                    _mm256_store_ps(wvis + nvis * 8, w);
                    uvis[nvis] = (uint8_t)u;
                    bvis[nvis] = (uint8_t)bm;
                    nvis++;
                }
            }
            /* Phase 2: add the features where the pair blended. */
            int have_f = 0;
            for (int i = 0; i < nvis; i++) {
                const unsigned bits = bvis[i];
                if (!bits) continue;
                if (!have_f) {
                    const float *f = job->features + g * nch;
                    for (int64_t ch = 0; ch < cpad; ch++) fbuf[ch] = ch < nch ? f[ch] : 0.0f;
                    have_f = 1;
                }
                float *ap = acc + (int64_t)uvis[i] * 8 * cpad;
                const float *wp = wvis + i * 8;
                switch (cpad) { /* constant widths keep the features in registers */
                case 8: add_features(ap, fbuf, wp, bits, 8); break;
                case 16: add_features(ap, fbuf, wp, bits, 16); break;
                case 32: add_features(ap, fbuf, wp, bits, 32); break;
                case 64: add_features(ap, fbuf, wp, bits, 64); break;
                default: add_features(ap, fbuf, wp, bits, cpad);
                }
            }
            if (stopped) { /* trim the rows that have fully stopped from both ends */
                while (first_live < end_live && !(alive[2 * first_live] | alive[2 * first_live + 1])) first_live++;
                while (end_live > first_live && !(alive[2 * end_live - 2] | alive[2 * end_live - 1])) end_live--;
            }
        }
        const int64_t plane = width * height;
        for (int64_t row = 0; row < nrows; row++) {
            for (int64_t col = 0; col < ncols; col++) {
                const int64_t p = row * TILE + col, o = (py0 + row) * width + px0 + col;
                const float t = trans[p];
                const float *ap = acc + p * cpad;
                for (int64_t ch = 0; ch < nch; ch++) job->out_image[ch * plane + o] = ap[ch] + t * job->background[ch];
                job->out_alpha[o] = 1.0f - t;
                job->out_depth[o] = dep[p];
                job->out_last[o] = last[p];
                job->out_trans[o] = t;
            }
        }
    }
    free(scratch);
}

static void *thread_main(void *arg) {
    run_worker((job_t *)arg);
    return NULL;
}

/* Composite every tile; returns 0, -1 (out of memory) or -2 (bad arguments). Arguments as
 * ``composite`` in ``_cpu_kernels.py``. A thread that cannot be started is not an error: the
 * others take its tiles. */
int gshead_composite(const float *params, const int32_t *pbox, const float *features, int64_t nch,
                     const float *background, const int64_t *tile_start, const int32_t *ids,
                     int64_t width, int64_t height, int64_t nthreads, float *out_image, float *out_alpha,
                     float *out_depth, int32_t *out_last, float *out_trans) {
    if (nch < 1 || nch > MAX_CHANNELS || width < 0 || height < 0) return -2;
    const int64_t ntiles = ((width + TILE - 1) / TILE) * ((height + TILE - 1) / TILE);
    if (ntiles == 0) return 0;
    int64_t n = nthreads < 1 ? 1 : nthreads;
    n = n > ntiles ? ntiles : n;
    if (n > 256) n = 256;
    int64_t next_tile = 0;
    job_t jobs[256];
    pthread_t threads[256];
    int started[256];
    for (int64_t i = 0; i < n; i++) {
        jobs[i] = (job_t){params, pbox, features, background, tile_start, ids, nch, width, height,
                          out_image, out_alpha, out_depth, out_trans, out_last, &next_tile, 0};
        started[i] = 0;
    }
    int status = 0;
    for (int64_t i = 1; i < n; i++) /* a thread that fails to start leaves its tiles to the others */
        started[i] = pthread_create(&threads[i], NULL, thread_main, &jobs[i]) == 0;
    run_worker(&jobs[0]);
    for (int64_t i = 1; i < n; i++)
        if (started[i]) pthread_join(threads[i], NULL);
    for (int64_t i = 0; i < n; i++)
        if (jobs[i].status) status = jobs[i].status;
    return status;
}

/* ------------------------------------------------------------------------------- backward */
/* The compositing backward, the same computation as ``composite_backward`` in ``_cpu_kernels.py``
 * (see it for the maths): each tile walks its pairs back to front from the last blended one,
 * recovering T before each pair as T / (1 - alpha). Tile t goes to thread t % nthreads (static,
 * so each Gaussian's gradient is summed in a fixed order: the result does not depend on timing);
 * each thread adds into its own [N, 7 + C] buffer, and the buffers are summed at the end. */

typedef struct {
    const float *params;
    const int32_t *pbox;
    const float *features, *background;
    const int64_t *tile_start;
    const int32_t *ids;
    int64_t nch, width, height;
    const int32_t *last_in;
    const float *trans_in, *grad_image, *grad_alpha, *grad_depth;
    float *grads; /* [N, 7 + C]: this thread's buffer */
    int chunk, nchunk;
    int status;
} bjob_t;

AVX2 static inline float hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

AVX2 static void run_backward(bjob_t *job) {
    const int64_t width = job->width, height = job->height, nch = job->nch, ncol = 7 + nch;
    const int64_t cpad = (nch + 7) & ~(int64_t)7;
    const int64_t tiles_x = (width + TILE - 1) / TILE, tiles_y = (height + TILE - 1) / TILE;
    const int64_t ntiles = tiles_x * tiles_y, plane = width * height;
    float *scratch = aligned_alloc(32, sizeof(float) * (size_t)(NPX * (6 + 2 * cpad) + 2 * cpad));
    if (!scratch) {
        job->status = -1;
        return;
    }
    float *trans = scratch, *tfin = trans + NPX, *galpha = tfin + NPX, *gdepth = galpha + NPX;
    float *dbehind = gdepth + NPX, *lastf = dbehind + NPX;
    float *gimg = lastf + NPX, *behind = gimg + NPX * cpad; /* [NPX, cpad] each, pixel-major */
    float *fbuf = behind + NPX * cpad, *fgrad = fbuf + cpad; /* [cpad] each */
    int32_t *last = (int32_t *)lastf;
    int32_t rowlast[TILE];
    const __m256 lane_x = _mm256_setr_ps(0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f);
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();

    for (int64_t tid = job->chunk; tid < ntiles; tid += job->nchunk) {
        const int64_t px0 = (tid % tiles_x) * TILE, py0 = (tid / tiles_x) * TILE;
        const int64_t ncols = width - px0 < TILE ? width - px0 : TILE;
        const int64_t nrows = height - py0 < TILE ? height - py0 : TILE;
        int32_t kmax = 0;
        for (int row = 0; row < TILE; row++) rowlast[row] = 0;
        for (int p = 0; p < NPX; p++) {
            const int64_t row = p / TILE, col = p % TILE;
            const int inside = row < nrows && col < ncols;
            const int64_t o = (py0 + row) * width + px0 + col;
            trans[p] = tfin[p] = inside ? job->trans_in[o] : 1.0f;
            galpha[p] = inside ? job->grad_alpha[o] : 0.0f;
            gdepth[p] = inside ? job->grad_depth[o] : 0.0f;
            last[p] = inside ? job->last_in[o] : 0;
            dbehind[p] = 0.0f;
            if (last[p] > rowlast[row]) rowlast[row] = last[p];
            for (int64_t ch = 0; ch < cpad; ch++) {
                gimg[p * cpad + ch] = inside && ch < nch ? job->grad_image[ch * plane + o] : 0.0f;
                behind[p * cpad + ch] = ch < nch ? tfin[p] * job->background[ch] : 0.0f;
            }
        }
        for (int row = 0; row < TILE; row++) kmax = rowlast[row] > kmax ? rowlast[row] : kmax;
        const __m256 cx[2] = {_mm256_add_ps(_mm256_set1_ps((float)px0), lane_x),
                              _mm256_add_ps(_mm256_set1_ps((float)(px0 + 8)), lane_x)};
        const int64_t s0 = job->tile_start[tid];
        for (int64_t kk = kmax - 1; kk >= 0; kk--) {
            const int64_t g = job->ids[s0 + kk];
            int64_t r0, r1;
            int h0, h1;
            if (!clip_box(job->pbox + g * 4, px0, py0, 0, nrows, ncols, &r0, &r1, &h0, &h1)) continue;
            while (r0 < r1 && rowlast[r0] <= kk) r0++; /* rows whose pixels all stopped before this pair */
            while (r1 > r0 && rowlast[r1 - 1] <= kk) r1--;
            if (r0 >= r1) continue;
            const float *P = job->params + g * NPAR;
            const float mx = P[0], my = P[1], ca = P[2], cb = P[3], cc = P[4];
            const __m256 a = _mm256_set1_ps(ca), b = _mm256_set1_ps(cb), c = _mm256_set1_ps(cc);
            const __m256 o = _mm256_set1_ps(P[5]), z = _mm256_set1_ps(P[6]);
            const __m256i kkv = _mm256_set1_epi32((int32_t)kk);
            __m256 s_mx = zero, s_my = zero, s_a = zero, s_b = zero, s_c = zero, s_o = zero, s_z = zero;
            int have_f = 0;
            for (int64_t row = r0; row < r1; row++) {
                const float dys = my - ((float)(py0 + row) + 0.5f);
                const __m256 dy = _mm256_set1_ps(dys);
                const __m256 cdy2 = _mm256_set1_ps(cc * dys * dys), bdy = _mm256_set1_ps(cb * dys);
                for (int h = h0; h <= h1; h++) {
                    const int u = (int)(row * 2 + h);
                    const __m256 dx = _mm256_sub_ps(_mm256_set1_ps(mx), cx[h]);
                    const __m256 sigma = sigma_of(a, bdy, cdy2, dx); /* the forward's alpha, bit for bit */
                    const __m256 v = exp_neg(sigma);
                    const __m256 ov = _mm256_mul_ps(o, v);
                    const __m256 alpha = _mm256_min_ps(_mm256_set1_ps(ALPHA_MAX), ov);
                    const __m256i lastv = _mm256_load_si256((const __m256i *)(last + u * 8));
                    const __m256 valid = _mm256_and_ps(
                        _mm256_and_ps(_mm256_cmp_ps(sigma, zero, _CMP_GE_OQ),
                                      _mm256_cmp_ps(alpha, _mm256_set1_ps(ALPHA_MIN), _CMP_GE_OQ)),
                        _mm256_castsi256_ps(_mm256_cmpgt_epi32(lastv, kkv)));
                    const int vm = _mm256_movemask_ps(valid);
                    if (!vm) continue;
                    if (!have_f) {
                        const float *f = job->features + g * nch;
                        for (int64_t ch = 0; ch < cpad; ch++) {
                            fbuf[ch] = ch < nch ? f[ch] : 0.0f;
                            fgrad[ch] = 0.0f;
                        }
                        have_f = 1;
                    }
                    float *tp = trans + u * 8;
                    const __m256 tv = _mm256_load_ps(tp);
                    const __m256 iom = _mm256_div_ps(one, _mm256_sub_ps(one, alpha));
                    const __m256 w = _mm256_and_ps(_mm256_mul_ps(alpha, _mm256_mul_ps(tv, iom)), valid);
                    /* channels, per valid pixel: the features' part of dL/dalpha, what lies behind,
                     * and dL/dfeatures */
                    float wl[8] __attribute__((aligned(32))), tl[8] __attribute__((aligned(32)));
                    float gl[8] __attribute__((aligned(32))) = {0};
                    _mm256_store_ps(wl, w);
                    _mm256_store_ps(tl, tv);
                    for (unsigned bits = (unsigned)vm; bits; bits &= bits - 1) {
                        const int lane = __builtin_ctz(bits);
                        const int64_t p = u * 8 + lane;
                        const __m256 tb = _mm256_set1_ps(tl[lane]), wb = _mm256_set1_ps(wl[lane]);
                        float *bh = behind + p * cpad;
                        const float *gp = gimg + p * cpad;
                        __m256 gsum = zero;
                        for (int64_t ch = 0; ch < cpad; ch += 8) {
                            const __m256 fv = _mm256_load_ps(fbuf + ch), gv = _mm256_load_ps(gp + ch);
                            const __m256 bv = _mm256_load_ps(bh + ch);
                            gsum = _mm256_fmadd_ps(gv, _mm256_fmsub_ps(tb, fv, bv), gsum);
                            _mm256_store_ps(bh + ch, _mm256_fmadd_ps(fv, wb, bv));
                            _mm256_store_ps(fgrad + ch, _mm256_fmadd_ps(wb, gv, _mm256_load_ps(fgrad + ch)));
                        }
                        gl[lane] = hsum(gsum);
                    }
                    const __m256 gal = _mm256_load_ps(gl);
                    /* scalars: chain dL/dalpha to opacity, sigma, mean and conic; depth; restore T */
                    const __m256 gd = _mm256_load_ps(gdepth + u * 8);
                    float *dbp = dbehind + u * 8;
                    const __m256 db = _mm256_load_ps(dbp);
                    const __m256 inner = _mm256_fmadd_ps(gd, _mm256_fmsub_ps(tv, z, db),
                                                         _mm256_fmadd_ps(_mm256_load_ps(galpha + u * 8), _mm256_load_ps(tfin + u * 8), gal));
                    const __m256 g_alpha = _mm256_and_ps(_mm256_mul_ps(inner, iom), valid);
                    s_z = _mm256_fmadd_ps(w, gd, s_z);
                    _mm256_store_ps(dbp, _mm256_fmadd_ps(z, w, db));
                    _mm256_store_ps(tp, _mm256_blendv_ps(tv, _mm256_mul_ps(tv, iom), valid));
                    const __m256 fr = _mm256_and_ps(valid, _mm256_cmp_ps(ov, _mm256_set1_ps(ALPHA_MAX), _CMP_LE_OQ));
                    const __m256 g_sigma = _mm256_and_ps(_mm256_sub_ps(zero, _mm256_mul_ps(alpha, g_alpha)), fr);
                    s_o = _mm256_add_ps(s_o, _mm256_and_ps(_mm256_mul_ps(v, g_alpha), fr));
                    s_mx = _mm256_fmadd_ps(g_sigma, _mm256_fmadd_ps(a, dx, _mm256_mul_ps(b, dy)), s_mx);
                    s_my = _mm256_fmadd_ps(g_sigma, _mm256_fmadd_ps(b, dx, _mm256_mul_ps(c, dy)), s_my);
                    const __m256 gdx = _mm256_mul_ps(g_sigma, dx);
                    s_a = _mm256_fmadd_ps(gdx, dx, s_a);
                    s_b = _mm256_fmadd_ps(gdx, dy, s_b);
                    s_c = _mm256_fmadd_ps(_mm256_mul_ps(g_sigma, dy), dy, s_c);
                }
            }
            if (!have_f) continue;
            float *out = job->grads + g * ncol;
            out[0] += hsum(s_mx);
            out[1] += hsum(s_my);
            out[2] += 0.5f * hsum(s_a);
            out[3] += hsum(s_b);
            out[4] += 0.5f * hsum(s_c);
            out[5] += hsum(s_o);
            out[6] += hsum(s_z);
            for (int64_t ch = 0; ch < nch; ch++) out[7 + ch] += fgrad[ch];
        }
    }
    free(scratch);
}

static void *backward_main(void *arg) {
    run_backward((bjob_t *)arg);
    return NULL;
}

/* Gradients [N, 7 + C] (mean x, mean y, conic a, b, c, opacity, depth, features) into ``grads``,
 * which the caller zeroes. Returns 0, -1 (out of memory) or -2 (bad arguments). Arguments as
 * ``composite_backward`` in ``_cpu_kernels.py``. */
int gshead_composite_backward(const float *params, const int32_t *pbox, const float *features, int64_t nch,
                              const float *background, const int64_t *tile_start, const int32_t *ids, int64_t n,
                              int64_t width, int64_t height, int64_t nthreads, const int32_t *last_in,
                              const float *trans_in, const float *grad_image, const float *grad_alpha,
                              const float *grad_depth, float *grads) {
    if (nch < 1 || nch > MAX_CHANNELS || width < 0 || height < 0 || n < 0) return -2;
    const int64_t ntiles = ((width + TILE - 1) / TILE) * ((height + TILE - 1) / TILE);
    if (ntiles == 0 || n == 0) return 0;
    int64_t k = nthreads < 1 ? 1 : nthreads;
    k = k > ntiles ? ntiles : k;
    if (k > 256) k = 256;
    const size_t size = (size_t)n * (size_t)(7 + nch);
    bjob_t jobs[256];
    pthread_t threads[256];
    int started[256];
    int status = 0;
    for (int64_t i = 0; i < k; i++) {
        float *buf = i == 0 ? grads : calloc(size, sizeof(float));
        if (!buf) { /* fewer buffers: fewer threads */
            k = i;
            break;
        }
        jobs[i] = (bjob_t){params, pbox, features, background, tile_start, ids, nch, width, height,
                           last_in, trans_in, grad_image, grad_alpha, grad_depth, buf, (int)i, 0, 0};
    }
    for (int64_t i = 0; i < k; i++) jobs[i].nchunk = (int)k;
    /* static tile split: a thread that fails to start does its share in this one */
    for (int64_t i = 1; i < k; i++) started[i] = pthread_create(&threads[i], NULL, backward_main, &jobs[i]) == 0;
    run_backward(&jobs[0]);
    for (int64_t i = 1; i < k; i++) {
        if (started[i]) pthread_join(threads[i], NULL);
        else run_backward(&jobs[i]);
    }
    for (int64_t i = 0; i < k; i++)
        if (jobs[i].status) status = jobs[i].status;
    for (int64_t i = 1; i < k; i++) { /* sum the buffers in thread order */
        const float *buf = jobs[i].grads;
        for (size_t e = 0; e < size; e++) grads[e] += buf[e];
        free(jobs[i].grads);
    }
    return status;
}
