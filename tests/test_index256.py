"""256-bit codes (PDQ's width) in the native index: exact against NumPy and FAISS, every kernel,
every radius, k-NN, threads, changes, files and the errors for wrong widths."""
import threading

import numpy as np
import pytest

import hashsieve as hs
from hashsieve import _core
from oracle import (correlated256, flip_bits256, index_content, knn_oracle, queries256, range_oracle, skewed256,
                    uniform256)

DATA = {"uniform": uniform256, "skewed": skewed256, "correlated": correlated256}


def assert_range_equal(index, codes, ids, queries, radius, threads=None):
    got = index.range_search(queries, radius, threads=threads)
    for g, e in zip(got, range_oracle(codes, ids, queries, radius)):
        np.testing.assert_array_equal(g, e)


def all_radii_oracle(codes, ids, queries):
    """Per query the entries sorted by (distance, id) and their distances: every radius's answer is a prefix."""
    out = []
    for q in queries:
        d = np.bitwise_count(codes ^ q).sum(axis=1, dtype=np.int64)
        order = np.lexsort((ids, d))
        out.append((d[order], ids[order]))
    return out


@pytest.mark.parametrize("kind", sorted(DATA))
def test_256_every_radius_matches_numpy_oracle(isa, kind):
    rng = np.random.default_rng(12)
    codes = DATA[kind](rng, 1500)
    ids = rng.permutation(10 * len(codes))[:len(codes)].astype(np.int64)
    index = hs.HashIndex(bits=256)
    index.add(codes, ids)
    queries = queries256(rng, codes, 10)
    expected = all_radii_oracle(codes, ids, queries)
    for radius in range(257):
        lims, dist, got_ids = index.range_search(queries, radius)
        for i, (d, e) in enumerate(expected):
            n = int(np.searchsorted(d, radius, side="right"))
            assert lims[i + 1] - lims[i] == n, (radius, i)
            np.testing.assert_array_equal(dist[lims[i]:lims[i + 1]], d[:n])
            np.testing.assert_array_equal(got_ids[lims[i]:lims[i + 1]], e[:n])


@pytest.mark.parametrize("kind", sorted(DATA))
@pytest.mark.parametrize("k", [1, 10, 100])
def test_256_knn_matches_numpy_oracle(isa, kind, k):
    rng = np.random.default_rng(13)
    codes = DATA[kind](rng, 3000)
    ids = np.arange(len(codes), dtype=np.int64)[::-1].copy()
    index = hs.HashIndex(bits=256)
    index.add(codes, ids)
    queries = queries256(rng, codes, 16)
    for g, e in zip(index.search(queries, k), knn_oracle(codes, ids, queries, k)):
        np.testing.assert_array_equal(g, e)


def test_256_matches_faiss_flat_tie_aware():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(14)
    codes = np.concatenate([correlated256(rng, 3000), skewed256(rng, 2000)])
    index = hs.HashIndex(bits=256)
    ids = index.add(codes)
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    queries = queries256(rng, codes, 30)
    for radius in (0, 8, 16, 24, 31, 32, 48, 64, 96, 128, 256):
        lims, dist, got = index.range_search(queries, radius)
        flims, fdist, fids = flat.range_search(queries, radius + 1)    # FAISS keeps d < radius
        for i in range(len(queries)):
            ours = sorted(zip(dist[lims[i]:lims[i + 1]].tolist(), got[lims[i]:lims[i + 1]].tolist()))
            theirs = sorted(zip(fdist[flims[i]:flims[i + 1]].tolist(), ids[fids[flims[i]:flims[i + 1]]].tolist()))
            assert ours == theirs, (radius, i)
    for k in (1, 10, 100):
        dist, got = index.search(queries, k)
        fdist, fids = flat.search(queries, k)
        np.testing.assert_array_equal(dist, fdist)
        for i in range(len(queries)):
            kth = dist[i, -1]
            # below the k-th distance both hold the same entries; at it, any of the tied ones
            assert set(got[i][dist[i] < kth]) == set(ids[fids[i][fdist[i] < kth]])
            tied = set(ids[np.flatnonzero(np.bitwise_count(codes ^ queries[i]).sum(axis=1) == kth)])
            assert set(got[i][dist[i] == kth]) <= tied and set(ids[fids[i][fdist[i] == kth]]) <= tied


@pytest.fixture(scope="module")
def big256():
    """A segment big enough that one query's scan is split over threads, with its oracle answers."""
    rng = np.random.default_rng(15)
    codes = correlated256(rng, 300_000)
    index = hs.HashIndex(bits=256)
    ids = index.add(codes)
    queries = queries256(rng, codes, 4)
    return index, queries, range_oracle(codes, ids, queries, 40), knn_oracle(codes, ids, queries[:2], 10)


def test_256_scan_split_over_threads_matches_oracle(isa, big256):
    index, queries, want_range, want_knn = big256
    for threads in (1, 2, 3):
        for q in (queries[:1], queries):           # one query's scan split, and a batch over workers
            lims, dist, ids = index.range_search(q, 40, threads=threads)
            n = len(q)
            np.testing.assert_array_equal(lims, want_range[0][:n + 1])
            np.testing.assert_array_equal(dist, want_range[1][:lims[-1]])
            np.testing.assert_array_equal(ids, want_range[2][:lims[-1]])
        for g, e in zip(index.search(queries[:2], 10, threads=threads), want_knn):
            np.testing.assert_array_equal(g, e)


def test_256_delta_tombstones_compact_and_queries_during_changes():
    rng = np.random.default_rng(16)
    model = {}
    index = hs.HashIndex(bits=256)
    first = skewed256(rng, 4000)
    model.update(zip(index.add(first).tolist(), first))
    stop, errors = threading.Event(), []
    probe = first[:5]

    def query_loop():
        while not stop.is_set():
            lims, dist, _ = index.range_search(probe, 0)
            if not (np.diff(lims) >= 0).all() or (dist != 0).any():
                errors.append("inconsistent result")

    reader = threading.Thread(target=query_loop)
    reader.start()
    try:
        for step in range(6):
            more = flip_bits256(rng, first[rng.integers(0, len(first), 300)], 0, 20)
            model.update(zip(index.add(more).tolist(), more))
            gone = rng.choice(sorted(model), 200, replace=False)
            assert index.remove(gone) == 200
            for i in gone.tolist():
                del model[i]
            if step == 3:
                index.compact()
            ids = np.array(sorted(model), dtype=np.int64)
            codes = np.array([model[i] for i in ids.tolist()], dtype=np.uint8)
            assert len(index) == len(model)
            assert_range_equal(index, codes, ids, queries256(rng, codes, 8), 31)
            got_codes, got_ids = index_content(index)
            order = np.argsort(got_ids)
            np.testing.assert_array_equal(got_ids[order], ids)
            np.testing.assert_array_equal(got_codes[order], codes)
    finally:
        stop.set()
        reader.join()
    assert not errors
    assert len(index.snapshot().segments) in (1, 2)


def test_256_explain_counts_the_scan():
    rng = np.random.default_rng(17)
    codes = uniform256(rng, 2000)
    index = hs.HashIndex(bits=256)
    index.add(codes)
    stats = index.explain(codes[:3], radius=31)
    assert stats["scanned"].tolist() == [2000] * 3 and stats["hits"].tolist() == [1, 1, 1]
    assert index.explain(codes[:3], k=5)["scanned"].tolist() == [2000] * 3


def test_256_save_load_mmap_verify_handle(tmp_path):
    rng = np.random.default_rng(18)
    codes = skewed256(rng, 3000)
    index = hs.HashIndex(bits=256)
    index.add(codes)
    index.add(uniform256(rng, 100))           # a delta
    index.remove(np.arange(0, 3000, 7))       # tombstones
    path = tmp_path / "pdq.hsi"
    index.save(path, metadata={"kind": "pdq"})
    assert hs.read_metadata(path)["code_bits"] == 256
    queries = queries256(rng, codes, 12)
    want = index.range_search(queries, 48)
    for mmap in (True, False):
        loaded = hs.HashIndex.load(path, mmap=mmap, verify=True)
        assert loaded.bits == 256 and len(loaded) == len(index)
        loaded.verify()
        for g, e in zip(loaded.range_search(queries, 48), want):
            np.testing.assert_array_equal(g, e)
    with hs.IndexHandle(path) as handle:
        for g, e in zip(handle.range_search(queries, 48), want):
            np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(handle.search(queries, 3)[1], index.search(queries, 3)[1])
    empty = tmp_path / "empty.hsi"
    hs.HashIndex(bits=256).save(empty)
    assert hs.HashIndex.load(empty).bits == 256


def test_256_damaged_codes_are_caught_by_verify(tmp_path):
    index = hs.HashIndex(bits=256)
    index.add(uniform256(np.random.default_rng(19), 500))
    path = tmp_path / "x.hsi"
    index.save(path)
    sec = next(s for s in hs.read_metadata(path)["sections"] if s["name"] == "segment0.codes")
    data = bytearray(path.read_bytes())
    data[sec["offset"] + 40] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(hs.IndexFormatError, match="codes: checksum mismatch"):
        hs.HashIndex.load(path, verify=True)


# ---------------------------------------------------------------- wrong widths are clear errors
def test_64_bit_hashes_given_to_a_256_bit_index_name_the_fix():
    index = hs.HashIndex(bits=256)
    with pytest.raises(TypeError, match=r"uint8 array of shape \(n, 32\).*64-bit hashes.*HashIndex\(\)"):
        index.add(np.arange(5, dtype=np.uint64))
    with pytest.raises(TypeError, match="from_hex"):
        index.range_search(12345, 3)
    with pytest.raises(TypeError, match="from_hex"):
        index.search([1, 2], 3)


def test_256_bit_codes_given_to_a_64_bit_index_name_the_fix():
    index = hs.HashIndex()
    index.add(np.arange(5, dtype=np.uint64))
    with pytest.raises(TypeError, match=r"256-bit codes.*HashIndex\(bits=256\)"):
        index.add(np.zeros((3, 32), np.uint8))
    with pytest.raises(TypeError, match=r"HashIndex\(bits=256\)"):
        index.range_search(np.zeros(32, np.uint8), 3)


@pytest.mark.parametrize("shape", [(4, 31), (4, 33), (31,), (2, 2, 32), (0, 16)])
def test_256_bit_codes_of_the_wrong_shape_are_refused(shape):
    index = hs.HashIndex(bits=256)
    with pytest.raises(ValueError, match=r"must have shape \(n, 32\) or \(32,\)"):
        index.add(np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match=r"must have shape \(n, 32\)"):
        index.range_search(np.zeros(shape, np.uint8), 1)


@pytest.mark.parametrize("radius", [-1, 257, 1000])
def test_256_radius_outside_0_to_256_is_refused(radius):
    index = hs.HashIndex(bits=256)
    index.add(np.zeros((2, 32), np.uint8))
    with pytest.raises(ValueError, match=r"from 0 to 256 bits"):
        index.range_search(np.zeros(32, np.uint8), radius)
    with pytest.raises(ValueError, match=r"from 0 to 256 bits"):
        index.explain(np.zeros(32, np.uint8), radius=radius)


def test_radius_above_64_is_still_refused_by_a_64_bit_index():
    index = hs.HashIndex()
    with pytest.raises(ValueError, match=r"from 0 to 64 bits"):
        index.range_search(1, 65)


@pytest.mark.parametrize("bits", [0, 32, 128, "256", None])
def test_other_code_widths_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be 64 .* or 256"):
        hs.HashIndex(bits=bits)


def test_256_bit_codes_at_an_odd_address_are_read_whole():
    rng = np.random.default_rng(22)
    codes = uniform256(rng, 50)
    index = hs.HashIndex(bits=256)
    ids = index.add(codes)
    buffer = np.empty(50 * 32 + 1, np.uint8)
    odd = buffer[1:].reshape(50, 32)          # C-contiguous, not 8-byte aligned
    odd[:] = codes
    assert odd.ctypes.data % 8
    assert_range_equal(index, codes, ids, odd, 40)
    index.add(odd)
    assert len(index) == 100 and index.range_search(codes[0], 0)[0].tolist() == [0, 2]


def test_256_bit_edge_codes_and_radius_256():
    codes = np.array([np.zeros(32, np.uint8), np.full(32, 255, np.uint8), np.zeros(32, np.uint8)])
    index = hs.HashIndex(bits=256)
    index.add(codes, ids=[5, 3, 9])
    lims, dist, ids = index.range_search(codes[0], 256)
    assert lims.tolist() == [0, 3] and dist.tolist() == [0, 0, 256] and ids.tolist() == [5, 9, 3]
    lims, dist, ids = index.range_search(codes[1], 255)
    assert dist.tolist() == [0] and ids.tolist() == [3]
    dist, ids = index.search(codes[1], 5)
    assert dist.tolist() == [[0, 256, 256, -1, -1]] and ids.tolist() == [[3, 5, 9, -1, -1]]


# ---------------------------------------------------------------- multi-index tables (stage 2)
PDQ_RADII = (0, 8, 16, 24, 31, 32, 48, 64, 96)


@pytest.fixture
def strategy():
    yield _core.set_strategy
    _core.set_strategy("auto")


@pytest.fixture(scope="module", params=sorted(DATA))
def tables256(request):
    """200K codes of each kind (tables of 16 bits), queries and every answer up to radius 96."""
    rng = np.random.default_rng(20)
    codes = DATA[request.param](rng, 200_000)
    index = hs.HashIndex(bits=256)
    ids = index.add(codes, rng.permutation(len(codes)).astype(np.int64) * 3)
    queries = queries256(rng, codes, 24)
    return request.param, index, queries, all_radii_oracle(codes, ids, queries)


def assert_all_radii(index, queries, expected, radii, threads=1):
    for radius in radii:
        lims, dist, got_ids = index.range_search(queries, radius, threads=threads)
        for i, (d, e) in enumerate(expected):
            n = int(np.searchsorted(d, radius, side="right"))
            assert lims[i + 1] - lims[i] == n, (radius, i)
            np.testing.assert_array_equal(dist[lims[i]:lims[i + 1]], d[:n])
            np.testing.assert_array_equal(got_ids[lims[i]:lims[i + 1]], e[:n])


def test_256_tables_are_chosen_by_the_cost_model(tables256):
    _, index, _, _ = tables256
    (main,) = index.layout()
    assert main["tables"] == (16,) * 16 and main["entries"] == 200_000
    assert _core.choose_tables(16383, 256) == ()
    for n in (10**7, 10**8):      # about log2(N)-bit substrings at PDQ scale, none over 24 bits
        widths = _core.choose_tables(n, 256)
        assert sum(widths) == 256 and 11 <= len(widths) <= 12 and max(widths) <= 24, widths
    assert _core.choose_tables(10**6, 64) == (16, 16, 16, 16)       # the 64-bit layout is unchanged


@pytest.mark.parametrize("forced", ["auto", "tables", "scan"])
def test_256_tables_match_oracle_at_pdq_radii(isa, tables256, strategy, forced):
    kind, index, queries, expected = tables256
    strategy(forced)
    assert_all_radii(index, queries, expected, PDQ_RADII)


def test_256_tables_are_used_at_radius_31(tables256):
    kind, index, queries, _ = tables256
    stats = index.explain(queries, radius=31)
    assert (stats["probes"] == 272).all()          # 16 tables, substring radius 1: 16 x (1 + 16)
    if kind != "correlated":                       # there dense buckets may make some queries scan
        assert (stats["scanned"] == 0).all()


def test_256_tables_split_one_query_over_threads(tables256):
    _, index, queries, expected = tables256
    before = _core.set_split_min_ns(0)             # share every query's probes between threads
    try:
        assert_all_radii(index, queries[:1], expected[:1], (31, 48), threads=2)
        assert_all_radii(index, queries, expected, (31,), threads=2)
    finally:
        _core.set_split_min_ns(before)


def test_256_tables_survive_save_load_and_verify(tmp_path, tables256):
    _, index, queries, expected = tables256
    path = tmp_path / "tables.hsi"
    index.save(path)
    info = hs.read_metadata(path)
    assert info["segments"][0]["bits"] == [16] * 16
    loaded = hs.HashIndex.load(path, verify=True)
    assert loaded.layout()[0]["tables"] == (16,) * 16
    assert_all_radii(loaded, queries, expected, (0, 31, 64))


def test_256_damaged_table_is_caught_by_verify(tmp_path):
    rng = np.random.default_rng(21)
    index = hs.HashIndex(bits=256)
    index.add(uniform256(rng, 20_000))
    path = tmp_path / "t.hsi"
    index.save(path)
    sec = next(s for s in hs.read_metadata(path)["sections"] if s["name"] == "segment0.table_groups[3]")
    data = bytearray(path.read_bytes())
    data[sec["offset"]:sec["offset"] + 8] = data[sec["offset"] + 8:sec["offset"] + 16]   # a slot repeated
    path.write_bytes(bytes(data))
    with pytest.raises(hs.IndexFormatError, match="table 3 holds a code outside its bucket"):
        hs.HashIndex.load(path, verify=False)          # a small segment's tables are checked on every load


@pytest.mark.parametrize("k", [1, 10, 100])
def test_256_knn_runs_through_the_tables(isa, tables256, k):
    """k-NN on a segment with tables probes them ring by ring (it used to scan every code), exact and
    tie-aware against the oracle, also when the planner may not give up on the tables."""
    kind, index, queries, expected = tables256
    near = queries[:(len(queries) - 2) // 2]       # near-duplicates: the nearest is certified by ring 1
    stats = index.explain(near, k=1)
    assert (stats["probes"] > 0).all() and (stats["scanned"] == 0).all(), stats
    some = [0, 1, 2, len(near), len(near) + 1]     # near and random queries
    for forced, picked in (("auto", range(len(queries))), ("tables", some)):
        _core.set_strategy(forced)
        try:
            dist, ids = index.search(queries[list(picked)], k)
            if forced == "tables":                 # rings up to 6 certify 16 x 7 - 1 = 111 bits
                assert (index.explain(queries[some], k=k)["scanned"] == 0).all()
        finally:
            _core.set_strategy("auto")
        for row, i in enumerate(picked):
            d, e = expected[i]
            np.testing.assert_array_equal(dist[row], d[:k])
            np.testing.assert_array_equal(ids[row], e[:k])


def test_256_kept_search_buffers_never_leak_into_the_next_search(tables256):
    """Each thread keeps its search buffers between searches (up to a bound): a small search after one
    whose results outgrew the bound, and after one that fit, returns exactly its own results."""
    _, index, queries, expected = tables256
    for big_radius, nq in ((256, 3), (96, 2)):     # 600,000 results (buffers given back), then fewer (kept)
        lims, _, _ = index.range_search(queries[:nq], big_radius)
        assert lims[-1] == sum(len(d[d <= big_radius]) for d, _ in expected[:nq])
        lims, dist, ids = index.range_search(queries[:1], 31)
        d, e = expected[0]
        n = int(np.searchsorted(d, 31, side="right"))
        np.testing.assert_array_equal(dist, d[:n])
        np.testing.assert_array_equal(ids, e[:n])


FIRST_BATCH = """
import numpy as np, hashsieve as hs
from hashsieve import _core
rng = np.random.default_rng(5)
index = hs.HashIndex(bits=256)
index.add(rng.integers(0, 256, (50_000, 32), dtype=np.uint8))
queries = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)   # ~0.1 s a thread
one = index.range_search(queries, 31, threads=1)
_core.share_counters(reset=True)
two = index.range_search(queries, 31, threads=2)    # the first call that starts a helper thread
assert all(np.array_equal(a, b) for a, b in zip(one, two))
print(_core.share_counters()["joined"])
"""


def test_first_batch_of_a_process_gets_its_helper_thread():
    # A helper started for a job once read the job's generation after the job was
    # published, took it for one it had seen, and left the whole batch to one core.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", FIRST_BATCH], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


@pytest.fixture(scope="module")
def big_batch256(tables256):
    """A batch of 2 x 256 + 37 queries for tables256's index and its answers up to radius 48."""
    _, index, _, _ = tables256
    codes, ids = index_content(index)
    queries = queries256(np.random.default_rng(21), codes, 2 * 256 + 37)
    return index, queries, range_oracle(codes, ids, queries, 48)


@pytest.mark.parametrize("threads", [1, 2])
def test_256_big_batches_probe_in_table_order_exactly(isa, big_batch256, threads):
    """Batches of at least 256 queries a thread search groups of 256 with their probes sorted by table
    and key, and their candidates by page: the answers are the oracle's."""
    index, queries, (lims, dist, ids) = big_batch256
    for radius in (31, 48):
        got_lims, got_dist, got_ids = index.range_search(queries, radius, threads=threads)
        for i in range(len(queries)):
            d, e = dist[lims[i]:lims[i + 1]], ids[lims[i]:lims[i + 1]]
            row = slice(got_lims[i], got_lims[i + 1])
            np.testing.assert_array_equal(got_dist[row], d[d <= radius])
            np.testing.assert_array_equal(got_ids[row], e[d <= radius])


CRAFTED_TABLE = """
import numpy as np, hashsieve as hs
from hashsieve import _core, storage
storage.DEEP_CHECK_ENTRIES = 1000          # open the segment as a big one: its tables unchecked
rng = np.random.default_rng(3)
codes = rng.integers(0, 256, (70_000, 32), dtype=np.uint8)     # over one 2 MiB page of codes
index = hs.HashIndex(bits=256)
index.add(codes)
path = {path!r}
index.save(path)
sec = next(s for s in hs.read_metadata(path)["sections"] if s["name"] == "segment0.table_groups[3]")
data = bytearray(open(path, "rb").read())
data[sec["offset"]:sec["offset"] + sec["nbytes"]] = b"\\xff" * sec["nbytes"]   # every slot a group past the codes
open(path, "wb").write(bytes(data))
index = hs.HashIndex.load(path, verify=False)
for threads in (1, 2):
    for _ in range(20):
        lims, dist, ids = index.range_search(codes[:600], 31, threads=threads)
        assert (dist <= 31).all() and lims[-1] <= 600
_core.set_join(0, 8)                        # big batches joined: candidates filed by partition
for threads in (1, 2):
    lims, dist, ids = index.range_search(codes[:2100], 31, threads=threads)
    assert (dist <= 31).all() and lims[-1] <= 2100
assert _core.join_counters()["joined"] >= 2
print("ok")
"""


def test_256_crafted_table_groups_past_the_codes_never_crash_a_query(tmp_path):
    # Candidates are bucketed by their code's page before they are verified; a forged group number
    # once indexed past the bucket counts (a segfault in 2 of 3 runs).
    import subprocess
    import sys
    script = CRAFTED_TABLE.format(path=str(tmp_path / "crafted.hsi"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["ok"]


@pytest.fixture
def joined():
    """Big 256-bit batches join every segment with tables, not only those of 4M codes or more;
    yields set_join (pages: the arena a worker, 0 sized by the batch)."""
    before = _core.set_join(0, 0)
    _core.join_counters(reset=True)
    yield lambda pages: _core.set_join(0, pages)
    _core.set_join(*before)


@pytest.fixture(scope="module")
def join_batch256(tables256):
    """A batch of 8 x 256 + 37 queries (chunks of over 256 a worker on 1 and 2 threads) for
    tables256's index and its answers up to radius 48."""
    _, index, _, _ = tables256
    codes, ids = index_content(index)
    queries = queries256(np.random.default_rng(22), codes, 8 * 256 + 35)
    return index, queries, range_oracle(codes, ids, queries, 48)


def assert_batch_equal(got, expected, radius):
    lims, dist, ids = expected
    got_lims, got_dist, got_ids = got
    assert len(got_lims) == len(lims)
    for i in range(len(lims) - 1):
        d, e = dist[lims[i]:lims[i + 1]], ids[lims[i]:lims[i + 1]]
        row = slice(got_lims[i], got_lims[i + 1])
        np.testing.assert_array_equal(got_dist[row], d[d <= radius])
        np.testing.assert_array_equal(got_ids[row], e[d <= radius])


@pytest.mark.parametrize("pages", [0, 8])
@pytest.mark.parametrize("threads", [1, 2])
def test_256_big_batches_joined_with_the_codes_exactly(isa, join_batch256, joined, threads, pages):
    """Chunks of a big batch collect their candidates into partitions of 32768 codes and verify
    them partition by partition (with an arena of 8 pages, many times a chunk): the oracle's
    answers."""
    index, queries, expected = join_batch256
    joined(pages)
    for radius in (31, 48):
        assert_batch_equal(index.range_search(queries, radius, threads=threads), expected, radius)
    counts = _core.join_counters()
    assert counts["joined"] >= 2               # a chunk at least, each radius
    assert counts["verified"] >= (20 * counts["joined"] if pages else counts["joined"])


@pytest.mark.parametrize("threads", [1, 2])
def test_256_joined_group_over_its_budget_is_scanned_exactly(joined, threads):
    """A group of 256 queries next to a dense cluster goes over its candidate budget while its
    chunk is joined: its records are skipped, the hits its earlier verifications found (a
    small arena, verified while the group is collected) are dropped, and it is scanned."""
    rng = np.random.default_rng(23)
    centre = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    spread = rng.integers(0, 256, (20_000, 32), dtype=np.uint8)
    codes = np.concatenate([flip_bits256(rng, np.repeat(centre, 20_000, axis=0), 1, 4), spread])
    index = hs.HashIndex(bits=256)
    ids = index.add(codes)
    queries = np.concatenate([flip_bits256(rng, np.repeat(centre, 300, axis=0), 0, 6),
                              queries256(rng, spread, 8 * 256 - 300)])
    expected = range_oracle(codes, ids, queries, 31)
    joined(8)
    assert_batch_equal(index.range_search(queries, 31, threads=threads), expected, 31)
    counts = _core.join_counters()
    assert counts["joined"] >= 1 and counts["scanned"] >= 1 and counts["verified"] > 10


SMALL_STACK = """
import threading, numpy as np, hashsieve as hs
from hashsieve import _core
rng = np.random.default_rng(6)
indexes = {64: hs.HashIndex(), 256: hs.HashIndex(bits=256)}
indexes[64].add(rng.integers(0, 2**63, 300_000, dtype=np.uint64))
indexes[256].add(rng.integers(0, 256, (300_000, 32), dtype=np.uint8))      # over 1M words: scans split
queries = {64: rng.integers(0, 2**63, 600, dtype=np.uint64), 256: rng.integers(0, 256, (600, 32), dtype=np.uint8)}
done = []
def search():
    for strategy in ("auto", "scan"):
        _core.set_strategy(strategy)
        for bits, index in indexes.items():
            q, r = queries[bits], 8 if bits == 64 else 31
            for threads in (1, 2):
                index.range_search(q[:1], r, threads=threads)
                index.range_search(q, r, threads=threads)
                index.search(q[:1], 5, threads=threads)
                index.search(q[:20], 5, threads=threads)
    done.append(1)
threading.stack_size(32768)                  # Python's smallest thread stack
t = threading.Thread(target=search)
t.start()
t.join()
print("ok" if done else "failed")
"""


def test_searches_run_on_a_thread_with_the_smallest_stack():
    # A search kept 64 workers' scratch on the caller's stack and a scan 64 parts' (48 KB in all):
    # a 256-bit k-NN from a thread given threading.stack_size(32768) died with SIGSEGV.
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", SMALL_STACK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == ["ok"]
