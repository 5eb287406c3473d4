"""python-threatexchange's PDQ indexes against hashsieve.threatexchange.HashsievePDQIndex, in one run.

    .venv/bin/python bench/bench_pytx.py           # --sizes 100K,1M,5e6,10M --pytx-max 5e6 --index2-max 1M

For each size N (random PDQ hashes, metadata = the row number as HMA's bank_content_id) and each index
(pytx's default PDQIndex up to --pytx-max, its PDQIndex2 up to --index2-max, HashsievePDQIndex): build
time (build() from the (hex, id) list, then one query: our index builds its queue on the first query), median
single-query latency at threshold 31 (queries half near-duplicates of entries with 8-24 bits flipped,
half random; every query timed once per round, best of --rounds, then the median), serialized size and
serialize time (index.serialize to a file, as HMA does), deserialize time (SignalTypeIndex.deserialize,
as HMA calls it, in a fresh process) and RSS (peak of the building process; of the loading process
after deserialize). Each index runs in its own processes, one at a time, killed past --max-rss-gb
or --max-seconds (then its row says so). The answers of every index to the same queries are compared
(sets of (metadata, distance)). Results go to bench/results/pytx_<sizes>.json and a Markdown table.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402  (parse_size, size_name, save_json, machine)

THRESHOLD = 31
INDEXES = {
    "PDQIndex": "threatexchange.signal_type.pdq.pdq_index:PDQIndex",
    "PDQIndex2": "threatexchange.signal_type.pdq.pdq_index2:PDQIndex2",
    "HashsievePDQIndex": "hashsieve.threatexchange:HashsievePDQIndex",
}


def index_class(name):
    module, cls = INDEXES[name].split(":")
    return getattr(__import__(module, fromlist=[cls]), cls)


def make_codes(n, seed):
    """n random PDQ codes, uint8 (n, 32), the same in every process for a seed."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


def make_queries(codes, nq, seed):
    """nq hex queries: half entries of codes with 8-24 bits flipped, half random."""
    import hashsieve as hs
    rng = np.random.default_rng(seed + 1)
    bits = np.unpackbits(codes[rng.integers(0, len(codes), nq // 2)], axis=1)
    for row in bits:
        row[rng.choice(256, rng.integers(8, 25), replace=False)] ^= 1
    return hs.to_hex(np.concatenate([np.packbits(bits, axis=1),
                                     rng.integers(0, 256, (nq - nq // 2, 32), dtype=np.uint8)]))


def peak_rss_bytes():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median_latency_us(index, queries, rounds):
    best = [float("inf")] * len(queries)
    for _ in range(rounds):
        for i, q in enumerate(queries):
            t = time.perf_counter()
            index.query(q)
            best[i] = min(best[i], time.perf_counter() - t)
    return round(float(np.median(best)) * 1e6, 1)


def answers_digest(index, queries):
    """A digest of every query's set of (metadata, int distance), and the number of matches."""
    h, total = hashlib.sha256(), 0
    for q in queries:
        pairs = sorted((m.metadata, int(m.similarity_info.distance)) for m in index.query(q))
        total += len(pairs)
        h.update(repr(pairs).encode())
    return h.hexdigest()[:16], total


def child_build(name, n, nq, rounds, seed, path):
    import hashsieve as hs
    codes = make_codes(n, seed)
    queries = make_queries(codes, nq, seed)
    entries = list(zip(hs.to_hex(codes), range(n)))
    del codes
    t = time.perf_counter()
    index = index_class(name).build(entries)
    index.query(queries[0])
    build_s = time.perf_counter() - t
    del entries
    latency = median_latency_us(index, queries, rounds)
    digest, matches = answers_digest(index, queries)
    t = time.perf_counter()
    with open(path, "wb") as f:
        index.serialize(f)
    serialize_s = time.perf_counter() - t
    return {"build_s": round(build_s, 2), "median_query_us": latency, "answers": digest, "matches": matches,
            "serialize_s": round(serialize_s, 2), "serialized_bytes": os.path.getsize(path),
            "build_peak_rss_bytes": peak_rss_bytes()}


def child_load(name, n, nq, rounds, seed, path):
    import psutil
    from threatexchange.signal_type.index import SignalTypeIndex
    queries = make_queries(make_codes(n, seed), nq, seed)
    harness.release_memory()
    before = psutil.Process().memory_info().rss
    t = time.perf_counter()
    with open(path, "rb") as f:
        index = SignalTypeIndex.deserialize(f)         # as HMA loads an index
    deserialize_s = time.perf_counter() - t
    assert type(index) is index_class(name)
    harness.release_memory()
    rss = psutil.Process().memory_info().rss
    digest, _ = answers_digest(index, queries)
    return {"deserialize_s": round(deserialize_s, 2), "loaded_rss_bytes": rss, "loaded_rss_growth_bytes": rss - before,
            "loaded_answers": digest}


def run_child(step, name, n, args, path):
    """Run one step in a fresh process, watching its RSS and time; its result dict, or {"error": why}."""
    import psutil
    cmd = [sys.executable, __file__, "--child", step, name, str(n), str(args.queries), str(args.rounds),
           str(args.seed), path]
    out = tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False)
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    ps, start, peak = psutil.Process(proc.pid), time.monotonic(), 0
    limit = args.max_rss_gb * 2**30
    error = None
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > limit:
            error = f"RSS passed {args.max_rss_gb} GiB"
        elif time.monotonic() - start > args.max_seconds:
            error = f"took more than {args.max_seconds} s"
        if error:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.2)
    stderr = proc.stderr.read()
    out.seek(0)
    text = out.read()
    out.close()
    os.unlink(out.name)
    if error is None and proc.returncode != 0:
        error = f"exit {proc.returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"
    if error:
        return {"error": error}
    result = json.loads(text)
    result[f"{step}_watched_peak_rss_bytes"] = peak
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100K,1M,5e6,10M")
    ap.add_argument("--indexes", default=",".join(INDEXES))
    ap.add_argument("--pytx-max", default="5e6",
                    help="largest N for pytx's PDQIndex (at 10M its build passes 8 GiB: 4.3 GiB at 5M)")
    ap.add_argument("--index2-max", default="1M", help="largest N for PDQIndex2 (float32 IndexFlatL2: 1 KiB a hash)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-rss-gb", type=float, default=7.5)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, name, n, nq, rounds, seed, path = args.child
        fn = child_build if step == "build" else child_load
        print(json.dumps(fn(name, int(n), int(nq), int(rounds), int(seed), path)))
        return

    caps = {"PDQIndex": harness.parse_size(args.pytx_max), "PDQIndex2": harness.parse_size(args.index2_max)}
    sizes = [harness.parse_size(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        for name in args.indexes.split(","):
            row = {"index": name, "n": n}
            if n > caps.get(name, n):
                row["error"] = f"not run: N above --{'pytx' if name == 'PDQIndex' else 'index2'}-max"
                rows.append(row)
                continue
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="bench-pytx-", dir=HERE / "results") as folder:
                path = os.path.join(folder, "index.pickle")
                row.update(run_child("build", name, n, args, path))
                if "error" not in row:
                    row.update(run_child("load", name, n, args, path))
            row["load_avg_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    for n in sizes:
        digests = {r["answers"] for r in rows if r["n"] == n and "answers" in r}
        loaded_ok = all(r["loaded_answers"] == r["answers"] for r in rows if r["n"] == n and "loaded_answers" in r)
        for r in rows:
            if r["n"] == n and "answers" in r:
                r["same_answers_as_others"] = len(digests) == 1 and loaded_ok
    result = {"command": " ".join(["bench/bench_pytx.py"] + sys.argv[1:]), "machine": harness.machine(),
              "threshold": THRESHOLD, "rows": rows}
    harness.save_json(str(HERE / "results" / f"pytx_{'_'.join(harness.size_name(n) for n in sizes)}.json"), result)
    print("| index | N | build | query median | serialized | serialize | deserialize | RSS build peak | "
          "RSS loaded | same answers | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r and "build_s" not in r:
            print(f"| {r['index']} | {harness.size_name(r['n'])} | {r['error']} |||||||||")
            continue
        print(f"| {r['index']} | {harness.size_name(r['n'])} | {r['build_s']} s | {r['median_query_us']} us | "
              f"{r['serialized_bytes'] / 1e6:.1f} MB | {r['serialize_s']} s | "
              f"{r.get('deserialize_s', r.get('error'))} s | {r['build_peak_rss_bytes'] / 2**30:.2f} GiB | "
              f"{r.get('loaded_rss_bytes', 0) / 2**30:.2f} GiB | "
              f"{r['same_answers_as_others']} | {r['load_avg_1m']} |")


if __name__ == "__main__":
    main()
