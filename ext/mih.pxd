# Declarations of the C core (mih.h) for _core.pyx.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t

cdef extern from "mih.h" nogil:
    enum: HS_CODE_BITS
    enum: HS_MAX_WORDS
    enum: HS_MAX_TABLES
    enum: HS_MAX_RING
    enum:
        HS_ISA_GENERIC
        HS_ISA_POPCNT
        HS_ISA_AVX2
        HS_ISA_AVX512

    ctypedef struct hs_segment:
        int m
        int words
        int bits[HS_MAX_TABLES]
        int shift[HS_MAX_TABLES]
        uint64_t n_unique
        uint64_t n_entries
        const uint64_t *codes
        const uint32_t *group_start
        const int64_t *ids
        const uint8_t *dead
        const uint32_t *offsets[HS_MAX_TABLES]
        const uint32_t *fps[HS_MAX_TABLES]
        const uint32_t *table_groups[HS_MAX_TABLES]
        const uint32_t *masks[HS_MAX_TABLES]
        uint32_t ring_start[HS_MAX_TABLES][HS_MAX_RING + 2]
        uint64_t gather[HS_MAX_TABLES][HS_MAX_WORDS]

    ctypedef struct hs_stats:
        uint64_t probes
        uint64_t candidates
        uint64_t hits
        uint64_t scanned

    int hs_choose_tables(uint64_t n_unique, int words, int *bits_out, int *shift_out)
    int hs_sort_pairs(const uint64_t *codes, const int64_t *ids, uint64_t n, int words,
                      uint64_t *out_codes, int64_t *out_ids)
    uint64_t hs_count_unique(const uint64_t *sorted_codes, uint64_t n, int words)
    void hs_group(const uint64_t *sorted_codes, uint64_t n, int words, uint64_t *codes, uint32_t *group_start)
    int hs_build_tables(const uint64_t *codes, uint64_t u, int words, int m, const int *bits, const int *shift,
                        uint32_t **offsets, uint32_t **fps, uint32_t **table_groups, int nthreads)
    uint32_t hs_code_key(const uint64_t *code, int words, int shift, int bits, const uint64_t *mask)
    void hs_wide_masks(int m, int k, uint64_t *mask)
    uint32_t hs_fingerprint(uint64_t code, int shift, int bits)
    uint32_t hs_mask_count(int bits, int max_ring)
    void hs_make_masks(int bits, int max_ring, uint32_t *masks, uint32_t *ring_start)

    int hs_range_search(const hs_segment *const *segs, int nseg, int words, const uint64_t *queries, uint64_t nq,
                        int radius, int nthreads, int64_t *lims, int64_t **out_ids, int32_t **out_dist,
                        hs_stats *stats)
    int hs_knn_search(const hs_segment *const *segs, int nseg, int words, const uint64_t *queries, uint64_t nq,
                      int k, int nthreads, int64_t *out_ids, int32_t *out_dist, hs_stats *stats)

    enum:
        HS_STRATEGY_AUTO
        HS_STRATEGY_SCAN
        HS_STRATEGY_TABLES
    int hs_set_strategy(int strategy)
    int64_t hs_set_split_min_ns(int64_t ns)
    int64_t hs_set_helper_stall_ns(int64_t ns)
    void hs_set_join(uint64_t min_codes, uint64_t pages, uint64_t *old)
    void hs_join_counters(uint64_t *out, int reset)
    enum: HS_SHARE_COUNTERS
    void hs_share_counters(uint64_t *out, int reset)

    int hs_isa_supported(int isa)
    int hs_get_isa()
    int hs_set_isa(int isa)
