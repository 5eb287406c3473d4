"""The small benchmark that runs in CI (`make test`): a regression guard on speed and exactness.

1M uniform random codes, 200 queries (half near-duplicates, half random).
Fails when hashsieve's median single-query latency (threads=1) is not at
least MIN_RATIO times lower than faiss.IndexBinaryMultiHash(64, 3, 21) with
nflip=2 (also one thread) in the same run, at radii where that FAISS index is
exact (r <= 8), or when any answer of either differs from the NumPy oracle.
Ratios, not absolute times, so a slow or busy machine does not flake it; the
two are timed turn about on the same queries, best of 3 per query. On the
shared 2-core development VM the r=8 ratio ranged 10x-23x between runs (both
sides' times move by up to 2x), so a round below the bar is measured again, up
to ROUNDS times: a real regression fails every round, a noisy one does not.

A second guard: beside one CPU-bound process, a single query at 10M codes
(big enough that the default may share its probes with helper threads) must
not be slower with the default threads than with threads=1. Both are timed in
alternating sub-blocks, five rounds; the medians over the rounds of two ratios
must be within the margins: of the median latency, and of the mean latency
with each query capped at BUSY_CAP times the threads=1 median (a helper that
loses its core mid-query shows in the tail, while one preemption of ours by
a neighbour must not decide the figure). On the development VM the code from
before the gate that backs off from losing sharing failed every attempt of
three runs (capped mean 1.25-1.49x, median 1.09-1.12x); the current code
passes at 1.00-1.02x and 1.00-1.01x. An attempt over the margins is measured
again, up to BUSY_ATTEMPTS times; the guard adds about 3 s.

A third: 256-bit codes (PDQ's width), the 10M ratio of bench/bench_256.py at 1M uniform
codes: hashsieve's median single-query latency at r=31 (threads=1) must be at least
MIN_RATIO_256 times lower than the faster of faiss.IndexBinaryFlat(256) and
IndexBinaryMultiHash(256, 16, 16) with nflip=1 (one thread each, best of 3 per query, turn
about), and every answer of all three must equal the NumPy oracle's (FAISS's as sets: it
returns them unsorted).

The ratios appear in the log's terminal summary, also with `pytest -q`.
About 25 s, most of it building the FAISS indexes.
"""
import subprocess
import sys
import time

import numpy as np
import pytest

import bench_256
import datasets
import harness
import hashsieve as hs
from conftest import RESULTS

N = 1_000_000
NQ = 200
CI_RADII = (0, 4, 8)
MIN_RATIO = 10.0
ROUNDS = 3
BUSY_N = 10_000_000
BUSY_BLOCK = 25             # queries per sub-block of one setting
BUSY_BLOCKS = 16            # sub-blocks per setting per round
BUSY_ROUNDS = 5             # the attempt's figures are medians over its rounds
BUSY_CAP = 4                # a query counts at most 4x the threads=1 median in the capped mean
BUSY_MEDIAN_MARGIN = 1.10
BUSY_MEAN_MARGIN = 1.15
BUSY_ATTEMPTS = 3
N_256 = 1_000_000
NQ_256 = 100
# Measured at 1M: 20x run alone (bench/bench_256.py: 20.9x), but 7.5-11.5x inside the whole `make test`
# process, where the same code's median was 100-135 us instead of 50 us (the index's memory, not its code:
# a second index built in one fresh process was 3x faster than the first). The bar catches what matters,
# a fall back to scanning (1x) or a lost pipeline (~3x).
MIN_RATIO_256 = 5.0

@pytest.fixture(scope="module")
def ci_setup():
    codes = datasets.uniform(N, seed=0)
    queries = datasets.make_queries(codes, NQ, seed=1)
    oracle = harness.Oracle(codes, queries.codes, max_radius=12, max_k=100)
    ours = harness.HashsieveFamily().build(codes)
    mih = harness.FaissMIHFamily().build(codes)
    yield codes, queries, oracle, ours, mih
    ours.free()
    mih.free()


@pytest.mark.parametrize("radius", CI_RADII)
def test_latency_ratio_vs_faiss_mih(ci_setup, radius):
    codes, queries, oracle, ours, mih = ci_setup
    methods = [harness.Hashsieve(ours), harness.FaissMIH(mih)]
    for attempt in range(1, ROUNDS + 1):
        try:
            res = harness.interleaved_latency(methods, oracle, radius, reps=3, nthreads=1)
        finally:
            for m in methods:
                m.threads(None)
        for name, r in res.items():
            assert r["wrong"] is None, f"{name} differs from the oracle at radius {radius}: {r['wrong']}"
        a, b = res["hashsieve"]["median_s"], res["faiss_mih"]["median_s"]
        ratio = b / a
        RESULTS["ci"].append(f"1M uniform r={radius} (round {attempt}): hashsieve {a * 1e6:.1f} us, "
                             f"faiss_mih(nflip=2) {b * 1e6:.1f} us, ratio {ratio:.1f}x "
                             f"(need >= {MIN_RATIO:.0f}x) {'ok' if ratio >= MIN_RATIO else 'below'}")
        if ratio >= MIN_RATIO:
            break
    assert ratio >= MIN_RATIO, (f"radius {radius}: hashsieve median {a * 1e6:.1f} us is only {ratio:.1f}x "
                                f"faster than faiss.IndexBinaryMultiHash ({b * 1e6:.1f} us) in each of "
                                f"{ROUNDS} rounds; need {MIN_RATIO}x")


@pytest.mark.parametrize("threads", [1, None])
def test_range_exact_all_radii(ci_setup, threads):
    """Every radius 0..12, one query at a time and as one batch, tables and forced scan."""
    codes, queries, oracle, ours, mih = ci_setup
    for cls in (harness.Hashsieve, harness.HashsieveScan):
        m = cls(ours)
        m.threads(threads)
        for r in range(13):
            _, raws = harness.timed_pass(m, m.prepare(queries.codes), r=r)
            problem = harness.check(m, oracle, raws, r=r)
            assert problem is None, f"{m.name} threads={threads}: {problem}"
            m.begin()
            try:
                batch = m.norm_range_batch(m.range_batch(queries.codes, r))
            finally:
                m.end()
            problem = oracle.check_range(batch, r)
            assert problem is None, f"{m.name} batch threads={threads}: {problem}"


@pytest.mark.parametrize("k", [1, 10, 100])
def test_knn_exact(ci_setup, k):
    codes, queries, oracle, ours, mih = ci_setup
    m = harness.Hashsieve(ours)
    _, raws = harness.timed_pass(m, m.prepare(queries.codes), k=k)
    problem = harness.check(m, oracle, raws, k=k)
    assert problem is None, problem
    d, ids = ours.index.search(queries.codes, k)
    problem = oracle.check_knn(list(zip(d, ids)), k, exact_ties=True)
    assert problem is None, f"batch: {problem}"


def test_explain_counts_hits(ci_setup):
    """explain() reports as many hits as range_search returns (the cost-model columns are real)."""
    codes, queries, oracle, ours, mih = ci_setup
    stats = ours.index.explain(queries.codes, radius=8)
    want = np.array([len(oracle.range(i, 8)[1]) for i in range(len(oracle))])
    # hits counts distinct codes; with no duplicate codes in uniform data that is the result count.
    assert np.array_equal(stats["hits"].astype(np.int64), want)


@pytest.fixture
def busy_process():
    """One CPU-bound process beside the test, as an image decoder beside a screening service."""
    proc = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    time.sleep(0.3)           # let the scheduler place it
    yield proc
    proc.kill()
    proc.wait()


def _busy_round(index, queries, first):
    """Per-query seconds of the default threads and of threads=1, in sub-blocks that alternate."""
    times = {None: [], 1: []}
    clock = time.perf_counter
    for b in range(BUSY_BLOCKS):
        # Each setting on queries of its own (a repeated query finds its lines in cache).
        order = (None, 1) if (b + first) % 2 == 0 else (1, None)
        for half, threads in enumerate(order):
            start = (2 * b + half) * BUSY_BLOCK
            for i in range(start, start + BUSY_BLOCK):
                t = clock()
                index.range_search(queries[i:i + 1], 8, threads=threads)
                times[threads].append(clock() - t)
    return np.array(times[None]), np.array(times[1])


def test_default_threads_not_slower_than_one_beside_busy_process(busy_process):
    codes = datasets.uniform(BUSY_N, seed=0)
    index = hs.HashIndex()
    index.add(codes)
    queries = datasets.make_queries(codes, 2 * BUSY_BLOCK * BUSY_BLOCKS, seed=3).codes
    del codes
    for attempt in range(1, BUSY_ATTEMPTS + 1):
        medians, capped = [], []
        for rnd in range(BUSY_ROUNDS):
            default, one = _busy_round(index, queries, rnd)
            cap = BUSY_CAP * np.median(one)
            medians.append(np.median(default) / np.median(one))
            capped.append(np.minimum(default, cap).mean() / np.minimum(one, cap).mean())
        med, mean = float(np.median(medians)), float(np.median(capped))
        ok = med <= BUSY_MEDIAN_MARGIN and mean <= BUSY_MEAN_MARGIN
        RESULTS["ci"].append(f"10M uniform r=8 beside a busy process (attempt {attempt}): default/threads=1 "
                             f"median latency {med:.2f}x, capped mean {mean:.2f}x (medians over {BUSY_ROUNDS} "
                             f"rounds; need <= {BUSY_MEDIAN_MARGIN} / {BUSY_MEAN_MARGIN}) {'ok' if ok else 'over'}")
        if ok:
            break
    assert ok, (f"beside a busy process the default threads were slower than threads=1 in each of "
                f"{BUSY_ATTEMPTS} attempts: last median latency {med:.2f}x (limit {BUSY_MEDIAN_MARGIN}), "
                f"capped mean {mean:.2f}x (limit {BUSY_MEAN_MARGIN})")


@pytest.fixture(scope="module")
def ci_256():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(256)
    codes = bench_256.uniform(rng, N_256)
    queries = bench_256.make_queries(rng, codes, NQ_256)
    want = bench_256.oracle(codes, queries, bench_256.RADIUS)
    index = hs.HashIndex(bits=256)
    index.add(codes, ids=np.arange(N_256, dtype=np.int64))
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    mih = faiss.IndexBinaryMultiHash(256, 16, 16)
    mih.nflip = 1
    mih.add(codes)
    yield faiss, index, flat, mih, queries, want


def test_latency_ratio_256_vs_faster_faiss(ci_256):
    faiss, index, flat, mih, queries, want = ci_256
    r = bench_256.RADIUS
    methods = {"hashsieve": lambda q: index.range_search(q, r, threads=1),
               "faiss_flat": lambda q: flat.range_search(q, r + 1),        # FAISS keeps d < radius
               "faiss_mih": lambda q: mih.range_search(q, r + 1)}
    omp_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for attempt in range(1, ROUNDS + 1):
            best = {name: np.full(NQ_256, np.inf) for name in methods}
            for rep in range(3):
                for i in range(NQ_256):
                    q = queries[i:i + 1]
                    for name in (list(methods) if (i + rep) % 2 == 0 else list(methods)[::-1]):
                        t = time.perf_counter()
                        res = methods[name](q)
                        best[name][i] = min(best[name][i], time.perf_counter() - t)
                        if rep == 0 and attempt == 1:
                            d, ids = want[i]
                            if name == "hashsieve":
                                assert np.array_equal(res[1], d) and np.array_equal(res[2], ids), (name, i)
                            else:
                                assert bench_256.as_pairs(*res, 0) == sorted(zip(d.tolist(), ids.tolist())), (name, i)
            med = {name: float(np.median(v)) for name, v in best.items()}
            faster = min(med["faiss_flat"], med["faiss_mih"])
            ratio = faster / med["hashsieve"]
            RESULTS["ci"].append(f"1M uniform 256-bit r={r} (round {attempt}): hashsieve {med['hashsieve'] * 1e6:.1f} us, "
                                 f"faiss_flat {med['faiss_flat'] * 1e6:.1f} us, faiss_mih(16x16, nflip=1) "
                                 f"{med['faiss_mih'] * 1e6:.1f} us, ratio to the faster {ratio:.1f}x "
                                 f"(need >= {MIN_RATIO_256:.0f}x) {'ok' if ratio >= MIN_RATIO_256 else 'below'}")
            if ratio >= MIN_RATIO_256:
                break
    finally:
        faiss.omp_set_num_threads(omp_before)
    assert ratio >= MIN_RATIO_256, (f"256-bit r={r}: hashsieve median {med['hashsieve'] * 1e6:.1f} us is only "
                                    f"{ratio:.1f}x faster than the faster FAISS index in each of {ROUNDS} rounds; "
                                    f"need {MIN_RATIO_256}x")
