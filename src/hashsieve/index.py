"""HashIndex: exact Hamming search over 64-bit perceptual hashes, or 256-bit ones (PDQ).

The index is a tuple of immutable native segments: a large main segment and a
small delta that absorbs additions until it is worth merging. Removals set bits
in a tombstone bitmap. Every change builds a new tuple and swaps it in, so a
query running in another thread always sees one consistent version.
"""
import threading

import numpy as np

from . import _core
from ._validate import MAX_ID, code_bits_value, hashes_array, ids_array, k_value, radius_value, threads_value

# The delta is merged into the main segment when it grows past this share of it.
DELTA_MERGE_FRACTION = 0.25


def _sorted_unique(ids):
    """The distinct values of an int64 array (n,), ascending (np.unique is far slower in numpy 2.4)."""
    s = np.sort(ids)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if len(s) > 1 else s


def _repeated_id(ids):
    """An id that appears more than once in ids (int64 (n,)), or None.

    O(n) with a bitmap when the ids are dense (numbered ids, list row numbers), else a sort.
    """
    if len(ids) < 2:
        return None
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 64 * len(ids) + 4096:               # the bitmap takes at most 8 bytes per id
        at = _core.first_repeat_dense(ids, lo, hi)
        return None if at < 0 else int(ids[at])
    s = np.sort(ids)
    at = np.flatnonzero(s[1:] == s[:-1])
    return int(s[at[0]]) if at.size else None


def _id_order(ids):
    """int64 (n,): the permutation sorting the (unique) ids; O(n) when they are dense, as numbered ids are."""
    n = len(ids)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 4 * n + 4096:
        slot = np.full(hi - lo + 1, -1, dtype=np.int64)
        slot[ids - lo] = np.arange(n, dtype=np.int64)
        order = slot[slot >= 0]
        if len(order) == n:
            return order
    return np.argsort(ids, kind="stable")


class _Part:
    """A segment and the permutation sorting its ids (from the file, or computed on first use)."""

    __slots__ = ("segment", "_order", "live")

    def __init__(self, segment, order=None):
        self.segment = segment
        self._order = order
        dead = segment.dead
        self.live = len(segment) - (int(np.bitwise_count(dead).sum()) if dead is not None else 0)

    def id_order(self):
        if self._order is None:        # two threads may both compute it: same result, no harm
            self._order = _id_order(np.asarray(self.segment.ids))
        return self._order

    def slots_of(self, ids):
        """Slots (positions in segment.ids) of ids (int64, ascending, unique) that are present and live."""
        slots = _core.find_ids(self.segment.ids, self.id_order(), ids)
        slots = slots[slots >= 0]
        dead = self.segment.dead
        if dead is not None and slots.size:
            slots = slots[(dead[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1 == 0]
        return slots

    def with_removed(self, slots):
        n = len(self.segment)
        dead = self.segment.dead
        dead = np.zeros((n + 7) // 8, dtype=np.uint8) if dead is None else dead.copy()
        np.bitwise_or.at(dead, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
        return _Part(self.segment.with_dead(dead), self._order)

    def live_entries(self):
        """(codes uint64 (l,) or (l, 4), ids int64 (l,)) of every live entry."""
        seg = self.segment
        codes = np.repeat(seg.codes, np.diff(seg.group_start.astype(np.int64)), axis=0)
        ids = seg.ids
        if seg.dead is not None:
            live = ~np.unpackbits(seg.dead, count=len(ids), bitorder="little").astype(bool)
            codes, ids = codes[live], ids[live]
        return codes, np.asarray(ids)


class IndexSnapshot:
    """One version of an index, read in one step: what save() writes. It never changes.

    segments: tuple of _core.Segment, the main segment first, then the delta (at most two).
    next_id: int, where add(ids=None) numbers from; larger than every id in the segments.
    source: the storage layer's record of the file the index was loaded from, or None.
    """

    __slots__ = ("segments", "next_id", "source", "_parts")

    def __init__(self, parts, next_id, source):
        self._parts = parts
        self.segments = tuple(part.segment for part in parts)
        self.next_id, self.source = next_id, source

    def id_order(self, s):
        """int64 (n,): the permutation of segment s's entry slots that sorts its ids (computed once, then kept)."""
        return self._parts[s].id_order()


class HashIndex:
    """Exact Hamming-distance index of 64-bit hashes (bits=64, the default: uint64 (n,)) or 256-bit
    codes such as PDQ (bits=256: uint8 (n, 32), FAISS's binary layout), each with an int64 id.

    Results follow FAISS's conventions, except that the radius is inclusive
    and results are sorted by (distance, id), so they are deterministic.
    Queries may run from many threads at once; changes are serialised.
    Every threads= is an int from 1 to MAX_THREADS (256, or the number of cores
    if that is more; a call starts at most that many OS threads), or None for
    every core this process may use; more is a ValueError.
    """

    def __init__(self, bits=64):
        self.bits = code_bits_value(bits)
        self._set_state((), 0)
        self._write_lock = threading.Lock()
        self._source = None            # set by load(): what verify() checks, where save() may copy from
        self._deferred_check = None    # set by load(): checks of big segments left for the first change

    def _set_state(self, parts, next_id):
        """Swap in a new version: (main, delta) or fewer and next_id, never mutated afterwards.

        One attribute holds the parts, their C view and next_id, so a query or a
        snapshot in another thread reads one consistent version with a single lookup.
        """
        parts = tuple(parts)
        self._state = (parts, _core.SegmentList([part.segment for part in parts], self.bits), next_id)

    @property
    def _parts(self):
        return self._state[0]

    def _run_deferred_check(self):
        """The O(n) checks load() left for the first change; the caller holds the write lock."""
        if self._deferred_check is not None:
            self._deferred_check(self.snapshot())    # raises IndexFormatError for a damaged file, every time
            self._deferred_check = None

    def snapshot(self, checked=False):
        """The current version as an IndexSnapshot (segments, next_id, source), consistent even while
        another thread changes the index.

        checked=True first runs the checks that load() leaves for the first change of a segment over
        storage.DEEP_CHECK_ENTRIES entries opened without verify (O(n), once); they raise IndexFormatError.
        """
        if checked and self._deferred_check is not None:     # the lock only then: a save never waits for an add
            with self._write_lock:
                self._run_deferred_check()
        parts, _, next_id = self._state
        return IndexSnapshot(parts, next_id, self._source)

    @classmethod
    def from_segments(cls, segments, next_id, id_orders=None, source=None, deferred_check=None, bits=64):
        """An index of bits-bit codes from these _core.Segment objects (main first, then the delta), as load()
        builds it.

        next_id: int, larger than every id. id_orders: per segment an int64 (n,) permutation sorting
        its ids, or None to compute it when needed. source: recorded for save() and verify().
        deferred_check: called with the snapshot before the first change (or snapshot(checked=True));
        it may raise, and is called again by the next change then.
        """
        segments = list(segments)
        index = cls(bits)
        orders = list(id_orders) if id_orders is not None else [None] * len(segments)
        index._set_state([_Part(seg, order) for seg, order in zip(segments, orders)], int(next_id))
        index._source = source
        index._deferred_check = deferred_check
        return index

    # ---------------------------------------------------------------- changes
    def add(self, hashes, ids=None, threads=None):
        """Add uint64 hashes (n,) (a 256-bit index: uint8 codes (n, 32)) with int64 ids (n,), each from 0 to
        2**63-2; ids=None numbers them on from the largest id ever added.

        Returns the ids (int64 (n,)). Raises ValueError if an id is repeated or already in the index.
        """
        codes = hashes_array(hashes, bits=self.bits)
        nthreads = threads_value(threads)
        if ids is not None:
            ids = ids_array(ids, len(codes))
        with self._write_lock:
            self._run_deferred_check()
            parts, _, next_id = self._state
            if ids is None:
                if next_id + len(codes) - 1 > MAX_ID:
                    raise ValueError(f"cannot number {len(codes)} more ids: the largest id so far is {next_id - 1} "
                                     f"and ids end at {MAX_ID}; pass ids= explicitly")
                ids = np.arange(next_id, next_id + len(codes), dtype=np.int64)
            else:
                self._check_new_ids(parts, ids)
            if len(codes) == 0:
                return ids
            parts = list(parts)
            if not parts:
                parts = [_Part(_core.build_segment(codes, ids, nthreads))]
            else:
                main = parts[0]
                old_codes, old_ids = parts[1].live_entries() if len(parts) > 1 else (codes[:0], ids[:0])
                delta_codes = np.concatenate([old_codes, codes])
                delta_ids = np.concatenate([old_ids, ids])
                if len(delta_codes) > DELTA_MERGE_FRACTION * main.live:
                    main_codes, main_ids = main.live_entries()
                    parts = [_Part(_core.build_segment(np.concatenate([main_codes, delta_codes]),
                                                       np.concatenate([main_ids, delta_ids]), nthreads))]
                else:
                    parts = [main, _Part(_core.build_segment(delta_codes, delta_ids, nthreads))]
            self._set_state(parts, max(next_id, int(ids.max()) + 1))
            return ids

    @staticmethod
    def _check_new_ids(parts, ids):
        repeated = _repeated_id(ids)
        if repeated is not None:
            raise ValueError(f"ids must be unique; id {repeated} appears more than once")
        if not parts:
            return
        keys = np.sort(ids)                  # sorted keys: the lookups walk each segment's ids in order
        for part in parts:
            present = part.slots_of(keys)
            if present.size:
                raise ValueError(f"id {part.segment.ids[present[0]]} is already in the index; "
                                 "remove() it first or pass other ids")

    def remove(self, ids):
        """Remove the entries with these ids; returns how many were removed (absent ids are skipped)."""
        flat = np.ravel(ids)     # one id, a list or an array of any shape
        if flat.size == 0:
            return 0
        ids = _sorted_unique(ids_array(flat, flat.size))
        removed = 0
        with self._write_lock:
            self._run_deferred_check()
            old, _, next_id = self._state
            parts = []
            for part in old:
                slots = part.slots_of(ids)
                removed += len(slots)
                parts.append(part.with_removed(slots) if len(slots) else part)
            self._set_state(parts, next_id)
        return removed

    def compact(self, threads=None):
        """Fold the delta and the tombstones into one freshly built segment."""
        nthreads = threads_value(threads)
        with self._write_lock:
            self._run_deferred_check()
            parts, _, next_id = self._state
            entries = [part.live_entries() for part in parts]
            if not entries:
                return
            codes = np.concatenate([c for c, _ in entries])
            ids = np.concatenate([i for _, i in entries])
            self._set_state([_Part(_core.build_segment(codes, ids, nthreads))] if len(codes) else [], next_id)

    def __len__(self):
        return sum(part.live for part in self._parts)

    @property
    def tombstones(self):
        """Entries removed but still stored until compact() (or the next merge)."""
        return sum(len(part.segment) - part.live for part in self._parts)

    # ---------------------------------------------------------------- queries
    def range_search(self, queries, radius, threads=None):
        """Every entry within Hamming distance <= radius of each query.

        queries: uint64 array (nq,) or one int (a 256-bit index: uint8 (nq, 32) or (32,)); radius: 0 to
        the code width (64 or 256). Returns (lims int64 (nq+1,),
        distances int32, ids int64): query i's results are
        distances[lims[i]:lims[i+1]], ids[lims[i]:lims[i+1]], sorted by (distance, id).
        """
        q = hashes_array(queries, "queries", self.bits)
        return _core.range_search(self._state[1], q, radius_value(radius, bits=self.bits), threads_value(threads))

    def search(self, queries, k, threads=None):
        """The k nearest entries of each query, ties broken by smaller id.

        queries: uint64 array (nq,) or one int (a 256-bit index: uint8 (nq, 32) or (32,)); k: 1 to MAX_K (10,000), larger is a ValueError (for every
        entry within a radius use range_search). Returns (distances int32 (nq, k), ids int64 (nq, k));
        -1 where fewer than k entries exist.
        """
        q = hashes_array(queries, "queries", self.bits)
        return _core.knn_search(self._state[1], q, k_value(k), threads_value(threads))

    def explain(self, queries, radius=None, k=None, threads=None):
        """Per-query cost counters of a range_search (radius=) or search (k=).

        Returns a dict of uint64 arrays (nq,): probes (table buckets visited),
        candidates (codes read from those buckets), hits (distinct codes
        reported) and scanned (codes read by brute-force scans). The planner
        answers a query from the tables (probes > 0, scanned 0) or scans a
        segment when that is estimated cheaper, or when the candidates pass the
        cost of a scan (both > 0); layout() shows the tables it chose from.
        """
        if (radius is None) == (k is None):
            raise ValueError("explain() needs exactly one of radius= or k=")
        q = hashes_array(queries, "queries", self.bits)
        if radius is not None:
            stats = _core.range_search(self._state[1], q, radius_value(radius, bits=self.bits), threads_value(threads),
                                       True)[3]
        else:
            stats = _core.knn_search(self._state[1], q, k_value(k), threads_value(threads), True)[2]
        return dict(zip(("probes", "candidates", "hits", "scanned"), stats.T.copy()))

    # ------------------------------------------------------------ persistence
    def save(self, path, metadata=None):
        """Write the index to one file atomically (temp file, fsync, rename); see hashsieve.storage.

        metadata: a JSON-serialisable dict stored in the header (read_metadata(path)["metadata"]);
        None keeps the metadata of the file this index was loaded from.
        """
        from .storage import save_index
        save_index(self, path, metadata=metadata)

    @classmethod
    def load(cls, path, mmap=True, verify=False):
        """Open an index file; mmap=True maps it read-only and shares its pages between processes.

        verify=True first runs verify(). Without it, the O(n) checks of a segment over
        storage.DEEP_CHECK_ENTRIES entries are left out, so opening takes milliseconds; its entries
        are then checked before the first change or save (raising IndexFormatError for a damaged file).
        """
        from .storage import load_index
        return load_index(path, mmap=mmap, verify=verify)

    def verify(self):
        """Check every section checksum of the file this index was loaded from, then every invariant of
        every segment, whatever its size: codes, groups and ids in order, the id orders, every table
        (each code once, in its bucket, with its fingerprint) and the next id. Raises IndexFormatError."""
        from .storage import verify_index
        verify_index(self)

    @property
    def metadata(self):
        """The metadata dict of the file this index was loaded from ({} if it was not loaded)."""
        return dict(self._source.layout.metadata or {}) if self._source is not None else {}

    def layout(self):
        """Per segment (main first, then the delta): a dict of entries, codes (distinct), tables (the
        substring widths in bits of its multi-index tables, widest first from the code's top bits;
        () when it is scanned by brute force) and nbytes."""
        return [{"entries": len(part.segment), "codes": part.segment.n_unique, "tables": part.segment.bits,
                 "nbytes": part.segment.nbytes()} for part in self._parts]

    def nbytes(self):
        """Bytes held by the index's arrays."""
        return sum(part.segment.nbytes() for part in self._parts)

    def __repr__(self):
        return f"<hashsieve.HashIndex {len(self)} {self.bits}-bit hashes, {len(self._parts)} segment(s)>"
