/* Search kernels, compiled once per instruction set by mih.c.
 *
 * mih.c defines HS_FN(name) to give each copy its own suffix and one of
 * HS_USE_AVX512 / HS_USE_AVX2 to pick the popcounts of match8() and
 * match8_fp(); the rest of the code is identical in every copy so the
 * compiler can inline them into the loops. No include guard on purpose. */

#if defined(HS_USE_AVX2)
/* Per-byte popcounts: Mula's nibble lookup. */
static inline __m256i HS_FN(popcnt_bytes)(__m256i x)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
}
#endif

/* Bit j of the result is set when popcount(p[j] ^ q) <= r, for j < 8. */
static inline uint32_t HS_FN(match8)(const uint64_t *p, uint64_t q, int r)
{
#if defined(HS_USE_AVX512)
    __m512i x = _mm512_xor_si512(_mm512_loadu_si512((const void *)p), _mm512_set1_epi64((long long)q));
    return (uint32_t)_mm512_cmple_epu64_mask(_mm512_popcnt_epi64(x), _mm512_set1_epi64(r));
#elif defined(HS_USE_AVX2)
    /* Byte popcounts folded per 64-bit lane by SAD. */
    const __m256i qq = _mm256_set1_epi64x((long long)q);
    const __m256i rr = _mm256_set1_epi64x(r);
    uint32_t mask = 0;
    for (int h = 0; h < 2; h++) {
        __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 4 * h)), qq);
        __m256i cnt = HS_FN(popcnt_bytes)(x);
        __m256i gt = _mm256_cmpgt_epi64(_mm256_sad_epu8(cnt, _mm256_setzero_si256()), rr);
        mask |= (uint32_t)(~_mm256_movemask_pd(_mm256_castsi256_pd(gt)) & 0xf) << (4 * h);
    }
    return mask;
#else
    uint32_t mask = 0;
    for (int j = 0; j < 8; j++)
        mask |= (uint32_t)(__builtin_popcountll(p[j] ^ q) <= r) << j;
    return mask;
#endif
}

/* The same for 32-bit fingerprints: bit j set when popcount(p[j] ^ q) <= r. */
static inline uint32_t HS_FN(match8_fp)(const uint32_t *p, uint32_t q, int r)
{
#if defined(HS_USE_AVX512)
    __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi32((int)q));
    return (uint32_t)_mm256_cmple_epu32_mask(_mm256_popcnt_epi32(x), _mm256_set1_epi32(r));
#elif defined(HS_USE_AVX2)
    __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi32((int)q));
    __m256i cnt = HS_FN(popcnt_bytes)(x);
    /* bytes -> 16-bit pair sums -> 32-bit lane sums */
    __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(cnt, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
    __m256i gt = _mm256_cmpgt_epi32(sums, _mm256_set1_epi32(r));
    return (uint32_t)(~_mm256_movemask_ps(_mm256_castsi256_ps(gt)) & 0xff);
#else
    uint32_t mask = 0;
    for (int j = 0; j < 8; j++)
        mask |= (uint32_t)(__builtin_popcount(p[j] ^ q) <= r) << j;
    return mask;
#endif
}

/* Runs ON_MATCH with `j` set for every j in [lo, hi) where the distance of
 * code j (W words at codes + W * j) to q is <= r, 8 codes at a time with
 * MATCH8, the tail with DIST. r is re-read per block, so a shrinking k-NN
 * threshold takes effect during the scan. */
#define HS_SCAN_W(W, MATCH8, DIST, codes, lo, hi, q, r, ON_MATCH)              \
    do {                                                                        \
        uint64_t j_ = (lo), e_ = (hi);                                          \
        for (; j_ + 8 <= e_; j_ += 8) {                                         \
            uint32_t m_ = MATCH8((codes) + (W) * j_, (q), (r));                 \
            while (m_) {                                                        \
                uint64_t j = j_ + (uint64_t)__builtin_ctz(m_);                  \
                m_ &= m_ - 1;                                                   \
                ON_MATCH;                                                       \
            }                                                                   \
        }                                                                       \
        for (; j_ < e_; j_++) {                                                 \
            if (DIST((codes) + (W) * j_, (q)) <= (r)) {                         \
                uint64_t j = j_;                                                \
                ON_MATCH;                                                       \
            }                                                                   \
        }                                                                       \
    } while (0)

static inline int HS_FN(dist1)(const uint64_t *p, uint64_t q) { return __builtin_popcountll(*p ^ q); }

/* 64-bit codes. */
#define HS_SCAN(codes, lo, hi, q, r, ON_MATCH) \
    HS_SCAN_W(1, HS_FN(match8), HS_FN(dist1), codes, lo, hi, q, r, ON_MATCH)

/* Verifies bucket slots [a, b) of table k for a probe at substring distance
 * tp: the 32-bit fingerprints filter first (distance >= tp + fingerprint
 * distance), and only survivors read their full code. ON_HIT runs with the
 * group g, the code's XOR with q in x and its distance d. */
#define HS_VERIFY(s, k, a, b, q, qfp, tp, r, ON_HIT)                                        \
    do {                                                                                    \
        const uint32_t *fp_ = (s)->fps[k];                                                  \
        const uint32_t *tg_ = (s)->table_groups[k];                                         \
        int rr_ = (r) - (tp);                                                               \
        /* Blocks of 8, the last one masked (buckets are short: one loop, no scalar       \
         * tail). A block may read past the bucket, never past the array. */               \
        for (uint64_t j_ = (a), e_ = (b); rr_ >= 0 && j_ < e_; j_ += 8) {                    \
            const uint64_t left_ = e_ - j_;                                                 \
            uint32_t m_;                                                                    \
            if (j_ + 8 <= (s)->n_unique) {                                                  \
                m_ = HS_FN(match8_fp)(fp_ + j_, (qfp), rr_);                                \
                m_ &= left_ >= 8 ? 0xffu : (1u << left_) - 1u;                              \
            } else {                                                                        \
                m_ = 0;                                                                     \
                for (uint64_t t_ = 0; t_ < left_ && t_ < 8; t_++)                           \
                    m_ |= (uint32_t)(__builtin_popcount(fp_[j_ + t_] ^ (qfp)) <= rr_) << t_; \
            }                                                                               \
            while (m_) {                                                                    \
                uint64_t j = j_ + (uint64_t)__builtin_ctz(m_);                              \
                m_ &= m_ - 1;                                                               \
                uint64_t g = (k) ? tg_[j] : j;                                              \
                /* g is in range unless a damaged file was opened without verify() */      \
                uint64_t x = g < (s)->n_unique ? (s)->codes[g] ^ (q) : ~0ull;               \
                int d = __builtin_popcountll(x);                                            \
                if (d <= (r) && g < (s)->n_unique) { ON_HIT; }                              \
            }                                                                               \
        }                                                                                   \
    } while (0)

/* Runs the probes P[0, n) of queries qs (radius r, per-table radii t) through
 * one software pipeline, so offsets and buckets of HS_PF probes are in flight
 * at once, across table and query boundaries. Adds the bucket entries read to
 * *candidates; returns 0 once they exceed max_candidates (the caller then
 * scans), else 1. */
static int HS_FN(mih_probes)(const hs_segment *s, int segno, const uint64_t *qs, int nq, int r, const int *t,
                             const hs_probe *P, size_t n, hs_scratch *w, hs_stats *st, uint64_t max_candidates,
                             uint64_t *candidates)
{
    uint32_t qfp[HS_GROUP][HS_MAX_TABLES];
    for (int slot = 0; slot < nq; slot++)
        for (int k = 0; k < s->m; k++)
            qfp[slot][k] = fingerprint(qs[slot], s->shift[k], s->bits[k]);
    uint64_t cand = 0;
    uint32_t lo[HS_RING], hi[HS_RING];
    for (size_t i = 0; i < n + HS_PF; i++) {
        if (i >= HS_PF) {
            const size_t p = i - HS_PF;
            const int k = P[p].table, slot = P[p].slot;
            const uint64_t q = qs[slot];
            const uint32_t a = lo[p % HS_RING], b = hi[p % HS_RING];
            st[slot].candidates += b - a;
            /* Skewed data (a dense cluster near the query in some table): past
             * the budget a scan is cheaper, so give up on the tables. */
            cand += b - a;
            if (cand > max_candidates) {
                *candidates += cand;
                return 0;
            }
            HS_VERIFY(s, k, a, b, q, qfp[slot][k], P[p].ring, r, {
                /* Report each code from the first table that qualifies it. */
                int dup = 0;
                for (int kk = 0; kk < k && !dup; kk++)
                    dup = t[kk] >= 0 && __builtin_popcountll((x >> s->shift[kk]) & sub_mask(s->bits[kk])) <= t[kk];
                if (!dup)
                    push_hit(w, segno, g, d, slot);
            });
        }
        if (i < n)
            __builtin_prefetch(s->offsets[P[i].table] + P[i].key);
        if (i >= HS_PF / 2 && i - HS_PF / 2 < n) {
            const size_t p = i - HS_PF / 2;
            const uint32_t *off = s->offsets[P[p].table];
            const uint32_t *fp = s->fps[P[p].table];
            const uint32_t a = off[P[p].key], b = off[P[p].key + 1];
            lo[p % HS_RING] = a;
            hi[p % HS_RING] = b;
            /* Every cache line the bucket touches, up to HS_PF_LINES: stepping
             * from fp + a by 16 would miss the tail line of an unaligned bucket. */
            const char *line = (const char *)((uintptr_t)(fp + a) & ~(uintptr_t)63);
            for (int l = 0; l < HS_PF_LINES && line < (const char *)(fp + b); l++, line += 64)
                __builtin_prefetch(line);
        }
    }
    *candidates += cand;
    return 1;
}

static inline int HS_FN(dist4)(const uint64_t *c, const uint64_t *q)
{
    return __builtin_popcountll(c[0] ^ q[0]) + __builtin_popcountll(c[1] ^ q[1]) +
           __builtin_popcountll(c[2] ^ q[2]) + __builtin_popcountll(c[3] ^ q[3]);
}

/* Distance between the query's and a code's keys in 256-bit table k, from
 * their XOR x: the bits of x under the table's mask. */
static inline int HS_FN(key_dist4)(const hs_segment *s, int k, const uint64_t *x)
{
    const uint64_t *g = s->gather[k];
    return __builtin_popcountll(x[0] & g[0]) + __builtin_popcountll(x[1] & g[1]) +
           __builtin_popcountll(x[2] & g[2]) + __builtin_popcountll(x[3] & g[3]);
}

/* Incremental k-NN over codes of W words: probe ring t (substring distance
 * exactly t) of every table, then every code within m*(t+1)-1 has been seen
 * (pigeonhole). Stops when the k-th live entry is certified. Returns 1 when
 * done, 0 when the planner says a scan is cheaper from here (the caller then
 * scans). W is a constant where this is inlined. */
static inline __attribute__((always_inline)) int HS_FN(mih_knn_w)(const hs_segment *s, int segno, const uint64_t *q,
                                                                  uint64_t k, hs_scratch *w, hs_stats *st,
                                                                  double budget_ns, const int W)
{
    knn_state ks;
    knn_init(&ks, k, 64 * W);
    double spent = 0;   /* estimated cost of the rings so far, corrected by real candidate counts */
    uint64_t candidates = 0;
    int done = 0;
    int max_t = HS_MAX_RING;
    for (int tb = 0; tb < s->m; tb++)
        if (s->bits[tb] < max_t) max_t = s->bits[tb];
    for (int t = 0; t <= max_t; t++) {
        double ring_cost = 0;
        for (int tb = 0; tb < s->m; tb++)
            ring_cost += probe_cost_ns(s, tb, s->ring_start[tb][t + 1] - s->ring_start[tb][t]);
        if (spent + ring_cost > budget_ns)
            break;
        for (int tb = 0; tb < s->m; tb++) {
            const uint32_t qk = hs_code_key(q, W, s->shift[tb], s->bits[tb], s->gather[tb]);
            const uint32_t qfp = W == 1 ? fingerprint(q[0], s->shift[tb], s->bits[tb]) : 0;
            const uint32_t *off = s->offsets[tb];
            const uint32_t *tg = s->table_groups[tb];
            const uint32_t *mk = s->masks[tb];
            const uint32_t first = s->ring_start[tb][t], last = s->ring_start[tb][t + 1];
            for (uint32_t i = first; i < last; i++) {
                if (i + HS_PF < last)
                    __builtin_prefetch(off + (qk ^ mk[i + HS_PF]));
                const uint32_t key = qk ^ mk[i], a = off[key], b = off[key + 1];
                candidates += b - a;
                if (W == 1) {
                    HS_VERIFY(s, tb, a, b, q[0], qfp, t, ks.tau, {
                        /* First seen at ring t in table tb: no table is nearer than t,
                         * and no earlier table is at t. */
                        int dup = 0;
                        for (int kk = 0; kk < s->m && !dup; kk++) {
                            if (kk == tb) continue;
                            int dk = __builtin_popcountll((x >> s->shift[kk]) & sub_mask(s->bits[kk]));
                            dup = dk < t || (kk < tb && dk == t);
                        }
                        if (!dup) knn_add(&ks, w, s, segno, g, d);
                    });
                    continue;
                }
                for (uint32_t j = a; j < b && t <= ks.tau; j++) {
                    const uint64_t g = tg[j];
                    if (g >= s->n_unique)       /* a damaged file opened without verify() */
                        continue;
                    const uint64_t *c = s->codes + 4 * g;
                    const uint64_t x[4] = {c[0] ^ q[0], c[1] ^ q[1], c[2] ^ q[2], c[3] ^ q[3]};
                    const int d = HS_FN(dist4)(c, q);
                    if (d > ks.tau)
                        continue;
                    int dup = 0;   /* as above */
                    for (int kk = 0; kk < s->m && !dup; kk++) {
                        if (kk == tb) continue;
                        int dk = HS_FN(key_dist4)(s, kk, x);
                        dup = dk < t || (kk < tb && dk == t);
                    }
                    if (!dup) knn_add(&ks, w, s, segno, g, d);
                }
            }
            st->probes += last - first;
        }
        /* Skewed data: buckets larger than the average cost more than estimated. */
        double real = (double)candidates * (W == 1 ? HS_CAND_NS : HS_CAND_NS4);
        spent += ring_cost;
        if (real > spent)
            spent = real;
        if (ks.tau <= s->m * (t + 1) - 1) {
            done = 1;
            break;
        }
    }
    st->candidates += candidates;
    return done;
}

static int HS_FN(mih_knn)(const hs_segment *s, int segno, const uint64_t *q, uint64_t k, hs_scratch *w,
                          hs_stats *st, double budget_ns)
{
    return s->words == 1 ? HS_FN(mih_knn_w)(s, segno, q, k, w, st, budget_ns, 1)
                         : HS_FN(mih_knn_w)(s, segno, q, k, w, st, budget_ns, 4);
}

/* Scans codes [lo, hi) for nq queries. Several queries go over the codes in
 * L1-sized tiles, so memory is read once per tile, not once per query. */
static void HS_FN(brute_range)(const hs_segment *s, int segno, const uint64_t *qs, int nq, int r, uint64_t lo,
                               uint64_t hi, hs_scratch *w, hs_stats *st)
{
    const uint64_t *codes = s->codes;
    for (uint64_t b0 = lo; b0 < hi; b0 += HS_TILE) {
        uint64_t b1 = b0 + HS_TILE < hi ? b0 + HS_TILE : hi;
        for (int slot = 0; slot < nq; slot++) {
            const uint64_t q = qs[slot];
            HS_SCAN(codes, b0, b1, q, r, push_hit(w, segno, j, __builtin_popcountll(codes[j] ^ q), slot));
        }
    }
    for (int slot = 0; slot < nq; slot++)
        st[slot].scanned += hi - lo;
}

static void HS_FN(brute_knn)(const hs_segment *s, int segno, uint64_t q, uint64_t k, uint64_t lo, uint64_t hi,
                             hs_scratch *w, hs_stats *st)
{
    const uint64_t *codes = s->codes;
    knn_state ks;
    knn_init(&ks, k, 64);
    HS_SCAN(codes, lo, hi, q, ks.tau, knn_add(&ks, w, s, segno, j, __builtin_popcountll(codes[j] ^ q)));
    st->scanned += hi - lo;
}

/* ---- 256-bit codes: 4 words a code ---- */

#if defined(HS_USE_AVX512) || defined(HS_USE_AVX2)
/* Four 16-bit distances packed in one word (code j in bits 16j..16j+15) to a
 * 4-bit mask of those <= r. */
static inline uint32_t HS_FN(packed_le)(uint64_t packed, int r)
{
    uint32_t mask = 0;
    for (int j = 0; j < 4; j++)
        mask |= (uint32_t)((int)((packed >> (16 * j)) & 0xffff) <= r) << j;
    return mask;
}
#endif

/* Bit j of the result is set when the 256-bit code p[4j .. 4j+4) is within r
 * of q, for j < 8. */
static inline uint32_t HS_FN(match8_w4)(const uint64_t *p, const uint64_t *q, int r)
{
#if defined(HS_USE_AVX512)
    /* Two codes a register; their 64-bit word counts are packed as 16-bit
     * fields (a distance is at most 256), so one pair of lane sums per 256-bit
     * half gives four codes' distances at once. */
    const __m512i qq = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)q));
    __m512i packed = _mm512_setzero_si512();
    for (int i = 0; i < 4; i++) {
        __m512i c = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512((const void *)(p + 8 * i)), qq));
        packed = _mm512_add_epi64(packed, _mm512_slli_epi64(c, 16 * i));
    }
    packed = _mm512_add_epi64(packed, _mm512_permutex_epi64(packed, _MM_SHUFFLE(1, 0, 3, 2)));
    packed = _mm512_add_epi64(packed, _mm512_permutex_epi64(packed, _MM_SHUFFLE(2, 3, 0, 1)));
    /* lane 0: codes 0, 2, 4, 6; lane 4: codes 1, 3, 5, 7 */
    const uint64_t even = (uint64_t)_mm_cvtsi128_si64(_mm512_castsi512_si128(packed));
    const uint64_t odd = (uint64_t)_mm_cvtsi128_si64(_mm512_extracti32x4_epi32(packed, 2));
    uint32_t me = HS_FN(packed_le)(even, r), mo = HS_FN(packed_le)(odd, r), mask = 0;
    for (int j = 0; j < 4; j++)
        mask |= ((me >> j) & 1) << (2 * j) | ((mo >> j) & 1) << (2 * j + 1);
    return mask;
#elif defined(HS_USE_AVX2)
    /* Per code: byte counts folded by SAD into four word counts; four codes'
     * counts packed as 16-bit fields and summed across the lanes. */
    const __m256i qq = _mm256_loadu_si256((const __m256i *)q);
    uint32_t mask = 0;
    for (int h = 0; h < 2; h++) {
        __m256i packed = _mm256_setzero_si256();
        for (int i = 0; i < 4; i++) {
            __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 16 * h + 4 * i)), qq);
            __m256i c = _mm256_sad_epu8(HS_FN(popcnt_bytes)(x), _mm256_setzero_si256());
            packed = _mm256_add_epi64(packed, _mm256_slli_epi64(c, 16 * i));
        }
        __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(packed), _mm256_extracti128_si256(packed, 1));
        s2 = _mm_add_epi64(s2, _mm_unpackhi_epi64(s2, s2));
        mask |= HS_FN(packed_le)((uint64_t)_mm_cvtsi128_si64(s2), r) << (4 * h);
    }
    return mask;
#else
    uint32_t mask = 0;
    for (int j = 0; j < 8; j++)
        mask |= (uint32_t)(HS_FN(dist4)(p + 4 * j, q) <= r) << j;
    return mask;
#endif
}

/* HS_SCAN for 256-bit codes (dist4 is defined above). */
#define HS_SCAN4(codes, lo, hi, q, r, ON_MATCH) \
    HS_SCAN_W(4, HS_FN(match8_w4), HS_FN(dist4), codes, lo, hi, q, r, ON_MATCH)

static void HS_FN(brute_range4)(const hs_segment *s, int segno, const uint64_t *qs, int nq, int r, uint64_t lo,
                                uint64_t hi, hs_scratch *w, hs_stats *st)
{
    const uint64_t *codes = s->codes;
    /* a quarter of the codes a tile: the same bytes as the 64-bit tile */
    for (uint64_t b0 = lo; b0 < hi; b0 += HS_TILE / 4) {
        uint64_t b1 = b0 + HS_TILE / 4 < hi ? b0 + HS_TILE / 4 : hi;
        for (int slot = 0; slot < nq; slot++) {
            const uint64_t *q = qs + 4 * slot;
            HS_SCAN4(codes, b0, b1, q, r, push_hit(w, segno, j, HS_FN(dist4)(codes + 4 * j, q), slot));
        }
    }
    for (int slot = 0; slot < nq; slot++)
        st[slot].scanned += hi - lo;
}

static void HS_FN(brute_knn4)(const hs_segment *s, int segno, const uint64_t *q, uint64_t k, uint64_t lo,
                              uint64_t hi, hs_scratch *w, hs_stats *st)
{
    const uint64_t *codes = s->codes;
    knn_state ks;
    knn_init(&ks, k, 256);
    HS_SCAN4(codes, lo, hi, q, ks.tau, knn_add(&ks, w, s, segno, j, HS_FN(dist4)(codes + 4 * j, q)));
    st->scanned += hi - lo;
}

/* One candidate of mih_probes4 (group < n_unique): its code against its query. */
static inline void HS_FN(verify4)(const hs_segment *s, int segno, const uint64_t *qs, int r, const int *t,
                                  const hs_cand *cand, hs_scratch *w)
{
    const uint64_t g = cand->group;
    const uint64_t *c = s->codes + 4 * g, *q = qs + 4 * cand->slot;
    const uint64_t x[4] = {c[0] ^ q[0], c[1] ^ q[1], c[2] ^ q[2], c[3] ^ q[3]};
    const int d = __builtin_popcountll(x[0]) + __builtin_popcountll(x[1]) + __builtin_popcountll(x[2]) +
                  __builtin_popcountll(x[3]);
    if (d > r)
        return;
    /* Report each code from the first table that qualifies it. */
    for (int kk = 0; kk < cand->table; kk++)
        if (t[kk] >= 0 && HS_FN(key_dist4)(s, kk, x) <= t[kk])
            return;
    push_hit(w, segno, g, d, cand->slot);
}

/* Verifies candidates C[0, n) in the order of their codes' pages (sort_cands),
 * each code prefetched HS_PF4_CANDS candidates ahead. */
static void HS_FN(verify_cands4)(const hs_segment *s, int segno, const uint64_t *qs, int r, const int *t,
                                 const hs_cand *C, size_t n, hs_scratch *w)
{
    C = sort_cands(s, C, n, w);
    for (size_t i = 0; i < n; i++) {
        if (i + HS_PF4_CANDS < n)
            __builtin_prefetch(s->codes + 4 * (uint64_t)C[i + HS_PF4_CANDS].group);
        HS_FN(verify4)(s, segno, qs, r, t, &C[i], w);
    }
}

/* The probe pipeline of 256-bit tables. Their tables have no fingerprints, so
 * each candidate's 32-byte code is read through table_groups: per probe two
 * dependent random reads (bucket bounds, group numbers), kept streaming
 * (probe i's bounds are prefetched HS_PF4_AHEAD probes before they are read,
 * its group numbers HS_PF4_AHEAD probes before those are read), each bucket
 * then handed to sink. Adds the bucket entries to *candidates; returns 0 once
 * they exceed max_candidates (the caller then scans), else 1. */
static inline __attribute__((always_inline)) int HS_FN(probe_buckets4)(const hs_segment *s, const hs_probe *P,
                                                                     size_t n, hs_stats *st,
                                                                     uint64_t max_candidates, uint64_t *candidates,
                                                                     hs_bucket_sink sink, void *ctx)
{
    uint64_t cand = 0;
    uint32_t lo[HS_PF4_RING], hi[HS_PF4_RING];          /* bucket bounds, by probe */
    for (size_t i = 0; i < n + 2 * HS_PF4_AHEAD; i++) {
        if (i < n)
            __builtin_prefetch(s->offsets[P[i].table] + P[i].key);
        if (i >= HS_PF4_AHEAD && i - HS_PF4_AHEAD < n) {    /* bounds of probe b */
            const size_t b = i - HS_PF4_AHEAD;
            const uint32_t *off = s->offsets[P[b].table];
            const uint32_t a = off[P[b].key], e = off[P[b].key + 1];
            lo[b % HS_PF4_RING] = a;
            hi[b % HS_PF4_RING] = e;
            const uint32_t *tg = s->table_groups[P[b].table];
            __builtin_prefetch(tg + a);
            if (e > a)
                __builtin_prefetch(tg + e - 1);
        }
        if (i >= 2 * HS_PF4_AHEAD) {                         /* group numbers of probe p */
            const size_t p = i - 2 * HS_PF4_AHEAD;
            const uint32_t a = lo[p % HS_PF4_RING], e = hi[p % HS_PF4_RING];
            const uint32_t len = e > a ? e - a : 0;
            st[P[p].slot].candidates += len;
            /* Skewed data (a dense cluster near the query in some table):
             * past the budget a scan is cheaper, so give up on the tables. */
            cand += len;
            if (cand > max_candidates) {
                *candidates += cand;
                return 0;
            }
            if (len && sink(ctx, &P[p], s->table_groups[P[p].table] + a, len))
                break;
        }
    }
    *candidates += cand;
    return 1;
}

/* mih_probes4's sink: candidates collected in w->cands, verified HS_PF4_BLOCK
 * at a time in the order of the pages their codes are on (in bucket order
 * the core waited on most of its code loads: perf at 100M codes). */
static int HS_FN(block_take)(void *arg, const hs_probe *p, const uint32_t *groups, uint32_t len)
{
    hs_sink_ctx *c = arg;
    hs_scratch *w = c->w;
    if (c->nc + len > HS_PF4_BLOCK) {
        HS_FN(verify_cands4)(c->s, c->segno, c->qs, c->r, c->t, w->cands, c->nc, w);
        c->nc = 0;
    }
    if (grow((void **)&w->cands, &w->cap_cands, c->nc + len, sizeof(hs_cand))) {
        w->oom = 1;
        return 1;
    }
    const uint64_t u = c->s->n_unique;
    for (uint32_t j = 0; j < len; j++) {
        hs_cand cand = {groups[j], p->slot, p->table};
        /* A damaged file opened without verify(): a group past the codes is
         * dropped here, before sort_cands buckets it. */
        if (cand.group < u)
            w->cands[c->nc++] = cand;
    }
    return 0;
}

/* mih_probes for 256-bit codes (see probe_buckets4, block_take). */
static int HS_FN(mih_probes4)(const hs_segment *s, int segno, const uint64_t *qs, int nq, int r, const int *t,
                              const hs_probe *P, size_t n, hs_scratch *w, hs_stats *st, uint64_t max_candidates,
                              uint64_t *candidates)
{
    (void)nq;
    hs_sink_ctx c = {s, segno, r, qs, t, w, 0};
    const int ok = HS_FN(probe_buckets4)(s, P, n, st, max_candidates, candidates, HS_FN(block_take), &c);
    if (ok && !w->oom)
        HS_FN(verify_cands4)(s, segno, qs, r, t, w->cands, c.nc, w);
    return ok;
}

/* Verifies every record of w->join (queries qs: the chunk's), partition by
 * partition, and empties it. While a partition is verified, the next one's
 * codes are streamed in when it has records for at least half of its cache
 * lines, spread over this partition's records; a record's code is also
 * prefetched HS_PF4_CANDS records ahead. */
static void HS_FN(join_verify4)(const hs_segment *s, int segno, const uint64_t *qs, int r, const int *t,
                                hs_scratch *w)
{
    hs_join *J = &w->join;
    const uint64_t part_codes = 1ull << HS_JOIN_PART_BITS;
    for (uint32_t p = 0; p < J->nparts; p++) {
        const uint64_t first = (uint64_t)p << HS_JOIN_PART_BITS;
        const uint64_t *base = s->codes + 4 * first;
        /* the next partition's cache lines (two codes a line) */
        const uint64_t nfirst = first + part_codes;
        const uint64_t nlines = nfirst < s->n_unique ? ((s->n_unique - nfirst < part_codes ? s->n_unique - nfirst
                                                                                            : part_codes) + 1) / 2
                                                     : 0;
        const uint64_t *nbase = s->codes + 4 * nfirst;
        const uint64_t here = join_records(J, p);
        const int stream = p + 1 < J->nparts && here && join_records(J, p + 1) >= nlines / 2;
        const uint64_t step = stream ? (nlines << 16) / here + 1 : 0;   /* lines a record, 16.16 */
        uint64_t due = 0, streamed = 0;
        for (uint32_t pg = J->head[p]; pg != HS_JOIN_NONE; pg = J->next[pg]) {
            const uint32_t *R = J->rec + (size_t)pg * HS_JOIN_PAGE;
            const uint32_t nr = pg == J->tail[p] ? J->pos[p] - pg * HS_JOIN_PAGE : HS_JOIN_PAGE;
            for (uint32_t i = 0; i < nr; i++) {
                if (i + HS_PF4_CANDS < nr)
                    __builtin_prefetch(base + 4 * (R[i + HS_PF4_CANDS] >> (4 + HS_JOIN_QUERY_BITS)));
                if (stream) {
                    due += step;
                    for (; streamed < (due >> 16) && streamed < nlines; streamed++)
                        __builtin_prefetch(nbase + 8 * streamed);
                }
                const uint32_t x = R[i], query = x & (HS_JOIN_QUERIES - 1);
                if (J->skip[query / HS_GROUP4])
                    continue;
                const hs_cand c = {(uint32_t)(first | (x >> (4 + HS_JOIN_QUERY_BITS))), (uint16_t)query,
                                   (uint8_t)((x >> HS_JOIN_QUERY_BITS) & 15)};
                HS_FN(verify4)(s, segno, qs, r, t, &c, w);
            }
        }
    }
    join_reset(J);
}

/* join_collect4's sink: each candidate's record into its partition; a full
 * arena is verified first. */
static int HS_FN(join_take)(void *arg, const hs_probe *p, const uint32_t *groups, uint32_t len)
{
    hs_sink_ctx *c = arg;
    hs_join *J = &c->w->join;
    const uint64_t u = c->s->n_unique;
    const uint32_t table = p->table, query = J->base + p->slot;
    for (uint32_t j = 0; j < len; j++) {
        const uint32_t g = groups[j];
        if ((uint64_t)g >= u)   /* a damaged file opened without verify() */
            continue;
        const uint32_t part = g >> HS_JOIN_PART_BITS;
        uint32_t at = J->pos[part];
        if (!(at & (HS_JOIN_PAGE - 1))) {   /* no page yet, or a full one */
            if (J->used == J->npages)
                HS_FN(join_verify4)(c->s, c->segno, c->qs, c->r, c->t, c->w);
            at = join_new_page(J, part);
        }
        J->rec[at] = HS_JOIN_REC(g & ((1u << HS_JOIN_PART_BITS) - 1), table, query);
        J->pos[part] = at + 1;
    }
    return 0;
}

/* The probes P[0, n) of one group of queries (w->join.base is its first in
 * the chunk qs) collected into w->join; returns 0 over the budget. */
static int HS_FN(join_collect4)(const hs_segment *s, int segno, const uint64_t *qs, int nq, int r, const int *t,
                                const hs_probe *P, size_t n, hs_scratch *w, hs_stats *st, uint64_t max_candidates,
                                uint64_t *candidates)
{
    (void)nq;
    hs_sink_ctx c = {s, segno, r, qs, t, w, 0};
    return HS_FN(probe_buckets4)(s, P, n, st, max_candidates, candidates, HS_FN(join_take), &c);
}

static const hs_kernels HS_FN(kernels) = {
    HS_FN(mih_probes), HS_FN(mih_probes4), HS_FN(join_collect4), HS_FN(join_verify4), HS_FN(mih_knn),
    HS_FN(brute_range), HS_FN(brute_knn), HS_FN(brute_range4), HS_FN(brute_knn4),
};
