"""The full search benchmark: hashsieve beside FAISS, NumPy and pybktree (`make bench`).

    .venv/bin/python -m pytest -q bench --benchmark-json=bench/results/latest.json
    HASHSIEVE_BENCH_SIZES=1M .venv/bin/python -m pytest -q bench/test_bench_search.py

Tests (see bench/conftest.py for the settings):
    test_build    one per index: build time, bytes held, RSS delta
    test_range    single-query range_search latency per radius, threads=1 and default
    test_knn      single-query k-NN latency, threads=1
    test_batch    throughput of one batch call (up to 100,000 queries), default threads

Each timed answer is first checked against the NumPy oracle; a method that
differs is recorded as wrong and not timed (the test is xfailed with the
difference). hashsieve being wrong fails the test. Each pytest-benchmark
record's extra_info carries the case and, for hashsieve, the median and mean
probes / candidates / hits / scanned per query from index.explain().
"""
from dataclasses import dataclass

import numpy as np
import pytest

import harness
from conftest import (BATCH_RADII, BUDGET, DATASETS, KS, METHODS, NQ, NQ_BATCH, RADII, RESULTS, SIZES,
                      SKEWED_MAX_N)

OURS = ("hashsieve", "hashsieve_scan")


@dataclass(frozen=True)
class Case:
    kind: str
    n: int
    dataset: str
    family: str
    method: str = ""
    radius: int = None
    k: int = None
    threads: int = None

    def __str__(self):
        parts = [harness.size_name(self.n), self.dataset, self.method or self.family]
        if self.radius is not None:
            parts.append(f"r{self.radius}")
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.kind in ("range", "knn"):
            parts.append(f"t{self.threads or 'default'}")
        return "-".join(parts)


def _datasets_for(n):
    return [d for d in DATASETS if d != "skewed" or n <= SKEWED_MAX_N]


def _methods_for(n):
    return [harness.METHODS[m] for m in METHODS if harness.family_allowed(harness.METHODS[m].family, n)]


def _cases(kind):
    out = []
    for n in SIZES:
        for name in _datasets_for(n):
            methods = _methods_for(n)
            if kind == "build":
                for fam in dict.fromkeys(m.family for m in methods):
                    out.append(Case("build", n, name, fam))
            for m in methods:
                if kind == "range":
                    out += [Case("range", n, name, m.family, m.name, radius=r, threads=t)
                            for t in m.thread_modes for r in RADII]
                elif kind == "knn" and m.knn:
                    out += [Case("knn", n, name, m.family, m.name, k=k, threads=1) for k in KS]
                elif kind == "batch" and m.batch:
                    out += [Case("batch", n, name, m.family, m.name, radius=r) for r in BATCH_RADII]
    return out


def _param(kind):
    return pytest.mark.parametrize("case", _cases(kind), ids=str)


def _info(benchmark, case, **extra):
    benchmark.group = f"{case.kind} {harness.size_name(case.n)} {case.dataset} " + (
        f"r={case.radius}" if case.radius is not None else f"k={case.k}" if case.k else "")
    benchmark.extra_info.update(kind=case.kind, size=case.n, dataset=case.dataset, method=case.method,
                                family=case.family, radius=case.radius, k=case.k,
                                threads=case.threads or "default", status="ok", **extra)


def _wrong(case, what, detail):
    RESULTS["wrong"].append(dict(method=case.method, size=case.n, dataset=case.dataset, what=what,
                                 detail=detail, threads=case.threads))
    if case.method in OURS:
        pytest.fail(f"hashsieve differs from the oracle: {detail}")
    pytest.xfail(f"{case.method} differs from the oracle ({detail}); reported as wrong, not timed")


@_param("build")
def test_build(bench_state, case):
    fam = bench_state.family(case.n, case.dataset, case.family)
    assert fam.index is not None


def _single_query(benchmark, bench_state, case, r=None, k=None):
    data = bench_state.dataset(case.n, case.dataset)
    fam = bench_state.family(case.n, case.dataset, case.family)
    method = harness.METHODS[case.method](fam)
    method.threads(case.threads)
    queries, oracle = data["queries"], data["oracle"]
    args = method.prepare(queries.codes)
    # Check pass (also the warm-up): answers every query the timed pass will, within the budget.
    _, raws = harness.timed_pass(method, args, r=r, k=k, budget_s=BUDGET)
    n = len(raws)
    what = f"r={r}" if k is None else f"k={k}"
    problem = harness.check(method, oracle, raws, r=r, k=k)
    if problem:
        _wrong(case, what, problem)
    call = method.range_one if k is None else method.knn_one
    param = r if k is None else k
    order = iter(range(n))

    def setup():
        return (args[next(order)], param), {}

    method.configure(r)
    method.begin()
    try:
        benchmark.pedantic(call, setup=setup, rounds=n, iterations=1, warmup_rounds=0)
    finally:
        method.end()
    times = np.asarray(benchmark.stats.stats.data)
    near = queries.near[:n]
    extra = dict(queries=n, median_near_s=float(np.median(times[near])) if near.any() else None,
                 median_random_s=float(np.median(times[~near])) if (~near).any() else None,
                 hits_mean=float(np.mean([len(method.norm_range_one(x)[1]) for x in raws])) if k is None else None)
    extra.update(harness.summarise_stats(method.stats(queries.codes[:n], r=r, k=k)))
    _info(benchmark, case, **extra)
    RESULTS["latency"].append(dict(size=case.n, dataset=case.dataset, method=case.method, radius=r, k=k,
                                   threads=case.threads, median_s=float(np.median(times)), queries=n))
    method.threads(None)


@_param("range")
def test_range(benchmark, bench_state, case):
    _single_query(benchmark, bench_state, case, r=case.radius)


@_param("knn")
def test_knn(benchmark, bench_state, case):
    _single_query(benchmark, bench_state, case, k=case.k)


@_param("batch")
def test_batch(benchmark, bench_state, case):
    import time
    data = bench_state.dataset(case.n, case.dataset)
    fam = bench_state.family(case.n, case.dataset, case.family)
    method = harness.METHODS[case.method](fam)
    method.threads(None)
    method.configure(case.radius)
    oracle = data["oracle"]
    r = case.radius
    # The oracle's queries first: their answers are checked, and they time a small batch.
    method.begin()
    try:
        t = time.perf_counter()
        raw = method.range_batch(oracle.queries, r)
        per_query = (time.perf_counter() - t) / len(oracle)
    finally:
        method.end()
    problem = oracle.check_range(method.norm_range_batch(raw), r)
    if problem:
        _wrong(case, f"batch r={r}", problem)
    # As many of the batch queries as fit in ~5x the budget (all of them for the fast methods).
    nq = int(min(NQ_BATCH, max(NQ, 5 * BUDGET / max(per_query, 1e-9))))
    batch = bench_state.batch_queries(case.n, case.dataset)[:nq]
    rounds = int(max(1, min(5, BUDGET / max(per_query * nq, 1e-9))))
    method.begin()
    try:
        result = benchmark.pedantic(method.range_batch, args=(batch, r), rounds=rounds, iterations=1)
    finally:
        method.end()
    problem = oracle.check_range(method.norm_range_batch(result)[:NQ], r) if nq >= NQ else None
    if problem:
        _wrong(case, f"batch r={r}", problem)
    median = benchmark.stats.stats.median
    _info(benchmark, case, queries=nq, queries_per_s=nq / median, threads_used="default")
