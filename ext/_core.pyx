# Thin wrapper over the C core: builds segments from numpy arrays and runs
# batched searches with the GIL released. Inputs are validated by the caller
# (hashsieve.index); this module trusts dtypes and shapes it is given.
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc

from mih cimport *

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #define HS_PREFETCH(p) __builtin_prefetch(p)
    """
    void HS_PREFETCH(const void *p) nogil

# group_start holds entry positions as uint32, so a segment holds at most this many entries.
MAX_SEGMENT_ENTRIES = 0xFFFFFFFF
# Segments searched together, at most (a hit records its segment in a byte).
MAX_SEGMENTS = 255
# Widest table key a segment may have (offsets of 2^24 + 1 entries); the builder makes at most 22 bits.
MAX_TABLE_BITS = 24
# The checks below read codes[table_groups[j]] and ids[order[i]] this many slots ahead.
cdef enum:
    PREFETCH_AHEAD = 16

ISA_NAMES = ("generic", "popcnt", "avx2", "avx512")

# Probe masks depend only on the substring width: computed once per width.
_mask_cache = {}


def _masks_for(int bits):
    cached = _mask_cache.get(bits)
    if cached is None:
        masks = np.empty(max(hs_mask_count(bits, HS_MAX_RING), 1), dtype=np.uint32)
        ring_start = np.zeros(HS_MAX_RING + 2, dtype=np.uint32)
        hs_make_masks(bits, HS_MAX_RING, <uint32_t *>cnp.PyArray_DATA(masks),
                      <uint32_t *>cnp.PyArray_DATA(ring_start))
        cached = _mask_cache[bits] = (masks, ring_start)
    return cached


def _array(a, dtype, length, name, words=None):
    """len(a) after checking that a is a C-contiguous 1-d array of dtype (and of length, unless None);
    words=4: a 2-d array (length, 4)."""
    if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous
            and (a.ndim == 1 if words in (None, 1) else a.ndim == 2 and a.shape[1] == words)
            and (length is None or a.shape[0] == length)):
        shape = f"({'n' if length is None else length},{'' if words in (None, 1) else f' {words}'})"
        raise ValueError(f"segment array {name} must be C-contiguous {np.dtype(dtype)} of shape {shape}, "
                         f"got {a!r:.80}")
    return a.shape[0]


def code_words(codes):
    """64-bit words per code of a segment's codes array: 1 for uint64 (u,), 4 for uint64 (u, 4)."""
    return 1 if codes.ndim == 1 else codes.shape[1]


cdef void *_ptr(object a):
    return cnp.PyArray_DATA(a) if a is not None else NULL


cdef class Segment:
    """An immutable block of the index: distinct codes, their ids and the MIH tables.

    codes: uint64 (u,) for 64-bit codes, or uint64 (u, 4) for 256-bit ones (each row the 32 bytes of
    the code read as four little-endian words), ascending by row.
    Holds the numpy arrays (which may be views of a memory map) that the C
    struct points into, so the struct stays valid as long as this object lives.
    """
    cdef hs_segment seg
    cdef readonly object codes, group_start, ids, dead
    cdef readonly tuple bits, offsets, fps, table_groups
    cdef object _masks

    def __init__(self, codes, group_start, ids, bits, offsets, fps, table_groups, dead=None):
        cdef int k, shift, words
        self.codes, self.group_start, self.ids, self.dead = codes, group_start, ids, dead
        self.bits, self.offsets = tuple(bits), tuple(offsets)
        self.fps, self.table_groups = tuple(fps), tuple(table_groups)
        self._check_arrays()
        self.seg.m = len(self.bits)
        self.seg.words = words = code_words(codes)
        shift = 64 * self.seg.words
        self.seg.n_unique = codes.shape[0]
        self.seg.n_entries = ids.shape[0]
        self.seg.codes = <const uint64_t *>_ptr(codes)
        self.seg.group_start = <const uint32_t *>_ptr(group_start)
        self.seg.ids = <const int64_t *>_ptr(ids)
        self.seg.dead = <const uint8_t *>_ptr(dead)
        self._masks = []
        for k in range(self.seg.m):
            shift -= self.bits[k]
            self.seg.bits[k] = self.bits[k]
            self.seg.shift[k] = shift
            self.seg.offsets[k] = <const uint32_t *>_ptr(self.offsets[k])
            self.seg.fps[k] = <const uint32_t *>_ptr(self.fps[k] if self.fps else None)
            self.seg.table_groups[k] = <const uint32_t *>_ptr(self.table_groups[k] if k or words != 1 else None)
            if words != 1:
                hs_wide_masks(self.seg.m, k, self.seg.gather[k])
            masks, ring_start = _masks_for(self.bits[k])
            self._masks.append(masks)
            self.seg.masks[k] = <const uint32_t *>_ptr(masks)
            for t in range(HS_MAX_RING + 2):
                self.seg.ring_start[k][t] = ring_start[t]

    def _check_arrays(self):
        """The C struct points into these arrays: each must have the dtype, length and layout it reads."""
        words = code_words(self.codes) if isinstance(self.codes, np.ndarray) else 1
        if words not in (1, 4):
            raise ValueError(f"segment codes must have 1 or 4 64-bit words each, got {words}")
        u, n, m = _array(self.codes, np.uint64, None, "codes", words), _array(self.ids, np.int64, None, "ids"), len(self.bits)
        _array(self.group_start, np.uint32, u + 1, "group_start")
        if self.dead is not None:
            _array(self.dead, np.uint8, (n + 7) // 8, "dead")
        if n > MAX_SEGMENT_ENTRIES:
            raise ValueError(f"a segment holds at most {MAX_SEGMENT_ENTRIES} entries, got {n}")
        # 64-bit tables have fingerprints, 256-bit ones none (see mih.h)
        if (m > HS_MAX_TABLES or (m and sum(self.bits) != 64 * words)
                or not all(1 <= b <= MAX_TABLE_BITS for b in self.bits)
                or not len(self.offsets) == len(self.table_groups) == m
                or len(self.fps) != (m if words == 1 else 0)):
            raise ValueError(f"invalid table split {self.bits} with {len(self.offsets)} offsets, {len(self.fps)} "
                             f"fingerprints and {len(self.table_groups)} group arrays")
        for k in range(m):
            _array(self.offsets[k], np.uint32, (1 << self.bits[k]) + 1, f"offsets[{k}]")
            if words == 1:
                _array(self.fps[k], np.uint32, u, f"fps[{k}]")
            if k == 0 and words == 1 and self.table_groups[0] is not None:
                raise ValueError("table_groups[0] must be None: table 0 is in code order")
            if k or words != 1:
                _array(self.table_groups[k], np.uint32, u, f"table_groups[{k}]")

    def __len__(self):
        return self.seg.n_entries

    @property
    def n_unique(self):
        return self.seg.n_unique

    @property
    def code_bits(self):
        return 64 * self.seg.words

    def with_dead(self, dead):
        """A segment sharing these arrays with another tombstone bitmap (or None)."""
        return Segment(self.codes, self.group_start, self.ids, self.bits, self.offsets,
                       self.fps, self.table_groups, dead)

    def nbytes(self):
        arrays = [self.codes, self.group_start, self.ids, self.dead]
        arrays += list(self.offsets) + list(self.fps) + list(self.table_groups)
        return sum(a.nbytes for a in arrays if a is not None)


def choose_tables(uint64_t n_unique, int bits=64):
    """The substring widths (widest first, from the code's top bits) the builder gives a segment of
    n_unique distinct bits-bit codes; () when it is scanned by brute force instead."""
    cdef int widths[HS_MAX_TABLES]
    cdef int shift[HS_MAX_TABLES]
    cdef int m = hs_choose_tables(n_unique, bits // 64, widths, shift)
    return tuple(widths[k] for k in range(m))


def build_segment(cnp.ndarray codes, cnp.ndarray ids, int nthreads=1):
    """Segment from uint64 codes (n,) or (n, 4) (256-bit) and int64 ids (n,), all C-contiguous;
    n <= MAX_SEGMENT_ENTRIES. Sorted by (code, id) (word 0 first), identical codes grouped, and the
    tables the cost model chooses (none for a small segment); 256-bit tables have no fingerprints."""
    if codes.shape[0] > MAX_SEGMENT_ENTRIES:
        raise ValueError(f"a segment holds at most {MAX_SEGMENT_ENTRIES} entries (2**32-1: entry positions are "
                         f"32-bit), this one would hold {codes.shape[0]}; split the hashes over several indexes")
    if ids.shape[0] != codes.shape[0]:
        raise ValueError(f"{codes.shape[0]} codes but {ids.shape[0]} ids")
    cdef int words = code_words(codes)
    cdef uint64_t n = codes.shape[0], u
    cdef int m, k, rc
    cdef int bits[HS_MAX_TABLES]
    cdef int shift[HS_MAX_TABLES]
    cdef uint32_t *offsets[HS_MAX_TABLES]
    cdef uint32_t *fps[HS_MAX_TABLES]
    cdef uint32_t *table_groups[HS_MAX_TABLES]
    cdef cnp.ndarray sorted_codes = np.empty_like(codes)
    cdef cnp.ndarray sorted_ids = np.empty(n, dtype=np.int64)
    with nogil:
        rc = hs_sort_pairs(<uint64_t *>cnp.PyArray_DATA(codes), <int64_t *>cnp.PyArray_DATA(ids), n, words,
                           <uint64_t *>cnp.PyArray_DATA(sorted_codes), <int64_t *>cnp.PyArray_DATA(sorted_ids))
        u = hs_count_unique(<uint64_t *>cnp.PyArray_DATA(sorted_codes), n, words)
    if rc:
        raise MemoryError("out of memory while sorting the codes")
    cdef cnp.ndarray group_start = np.empty(u + 1, dtype=np.uint32)
    with nogil:   # the distinct codes, compacted in place
        hs_group(<uint64_t *>cnp.PyArray_DATA(sorted_codes), n, words,
                 <uint64_t *>cnp.PyArray_DATA(sorted_codes), <uint32_t *>cnp.PyArray_DATA(group_start))
    cdef cnp.ndarray ucodes = sorted_codes if u == n else sorted_codes[:u].copy()
    del sorted_codes
    m = hs_choose_tables(u, words, bits, shift)
    offs, tfps, tgroups = [], [], []
    for k in range(m):
        offs.append(np.empty((1 << bits[k]) + 1, dtype=np.uint32))
        offsets[k] = <uint32_t *>cnp.PyArray_DATA(offs[k])
        fps[k] = table_groups[k] = NULL
        if words == 1:
            tfps.append(np.empty(u, dtype=np.uint32))
            fps[k] = <uint32_t *>cnp.PyArray_DATA(tfps[k])
        # 64-bit table 0's key is the top bits of the sorted codes: its slots are in code order
        tgroups.append(None if k == 0 and words == 1 else np.empty(u, dtype=np.uint32))
        if tgroups[k] is not None:
            table_groups[k] = <uint32_t *>cnp.PyArray_DATA(tgroups[k])
    with nogil:
        rc = hs_build_tables(<uint64_t *>cnp.PyArray_DATA(ucodes), u, words, m, bits, shift,
                             offsets, fps, table_groups, nthreads)
    if rc:
        raise MemoryError("out of memory while building the tables")
    return Segment(ucodes, group_start, sorted_ids, [bits[k] for k in range(m)], offs, tfps, tgroups)


# ---------------------------------------------------------------- checks of loaded segments
# Each returns None or (what is wrong, position); the storage layer names the file and segment.

cdef inline bint _code_greater(const uint64_t *c, uint64_t g, int words) noexcept nogil:
    """Code g > code g - 1, comparing word 0 first."""
    cdef int w
    for w in range(words):
        if c[g * words + w] != c[(g - 1) * words + w]:
            return c[g * words + w] > c[(g - 1) * words + w]
    return False


def check_entries(cnp.ndarray codes, cnp.ndarray group_start, cnp.ndarray ids):
    """Entry invariants of a segment: codes uint64 (u,) or (u, w) strictly ascending (by row, word 0
    first), group_start uint32 (u+1,) strictly ascending from 0 to n, ids int64 (n,) >= 0 and strictly
    ascending inside each group."""
    cdef uint64_t u = codes.shape[0], n = ids.shape[0], g, i, a, b
    cdef int words = code_words(codes)
    cdef const uint64_t *c = <const uint64_t *>cnp.PyArray_DATA(codes)
    cdef const uint32_t *gs = <const uint32_t *>cnp.PyArray_DATA(group_start)
    cdef const int64_t *d = <const int64_t *>cnp.PyArray_DATA(ids)
    cdef int problem = 0
    if group_start.shape[0] != u + 1:
        return ("group bounds have the wrong length", 0)
    with nogil:
        if gs[0] != 0 or gs[u] != n:
            problem, g = 1, 0
        else:
            for g in range(u):
                if g and not _code_greater(c, g, words):
                    problem = 2
                    break
                a, b = gs[g], gs[g + 1]
                if b <= a or b > n:
                    problem = 3
                    break
                if d[a] < 0:
                    problem = 4
                    break
                for i in range(a + 1, b):
                    if d[i] <= d[i - 1]:
                        problem = 5
                        break
                if problem:
                    break
    if problem == 0:
        return None
    return (("group bounds do not span the entries", "codes are not strictly ascending",
             "groups are not ascending or some are empty", "negative ids",
             "ids are not ascending inside a group")[problem - 1], g)


def check_id_order(cnp.ndarray ids, cnp.ndarray order):
    """ids int64 (n,), order int64 (n,): order is the permutation of 0..n-1 that sorts ids, and no id repeats."""
    cdef uint64_t n = ids.shape[0], i, o, prev = 0
    cdef const int64_t *d = <const int64_t *>cnp.PyArray_DATA(ids)
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(order)
    cdef int problem = 0
    if order.shape[0] != n:
        return ("id order has the wrong length", 0)
    with nogil:
        for i in range(n):
            if i + PREFETCH_AHEAD < n and <uint64_t>p[i + PREFETCH_AHEAD] < n:
                HS_PREFETCH(d + p[i + PREFETCH_AHEAD])
            o = <uint64_t>p[i]                 # a negative position becomes huge: out of range
            if o >= n:
                problem = 1
                break
            if i and d[o] <= d[prev]:
                problem = 2
                break
            prev = o
    if problem == 0:
        return None
    return (("id order points outside the segment", "id order does not sort the ids, or ids repeat")[problem - 1], i)


def check_table(cnp.ndarray codes, cnp.ndarray offsets, fps, table_groups, int shift, int bits, int k=0, int m=0):
    """Table invariants: offsets uint32 (2^bits+1,) ascending from 0 to u; its slots hold every code of
    codes uint64 (u,) or (u, 4) exactly once (table_groups uint32 (u,), or None for table 0: slot j is
    code j), each in the bucket of its key (bits [shift, shift+bits); 256-bit codes: table k of m, see
    hs_wide_masks) and with its fingerprint in fps uint32 (u,) (None for 256-bit codes, whose tables have none).

    The builder fills each bucket in code order, so group numbers ascend inside a bucket: with every
    group in the bucket of its own key, that proves each of the u slots names a different group."""
    cdef uint64_t u = codes.shape[0], nb = (<uint64_t>1) << bits, b, j = 0, g = 0, lo, hi
    cdef int words = code_words(codes)
    cdef uint64_t gather[HS_MAX_WORDS]
    if words != 1:
        hs_wide_masks(m, k, gather)
    cdef const uint64_t *c = <const uint64_t *>cnp.PyArray_DATA(codes)
    cdef const uint32_t *off = <const uint32_t *>cnp.PyArray_DATA(offsets)
    cdef const uint32_t *fp = <const uint32_t *>_ptr(fps)
    cdef const uint32_t *tg = <const uint32_t *>_ptr(table_groups)
    cdef int problem = 0
    if (offsets.shape[0] != nb + 1 or (fp == NULL) != (words != 1) or (fp != NULL and fps.shape[0] != u)
            or (tg != NULL and table_groups.shape[0] != u)):
        return ("table arrays have the wrong length", 0)
    with nogil:
        if off[0] != 0 or off[nb] != u:
            problem = 1
        for b in range(nb):
            if problem:
                break
            lo, hi = off[b], off[b + 1]
            if hi < lo or hi > u:
                problem = 1
                break
            for j in range(lo, hi):
                if tg != NULL:
                    if j + PREFETCH_AHEAD < u and tg[j + PREFETCH_AHEAD] < u:
                        HS_PREFETCH(c + words * tg[j + PREFETCH_AHEAD])
                    if tg[j] >= u:
                        problem = 2
                        break
                    if j > lo and tg[j] <= g:
                        problem = 3
                        break
                    g = tg[j]
                else:
                    g = j
                if hs_code_key(c + words * g, words, shift, bits, gather) != b:
                    problem = 4
                    break
                if fp != NULL and fp[j] != hs_fingerprint(c[g], shift, bits):
                    problem = 5
                    break
    if problem == 0:
        return None
    return (("bucket boundaries are not ascending from 0 to the number of codes", "points past the last code",
             "holds a code twice, or a bucket out of code order", "holds a code outside its bucket",
             "fingerprints do not match the segment's codes")[problem - 1], j)


def find_ids(cnp.ndarray ids, cnp.ndarray order, cnp.ndarray keys):
    """Slots (int64 (len(keys),)) of keys int64 in ids int64 (n,), -1 where absent; order int64 (n,)
    sorts ids (a position out of range reads as absent). Sorted keys read memory in order."""
    cdef uint64_t n = ids.shape[0], nk = keys.shape[0], i, lo, hi, mid, o
    cdef const int64_t *d = <const int64_t *>cnp.PyArray_DATA(ids)
    cdef const int64_t *p = <const int64_t *>cnp.PyArray_DATA(order)
    cdef const int64_t *k = <const int64_t *>cnp.PyArray_DATA(keys)
    cdef cnp.ndarray out = np.empty(nk, dtype=np.int64)
    cdef int64_t *slots = <int64_t *>cnp.PyArray_DATA(out)
    cdef int64_t key
    with nogil:
        for i in range(nk):
            key, lo, hi = k[i], 0, n        # the first position whose id >= key is in [lo, hi]
            while lo < hi:
                mid = lo + (hi - lo) // 2
                o = <uint64_t>p[mid]
                if o < n and d[o] < key:
                    lo = mid + 1
                else:
                    hi = mid
            o = <uint64_t>p[lo] if lo < n else n
            slots[i] = <int64_t>o if o < n and d[o] == key else -1
    return out


def first_repeat_dense(cnp.ndarray ids, int64_t lo, int64_t hi):
    """Position of the first id of ids int64 (n,) that repeats an earlier one, or -1;
    every id is in [lo, hi], a bitmap of hi - lo + 1 bits marks those seen."""
    cdef uint64_t n = ids.shape[0], i, v
    cdef const int64_t *d = <const int64_t *>cnp.PyArray_DATA(ids)
    cdef uint8_t *seen = <uint8_t *>calloc(<uint64_t>(hi - lo) // 8 + 1, 1)
    cdef int64_t found = -1
    if seen == NULL:
        raise MemoryError("out of memory while checking ids")
    with nogil:
        for i in range(n):
            v = <uint64_t>(d[i] - lo)
            if (seen[v >> 3] >> (v & 7)) & 1:
                found = <int64_t>i
                break
            seen[v >> 3] |= <uint8_t>(1 << (v & 7))
    free(seen)
    return found


cdef class _MallocBuffer:
    """Owns a malloc'ed result buffer handed to numpy without a copy."""
    cdef void *ptr

    def __dealloc__(self):
        free(self.ptr)


cdef cnp.ndarray _adopt(void *ptr, cnp.npy_intp n, int typenum):
    cdef _MallocBuffer owner = _MallocBuffer()
    owner.ptr = ptr
    cdef cnp.ndarray arr = cnp.PyArray_SimpleNewFromData(1, &n, typenum, ptr)
    cnp.Py_INCREF(owner)
    cnp.PyArray_SetBaseObject(arr, owner)
    return arr


cdef class SegmentList:
    """The C view of a tuple of segments, made once per index version."""
    cdef const hs_segment **ptrs
    cdef int n
    cdef readonly int words
    cdef list keep

    def __cinit__(self, segments, int bits=64):
        cdef Segment s
        self.keep = list(segments)
        self.n = len(self.keep)
        self.words = bits // 64
        if bits not in (64, 256) or any(seg.code_bits != bits for seg in self.keep):
            raise ValueError(f"segments of {[s.code_bits for s in self.keep]}-bit codes in a {bits}-bit index")
        if self.n > MAX_SEGMENTS:
            raise ValueError(f"at most {MAX_SEGMENTS} segments are searched together, got {self.n}")
        self.ptrs = <const hs_segment **>malloc(max(self.n, 1) * sizeof(hs_segment *))
        if self.ptrs == NULL:
            raise MemoryError()
        for i, s in enumerate(self.keep):
            self.ptrs[i] = &s.seg

    def __dealloc__(self):
        free(self.ptrs)

    @property
    def segments(self):
        return tuple(self.keep)


def _stats_array(n):
    return np.zeros((n, 4), dtype=np.uint64)


cdef inline _check_queries(SegmentList segs, cnp.ndarray queries):
    """The C core reads nq * words words: refuse anything else (C-level checks, no cost to a query)."""
    cdef int ndim = cnp.PyArray_NDIM(queries)
    if (cnp.PyArray_TYPE(queries) != cnp.NPY_UINT64 or not cnp.PyArray_IS_C_CONTIGUOUS(queries)
            or ndim != (1 if segs.words == 1 else 2) or (ndim == 2 and queries.shape[1] != segs.words)):
        raise ValueError(f"queries must be C-contiguous uint64 with {segs.words} word(s) a code, got {queries!r:.80}")


def range_search(SegmentList segs, cnp.ndarray queries, int radius, int nthreads=1, bint with_stats=False):
    """(lims int64 (nq+1,), distances int32, ids int64[, stats uint64 (nq, 4)]); queries uint64 (nq,),
    or (nq, 4) for 256-bit codes."""
    _check_queries(segs, queries)
    cdef uint64_t nq = queries.shape[0]
    cdef cnp.ndarray lims = np.zeros(nq + 1, dtype=np.int64)
    cdef cnp.ndarray stats = _stats_array(nq) if with_stats else None
    cdef int64_t *ids = NULL
    cdef int32_t *dist = NULL
    cdef hs_stats *st = <hs_stats *>_ptr(stats)
    cdef int rc
    with nogil:
        rc = hs_range_search(segs.ptrs, segs.n, segs.words, <const uint64_t *>cnp.PyArray_DATA(queries), nq, radius,
                             nthreads, <int64_t *>cnp.PyArray_DATA(lims), &ids, &dist,
                             st)
    if rc:
        raise MemoryError("out of memory while collecting search results")
    total = lims[nq]
    out = (lims, _adopt(dist, total, cnp.NPY_INT32), _adopt(ids, total, cnp.NPY_INT64))
    return out + (stats,) if with_stats else out


def knn_search(SegmentList segs, cnp.ndarray queries, int k, int nthreads=1, bint with_stats=False):
    """(distances int32 (nq, k), ids int64 (nq, k)[, stats]), -1 padded."""
    _check_queries(segs, queries)
    cdef uint64_t nq = queries.shape[0]
    cdef cnp.ndarray dist = np.empty((nq, k), dtype=np.int32)
    cdef cnp.ndarray ids = np.empty((nq, k), dtype=np.int64)
    cdef cnp.ndarray stats = _stats_array(nq) if with_stats else None
    cdef hs_stats *st = <hs_stats *>_ptr(stats)
    cdef int rc
    with nogil:
        rc = hs_knn_search(segs.ptrs, segs.n, segs.words, <const uint64_t *>cnp.PyArray_DATA(queries), nq, k, nthreads,
                           <int64_t *>cnp.PyArray_DATA(ids), <int32_t *>cnp.PyArray_DATA(dist),
                           st)
    if rc:
        raise MemoryError("out of memory while collecting search results")
    return (dist, ids, stats) if with_stats else (dist, ids)


def supported_isas():
    """Instruction sets this CPU can run, slowest first."""
    return tuple(name for i, name in enumerate(ISA_NAMES) if hs_isa_supported(i))


def get_isa():
    """The popcount kernel in use: "avx512" (VPOPCNTDQ), "avx2", "popcnt" or "generic".

    Chosen at import as the fastest this CPU runs (one build runs everywhere); set_isa() forces one.
    """
    return ISA_NAMES[hs_get_isa()]


def set_isa(name):
    """Force a kernel ("generic", "popcnt", "avx2", "avx512"); for tests and benchmarks."""
    if name not in ISA_NAMES:
        raise ValueError(f"isa must be one of {ISA_NAMES}, got {name!r}")
    if hs_set_isa(ISA_NAMES.index(name)):
        raise ValueError(f"this CPU cannot run the {name} kernel; supported: {supported_isas()}")


STRATEGIES = ("auto", "scan", "tables")


def set_strategy(name):
    """Override the planner for every segment: "auto", "scan" (brute force) or "tables" (MIH).

    For tests and benchmarks, which check that both paths give identical results.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    hs_set_strategy(STRATEGIES.index(name))


def set_split_min_ns(ns):
    """Estimated single-thread cost (ns) from which one query's table probes are
    shared between threads; returns the previous value.  0 shares every query
    and batch whatever the gate that backs off from losing sharing says: for
    tests, which check that shared and unshared queries agree."""
    return hs_set_split_min_ns(int(ns))


def set_join(min_codes, pages):
    """Big 256-bit batches join their candidates with segments of at least min_codes distinct
    codes, through arenas of `pages` pages of 1024 records a worker (0: sized by the batch, the
    default); returns the previous (min_codes, pages). For tests, which join small indexes and
    fill small arenas."""
    cdef uint64_t old[2]
    hs_set_join(int(min_codes), int(pages), old)
    return int(old[0]), int(old[1])


def join_counters(reset=False):
    """Chunks of big 256-bit batches joined with a segment, arenas verified, and groups of 256
    queries that went over their candidate budget and were scanned instead, since the last
    reset (then reset if asked)."""
    cdef uint64_t out[3]
    hs_join_counters(out, 1 if reset else 0)
    return {"joined": int(out[0]), "verified": int(out[1]), "scanned": int(out[2])}


def set_helper_stall_ns(ns):
    """Make each helper thread stop ns after claiming its first work in a shared
    query or batch, as one that lost its core would (0: off); returns the
    previous value. For tests of the gate that stops sharing when it loses."""
    return hs_set_helper_stall_ns(int(ns))


def share_counters(bint reset=False):
    """Counts since the last reset: "shared" jobs (scored by their gate),
    "joined" (of those, jobs a helper thread took part in), "gated" (jobs run
    alone while a gate backed off) and "backoffs". reset also restarts the
    gates as in a new process."""
    cdef uint64_t out[HS_SHARE_COUNTERS]
    hs_share_counters(out, reset)
    return {"shared": out[0], "joined": out[1], "gated": out[2], "backoffs": out[3]}
