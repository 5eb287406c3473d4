"""A drop-in PDQ index for python-threatexchange (pytx) and HMA, backed by hashsieve's exact 256-bit index.

    from hashsieve.threatexchange import HashsievePDQIndex, HashsievePdqSignal
    index = HashsievePDQIndex.build([(pdq_hex, metadata), ...])      # or HashsievePDQIndex(entries, threshold=31)
    index.query(pdq_hex)   # [IndexMatchUntyped(SignalSimilarityInfoWithIntDistance(d), metadata), ...]

HashsievePdqSignal is pytx's PdqSignal (same name, "pdq") whose get_index_cls() is HashsievePDQIndex:
list it in an HMA deployment's signal_types instead of PdqSignal. Needs the extra hashsieve[threatexchange].

Serialized form: a pickle (so pytx's SignalTypeIndex.deserialize and HMA, which call pickle.load, read
it) whose state is the native index file's bytes (hashsieve.storage's format, with a CRC-32 of them,
checked on loading; the index is loaded, never rebuilt) and the metadata list. Deserializing untrusted
bytes is exactly as unsafe as with pytx's own indexes: pickle runs code. Load only streams that you, or
an index builder you trust, serialized.
"""
import os
import tempfile
import threading
import zlib

import numpy as np
from threatexchange.signal_type.index import IndexMatchUntyped, SignalSimilarityInfoWithIntDistance, SignalTypeIndex
from threatexchange.signal_type.pdq.signal import PdqSignal

from ._validate import _is_int
from .hexcodes import WIDE_HEX_DIGITS, from_hex
from .index import HashIndex
from .storage import IndexFormatError, save_index

PDQ_BITS = 256
# pytx's PDQ_CONFIDENT_MATCH_THRESHOLD: a distance <= 31 is a match.
DEFAULT_THRESHOLD = 31
# The state's version tag: a later layout changes it, and an older hashsieve refuses it by name.
STATE_FORMAT = "hashsieve.threatexchange.HashsievePDQIndex/1"


def _threshold_value(threshold):
    if not _is_int(threshold) or not 0 <= threshold <= PDQ_BITS:
        raise ValueError(f"threshold must be an int from 0 to {PDQ_BITS} (a Hamming distance; pytx's default "
                         f"is {DEFAULT_THRESHOLD}), got {threshold!r}")
    return int(threshold)


def _pdq_codes(hashes, what):
    """uint8 (n, 32) from a list of n 64-hex-digit PDQ strings; ValueError naming `what` and the hash."""
    if not hashes:
        return np.empty((0, PDQ_BITS // 8), dtype=np.uint8)
    try:
        codes = from_hex(hashes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: {e}; a PDQ hash is {WIDE_HEX_DIGITS} hex digits, as pytx writes it") from None
    if codes.dtype != np.uint8:
        raise ValueError(f"{what}: {hashes[0]!r} has 16 hex digits (a 64-bit hash); a PDQ hash is "
                         f"{WIDE_HEX_DIGITS} hex digits, as pytx writes it")
    return codes


class HashsievePDQIndex(SignalTypeIndex):
    """pytx's PDQ index interface (as PDQIndex2: entries=, threshold=31) over an exact hashsieve.HashIndex.

    query(hash) returns every entry within Hamming distance <= threshold, nearest first (ties in the order
    added), each as pytx's IndexMatchUntyped(SignalSimilarityInfoWithIntDistance(int distance), metadata).
    Entries are (64-hex-digit PDQ hash, metadata) with any picklable metadata; a hash added many times
    returns all of its entries. len() counts entries (as pytx's PDQIndex; PDQIndex2 counts distinct hashes).

    Queries may run from many threads. add() and add_all() only queue entries (so adding one at a time
    stays O(1)); the next query or serialize builds them into the native index in one batch.
    """

    def __init__(self, entries=(), *, threshold=DEFAULT_THRESHOLD):
        super().__init__()
        self.threshold = _threshold_value(threshold)
        self._index = HashIndex(bits=PDQ_BITS)
        self._metadata = []       # entry i's metadata; i is its id in _index
        self._queued = []         # uint8 (k, 32) code arrays of the entries after the last in _index
        self._lock = threading.Lock()
        self.add_all(entries)

    def __len__(self):
        return len(self._metadata)

    def add(self, signal_str, entry):
        self.add_all(((signal_str, entry),))

    def add_all(self, entries):
        hashes, metadata = [], []
        for item in entries:
            try:
                signal_str, entry = item
            except (TypeError, ValueError):
                raise ValueError(f"entry {len(hashes)} must be a (pdq_hash, metadata) pair, got {item!r:.80}") \
                    from None
            hashes.append(signal_str)
            metadata.append(entry)
        codes = _pdq_codes(hashes, "HashsievePDQIndex entries")
        if len(codes):
            with self._lock:
                self._queued.append(codes)
                self._metadata.extend(metadata)

    def _built_index(self):
        """The native index with every queued entry in it."""
        if self._queued:
            with self._lock:
                self._build_queued()
        return self._index

    def _build_queued(self):
        """Add the queued entries to the native index; the caller holds the lock."""
        if self._queued:
            codes = np.concatenate(self._queued) if len(self._queued) > 1 else self._queued[0]
            start = len(self._metadata) - len(codes)
            self._index.add(codes, ids=np.arange(start, start + len(codes), dtype=np.int64))
            self._queued = []

    def query(self, hash):
        code = _pdq_codes([hash], "HashsievePDQIndex.query")
        _, distances, ids = self._built_index().range_search(code, self.threshold, threads=1)
        metadata = self._metadata
        return [IndexMatchUntyped(SignalSimilarityInfoWithIntDistance(d), metadata[i])
                for d, i in zip(distances.tolist(), ids.tolist())]

    # ------------------------------------------------------------ persistence
    # serialize() and deserialize() are SignalTypeIndex's pickle.dump / pickle.load (so HMA's
    # SignalTypeIndex.deserialize reads our streams); the state is the native index file's bytes, loaded
    # back without rebuilding it, and the metadata list.
    def __getstate__(self):
        with self._lock, tempfile.TemporaryDirectory(prefix="hashsieve-pdq-") as folder:
            self._build_queued()       # under the lock: an add in another thread waits, index and metadata agree
            path = os.path.join(folder, "index.hsi")
            save_index(self._index, path, incremental=False)   # self-contained: no base file beside it to carry
            with open(path, "rb") as f:
                saved = f.read()
            metadata = list(self._metadata)
        return {"format": STATE_FORMAT, "threshold": self.threshold, "index": saved,
                "index_crc32": zlib.crc32(saved), "metadata": metadata}

    def __setstate__(self, state):
        what = "HashsievePDQIndex.deserialize"
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = repr(state.get("format"))[:80] if isinstance(state, dict) else type(state).__name__
            raise IndexFormatError(f"{what}: the stream is not a serialized HashsievePDQIndex this hashsieve "
                                   f"reads (format {found}, expected {STATE_FORMAT!r}); rebuild the index")
        saved, metadata = state.get("index"), state.get("metadata")
        if not isinstance(saved, bytes) or not isinstance(metadata, list):
            raise IndexFormatError(f"{what}: the stream is damaged: no index bytes or no metadata list")
        if state.get("index_crc32") != zlib.crc32(saved):
            raise IndexFormatError(f"{what}: the stream's index is damaged: its bytes do not match their checksum")
        try:
            threshold = _threshold_value(state.get("threshold"))
        except ValueError as e:
            raise IndexFormatError(f"{what}: the stream is damaged: {e}") from None
        with tempfile.TemporaryDirectory(prefix="hashsieve-pdq-") as folder:
            path = os.path.join(folder, "index.hsi")
            with open(path, "wb") as f:
                f.write(saved)
            try:
                # The checksum stands for verify=True's section checksums and table checks (15x slower at
                # 10M): the bytes are those save() wrote. The entries, ids and next id are checked here.
                index = HashIndex.load(path, mmap=False)
                index.snapshot(checked=True)
            except IndexFormatError as e:
                raise IndexFormatError(f"{what}: the stream's index is damaged: "
                                       f"{str(e).replace(path, 'index')}") from None
        n = len(metadata)
        if index.bits != PDQ_BITS or len(index) != n or index.snapshot().next_id != n:
            raise IndexFormatError(f"{what}: the stream is damaged: its index holds {len(index)} "
                                   f"{index.bits}-bit codes for {n} metadata entries")
        self.threshold = threshold
        self._index, self._metadata, self._queued, self._lock = index, metadata, [], threading.Lock()

    @classmethod
    def deserialize(cls, fin):
        try:
            index = super().deserialize(fin)
        except IndexFormatError:
            raise
        except Exception as e:           # pickle's many errors for a stream that is not a pickle
            raise IndexFormatError(f"HashsievePDQIndex.deserialize: the stream is not a serialized index "
                                   f"({type(e).__name__}: {e})") from None
        if not isinstance(index, cls):
            raise IndexFormatError(f"HashsievePDQIndex.deserialize: the stream holds a "
                                   f"{type(index).__module__}.{type(index).__qualname__}, not a {cls.__qualname__}")
        return index


class HashsievePdqSignal(PdqSignal):
    """pytx's PdqSignal with HashsievePDQIndex as its index: the same signal type ("pdq", the same hashing,
    validation and comparison), so banks and exchanges that hold PDQ signals keep working."""

    @classmethod
    def get_name(cls):
        return PdqSignal.get_name()

    @classmethod
    def get_index_cls(cls):
        return HashsievePDQIndex
