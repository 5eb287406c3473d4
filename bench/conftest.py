"""Shared state and reporting for the benchmark suite (bench/test_bench_search.py) and the CI guard.

Settings come from the environment so `make bench` needs no arguments:

    HASHSIEVE_BENCH_SIZES     1M,10M,100M (default; sizes that do not fit in free memory are skipped)
    HASHSIEVE_BENCH_DATASETS  uniform,skewed (skewed runs up to 10M)
    HASHSIEVE_BENCH_METHODS   all of harness.METHODS by default
    HASHSIEVE_BENCH_RADII     0-12          HASHSIEVE_BENCH_K      1,10,100
    HASHSIEVE_BENCH_NQ        200 queries per latency test (half near-duplicates)
    HASHSIEVE_BENCH_BATCH     100000 queries per batch    HASHSIEVE_BENCH_BATCH_RADII 4,8
    HASHSIEVE_BENCH_BUDGET    2 seconds: a slow method answers fewer queries (at least 5)

Besides pytest-benchmark's own records, the JSON written by --benchmark-json
gets a "hashsieve" section: the machine, the settings, every index build
(time, bytes, RSS delta) and every method found wrong (which is not timed).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

RESULTS = {"builds": [], "wrong": [], "latency": [], "ci": []}


def _list(name, default):
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def _ints(name, default):
    out = []
    for part in _list(name, default):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _memory_need(n):
    """Rough peak bytes for one size: codes, oracle buffers and the biggest index (FAISS MIH)."""
    per_code = 8 + 9 + (110 if n <= 10_000_000 else 62) + 8
    return n * per_code


def _sizes():
    sizes = [harness.parse_size(s) for s in _list("HASHSIEVE_BENCH_SIZES", "1M,10M,100M")]
    try:
        import psutil
        avail = psutil.virtual_memory().available
    except ImportError:
        return sizes, []
    keep = [n for n in sizes if _memory_need(n) < 0.8 * avail]
    return keep, [n for n in sizes if n not in keep]


SIZES, SKIPPED_SIZES = _sizes()
DATASETS = _list("HASHSIEVE_BENCH_DATASETS", "uniform,skewed")
METHODS = _list("HASHSIEVE_BENCH_METHODS", ",".join(harness.METHODS))
RADII = _ints("HASHSIEVE_BENCH_RADII", "0-12")
KS = _ints("HASHSIEVE_BENCH_K", "1,10,100")
NQ = int(os.environ.get("HASHSIEVE_BENCH_NQ", "200"))
NQ_BATCH = int(os.environ.get("HASHSIEVE_BENCH_BATCH", "100000"))
BATCH_RADII = _ints("HASHSIEVE_BENCH_BATCH_RADII", "4,8")
BUDGET = float(os.environ.get("HASHSIEVE_BENCH_BUDGET", "2"))
SKEWED_MAX_N = 10_000_000
SEED = 0


def settings():
    return dict(sizes=SIZES, skipped_sizes=SKIPPED_SIZES, datasets=DATASETS, methods=METHODS,
                radii=RADII, ks=KS, nq=NQ, nq_batch=NQ_BATCH, batch_radii=BATCH_RADII,
                budget_s=BUDGET, seed=SEED)


class BenchState:
    """The current dataset (codes, queries, oracle) and the current built index.

    Only one of each is kept: tests are sorted by (size, dataset, family), so
    each index is built once and freed before the next, which is what lets
    100M run beside other work on a 24 GB machine.
    """

    def __init__(self):
        self.data_key = None
        self.data = None
        self.fam_key = None
        self.fam = None

    def dataset(self, n, name):
        import datasets
        key = (n, name)
        if key != self.data_key:
            self.drop_family()
            self.data = None
            harness.release_memory()
            codes, info = datasets.load(name, n, SEED)
            queries = datasets.make_queries_for(name, codes, info, NQ, seed=SEED + 1)
            oracle = harness.Oracle(codes, queries.codes, max_radius=max(RADII + [12]), max_k=max(KS + [1]))
            self.data = dict(codes=codes, info=info, queries=queries, oracle=oracle, batch=None)
            self.data_key = key
        return self.data

    def batch_queries(self, n, name):
        """NQ_BATCH queries whose first NQ are the oracle's (so they can be checked)."""
        import datasets
        import numpy as np
        d = self.dataset(n, name)
        if d["batch"] is None:
            more = datasets.make_queries_for(name, d["codes"], d["info"], max(0, NQ_BATCH - NQ), seed=SEED + 2)
            d["batch"] = np.concatenate([d["queries"].codes, more.codes])[:max(NQ_BATCH, NQ)]
        return d["batch"]

    def family(self, n, name, family):
        key = (n, name, family)
        if key != self.fam_key:
            self.drop_family()
            codes = self.dataset(n, name)["codes"]
            fam = harness.FAMILIES[family]().build(codes)
            nbytes = fam.nbytes()
            RESULTS["builds"].append(dict(
                size=n, dataset=name, family=family, build_s=fam.build_s, nbytes=nbytes,
                bytes_per_code=None if nbytes is None else nbytes / n,
                rss_delta=fam.rss_delta, rss_per_code=fam.rss_delta / n))
            self.fam, self.fam_key = fam, key
        return self.fam

    def drop_family(self):
        if self.fam is not None:
            self.fam.free()
        self.fam = self.fam_key = None
        harness.release_memory()


@pytest.fixture(scope="session")
def bench_state():
    state = BenchState()
    yield state
    state.drop_family()


_FAMILY_ORDER = list(harness.FAMILIES)
_KIND_ORDER = ["build", "range", "knn", "batch"]


def pytest_collection_modifyitems(session, config, items):
    """Group benchmark tests by (size, dataset, family) so each index is built once."""
    def key(pair):
        pos, item = pair
        case = getattr(item, "callspec", None) and item.callspec.params.get("case")
        if case is None or not hasattr(case, "family"):
            return (0, 0, 0, 0, 0, pos)
        return (1, case.n, DATASETS.index(case.dataset) if case.dataset in DATASETS else 99,
                _FAMILY_ORDER.index(case.family), _KIND_ORDER.index(case.kind), pos)
    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["hashsieve"] = dict(
        machine=harness.machine(), command="make bench  (pytest -q bench --benchmark-json=...)",
        settings=settings(), builds=RESULTS["builds"], wrong=RESULTS["wrong"],
        latency=RESULTS["latency"])


def _fmt_us(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if RESULTS["ci"]:
        tr.write_sep("=", "hashsieve CI benchmark: median single-query latency ratios (same run)")
        for line in RESULTS["ci"]:
            tr.write_line(line)
    lat = [r for r in RESULTS["latency"] if r["threads"] == 1 and r["k"] is None]
    if lat:
        tr.write_sep("=", "hashsieve benchmark: median single-query latency, threads=1")
        by = {}
        for r in lat:
            by.setdefault((r["size"], r["dataset"], r["radius"]), {})[r["method"]] = r["median_s"]
        for (n, name, radius), row in sorted(by.items()):
            ours = row.get("hashsieve")
            parts = [f"{m} {_fmt_us(s)}" for m, s in sorted(row.items(), key=lambda kv: kv[1])]
            ratio = ""
            if ours and row.get("faiss_mih"):
                ratio = f"  [faiss_mih/hashsieve = {row['faiss_mih'] / ours:.1f}x]"
            tr.write_line(f"{harness.size_name(n):>5} {name:8} r={radius:<2} " + ", ".join(parts) + ratio)
    for w in RESULTS["wrong"]:
        tr.write_line(f"WRONG (not timed): {w['method']} {harness.size_name(w['size'])} {w['dataset']} "
                      f"{w['what']}: {w['detail']}")
    if SKIPPED_SIZES and RESULTS["latency"]:
        tr.write_line(f"sizes skipped for lack of free memory: {[harness.size_name(n) for n in SKIPPED_SIZES]}")
