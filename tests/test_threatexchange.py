"""hashsieve.threatexchange: the drop-in PDQ index for python-threatexchange (pytx) and HMA.

pytx's own PDQ-index test cases (test_pdq_index.py, test_pdq_index2.py), written here from their
behaviour, run against HashsievePDQIndex, and its answers are compared with pytx's PDQIndex2 and PDQIndex
on the same entries. The brute force is plain Python integers, independent of numpy and the native core.
"""
import io
import pickle
import random
import threading
import zlib
from dataclasses import dataclass

import pytest

pytest.importorskip("threatexchange")

from threatexchange.signal_type.index import IndexMatchUntyped, SignalTypeIndex  # noqa: E402
from threatexchange.signal_type.pdq.pdq_index import PDQIndex  # noqa: E402
from threatexchange.signal_type.pdq.pdq_index2 import PDQIndex2  # noqa: E402
from threatexchange.signal_type.pdq.signal import PdqSignal  # noqa: E402

from hashsieve import IndexFormatError  # noqa: E402
from hashsieve.threatexchange import HashsievePDQIndex, HashsievePdqSignal  # noqa: E402


def random_hashes(rnd, n):
    return [f"{rnd.getrandbits(256):064x}" for _ in range(n)]


def flipped(rnd, pdq, nbits):
    """pdq with nbits distinct bits flipped: a hash at distance exactly nbits."""
    value = int(pdq, 16)
    for pos in rnd.sample(range(256), nbits):
        value ^= 1 << pos
    return f"{value:064x}"


def distance(a, b):
    return (int(a, 16) ^ int(b, 16)).bit_count()


def brute_force(entries, query, threshold):
    return {(meta, distance(h, query)) for h, meta in entries if distance(h, query) <= threshold}


def answer(index, query):
    return {(m.metadata, m.similarity_info.distance) for m in index.query(query)}


def near_and_random_queries(rnd, base, n):
    """n queries: a third exact copies, a third 1-40 bits from an entry, a third random."""
    k = n // 3
    return (rnd.sample(base, k) + [flipped(rnd, h, rnd.randint(1, 40)) for h in rnd.sample(base, k)]
            + random_hashes(rnd, n - 2 * k))


@pytest.fixture
def rnd():
    return random.Random(42)


@pytest.fixture
def base(rnd):
    return random_hashes(rnd, 100)


# ------------------------------------------------ pytx's PDQIndex2 cases (test_pdq_index2.py)
def test_pytx_query_agrees_with_brute_force_on_random_hashes(rnd, base):
    entries = [(h, i) for i, h in enumerate(base)]
    index = HashsievePDQIndex(entries=entries)
    for query in base[:10] + near_and_random_queries(rnd, base, 300):
        assert answer(index, query) == brute_force(entries, query, 31), query


@pytest.mark.parametrize("threshold", [0, 10, 31, 50, 256])
def test_pytx_exact_distance_queries_at_each_threshold(rnd, base, threshold):
    index = HashsievePDQIndex(entries=[(h, i) for i, h in enumerate(base)], threshold=threshold)
    assert index.threshold == threshold
    for d in sorted({0, 1, 20, 30, 31, 32, 60, max(threshold - 1, 0), threshold, min(threshold + 1, 256)}):
        query = flipped(rnd, base[0], d)
        assert ((0, d) in answer(index, query)) == (d <= threshold), d
        assert answer(index, query) == brute_force(zip(base, range(len(base))), query, threshold)


def test_pytx_serialize_deserialize_round_trip(rnd, base):
    entries = [(h, ("bank_content_id", i)) for i, h in enumerate(base)] + [(base[3], "second entry of base[3]")]
    index = HashsievePDQIndex(entries=entries, threshold=40)
    buffer = io.BytesIO()
    index.serialize(buffer)
    for reader in (HashsievePDQIndex.deserialize, SignalTypeIndex.deserialize):   # HMA calls the base class's
        buffer.seek(0)
        loaded = reader(buffer)
        assert isinstance(loaded, HashsievePDQIndex)
        assert loaded.threshold == 40 and len(loaded) == len(index) == 101
        for query in near_and_random_queries(rnd, base, 60) + [base[3]]:
            assert answer(loaded, query) == answer(index, query) == brute_force(entries, query, 40)
    loaded.add(base[5], "added after loading")                  # a loaded index takes more entries
    assert ("added after loading", 0) in answer(loaded, base[5])
    assert len(loaded) == 102 and len(loaded._index.layout()) == 2    # a delta beside the loaded main segment
    again = pickle.loads(pickle.dumps(loaded))                       # and serializes whole again
    assert len(again) == 102 and answer(again, base[5]) == answer(loaded, base[5])


def test_pytx_empty_index_returns_nothing(rnd):
    index = HashsievePDQIndex()
    assert len(index) == 0 and index.query(PdqSignal.get_random_signal()) == []
    assert pickle.loads(pickle.dumps(index)).query(random_hashes(rnd, 1)[0]) == []
    assert HashsievePDQIndex.build([]).query("0" * 64) == []


def test_pytx_sample_set_no_match(base):
    assert HashsievePDQIndex(entries=[(h, i) for i, h in enumerate(base)]).query("b" * 64) == []


def test_pytx_duplicates_all_returned(base):
    index = HashsievePDQIndex(entries=[(h, i) for i, h in enumerate(base)])
    index.add_all(entries=[(base[0], i) for i in range(3)])
    results = index.query(base[0])
    assert len(results) == 4 and all(r.similarity_info.distance == 0 for r in results)
    assert sorted(r.metadata for r in results) == [0, 0, 1, 2]      # metadata 0 twice: two entries, both returned
    assert len(index) == 103


def test_pytx_one_entry_index_matches(base):
    """github.com/facebook/ThreatExchange/issues/1318: a one-entry index must match its entry."""
    index = HashsievePDQIndex(entries=[(base[0], 0)])
    results = index.query(base[0])
    assert len(results) == 1 and results[0].similarity_info.distance == 0 and results[0].metadata == 0
    assert index.query(base[1]) == []


# ------------------------------------------------ pytx's PDQIndex cases (test_pdq_index.py)
PYTX_ENTRIES = [
    ("0" * 64, {"hash_type": "pdq", "system_id": 9}),
    ("0" * 60 + "ffff", {"hash_type": "pdq", "system_id": 8}),
    ("0f" * 32, {"hash_type": "pdq", "system_id": 7}),
    ("f0" * 32, {"hash_type": "pdq", "system_id": 6}),
    ("f" * 64, {"hash_type": "pdq", "system_id": 5}),
]


def test_pytx_fixed_entries_search():
    index = HashsievePDQIndex.build(PYTX_ENTRIES)
    got = [(m.similarity_info.distance, m.metadata["system_id"]) for m in index.query(PYTX_ENTRIES[1][0])]
    assert got == [(0, 8), (16, 9)]                                  # nearest first
    assert index.query("a" * 64) == []
    assert index.query("f" * 56 + "0" * 8) == []                     # 32 bits from the nearest: not a match


def test_pytx_pickling_makes_an_independent_index():
    index = HashsievePDQIndex.build(PYTX_ENTRIES)
    loaded = pickle.loads(pickle.dumps(index))
    assert len(loaded) == len(index) and loaded._index is not index._index
    got = {(m.similarity_info.distance, m.metadata["system_id"]) for m in loaded.query(PYTX_ENTRIES[0][0])}
    assert got == {(0, 9), (16, 8)}
    index.add("1" * 64, "only in the original")
    assert loaded.query("1" * 64) == [] and len(loaded) == 5


# ------------------------------------------------ the same answers as pytx's own indexes
def test_same_matches_as_pytx_pdqindex2_and_pdqindex(rnd):
    base = random_hashes(rnd, 400)
    entries = [(h, i) for i, h in enumerate(base)] + [(h, f"dup {i}") for i, h in enumerate(base[:20])]
    entries += [(flipped(rnd, h, rnd.randint(1, 31)), f"near {i}") for i, h in enumerate(base[20:60])]
    ours, index2, index1 = HashsievePDQIndex(entries), PDQIndex2(entries=entries), PDQIndex(entries)
    for query in near_and_random_queries(rnd, base, 150):
        expected = answer(index2, query)
        assert answer(ours, query) == expected == answer(index1, query), query
    assert len(ours) == len(index1) == len(entries)                  # PDQIndex's len(): entries


def test_matches_are_pytx_objects_with_int_distances_nearest_first(rnd, base):
    index = HashsievePDQIndex([(h, i) for i, h in enumerate(base)] + [(flipped(rnd, base[0], 9), "nine")],
                              threshold=256)
    results = index.query(base[0])
    theirs = PDQIndex2(entries=[(base[0], 0)]).query(base[0])[0]
    assert len(results) == 101
    for r in results:
        assert type(r) is type(theirs) is IndexMatchUntyped
        assert type(r.similarity_info) is type(theirs.similarity_info)     # SignalSimilarityInfoWithIntDistance
        assert type(r.similarity_info.distance) is int
    assert results[0].metadata == 0 and results[1].metadata == "nine" and results[1].similarity_info.distance == 9
    distances = [r.similarity_info.distance for r in results]
    assert distances == sorted(distances)


def test_any_picklable_metadata_survives_a_round_trip(base):
    metadata = [None, "text", b"bytes", 2**80, -1, 1.5, ("tuple", 1), frozenset({1}), {"nested": [1, {"a": 2}]},
                Bank("bank", 7)]
    index = HashsievePDQIndex([(h, m) for h, m in zip(base, metadata)])
    loaded = pickle.loads(pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL))
    for h, m in zip(base, metadata):
        assert [r.metadata for r in loaded.query(h)] == [m]


@dataclass(frozen=True)
class Bank:
    name: str
    content_id: int


def test_adds_between_queries_are_all_found(rnd, base):
    index = HashsievePDQIndex()
    for i, h in enumerate(base[:30]):
        index.add(h, i)
        assert (i, 0) in answer(index, h)                  # each add is visible to the next query
        assert answer(index, base[0]) == {(0, 0)}
    index.add_all((h, i) for i, h in enumerate(base[30:], 30))   # any iterable, a generator too
    for i, h in enumerate(base):
        assert (i, 0) in answer(index, h)


def test_concurrent_first_queries_see_every_queued_entry(base):
    index = HashsievePDQIndex([(h, i) for i, h in enumerate(base)])
    got, barrier = [None] * 8, threading.Barrier(8)

    def run(k):
        barrier.wait()
        got[k] = [answer(index, h) for h in base]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(g == [{(i, 0)} for i in range(len(base))] for g in got)


# ------------------------------------------------ HMA selects it through the signal type
def test_hashsieve_pdq_signal_selects_the_index_and_stays_pdq(base):
    assert issubclass(HashsievePdqSignal, PdqSignal)
    assert HashsievePdqSignal.get_index_cls() is HashsievePDQIndex
    assert HashsievePdqSignal.get_name() == PdqSignal.get_name() == "pdq"       # banks keep their "pdq" signals
    index = HashsievePdqSignal.get_index_cls().build([(base[0], 11), (base[1], 12)])   # as HMA builds it
    assert [(r.metadata, r.similarity_info.distance) for r in index.query(base[0])] == [(11, 0)]
    assert HashsievePdqSignal.compare_hash(base[0], base[0]).match


# ------------------------------------------------ bad input: clear errors
@pytest.mark.parametrize("bad", ["xyz", "0" * 16, "g" * 64, 12, None, b"\xff" * 32])
def test_bad_hash_is_a_clear_error(bad):
    index = HashsievePDQIndex([("0" * 64, 0)])
    with pytest.raises(ValueError, match="PDQ hash is 64 hex digits"):
        index.query(bad)
    with pytest.raises(ValueError, match=r"entries: .*\[1\].*PDQ hash is 64 hex digits"):
        index.add_all([("1" * 64, 1), (bad, 2)])
    assert len(index) == 1 and answer(index, "1" * 64) == set()    # a refused batch adds nothing


def test_entry_that_is_not_a_pair_is_a_clear_error():
    with pytest.raises(ValueError, match=r"entry 1 must be a \(pdq_hash, metadata\) pair"):
        HashsievePDQIndex([("0" * 64, 0), "0" * 64])


@pytest.mark.parametrize("bad", [-1, 257, 31.0, "31", True, None])
def test_bad_threshold_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="threshold must be an int from 0 to 256"):
        HashsievePDQIndex(threshold=bad)


def serialized(index):
    buffer = io.BytesIO()
    index.serialize(buffer)
    return buffer.getvalue()


def test_deserialize_refuses_what_is_not_our_index(base):
    good = serialized(HashsievePDQIndex([(h, i) for i, h in enumerate(base)]))
    cases = {
        "not a pickle": b"not a pickle at all",
        "truncated": good[:len(good) // 2],
        "another class": pickle.dumps(PDQIndex2(entries=[(base[0], 0)])),
        "a dict": pickle.dumps({"x": 1}),
    }
    for name, data in cases.items():
        with pytest.raises(IndexFormatError, match="HashsievePDQIndex.deserialize: the stream"):
            HashsievePDQIndex.deserialize(io.BytesIO(data))


def tampered(source, **changes):
    """The serialized bytes of the index source with its pickled state changed."""
    state = source.__getstate__()
    state.update(changes)
    return pickle.dumps(_Reduced(state))


class _Reduced:
    """Pickles as HashsievePDQIndex with a given state (to forge damaged streams)."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return HashsievePDQIndex.__new__, (HashsievePDQIndex,), self.state


def test_deserialize_refuses_a_damaged_state(base):
    index = HashsievePDQIndex([(h, i) for i, h in enumerate(base)])
    saved = index.__getstate__()["index"]
    flipped_byte = bytearray(saved)
    flipped_byte[len(saved) - 100] ^= 1                                 # in the last section's payload
    cases = {
        "format": ({"format": "something/9"}, "not a serialized HashsievePDQIndex this hashsieve reads"),
        "index bytes": ({"index": bytes(flipped_byte)}, "the stream's index is damaged: .* checksum"),
        "index cut, checksum kept right": ({"index": saved[:1000], "index_crc32": zlib.crc32(saved[:1000])},
                                           "the stream's index is damaged: index: "),
        "index type": ({"index": "text"}, "no index bytes or no metadata list"),
        "metadata count": ({"metadata": list(range(99))}, "100 256-bit codes for 99 metadata entries"),
        "threshold": ({"threshold": 999}, "threshold must be an int"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(IndexFormatError, match=message):
            HashsievePDQIndex.deserialize(io.BytesIO(tampered(index, **change)))
    assert answer(HashsievePDQIndex.deserialize(io.BytesIO(tampered(index))), base[7]) == {(7, 0)}


def test_ncmec_exchange_recognises_only_pdqsignal_itself_as_documented(monkeypatch, base):
    """docs/threatexchange.md: pytx's NCMEC exchange finds PDQ by `PdqSignal in signal_types`, so with
    HashsievePdqSignal it would skip NCMEC's PDQ hashes; such a deployment keeps PdqSignal and points its
    index at ours. If pytx starts matching by name, this fails and the docs can drop the caveat."""
    from threatexchange.exchanges.impl import ncmec_api
    assert ncmec_api._get_conversion([HashsievePdqSignal]) == {}
    monkeypatch.setattr(PdqSignal, "get_index_cls", classmethod(lambda cls: HashsievePDQIndex))   # the recipe
    assert list(ncmec_api._get_conversion([PdqSignal]).values()) == [PdqSignal]
    index = PdqSignal.get_index_cls().build([(base[0], 1)])
    assert type(index) is HashsievePDQIndex and answer(index, base[0]) == {(1, 0)}
