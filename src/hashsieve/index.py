"""HashIndex: exact Hamming search over 64-bit perceptual hashes.

The index is a tuple of immutable native segments: a large main segment and a
small delta that absorbs additions until it is worth merging. Removals set bits
in a tombstone bitmap. Every change builds a new tuple and swaps it in, so a
query running in another thread always sees one consistent version.
"""
import threading

import numpy as np

from . import _core
from ._validate import hashes_array, ids_array, k_value, radius_value, threads_value

# The delta is merged into the main segment when it grows past this share of it.
DELTA_MERGE_FRACTION = 0.25


class _Part:
    """A segment and a lazily built id -> slot lookup for remove()."""

    __slots__ = ("segment", "_order", "live")

    def __init__(self, segment):
        self.segment = segment
        self._order = None
        dead = segment.dead
        self.live = len(segment) - (int(np.bitwise_count(dead).sum()) if dead is not None else 0)

    def slots_of(self, ids):
        """Slots (positions in segment.ids) of the given ids that are present and live."""
        seg_ids = self.segment.ids
        if self._order is None:
            self._order = np.argsort(seg_ids, kind="stable")
        sorted_ids = seg_ids[self._order]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = len(sorted_ids) > 0
        hit = (sorted_ids[pos] == ids) if found else np.zeros(len(ids), dtype=bool)
        slots = self._order[pos[hit]]
        dead = self.segment.dead
        if dead is not None and slots.size:
            slots = slots[(dead[slots >> 3] >> (slots & 7).astype(np.uint8)) & 1 == 0]
        return slots

    def with_removed(self, slots):
        n = len(self.segment)
        dead = self.segment.dead
        dead = np.zeros((n + 7) // 8, dtype=np.uint8) if dead is None else dead.copy()
        np.bitwise_or.at(dead, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
        part = _Part(self.segment.with_dead(dead))
        part._order = self._order
        return part

    def live_entries(self):
        """(codes, ids) of every live entry."""
        seg = self.segment
        codes = np.repeat(seg.codes, np.diff(seg.group_start.astype(np.int64)))
        ids = seg.ids
        if seg.dead is not None:
            live = ~np.unpackbits(seg.dead, count=len(ids), bitorder="little").astype(bool)
            codes, ids = codes[live], ids[live]
        return codes, np.asarray(ids)



class HashIndex:
    """Exact Hamming-distance index of 64-bit hashes, each with an int64 id.

    Results follow FAISS's conventions, except that the radius is inclusive
    and results are sorted by (distance, id), so they are deterministic.
    Queries may run from many threads at once; changes are serialised.
    """

    bits = 64

    def __init__(self):
        self._set_parts(())
        self._next_id = 0
        self._write_lock = threading.Lock()
        self._source = None         # set by load(): what verify() checks

    def _set_parts(self, parts):
        """Swap in a new version: (main, delta) or fewer, never mutated afterwards.

        One attribute holds both the parts and their C view, so a query in
        another thread reads one consistent version with a single lookup.
        """
        parts = tuple(parts)
        self._state = (parts, _core.SegmentList([part.segment for part in parts]))

    @property
    def _parts(self):
        return self._state[0]

    # ---------------------------------------------------------------- changes
    def add(self, hashes, ids=None, threads=None):
        """Add uint64 hashes (n,) with int64 ids (n,); ids=None numbers them on from the largest id.

        Returns the ids. Raises ValueError if an id is repeated or already in the index.
        """
        codes = hashes_array(hashes)
        nthreads = threads_value(threads)
        with self._write_lock:
            if ids is None:
                ids = np.arange(self._next_id, self._next_id + len(codes), dtype=np.int64)
            else:
                ids = ids_array(ids, len(codes))
                self._check_new_ids(ids)
            if len(codes) == 0:
                return ids
            parts = list(self._parts)
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
            self._set_parts(parts)
            self._next_id = max(self._next_id, int(ids.max()) + 1)
            return ids

    def _check_new_ids(self, ids):
        if len(np.unique(ids)) != len(ids):
            values, counts = np.unique(ids, return_counts=True)
            raise ValueError(f"ids must be unique; id {values[counts > 1][0]} appears more than once")
        for part in self._parts:
            present = part.slots_of(ids)
            if present.size:
                raise ValueError(f"id {part.segment.ids[present[0]]} is already in the index; "
                                 "remove() it first or pass other ids")

    def remove(self, ids):
        """Remove the entries with these ids; returns how many were removed (absent ids are skipped)."""
        flat = np.ravel(ids)     # one id, a list or an array of any shape
        if flat.size == 0:
            return 0
        ids = np.unique(ids_array(flat, flat.size))
        removed = 0
        with self._write_lock:
            parts = []
            for part in self._parts:
                slots = part.slots_of(ids)
                removed += len(slots)
                parts.append(part.with_removed(slots) if len(slots) else part)
            self._set_parts(parts)
        return removed

    def compact(self, threads=None):
        """Fold the delta and the tombstones into one freshly built segment."""
        nthreads = threads_value(threads)
        with self._write_lock:
            entries = [part.live_entries() for part in self._parts]
            if not entries:
                return
            codes = np.concatenate([c for c, _ in entries])
            ids = np.concatenate([i for _, i in entries])
            self._set_parts([_Part(_core.build_segment(codes, ids, nthreads))] if len(codes) else [])

    def __len__(self):
        return sum(part.live for part in self._parts)

    @property
    def tombstones(self):
        """Entries removed but still stored until compact() (or the next merge)."""
        return sum(len(part.segment) - part.live for part in self._parts)

    # ---------------------------------------------------------------- queries
    def range_search(self, queries, radius, threads=None):
        """Every entry within Hamming distance <= radius of each query.

        queries: uint64 array (nq,) or one int. Returns (lims int64 (nq+1,),
        distances int32, ids int64): query i's results are
        distances[lims[i]:lims[i+1]], ids[lims[i]:lims[i+1]], sorted by (distance, id).
        """
        q = hashes_array(queries, "queries")
        return _core.range_search(self._state[1], q, radius_value(radius), threads_value(threads))

    def search(self, queries, k, threads=None):
        """The k nearest entries of each query, ties broken by smaller id.

        Returns (distances int32 (nq, k), ids int64 (nq, k)); -1 where fewer than k entries exist.
        """
        q = hashes_array(queries, "queries")
        return _core.knn_search(self._state[1], q, k_value(k), threads_value(threads))

    def explain(self, queries, radius=None, k=None, threads=None):
        """Per-query cost counters of a range_search (radius=) or search (k=).

        Returns a dict of uint64 arrays (nq,): probes (table buckets visited),
        candidates (codes read from those buckets), hits (distinct codes
        reported) and scanned (codes read by brute-force scans).
        """
        if (radius is None) == (k is None):
            raise ValueError("explain() needs exactly one of radius= or k=")
        q = hashes_array(queries, "queries")
        if radius is not None:
            stats = _core.range_search(self._state[1], q, radius_value(radius), threads_value(threads), True)[3]
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
        """Open an index file; mmap=True maps it read-only and shares its pages between processes."""
        from .storage import load_index
        return load_index(path, mmap=mmap, verify=verify)

    def verify(self):
        """Check every section checksum of the file this index was loaded from; raises IndexFormatError."""
        from .storage import verify_index
        verify_index(self)

    @property
    def metadata(self):
        """The metadata dict of the file this index was loaded from ({} if it was not loaded)."""
        return dict(self._source.layout.metadata or {}) if self._source is not None else {}

    def _snapshot(self):
        """(segments, next_id) of one consistent version, for saving."""
        return [part.segment for part in self._parts], self._next_id

    @classmethod
    def _from_segments(cls, segments, next_id, source=None):
        index = cls()
        index._set_parts(_Part(seg) for seg in segments)
        index._next_id = int(next_id)
        index._source = source
        return index

    def nbytes(self):
        """Bytes held by the index's arrays."""
        return sum(part.segment.nbytes() for part in self._parts)

    def __repr__(self):
        return f"<hashsieve.HashIndex {len(self)} hashes, {len(self._parts)} segment(s)>"
