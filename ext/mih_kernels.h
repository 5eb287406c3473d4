/* Search kernels, compiled once per instruction set by mih.c.
 *
 * mih.c defines HS_FN(name) to give each copy its own suffix and one of
 * HS_USE_AVX512 / HS_USE_AVX2 to pick the popcount of match8(); the rest of
 * the code is identical in every copy so the compiler can inline match8()
 * into the loops. No include guard on purpose. */

/* Bit j of the result is set when popcount(p[j] ^ q) <= r, for j < 8. */
static inline uint32_t HS_FN(match8)(const uint64_t *p, uint64_t q, int r)
{
#if defined(HS_USE_AVX512)
    __m512i x = _mm512_xor_si512(_mm512_loadu_si512((const void *)p), _mm512_set1_epi64((long long)q));
    return (uint32_t)_mm512_cmple_epu64_mask(_mm512_popcnt_epi64(x), _mm512_set1_epi64(r));
#elif defined(HS_USE_AVX2)
    /* Nibble lookup popcount (Mula), byte sums folded per lane by SAD. */
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i qq = _mm256_set1_epi64x((long long)q);
    const __m256i rr = _mm256_set1_epi64x(r);
    uint32_t mask = 0;
    for (int h = 0; h < 2; h++) {
        __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 4 * h)), qq);
        __m256i cnt = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
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

/* Runs ON_MATCH with `j` set for every j in [lo, hi) where
 * popcount(codes[j] ^ q) <= r. r is re-read per block, so a shrinking
 * k-NN threshold takes effect during the scan. */
#define HS_SCAN(codes, lo, hi, q, r, ON_MATCH)                                  \
    do {                                                                        \
        uint64_t j_ = (lo), e_ = (hi);                                          \
        for (; j_ + 8 <= e_; j_ += 8) {                                         \
            uint32_t m_ = HS_FN(match8)((codes) + j_, (q), (r));                \
            while (m_) {                                                        \
                uint64_t j = j_ + (uint64_t)__builtin_ctz(m_);                  \
                m_ &= m_ - 1;                                                   \
                ON_MATCH;                                                       \
            }                                                                   \
        }                                                                       \
        for (; j_ < e_; j_++) {                                                 \
            if (__builtin_popcountll((codes)[j_] ^ (q)) <= (r)) {               \
                uint64_t j = j_;                                                \
                ON_MATCH;                                                       \
            }                                                                   \
        }                                                                       \
    } while (0)

/* Probes masks[first..last) of table k and runs ON_CANDIDATE for each bucket
 * slot j whose code is within r. Offsets are prefetched HS_PF probes ahead and
 * the bucket's first line HS_PF/2 probes ahead, so several memory reads are in
 * flight instead of one probe waiting for each. */
#define HS_PROBE(s, k, qk, first, last, q, r, st, ON_CANDIDATE)                             \
    do {                                                                                    \
        const uint32_t *off_ = (s)->offsets[k];                                             \
        const uint64_t *tc_ = (s)->table_codes[k];                                          \
        const uint32_t *mk_ = (s)->masks[k];                                                \
        uint32_t f_ = (first), l_ = (last), n_ = l_ - f_;                                   \
        uint32_t lo_[HS_RING], hi_[HS_RING];                                                \
        uint64_t cand_ = 0;                                                                 \
        for (uint32_t i_ = 0; i_ < n_ + HS_PF; i_++) {                                      \
            if (i_ >= HS_PF) {                                                              \
                uint32_t p_ = i_ - HS_PF;                                                   \
                uint32_t a_ = lo_[p_ % HS_RING], b_ = hi_[p_ % HS_RING];                    \
                cand_ += b_ - a_;                                                           \
                HS_SCAN(tc_, a_, b_, q, r, ON_CANDIDATE);                                   \
            }                                                                               \
            if (i_ < n_) __builtin_prefetch(off_ + ((qk) ^ mk_[f_ + i_]));                  \
            if (i_ >= HS_PF / 2 && i_ - HS_PF / 2 < n_) {                                   \
                uint32_t p_ = i_ - HS_PF / 2;                                               \
                uint32_t key_ = (qk) ^ mk_[f_ + p_];                                        \
                uint32_t a_ = off_[key_], b_ = off_[key_ + 1];                              \
                lo_[p_ % HS_RING] = a_;                                                     \
                hi_[p_ % HS_RING] = b_;                                                     \
                /* Whole bucket, up to HS_PF_LINES cache lines. */                          \
                for (uint32_t x_ = a_; x_ < b_ && x_ < a_ + 8 * HS_PF_LINES; x_ += 8)       \
                    __builtin_prefetch(tc_ + x_);                                           \
            }                                                                               \
        }                                                                                   \
        (st)->probes += n_;                                                                 \
        (st)->candidates += cand_;                                                          \
    } while (0)

/* Range search of nq queries (the same radius) in one segment. All their
 * probes go through one pipeline, so offsets and buckets of HS_PF probes are
 * in flight at once, across table and query boundaries. */
static int HS_FN(mih_range)(const hs_segment *s, int segno, const uint64_t *qs, int nq, int r, const int *t,
                            hs_scratch *w, hs_stats *st, uint64_t max_candidates)
{
    uint64_t candidates = 0;
    size_t need = 0, n = 0;
    for (int k = 0; k < s->m; k++)
        if (t[k] >= 0)
            need += s->ring_start[k][t[k] + 1];
    if (grow((void **)&w->probes, &w->cap_probes, need * (size_t)nq + 1, sizeof(hs_probe))) {
        w->oom = 1;
        return 1;
    }
    hs_probe *P = w->probes;
    for (int slot = 0; slot < nq; slot++) {
        for (int k = 0; k < s->m; k++) {
            if (t[k] < 0)
                continue;
            const uint32_t qk = (uint32_t)((qs[slot] >> s->shift[k]) & sub_mask(s->bits[k]));
            const uint32_t *mk = s->masks[k];
            for (uint32_t i = 0, e = s->ring_start[k][t[k] + 1]; i < e; i++) {
                hs_probe pr = {qk ^ mk[i], (uint16_t)k, (uint16_t)slot};
                P[n++] = pr;
            }
        }
        st[slot].probes += need;
    }
    uint32_t lo[HS_RING], hi[HS_RING];
    for (size_t i = 0; i < n + HS_PF; i++) {
        if (i >= HS_PF) {
            const size_t p = i - HS_PF;
            const int k = P[p].table, slot = P[p].slot;
            const uint64_t q = qs[slot];
            const uint64_t *tc = s->table_codes[k];
            const uint32_t *tg = s->table_groups[k];
            const uint32_t a = lo[p % HS_RING], b = hi[p % HS_RING];
            st[slot].candidates += b - a;
            /* Skewed data (a dense cluster near the query in some table): past
             * the budget a scan is cheaper, so give up on the tables. */
            candidates += b - a;
            if (candidates > max_candidates)
                return 0;
            HS_SCAN(tc, a, b, q, r, {
                uint64_t x = tc[j] ^ q;
                /* Report each code from the first table that qualifies it. */
                int dup = 0;
                for (int kk = 0; kk < k && !dup; kk++)
                    dup = t[kk] >= 0 && __builtin_popcountll((x >> s->shift[kk]) & sub_mask(s->bits[kk])) <= t[kk];
                if (!dup)
                    push_hit(w, segno, k ? tg[j] : j, __builtin_popcountll(x), slot);
            });
        }
        if (i < n)
            __builtin_prefetch(s->offsets[P[i].table] + P[i].key);
        if (i >= HS_PF / 2 && i - HS_PF / 2 < n) {
            const size_t p = i - HS_PF / 2;
            const uint32_t *off = s->offsets[P[p].table];
            const uint64_t *tc = s->table_codes[P[p].table];
            const uint32_t a = off[P[p].key], b = off[P[p].key + 1];
            lo[p % HS_RING] = a;
            hi[p % HS_RING] = b;
            /* Whole bucket, up to HS_PF_LINES cache lines. */
            for (uint32_t x = a; x < b && x < a + 8 * HS_PF_LINES; x += 8)
                __builtin_prefetch(tc + x);
        }
    }
    return 1;
}

/* Incremental k-NN: probe ring t (substring distance exactly t) of every table,
 * then every code within m*(t+1)-1 has been seen (pigeonhole). Stops when the
 * k-th live entry is certified. Returns 1 when done, 0 when the planner says a
 * scan is cheaper from here (the caller then scans). */
static int HS_FN(mih_knn)(const hs_segment *s, int segno, uint64_t q, uint64_t k, hs_scratch *w,
                          hs_stats *st, double budget_ns)
{
    knn_state ks;
    knn_init(&ks, k);
    double spent = 0;   /* estimated cost of the rings so far, corrected by real candidate counts */
    const uint64_t cand0 = st->candidates;
    int max_t = HS_MAX_RING;
    for (int tb = 0; tb < s->m; tb++)
        if (s->bits[tb] < max_t) max_t = s->bits[tb];
    for (int t = 0; t <= max_t; t++) {
        double ring_cost = 0;
        for (int tb = 0; tb < s->m; tb++)
            ring_cost += probe_cost_ns(s, tb, s->ring_start[tb][t + 1] - s->ring_start[tb][t]);
        if (spent + ring_cost > budget_ns)
            return 0;
        for (int tb = 0; tb < s->m; tb++) {
            const uint32_t qk = (uint32_t)((q >> s->shift[tb]) & sub_mask(s->bits[tb]));
            const uint32_t *tg = s->table_groups[tb];
            const uint64_t *tc = s->table_codes[tb];
            HS_PROBE(s, tb, qk, s->ring_start[tb][t], s->ring_start[tb][t + 1], q, ks.tau, st, {
                uint64_t x = tc[j] ^ q;
                /* First seen at ring t in table tb: no table is nearer than t,
                 * and no earlier table is at t. */
                int dup = 0;
                for (int kk = 0; kk < s->m && !dup; kk++) {
                    if (kk == tb) continue;
                    int dk = __builtin_popcountll((x >> s->shift[kk]) & sub_mask(s->bits[kk]));
                    dup = dk < t || (kk < tb && dk == t);
                }
                if (!dup) knn_add(&ks, w, s, segno, tb ? tg[j] : j, __builtin_popcountll(x));
            });
        }
        /* Skewed data: buckets larger than the average cost more than estimated. */
        double real = (double)(st->candidates - cand0) * HS_CAND_NS;
        spent += ring_cost;
        if (real > spent)
            spent = real;
        if (ks.tau <= s->m * (t + 1) - 1)
            return 1;
    }
    return 0;
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
    knn_init(&ks, k);
    HS_SCAN(codes, lo, hi, q, ks.tau, knn_add(&ks, w, s, segno, j, __builtin_popcountll(codes[j] ^ q)));
    st->scanned += hi - lo;
}

static const hs_kernels HS_FN(kernels) = {
    HS_FN(mih_range), HS_FN(mih_knn), HS_FN(brute_range), HS_FN(brute_knn),
};
