"""The figures issue 2 asks for, measured in one process and printed (and saved as JSON).

    .venv/bin/python bench/issue2_figures.py                      # 10M and 100M parts
    .venv/bin/python bench/issue2_figures.py --parts 10m,skew     # skip 100M
    .venv/bin/python bench/issue2_figures.py --parts 100m --faiss-mih-100m

Parts:
  10m   N=10M uniform, r=8 (and r=4): hashsieve vs faiss.IndexBinaryMultiHash(64,3,21) nflip=2,
        median single-query latency, threads=1, timed turn about; every answer checked.
  skew  N=10M skewed (10% one hash, 20% in near-duplicate clusters) vs 10M uniform: median
        latency of queries not near the heavy hash.
  100m  N=100M uniform: build time (all cores), bytes/code (nbytes and RSS delta), median
        latency r=4 and r=8, a batch of 100,000 queries at r=8 (queries/s), and a forced
        brute-force scan (set_strategy("scan")) beside faiss.IndexBinaryFlat, one query.

Queries are half near-duplicates of indexed codes (1-4 bits flipped), half random.
Every answer that is timed is first checked against the NumPy oracle.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(msg, flush=True)


def us(s):
    return round(s * 1e6, 1)


def stats_of(index, qcodes, r):
    return {k: round(v, 1) for k, v in harness.summarise_stats(index.explain(qcodes, radius=r, threads=1)).items()}


def latency(methods, oracle, r, nthreads=1, reps=3):
    res = harness.interleaved_latency(methods, oracle, r, reps=reps, nthreads=nthreads)
    for m in methods:
        m.threads(None)
    out = {}
    for name, v in res.items():
        if v["wrong"]:
            out[name] = dict(wrong=v["wrong"])
            log(f"    {name}: WRONG, not timed: {v['wrong']}")
            continue
        near = oracle.near
        t = v["times"]
        out[name] = dict(median_us=us(v["median_s"]), median_near_us=us(np.median(t[near])),
                         median_random_us=us(np.median(t[~near])))
        log(f"    {name} r={r} threads={nthreads or 'default'}: median {out[name]['median_us']} us "
            f"(near-dup {out[name]['median_near_us']}, random {out[name]['median_random_us']})")
    return out


def dataset(name, n, nq, seed=0):
    t = time.perf_counter()
    codes, info = datasets.load(name, n, seed)
    queries = datasets.make_queries_for(name, codes, info, nq, seed=seed + 1)
    oracle = harness.Oracle(codes, queries.codes, max_radius=12, max_k=1)
    oracle.near = queries.near
    log(f"  {name} {harness.size_name(n)}: data and oracle for {nq} queries in {time.perf_counter() - t:.1f} s")
    return codes, info, queries, oracle


def build(family, codes):
    fam = harness.FAMILIES[family]().build(codes)
    n = len(codes)
    nb = fam.nbytes()
    rec = dict(build_s=round(fam.build_s, 2), rss_delta_per_code=round(fam.rss_delta / n, 1),
               nbytes_per_code=None if nb is None else round(nb / n, 1))
    log(f"  built {family} on {harness.size_name(n)} in {rec['build_s']} s; "
        f"nbytes/code {rec['nbytes_per_code']}, RSS delta/code {rec['rss_delta_per_code']}")
    return fam, rec


def part_10m(args, out):
    log("== 10M uniform: hashsieve vs FAISS MIH")
    codes, info, queries, oracle = dataset("uniform", args.n10, args.nq)
    ours, ours_build = build("hashsieve", codes)
    mih, mih_build = build("faiss_mih", codes)
    rec = dict(n=args.n10, queries=args.nq, build=dict(hashsieve=ours_build, faiss_mih=mih_build))
    for r in (8, 4):
        res = latency([harness.Hashsieve(ours), harness.FaissMIH(mih)], oracle, r)
        ok = all("median_us" in v for v in res.values())
        if ok:
            res["ratio"] = round(res["faiss_mih"]["median_us"] / res["hashsieve"]["median_us"], 1)
            log(f"    ratio faiss_mih / hashsieve at r={r}: {res['ratio']}x (target >= 50x at r=8); "
                f"identical results to the oracle: yes")
        res["hashsieve_explain"] = stats_of(ours.index, queries.codes, r)
        log(f"    hashsieve explain r={r}: {res['hashsieve_explain']}")
        rec[f"r{r}"] = res
    out["10m"] = rec
    mih.free()
    ours.free()
    harness.release_memory()


def part_skew(args, out):
    log("== 10M skewed vs uniform (queries not near the heavy hash)")
    rec = dict(n=args.n10, queries=args.nq)
    for name in ("uniform", "skewed"):
        codes, info, queries, oracle = dataset(name, args.n10, args.nq)
        ours, b = build("hashsieve", codes)
        rec[name] = dict(build=b, info={k: v for k, v in info.items()})
        for r in (8, 4):
            res = latency([harness.Hashsieve(ours)], oracle, r)
            res["hashsieve_explain"] = stats_of(ours.index, queries.codes, r)
            log(f"    explain: {res['hashsieve_explain']}")
            rec[name][f"r{r}"] = res
        ours.free()
        del codes, oracle
        harness.release_memory()
    for r in (8, 4):
        u = rec["uniform"][f"r{r}"]["hashsieve"].get("median_us")
        s = rec["skewed"][f"r{r}"]["hashsieve"].get("median_us")
        if u and s:
            rec[f"ratio_r{r}"] = round(s / u, 2)
            log(f"    skewed / uniform median latency at r={r}: {rec[f'ratio_r{r}']}x (target <= 3x)")
    out["skew"] = rec


def part_100m(args, out):
    log("== 100M uniform")
    codes, info, queries, oracle = dataset("uniform", args.n100, args.nq100)
    rec = dict(n=args.n100, queries=args.nq100)
    ours, rec["build"] = build("hashsieve", codes)
    for r in (4, 8):
        rec[f"r{r}"] = latency([harness.Hashsieve(ours)], oracle, r)
        rec[f"r{r}_threads_default"] = latency([harness.Hashsieve(ours)], oracle, r, nthreads=None, reps=1)
        rec[f"r{r}"]["hashsieve_explain"] = stats_of(ours.index, queries.codes, r)
        log(f"    explain r={r}: {rec[f'r{r}']['hashsieve_explain']}")
    # Batch: the oracle's queries first (checked), then fresh ones.
    more = datasets.make_queries(codes, args.batch - args.nq100, seed=3)
    batch = np.concatenate([queries.codes, more.codes])
    for r in (8,):
        best = None
        for _ in range(args.batch_rounds):
            t = time.perf_counter()
            lims, d, ids = ours.index.range_search(batch, r)
            el = time.perf_counter() - t
            best = el if best is None else min(best, el)
        problem = oracle.check_range(harness.normalise_csr(lims[:args.nq100 + 1], d, ids), r)
        rec[f"batch_r{r}"] = dict(queries=len(batch), seconds=round(best, 3),
                                  queries_per_s=round(len(batch) / best), checked_prefix=args.nq100,
                                  wrong=problem)
        log(f"    batch of {len(batch)} at r={r}: {best:.2f} s = {len(batch) / best:,.0f} queries/s "
            f"(first {args.nq100} checked: {'ok' if problem is None else problem})")
    # Brute force: hashsieve's forced scan beside FAISS flat, one query at a time, 30 queries.
    flat, rec["faiss_flat_build"] = build("faiss_flat", codes)
    sub = harness.Oracle.__new__(harness.Oracle)
    sub.__dict__.update(oracle.__dict__)
    sub.queries = oracle.queries[:args.nq_scan]
    sub.near = oracle.near[:args.nq_scan]
    for nthreads in (None, 1):
        rec[f"scan_threads_{nthreads or 'default'}"] = latency(
            [harness.HashsieveScan(ours), harness.FaissFlat(flat)], sub, 8, nthreads=nthreads, reps=2)
    flat.free()
    harness.release_memory()
    if args.faiss_mih_100m:
        mih, rec["faiss_mih_build"] = build("faiss_mih", codes)
        for r in (8, 4):
            res = latency([harness.Hashsieve(ours), harness.FaissMIH(mih)], oracle, r)
            if all("median_us" in v for v in res.values()):
                res["ratio"] = round(res["faiss_mih"]["median_us"] / res["hashsieve"]["median_us"], 1)
                log(f"    ratio faiss_mih / hashsieve at 100M r={r}: {res['ratio']}x")
            rec[f"vs_faiss_mih_r{r}"] = res
        mih.free()
    out["100m"] = rec
    ours.free()
    harness.release_memory()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="10m,skew,100m")
    ap.add_argument("--n10", type=lambda s: harness.parse_size(s), default=10_000_000)
    ap.add_argument("--n100", type=lambda s: harness.parse_size(s), default=100_000_000)
    ap.add_argument("--nq", type=int, default=200, help="queries at 10M")
    ap.add_argument("--nq100", type=int, default=100, help="queries at 100M (the oracle costs ~0.4 s each)")
    ap.add_argument("--nq-scan", type=int, default=30)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--batch-rounds", type=int, default=3)
    ap.add_argument("--faiss-mih-100m", action="store_true", help="also build FAISS MIH at 100M (~6 GB, ~2 min)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "issue2.json"))
    args = ap.parse_args()
    import hashsieve
    out = dict(machine=harness.machine(), command="python " + " ".join(sys.argv),
               isa=hashsieve.get_isa(), when=time.strftime("%Y-%m-%d %H:%M:%S"))
    log(f"machine: {out['machine']}; isa {out['isa']}")
    parts = args.parts.split(",")
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        out = {**old, **out}
    for part, fn in (("10m", part_10m), ("skew", part_skew), ("100m", part_100m)):
        if part in parts:
            fn(args, out)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
