/* hashsieve native core: build, planner, result assembly and threads.
 * The search kernels live in mih_kernels.h and are compiled here once per
 * instruction set; hs_set_isa() picks one at run time. */
#define _GNU_SOURCE
#include "mih.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define HS_PF 16          /* probes in flight */
#define HS_RING 32       /* >= HS_PF, power of two */
#define HS_PF_LINES 8    /* bucket cache lines prefetched per probe */
/* 256-bit codes (mih_probes4): probes between prefetching a probe's bucket
 * bounds and reading them, and again before its group numbers are read;
 * candidates collected, at most, before they are verified in page order; and
 * candidates whose codes are prefetched ahead of the one verified. */
#define HS_PF4_AHEAD 16
#define HS_PF4_RING 32     /* bounds kept, by probe: more than HS_PF4_AHEAD */
#define HS_PF4_BLOCK 65536
#define HS_PF4_CANDS 16
#define HS_UNLIMITED UINT64_MAX
/* Planner cost estimates (ns): rough per-operation costs on the development machine
 * (a probe that misses to DRAM, one verified candidate, one scanned code), used
 * only to choose between tables and scan; exactness never depends on them. */
#define HS_PROBE_NS_DRAM 40.0
#define HS_PROBE_NS_CACHE 8.0
#define HS_CAND_NS 0.8
#define HS_SCAN_NS 0.5
/* 256-bit codes: a candidate's code is read through table_groups (prefetched,
 * no fingerprint), a scanned code is 32 bytes. */
#define HS_CAND_NS4 8.0
#define HS_SCAN_NS4 1.0
/* 256-bit tables: only from this many distinct codes (a scan is cheaper
 * below), at most this wide (offsets of 64 MiB), and laid out for PDQ's
 * match radius. */
#define HS_WIDE_MIN_CODES 16384
#define HS_WIDE_MAX_KEY_BITS 24
#define HS_WIDE_RADIUS 31
#define HS_PAR_SCAN_MIN (1u << 20)   /* codes; below this a scan stays on one thread */
#define HS_MAX_SCAN_THREADS 64       /* threads one query's scan is split over, at most */

#define HS_TILE 4096     /* codes per scan tile shared by a group of queries (32 KiB) */
#define HS_GROUP 8       /* queries of a batch searched together */
/* 256-bit batches search this many queries together with their probes in
 * table order (sort_probes): at 100M codes the tables are 4.4 GB, read at
 * random in query order. A power of two, at most 256 (join_segment). */
#define HS_GROUP4 256
#define HS_SORT_BITS 12  /* sort_probes orders probes by table and this many top key bits */

typedef struct {
    uint32_t group;
    uint16_t d;          /* up to 256 */
    uint16_t slot;       /* query within its group: fewer than HS_JOIN_QUERIES */
    uint8_t seg;         /* hs_range_search takes at most HS_MAX_SEGMENTS */
} hs_hit;

typedef struct {
    uint32_t key;
    uint8_t table;
    uint8_t ring;        /* popcount of the probe's mask: the substring distance */
    uint16_t slot;
} hs_probe;

/* Big 256-bit batches over segments too big for the caches (join_segment):
 * a worker collects the candidates of up to HS_JOIN_QUERIES queries, as 4-byte
 * records (code within its partition << 17 | table << 13 | query), into
 * partitions of 2^HS_JOIN_PART_BITS codes, and then verifies them partition
 * by partition, so that each code is read from memory once for all of the
 * batch's candidates on it, not once per candidate (at 100M codes a code is a
 * candidate of ~29 of 100,000 queries). The records are kept in pages of
 * HS_JOIN_PAGE from an arena of at most HS_JOIN_MAX_PAGES pages a worker and
 * HS_JOIN_MEMORY bytes a batch; a full arena is verified and reused. */
#define HS_JOIN_PART_BITS 15                    /* 32768 codes (1 MiB) a partition */
#define HS_JOIN_QUERY_BITS 13
#define HS_JOIN_QUERIES (1u << HS_JOIN_QUERY_BITS)
#define HS_JOIN_PAGE 1024                       /* records a page (4 KiB) */
#define HS_JOIN_MAX_PAGES (1u << 17)            /* 512 MiB */
#define HS_JOIN_MEMORY (1ull << 30)
#define HS_JOIN_MIN_CODES (1u << 22)            /* below this the codes fit the caches */
#define HS_JOIN_MIN_CHUNK 1024                  /* queries claimed at a time, at least */
#define HS_JOIN_NONE UINT32_MAX
#define HS_JOIN_REC(code, table, query) \
    ((uint32_t)(code) << (4 + HS_JOIN_QUERY_BITS) | (uint32_t)(table) << HS_JOIN_QUERY_BITS | (uint32_t)(query))

typedef struct {
    uint32_t *rec;              /* the arena: npages pages of HS_JOIN_PAGE records */
    uint32_t *next;             /* page -> the partition's next page */
    uint32_t *head, *tail;      /* per partition: first and last page, or HS_JOIN_NONE */
    uint32_t *pos;              /* per partition: where its next record goes in rec */
    uint32_t npages, used, nparts, cap_parts;
    uint32_t base;              /* the query (in the chunk) of the group being collected */
    uint8_t skip[HS_JOIN_QUERIES / HS_GROUP4];   /* groups over budget: records not verified */
} hs_join;

/* A candidate of a 256-bit probe waiting for its code: its group, and its
 * probe's query and table. */
typedef struct {
    uint32_t group;
    uint16_t slot;
    uint8_t table;
} hs_cand;

typedef struct {
    hs_hit *hits;
    size_t nhits, cap_hits;
    hs_hit *sorted;
    size_t cap_sorted;
    hs_hit *byslot;
    size_t cap_byslot;
    hs_probe *probes;
    size_t cap_probes;
    hs_probe *probes_sorted;
    size_t cap_probes_sorted;
    uint32_t *sort_counts;
    size_t cap_sort_counts;
    hs_cand *cands, *cands_sorted;
    size_t cap_cands, cap_cands_sorted;
    int64_t *ids;
    int32_t *dist;
    size_t nres, cap_res;
    int64_t *tmp;
    size_t cap_tmp;
    size_t *slot_start;         /* splitting a group's hits by query */
    size_t cap_slot_start;
    hs_stats *stats;            /* a batch group's */
    size_t cap_stats;
    hs_join join;
    int oom;
} hs_scratch;

typedef struct {
    uint64_t hist[HS_MAX_BITS + 1];    /* live entries per distance (0 .. the code width) */
    uint64_t k;
    int tau;                           /* k-th smallest distance so far, or the code width */
} knn_state;

static inline uint64_t sub_mask(int bits) { return bits >= 64 ? ~0ull : (1ull << bits) - 1; }

/* The 32 code bits just above table k's key (wrapping around): disjoint from
 * the key, so a bucket is filtered on them before any full code is read. */
static inline uint32_t fingerprint(uint64_t code, int shift, int bits)
{
    int rot = (shift + bits) & 63;
    return (uint32_t)(rot ? (code >> rot) | (code << (64 - rot)) : code);
}

/* 256-bit tables take every m-th bit, not a contiguous substring: real
 * hashes correlate neighbouring bits, which makes a contiguous key's buckets
 * uneven (measured on correlated test data, 1M codes, r=31: 6.9x the
 * candidates of uniform data with contiguous keys, 1.2x with these). */
void hs_wide_masks(int m, int k, uint64_t mask[HS_MAX_WORDS])
{
    memset(mask, 0, HS_MAX_WORDS * sizeof mask[0]);
    for (int p = k; p < 256; p += m)
        mask[3 - p / 64] |= 1ull << (p % 64);
}

static uint32_t gather_plain(const uint64_t *c, const uint64_t *mask)
{
    uint32_t key = 0;
    int at = 0;
    for (int w = 3; w >= 0; w--)
        for (uint64_t m = mask[w]; m; m &= m - 1)
            key |= (uint32_t)((c[w] >> __builtin_ctzll(m)) & 1) << at++;
    return key;
}

__attribute__((target("bmi2,popcnt"))) static uint32_t gather_bmi2(const uint64_t *c, const uint64_t *mask)
{
    uint64_t key = 0;
    int at = 0;
    for (int w = 3; w >= 0; w--) {
        key |= _pext_u64(c[w], mask[w]) << at;
        at += __builtin_popcountll(mask[w]);
    }
    return (uint32_t)key;
}

static int have_bmi2;

__attribute__((constructor)) static void detect_bmi2(void)
{
    __builtin_cpu_init();
    have_bmi2 = __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
}

/* Table key of a 256-bit code: its bits under mask, lowest position first. */
static inline uint32_t key4(const uint64_t *c, const uint64_t *mask)
{
    return have_bmi2 ? gather_bmi2(c, mask) : gather_plain(c, mask);
}

uint32_t hs_code_key(const uint64_t *code, int words, int shift, int bits, const uint64_t *mask)
{
    return words == 1 ? (uint32_t)((code[0] >> shift) & sub_mask(bits)) : key4(code, mask);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static inline void push_hit(hs_scratch *w, int seg, uint64_t group, int d, int slot)
{
    if (w->nhits == w->cap_hits && grow((void **)&w->hits, &w->cap_hits, w->nhits + 1, sizeof(hs_hit))) {
        w->oom = 1;
        return;
    }
    hs_hit h = {(uint32_t)group, (uint16_t)d, (uint16_t)slot, (uint8_t)seg};
    w->hits[w->nhits++] = h;
}

static inline int is_dead(const uint8_t *dead, uint64_t slot) { return (dead[slot >> 3] >> (slot & 7)) & 1; }

/* Entry slots [*a, *b) of group g. Clamped, so a damaged file opened without
 * verify() gives wrong answers at worst, never a read out of bounds. */
static inline void group_range(const hs_segment *s, uint64_t g, uint64_t *a, uint64_t *b)
{
    if (g >= s->n_unique) {
        *a = *b = 0;
        return;
    }
    *b = s->group_start[g + 1];
    if (*b > s->n_entries)
        *b = s->n_entries;
    *a = s->group_start[g];
    if (*a > *b)
        *a = *b;
}

static inline uint64_t live_count(const hs_segment *s, uint64_t g)
{
    uint64_t a, b;
    group_range(s, g, &a, &b);
    uint64_t n = b - a;
    if (s->dead)
        for (uint64_t i = a; i < b; i++)
            n -= is_dead(s->dead, i);
    return n;
}

static inline void knn_init(knn_state *ks, uint64_t k, int bits)
{
    memset(ks->hist, 0, (size_t)(bits + 1) * sizeof ks->hist[0]);
    ks->k = k;
    ks->tau = bits;
}

static inline void knn_add(knn_state *ks, hs_scratch *w, const hs_segment *s, int segno, uint64_t g, int d)
{
    if (d > ks->tau)
        return;
    uint64_t live = live_count(s, g);
    if (!live)
        return;
    push_hit(w, segno, g, d, 0);
    ks->hist[d] += live;
    uint64_t cum = 0;
    for (int D = 0; D <= ks->tau; D++) {
        cum += ks->hist[D];
        if (cum >= ks->k) {
            ks->tau = D;
            break;
        }
    }
}

static inline double probe_cost_ns(const hs_segment *s, int k, uint64_t nprobes)
{
    double per_probe = s->bits[k] >= 18 ? HS_PROBE_NS_DRAM : HS_PROBE_NS_CACHE;
    double bucket = (double)s->n_unique / (double)(1ull << s->bits[k]);
    return (double)nprobes * (per_probe + bucket * (s->words == 1 ? HS_CAND_NS : HS_CAND_NS4));
}

/* One counting-sort pass: dst[0, n) = src[0, n) ordered by BUCKET(src[i]),
 * which is < nb; counts has nb + 1 entries. A macro, so that each caller's
 * bucket expression is inlined into the loops. */
#define HS_COUNTING_SORT(src, dst, n, nb, counts, BUCKET) \
    do {                                                  \
        memset((counts), 0, ((nb) + 1) * sizeof *(counts));\
        for (size_t i_ = 0; i_ < (n); i_++)               \
            (counts)[BUCKET((src)[i_]) + 1]++;            \
        for (size_t b_ = 0; b_ < (nb); b_++)              \
            (counts)[b_ + 1] += (counts)[b_];             \
        for (size_t i_ = 0; i_ < (n); i_++)               \
            (dst)[(counts)[BUCKET((src)[i_])]++] = (src)[i_];\
    } while (0)

/* Orders candidates C[0, n) by the 2 MiB page their code is on, so that
 * verifying them walks the codes page by page (measured: a cold 10M-code
 * query 210 -> 81 us). Returns the sorted candidates, or C itself when out of
 * memory (any order is exact). */
#define HS_CODE_PAGE_SHIFT 16    /* 65536 codes of 32 bytes */
static const hs_cand *sort_cands(const hs_segment *s, const hs_cand *C, size_t n, hs_scratch *w)
{
    const size_t np = (size_t)(s->n_unique >> HS_CODE_PAGE_SHIFT) + 1;
    if (np == 1 || grow((void **)&w->cands_sorted, &w->cap_cands_sorted, n, sizeof(hs_cand)) ||
        grow((void **)&w->sort_counts, &w->cap_sort_counts, np + 1, sizeof(uint32_t)))
        return C;
#define HS_CAND_BUCKET(c) ((c).group >> HS_CODE_PAGE_SHIFT)
    HS_COUNTING_SORT(C, w->cands_sorted, n, np, w->sort_counts, HS_CAND_BUCKET);
#undef HS_CAND_BUCKET
    return w->cands_sorted;
}

static uint64_t join_min_codes = HS_JOIN_MIN_CODES, join_forced_pages;
static uint64_t join_counters[3];   /* chunks joined, arenas verified, groups scanned */

void hs_set_join(uint64_t min_codes, uint64_t pages, uint64_t old[2])
{
    old[0] = __atomic_exchange_n(&join_min_codes, min_codes, __ATOMIC_RELAXED);
    old[1] = __atomic_exchange_n(&join_forced_pages, pages > HS_JOIN_MAX_PAGES ? HS_JOIN_MAX_PAGES : pages,
                                 __ATOMIC_RELAXED);
}

void hs_join_counters(uint64_t out[3], int reset)
{
    for (int i = 0; i < 3; i++)
        out[i] = reset ? __atomic_exchange_n(&join_counters[i], 0, __ATOMIC_RELAXED)
                       : __atomic_load_n(&join_counters[i], __ATOMIC_RELAXED);
}

/* Empties the join's partitions (the arena's pages are all free again). */
static void join_reset(hs_join *J)
{
    for (uint32_t p = 0; p < J->nparts; p++) {
        J->head[p] = J->tail[p] = HS_JOIN_NONE;
        J->pos[p] = 0;
    }
    if (J->used)
        __atomic_add_fetch(&join_counters[1], 1, __ATOMIC_RELAXED);
    J->used = 0;
}

/* Records in partition p. */
static inline uint64_t join_records(const hs_join *J, uint32_t p)
{
    uint64_t n = 0;
    for (uint32_t pg = J->head[p]; pg != HS_JOIN_NONE; pg = J->next[pg])
        n += pg == J->tail[p] ? J->pos[p] - pg * HS_JOIN_PAGE : HS_JOIN_PAGE;
    return n;
}

/* Appends a free page (the caller checked there is one) to partition p and
 * returns where its first record goes. */
static inline uint32_t join_new_page(hs_join *J, uint32_t p)
{
    const uint32_t pg = J->used++;
    J->next[pg] = HS_JOIN_NONE;
    if (J->head[p] == HS_JOIN_NONE)
        J->head[p] = pg;
    else
        J->next[J->tail[p]] = pg;
    J->tail[p] = pg;
    return pg * HS_JOIN_PAGE;
}

/* A probe's bucket, handed by the 256-bit probe pipeline to what collects its
 * candidates: its group numbers (not yet checked against the codes).
 * Returns nonzero to stop (out of memory, w->oom set). */
typedef int (*hs_bucket_sink)(void *ctx, const hs_probe *p, const uint32_t *groups, uint32_t len);

/* A sink's context: what verifying its candidates takes (the segment, the
 * queries, the radius and per-table radii, the scratch), and for mih_probes4's
 * sink the candidates waiting in w->cands. */
typedef struct {
    const hs_segment *s;
    int segno, r;
    const uint64_t *qs;
    const int *t;
    hs_scratch *w;
    size_t nc;
} hs_sink_ctx;

typedef int (*hs_probes_fn)(const hs_segment *, int, const uint64_t *, int, int, const int *, const hs_probe *,
                            size_t, hs_scratch *, hs_stats *, uint64_t, uint64_t *);

typedef struct {
    hs_probes_fn mih_probes;
    hs_probes_fn mih_probes4;   /* 256-bit codes */
    hs_probes_fn join_collect4; /* 256-bit codes of a big batch: into w->join (join_segment) */
    void (*join_verify4)(const hs_segment *, int, const uint64_t *, int, const int *, hs_scratch *);
    int (*mih_knn)(const hs_segment *, int, const uint64_t *, uint64_t, hs_scratch *, hs_stats *, double);
    void (*brute_range)(const hs_segment *, int, const uint64_t *, int, int, uint64_t, uint64_t, hs_scratch *,
                        hs_stats *);
    void (*brute_knn)(const hs_segment *, int, uint64_t, uint64_t, uint64_t, uint64_t, hs_scratch *, hs_stats *);
    /* the same two for 256-bit codes (4 words, query by pointer) */
    void (*brute_range4)(const hs_segment *, int, const uint64_t *, int, int, uint64_t, uint64_t, hs_scratch *,
                         hs_stats *);
    void (*brute_knn4)(const hs_segment *, int, const uint64_t *, uint64_t, uint64_t, uint64_t, hs_scratch *,
                       hs_stats *);
} hs_kernels;

/* ---- one copy of the kernels per instruction set ---- */
#define HS_FN(name) name##_generic
#include "mih_kernels.h"
#undef HS_FN

#pragma GCC push_options
#pragma GCC target("popcnt")
#define HS_FN(name) name##_popcnt
#include "mih_kernels.h"
#undef HS_FN
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("popcnt,avx2")
#define HS_USE_AVX2
#define HS_FN(name) name##_avx2
#include "mih_kernels.h"
#undef HS_FN
#undef HS_USE_AVX2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("popcnt,avx2,avx512f,avx512vl,avx512vpopcntdq")
#define HS_USE_AVX512
#define HS_FN(name) name##_avx512
#include "mih_kernels.h"
#undef HS_FN
#undef HS_USE_AVX512
#pragma GCC pop_options

static const hs_kernels *const all_kernels[] = {&kernels_generic, &kernels_popcnt, &kernels_avx2, &kernels_avx512};
static int active_isa = -1;

int hs_isa_supported(int isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case HS_ISA_GENERIC: return 1;
    case HS_ISA_POPCNT: return __builtin_cpu_supports("popcnt");
    case HS_ISA_AVX2: return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("avx2");
    case HS_ISA_AVX512:
        return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vpopcntdq");
    }
    return 0;
}

int hs_get_isa(void)
{
    if (active_isa < 0) {
        int best = HS_ISA_AVX512;
        while (!hs_isa_supported(best))
            best--;
        __atomic_store_n(&active_isa, best, __ATOMIC_RELAXED);
    }
    return active_isa;
}

int hs_set_isa(int isa)
{
    if (isa < 0 || isa > HS_ISA_AVX512 || !hs_isa_supported(isa))
        return -1;
    __atomic_store_n(&active_isa, isa, __ATOMIC_RELAXED);
    return 0;
}

/* ================================ build ================================ */

/* 256-bit codes: m tables of about 256/m bits (widest first; table k holds
 * the bits at positions k, k + m, ...: hs_wide_masks), m chosen by the
 * cost model for PDQ's radius with the tight pigeonhole split (split_radius):
 * few wide tables need many probes, many narrow ones many candidates. */
static int choose_tables_wide(uint64_t u, int bits[HS_MAX_TABLES], int shift[HS_MAX_TABLES])
{
    if (u < HS_WIDE_MIN_CODES)
        return 0;
    double best = 0;
    int m_best = 0;
    for (int m = (256 + HS_WIDE_MAX_KEY_BITS - 1) / HS_WIDE_MAX_KEY_BITS; m <= HS_MAX_TABLES; m++) {
        double cost = 0;
        for (int k = 0; k < m && cost >= 0; k++) {
            const int b = 256 / m + (k < 256 % m);
            const int t = (HS_WIDE_RADIUS + 1) / m + (k < (HS_WIDE_RADIUS + 1) % m) - 1;
            const double probes = hs_mask_count(b, t);
            cost += probes * ((b >= 18 ? HS_PROBE_NS_DRAM : HS_PROBE_NS_CACHE) +
                              (double)u / (double)(1ull << b) * HS_CAND_NS4);
        }
        if (m_best == 0 || cost < best) {
            best = cost;
            m_best = m;
        }
    }
    int pos = 256;
    for (int k = 0; k < m_best; k++) {
        bits[k] = 256 / m_best + (k < 256 % m_best);
        pos -= bits[k];
        shift[k] = pos;
    }
    return m_best;
}

int hs_choose_tables(uint64_t n_unique, int words, int bits[HS_MAX_TABLES], int shift[HS_MAX_TABLES])
{
    if (words != 1)
        return choose_tables_wide(n_unique, bits, shift);
    /* Below a few thousand codes a scan beats any table. */
    if (n_unique < 4096)
        return 0;
    /* Substrings of about log2(N) bits give about one code per bucket;
     * 22 bits caps an offsets array at 16 MiB. */
    double lg = log2((double)n_unique);
    if (lg > 22)
        lg = 22;
    int m = (int)ceil(HS_CODE_BITS / lg);
    if (m > HS_MAX_TABLES)
        m = HS_MAX_TABLES;
    int pos = HS_CODE_BITS;
    for (int k = 0; k < m; k++) {
        bits[k] = HS_CODE_BITS / m + (k < HS_CODE_BITS % m);   /* widest first */
        pos -= bits[k];
        shift[k] = pos;
    }
    return m;
}

/* Code a vs code b of `words` words, word 0 first: -1, 0 or 1. */
static inline int cmp_code(const uint64_t *a, const uint64_t *b, int words)
{
    for (int w = 0; w < words; w++)
        if (a[w] != b[w])
            return a[w] < b[w] ? -1 : 1;
    return 0;
}

/* A (code, id) pair as words + 1 words, for qsort_r. */
static int cmp_record(const void *a, const void *b, void *words)
{
    const int W = *(const int *)words;
    const uint64_t *x = a, *y = b;
    const int c = cmp_code(x, y, W);
    return c ? c : ((int64_t)x[W] > (int64_t)y[W]) - ((int64_t)x[W] < (int64_t)y[W]);
}

typedef struct {
    uint64_t *codes;
    int64_t *ids;
    const uint64_t *starts;
    uint64_t b0, b1;
    int words;
    int oom;
} sort_job;

/* Sorts buckets [b0, b1) in place by (code, id): insertion sort when short,
 * else qsort of (code, id) records. W is a constant where this is inlined. */
static inline __attribute__((always_inline)) void sort_buckets_w(sort_job *j, const int W)
{
    uint64_t *tmp = NULL;
    size_t cap = 0;
    for (uint64_t b = j->b0; b < j->b1; b++) {
        uint64_t a = j->starts[b], e = j->starts[b + 1], n = e - a;
        uint64_t *c = j->codes + W * a;
        int64_t *d = j->ids + a;
        if (n <= 32) {
            for (uint64_t i = 1; i < n; i++) {
                uint64_t kc[HS_MAX_WORDS];
                memcpy(kc, c + W * i, W * sizeof(uint64_t));
                int64_t kd = d[i];
                uint64_t p = i;
                for (; p > 0; p--) {
                    const int cmp = cmp_code(c + W * (p - 1), kc, W);
                    if (cmp < 0 || (cmp == 0 && d[p - 1] <= kd))
                        break;
                    memcpy(c + W * p, c + W * (p - 1), W * sizeof(uint64_t));
                    d[p] = d[p - 1];
                }
                memcpy(c + W * p, kc, W * sizeof(uint64_t));
                d[p] = kd;
            }
            continue;
        }
        if (grow((void **)&tmp, &cap, n * (W + 1), sizeof(uint64_t))) {
            j->oom = 1;
            break;
        }
        for (uint64_t i = 0; i < n; i++) {
            memcpy(tmp + (W + 1) * i, c + W * i, W * sizeof(uint64_t));
            tmp[(W + 1) * i + W] = (uint64_t)d[i];
        }
        int words = W;
        qsort_r(tmp, n, (W + 1) * sizeof(uint64_t), cmp_record, &words);
        for (uint64_t i = 0; i < n; i++) {
            memcpy(c + W * i, tmp + (W + 1) * i, W * sizeof(uint64_t));
            d[i] = (int64_t)tmp[(W + 1) * i + W];
        }
    }
    free(tmp);
}

static void *sort_buckets(void *arg)
{
    sort_job *j = arg;
    if (j->words == 1)
        sort_buckets_w(j, 1);
    else
        sort_buckets_w(j, 4);
    return NULL;
}

/* Sorts (code, id) pairs by code (word 0 first) then id: one counting-sort
 * pass on the top bits of word 0, then a small sort inside each bucket (on
 * two threads). */
int hs_sort_pairs(const uint64_t *codes, const int64_t *ids, uint64_t n, int words, uint64_t *out_codes,
                  int64_t *out_ids)
{
    int B = 1;
    while (B < 20 && (1ull << (B + 4)) < n)
        B++;
    uint64_t nb = 1ull << B;
    uint64_t *starts = calloc(nb + 1, sizeof(uint64_t));
    uint64_t *cursor = malloc(nb * sizeof(uint64_t));
    if (!starts || !cursor) {
        free(starts);
        free(cursor);
        return -1;
    }
    for (uint64_t i = 0; i < n; i++)
        starts[(codes[words * i] >> (64 - B)) + 1]++;
    for (uint64_t b = 0; b < nb; b++)
        starts[b + 1] += starts[b];
    memcpy(cursor, starts, nb * sizeof(uint64_t));
    for (uint64_t i = 0; i < n; i++) {
        uint64_t p = cursor[codes[words * i] >> (64 - B)]++;
        memcpy(out_codes + words * p, codes + words * i, (size_t)words * sizeof(uint64_t));
        out_ids[p] = ids[i];
    }
    free(cursor);
    /* Split the buckets in two halves by entries for two threads. */
    uint64_t mid = 0;
    while (mid < nb && starts[mid] < n / 2)
        mid++;
    sort_job jobs[2] = {{out_codes, out_ids, starts, 0, mid, words, 0},
                        {out_codes, out_ids, starts, mid, nb, words, 0}};
    pthread_t th;
    int threaded = n > 100000 && pthread_create(&th, NULL, sort_buckets, &jobs[1]) == 0;
    sort_buckets(&jobs[0]);
    if (threaded)
        pthread_join(th, NULL);
    else
        sort_buckets(&jobs[1]);
    free(starts);
    return jobs[0].oom || jobs[1].oom ? -1 : 0;
}

uint64_t hs_count_unique(const uint64_t *sorted, uint64_t n, int words)
{
    uint64_t u = n > 0;
    for (uint64_t i = 1; i < n; i++)
        u += cmp_code(sorted + words * i, sorted + words * (i - 1), words) != 0;
    return u;
}

void hs_group(const uint64_t *sorted, uint64_t n, int words, uint64_t *codes, uint32_t *group_start)
{
    uint64_t g = 0;
    for (uint64_t i = 0; i < n; i++) {
        /* against the last code written, so codes may be sorted itself (compacted in place) */
        if (i == 0 || cmp_code(sorted + words * i, codes + words * (g - 1), words) != 0) {
            memmove(codes + words * g, sorted + words * i, (size_t)words * sizeof(uint64_t));
            group_start[g++] = (uint32_t)i;
        }
    }
    group_start[g] = (uint32_t)n;
}

typedef struct {
    const uint64_t *codes;
    uint64_t u;
    int words, bits, shift;
    uint64_t gather[HS_MAX_WORDS];   /* 256-bit codes */
    uint32_t *offsets;
    uint32_t *fps;            /* NULL for 256-bit codes */
    uint32_t *table_groups;   /* NULL for 64-bit table 0: codes are already in its bucket order */
    int oom;
} table_job;

static inline uint32_t job_key(const table_job *j, uint64_t i)
{
    return j->words == 1 ? (uint32_t)((j->codes[i] >> j->shift) & sub_mask(j->bits))
                         : key4(j->codes + 4 * i, j->gather);
}

static void *build_table(void *arg)
{
    table_job *j = arg;
    uint64_t nb = 1ull << j->bits;
    uint32_t *off = j->offsets;
    memset(off, 0, (nb + 1) * sizeof(uint32_t));
    for (uint64_t i = 0; i < j->u; i++)
        off[job_key(j, i) + 1]++;
    for (uint64_t b = 0; b < nb; b++)
        off[b + 1] += off[b];
    if (!j->table_groups) {
        for (uint64_t i = 0; j->fps && i < j->u; i++)
            j->fps[i] = fingerprint(j->codes[i], j->shift, j->bits);
        return NULL;
    }
    uint32_t *cursor = malloc(nb * sizeof(uint32_t));
    if (!cursor) {
        j->oom = 1;
        return NULL;
    }
    memcpy(cursor, off, nb * sizeof(uint32_t));
    for (uint64_t i = 0; i < j->u; i++) {
        uint32_t p = cursor[job_key(j, i)]++;
        if (j->fps)
            j->fps[p] = fingerprint(j->codes[i], j->shift, j->bits);
        j->table_groups[p] = (uint32_t)i;
    }
    free(cursor);
    return NULL;
}

int hs_build_tables(const uint64_t *codes, uint64_t u, int words, int m, const int *bits, const int *shift,
                    uint32_t **offsets, uint32_t **fps, uint32_t **table_groups, int nthreads)
{
    table_job jobs[HS_MAX_TABLES];
    pthread_t th[HS_MAX_TABLES];
    int started[HS_MAX_TABLES] = {0};
    for (int k = 0; k < m; k++) {
        table_job j = {codes, u, words, bits[k], shift[k], {0}, offsets[k], words == 1 ? fps[k] : NULL,
                       k || words != 1 ? table_groups[k] : NULL, 0};
        if (words != 1)
            hs_wide_masks(m, k, j.gather);
        jobs[k] = j;
    }
    /* Tables are independent: run up to nthreads of them at once. */
    int step = nthreads > 0 ? nthreads : 1;
    for (int k0 = 0; k0 < m; k0 += step) {
        int k1 = k0 + step < m ? k0 + step : m;
        for (int k = k0 + 1; k < k1; k++)
            started[k] = pthread_create(&th[k], NULL, build_table, &jobs[k]) == 0;
        build_table(&jobs[k0]);
        for (int k = k0 + 1; k < k1; k++) {
            if (started[k])
                pthread_join(th[k], NULL);
            else
                build_table(&jobs[k]);
        }
    }
    for (int k = 0; k < m; k++)
        if (jobs[k].oom)
            return -1;
    return 0;
}

uint32_t hs_fingerprint(uint64_t code, int shift, int bits) { return fingerprint(code, shift, bits); }

static uint64_t binomial(int n, int k)
{
    if (k < 0 || k > n)
        return 0;
    uint64_t r = 1;
    for (int i = 1; i <= k; i++)
        r = r * (uint64_t)(n - k + i) / (uint64_t)i;
    return r;
}

uint32_t hs_mask_count(int bits, int max_ring)
{
    uint64_t n = 0;
    for (int t = 0; t <= max_ring && t <= bits; t++)
        n += binomial(bits, t);
    return (uint32_t)n;
}

void hs_make_masks(int bits, int max_ring, uint32_t *masks, uint32_t *ring_start)
{
    uint32_t pos = 0;
    for (int t = 0; t <= HS_MAX_RING + 1; t++) {
        ring_start[t] = pos;
        if (t > max_ring || t > bits)
            continue;
        if (t == 0) {
            masks[pos++] = 0;
            continue;
        }
        /* Gosper's hack: every bits-wide word with exactly t bits set. */
        uint64_t v = (1ull << t) - 1, end = 1ull << bits;
        while (v < end) {
            masks[pos++] = (uint32_t)v;
            uint64_t c = v & -v, r = v + c;
            v = (((r ^ v) >> 2) / c) | r;
        }
    }
}

/* ============================ result assembly ============================ */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int append_results(hs_scratch *w, const int64_t *ids, size_t n, int d)
{
    if (grow((void **)&w->ids, &w->cap_res, w->nres + n, sizeof(int64_t)))
        return -1;
    size_t cap = w->cap_res, had = w->nres;
    /* dist grows in step with ids: reallocate it to the same capacity. */
    int32_t *nd = realloc(w->dist, cap * sizeof(int32_t));
    if (!nd)
        return -1;
    w->dist = nd;
    memcpy(w->ids + had, ids, n * sizeof(int64_t));
    for (size_t i = 0; i < n; i++)
        w->dist[had + i] = d;
    w->nres += n;
    return 0;
}

/* Copies up to `need` live ids of hit h (ascending) to w->tmp at *len. */
static int gather_ids(hs_scratch *w, const hs_segment *s, const hs_hit *h, uint64_t need, size_t *len)
{
    uint64_t a, b;
    group_range(s, h->group, &a, &b);
    uint64_t take = b - a < need ? b - a : need;
    if (grow((void **)&w->tmp, &w->cap_tmp, *len + take, sizeof(int64_t)))
        return -1;
    for (uint64_t i = a; i < b && need > 0; i++) {
        if (s->dead && is_dead(s->dead, i))
            continue;
        w->tmp[(*len)++] = s->ids[i];
        need--;
    }
    return 0;
}

/* Appends the results of hits h[0:nh] (one query, distances 0..bits), sorted by
 * (distance, id), at most `limit`. */
static int emit(hs_scratch *w, const hs_segment *const *segs, const hs_hit *h, size_t nh, uint64_t limit, int bits)
{
    size_t start[HS_MAX_BITS + 2];
    memset(start, 0, (size_t)(bits + 2) * sizeof start[0]);
    for (size_t i = 0; i < nh; i++)
        start[h[i].d + 1]++;
    for (int d = 0; d <= bits; d++)
        start[d + 1] += start[d];
    if (grow((void **)&w->sorted, &w->cap_sorted, nh, sizeof(hs_hit)))
        return -1;
    size_t cursor[HS_MAX_BITS + 1];
    memcpy(cursor, start, (size_t)(bits + 1) * sizeof cursor[0]);
    for (size_t i = 0; i < nh; i++)
        w->sorted[cursor[h[i].d]++] = h[i];
    uint64_t need = limit;
    for (int d = 0; d <= bits && need > 0; d++) {
        size_t len = 0;
        for (size_t i = start[d]; i < start[d + 1]; i++)
            if (gather_ids(w, segs[w->sorted[i].seg], &w->sorted[i], need, &len))
                return -1;
        if (start[d + 1] - start[d] > 1)
            qsort(w->tmp, len, sizeof(int64_t), cmp_i64);
        if (len > need)
            len = need;
        if (len && append_results(w, w->tmp, len, d))
            return -1;
        need -= len;
    }
    return 0;
}

/* ================================ planner ================================ */

/* Per-table substring radii for the tight pigeonhole rule: r+1 units spread
 * over m tables, wider tables first; t = -1 means the table is skipped. */
static void split_radius(const hs_segment *s, int r, int *t)
{
    for (int k = 0; k < s->m; k++)
        t[k] = (r + 1) / s->m + (k < (r + 1) % s->m) - 1;
}

static int forced_strategy = HS_STRATEGY_AUTO;

int hs_set_strategy(int strategy)
{
    if (strategy < HS_STRATEGY_AUTO || strategy > HS_STRATEGY_TABLES)
        return -1;
    __atomic_store_n(&forced_strategy, strategy, __ATOMIC_RELAXED);
    return 0;
}

/* Cost of scanning the segment, as the budget the tables must beat. */
static double scan_cost_ns(const hs_segment *s)
{
    switch (__atomic_load_n(&forced_strategy, __ATOMIC_RELAXED)) {
    case HS_STRATEGY_SCAN: return -1;
    case HS_STRATEGY_TABLES: return 1e300;
    }
    return (double)s->n_unique * (s->words == 1 ? HS_SCAN_NS : HS_SCAN_NS4);
}

/* Candidates after which a group of g queries stops probing and scans. */
static uint64_t max_candidates(const hs_segment *s, int g)
{
    double c = scan_cost_ns(s) / (s->words == 1 ? HS_CAND_NS : HS_CAND_NS4) * g;
    return c < 0 ? 0 : c > 1e18 ? UINT64_MAX : (uint64_t)c;
}

/* Sets the per-table radii t for radius r and returns the estimated cost (ns)
 * of probing the tables with them, or -1 when a scan is the better plan. */
static double plan_tables(const hs_segment *s, int r, int *t)
{
    if (s->m == 0)
        return -1;
    split_radius(s, r, t);
    double cost = 0;
    for (int k = 0; k < s->m; k++) {
        if (t[k] > HS_MAX_RING || t[k] > s->bits[k])
            return -1;
        if (t[k] >= 0)
            cost += probe_cost_ns(s, k, s->ring_start[k][t[k] + 1]);
    }
    return cost < scan_cost_ns(s) ? cost : -1;
}

typedef struct {
    const hs_kernels *K;
    const hs_segment *s;
    int segno, r;
    const uint64_t *q;
    uint64_t k, lo, hi;
    hs_scratch w;
    hs_stats st;
} scan_part;

/* Scans codes [lo, hi) of s for one query q (k > 0: k-NN, else radius r). */
static void scan_range(const hs_kernels *K, const hs_segment *s, int segno, const uint64_t *q, int r, uint64_t k,
                       uint64_t lo, uint64_t hi, hs_scratch *w, hs_stats *st)
{
    if (s->words == 1) {
        if (k)
            K->brute_knn(s, segno, *q, k, lo, hi, w, st);
        else
            K->brute_range(s, segno, q, 1, r, lo, hi, w, st);
    } else {
        if (k)
            K->brute_knn4(s, segno, q, k, lo, hi, w, st);
        else
            K->brute_range4(s, segno, q, 1, r, lo, hi, w, st);
    }
}

static void *run_scan_part(void *arg)
{
    scan_part *p = arg;
    scan_range(p->K, p->s, p->segno, p->q, p->r, p->k, p->lo, p->hi, &p->w, &p->st);
    return NULL;
}

/* Scans a whole segment (k > 0: k-NN, else radius r), split over nthreads. */
static void scan_segment(const hs_kernels *K, const hs_segment *s, int segno, const uint64_t *q, int r, uint64_t k,
                         hs_scratch *w, hs_stats *st, int nthreads)
{
    uint64_t u = s->n_unique;
    if (nthreads > HS_MAX_SCAN_THREADS)
        nthreads = HS_MAX_SCAN_THREADS;
    /* a 256-bit code is 4 times the bytes: worth splitting 4 times sooner */
    if (nthreads <= 1 || u * (uint64_t)s->words < HS_PAR_SCAN_MIN) {
        scan_range(K, s, segno, q, r, k, 0, u, w, st);
        return;
    }
    /* Sized by the threads used, not HS_MAX_SCAN_THREADS: a caller's thread may
     * have a small stack (Python's threading.stack_size(32768)). */
    scan_part parts[nthreads];
    pthread_t th[nthreads];
    int started[nthreads];
    memset(started, 0, sizeof started);
    uint64_t step = (u / (uint64_t)nthreads + 7) & ~7ull;
    for (int i = 0; i < nthreads; i++) {
        uint64_t lo = step * (uint64_t)i, hi = i == nthreads - 1 ? u : step * (uint64_t)(i + 1);
        if (lo > u) lo = u;
        if (hi > u) hi = u;
        scan_part p = {K, s, segno, r, q, k, lo, hi, {0}, {0}};
        parts[i] = p;
    }
    for (int i = 1; i < nthreads; i++)
        started[i] = pthread_create(&th[i], NULL, run_scan_part, &parts[i]) == 0;
    run_scan_part(&parts[0]);
    for (int i = 1; i < nthreads; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            run_scan_part(&parts[i]);
    }
    for (int i = 0; i < nthreads; i++) {
        scan_part *p = &parts[i];
        if (p->w.oom || grow((void **)&w->hits, &w->cap_hits, w->nhits + p->w.nhits, sizeof(hs_hit)))
            w->oom = 1;
        else {
            memcpy(w->hits + w->nhits, p->w.hits, p->w.nhits * sizeof(hs_hit));
            w->nhits += p->w.nhits;
        }
        st->scanned += p->st.scanned;
        free(p->w.hits);
    }
}

/* ===================== sharing work with helper threads ===================== */

/* Work is shared out between cores: a big query's probes, or a batch's
 * queries. One core keeps ~HS_PF probes in flight, and at 100M codes that, not
 * the arithmetic, bounds a query. Starting a thread costs 35-220 us on the
 * development VM, more than the query, so helper threads persist: after a job
 * they spin HS_SPIN_NS for the next one (as OpenMP runtimes do) and then
 * sleep. They spin by yielding, so a spinning helper never holds a core that
 * someone else (our caller, or another process) wants, and never join from
 * the caller's core (where a wake-up often puts them): they step to another.
 * The caller claims work itself, and a helper that comes late finds none.
 *
 * A helper that joined a job reads the caller's memory, so the caller waits
 * for it at the end. When other processes (or another library's spinning
 * threads) keep the cores busy, a helper can lose its core mid-job, and the
 * caller then waits out a scheduler slice: milliseconds, for a 20 us query.
 * So whether sharing pays is measured all the time. A gate per kind of job
 * keeps two decayed averages of the time per unit of work (a probe, or a
 * query of a batch): of shared jobs, and of jobs run alone (while sharing,
 * every HS_GATE_CONTROL-th job runs alone to keep that one current). When
 * shared jobs are the slower, the next jobs run alone, twice as many after
 * each loss in a row, then sharing is tried again. */
#define HS_MAX_HELPERS 63
#define HS_SPIN_NS 200000
#define HS_JOIN_SPIN_NS 50000       /* a caller waiting for helpers longer yields its core */
#define HS_SPLIT_CHUNK 64           /* probes claimed at a time */
#define HS_HELPER_KEEP_HITS 65536   /* hit buffer a helper keeps between queries */
#define HS_GATE_CONTROL 16          /* while sharing, one job in this many runs alone */
#define HS_GATE_BACKOFF_MIN 16      /* jobs run alone after a loss, */
#define HS_GATE_BACKOFF_MAX 65536   /* doubling up to this, */
#define HS_GATE_MAX_CLOSED_NS 1000000000   /* or for this long, whichever ends first */
#define HS_GATE_PROVEN 256          /* shared jobs without a loss that reset the backoff */
#define HS_BIG_BATCH_GROUPS 32      /* groups per worker from which a batch always shares */
static int64_t split_min_ns = 20000;   /* estimated cost from which a query is shared */
/* pool.ticket: job generation << 32 | open << 31 | helpers wanted << 8 | joined */
#define TICKET_OPEN (1ull << 31)

/* A job: run(arg, worker) claims and does work until none is left; worker 0
 * is the caller, 1..joined the helpers. */
typedef struct {
    void (*run)(void *arg, int worker);
    void *arg;
} pool_task;

typedef struct {
    double shared_ns, alone_ns;   /* ns per unit of work, decayed averages (0: none yet) */
    uint32_t skip;                /* jobs still to run alone */
    uint64_t closed_at;           /* now_ns() when skip was set */
    uint32_t backoff;             /* jobs to run alone after the next loss */
    uint32_t shared;              /* shared jobs since sharing was (re)started */
    uint32_t decisions;
} share_gate;

enum { GATE_QUERY, GATE_BATCH, GATE_KINDS };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int busy;                       /* a job owns the helpers, and the gates */
    int started;                    /* helper threads running */
    int sleeping;
    uint64_t ticket;
    uint32_t left;                  /* helpers that joined the job and finished */
    const pool_task *task;
    int caller_cpu;                 /* where the job's caller ran when it opened it */
    int64_t helper_stall_ns;        /* tests: see helper_stall() */
    share_gate gate[GATE_KINDS];
    uint64_t counters[HS_SHARE_COUNTERS];
    hs_scratch w[HS_MAX_HELPERS];   /* a query's probes: helper i's hits in w[i - 1] */
    hs_stats st[HS_MAX_HELPERS][HS_GROUP];
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Moves this thread to another core it may run on: the mask without `cpu`
 * forces the move, then the thread gets its own mask back (the scheduler
 * keeps it where it is until it balances otherwise). */
static void move_off_cpu(int cpu)
{
    cpu_set_t mask, other;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof mask, &mask))
        return;
    other = mask;
    CPU_CLR(cpu, &other);
    if (CPU_COUNT(&other) && sched_setaffinity(0, sizeof other, &other) == 0)
        sched_setaffinity(0, sizeof mask, &mask);
}

/* arg: the job generation when the helper was started. Read here instead, it
 * could already be that of the job the helper was started for (the caller
 * opens it at once), which the helper would then skip as one seen. */
static void *helper_main(void *arg)
{
    uint64_t seen = (uintptr_t)arg, moved_for = 0;
    uint64_t idle_since = now_ns();
    for (;;) {
        uint64_t t = __atomic_load_n(&pool.ticket, __ATOMIC_SEQ_CST);
        if ((t >> 32) != seen) {
            /* Join only an open job that wants more helpers; once joined, the
             * caller waits for us, so the job stays valid while we work on it. */
            if ((t & TICKET_OPEN) && (t & 0xff) < ((t >> 8) & 0x7f)) {
                /* Woken onto the caller's core, we would only take its turn:
                 * step off it (once a job), and let the caller run. */
                const int cpu = sched_getcpu();
                if (cpu == __atomic_load_n(&pool.caller_cpu, __ATOMIC_RELAXED)) {
                    if (moved_for != t >> 32)
                        move_off_cpu(cpu);
                    moved_for = t >> 32;
                    sched_yield();
                    continue;
                }
                if (!__atomic_compare_exchange_n(&pool.ticket, &t, t + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
                    continue;
                pool.task->run(pool.task->arg, (int)(t & 0xff) + 1);
                __atomic_add_fetch(&pool.left, 1, __ATOMIC_SEQ_CST);
            }
            seen = t >> 32;
            idle_since = now_ns();
            continue;
        }
        if (now_ns() - idle_since < HS_SPIN_NS) {
            /* Spin by yielding: a helper on a busy core (often the caller's,
             * where a wake-up puts it) must not hold it. */
            sched_yield();
            continue;
        }
        pthread_mutex_lock(&pool.mu);
        __atomic_add_fetch(&pool.sleeping, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&pool.ticket, __ATOMIC_SEQ_CST) >> 32 == seen)
            pthread_cond_wait(&pool.cv, &pool.mu);
        __atomic_sub_fetch(&pool.sleeping, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&pool.mu);
        idle_since = now_ns();
    }
    return NULL;
}

/* Tests: a helper stops this long after claiming its first work, as one
 * that lost its core would. */
static void helper_stall(void)
{
    int64_t ns = __atomic_load_n(&pool.helper_stall_ns, __ATOMIC_RELAXED);
    if (ns) {
        struct timespec ts = {ns / 1000000000, ns % 1000000000};
        nanosleep(&ts, NULL);
    }
}

/* A forked child has none of the parent's threads: start afresh. */
static void pool_after_fork(void)
{
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pool.busy = pool.started = pool.sleeping = 0;
    pool.ticket = 0;
    pool.left = 0;
}

static void pool_register_fork_handler(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

static void pool_release(void) { __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE); }

/* Takes the helpers for one job of gate `kind` and returns how many it may
 * ask for. 0 leaves them free: the job runs alone, and *timed says whether
 * to report its time with gate_alone() (the gate chose alone, not a busy
 * pool). forced shares whatever the gate says. */
static int pool_acquire(int want, int kind, int forced, int *timed)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    *timed = 0;
    if (want <= 0 || __atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE))
        return 0;
    share_gate *g = &pool.gate[kind];
    if (g->skip && now_ns() - g->closed_at > HS_GATE_MAX_CLOSED_NS)
        g->skip = 0;
    if (!forced && (g->skip || !g->alone_ns || ++g->decisions % HS_GATE_CONTROL == 0)) {
        if (g->skip) {
            g->skip--;
            pool.counters[HS_SHARE_GATED]++;
        }
        *timed = 1;
        pool_release();
        return 0;
    }
    pthread_once(&once, pool_register_fork_handler);
    if (want > HS_MAX_HELPERS)
        want = HS_MAX_HELPERS;
    while (pool.started < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* the caller holds the pool: no job opens before pool_run() */
        void *gen = (void *)(uintptr_t)(__atomic_load_n(&pool.ticket, __ATOMIC_SEQ_CST) >> 32);
        int rc = pthread_create(&th, &attr, helper_main, gen);
        pthread_attr_destroy(&attr);
        if (rc)
            break;
        pool.started++;
    }
    if (want > pool.started)
        want = pool.started;
    if (!want)
        pool_release();
    return want;
}

static inline double decayed(double avg, double x) { return avg ? avg + (x - avg) / 8 : x; }

/* Reports a job that ran alone because its gate chose so: ns for items units
 * of work. Dropped when another job holds the gates. */
static void gate_alone(int kind, uint64_t ns, size_t items)
{
    if (!items || __atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE))
        return;
    share_gate *g = &pool.gate[kind];
    /* A job that lost its core once must not make running alone look slow for
     * long (a shared job's delays are what the gate is for, so those count). */
    double x = (double)ns / (double)items;
    if (g->alone_ns && x > 1.5 * g->alone_ns)
        x = 1.5 * g->alone_ns;
    g->alone_ns = decayed(g->alone_ns, x);
    pool_release();
}

/* How one shared job went: how many helpers took part, and its time. */
typedef struct {
    int joined;
    uint64_t total_ns;
} pool_outcome;

/* Scores a shared job of `items` units of work, 0 if it stopped early (the
 * caller holds the pool). */
static void gate_shared(int kind, const pool_outcome *o, size_t items)
{
    share_gate *g = &pool.gate[kind];
    pool.counters[HS_SHARE_JOBS]++;
    pool.counters[HS_SHARE_JOINED] += o->joined > 0;
    if (!items)
        return;
    /* The first job after a (re)start pays for waking the helpers: judge the
     * ones after it, from a fresh average. */
    if (g->shared++ == 0) {
        g->shared_ns = 0;
        return;
    }
    g->shared_ns = decayed(g->shared_ns, (double)o->total_ns / (double)items);
    if (g->shared_ns > g->alone_ns) {
        pool.counters[HS_SHARE_BACKOFFS]++;
        if (g->backoff < HS_GATE_BACKOFF_MIN)
            g->backoff = HS_GATE_BACKOFF_MIN;
        g->skip = g->backoff;
        g->closed_at = now_ns();
        g->backoff = g->backoff < HS_GATE_BACKOFF_MAX / 2 ? 2 * g->backoff : HS_GATE_BACKOFF_MAX;
        g->shared = 0;
    } else if (g->shared == HS_GATE_PROVEN) {
        g->backoff = HS_GATE_BACKOFF_MIN;
    }
}

/* Runs task on the caller and up to `helpers` helpers taken with
 * pool_acquire(). Helpers 1..joined took part; the caller still holds them:
 * read their results, then pool_release(). */
static pool_outcome pool_run(const pool_task *task, int helpers)
{
    const uint64_t t0 = now_ns();
    pool.task = task;
    __atomic_store_n(&pool.caller_cpu, sched_getcpu(), __ATOMIC_RELAXED);
    __atomic_store_n(&pool.left, 0, __ATOMIC_SEQ_CST);
    const uint64_t gen = (__atomic_load_n(&pool.ticket, __ATOMIC_SEQ_CST) >> 32) + 1;
    __atomic_store_n(&pool.ticket, gen << 32 | TICKET_OPEN | (uint64_t)helpers << 8, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool.sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    pool_outcome o;
    task->run(task->arg, 0);
    const uint64_t t1 = now_ns();
    /* Close the job, then wait for the helpers that joined it. One that is
     * this late may be waiting for our core: then yield it. */
    uint64_t tk = __atomic_load_n(&pool.ticket, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(&pool.ticket, &tk, tk & ~TICKET_OPEN, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
        ;
    o.joined = (int)(tk & 0xff);
    while (__atomic_load_n(&pool.left, __ATOMIC_SEQ_CST) < (uint32_t)o.joined) {
        if (now_ns() - t1 < HS_JOIN_SPIN_NS)
            _mm_pause();
        else
            sched_yield();
    }
    o.total_ns = now_ns() - t0;
    return o;
}

int64_t hs_set_split_min_ns(int64_t ns)
{
    return __atomic_exchange_n(&split_min_ns, ns < 0 ? 0 : ns, __ATOMIC_RELAXED);
}

int64_t hs_set_helper_stall_ns(int64_t ns)
{
    return __atomic_exchange_n(&pool.helper_stall_ns, ns < 0 ? 0 : ns, __ATOMIC_RELAXED);
}

void hs_share_counters(uint64_t out[HS_SHARE_COUNTERS], int reset)
{
    while (__atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE))
        sched_yield();
    memcpy(out, pool.counters, sizeof pool.counters);
    if (reset) {
        memset(pool.counters, 0, sizeof pool.counters);
        memset(pool.gate, 0, sizeof pool.gate);
    }
    pool_release();
}

/* ======================= one query on several cores ======================= */

/* The probes of nq queries into w->probes: every key within t[k] of each
 * query's substring, ring by ring. Returns how many, or SIZE_MAX when out of
 * memory (w->oom is set). */
static size_t build_probes(const hs_segment *s, const uint64_t *qs, int nq, const int *t, hs_scratch *w,
                           hs_stats *st)
{
    size_t need = 0, n = 0;
    for (int k = 0; k < s->m; k++)
        if (t[k] >= 0)
            need += s->ring_start[k][t[k] + 1];
    if (grow((void **)&w->probes, &w->cap_probes, need * (size_t)nq + 1, sizeof(hs_probe))) {
        w->oom = 1;
        return SIZE_MAX;
    }
    hs_probe *P = w->probes;
    for (int slot = 0; slot < nq; slot++) {
        for (int k = 0; k < s->m; k++) {
            if (t[k] < 0)
                continue;
            const uint32_t qk = s->words == 1 ? (uint32_t)((qs[slot] >> s->shift[k]) & sub_mask(s->bits[k]))
                                              : key4(qs + 4 * slot, s->gather[k]);
            const uint32_t *mk = s->masks[k];
            for (int ring = 0; ring <= t[k]; ring++) {
                for (uint32_t i = s->ring_start[k][ring], e = s->ring_start[k][ring + 1]; i < e; i++) {
                    hs_probe pr = {qk ^ mk[i], (uint8_t)k, (uint8_t)ring, (uint16_t)slot};
                    P[n++] = pr;
                }
            }
        }
        st[slot].probes += need;
    }
    return n;
}

/* Orders probes P[0, n) by table and the top HS_SORT_BITS bits of their key
 * (one counting-sort pass), so a big group's probes walk each table's bucket
 * bounds and group numbers front to back. Returns the sorted probes (w's
 * second buffer), or P itself when out of memory (any order is exact). */
static const hs_probe *sort_probes(const hs_segment *s, const hs_probe *P, size_t n, hs_scratch *w)
{
    const size_t nb = (size_t)s->m << HS_SORT_BITS;
    if (grow((void **)&w->probes_sorted, &w->cap_probes_sorted, n, sizeof(hs_probe)) ||
        grow((void **)&w->sort_counts, &w->cap_sort_counts, nb + 1, sizeof(uint32_t)))
        return P;
#define HS_SORT_BUCKET(p) (((size_t)(p).table << HS_SORT_BITS) | ((p).key >> (s->bits[(p).table] - HS_SORT_BITS)))
    HS_COUNTING_SORT(P, w->probes_sorted, n, nb, w->sort_counts, HS_SORT_BUCKET);
#undef HS_SORT_BUCKET
    return w->probes_sorted;
}

typedef struct {
    hs_probes_fn probes;            /* the kernel for the segment's code width */
    const hs_segment *s;
    const uint64_t *qs;
    const int *t;
    const hs_probe *P;
    int segno, nq, r;
    size_t n;
    size_t next;                    /* first probe nobody has claimed */
    uint64_t candidates, max_candidates;
    int abort;                      /* over the candidate budget: the caller scans */
    hs_scratch *w;                  /* the caller's */
    hs_stats *st;
} split_job;

static void split_run(void *arg, int worker)
{
    split_job *J = arg;
    hs_scratch *w = J->w;
    hs_stats *st = J->st;
    if (worker) {
        w = &pool.w[worker - 1];
        st = pool.st[worker - 1];
        w->nhits = 0;
        w->oom = 0;
        memset(st, 0, sizeof pool.st[0]);
    }
    size_t done = 0;
    while (!__atomic_load_n(&J->abort, __ATOMIC_RELAXED)) {
        /* Each claim restarts the probe pipeline (~9% slower at 64 probes a
         * claim): until a helper has joined, the caller claims more at once. */
        size_t step = worker || (__atomic_load_n(&pool.ticket, __ATOMIC_RELAXED) & 0xff) ? HS_SPLIT_CHUNK
                                                                                         : 4 * HS_SPLIT_CHUNK;
        size_t a = __atomic_fetch_add(&J->next, step, __ATOMIC_RELAXED);
        if (a >= J->n)
            break;
        if (worker && !done)
            helper_stall();
        size_t b = a + step < J->n ? a + step : J->n;
        uint64_t used = __atomic_load_n(&J->candidates, __ATOMIC_RELAXED), cand = 0;
        uint64_t room = used < J->max_candidates ? J->max_candidates - used : 0;
        int ok = J->probes(J->s, J->segno, J->qs, J->nq, J->r, J->t, J->P + a, b - a, w, st, room, &cand);
        if (!ok || __atomic_add_fetch(&J->candidates, cand, __ATOMIC_RELAXED) > J->max_candidates)
            __atomic_store_n(&J->abort, 1, __ATOMIC_RELAXED);
        done += b - a;
    }
}

/* Probes the tables for nq queries on this thread and up to `helpers` others;
 * cost is plan_tables()'s estimate for one query. Returns 0 when the
 * candidates exceed the budget (the caller scans). */
static int probe_tables(const hs_kernels *K, const hs_segment *s, int segno, const uint64_t *qs, int nq, int r,
                        const int *t, double cost, hs_scratch *w, hs_stats *st, int helpers)
{
    size_t n = build_probes(s, qs, nq, t, w, st);
    if (n == SIZE_MAX)
        return 1;
    const hs_probes_fn probes = s->words == 1 ? K->mih_probes : K->mih_probes4;
    const hs_probe *P = w->probes;
    if (nq > HS_GROUP) {   /* a big group (HS_GROUP4) runs on this thread, in table order */
        P = sort_probes(s, P, n, w);
        helpers = 0;
    }
    split_job J = {probes, s, qs, t, P, segno, nq, r, n, 0, 0, max_candidates(s, nq), 0, w, st};
    const int64_t min_ns = __atomic_load_n(&split_min_ns, __ATOMIC_RELAXED);
    const int chunks = (int)((n + HS_SPLIT_CHUNK - 1) / HS_SPLIT_CHUNK);
    if (helpers > chunks - 1)
        helpers = chunks - 1;
    int timed = 0;
    helpers = cost * nq >= (double)min_ns ? pool_acquire(helpers, GATE_QUERY, min_ns == 0, &timed) : 0;
    if (!helpers) {
        uint64_t cand = 0, t0 = timed ? now_ns() : 0;
        int ok = probes(s, segno, qs, nq, r, t, P, n, w, st, J.max_candidates, &cand);
        if (timed && ok)
            gate_alone(GATE_QUERY, now_ns() - t0, n);
        return ok;
    }
    pool_task task = {split_run, &J};
    const pool_outcome o = pool_run(&task, helpers);
    if (min_ns)
        gate_shared(GATE_QUERY, &o, J.abort ? 0 : n);
    for (int id = 0; id < o.joined; id++) {
        hs_scratch *h = &pool.w[id];
        if (h->oom || grow((void **)&w->hits, &w->cap_hits, w->nhits + h->nhits, sizeof(hs_hit))) {
            w->oom = 1;
        } else {
            memcpy(w->hits + w->nhits, h->hits, h->nhits * sizeof(hs_hit));
            w->nhits += h->nhits;
        }
        for (int slot = 0; slot < nq; slot++)
            st[slot].candidates += pool.st[id][slot].candidates;
        /* Helpers live as long as the process: do not let one odd query's
         * hits stay allocated with them. */
        if (h->cap_hits > HS_HELPER_KEEP_HITS) {
            free(h->hits);
            h->hits = NULL;
            h->cap_hits = 0;
        }
    }
    pool_release();
    return !J.abort;
}

/* Readies w->join for segment s; nonzero when it has no arena (out of
 * memory, or run_batch gave it none): the caller takes groups of HS_GROUP4. */
static int join_reserve(hs_join *J, const hs_segment *s)
{
    /* Fewer records between verifications than the codes have cache lines
     * would read most lines for one candidate each: no better than groups. */
    const int forced = __atomic_load_n(&join_forced_pages, __ATOMIC_RELAXED) != 0;   /* a test's arena */
    if (!J->npages || (!forced && (uint64_t)J->npages * HS_JOIN_PAGE < s->n_unique / 2))
        return -1;
    if (!J->rec) {
        const size_t bytes = (size_t)J->npages * HS_JOIN_PAGE * sizeof(uint32_t);
        void *p = NULL;
        if (posix_memalign(&p, (size_t)1 << 21, bytes))
            return -1;
#ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);   /* its pages are written at random: few TLB entries */
#endif
        uint32_t *next = malloc((size_t)J->npages * sizeof(uint32_t));
        if (!next) {
            free(p);
            return -1;
        }
        J->rec = p;
        J->next = next;
    }
    const size_t np = (size_t)((s->n_unique - 1) >> HS_JOIN_PART_BITS) + 1;
    if (np > J->cap_parts) {
        uint32_t **arr[3] = {&J->head, &J->tail, &J->pos};
        for (int i = 0; i < 3; i++) {
            uint32_t *q = realloc(*arr[i], np * sizeof(uint32_t));
            if (!q)
                return -1;
            *arr[i] = q;
        }
        J->cap_parts = (uint32_t)np;
    }
    J->nparts = (uint32_t)np;
    join_reset(J);
    return 0;
}

static void join_free(hs_join *J)
{
    free(J->rec); free(J->next); free(J->head); free(J->tail); free(J->pos);
    memset(J, 0, sizeof *J);
}

/* Range search of a chunk of g <= HS_JOIN_QUERIES queries qs over 256-bit
 * segment s with tables (per-table radii t) through w->join: the probes of
 * HS_GROUP4 queries at a time collected, then all verified partition by
 * partition (and whenever the arena is full). A group over its candidate
 * budget has its records skipped and its hits from verifications before it
 * gave up dropped: w->join.skip marks it for the caller to scan. Returns
 * nonzero when the join could not start (no arena): the caller searches the
 * chunk in groups of HS_GROUP4. */
static int join_segment(const hs_kernels *K, const hs_segment *s, int segno, const uint64_t *qs, int g, int r,
                        const int *t, hs_scratch *w, hs_stats *st)
{
    hs_join *J = &w->join;
    if (join_reserve(J, s))
        return -1;
    const size_t seg_begin = w->nhits;
    const uint64_t budget = max_candidates(s, HS_GROUP4);
    int skipped = 0;
    memset(J->skip, 0, sizeof J->skip);
    __atomic_add_fetch(&join_counters[0], 1, __ATOMIC_RELAXED);
    for (int a = 0; a < g && !w->oom; a += HS_GROUP4) {
        const int n_q = g - a < HS_GROUP4 ? g - a : HS_GROUP4;
        size_t n = build_probes(s, qs + 4 * a, n_q, t, w, st + a);
        if (n == SIZE_MAX)
            break;
        const hs_probe *P = sort_probes(s, w->probes, n, w);
        uint64_t cand = 0;
        J->base = (uint32_t)a;
        if (!K->join_collect4(s, segno, qs, n_q, r, t, P, n, w, st + a, budget, &cand))
            J->skip[a / HS_GROUP4] = skipped = 1;
    }
    K->join_verify4(s, segno, qs, r, t, w);
    if (skipped) {
        size_t kept = seg_begin;
        for (size_t i = seg_begin; i < w->nhits; i++)
            if (!J->skip[w->hits[i].slot / HS_GROUP4])
                w->hits[kept++] = w->hits[i];
        w->nhits = kept;
    }
    return 0;
}

/* Range search of g queries (at most HS_JOIN_QUERIES); query i's results are
 * appended to w's result buffer at res_start[i], res_count[i] of them. More
 * than HS_GROUP4 queries: a 256-bit batch, joined (join_segment) with each
 * big segment, else searched HS_GROUP4 at a time. */
static int query_range_group(const hs_kernels *K, const hs_segment *const *segs, int nseg, int words,
                             const uint64_t *qs, int g, int r, hs_scratch *w, hs_stats *st, int inner,
                             uint64_t *res_start, int64_t *res_count)
{
    size_t begin = w->nhits;
    for (int si = 0; si < nseg; si++) {
        const hs_segment *s = segs[si];
        int t[HS_MAX_TABLES];
        if (s->n_unique == 0)
            continue;
        double cost = plan_tables(s, r, t);
        const int joined = cost >= 0 && g > HS_GROUP4 &&
                           s->n_unique >= __atomic_load_n(&join_min_codes, __ATOMIC_RELAXED) &&
                           !join_segment(K, s, si, qs, g, r, t, w, st);
        for (int a = 0; a < g; a += HS_GROUP4) {
            const int n_q = g - a < HS_GROUP4 ? g - a : HS_GROUP4;
            const uint64_t *q = qs + (size_t)words * a;
            const size_t from = w->nhits;
            if (joined && !w->join.skip[a / HS_GROUP4])
                continue;   /* verified by the join */
            if (joined)
                __atomic_add_fetch(&join_counters[2], 1, __ATOMIC_RELAXED);
            if (joined || cost < 0 || !probe_tables(K, s, si, q, n_q, r, t, cost, w, st + a, inner - 1)) {
                w->nhits = from;   /* the tables gave up (or were never worth it): scan */
                if (n_q == 1)
                    scan_segment(K, s, si, q, r, 0, w, st + a, inner);
                else if (s->words == 1)
                    K->brute_range(s, si, q, n_q, r, 0, s->n_unique, w, st + a);
                else
                    K->brute_range4(s, si, q, n_q, r, 0, s->n_unique, w, st + a);
            }
            if (a)
                for (size_t i = from; i < w->nhits; i++)
                    w->hits[i].slot += a;
        }
    }
    if (w->oom)
        return -1;
    /* Split the hits by query, keeping their order. */
    size_t nh = w->nhits - begin;
    if (grow((void **)&w->byslot, &w->cap_byslot, nh + 1, sizeof(hs_hit)) ||
        grow((void **)&w->slot_start, &w->cap_slot_start, 2 * (size_t)g + 1, sizeof(size_t)))
        return -1;
    size_t *start = w->slot_start, *cursor = start + g + 1;
    memset(start, 0, ((size_t)g + 1) * sizeof start[0]);
    for (size_t i = begin; i < w->nhits; i++)
        start[w->hits[i].slot + 1]++;
    for (int i = 0; i < g; i++)
        start[i + 1] += start[i];
    memcpy(cursor, start, (size_t)g * sizeof start[0]);
    for (size_t i = begin; i < w->nhits; i++)
        w->byslot[cursor[w->hits[i].slot]++] = w->hits[i];
    w->nhits = begin;
    for (int i = 0; i < g; i++) {
        st[i].hits += start[i + 1] - start[i];
        res_start[i] = w->nres;
        if (emit(w, segs, w->byslot + start[i], start[i + 1] - start[i], HS_UNLIMITED, 64 * words))
            return -1;
        res_count[i] = (int64_t)(w->nres - res_start[i]);
    }
    return 0;
}

static int query_knn_one(const hs_kernels *K, const hs_segment *const *segs, int nseg, int words, const uint64_t *q,
                         uint64_t k, hs_scratch *w, hs_stats *st, int inner)
{
    size_t begin = w->nhits;
    for (int si = 0; si < nseg; si++) {
        const hs_segment *s = segs[si];
        if (s->n_unique == 0)
            continue;
        size_t seg_begin = w->nhits;
        if (s->m > 0 && K->mih_knn(s, si, q, k, w, st, scan_cost_ns(s)))
            continue;
        w->nhits = seg_begin;   /* the planner gave up on the tables: scan instead */
        scan_segment(K, s, si, q, 0, k, w, st, inner);
    }
    st->hits += w->nhits - begin;
    if (w->oom)
        return -1;
    int rc = emit(w, segs, w->hits + begin, w->nhits - begin, k, 64 * words);
    w->nhits = begin;
    return rc;
}

/* ================================ batches ================================ */

typedef struct {
    const hs_kernels *K;
    const hs_segment *const *segs;
    int nseg, words, radius, inner;
    const uint64_t *queries;
    uint64_t nq, k, chunk, group;   /* queries claimed at a time (at most), searched together */
    uint32_t *qthread;
    uint64_t *qstart;
    int64_t *lims;
    int64_t *knn_ids;
    int32_t *knn_dist;
    hs_stats *stats;
    uint64_t next;
    int failed, nworkers;
    /* Per worker, on the caller's stack (batch_workers() of them), not
     * malloc'ed: the first malloc after another library freed many blocks
     * pays for sorting them into glibc's bins, and calloc never takes the
     * thread's cached blocks (measured: a 10M-code query right after a FAISS
     * IndexBinaryMultiHash query 2.0 ms with calloc, 0.46 ms without). */
    hs_scratch *scratch;
} batch_job;

/* Workers of a batch of nq queries on nthreads: one a query at most. */
static int batch_workers(uint64_t nq, int nthreads)
{
    if (nthreads < 1)
        nthreads = 1;
    int nw = nq < (uint64_t)nthreads ? (int)(nq ? nq : 1) : nthreads;
    return nw > HS_MAX_HELPERS + 1 ? HS_MAX_HELPERS + 1 : nw;
}

static void batch_init(batch_job *J, hs_scratch *scratch)
{
    memset(J, 0, sizeof *J);
    J->scratch = scratch;
}

/* Claims the next queries [*i0, return value) of the batch, or none (the
 * same). Joined batches (groups over HS_GROUP4) claim less towards the end,
 * down to HS_JOIN_MIN_CHUNK, so that their workers finish together. */
static uint64_t batch_claim(batch_job *J, uint64_t *i0)
{
    uint64_t a = __atomic_load_n(&J->next, __ATOMIC_RELAXED), step;
    do {
        if (a >= J->nq) {
            *i0 = a;
            return a;
        }
        step = J->chunk;
        if (J->group > HS_GROUP4) {
            const uint64_t share = (J->nq - a) / (2 * (uint64_t)J->nworkers) / HS_GROUP4 * HS_GROUP4;
            const uint64_t least = step < HS_JOIN_MIN_CHUNK ? step : HS_JOIN_MIN_CHUNK;
            step = share < least ? least : share < step ? share : step;
        }
    } while (!__atomic_compare_exchange_n(&J->next, &a, a + step, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    *i0 = a;
    return a + step < J->nq ? a + step : J->nq;
}

static void batch_run(void *arg, int worker)
{
    batch_job *J = arg;
    hs_scratch *w = &J->scratch[worker];
    size_t done = 0;
    if (grow((void **)&w->stats, &w->cap_stats, J->group, sizeof(hs_stats))) {
        __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    hs_stats *st = w->stats;
    for (;;) {
        uint64_t i0, i1 = batch_claim(J, &i0);
        if (i0 >= J->nq || __atomic_load_n(&J->failed, __ATOMIC_RELAXED))
            return;
        if (worker && !done)
            helper_stall();
        done += i1 - i0;
        for (uint64_t i = i0; i < i1; i += J->group) {
            int g = i1 - i < J->group ? (int)(i1 - i) : (int)J->group, rc = 0;
            memset(st, 0, (size_t)g * sizeof st[0]);
            if (J->k) {
                for (int c = 0; c < g && !rc; c++) {
                    w->nres = 0;
                    rc = query_knn_one(J->K, J->segs, J->nseg, J->words, J->queries + (i + c) * J->words, J->k, w,
                                       &st[c], J->inner);
                    int64_t *row_ids = J->knn_ids + (i + c) * J->k;
                    int32_t *row_dist = J->knn_dist + (i + c) * J->k;
                    for (uint64_t x = 0; x < J->k; x++) {
                        row_ids[x] = x < w->nres ? w->ids[x] : -1;
                        row_dist[x] = x < w->nres ? w->dist[x] : -1;
                    }
                }
            } else {
                rc = query_range_group(J->K, J->segs, J->nseg, J->words, J->queries + i * J->words, g, J->radius, w,
                                       st, J->inner, J->qstart + i, J->lims + i + 1);
                for (int c = 0; c < g && !rc; c++)
                    J->qthread[i + c] = (uint32_t)worker;
            }
            if (J->stats)
                memcpy(J->stats + i, st, (size_t)g * sizeof(hs_stats));
            if (rc) {
                __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
                return;
            }
        }
    }
}

static void free_buffers(hs_scratch *w)
{
    free(w->hits); free(w->sorted); free(w->byslot); free(w->probes);
    free(w->probes_sorted); free(w->sort_counts); free(w->cands); free(w->cands_sorted);
    free(w->ids); free(w->dist); free(w->tmp); free(w->slot_start); free(w->stats);
    join_free(&w->join);
    memset(w, 0, sizeof *w);
}

/* Each calling thread keeps its scratch buffers from one search to the next:
 * memory a search gets fresh from the system costs a page fault a page, and
 * on the development VM, after another library had freed memory, those took
 * milliseconds (a 10M-code 256-bit query: 2-6 ms in faults, 0.2 ms of work).
 * Buffers over HS_KEEP_BYTES are given back after each search. */
#define HS_KEEP_BYTES (1u << 20)
static pthread_key_t kept_key;
static int have_kept_key;   /* 0: no key could be made, every search allocates its own */
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;

static void free_kept(void *w)
{
    free_buffers(w);
    free(w);
}

static void make_kept_key(void)
{
    have_kept_key = pthread_key_create(&kept_key, free_kept) == 0;
}

/* Moves this thread's kept buffers into w (zeroed otherwise). */
static void take_kept(hs_scratch *w)
{
    pthread_once(&kept_once, make_kept_key);
    hs_scratch *k = have_kept_key ? pthread_getspecific(kept_key) : NULL;
    if (k) {
        *w = *k;
        memset(k, 0, sizeof *k);
    }
    w->nhits = w->nres = 0;
    w->oom = 0;
}

/* Keeps w's buffers for this thread's next search, each up to HS_KEEP_BYTES. */
static void keep_buffers(hs_scratch *w)
{
    hs_scratch *k = have_kept_key ? pthread_getspecific(kept_key) : NULL;
    if (!k && have_kept_key && (k = calloc(1, sizeof *k)) && pthread_setspecific(kept_key, k)) {
        free(k);
        k = NULL;
    }
    if (!k) {
        free_buffers(w);
        return;
    }
#define HS_KEEP(buf, cap, elem)                      \
    if (w->cap * (elem) > HS_KEEP_BYTES) {           \
        free(w->buf);                                \
        w->buf = NULL;                               \
        w->cap = 0;                                  \
    }
    HS_KEEP(hits, cap_hits, sizeof(hs_hit));
    HS_KEEP(sorted, cap_sorted, sizeof(hs_hit));
    HS_KEEP(byslot, cap_byslot, sizeof(hs_hit));
    HS_KEEP(probes, cap_probes, sizeof(hs_probe));
    HS_KEEP(probes_sorted, cap_probes_sorted, sizeof(hs_probe));
    HS_KEEP(sort_counts, cap_sort_counts, sizeof(uint32_t));
    HS_KEEP(cands, cap_cands, sizeof(hs_cand));
    HS_KEEP(cands_sorted, cap_cands_sorted, sizeof(hs_cand));
    HS_KEEP(tmp, cap_tmp, sizeof(int64_t));
    HS_KEEP(slot_start, cap_slot_start, sizeof(size_t));
    HS_KEEP(stats, cap_stats, sizeof(hs_stats));
    join_free(&w->join);   /* big batches only: their arena is worth its allocation */
    if (w->cap_res * sizeof(int64_t) > HS_KEEP_BYTES) {   /* ids and dist share cap_res */
        free(w->ids);
        free(w->dist);
        w->ids = NULL;
        w->dist = NULL;
        w->cap_res = 0;
    }
#undef HS_KEEP
    *k = *w;
}

/* The batch's scratch: worker 0's (the caller's) buffers are kept, the
 * helpers' freed. */
static void free_scratch(hs_scratch *w, int n)
{
    for (int i = 0; i < n; i++) {
        if (i == 0)
            keep_buffers(&w[0]);
        else
            free_buffers(&w[i]);
    }
}

/* Runs the batch on this thread and up to min(nthreads, nq) - 1 helpers;
 * with fewer queries than threads, each query's scans get the spare threads.
 * Queries are claimed one group at a time, so a helper that loses its core
 * holds back little. J->scratch is left for the caller to read and free
 * (J->nworkers entries). */
static int run_batch(batch_job *J, int nthreads)
{
    if (nthreads < 1)
        nthreads = 1;
    const int nw = batch_workers(J->nq, nthreads);
    J->nworkers = nw;
    J->inner = nthreads / nw;
    J->group = HS_GROUP;
    uint32_t join_pages = 0;
    if (J->words == 4 && !J->k && J->nq >= (uint64_t)nw * HS_GROUP4) {
        /* Big 256-bit batches: chunks of up to HS_JOIN_QUERIES, two a worker
         * at least, joined with big segments (join_segment) while each worker's
         * arena holds a record for each of the segment's cache lines
         * (join_reserve). */
        const uint64_t per = J->nq / (2 * (uint64_t)nw) / HS_GROUP4 * HS_GROUP4;
        J->group = per > HS_JOIN_QUERIES ? HS_JOIN_QUERIES : per > HS_GROUP4 ? per : HS_GROUP4;
        const uint64_t pages = HS_JOIN_MEMORY / sizeof(uint32_t) / HS_JOIN_PAGE / (uint64_t)nw;
        join_pages = pages > HS_JOIN_MAX_PAGES ? HS_JOIN_MAX_PAGES : (uint32_t)pages;
    }
    const uint64_t forced = __atomic_load_n(&join_forced_pages, __ATOMIC_RELAXED);
    if (join_pages && forced)
        join_pages = (uint32_t)forced;
    J->chunk = J->nq < (uint64_t)nw * HS_GROUP ? 1 : J->group;
    J->K = all_kernels[hs_get_isa()];
    memset(J->scratch, 0, (size_t)nw * sizeof(hs_scratch));
    take_kept(&J->scratch[0]);
    for (int i = 0; i < nw; i++)
        J->scratch[i].join.npages = join_pages;
    const int64_t min_ns = __atomic_load_n(&split_min_ns, __ATOMIC_RELAXED);
    /* A big batch hands out its queries a group at a time, so a helper that loses its core
     * holds back one group of many: it always shares, and neither runs alone as the gate's
     * control job (every HS_GATE_CONTROL-th batch on one thread cost (15 + cores) / 16 of
     * the shared time) nor feeds the averages the gate keeps for small batches. */
    const int big = J->nq >= (uint64_t)nw * HS_GROUP * HS_BIG_BATCH_GROUPS;
    int timed = 0;
    const int helpers = pool_acquire(nw - 1, GATE_BATCH, min_ns == 0 || big, &timed);
    if (helpers) {
        pool_task task = {batch_run, J};
        const pool_outcome o = pool_run(&task, helpers);
        if (min_ns)
            gate_shared(GATE_BATCH, &o, J->failed || big ? 0 : J->nq);
        pool_release();
    } else {
        uint64_t t0 = timed ? now_ns() : 0;
        batch_run(J, 0);
        if (timed && !J->failed)
            gate_alone(GATE_BATCH, now_ns() - t0, J->nq);
    }
    return J->failed ? -1 : 0;
}

int hs_range_search(const hs_segment *const *segs, int nseg, int words, const uint64_t *queries, uint64_t nq,
                    int radius, int nthreads, int64_t *lims, int64_t **out_ids, int32_t **out_dist, hs_stats *stats)
{
    batch_job J;
    hs_scratch scratch[batch_workers(nq, nthreads)];
    batch_init(&J, scratch);
    J.segs = segs; J.nseg = nseg; J.words = words; J.queries = queries; J.nq = nq; J.radius = radius;
    J.lims = lims; J.stats = stats;
    J.qthread = malloc((nq + 1) * sizeof(uint32_t));
    J.qstart = malloc((nq + 1) * sizeof(uint64_t));
    *out_ids = NULL;
    *out_dist = NULL;
    int rc = J.qthread && J.qstart ? run_batch(&J, nthreads) : -1;
    if (rc == 0) {
        lims[0] = 0;
        for (uint64_t i = 0; i < nq; i++)
            lims[i + 1] += lims[i];
        uint64_t total = (uint64_t)lims[nq];
        *out_ids = malloc((total ? total : 1) * sizeof(int64_t));
        *out_dist = malloc((total ? total : 1) * sizeof(int32_t));
        if (!*out_ids || !*out_dist) {
            rc = -1;
        } else {
            for (uint64_t i = 0; i < nq; i++) {
                hs_scratch *w = &J.scratch[J.qthread[i]];
                uint64_t n = (uint64_t)(lims[i + 1] - lims[i]);
                memcpy(*out_ids + lims[i], w->ids + J.qstart[i], n * sizeof(int64_t));
                memcpy(*out_dist + lims[i], w->dist + J.qstart[i], n * sizeof(int32_t));
            }
        }
    }
    if (rc) {
        free(*out_ids); free(*out_dist);
        *out_ids = NULL; *out_dist = NULL;
    }
    free_scratch(J.scratch, J.nworkers);
    free(J.qthread);
    free(J.qstart);
    return rc;
}

int hs_knn_search(const hs_segment *const *segs, int nseg, int words, const uint64_t *queries, uint64_t nq, int k,
                  int nthreads, int64_t *out_ids, int32_t *out_dist, hs_stats *stats)
{
    batch_job J;
    hs_scratch scratch[batch_workers(nq, nthreads)];
    batch_init(&J, scratch);
    J.segs = segs; J.nseg = nseg; J.words = words; J.queries = queries; J.nq = nq; J.k = (uint64_t)k;
    J.knn_ids = out_ids; J.knn_dist = out_dist; J.stats = stats;
    int rc = run_batch(&J, nthreads);
    free_scratch(J.scratch, J.nworkers);
    return rc;
}
