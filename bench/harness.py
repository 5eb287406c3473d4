"""The benchmark machinery shared by the pytest suite, the CI guard and bench/issue2_figures.py.

    Oracle(codes, queries)          exact answers by NumPy brute force, checked against every method
    METHODS / FAMILIES              hashsieve and its competitors behind one small interface
    interleaved_latency(...)        per-query latency of several methods, measured turn about

A method is one way of answering (e.g. FAISS MIH with nflip=2); a family is one
built index that several methods share (hashsieve's tables and its forced
scan; FAISS MIH with nflip=2 and with nflip tuned to the radius).  Timed
calls get their input prepared beforehand in each library's own form, and
return the library's raw output; normalising it for the oracle check is not
timed.
"""
import ctypes
import gc
import json
import os
import time

import numpy as np

SIZE_NAMES = {"100K": 100_000, "1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}


def parse_size(text):
    text = text.strip().upper()
    if text in SIZE_NAMES:
        return SIZE_NAMES[text]
    return int(float(text))


def size_name(n):
    for name, value in SIZE_NAMES.items():
        if value == n:
            return name
    return str(n)


def rss_bytes():
    import psutil
    return psutil.Process().memory_info().rss


def release_memory():
    """Collect garbage and hand freed heap back to the OS, so the next RSS delta is the next index's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def faiss_codes(codes):
    """uint64 (n,) -> uint8 (n, 8) as FAISS wants it.

    Little-endian byte order: FAISS's popcount of the 8 bytes equals the
    popcount of the uint64, so distances agree; bit-order never matters for
    Hamming distance.
    """
    return np.ascontiguousarray(codes, dtype="<u8").view(np.uint8).reshape(-1, 8)


# ---------------------------------------------------------------------------- oracle
class Oracle:
    """Exact answers for a fixed query set, computed once by NumPy brute force.

    For each query it keeps every entry within max(max_radius, d_k) bits,
    where d_k is the distance of its max_k-th nearest entry, sorted by
    (distance, id). That answers every range query up to max_radius and every
    k-NN query up to max_k. Ids are positions in `codes`.
    """

    def __init__(self, codes, queries, max_radius=12, max_k=100):
        self.codes = codes
        self.queries = np.asarray(queries, dtype=np.uint64)
        self.max_radius, self.max_k = max_radius, max_k
        n = len(codes)
        xor = np.empty(n, dtype=np.uint64)
        dist = np.empty(n, dtype=np.uint8)
        self.ids, self.dists = [], []
        for q in self.queries:
            np.bitwise_xor(codes, q, out=xor)
            np.bitwise_count(xor, out=dist)
            cum = np.cumsum(np.bincount(dist, minlength=65))
            dk = int(np.searchsorted(cum, min(max_k, n)))
            keep = np.flatnonzero(dist <= max(max_radius, dk))
            d = dist[keep].astype(np.int32)
            order = np.lexsort((keep, d))
            self.ids.append(keep[order].astype(np.int64))
            self.dists.append(d[order])
        del xor, dist

    def __len__(self):
        return len(self.queries)

    def range(self, i, r):
        """(dists int32, ids int64) of query i within r, sorted by (distance, id)."""
        end = int(np.searchsorted(self.dists[i], r, side="right"))
        return self.dists[i][:end], self.ids[i][:end]

    def knn(self, i, k):
        return self.dists[i][:k], self.ids[i][:k]

    def check_range(self, results, r, start=0):
        """results: list of (dists, ids) for queries start..; returns a description of the first mismatch or None."""
        for j, (d, ids) in enumerate(results):
            i = start + j
            want_d, want_ids = self.range(i, r)
            order = np.lexsort((ids, d))
            d, ids = np.asarray(d)[order], np.asarray(ids)[order]
            if len(ids) != len(want_ids) or not (np.array_equal(ids, want_ids) and np.array_equal(d, want_d)):
                missing = np.setdiff1d(want_ids, ids)
                extra = np.setdiff1d(ids, want_ids)
                return (f"query {i} radius {r}: {len(ids)} results, oracle {len(want_ids)} "
                        f"({len(missing)} missing, {len(extra)} extra)")
        return None

    def check_knn(self, results, k, exact_ties=False, start=0):
        """results: list of (dists (k,), ids (k,)). Distances must equal the oracle's k smallest and
        every id must really be at its stated distance; exact_ties also demands ties broken by id."""
        for j, (d, ids) in enumerate(results):
            i = start + j
            want_d, want_ids = self.knn(i, k)
            d, ids = np.asarray(d).astype(np.int32), np.asarray(ids)
            if not np.array_equal(d, want_d):
                return f"query {i} k={k}: distances differ from the oracle's"
            if len(np.unique(ids)) != len(ids) or ids.min() < 0:
                return f"query {i} k={k}: repeated or missing ids"
            true_d = np.bitwise_count(self.codes[ids] ^ self.queries[i]).astype(np.int32)
            if not np.array_equal(true_d, d):
                return f"query {i} k={k}: an id is not at its stated distance"
            if exact_ties and not np.array_equal(ids, want_ids):
                return f"query {i} k={k}: ties not broken by id"
        return None


def normalise_csr(lims, d, ids):
    return [(d[lims[i]:lims[i + 1]], ids[lims[i]:lims[i + 1]]) for i in range(len(lims) - 1)]


# ---------------------------------------------------------------------------- methods
class Family:
    """One built index. build(codes) must set self.index; nbytes() is what the index says it holds."""
    name = ""
    max_n = None

    def __init__(self):
        self.index = None
        self.build_s = None
        self.rss_delta = None

    def build(self, codes):
        release_memory()
        before = rss_bytes()
        t = time.perf_counter()
        self._build(codes)
        self.build_s = time.perf_counter() - t
        release_memory()
        self.rss_delta = rss_bytes() - before
        return self

    def nbytes(self):
        return None

    def free(self):
        self.index = None


class Method:
    """One way of answering queries with a family's index.

    prepare(qcodes) -> per-query arguments; range_one(arg, r) and knn_one(arg, k)
    are what is timed; norm_* turn their raw output into (dists, ids).
    threads(n) sets the thread count for the calls that follow (None = default).
    """
    name = ""
    family = ""
    knn = True
    batch = True
    thread_modes = (1, None)
    exact_ties = False

    def __init__(self, fam):
        self.fam = fam
        self.nthreads = 1

    def threads(self, n):
        self.nthreads = n

    def configure(self, r=None):
        """Settings that depend on the radius (FAISS's nflip); r=None for k-NN."""

    def begin(self):
        """Called before a block of timed calls (global switches); end() undoes it."""

    def end(self):
        pass

    def stats(self, qcodes, r=None, k=None):
        return None


# -- hashsieve
class HashsieveFamily(Family):
    name = "hashsieve"

    def _build(self, codes):
        import hashsieve as hs
        self.index = hs.HashIndex()
        self.index.add(codes)

    def nbytes(self):
        return self.index.nbytes()


class Hashsieve(Method):
    name = "hashsieve"
    family = "hashsieve"
    strategy = "auto"
    exact_ties = True

    def begin(self):
        from hashsieve import _core
        _core.set_strategy(self.strategy)

    def end(self):
        from hashsieve import _core
        _core.set_strategy("auto")

    def prepare(self, qcodes):
        return [qcodes[i:i + 1] for i in range(len(qcodes))]

    def range_one(self, q, r):
        return self.fam.index.range_search(q, r, threads=self.nthreads)

    def norm_range_one(self, raw):
        lims, d, ids = raw
        return d, ids

    def range_batch(self, qcodes, r):
        return self.fam.index.range_search(qcodes, r, threads=self.nthreads)

    def norm_range_batch(self, raw):
        return normalise_csr(*raw)

    def knn_one(self, q, k):
        return self.fam.index.search(q, k, threads=self.nthreads)

    def norm_knn_one(self, raw):
        return raw[0][0], raw[1][0]

    def stats(self, qcodes, r=None, k=None):
        self.begin()
        try:
            return self.fam.index.explain(qcodes, radius=r, k=k, threads=1)
        finally:
            self.end()


class HashsieveScan(Hashsieve):
    name = "hashsieve_scan"
    strategy = "scan"
    knn = False


# -- FAISS
def _faiss_threads(n):
    import faiss
    if not hasattr(_faiss_threads, "default"):
        _faiss_threads.default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n if n is not None else _faiss_threads.default)


class FaissFlatFamily(Family):
    name = "faiss_flat"

    def _build(self, codes):
        import faiss
        self.index = faiss.IndexBinaryFlat(64)
        self.index.add(faiss_codes(codes))

    def nbytes(self):
        return 8 * self.index.ntotal


class FaissMIHFamily(Family):
    name = "faiss_mih"

    def _build(self, codes):
        import faiss
        self.index = faiss.IndexBinaryMultiHash(64, 3, 21)
        self.index.nflip = 2
        self.index.add(faiss_codes(codes))


class FaissHashFamily(Family):
    name = "faiss_hash"
    max_n = 10_000_000
    bits = 20

    def _build(self, codes):
        import faiss
        self.index = faiss.IndexBinaryHash(64, self.bits)
        self.index.add(faiss_codes(codes))


class Faiss(Method):
    """FAISS binary index: range_search keeps d < radius, so it is passed r + 1."""
    exact_ties = False

    def threads(self, n):
        self.nthreads = n
        _faiss_threads(n)

    def prepare(self, qcodes):
        x = faiss_codes(qcodes)
        return [x[i:i + 1] for i in range(len(x))]

    def nflip_for(self, r):
        return None

    def configure(self, r=None):
        nflip = self.nflip_for(r)
        if nflip is not None:
            self.fam.index.nflip = nflip

    def range_one(self, q, r):
        return self.fam.index.range_search(q, r + 1)

    def norm_range_one(self, raw):
        lims, d, ids = raw
        return d, ids

    def range_batch(self, qcodes, r):
        return self.fam.index.range_search(faiss_codes(qcodes), r + 1)

    def norm_range_batch(self, raw):
        return normalise_csr(*raw)

    def knn_one(self, q, k):
        return self.fam.index.search(q, k)

    def norm_knn_one(self, raw):
        return raw[0][0], raw[1][0]


class FaissFlat(Faiss):
    name = "faiss_flat"
    family = "faiss_flat"


class FaissMIH(Faiss):
    """IndexBinaryMultiHash(64, 3, 21), nflip=2: exact up to r = 3*nflip + 2 = 8."""
    name = "faiss_mih"
    family = "faiss_mih"

    def nflip_for(self, r):
        return 2


class FaissMIHTuned(FaissMIH):
    """The same index with the smallest nflip that is exact at r (needs r <= 3*nflip + 2)."""
    name = "faiss_mih_tuned"
    knn = False

    def nflip_for(self, r):
        return 2 if r is None else max(0, -(-(r - 2) // 3))


class FaissHash(Faiss):
    """IndexBinaryHash(64, 20) with nflip = r: exact (every flip of the 20-bit key is probed)."""
    name = "faiss_hash"
    family = "faiss_hash"
    knn = False

    def nflip_for(self, r):
        return 2 if r is None else min(r, FaissHashFamily.bits)


# -- NumPy brute force
class NumpyFamily(Family):
    name = "numpy"

    def _build(self, codes):
        self.index = np.array(codes, dtype=np.uint64)

    def nbytes(self):
        return self.index.nbytes


class NumpyBrute(Method):
    name = "numpy"
    family = "numpy"
    thread_modes = (1,)
    exact_ties = True

    def prepare(self, qcodes):
        return list(qcodes)

    def range_one(self, q, r):
        d = np.bitwise_count(self.fam.index ^ q)
        ids = np.flatnonzero(d <= r)
        d = d[ids]
        order = np.argsort(d, kind="stable")
        return d[order], ids[order]

    def norm_range_one(self, raw):
        return raw

    def range_batch(self, qcodes, r):
        return [self.range_one(q, r) for q in qcodes]

    def norm_range_batch(self, raw):
        return raw

    def knn_one(self, q, k):
        d = np.bitwise_count(self.fam.index ^ q)
        part = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
        kth = d[part].max()
        ids = np.flatnonzero(d <= kth)            # every tie at the k-th distance, then by id
        order = np.lexsort((ids, d[ids]))[:k]
        return d[ids[order]], ids[order]

    def norm_knn_one(self, raw):
        return raw


# -- pybktree
class BKTreeFamily(Family):
    """pybktree over the distinct codes (it drops exact duplicates), with a code -> ids map."""
    name = "pybktree"
    max_n = 1_000_000

    def _build(self, codes):
        import pybktree
        uniq, inverse = np.unique(codes, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        self.slot = {int(c): i for i, c in enumerate(uniq.tolist())}
        self.order, self.starts = order, starts
        self.index = pybktree.BKTree(lambda a, b: (a ^ b).bit_count(), uniq.tolist())


class BKTree(Method):
    name = "pybktree"
    family = "pybktree"
    knn = False
    batch = False
    thread_modes = (1,)

    def prepare(self, qcodes):
        return [int(q) for q in qcodes]

    def range_one(self, q, r):
        fam = self.fam
        out = []
        for d, code in fam.index.find(q, r):
            s = fam.slot[code]
            ids = fam.order[fam.starts[s]:fam.starts[s + 1]]
            out.append((np.full(len(ids), d, dtype=np.int32), ids))
        return out

    def norm_range_one(self, raw):
        if not raw:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate([d for d, _ in raw]), np.concatenate([i for _, i in raw])


FAMILIES = {f.name: f for f in (HashsieveFamily, FaissFlatFamily, FaissMIHFamily, FaissHashFamily,
                                NumpyFamily, BKTreeFamily)}
METHODS = {m.name: m for m in (Hashsieve, HashsieveScan, FaissFlat, FaissMIH, FaissMIHTuned,
                               FaissHash, NumpyBrute, BKTree)}


def family_allowed(family, n):
    limit = FAMILIES[family].max_n
    return limit is None or n <= limit


# ---------------------------------------------------------------------------- timing
def timed_pass(method, args, r=None, k=None, budget_s=None, min_calls=5):
    """Answer queries in order, each timed alone, until all are done or budget_s is spent.

    Returns (seconds per call (list), raw results (list)). begin()/end() bracket the loop.
    """
    call = method.range_one if k is None else method.knn_one
    param = r if k is None else k
    times, raws = [], []
    clock = time.perf_counter
    method.configure(r)
    method.begin()
    try:
        start = clock()
        for a in args:
            t = clock()
            raw = call(a, param)
            times.append(clock() - t)
            raws.append(raw)
            if budget_s is not None and len(raws) >= min_calls and clock() - start > budget_s:
                break
    finally:
        method.end()
    return times, raws


def check(method, oracle, raws, r=None, k=None, start=0):
    """None if the raw results equal the oracle's, else a description of the first difference."""
    if k is None:
        return oracle.check_range([method.norm_range_one(x) for x in raws], r, start)
    return oracle.check_knn([method.norm_knn_one(x) for x in raws], k, method.exact_ties, start)


def interleaved_latency(methods, oracle, r, reps=3, nthreads=1):
    """Median single-query latency (s) of each method, timed turn about on the same queries.

    For every query each method answers `reps` times in rotation and keeps its
    best time, so a burst of load from a neighbour hits all methods alike;
    the medians over queries are then comparable within the run. Every answer
    is checked against the oracle first. Returns {name: dict(median_s, wrong)}.
    """
    out = {}
    prepared = {}
    for m in methods:
        m.threads(nthreads)
        m.configure(r)
        args = m.prepare(oracle.queries)
        _, raws = timed_pass(m, args, r=r)
        wrong = check(m, oracle, raws, r=r)
        out[m.name] = dict(wrong=wrong, times=[])
        prepared[m.name] = args
    clock = time.perf_counter
    live = [m for m in methods if out[m.name]["wrong"] is None]
    best = {m.name: np.full(len(oracle), np.inf) for m in live}
    for _ in range(reps):
        for m in live:
            m.configure(r)
            m.threads(nthreads)
            m.begin()
            try:
                args, b = prepared[m.name], best[m.name]
                for i, a in enumerate(args):
                    t = clock()
                    m.range_one(a, r)
                    b[i] = min(b[i], clock() - t)
            finally:
                m.end()
    for m in live:
        out[m.name]["median_s"] = float(np.median(best[m.name]))
        out[m.name]["times"] = best[m.name]
    return out


def summarise_stats(stats):
    """Median and mean of each explain() counter."""
    if not stats:
        return {}
    out = {}
    for key, v in stats.items():
        v = np.asarray(v, dtype=np.float64)
        out[f"{key}_median"] = float(np.median(v))
        out[f"{key}_mean"] = float(v.mean())
    return out


def save_json(path, result, indent=1):
    """Write result as JSON to path whole: a temporary name, then renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=indent)
    os.replace(tmp, path)


def machine():
    """A one-line description of this machine for reports."""
    import platform
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil
        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "?"
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM, {platform.system()} {platform.release()}"
