"""HashIndex results are exact: identical to a NumPy brute force and to FAISS,
on uniform and skewed data, for every planner path and SIMD kernel."""
import threading
import time

import numpy as np
import pytest

import hashsieve as hs
from hashsieve import _core
from oracle import knn_oracle, queries_for, range_oracle, skewed_codes


def build(codes, ids=None):
    index = hs.HashIndex()
    index.add(codes, ids)
    return index


def assert_range_equal(got, expected):
    for g, e, name in zip(got, expected, ("lims", "distances", "ids")):
        assert g.dtype == e.dtype, name
        np.testing.assert_array_equal(g, e, err_msg=name)


@pytest.fixture(params=["auto", "scan", "tables"])
def strategy(request):
    _core.set_strategy(request.param)
    yield request.param
    _core.set_strategy("auto")


def datasets(rng):
    return {
        "uniform": rng.integers(0, 2**64, 30_000, dtype=np.uint64, endpoint=False),
        "skewed": skewed_codes(rng, 30_000),
        # Low-entropy codes: the low 40 bits are zero, so whole tables fall in one bucket.
        "structured": np.arange(20_000, dtype=np.uint64) << np.uint64(40),
        "tiny": np.array([0, 1, 3, 2**64 - 1, 1], dtype=np.uint64),
    }


@pytest.mark.parametrize("name", ["uniform", "skewed", "structured", "tiny"])
def test_range_search_matches_oracle(rng, name, strategy, isa):
    codes = datasets(rng)[name]
    ids = rng.permutation(len(codes)).astype(np.int64) * 3   # ids unrelated to insertion order
    index = build(codes, ids)
    queries = queries_for(rng, codes, 60)
    for radius in (0, 1, 3, 5, 8, 10, 13, 20, 64):
        assert_range_equal(index.range_search(queries, radius), range_oracle(codes, ids, queries, radius))


@pytest.mark.parametrize("name", ["uniform", "skewed", "structured", "tiny"])
def test_knn_matches_oracle(rng, name, strategy, isa):
    codes = datasets(rng)[name]
    ids = rng.permutation(len(codes)).astype(np.int64)
    index = build(codes, ids)
    queries = queries_for(rng, codes, 40)
    for k in (1, 5, 100, len(codes) + 3):
        if k > 2000 and len(codes) > 2000:
            continue
        got = index.search(queries, k)
        expected = knn_oracle(codes, ids, queries, k)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_large_index_with_heavy_hash_and_tables(rng):
    """200k entries: MIH tables in use, one hash shared by 40k entries, tombstones."""
    codes = skewed_codes(rng, 200_000)
    codes[:40_000] = 0x0F0F0F0F0F0F0F0F
    index = build(codes)
    ids = np.arange(len(codes))
    removed = rng.choice(len(codes), 5_000, replace=False)
    assert index.remove(removed) == 5_000
    live = np.setdiff1d(ids, removed)
    queries = queries_for(rng, codes, 30)
    queries[0] = 0x0F0F0F0F0F0F0F0E
    for radius in (0, 4, 8, 12):
        assert_range_equal(index.range_search(queries, radius), range_oracle(codes[live], live, queries, radius))
    got = index.search(queries, 10)
    expected = knn_oracle(codes[live], live, queries, 10)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    stats = index.explain(queries[1:], radius=4)
    assert (stats["probes"] > 0).all() and (stats["scanned"] == 0).all(), "r=4 on 200k codes should use the tables"


def test_faiss_agrees(rng):
    faiss = pytest.importorskip("faiss")
    codes = skewed_codes(rng, 50_000)
    index = build(codes)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes.view(np.uint8).reshape(-1, 8))
    queries = queries_for(rng, codes, 50)
    qb = queries.view(np.uint8).reshape(-1, 8)
    for radius in (0, 3, 8, 12):
        lims, dist, ids = index.range_search(queries, radius)
        f_lims, f_dist, f_ids = flat.range_search(qb, radius + 1)   # FAISS keeps d < radius
        np.testing.assert_array_equal(lims, f_lims)
        for i in range(len(queries)):
            a, b = slice(lims[i], lims[i + 1]), slice(f_lims[i], f_lims[i + 1])
            assert sorted(zip(dist[a], ids[a])) == sorted(zip(f_dist[b], f_ids[b]))
    for k in (1, 10, 50):
        dist, ids = index.search(queries, k)
        f_dist, f_ids = flat.search(qb, k)
        np.testing.assert_array_equal(dist, f_dist)
        # FAISS breaks ties in its own order: compare ids strictly inside the k-th distance.
        for i in range(len(queries)):
            inside = dist[i] < dist[i, -1]
            assert set(ids[i][inside]) == set(f_ids[i][f_dist[i] < f_dist[i, -1]])
            assert (np.bitwise_count(codes[ids[i]] ^ queries[i]) == dist[i]).all()


def test_duplicates_all_returned_and_sorted_by_id(rng):
    codes = np.array([7, 7, 7, 6, 7], dtype=np.uint64)
    index = build(codes, np.array([40, 10, 30, 5, 20]))
    lims, dist, ids = index.range_search(7, 1)
    assert ids.tolist() == [10, 20, 30, 40, 5] and dist.tolist() == [0, 0, 0, 0, 1]
    dist, ids = index.search(7, 2)
    assert ids.tolist() == [[10, 20]]


def test_empty_index_and_empty_queries():
    index = hs.HashIndex()
    lims, dist, ids = index.range_search(np.zeros(3, np.uint64), 5)
    assert lims.tolist() == [0, 0, 0, 0] and dist.size == 0 and ids.size == 0
    dist, ids = index.search(0, 3)
    assert dist.tolist() == [[-1, -1, -1]] and ids.tolist() == [[-1, -1, -1]]
    lims, dist, ids = build([1, 2]).range_search(np.zeros(0, np.uint64), 5)
    assert lims.tolist() == [0]
    assert len(index) == 0


def test_add_assigns_ids_consecutively_and_rejects_repeats():
    index = hs.HashIndex()
    assert index.add([1, 2]).tolist() == [0, 1]
    assert index.add([3], ids=[10]).tolist() == [10]
    assert index.add([4]).tolist() == [11]
    with pytest.raises(ValueError, match="id 10 is already in the index"):
        index.add([5], ids=[10])
    with pytest.raises(ValueError, match="appears more than once"):
        index.add([5, 6], ids=[20, 20])
    assert index.remove([10]) == 1
    index.add([5], ids=[10])   # a removed id may be reused
    assert len(index) == 4


def test_remove_counts_and_hides_entries(rng):
    codes = rng.integers(0, 2**64, 10_000, dtype=np.uint64)
    index = build(codes)
    assert index.remove([3, 3, 5, 99_999]) == 2
    assert index.remove([3]) == 0
    assert index.remove([]) == 0
    assert index.remove(np.array([[7], [8]])) == 2 and index.remove(9) == 1
    with pytest.raises(TypeError, match="ids"):
        index.remove([1.5])
    assert len(index) == 9_995
    lims, dist, ids = index.range_search(codes[[3, 5, 6, 7]], 0)
    assert ids.tolist() == [6]


def test_delta_and_compact_keep_results(rng):
    codes = rng.integers(0, 2**64, 40_000, dtype=np.uint64)
    index = build(codes[:30_000])
    index.add(codes[30_000:32_000])             # goes to the delta segment
    index.add(codes[32_000:])                   # delta grows
    index.remove(np.arange(0, 40_000, 7))
    live = np.setdiff1d(np.arange(40_000), np.arange(0, 40_000, 7))
    queries = queries_for(rng, codes, 40)
    expected = range_oracle(codes[live], live, queries, 6)
    assert_range_equal(index.range_search(queries, 6), expected)
    index.compact()
    assert len(index.snapshot().segments) == 1 and len(index) == len(live)
    assert_range_equal(index.range_search(queries, 6), expected)


@pytest.mark.parametrize("bad, err, match", [
    (np.array([1, 2], dtype=np.int64), TypeError, "uint64"),
    (np.array([1.0]), TypeError, "uint64"),
    (np.zeros((2, 2), dtype=np.uint64), ValueError, "shape"),
    ("00ff", TypeError, "from_hex"),
    ([1, -1], ValueError, "64-bit unsigned"),
    (2**64, ValueError, "64-bit unsigned"),
])
def test_bad_hashes_are_refused_with_a_fix(bad, err, match):
    index = build([1, 2, 3])
    with pytest.raises(err, match=match):
        index.range_search(bad, 3)
    with pytest.raises(err, match=match):
        hs.HashIndex().add(bad)


def test_bad_radius_k_ids_threads():
    index = build([1, 2, 3])
    for radius in (-1, 65):
        with pytest.raises(ValueError, match="radius must be from 0 to 64"):
            index.range_search(1, radius)
    with pytest.raises(TypeError, match="radius"):
        index.range_search(1, 2.5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(1, 0)
    with pytest.raises(TypeError, match="ids"):
        index.add([4], ids=np.array([1.5]))
    with pytest.raises(ValueError, match="shape"):
        index.add([4, 5], ids=[7])
    with pytest.raises(ValueError, match=">= 0"):
        index.add([4], ids=[-3])
    with pytest.raises(ValueError, match="threads"):
        index.search(1, 1, threads=0)


def test_threads_give_identical_results(rng):
    codes = skewed_codes(rng, 50_000)
    index = build(codes)
    queries = queries_for(rng, codes, 300)
    one = index.range_search(queries, 7, threads=1)
    for threads in (2, 3, 8):
        assert_range_equal(index.range_search(queries, 7, threads=threads), one)
        np.testing.assert_array_equal(index.search(queries, 5, threads=threads)[1], index.search(queries, 5, threads=1)[1])


def test_parallel_scan_of_one_query_matches(rng, strategy):
    """A single query on a big segment splits its scan across threads."""
    codes = rng.integers(0, 2**64, 1_200_000, dtype=np.uint64)
    index = build(codes)
    queries = queries_for(rng, codes[:1000], 4)
    for q in queries:
        got = index.range_search(q, 14, threads=2)
        assert_range_equal(got, index.range_search(q, 14, threads=1))
        np.testing.assert_array_equal(index.search(q, 20, threads=2)[1], index.search(q, 20, threads=1)[1])
    lims, dist, ids = index.range_search(queries[0], 14, threads=2)
    np.testing.assert_array_equal(np.bitwise_count(codes[ids] ^ queries[0]), dist)


@pytest.fixture
def share_every_query():
    """Make every single query share its table probes with helper threads."""
    before = _core.set_split_min_ns(0)
    yield
    _core.set_split_min_ns(before)


@pytest.mark.parametrize("name", ["uniform", "skewed", "structured"])
def test_shared_query_matches_oracle(rng, name, strategy, share_every_query):
    """One query's probes split over threads (helpers join late, or not at all,
    and skewed data can abort to a scan midway): same answers as the oracle."""
    codes = datasets(rng)[name]
    ids = rng.permutation(len(codes)).astype(np.int64)
    index = build(codes, ids)
    queries = queries_for(rng, codes, 25)
    for radius in (0, 3, 6, 8, 11):
        expected = range_oracle(codes, ids, queries, radius)
        for threads in (2, 4):
            got = [index.range_search(q, radius, threads=threads) for q in queries]
            lims = np.concatenate([[0], np.cumsum([len(g[2]) for g in got])])
            assert_range_equal((lims, np.concatenate([g[1] for g in got]), np.concatenate([g[2] for g in got])),
                               expected)
        for q in queries[:4]:
            shared, alone = index.explain(q, radius=radius, threads=2), index.explain(q, radius=radius, threads=1)
            for key in ("probes", "hits", "scanned") if alone["scanned"][0] else alone:
                np.testing.assert_array_equal(shared[key], alone[key], err_msg=key)


def test_shared_query_with_many_hits(share_every_query):
    """A shared query whose helpers collect 100K+ hits (their buffers are then
    released), and queries after it: same answers as the oracle."""
    codes = np.arange(200_000, dtype=np.uint64) << np.uint64(40)    # all within 18 bits of 0
    ids = np.arange(len(codes), dtype=np.int64)
    index = build(codes, ids)
    _core.set_strategy("tables")
    try:
        for q, radius in ((0, 17), (1 << 40, 3), (0, 18)):
            queries = np.array([q], dtype=np.uint64)
            assert_range_equal(index.range_search(queries, radius, threads=2),
                               range_oracle(codes, ids, queries, radius))
    finally:
        _core.set_strategy("auto")


def test_shared_queries_from_many_threads(rng, share_every_query):
    """Python threads all sharing their queries: one owns the helpers, the
    others run alone; every answer is right."""
    codes = skewed_codes(rng, 40_000)
    index = build(codes)
    queries = queries_for(rng, codes, 40)
    expected = [index.range_search(q, 7, threads=1) for q in queries]
    errors = []

    def worker():
        for _ in range(5):
            for q, e in zip(queries, expected):
                got = index.range_search(q, 7, threads=2)
                if not all(np.array_equal(a, b) for a, b in zip(got, e)):
                    errors.append(q)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("batch", [False, True])
def test_sharing_backs_off_when_a_helper_stalls(rng, batch):
    """A helper that stops mid-job, as one that lost its core to another
    process would, makes that shared query (or batch) far slower than running
    alone: the gate runs the next ones alone, tries sharing again later, and
    backs off again at the next stall. Answers stay exact on every path."""
    codes = rng.integers(0, 2**64, 200_000, dtype=np.uint64)
    ids = rng.permutation(len(codes)).astype(np.int64)
    index = build(codes, ids)
    queries = queries_for(rng, codes, 64)
    if batch:
        # Each batch the 64 queries 4 times over: long enough (~2 ms) for a helper to get a core
        # even when every core is busy, and the oracle still cheap.
        lims, dist, found = range_oracle(codes, ids, queries, 11)
        jobs = [np.tile(queries, 4)] * 16
        want = [(np.concatenate([[0], np.cumsum(np.tile(np.diff(lims), 4))]), np.tile(dist, 4),
                 np.tile(found, 4))] * 16
    else:
        jobs = [queries[i:i + 1] for i in range(len(queries))]
        want = [range_oracle(codes, ids, q, 11) for q in jobs]
    before_min, before_stall = _core.set_split_min_ns(1), _core.set_helper_stall_ns(20_000_000)
    _core.share_counters(reset=True)
    try:
        for _ in range(40):       # back to back, so the helpers stay awake between jobs
            for job, w in zip(jobs, want):
                assert_range_equal(index.range_search(job, 11, threads=2), w)
            counts = _core.share_counters()
            if counts["joined"] >= 6:
                break
    finally:
        _core.set_helper_stall_ns(before_stall)
        _core.set_split_min_ns(before_min)
        _core.share_counters(reset=True)
    if not counts["joined"]:
        pytest.skip(f"no helper thread got a core to join a job (every core busy): {counts}")
    # After a (re)start the first shared job is not judged (it wakes the
    # helpers); the next one a stalled helper joined closes the gate.
    assert counts["joined"] <= 2 * (counts["backoffs"] + 1), counts
    assert counts["gated"] >= 16 * (counts["backoffs"] - 1), counts


def test_shared_query_after_fork(rng, share_every_query):
    """A forked child has no helper threads; its shared queries still answer."""
    import os
    codes = rng.integers(0, 2**64, 30_000, dtype=np.uint64)
    index = build(codes)
    q = codes[:1] ^ np.uint64(5)
    expected = index.range_search(q, 8, threads=2)       # starts the helpers here
    pid = os.fork()
    if pid == 0:
        ok = all(np.array_equal(a, b) for a, b in zip(index.range_search(q, 8, threads=2), expected))
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_concurrent_queries_while_changing(rng):
    """Python threads query while another adds and removes: every answer is exactly the oracle's
    answer over one of the two versions the index moves between."""
    codes = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    ids = np.arange(len(codes), dtype=np.int64)
    index = build(codes, ids)
    queries = codes[:50]
    extra = queries ^ np.uint64(1)           # each query gains one result at distance 1
    extra_ids = np.arange(10**6, 10**6 + len(extra), dtype=np.int64)
    versions = [(codes, ids), (np.concatenate([codes, extra]), np.concatenate([ids, extra_ids]))]
    expected = [(range_oracle(c, i, queries, 3), knn_oracle(c, i, queries, 3)) for c, i in versions]
    seen, errors, stop = [0, 0], [], threading.Event()

    def reader():
        while not stop.is_set():
            got_range, got_knn = index.range_search(queries, 3), index.search(queries, 3)
            match = [v for v, (want_range, _) in enumerate(expected)
                     if all(np.array_equal(g, w) for g, w in zip(got_range, want_range))]
            if len(match) != 1:
                errors.append("a range answer matches neither version")
                continue
            seen[match[0]] += 1
            # a k-NN query ran a moment later: it may have seen either version
            if not any(all(np.array_equal(g, w) for g, w in zip(got_knn, want_knn)) for _, want_knn in expected):
                errors.append("a k-NN answer matches neither version")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(15):
        index.add(extra, ids=extra_ids)
        time.sleep(0.002)
        assert index.remove(extra_ids) == len(extra)
        time.sleep(0.002)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert seen[0] and seen[1], f"the readers saw only one version ({seen}); the test proves little"


def test_snapshot_is_one_consistent_version(rng):
    """snapshot() reads segments and next_id in one step and never changes afterwards."""
    index = build(rng.integers(0, 2**64, 5000, dtype=np.uint64))
    snap = index.snapshot()
    index.add(rng.integers(0, 2**64, 10, dtype=np.uint64))
    index.remove([0, 1])
    assert snap.next_id == 5000 and len(snap.segments) == 1 and snap.segments[0].dead is None
    assert index.snapshot().next_id == 5010 and len(index.snapshot().segments) == 2
    np.testing.assert_array_equal(np.asarray(snap.segments[0].ids)[snap.id_order(0)], np.arange(5000))
    copy = hs.HashIndex.from_segments(snap.segments, snap.next_id)
    assert len(copy) == 5000 and copy.add([7]).tolist() == [5000]


def test_segment_arrays_of_the_wrong_kind_are_refused():
    """from_segments() is public: a Segment refuses arrays the native code would misread."""
    good = _core.build_segment(np.arange(5000, dtype=np.uint64) * np.uint64(977), np.arange(5000, dtype=np.int64))
    args = [good.codes, good.group_start, good.ids, good.bits, good.offsets, good.fps, good.table_groups]
    _core.Segment(*args)
    for i, bad, match in [(0, good.codes.astype(np.int64), "codes must be C-contiguous uint64"),
                          (1, good.group_start[:-1], r"group_start must be C-contiguous uint32 of shape \(5001,\)"),
                          (2, np.asarray(good.ids)[::-1], "ids must be C-contiguous int64"),
                          (3, (32, 32), "invalid table split"),
                          (5, good.fps[:-1], "invalid table split"),
                          (6, (good.table_groups[1],) + good.table_groups[1:], "table_groups.0. must be None")]:
        with pytest.raises(ValueError, match=match):
            _core.Segment(*(args[:i] + [bad] + args[i + 1:]))
    with pytest.raises(ValueError, match="dead must be C-contiguous uint8 of shape"):
        _core.Segment(*args, dead=np.zeros(3, np.uint8))


def test_ids_the_index_cannot_number_past_are_refused():
    """An id of 2**63-1 would make the next numbered id overflow int64: refused, like numbering past it."""
    index = hs.HashIndex()
    for bad in ([2**63 - 1], np.array([2**63 - 1]), np.array([3, 2**63 - 1], dtype=np.int64)):
        with pytest.raises(ValueError, match=r"at most 2\*\*63-2"):
            index.add([1] * len(bad), ids=bad)
    assert len(index) == 0
    index.add([1, 2], ids=[5, 2**63 - 2])                 # the largest id is fine
    with pytest.raises(ValueError, match="cannot number 1 more ids.*pass ids="):
        index.add([3])
    assert index.add([3], ids=[6]).tolist() == [6] and len(index) == 3
    assert index.remove([2**63 - 2]) == 1


def test_segment_over_2_32_entries_is_refused():
    """group_start holds 32-bit entry positions: a bigger segment is refused before anything is allocated."""
    from numpy.lib.stride_tricks import as_strided
    n = 2**32                                              # zero strides: no memory behind the arrays
    codes = as_strided(np.zeros(1, np.uint64), shape=(n,), strides=(0,))
    ids = as_strided(np.zeros(1, np.int64), shape=(n,), strides=(0,))
    with pytest.raises(ValueError, match="at most 4294967295 entries"):
        _core.build_segment(codes, ids)
    with pytest.raises(ValueError, match="3 codes but 2 ids"):
        _core.build_segment(np.zeros(3, np.uint64), np.zeros(2, np.int64))


def test_k_over_the_cap_is_refused_before_allocating():
    """k up to MAX_K pads with -1; a larger k is refused instead of allocating k results per query."""
    from hashsieve._validate import MAX_K
    index = build(np.arange(100, dtype=np.uint64))
    dist, ids = index.search([0, 5], MAX_K)
    assert dist.shape == ids.shape == (2, MAX_K) and (ids[:, 100:] == -1).all() and (ids[:, :100] >= 0).all()
    for k in (MAX_K + 1, 2**31 - 1, 2**31, 2**63):
        with pytest.raises(ValueError, match=f"k must be at most {MAX_K}.*range_search"):
            index.search(0, k)
        with pytest.raises(ValueError, match=f"k must be at most {MAX_K}"):
            index.explain(0, k=k)


def test_threads_over_the_cap_are_refused():
    from hashsieve._validate import MAX_THREADS
    index = build(np.arange(100, dtype=np.uint64))
    assert index.search(0, 1, threads=MAX_THREADS)[1].tolist() == [[0]]
    for threads in (MAX_THREADS + 1, 3000, 2**31, 2**63):
        for call in (lambda: index.search(0, 1, threads=threads), lambda: index.range_search(0, 1, threads=threads),
                     lambda: index.add([1], threads=threads), lambda: index.compact(threads=threads)):
            with pytest.raises(ValueError, match=f"threads must be an int from 1 to {MAX_THREADS}"):
                call()
    assert len(index) == 100


def test_add_with_ids_checks_repeats_without_np_unique(monkeypatch, rng):
    """np.unique takes 10 s on 10M ids in numpy 2.4 (a sort takes 0.9 s): the id checks must not call it."""
    def unique(*args, **kwargs):
        raise AssertionError("np.unique called")
    monkeypatch.setattr(np, "unique", unique)
    index = hs.HashIndex()
    sparse = rng.choice(2**62, 2000, replace=False).astype(np.int64)     # too spread for the bitmap
    for ids in (np.array([4, 9, 7, 9, 1]), np.concatenate([sparse, sparse[[1500]]])):
        with pytest.raises(ValueError, match=f"id {ids[-2] if len(ids) == 5 else sparse[1500]} appears more than once"):
            index.add(np.zeros(len(ids), np.uint64), ids=ids)
    index.add(rng.integers(0, 2**64, 6000, dtype=np.uint64), ids=np.arange(6000) * 3)
    index.add(np.zeros(2000, np.uint64), ids=sparse)
    with pytest.raises(ValueError, match=f"id {sparse[7]} is already in the index"):
        index.add([1, 2], ids=[1, sparse[7]])
    with pytest.raises(ValueError, match="id 2997 is already in the index"):
        index.add([1, 2], ids=[2997, 1])
    assert index.remove([3, 3, 6, 1, sparse[0]]) == 3 and len(index) == 7997


def test_readme_quickstart_runs():
    """The README's example code runs as written."""
    import pathlib
    import re
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_big_batches_always_share(rng):
    """Every 16th batch ran alone on one thread as the gate's control job: for big batches that cost
    (15 + cores) / 16 of the shared time. A big batch hands out its queries a group at a time, so it
    always shares; its answers stay exact."""
    codes = rng.integers(0, 2**64, 200_000, dtype=np.uint64)
    ids = np.arange(len(codes), dtype=np.int64)
    index = build(codes, ids)
    queries = queries_for(rng, codes, 1024)
    want = range_oracle(codes, ids, queries, 6)
    _core.share_counters(reset=True)
    try:
        for _ in range(40):
            assert_range_equal(index.range_search(queries, 6, threads=2), want)
        counts = _core.share_counters()
    finally:
        _core.share_counters(reset=True)
    assert counts["shared"] == 40 and counts["gated"] == 0, counts
