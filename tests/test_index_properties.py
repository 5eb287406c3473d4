"""Property-based tests: edge values, duplicates, any radius and k, and a
state machine driving add/remove/compact/search beside a plain Python model."""
import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import hashsieve as hs
from oracle import knn_oracle, range_oracle

EDGE = [0, 1, 2**63, 2**64 - 1, 0x5555555555555555, 0xAAAAAAAAAAAAAAAA]
code = st.one_of(st.sampled_from(EDGE), st.integers(0, 2**64 - 1))
# Few distinct values so that duplicates and near neighbours are common.
clustered = st.builds(lambda base, flips: base ^ flips, st.sampled_from(EDGE),
                      st.sampled_from([0, 1, 3, 1 << 40, (1 << 20) | 1, 0xFF << 30]))
codes_st = st.lists(st.one_of(code, clustered), max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codes=codes_st, queries=st.lists(code, min_size=1, max_size=8),
       radius=st.integers(0, 64), k=st.integers(1, 40))
def test_matches_oracle(codes, queries, radius, k):
    codes = np.array(codes, dtype=np.uint64)
    queries = np.array(queries, dtype=np.uint64)
    ids = np.arange(len(codes), dtype=np.int64)[::-1].copy()
    index = hs.HashIndex()
    index.add(codes, ids)
    for got, exp in zip(index.range_search(queries, radius), range_oracle(codes, ids, queries, radius)):
        np.testing.assert_array_equal(got, exp)
    for got, exp in zip(index.search(queries, k), knn_oracle(codes, ids, queries, k)):
        np.testing.assert_array_equal(got, exp)


@given(st.lists(code, max_size=50))
def test_hex_round_trip(values):
    arr = np.array(values, dtype=np.uint64)
    text = hs.to_hex(arr)
    assert all(len(t) == 16 for t in text)
    assert [int(t, 16) for t in text] == values
    np.testing.assert_array_equal(hs.from_hex(text), arr)


class IndexModel(RuleBasedStateMachine):
    """The index against a dict id -> code."""

    def __init__(self):
        super().__init__()
        self.index = hs.HashIndex()
        self.model = {}
        self.next_id = 0

    @rule(values=st.lists(st.one_of(code, clustered), min_size=1, max_size=2000))
    def add(self, values):
        ids = self.index.add(np.array(values, dtype=np.uint64))
        assert ids.tolist() == list(range(self.next_id, self.next_id + len(values)))
        self.next_id += len(values)
        self.model.update(zip(ids.tolist(), values))

    @rule(n=st.integers(1000, 12_000), seed=st.integers(0, 2**32 - 1))
    def add_many(self, n, seed):
        """Enough codes for the MIH tables to be built (a few thousand distinct codes)."""
        rng = np.random.default_rng(seed)
        values = rng.integers(0, 2**64, n, dtype=np.uint64)
        q = n // 4
        values[:q] = values[q:2 * q] ^ np.uint64(1)   # near-duplicates
        ids = self.index.add(values)
        self.model.update(zip(ids.tolist(), values.tolist()))
        self.next_id += n

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=50))
        absent = data.draw(st.lists(st.integers(self.next_id, self.next_id + 5), max_size=3))
        removed = self.index.remove(np.array(chosen + absent, dtype=np.int64))
        assert removed == len(set(chosen))
        for i in chosen:
            self.model.pop(i, None)

    @rule()
    def compact(self):
        self.index.compact()

    @rule(queries=st.lists(code, min_size=1, max_size=4), radius=st.integers(0, 64), k=st.integers(1, 30))
    def search(self, queries, radius, k):
        ids = np.array(sorted(self.model), dtype=np.int64)
        codes = np.array([self.model[i] for i in ids.tolist()], dtype=np.uint64)
        queries = np.array(queries, dtype=np.uint64)
        for got, exp in zip(self.index.range_search(queries, radius), range_oracle(codes, ids, queries, radius)):
            np.testing.assert_array_equal(got, exp)
        for got, exp in zip(self.index.search(queries, k), knn_oracle(codes, ids, queries, k)):
            np.testing.assert_array_equal(got, exp)

    @invariant()
    def length(self):
        assert len(self.index) == len(self.model)


TestIndexModel = IndexModel.TestCase
TestIndexModel.settings = settings(max_examples=40, stateful_step_count=12, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- 256-bit codes
EDGE256 = [bytes(32), b"\xff" * 32, b"\x55" * 32, b"\x80" + bytes(31)]
code256 = st.one_of(st.sampled_from(EDGE256), st.binary(min_size=32, max_size=32))
# Near neighbours of the edge codes: a few bytes changed.
clustered256 = st.builds(lambda base, at, value: base[:at] + bytes([value]) + base[at + 1:],
                         st.sampled_from(EDGE256), st.integers(0, 31), st.integers(0, 255))


def as_codes256(values):
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, 32).copy()


class IndexModel256(RuleBasedStateMachine):
    """A 256-bit index against a dict id -> code, through add/remove/compact/search and save/load."""

    def __init__(self):
        super().__init__()
        self.index = hs.HashIndex(bits=256)
        self.model = {}
        self.folder = tempfile.TemporaryDirectory()

    def teardown(self):
        self.folder.cleanup()

    @rule(values=st.lists(st.one_of(code256, clustered256), min_size=1, max_size=300))
    def add(self, values):
        ids = self.index.add(as_codes256(values))
        self.model.update(zip(ids.tolist(), values))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.model)), max_size=30))
        assert self.index.remove(np.array(chosen, dtype=np.int64)) == len(set(chosen))
        for i in chosen:
            self.model.pop(i, None)

    @rule()
    def compact(self):
        self.index.compact()

    @rule(mmap=st.booleans())
    def save_load(self, mmap):
        path = os.path.join(self.folder.name, "index.hsi")
        self.index.save(path)
        self.index = hs.HashIndex.load(path, mmap=mmap, verify=True)

    @rule(queries=st.lists(st.one_of(code256, clustered256), min_size=1, max_size=4), radius=st.integers(0, 256),
          k=st.integers(1, 30))
    def search(self, queries, radius, k):
        ids = np.array(sorted(self.model), dtype=np.int64)
        codes = as_codes256([self.model[i] for i in ids.tolist()]) if len(ids) else np.empty((0, 32), np.uint8)
        queries = as_codes256(queries)
        for got, exp in zip(self.index.range_search(queries, radius), range_oracle(codes, ids, queries, radius)):
            np.testing.assert_array_equal(got, exp)
        if len(ids):
            for got, exp in zip(self.index.search(queries, k), knn_oracle(codes, ids, queries, k)):
                np.testing.assert_array_equal(got, exp)

    @invariant()
    def length(self):
        assert len(self.index) == len(self.model)


TestIndexModel256 = IndexModel256.TestCase
TestIndexModel256.settings = settings(max_examples=25, stateful_step_count=10, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
