/* hashsieve native core: exact Hamming search over 64- or 256-bit codes with
 * multi-index hashing (Norouzi, Punjani, Fleet 2012) and a SIMD brute-force scan.
 *
 * A segment is immutable once built. Its arrays are owned by the caller
 * (numpy arrays or a read-only memory map); this code only reads them.
 *
 * A code is `words` 64-bit words (1, or 4 for 256-bit codes: the 32 bytes of
 * FAISS's binary layout read as four little-endian words); the code width is
 * a parameter of the segment, and the kernels are specialised per width.
 *
 * Layout of one segment of n entries with u distinct codes:
 *   codes[u * words]    distinct codes, ascending (word 0 first). Also table 0's bucket array,
 *                       because table 0's key is the top bits of the code.
 *   group_start[u+1]    entries of distinct code g are ids[group_start[g] ..
 *                       group_start[g+1]); identical codes are stored once, so a
 *                       hash shared by a million entries is one candidate.
 *   ids[n]              ascending inside each group.
 *   dead[(n+7)/8]       tombstone bitmap over entry slots, or NULL.
 *   for each table k (key: bits [shift_k, shift_k + bits_k) of a 64-bit code;
 *   of a 256-bit code the bits at positions k, k + m, k + 2m, ...: see
 *   hs_wide_masks):
 *     offsets[2^bits+1] CSR bucket boundaries,
 *     fps[u]            64-bit codes only: 32-bit fingerprints stored inline,
 *                       bucket by bucket: the code bits just above the key. A
 *                       bucket is verified on them (4 bytes a candidate, 8 per
 *                       SIMD step) and only the few survivors read their full
 *                       code. (At 256 bits and radius 31 a 32-bit fingerprint
 *                       filters nothing: those tables have none, and their
 *                       candidates' codes are prefetched instead.)
 *     table_groups[u]   group number of each slot (64-bit table 0: NULL,
 *                       identity, because its key is the top bits of sorted codes).
 */
#ifndef HASHSIEVE_MIH_H
#define HASHSIEVE_MIH_H

#include <stddef.h>
#include <stdint.h>

#define HS_CODE_BITS 64    /* one word */
#define HS_MAX_WORDS 4
#define HS_MAX_BITS (64 * HS_MAX_WORDS)
#define HS_MAX_TABLES 16
/* Probe rings are enumerated up to this substring radius; beyond it the
 * planner scans instead. */
#define HS_MAX_RING 6

typedef struct {
    int m;                                  /* tables; 0 = brute force only */
    int words;                              /* 64-bit words per code: 1 or 4 */
    int bits[HS_MAX_TABLES];
    int shift[HS_MAX_TABLES];
    uint64_t n_unique;
    uint64_t n_entries;
    const uint64_t *codes;
    const uint32_t *group_start;
    const int64_t *ids;
    const uint8_t *dead;
    const uint32_t *offsets[HS_MAX_TABLES];
    const uint32_t *fps[HS_MAX_TABLES];
    const uint32_t *table_groups[HS_MAX_TABLES];
    /* Probe masks of table k ordered by popcount; ring t is
     * masks[k][ring_start[k][t] .. ring_start[k][t+1]). */
    const uint32_t *masks[HS_MAX_TABLES];
    uint32_t ring_start[HS_MAX_TABLES][HS_MAX_RING + 2];
    /* 256-bit codes: the bits of table k's key in each word (hs_wide_masks) */
    uint64_t gather[HS_MAX_TABLES][HS_MAX_WORDS];
} hs_segment;

/* Per-query cost counters, for checking the cost model. */
typedef struct {
    uint64_t probes;
    uint64_t candidates;
    uint64_t hits;        /* distinct codes within the radius */
    uint64_t scanned;     /* codes read by brute-force scans */
} hs_stats;

/* ---- build ---- */
int hs_choose_tables(uint64_t n_unique, int words, int bits_out[HS_MAX_TABLES], int shift_out[HS_MAX_TABLES]);
/* Codes of `words` words each (n * words words), compared word 0 first. */
int hs_sort_pairs(const uint64_t *codes, const int64_t *ids, uint64_t n, int words,
                  uint64_t *out_codes, int64_t *out_ids);
uint64_t hs_count_unique(const uint64_t *sorted_codes, uint64_t n, int words);
/* codes may be sorted_codes itself: the distinct codes are then compacted in place. */
void hs_group(const uint64_t *sorted_codes, uint64_t n, int words, uint64_t *codes, uint32_t *group_start);
/* Builds every table: offsets and fingerprints, and the group numbers of tables 1..m-1. */
int hs_build_tables(const uint64_t *codes, uint64_t u, int words, int m, const int *bits, const int *shift,
                    uint32_t **offsets, uint32_t **fps, uint32_t **table_groups, int nthreads);
/* Table k's key of a code: bits [shift, shift + bits) of a 64-bit code (mask
 * NULL), or the bits of a 256-bit code under mask (hs_wide_masks). */
uint32_t hs_code_key(const uint64_t *code, int words, int shift, int bits, const uint64_t *mask);
/* Table k of m over 256-bit codes holds the bits at positions k, k + m,
 * k + 2m, ... (position p is bit p % 64 of word 3 - p / 64): its bits in
 * each of the four words. */
void hs_wide_masks(int m, int k, uint64_t mask[HS_MAX_WORDS]);
uint32_t hs_fingerprint(uint64_t code, int shift, int bits);
uint32_t hs_mask_count(int bits, int max_ring);
void hs_make_masks(int bits, int max_ring, uint32_t *masks, uint32_t *ring_start);

/* ---- search ----
 * Range: all live entries with distance <= radius, per query sorted by (distance, id).
 * Every segment's codes and the queries (nq * words words) have `words` words.
 * Results are returned as one CSR block (lims has nq+1 entries); *out_ids and
 * *out_dist are malloc'ed and owned by the caller (free them).
 * kNN: writes nq*k ids and distances, -1 padded, sorted by (distance, id).
 * Both return 0, or -1 when out of memory. stats may be NULL. */
int hs_range_search(const hs_segment *const *segs, int nseg, int words, const uint64_t *queries, uint64_t nq,
                    int radius, int nthreads, int64_t *lims, int64_t **out_ids, int32_t **out_dist,
                    hs_stats *stats);
int hs_knn_search(const hs_segment *const *segs, int nseg, int words, const uint64_t *queries, uint64_t nq,
                  int k, int nthreads, int64_t *out_ids, int32_t *out_dist, hs_stats *stats);

/* ---- planner override, for tests and benchmarks ---- */
enum { HS_STRATEGY_AUTO = 0, HS_STRATEGY_SCAN = 1, HS_STRATEGY_TABLES = 2 };
int hs_set_strategy(int strategy);
/* Estimated single-thread cost (ns) from which one query's probes are shared
 * between threads (default 20000); returns the previous value. 0 shares every
 * query and batch, bypassing the gate that backs off when sharing loses. */
int64_t hs_set_split_min_ns(int64_t ns);
/* Tests: big 256-bit batches join segments of at least min_codes distinct
 * codes (default 2^22) with arenas of `pages` pages of 1024 records a worker
 * (0, the default: sized by the batch, and only for segments it suits);
 * the previous values go to old[2]. */
void hs_set_join(uint64_t min_codes, uint64_t pages, uint64_t old[2]);
/* Tests: chunks joined with a segment, arenas verified, groups over budget
 * scanned instead, since the last reset. */
void hs_join_counters(uint64_t out[3], int reset);
/* Tests: a helper thread stops this long after claiming its first work in
 * a job, as one that lost its core would (0, the default, turns it off).
 * Returns the previous value. */
int64_t hs_set_helper_stall_ns(int64_t ns);
/* Counters of the work sharing since the last reset: jobs shared (and scored
 * by their gate), those a helper joined, jobs run alone while a gate backed
 * off, and backoffs. reset also restarts the gates as in a new process. Waits
 * for a shared job that is running. */
enum { HS_SHARE_JOBS, HS_SHARE_JOINED, HS_SHARE_GATED, HS_SHARE_BACKOFFS, HS_SHARE_COUNTERS };
void hs_share_counters(uint64_t out[HS_SHARE_COUNTERS], int reset);

/* ---- SIMD dispatch ---- */
enum { HS_ISA_GENERIC = 0, HS_ISA_POPCNT = 1, HS_ISA_AVX2 = 2, HS_ISA_AVX512 = 3 };
int hs_isa_supported(int isa);
int hs_get_isa(void);
int hs_set_isa(int isa);   /* -1 if the CPU lacks it */

#endif
