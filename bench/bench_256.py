"""256-bit codes (PDQ's width) at radius 31: hashsieve against FAISS in the same run.

    .venv/bin/python bench/bench_256.py --n 10M --kinds uniform,correlated

Per kind of data: N codes, queries half near-duplicates of indexed codes (8-24 bits flipped)
and half random; single-query median latency (each query timed once per method per round,
methods turn about, best of --rounds per query; one thread each, and hashsieve again on every core) of hashsieve,
faiss.IndexBinaryFlat(256) and faiss.IndexBinaryMultiHash(256, 16, 16) with nflip=1
(python-threatexchange's default PDQ index; exact at r=31 by pigeonhole: 16 x 2 > 31);
every answer checked against a NumPy oracle (hashsieve exactly, FAISS as sets, since FAISS
returns results unsorted). --no-faiss (for 100M codes, where FAISS's 3.2 GB copy does not fit beside
ours): hashsieve alone, a 256 MiB stream in 4 KiB pages between two queries keeping them cold, and
--check-queries of them checked against the oracle. Also: build times, bytes per code (arrays and RSS growth), the
substring layout the cost model chose, probes / candidates / hits per query (medians, from
explain()), and the throughput of a batch on every core (20 of its rows checked against the oracle; with
--busy-rounds, also idle against beside a process spinning on one core, alternating). Results go to
bench/results/bench_256_<N>.json and a Markdown table on stdout.
"""
import argparse
import json
import mmap
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402  (parse_size, rss_bytes, release_memory)

import hashsieve as hs  # noqa: E402

RADIUS = 31
BATCH_CHECKED = 20   # rows of the batch checked against the oracle
CHUNK = 1 << 20


def uniform(rng, n):
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def correlated(rng, n):
    """As tests/oracle.correlated256, in chunks: bit j set with probability p_j in [0.2, 0.8], each bit
    copying its neighbour's value half of the time."""
    p = rng.uniform(0.2, 0.8, 256)
    out = np.empty((n, 32), np.uint8)
    for a in range(0, n, CHUNK):
        m = min(CHUNK, n - a)
        bits = rng.random((m, 256)) < p
        copy = rng.random((m, 256)) < 0.5
        for j in range(1, 256):
            np.copyto(bits[:, j], bits[:, j - 1], where=copy[:, j])
        out[a:a + m] = np.packbits(bits, axis=1)
    return out


KINDS = {"uniform": uniform, "correlated": correlated}


def make_queries(rng, codes, nq):
    near = codes[rng.integers(0, len(codes), nq // 2)].copy()
    bits = np.unpackbits(near, axis=1)
    for row in bits:
        row[rng.choice(256, rng.integers(8, 25), replace=False)] ^= 1
    return np.concatenate([np.packbits(bits, axis=1), uniform(rng, nq - nq // 2)])


def oracle(codes, queries, radius):
    """Per query (distances, ids) sorted by (distance, id); ids are row numbers."""
    words = codes.view("<u8")
    out = []
    for q in queries.view("<u8"):
        d = np.zeros(len(codes), np.int32)
        for a in range(0, len(codes), 4 * CHUNK):
            d[a:a + 4 * CHUNK] = np.bitwise_count(words[a:a + 4 * CHUNK] ^ q).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(d <= radius)
        order = np.lexsort((hit, d[hit]))
        out.append((d[hit][order], hit[order]))
    return out


def as_pairs(lims, dist, ids, i):
    return sorted(zip(dist[lims[i]:lims[i + 1]].tolist(), ids[lims[i]:lims[i + 1]].tolist()))


def cache_flusher():
    """Reads 256 MiB in 4 KiB pages (an anonymous map, not madvised for huge pages): evicts the caches and
    the TLB, as FAISS's scan of the whole list does between two of our queries in the FAISS runs."""
    buf = np.frombuffer(mmap.mmap(-1, 256 << 20), np.uint8)
    buf[::4096] = 1
    return lambda q: int(buf[::64].sum())


def busy_batches(index, batch, rounds):
    """The batch on every core, idle and beside a process spinning on one core, in alternating order for
    `rounds` rounds: (idle, busy) queries/s medians."""
    rates = {"idle": [], "busy": []}
    for rnd in range(rounds):
        for mode in ("idle", "busy") if rnd % 2 == 0 else ("busy", "idle"):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if mode == "busy" else None
            try:
                if hog:
                    time.sleep(0.3)
                t = time.perf_counter()
                index.range_search(batch, RADIUS)
                rates[mode].append(len(batch) / (time.perf_counter() - t))
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
    return round(float(np.median(rates["idle"]))), round(float(np.median(rates["busy"])))


def run_kind(kind, n, nq, rounds, with_faiss, with_mih, check, batch_size, busy_rounds, seed):
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    codes = KINDS[kind](rng, n)
    queries = make_queries(rng, codes, nq)
    print(f"[{kind}] {n} codes generated in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    checked = np.arange(nq) if check is None else np.unique(np.linspace(0, nq - 1, check).astype(int))
    want = dict(zip(checked.tolist(), oracle(codes, queries[checked], RADIUS)))

    harness.release_memory()
    rss0 = harness.rss_bytes()
    t = time.perf_counter()
    index = hs.HashIndex(bits=256)
    index.add(codes, ids=np.arange(n, dtype=np.int64))
    build_s = time.perf_counter() - t
    rss_growth = harness.rss_bytes() - rss0
    layout = index.layout()

    # one thread, as FAISS gets; and the default (every core), for the single-query latency bar
    methods = {"hashsieve": lambda q: index.range_search(q, RADIUS, threads=1),
               "hashsieve_all_cores": lambda q: index.range_search(q, RADIUS)}
    mih_build_s = None
    if with_faiss:
        import faiss
        faiss.omp_set_num_threads(1)
        flat = faiss.IndexBinaryFlat(256)
        flat.add(codes)
        methods["faiss_flat"] = lambda q: flat.range_search(q, RADIUS + 1)      # FAISS keeps d < radius
        if with_mih:
            t = time.perf_counter()
            mih = faiss.IndexBinaryMultiHash(256, 16, 16)
            mih.nflip = 1
            mih.add(codes)
            mih_build_s = time.perf_counter() - t
            methods["faiss_mih"] = lambda q: mih.range_search(q, RADIUS + 1)
    flush = None if with_faiss else cache_flusher()
    best = {name: np.full(nq, np.inf) for name in methods}
    wrong = {name: 0 for name in methods}
    clock = time.perf_counter
    for rnd in range(rounds):
        for i in range(nq):
            q = queries[i:i + 1]
            names = list(methods) if (i + rnd) % 2 == 0 else list(methods)[::-1]
            for name in names:
                if flush is not None:
                    flush(q)
                t = clock()
                res = methods[name](q)
                best[name][i] = min(best[name][i], clock() - t)
                if rnd == 0 and i in want:
                    d, ids = want[i]
                    if name.startswith("hashsieve"):
                        lims, dist, got = res
                        ok = np.array_equal(dist, d) and np.array_equal(got, ids)
                    else:
                        ok = as_pairs(*res, 0) == sorted(zip(d.tolist(), ids.tolist()))
                    wrong[name] += not ok
    stats = index.explain(queries, radius=RADIUS, threads=1)

    batch = make_queries(rng, codes, batch_size)
    t = time.perf_counter()
    lims, dist, got = index.range_search(batch, RADIUS)
    batch_qps = len(batch) / (time.perf_counter() - t)
    # rows spread over the batch (so over its chunks and workers) against the oracle
    rows = np.unique(np.linspace(0, batch_size - 1, BATCH_CHECKED).astype(int))
    wrong["batch"] = sum(not (np.array_equal(dist[lims[i]:lims[i + 1]], d) and
                              np.array_equal(got[lims[i]:lims[i + 1]], ids))
                         for i, (d, ids) in zip(rows, oracle(codes, batch[rows], RADIUS)))

    busy = busy_batches(index, batch, busy_rounds) if busy_rounds else (None, None)

    med = {name: float(np.median(v)) for name, v in best.items()}
    fastest_faiss = min((v for k, v in med.items() if not k.startswith("hashsieve")), default=None)
    return {
        "kind": kind, "n": n, "queries": nq, "radius": RADIUS, "rounds": rounds,
        "build_s": round(build_s, 2), "faiss_mih_build_s": None if mih_build_s is None else round(mih_build_s, 1),
        "bytes_per_code_arrays": round(index.nbytes() / n, 1), "bytes_per_code_rss": round(rss_growth / n, 1),
        "tables": list(layout[0]["tables"]) if layout else [],
        "median_us": {k: round(v * 1e6, 1) for k, v in med.items()},
        "ratio_vs_fastest_faiss": None if fastest_faiss is None else round(fastest_faiss / med["hashsieve"], 1),
        "wrong": wrong, "checked_queries": len(want), "cold_by": "faiss" if with_faiss else "256 MiB stream",
        "probes": float(np.median(stats["probes"])), "candidates": float(np.median(stats["candidates"])),
        "hits": float(np.median(stats["hits"])), "scanned": float(np.median(stats["scanned"])),
        "near_median_us": round(float(np.median(best["hashsieve"][:nq // 2])) * 1e6, 1),
        "random_median_us": round(float(np.median(best["hashsieve"][nq // 2:])) * 1e6, 1),
        "batch_queries": batch_size, "batch_checked": len(rows), "batch_qps_all_cores": round(batch_qps),
        "batch_busy_rounds": busy_rounds, "batch_qps_idle_median": busy[0], "batch_qps_busy_median": busy[1], "cores": len(os.sched_getaffinity(0)),
        "load_avg": round(os.getloadavg()[0], 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10M")
    ap.add_argument("--kinds", default="uniform,correlated")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-mih", action="store_true", help="skip faiss.IndexBinaryMultiHash (its build is slow)")
    ap.add_argument("--no-faiss", action="store_true", help="hashsieve alone (100M codes)")
    ap.add_argument("--check-queries", type=int, help="queries checked against the oracle (default: all)")
    ap.add_argument("--batch", type=int, default=10_000, help="queries in the batch timed on every core")
    ap.add_argument("--busy-rounds", type=int, default=0,
                    help="then time the batch this many rounds idle and beside a process spinning on one core")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = harness.parse_size(args.n)
    results = [run_kind(kind, n, args.queries, args.rounds, not args.no_faiss, not args.no_mih, args.check_queries,
                        args.batch, args.busy_rounds, args.seed)
               for kind in args.kinds.split(",")]
    out = HERE / "results" / f"bench_256_{harness.size_name(n)}.json"
    out.write_text(json.dumps({"command": " ".join(["bench/bench_256.py"] + sys.argv[1:]), "results": results},
                              indent=1) + "\n")
    print("| data | N | hashsieve | hashsieve, all cores | faiss Flat(256) | faiss MIH(256,16,16) nflip=1 | ratio | probes | candidates "
          "| hits | tables | build | B/code (arrays, RSS) | wrong |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["median_us"]
        print(f"| {r['kind']} | {harness.size_name(r['n'])} | {m['hashsieve']} us | {m['hashsieve_all_cores']} us | "
              f"{m.get('faiss_flat', '-')} us | "
              f"{m.get('faiss_mih', '-')} us | {r['ratio_vs_fastest_faiss'] or '-'}x | {r['probes']:.0f} | "
              f"{r['candidates']:.0f} | {r['hits']:.0f} | {len(r['tables'])} x {sorted(set(r['tables']))} | "
              f"{r['build_s']} s | {r['bytes_per_code_arrays']}, {r['bytes_per_code_rss']} | {r['wrong']} |")
    print(json.dumps(results, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
