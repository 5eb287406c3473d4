# Thin wrapper over the C core: builds segments from numpy arrays and runs
# batched searches with the GIL released. Inputs are validated by the caller
# (hashsieve.index); this module trusts dtypes and shapes it is given.
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport free, malloc

from mih cimport *

import numpy as np

cnp.import_array()

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


cdef void *_ptr(object a):
    return cnp.PyArray_DATA(a) if a is not None else NULL


cdef class Segment:
    """An immutable block of the index: distinct codes, their ids and the MIH tables.

    Holds the numpy arrays (which may be views of a memory map) that the C
    struct points into, so the struct stays valid as long as this object lives.
    """
    cdef hs_segment seg
    cdef readonly object codes, group_start, ids, dead
    cdef readonly tuple bits, offsets, fps, table_groups
    cdef object _masks

    def __init__(self, codes, group_start, ids, bits, offsets, fps, table_groups, dead=None):
        cdef int k, shift = HS_CODE_BITS
        self.codes, self.group_start, self.ids, self.dead = codes, group_start, ids, dead
        self.bits, self.offsets = tuple(bits), tuple(offsets)
        self.fps, self.table_groups = tuple(fps), tuple(table_groups)
        self.seg.m = len(self.bits)
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
            self.seg.fps[k] = <const uint32_t *>_ptr(self.fps[k])
            self.seg.table_groups[k] = <const uint32_t *>_ptr(self.table_groups[k] if k else None)
            masks, ring_start = _masks_for(self.bits[k])
            self._masks.append(masks)
            self.seg.masks[k] = <const uint32_t *>_ptr(masks)
            for t in range(HS_MAX_RING + 2):
                self.seg.ring_start[k][t] = ring_start[t]

    def __len__(self):
        return self.seg.n_entries

    @property
    def n_unique(self):
        return self.seg.n_unique

    def with_dead(self, dead):
        """A segment sharing these arrays with another tombstone bitmap (or None)."""
        return Segment(self.codes, self.group_start, self.ids, self.bits, self.offsets,
                       self.fps, self.table_groups, dead)

    def nbytes(self):
        arrays = [self.codes, self.group_start, self.ids, self.dead]
        arrays += list(self.offsets) + list(self.fps) + list(self.table_groups)
        return sum(a.nbytes for a in arrays if a is not None)


def build_segment(cnp.ndarray codes, cnp.ndarray ids, int nthreads=1):
    """Segment from uint64 codes (n,) and int64 ids (n,), both C-contiguous."""
    cdef uint64_t n = codes.shape[0], u
    cdef int m, k, rc
    cdef int bits[HS_MAX_TABLES]
    cdef int shift[HS_MAX_TABLES]
    cdef uint32_t *offsets[HS_MAX_TABLES]
    cdef uint32_t *fps[HS_MAX_TABLES]
    cdef uint32_t *table_groups[HS_MAX_TABLES]
    cdef cnp.ndarray sorted_codes = np.empty(n, dtype=np.uint64)
    cdef cnp.ndarray sorted_ids = np.empty(n, dtype=np.int64)
    with nogil:
        rc = hs_sort_pairs(<uint64_t *>cnp.PyArray_DATA(codes), <int64_t *>cnp.PyArray_DATA(ids), n,
                           <uint64_t *>cnp.PyArray_DATA(sorted_codes), <int64_t *>cnp.PyArray_DATA(sorted_ids))
        u = hs_count_unique(<uint64_t *>cnp.PyArray_DATA(sorted_codes), n)
    if rc:
        raise MemoryError("out of memory while sorting the codes")
    cdef cnp.ndarray ucodes = np.empty(u, dtype=np.uint64)
    cdef cnp.ndarray group_start = np.empty(u + 1, dtype=np.uint32)
    with nogil:
        hs_group(<uint64_t *>cnp.PyArray_DATA(sorted_codes), n,
                 <uint64_t *>cnp.PyArray_DATA(ucodes), <uint32_t *>cnp.PyArray_DATA(group_start))
    del sorted_codes
    m = hs_choose_tables(u, bits, shift)
    offs, tfps, tgroups = [], [], [None]
    for k in range(m):
        offs.append(np.empty((1 << bits[k]) + 1, dtype=np.uint32))
        tfps.append(np.empty(u, dtype=np.uint32))
        offsets[k] = <uint32_t *>cnp.PyArray_DATA(offs[k])
        fps[k] = <uint32_t *>cnp.PyArray_DATA(tfps[k])
        table_groups[k] = NULL
        if k:
            tgroups.append(np.empty(u, dtype=np.uint32))
            table_groups[k] = <uint32_t *>cnp.PyArray_DATA(tgroups[k])
    with nogil:
        rc = hs_build_tables(<uint64_t *>cnp.PyArray_DATA(ucodes), u, m, bits, shift,
                             offsets, fps, table_groups, nthreads)
    if rc:
        raise MemoryError("out of memory while building the tables")
    return Segment(ucodes, group_start, sorted_ids, [bits[k] for k in range(m)], offs,
                   tfps, tgroups[:m])


def fingerprints(cnp.ndarray codes, int shift, int bits):
    """The 32-bit fingerprints a table with key bits [shift, shift+bits) stores for these codes."""
    cdef cnp.ndarray out = np.empty(codes.shape[0], dtype=np.uint32)
    cdef const uint64_t[:] c = codes
    cdef uint32_t[:] o = out
    cdef Py_ssize_t i
    for i in range(codes.shape[0]):
        o[i] = hs_fingerprint(c[i], shift, bits)
    return out


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
    cdef list keep

    def __cinit__(self, segments):
        cdef Segment s
        self.keep = list(segments)
        self.n = len(self.keep)
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


def range_search(SegmentList segs, cnp.ndarray queries, int radius, int nthreads=1, bint with_stats=False):
    """(lims int64 (nq+1,), distances int32, ids int64[, stats uint64 (nq, 4)])."""
    cdef uint64_t nq = queries.shape[0]
    cdef cnp.ndarray lims = np.zeros(nq + 1, dtype=np.int64)
    cdef cnp.ndarray stats = _stats_array(nq) if with_stats else None
    cdef int64_t *ids = NULL
    cdef int32_t *dist = NULL
    cdef hs_stats *st = <hs_stats *>_ptr(stats)
    cdef int rc
    with nogil:
        rc = hs_range_search(segs.ptrs, segs.n, <const uint64_t *>cnp.PyArray_DATA(queries), nq, radius,
                             nthreads, <int64_t *>cnp.PyArray_DATA(lims), &ids, &dist,
                             st)
    if rc:
        raise MemoryError("out of memory while collecting search results")
    total = lims[nq]
    out = (lims, _adopt(dist, total, cnp.NPY_INT32), _adopt(ids, total, cnp.NPY_INT64))
    return out + (stats,) if with_stats else out


def knn_search(SegmentList segs, cnp.ndarray queries, int k, int nthreads=1, bint with_stats=False):
    """(distances int32 (nq, k), ids int64 (nq, k)[, stats]), -1 padded."""
    cdef uint64_t nq = queries.shape[0]
    cdef cnp.ndarray dist = np.empty((nq, k), dtype=np.int32)
    cdef cnp.ndarray ids = np.empty((nq, k), dtype=np.int64)
    cdef cnp.ndarray stats = _stats_array(nq) if with_stats else None
    cdef hs_stats *st = <hs_stats *>_ptr(stats)
    cdef int rc
    with nogil:
        rc = hs_knn_search(segs.ptrs, segs.n, <const uint64_t *>cnp.PyArray_DATA(queries), nq, k, nthreads,
                           <int64_t *>cnp.PyArray_DATA(ids), <int32_t *>cnp.PyArray_DATA(dist),
                           st)
    if rc:
        raise MemoryError("out of memory while collecting search results")
    return (dist, ids, stats) if with_stats else (dist, ids)


def supported_isas():
    """Instruction sets this CPU can run, slowest first."""
    return tuple(name for i, name in enumerate(ISA_NAMES) if hs_isa_supported(i))


def get_isa():
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
