/* PDQ hashing, bit-identical to the reference (see pdq.h).
 *
 * The reference blurs the whole image in float with two rounds of a box
 * filter along rows then along columns (a Jarosz tent filter) and then reads
 * 64x64 samples.  Each box filter is a running sum (add the entering value,
 * subtract the leaving one, divide by the window's count), so a sample's
 * value depends on every earlier value of its row or column, rounding
 * included.  We do the same float operations in the same order, but
 *   - stream the image in groups of rows, so the first column pass reads its
 *     input from a small ring of rows in cache instead of a full-size buffer;
 *   - run the running sums of GROUP rows side by side (the sums are serial
 *     within a row; independent rows hide the add latency), and do the column
 *     passes across all columns at once (vectorised);
 *   - divide only where an output is read: the second row pass only at the 64
 *     sampled columns, the second column pass only at the 64 sampled rows and
 *     only over those 64 columns.
 * No fused multiply-adds and no reassociation: build with -ffp-contract=off
 * and without -ffast-math.
 */
#include "pdq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HS_PDQ_X86 1
#include <immintrin.h>
#else
#define HS_PDQ_X86 0
#endif

#define GROUP 4          /* rows whose running sums run side by side */
#define MIN_DIM 5        /* smaller images hash to zero, quality 0 */

static float dct_matrix[16 * 64];
/* v * 0.299, v * 0.587, v * 0.114 in double for every byte v: the luma's
 * products, looked up by the portable kernel. */
static double luma_r[256], luma_g[256], luma_b[256];

void pdq_init(void)
{
#if HS_PDQ_X86
    __builtin_cpu_init();
#endif
    const double pi = 3.14159265358979323846;
    const float scale = (float)sqrt(2.0 / 64.0);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 64; j++)
            dct_matrix[i * 64 + j] =
                (float)(scale * cos((pi / 2.0 / 64.0) * (double)(i + 1) * (double)(2 * j + 1)));
    for (int v = 0; v < 256; v++) {
        luma_r[v] = v * 0.299;
        luma_g[v] = v * 0.587;
        luma_b[v] = v * 0.114;
    }
}

static int have_avx2(void)
{
#if HS_PDQ_X86
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* The box filter's window along a dimension: ceil(dim / 128). */
static int window_for(int dim) { return (dim + 127) / 128; }

/* A running box sum over n values with window w runs n + half - 1 steps; at
 * step t it adds value t (t < n), subtracts value t - w (t >= w) and, from
 * t = half - 1 on, outputs position t - half + 1.  The count divided by is the
 * number of values in the window at that step. */
static int half_for(int w) { return (w + 2) / 2; }
static float count_at(int out, int n, int w)
{
    int t = out + half_for(w) - 1;
    int added = t + 1 < n ? t + 1 : n;
    int removed = t - w + 1 > 0 ? t - w + 1 : 0;
    return (float)(added - removed);
}

/* Luma of one row, as pdqhash computes it: R*0.299 + G*0.587 + B*0.114 in
 * double (the products from the tables), rounded to float. */
static void luma_row_generic(const uint8_t *px, int cols, int channels, float *out, int from)
{
    for (int j = from; j < cols; j++) {
        const uint8_t *p = px + (size_t)j * channels;
        out[j] = channels == 1 ? (float)(luma_r[p[0]] + luma_g[p[0]] + luma_b[p[0]])
                               : (float)(luma_r[p[0]] + luma_g[p[1]] + luma_b[p[2]]);
    }
}

#if HS_PDQ_X86
/* 8 luma values from 8 R, G and B values (int32 lanes), in the same double
 * operations (separate multiplies and adds: no FMA in this target). */
__attribute__((target("avx2"))) static inline __m256
luma8_avx2(__m256i r, __m256i g, __m256i b)
{
    const __m256d kr = _mm256_set1_pd(0.299), kg = _mm256_set1_pd(0.587), kb = _mm256_set1_pd(0.114);
    __m128 half[2];
    for (int h = 0; h < 2; h++) {
        __m128i r4 = h ? _mm256_extracti128_si256(r, 1) : _mm256_castsi256_si128(r);
        __m128i g4 = h ? _mm256_extracti128_si256(g, 1) : _mm256_castsi256_si128(g);
        __m128i b4 = h ? _mm256_extracti128_si256(b, 1) : _mm256_castsi256_si128(b);
        __m256d y = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(r4), kr),
                                                _mm256_mul_pd(_mm256_cvtepi32_pd(g4), kg)),
                                  _mm256_mul_pd(_mm256_cvtepi32_pd(b4), kb));
        half[h] = _mm256_cvtpd_ps(y);
    }
    return _mm256_set_m128(half[1], half[0]);
}

__attribute__((target("avx2"))) static void
luma_row_avx2(const uint8_t *px, int cols, int channels, float *out)
{
    int j = 0;
    if (channels == 3) {
        /* Bytes 0..15 and 16..23 of 8 pixels; pick each channel's 8 bytes. */
        const __m128i r_lo = _mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m128i r_hi = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 2, 5, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m128i g_lo = _mm_setr_epi8(1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m128i g_hi = _mm_setr_epi8(-1, -1, -1, -1, -1, 0, 3, 6, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m128i b_lo = _mm_setr_epi8(2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
        const __m128i b_hi = _mm_setr_epi8(-1, -1, -1, -1, -1, 1, 4, 7, -1, -1, -1, -1, -1, -1, -1, -1);
        for (; j + 8 <= cols; j += 8) {
            const uint8_t *p = px + 3 * (size_t)j;
            __m128i lo = _mm_loadu_si128((const __m128i *)p);
            __m128i hi = _mm_loadl_epi64((const __m128i *)(p + 16));
            __m256i r = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(lo, r_lo), _mm_shuffle_epi8(hi, r_hi)));
            __m256i g = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(lo, g_lo), _mm_shuffle_epi8(hi, g_hi)));
            __m256i b = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(lo, b_lo), _mm_shuffle_epi8(hi, b_hi)));
            _mm256_storeu_ps(out + j, luma8_avx2(r, g, b));
        }
    } else if (channels == 4) {
        const __m256i byte = _mm256_set1_epi32(0xff);
        for (; j + 8 <= cols; j += 8) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(px + 4 * (size_t)j));
            _mm256_storeu_ps(out + j, luma8_avx2(_mm256_and_si256(x, byte),
                                                 _mm256_and_si256(_mm256_srli_epi32(x, 8), byte),
                                                 _mm256_and_si256(_mm256_srli_epi32(x, 16), byte)));
        }
    } else if (channels == 1) {
        for (; j + 8 <= cols; j += 8) {
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(px + j)));
            _mm256_storeu_ps(out + j, luma8_avx2(v, v, v));
        }
    }
    luma_row_generic(px, cols, channels, out, j);
}
#endif

static void luma_row(const uint8_t *px, int cols, int channels, float *out, int avx2)
{
#if HS_PDQ_X86
    if (avx2) {
        luma_row_avx2(px, cols, channels, out);
        return;
    }
#endif
    (void)avx2;
    luma_row_generic(px, cols, channels, out, 0);
}

/* Raw running sums (not yet divided) of k rows of n values, window w:
 * sums[r][pos] for every output position.  Written for a constant k so the
 * k independent chains interleave. */
static inline __attribute__((always_inline)) void
row_sums_k(const float *const *in, float *const *sums, int k, int n, int w)
{
    int half = half_for(w);
    float s[GROUP] = {0};
    int t = 0;
    for (; t < half - 1; t++)
        for (int r = 0; r < k; r++) s[r] += in[r][t];
    for (; t < w; t++)
        for (int r = 0; r < k; r++) { s[r] += in[r][t]; sums[r][t - half + 1] = s[r]; }
    for (; t < n; t++)
        for (int r = 0; r < k; r++) {
            s[r] += in[r][t];
            s[r] -= in[r][t - w];
            sums[r][t - half + 1] = s[r];
        }
    for (; t < n + half - 1; t++)
        for (int r = 0; r < k; r++) { s[r] -= in[r][t - w]; sums[r][t - half + 1] = s[r]; }
}

static void row_sums(const float *const *in, float *const *sums, int k, int n, int w)
{
    if (k == GROUP) {
        row_sums_k(in, sums, GROUP, n, w);
    } else {
        for (int r = 0; r < k; r++) row_sums_k(in + r, sums + r, 1, n, w);
    }
}

/* One step of a running box sum down columns, all n columns at once: add a
 * row and/or subtract one (NULL = none), then, if out, write sum / count. */
static inline __attribute__((always_inline)) void
column_step_body(float *sum, const float *add, const float *sub, float *out, float count, int n)
{
    for (int j = 0; j < n; j++) {
        float v = sum[j];
        if (add) v += add[j];
        if (sub) v -= sub[j];
        sum[j] = v;
        if (out) out[j] = v / count;
    }
}

/* x[j] /= count[j]. */
static inline __attribute__((always_inline)) void
divide_body(float *x, const float *count, int n)
{
    for (int j = 0; j < n; j++) x[j] = x[j] / count[j];
}

static void column_step_generic(float *sum, const float *add, const float *sub, float *out,
                                float count, int n)
{
    column_step_body(sum, add, sub, out, count, n);
}

static void divide_generic(float *x, const float *count, int n) { divide_body(x, count, n); }

#if HS_PDQ_X86
/* The same loops compiled for AVX2 (no FMA: each operation rounds alone). */
__attribute__((target("avx2"))) static void
column_step_avx2(float *sum, const float *add, const float *sub, float *out, float count, int n)
{
    column_step_body(sum, add, sub, out, count, n);
}

__attribute__((target("avx2"))) static void divide_avx2(float *x, const float *count, int n)
{
    divide_body(x, count, n);
}
#endif

static void column_step(int avx2, float *sum, const float *add, const float *sub, float *out,
                        float count, int n)
{
#if HS_PDQ_X86
    if (avx2) {
        column_step_avx2(sum, add, sub, out, count, n);
        return;
    }
#endif
    column_step_generic(sum, add, sub, out, count, n);
}

static void divide(int avx2, float *x, const float *count, int n)
{
#if HS_PDQ_X86
    if (avx2) {
        divide_avx2(x, count, n);
        return;
    }
#endif
    divide_generic(x, count, n);
}

/* Scratch for one image; freed by free_scratch. */
typedef struct {
    float *ring;     /* rows of the first row pass: (ring_rows) x cols */
    float *luma;     /* GROUP rows of luma */
    float *stage;    /* GROUP rows of the first column pass's output */
    float *sums;     /* GROUP rows of the second row pass's raw sums */
    float *colsum;   /* cols running column sums */
    float *row_count;/* cols counts of the row pass */
    float *picked;   /* rows x 64: second row pass at the sampled columns */
} scratch;

static void free_scratch(scratch *s)
{
    free(s->ring); free(s->luma); free(s->stage); free(s->sums);
    free(s->colsum); free(s->row_count); free(s->picked);
}

/* Blur and decimate to 64x64, bit-identical to the reference's
 * jaroszFilterFloat (2 rounds) followed by decimateFloat. */
static int blur_and_sample(const uint8_t *pixels, int rows, int cols, int channels,
                           float out[64 * 64], int avx2)
{
    const int wr = window_for(cols), wc = window_for(rows);
    const int hc = half_for(wc);
    const int ring_rows = wc + GROUP + 1;
    int sample_col[64], sample_row[64];
    for (int k = 0; k < 64; k++) {
        sample_col[k] = (int)(((k + 0.5) * cols) / 64);
        sample_row[k] = (int)(((k + 0.5) * rows) / 64);
    }
    scratch s = {0};
    /* Row stride of the scratch rows: padded by a cache line so the rows that
     * run side by side never share cache sets (a 2048-px width would). */
    size_t stride = ((size_t)cols + 15) / 16 * 16 + 16;
    s.ring = malloc(sizeof(float) * stride * ring_rows);
    s.luma = malloc(sizeof(float) * stride * GROUP);
    s.stage = malloc(sizeof(float) * stride * GROUP);
    s.sums = malloc(sizeof(float) * stride * GROUP);
    s.colsum = calloc((size_t)cols, sizeof(float));
    s.row_count = malloc(sizeof(float) * (size_t)cols);
    s.picked = malloc(sizeof(float) * 64 * (size_t)rows);
    if (!s.ring || !s.luma || !s.stage || !s.sums || !s.colsum || !s.row_count || !s.picked) {
        free_scratch(&s);
        return -1;
    }
    for (int j = 0; j < cols; j++) s.row_count[j] = count_at(j, cols, wr);

    const float *in[GROUP];
    float *dst[GROUP];
    int produced = 0, staged = 0;
    /* Pass 1 (rows) streams into the ring; pass 2 (columns) steps over it and
     * emits rows into `stage`; each full stage goes through pass 3 (rows). */
    for (int t = 0; t < rows + hc - 1; t++) {
        if (t < rows && t == produced) {
            int k = rows - produced < GROUP ? rows - produced : GROUP;
            for (int r = 0; r < k; r++) {
                luma_row(pixels + (size_t)(produced + r) * cols * channels, cols, channels,
                         s.luma + r * stride, avx2);
                in[r] = s.luma + r * stride;
                dst[r] = s.ring + (size_t)((produced + r) % ring_rows) * stride;
            }
            row_sums(in, dst, k, cols, wr);
            for (int r = 0; r < k; r++) divide(avx2, dst[r], s.row_count, cols);
            produced += k;
        }
        int oi = t - hc + 1;
        column_step(avx2, s.colsum, t < rows ? s.ring + (size_t)(t % ring_rows) * stride : NULL,
                    t >= wc ? s.ring + (size_t)((t - wc) % ring_rows) * stride : NULL,
                    oi >= 0 ? s.stage + staged * stride : NULL, oi >= 0 ? count_at(oi, rows, wc) : 1.0f,
                    cols);
        if (oi < 0) continue;
        staged++;
        if (staged == GROUP || oi == rows - 1) {
            for (int r = 0; r < staged; r++) { in[r] = s.stage + r * stride; dst[r] = s.sums + r * stride; }
            row_sums(in, dst, staged, cols, wr);
            for (int r = 0; r < staged; r++) {
                float *p = s.picked + (size_t)(oi - staged + 1 + r) * 64;
                for (int k = 0; k < 64; k++)
                    p[k] = dst[r][sample_col[k]] / s.row_count[sample_col[k]];
            }
            staged = 0;
        }
    }
    /* Pass 4 (columns) over the 64 sampled columns, read at the sampled rows. */
    float sum[64] = {0};
    int next = 0;
    for (int t = 0; t < rows + hc - 1 && next < 64; t++) {
        column_step(avx2, sum, t < rows ? s.picked + (size_t)t * 64 : NULL,
                    t >= wc ? s.picked + (size_t)(t - wc) * 64 : NULL, NULL, 1.0f, 64);
        if (t < hc - 1) continue;
        int oi = t - hc + 1;
        if (sample_row[next] != oi) continue;
        float count = count_at(oi, rows, wc);
        for (; next < 64 && sample_row[next] == oi; next++)
            for (int k = 0; k < 64; k++) out[next * 64 + k] = sum[k] / count;
    }
    free_scratch(&s);
    return 0;
}

/* The reference's quality: quantised gradients summed over neighbour pairs. */
static int quality_of(const float a[64 * 64])
{
    int total = 0;
    for (int i = 0; i < 63; i++)
        for (int j = 0; j < 64; j++) {
            int d = (int)(((a[i * 64 + j] - a[(i + 1) * 64 + j]) * 100.0f) / 255.0f);
            total += abs(d);
        }
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 63; j++) {
            int d = (int)(((a[i * 64 + j] - a[i * 64 + j + 1]) * 100.0f) / 255.0f);
            total += abs(d);
        }
    int q = total / 90;
    return q > 100 ? 100 : q;
}

/* B = D A D^T for the 16 lowest non-DC frequencies, summing in the
 * reference's order (k ascending, from 0). */
static void dct_16(const float a[64 * 64], float b[256])
{
    float t[16 * 64];
    for (int i = 0; i < 16; i++) {
        const float *d = dct_matrix + i * 64;
        float acc[64] = {0};
        for (int k = 0; k < 64; k++)
            for (int j = 0; j < 64; j++) acc[j] += d[k] * a[k * 64 + j];
        memcpy(t + i * 64, acc, sizeof acc);
    }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            const float *d = dct_matrix + j * 64, *r = t + i * 64;
            float acc = 0.0f;
            for (int k = 0; k < 64; k++) acc += r[k] * d[k];
            b[i * 16 + j] = acc;
        }
}

int pdq_coefficients(const uint8_t *pixels, int rows, int cols, int channels,
                     int filter_64, int use_avx2, float coeffs[256], int *quality)
{
    if (rows < MIN_DIM || cols < MIN_DIM) {
        memset(coeffs, 0, 256 * sizeof(float));
        *quality = 0;
        return 0;
    }
    float a[64 * 64];
    int avx2 = use_avx2 && have_avx2();
    if (rows == 64 && cols == 64 && !filter_64) {
        for (int i = 0; i < 64; i++)
            luma_row(pixels + (size_t)i * 64 * channels, 64, channels, a + i * 64, avx2);
    } else if (blur_and_sample(pixels, rows, cols, channels, a, avx2) != 0) {
        return -1;
    }
    *quality = quality_of(a);
    dct_16(a, coeffs);
    return 0;
}

/* Median by Torben Mogensen's method (no copy, no reordering): bisect on
 * value, counting the values below and above the guess. */
static float median_of(const float *m, int n)
{
    float lo = m[0], hi = m[0];
    for (int i = 1; i < n; i++) {
        if (m[i] < lo) lo = m[i];
        if (m[i] > hi) hi = m[i];
    }
    int below, above, equal;
    float guess, max_below, min_above;
    for (;;) {
        guess = (lo + hi) / 2;
        below = above = equal = 0;
        max_below = lo;
        min_above = hi;
        for (int i = 0; i < n; i++) {
            if (m[i] < guess) {
                below++;
                if (m[i] > max_below) max_below = m[i];
            } else if (m[i] > guess) {
                above++;
                if (m[i] < min_above) min_above = m[i];
            } else {
                equal++;
            }
        }
        if (below <= (n + 1) / 2 && above <= (n + 1) / 2) break;
        if (below > above) hi = max_below;
        else lo = min_above;
    }
    if (below >= (n + 1) / 2) return max_below;
    if (below + equal >= (n + 1) / 2) return guess;
    return min_above;
}

void pdq_bits(const float coeffs[256], uint8_t out[32])
{
    float median = median_of(coeffs, 256);
    memset(out, 0, 32);
    for (int k = 0; k < 256; k++)
        if (coeffs[k] > median) out[31 - k / 8] |= (uint8_t)(1u << (k & 7));
}

/* Rotating or flipping the image changes a DCT coefficient (i, j) only in
 * sign, (-1)^i or (-1)^j, and for the transposing ones moves it to (j, i).
 * Per variant: transpose?, negate when i is even?, when j is even?, when
 * i + j is odd?  (The reference's table, in pdqhash's order.) */
static const struct { int transpose, even_i, even_j, odd_sum; } dihedral[8] = {
    {0, 0, 0, 0},  /* original */
    {1, 0, 1, 0},  /* rotate 90 */
    {0, 0, 0, 1},  /* rotate 180 */
    {1, 1, 0, 0},  /* rotate 270 */
    {0, 1, 0, 0},  /* flip x */
    {0, 0, 1, 0},  /* flip y */
    {1, 0, 0, 0},  /* flip about the main diagonal */
    {1, 0, 0, 1},  /* flip about the other diagonal */
};

void pdq_dihedral_bits(const float coeffs[256], uint8_t out[8 * 32])
{
    for (int v = 0; v < 8; v++) {
        float b[256];
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                int negate = (dihedral[v].even_i && !(i & 1)) || (dihedral[v].even_j && !(j & 1))
                             || (dihedral[v].odd_sum && ((i + j) & 1));
                float x = negate ? -coeffs[i * 16 + j] : coeffs[i * 16 + j];
                b[dihedral[v].transpose ? j * 16 + i : i * 16 + j] = x;
            }
        pdq_bits(b, out + 32 * v);
    }
}
