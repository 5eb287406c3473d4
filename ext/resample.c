/* LANCZOS resize of 8-bit greyscale images, byte-identical to Pillow's.
 * See resample.h.  Build without -ffast-math and with -ffp-contract=off: the
 * coefficients must be computed with exactly Pillow's double operations.
 */
#include "resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RS_X86 1
#endif

/* Pillow: 8 bits for the result, 2 for negative lobes and overshoot. */
#define PRECISION_BITS (32 - 8 - 2)
#define RS_PI 3.14159265358979323846 /* M_PI */

/* ------------------------------------------------------------------------ */
/* Coefficients: Pillow's precompute_coeffs + normalize_coeffs_8bpc          */
/* ------------------------------------------------------------------------ */

/* sin(pi x) / (pi x), 1 at 0: the product pi * x is rounded before sin(). */
static double sinc(double x) {
    if (x == 0.0) {
        return 1.0;
    }
    const double t = x * RS_PI;
    return sin(t) / t;
}

/* LANCZOS with support 3: sinc(x) * sinc(x / 3) on [-3, 3). */
static double lanczos_filter(double x) {
    return (x >= -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
}

typedef struct {
    int out;        /* output samples */
    int ksize;      /* coefficients per output sample (row stride of k) */
    int *bounds;    /* [out][2]: first input sample, number of samples */
    int32_t *k;     /* [out][ksize] fixed point, PRECISION_BITS fraction bits */
} coeffs;

static void coeffs_free(coeffs *c) {
    free(c->bounds);
    free(c->k);
    c->bounds = NULL;
    c->k = NULL;
}

/* The LANCZOS weights of every output sample of an in_size -> out_size axis
 * (whole image as the box), in 22-bit fixed point.  Each double operation is
 * the one Pillow's precompute_coeffs and normalize_coeffs_8bpc perform, in the
 * same order, so the rounded weights are the same.  0, or -1 when out of memory. */
static int coeffs_make(coeffs *c, int in_size, int out_size) {
    /* Pillow receives the box as floats and takes in1 - in0 in float. */
    const double scale = (double)(float)in_size / out_size;
    const double fscale = scale < 1.0 ? 1.0 : scale;    /* widened when shrinking */
    const double radius = 3.0 * fscale;
    const double inv = 1.0 / fscale;
    const int ksize = 2 * (int)ceil(radius) + 1;
    const double one = (double)(1 << PRECISION_BITS);

    c->out = out_size;
    c->ksize = ksize;
    c->bounds = malloc((size_t)out_size * 2 * sizeof(int));
    c->k = calloc((size_t)out_size * ksize, sizeof(int32_t));
    double *w = malloc((size_t)ksize * sizeof(double));
    if (!c->bounds || !c->k || !w) {
        free(w);
        coeffs_free(c);
        return -1;
    }
    for (int o = 0; o < out_size; o++) {
        /* Pillow adds in0 = 0.0f first, which changes nothing. */
        const double mid = (o + 0.5) * scale;
        int first = (int)(mid - radius + 0.5);      /* truncated, as Pillow does */
        int end = (int)(mid + radius + 0.5);
        if (first < 0) {
            first = 0;
        }
        if (end > in_size) {
            end = in_size;
        }
        int n = end - first;
        n = n < 0 ? 0 : n > ksize ? ksize : n;      /* never clamps; keeps w safe */
        double total = 0.0;
        for (int j = 0; j < n; j++) {
            w[j] = lanczos_filter(((double)(j + first) - mid + 0.5) * inv);
            total += w[j];
        }
        int32_t *kq = c->k + (size_t)o * ksize;
        for (int j = 0; j < n; j++) {
            double v = total != 0.0 ? w[j] / total : w[j];
            /* half away from zero; the rest of the row stays 0 */
            kq[j] = v < 0 ? (int32_t)(v * one - 0.5) : (int32_t)(v * one + 0.5);
        }
        c->bounds[2 * o] = first;
        c->bounds[2 * o + 1] = n;
    }
    free(w);
    return 0;
}

/* Pillow's clip8: the table covers every sum a normalised kernel can reach. */
static inline uint8_t clip8(uint32_t acc) {
    int32_t v = (int32_t)acc >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Sums are kept in uint32: the true value always fits in int32 (Pillow sums in
 * int), and wrapping arithmetic makes every partial sum order exact. */
#define ROUND_HALF (1u << (PRECISION_BITS - 1))

static uint8_t dot_h(const uint8_t *row, const int32_t *k, int n) {
    uint32_t ss = ROUND_HALF;
    for (int x = 0; x < n; x++) {
        ss += (uint32_t)row[x] * (uint32_t)k[x];
    }
    return clip8(ss);
}

/* ------------------------------------------------------------------------ */
/* Generic kernels                                                           */
/* ------------------------------------------------------------------------ */

static void horiz_generic(const uint8_t *src, ptrdiff_t stride, int rows, uint8_t *dst,
                          ptrdiff_t dstride, const coeffs *c) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = src + y * stride;
        uint8_t *out = dst + y * dstride;
        for (int xx = 0; xx < c->out; xx++) {
            out[xx] = dot_h(row + c->bounds[2 * xx], c->k + (size_t)xx * c->ksize,
                            c->bounds[2 * xx + 1]);
        }
    }
}

/* Row by row into a line of accumulators (same sums as Pillow's column loop). */
static int vert_generic(const uint8_t *src, ptrdiff_t stride, int w, int row_offset,
                        uint8_t *dst, const coeffs *c) {
    uint32_t *acc = malloc((size_t)w * sizeof(uint32_t));
    if (!acc) {
        return -1;
    }
    for (int yy = 0; yy < c->out; yy++) {
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        int ymin = c->bounds[2 * yy] - row_offset, n = c->bounds[2 * yy + 1];
        for (int xx = 0; xx < w; xx++) {
            acc[xx] = ROUND_HALF;
        }
        for (int y = 0; y < n; y++) {
            const uint8_t *row = src + (ptrdiff_t)(ymin + y) * stride;
            uint32_t ky = (uint32_t)k[y];
            for (int xx = 0; xx < w; xx++) {
                acc[xx] += (uint32_t)row[xx] * ky;
            }
        }
        uint8_t *out = dst + (size_t)yy * w;
        for (int xx = 0; xx < w; xx++) {
            out[xx] = clip8(acc[xx]);
        }
    }
    free(acc);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* AVX2 kernels                                                              */
/* ------------------------------------------------------------------------ */

#ifdef RS_X86

/* Horizontal coefficients laid out for 8-wide loads: output xx reads the
 * npad[xx] (a multiple of 8) input samples from start[xx], all inside the row,
 * with its taps placed at xmin - start and zeros around them.  npad[xx] == 0:
 * the row is too short for that window; the scalar loop does that output. */
typedef struct {
    int kstride;
    int *start;
    int *npad;
    int32_t *k;
} hcoeffs;

static void hcoeffs_free(hcoeffs *h) {
    free(h->start);
    free(h->npad);
    free(h->k);
}

static int hcoeffs_make(hcoeffs *h, const coeffs *c, int in_w) {
    h->kstride = (c->ksize + 7) & ~7;
    h->start = malloc((size_t)c->out * sizeof(int));
    h->npad = malloc((size_t)c->out * sizeof(int));
    h->k = aligned_alloc(32, (size_t)c->out * h->kstride * sizeof(int32_t));
    if (!h->start || !h->npad || !h->k) {
        hcoeffs_free(h);
        return -1;
    }
    memset(h->k, 0, (size_t)c->out * h->kstride * sizeof(int32_t));
    for (int xx = 0; xx < c->out; xx++) {
        int xmin = c->bounds[2 * xx], n = c->bounds[2 * xx + 1];
        int np = (n + 7) & ~7;
        if (n == 0 || np > in_w) {
            h->npad[xx] = 0;
            h->start[xx] = 0;
            continue;
        }
        int start = xmin < in_w - np ? xmin : in_w - np;
        h->start[xx] = start;
        h->npad[xx] = np;
        memcpy(h->k + (size_t)xx * h->kstride + (xmin - start), c->k + (size_t)xx * c->ksize,
               (size_t)n * sizeof(int32_t));
    }
    return 0;
}

__attribute__((target("avx2")))
static inline __m256i load8_u8(const uint8_t *p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

/* 8 int32 sums -> Pillow's rounding and clip8 -> 8 bytes (low half). */
__attribute__((target("avx2")))
static inline __m128i finish8(__m256i s) {
    s = _mm256_srai_epi32(_mm256_add_epi32(s, _mm256_set1_epi32((int)ROUND_HALF)), PRECISION_BITS);
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return _mm_packus_epi16(w, w);
}

/* The weighted taps of output pixel x over four rows, as 8-lane partial sums. */
__attribute__((target("avx2")))
static inline void taps4(const hcoeffs *h, int x, const uint8_t *const r[4], int np, __m256i acc[4]) {
    const int32_t *k = h->k + (size_t)x * h->kstride;
    const int s = h->start[x];
    acc[0] = acc[1] = acc[2] = acc[3] = _mm256_setzero_si256();
    for (int i = 0; i < np; i += 8) {
        __m256i kv = _mm256_load_si256((const __m256i *)(k + i));
        for (int j = 0; j < 4; j++)
            acc[j] = _mm256_add_epi32(acc[j], _mm256_mullo_epi32(load8_u8(r[j] + s + i), kv));
    }
}

/* Four rows at once, two outputs at once: every coefficient vector is loaded
 * once per four rows, and the eight partial-sum vectors are reduced together. */
__attribute__((target("avx2")))
static void horiz_avx2(const uint8_t *src, ptrdiff_t stride, int rows, uint8_t *dst,
                       ptrdiff_t dstride, const coeffs *c, const hcoeffs *h) {
    const int out_w = c->out;
    for (int y = 0; y < rows; y += 4) {
        const uint8_t *r[4];
        uint8_t *o[4];
        int nr = rows - y < 4 ? rows - y : 4;
        for (int i = 0; i < 4; i++) {
            int yy = y + (i < nr ? i : nr - 1);     /* repeat the last row */
            r[i] = src + yy * stride;
            o[i] = dst + yy * dstride;
        }
        for (int xx = 0; xx < out_w; xx += 2) {
            int x1 = xx + 1 < out_w ? xx + 1 : xx;
            int np0 = h->npad[xx], np1 = h->npad[x1];
            if (np0 == 0 || np1 == 0) {
                for (int i = 0; i < nr; i++) {
                    for (int x = xx; x <= x1; x++) {
                        o[i][x] = dot_h(r[i] + c->bounds[2 * x], c->k + (size_t)x * c->ksize,
                                        c->bounds[2 * x + 1]);
                    }
                }
                continue;
            }
            __m256i sa[4], sb[4];
            taps4(h, xx, r, np0, sa);
            taps4(h, x1, r, np1, sb);
            __m256i a0 = sa[0], a1 = sa[1], a2 = sa[2], a3 = sa[3];
            __m256i b0 = sb[0], b1 = sb[1], b2 = sb[2], b3 = sb[3];
            /* Horizontal sums of a0..a3, b0..b3 -> one vector, in that order. */
            __m256i t0 = _mm256_hadd_epi32(a0, a1);
            __m256i t1 = _mm256_hadd_epi32(a2, a3);
            __m256i t2 = _mm256_hadd_epi32(b0, b1);
            __m256i t3 = _mm256_hadd_epi32(b2, b3);
            __m256i u0 = _mm256_hadd_epi32(t0, t1);
            __m256i u1 = _mm256_hadd_epi32(t2, t3);
            __m256i sum = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                                           _mm256_permute2x128_si256(u0, u1, 0x31));
            uint8_t b[16];
            _mm_storeu_si128((__m128i *)b, finish8(sum));
            for (int i = 0; i < 4; i++) {
                o[i][xx] = b[i];
            }
            if (x1 != xx) {
                for (int i = 0; i < 4; i++) {
                    o[i][x1] = b[4 + i];
                }
            }
        }
    }
}

__attribute__((target("avx2")))
static void vert_avx2(const uint8_t *src, ptrdiff_t stride, int w, int row_offset, uint8_t *dst,
                      const coeffs *c) {
    for (int yy = 0; yy < c->out; yy++) {
        const int32_t *k = c->k + (size_t)yy * c->ksize;
        int ymin = c->bounds[2 * yy] - row_offset, n = c->bounds[2 * yy + 1];
        const uint8_t *base = src + (ptrdiff_t)ymin * stride;
        uint8_t *out = dst + (size_t)yy * w;
        int xx = 0;
        for (; xx + 32 <= w; xx += 32) {
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            const uint8_t *p = base + xx;
            for (int y = 0; y < n; y++, p += stride) {
                __m256i kv = _mm256_set1_epi32(k[y]);
                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(load8_u8(p), kv));
                a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(load8_u8(p + 8), kv));
                a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(load8_u8(p + 16), kv));
                a3 = _mm256_add_epi32(a3, _mm256_mullo_epi32(load8_u8(p + 24), kv));
            }
            _mm_storel_epi64((__m128i *)(out + xx), finish8(a0));
            _mm_storel_epi64((__m128i *)(out + xx + 8), finish8(a1));
            _mm_storel_epi64((__m128i *)(out + xx + 16), finish8(a2));
            _mm_storel_epi64((__m128i *)(out + xx + 24), finish8(a3));
        }
        for (; xx + 8 <= w; xx += 8) {
            __m256i a0 = _mm256_setzero_si256();
            const uint8_t *p = base + xx;
            for (int y = 0; y < n; y++, p += stride) {
                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(load8_u8(p), _mm256_set1_epi32(k[y])));
            }
            _mm_storel_epi64((__m128i *)(out + xx), finish8(a0));
        }
        for (; xx < w; xx++) {
            uint32_t ss = ROUND_HALF;
            const uint8_t *p = base + xx;
            for (int y = 0; y < n; y++, p += stride) {
                ss += (uint32_t)*p * (uint32_t)k[y];
            }
            out[xx] = clip8(ss);
        }
    }
}

#endif /* RS_X86 */

/* ------------------------------------------------------------------------ */

int hs_rs_isa_supported(int isa) {
    switch (isa) {
    case HS_RS_GENERIC:
        return 1;
#ifdef RS_X86
    case HS_RS_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
#endif
    default:
        return 0;
    }
}

static int best_isa(void) {
    static int best = -1;
    if (best < 0) {
        best = hs_rs_isa_supported(HS_RS_AVX2) ? HS_RS_AVX2 : HS_RS_GENERIC;
    }
    return best;
}

/* ------------------------------------------------------------------------ */
/* Axes and the two passes                                                   */
/* ------------------------------------------------------------------------ */

struct hs_rs_axis {
    int in_size;
    coeffs c;
#ifdef RS_X86
    hcoeffs h;
#endif
};

hs_rs_axis *hs_rs_axis_new(int in_size, int out_size) {
    if (in_size <= 0 || out_size <= 0) {
        return NULL;
    }
    hs_rs_axis *ax = calloc(1, sizeof(*ax));
    if (!ax) {
        return NULL;
    }
    ax->in_size = in_size;
    if (coeffs_make(&ax->c, in_size, out_size) < 0) {
        free(ax);
        return NULL;
    }
#ifdef RS_X86
    if (hcoeffs_make(&ax->h, &ax->c, in_size) < 0) {
        coeffs_free(&ax->c);
        free(ax);
        return NULL;
    }
#endif
    return ax;
}

void hs_rs_axis_free(hs_rs_axis *ax) {
    if (ax) {
        coeffs_free(&ax->c);
#ifdef RS_X86
        hcoeffs_free(&ax->h);
#endif
        free(ax);
    }
}

size_t hs_rs_axis_bytes(const hs_rs_axis *ax) {
    size_t n = sizeof(*ax) + (size_t)ax->c.out * (2 * sizeof(int) + ax->c.ksize * sizeof(int32_t));
#ifdef RS_X86
    n += (size_t)ax->c.out * (2 * sizeof(int) + ax->h.kstride * sizeof(int32_t));
#endif
    return n;
}

static void horiz_pass(const hs_rs_axis *ax, const uint8_t *src, ptrdiff_t stride, int rows,
                       uint8_t *dst, int isa) {
#ifdef RS_X86
    if (isa == HS_RS_AVX2) {
        horiz_avx2(src, stride, rows, dst, ax->c.out, &ax->c, &ax->h);
        return;
    }
#endif
    (void)isa;
    horiz_generic(src, stride, rows, dst, ax->c.out, &ax->c);
}

/* Rows are read from src[bounds - row_offset]. */
static int vert_pass(const hs_rs_axis *ax, const uint8_t *src, ptrdiff_t stride, int w,
                     int row_offset, uint8_t *dst, int isa) {
#ifdef RS_X86
    if (isa == HS_RS_AVX2) {
        vert_avx2(src, stride, w, row_offset, dst, &ax->c);
        return 0;
    }
#endif
    (void)isa;
    return vert_generic(src, stride, w, row_offset, dst, &ax->c);
}

int hs_rs_lanczos(const uint8_t *src, ptrdiff_t src_stride, int in_w, int in_h,
                  uint8_t *dst, int out_w, int out_h,
                  const hs_rs_axis *ax_w, const hs_rs_axis *ax_h, int vfirst_rule, int isa) {
    if (!src || !dst || in_w <= 0 || in_h <= 0 || out_w <= 0 || out_h <= 0 || src_stride < in_w) {
        return -2;
    }
    if (isa == HS_RS_AUTO) {
        isa = best_isa();
    } else if (!hs_rs_isa_supported(isa)) {
        return -2;
    }
    int need_h = out_w != in_w, need_v = out_h != in_h;
    if ((need_h && (!ax_w || ax_w->in_size != in_w || ax_w->c.out != out_w)) ||
        (need_v && (!ax_h || ax_h->in_size != in_h || ax_h->c.out != out_h))) {
        return -2;
    }
    if (!need_h && !need_v) {           /* Pillow: ImagingCopy */
        for (int y = 0; y < in_h; y++) {
            memcpy(dst + (size_t)y * out_w, src + y * src_stride, (size_t)in_w);
        }
        return 0;
    }
    if (!need_v) {                      /* every row, straight into dst */
        horiz_pass(ax_w, src, src_stride, in_h, dst, isa);
        return 0;
    }
    if (!need_h) {
        return vert_pass(ax_h, src, src_stride, in_w, 0, dst, isa);
    }

    int rc;
    uint8_t *tmp;
    /* Pillow 13 (PR #9549) runs the vertical pass first, over whole rows, when
     * the height shrinks by more than twice as many pixels as the width (rule
     * read from the compiled ImagingResample of the 13.0.0 wheel); older
     * releases always run the horizontal pass first. */
    if (vfirst_rule && in_h > out_h && in_h - out_h > 2 * (in_w - out_w)) {
        tmp = malloc((size_t)in_w * out_h);
        if (!tmp) {
            return -1;
        }
        rc = vert_pass(ax_h, src, src_stride, in_w, 0, tmp, isa);
        if (rc == 0) {
            horiz_pass(ax_w, tmp, in_w, out_h, dst, isa);
        }
    } else {
        /* Horizontal pass over the rows the vertical pass reads. */
        const int *bv = ax_h->c.bounds;
        int ybox_first = bv[0];
        int rows = bv[out_h * 2 - 2] + bv[out_h * 2 - 1] - ybox_first;
        tmp = malloc((size_t)rows * out_w);
        if (!tmp) {
            return -1;
        }
        horiz_pass(ax_w, src + (ptrdiff_t)ybox_first * src_stride, src_stride, rows, tmp, isa);
        rc = vert_pass(ax_h, tmp, out_w, out_w, ybox_first, dst, isa);
    }
    free(tmp);
    return rc;
}

int hs_lanczos_l(const uint8_t *src, ptrdiff_t src_stride, int in_w, int in_h,
                 uint8_t *dst, int out_w, int out_h, int vfirst_rule, int isa) {
    if (in_w <= 0 || in_h <= 0 || out_w <= 0 || out_h <= 0) {
        return -2;
    }
    hs_rs_axis *ax_w = out_w != in_w ? hs_rs_axis_new(in_w, out_w) : NULL;
    hs_rs_axis *ax_h = out_h != in_h ? hs_rs_axis_new(in_h, out_h) : NULL;
    int rc = -1;
    if ((out_w == in_w || ax_w) && (out_h == in_h || ax_h)) {
        rc = hs_rs_lanczos(src, src_stride, in_w, in_h, dst, out_w, out_h, ax_w, ax_h,
                           vfirst_rule, isa);
    }
    hs_rs_axis_free(ax_w);
    hs_rs_axis_free(ax_h);
    return rc;
}
