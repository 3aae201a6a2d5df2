/* Forward tile compositing of the ``cpu`` rasterizer, hand-vectorised for AVX2 + FMA.
 *
 * The same computation as ``composite`` in ``_cpu_kernels.py`` (its docstring has the
 * semantics: gsplat's front-to-back blending, alpha = min(0.999, o exp(-sigma)), pairs below
 * alpha 1/255 skipped, a pixel stops before the pair that would take its transmittance to
 * 1e-4 or below), with the same inputs (the tables written by ``prepare``) and outputs, so that
 * the numba backward works from either forward. Built by the package's install as an optional
 * plain shared library (no Python API), loaded with ctypes by ``_cpu_native.py``; when it is
 * missing, or the CPU lacks AVX2/FMA, the numba kernel runs instead.
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
            const int32_t *box = job->pbox + g * 4;
            int64_t r0 = box[0] - py0, r1 = box[1] - py0;
            r0 = r0 > first_live ? r0 : first_live;
            r1 = r1 < end_live ? r1 : end_live;
            int64_t c0 = box[2] - px0, c1 = box[3] - px0;
            c0 = c0 > 0 ? c0 : 0;
            c1 = c1 < ncols ? c1 : ncols;
            if (r0 >= r1 || c0 >= c1) continue;
            const int h0 = (int)(c0 >> 3), h1 = (int)((c1 - 1) >> 3);
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
                    /* sigma = 0.5 (a dx^2 + c dy^2) + b dx dy */
                    const __m256 quad = _mm256_fmadd_ps(_mm256_mul_ps(a, dx), dx, cdy2);
                    const __m256 sigma = _mm256_fmadd_ps(bdy, dx, _mm256_mul_ps(_mm256_set1_ps(0.5f), quad));
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
