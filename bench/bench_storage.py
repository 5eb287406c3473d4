"""Index file benchmarks: save, open with mmap, page sharing between processes, a daily update.

    .venv/bin/python bench/bench_storage.py --n 100000000 --dir /tmp/hsbench
    .venv/bin/python bench/bench_storage.py --n 100000000 --ids-vs-none    # only: build with ids vs without

Every stage runs in a fresh child process so that its time and memory are its
own; memory comes from /proc/<pid>/smaps_rollup (Rss, Pss, shared/private).
Codes are uniform random from a seed, ids 0..n-1. Prints one JSON document.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SMAPS_FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")


def smaps(pid="self"):
    """MiB of the smaps_rollup fields of a process."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0].rstrip(":") in SMAPS_FIELDS:
                out[parts[0].rstrip(":")] = round(int(parts[1]) / 1024, 1)
    return out


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def queries_for(n, nq, seed=7):
    return np.random.default_rng(seed).integers(0, 2**64, nq, dtype=np.uint64)


def latency_us(index, queries, radius):
    times = []
    for q in queries:
        t = time.perf_counter()
        index.range_search(q, radius, threads=1)
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e6, 1)


# ------------------------------------------------------------------ stages (child processes)
def stage_build(args):
    import hashsieve as hs
    codes = np.random.default_rng(args.seed).integers(0, 2**64, args.n, dtype=np.uint64)
    t = time.perf_counter()
    index = hs.HashIndex()
    index.add(codes, threads=2)
    build = time.perf_counter() - t
    del codes
    t = time.perf_counter()
    index.save(args.path)
    save = time.perf_counter() - t
    return {"build_s": round(build, 2), "save_s": round(save, 2), "file_bytes": os.path.getsize(args.path),
            "bytes_per_code": round(os.path.getsize(args.path) / args.n, 1), "peak_rss_mib": peak_rss_mib()}


def stage_ids(args):
    """add() of n codes with ids 0..n-1 (what the command line passes) against add() numbering them, alternating."""
    import hashsieve as hs
    codes = np.random.default_rng(args.seed).integers(0, 2**64, args.n, dtype=np.uint64)
    ids = np.arange(args.n, dtype=np.int64)
    times = {"without_ids_s": [], "with_ids_s": []}
    runs = (("without_ids_s", None), ("with_ids_s", ids))
    for round_ in range(4):                     # the order alternates: the first build of a round may pay more
        for key, given in runs if round_ % 2 == 0 else runs[::-1]:
            t = time.perf_counter()
            index = hs.HashIndex()
            index.add(codes, ids=given, threads=2)
            times[key].append(round(time.perf_counter() - t, 2))
            del index
    return {**times, "peak_rss_mib": peak_rss_mib()}


def stage_open(args):
    import hashsieve as hs
    before = smaps()
    t = time.perf_counter()
    index = hs.HashIndex.load(args.path, mmap=True)
    open_s = time.perf_counter() - t
    after_open = smaps()
    q = queries_for(args.n, 1000)
    lat = {f"r{r}_median_us": latency_us(index, q, r) for r in (4, 8)}
    after_queries = smaps()
    t = time.perf_counter()
    index.verify()
    verify_s = time.perf_counter() - t
    return {"open_s": round(open_s, 4), "smaps_before_open": before, "smaps_after_open": after_open,
            "after_2000_queries": after_queries, **lat, "verify_s": round(verify_s, 2),
            "smaps_after_verify": smaps()}


def stage_serve(args):
    """Open, touch every page (verify reads them all), report, then wait so the parent can look."""
    import hashsieve as hs
    index = hs.HashIndex.load(args.path, mmap=True)
    index.verify()
    print(json.dumps({"pid": os.getpid(), "smaps": smaps()}), flush=True)
    sys.stdin.readline()
    index.range_search(queries_for(args.n, 10), 4)
    return {}


def stage_update(args):
    import hashsieve as hs
    rng = np.random.default_rng(args.seed + 1)
    t0 = time.perf_counter()
    index = hs.HashIndex.load(args.path, mmap=True)
    t1 = time.perf_counter()
    n_before = len(index)
    victims = rng.choice(args.n, args.updates, replace=False)
    removed = index.remove(victims)
    t2 = time.perf_counter()
    new = rng.integers(0, 2**64, args.updates, dtype=np.uint64)
    index.add(new, ids=np.arange(args.n, args.n + args.updates))
    t3 = time.perf_counter()
    index.save(args.path)
    t4 = time.perf_counter()
    from hashsieve.storage import read_metadata
    info = read_metadata(args.path)
    check = hs.HashIndex.load(args.path, mmap=True)
    assert len(check) == n_before, (len(check), n_before)
    assert removed == args.updates
    lims, _, ids = check.range_search(new[:100], 0)
    assert set(range(args.n, args.n + 100)) <= set(ids.tolist())
    return {"load_s": round(t1 - t0, 3), "remove_s": round(t2 - t1, 3), "add_s": round(t3 - t2, 3),
            "save_s": round(t4 - t3, 2), "total_s": round(t4 - t0, 2), "segments": len(check.snapshot().segments),
            "saved_file_bytes": info["file_size"], "base": info["base"],
            "smaps_end": smaps()}


def stage_load_copy(args):
    import hashsieve as hs
    t = time.perf_counter()
    index = hs.HashIndex.load(args.path, mmap=False)
    return {"load_mmap_false_s": round(time.perf_counter() - t, 2), "rss_mib": smaps()["Rss"], "len": len(index)}


STAGES = {"build": stage_build, "ids": stage_ids, "open": stage_open, "serve": stage_serve, "update": stage_update,
          "load_copy": stage_load_copy}


# ------------------------------------------------------------------ driver
def child(args, stage, **kw):
    cmd = [sys.executable, __file__, "--stage", stage, "--n", str(args.n), "--dir", args.dir,
           "--seed", str(args.seed), "--updates", str(args.updates)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True, **kw)


def run(args, stage):
    proc = child(args, stage)
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"stage {stage} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    print(stage, json.dumps(result), file=sys.stderr, flush=True)
    return result


def shared_pages(args):
    a = child(args, "serve")
    ra = json.loads(a.stdout.readline())
    alone = smaps(a.pid)
    b = child(args, "serve")
    rb = json.loads(b.stdout.readline())
    both = {"first": smaps(a.pid), "second": smaps(b.pid)}
    for p in (a, b):
        p.stdin.write("\n")
        p.stdin.flush()
        p.communicate()
    result = {"first_alone": alone, "both_running": both, "first_self_report": ra["smaps"],
              "second_self_report": rb["smaps"]}
    print("share", json.dumps(result), file=sys.stderr, flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000_000)
    ap.add_argument("--dir", default="/tmp/hsbench")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--updates", type=int, default=10_000)
    ap.add_argument("--skip-copy-load", action="store_true", help="skip load(mmap=False) (needs RAM = file size)")
    ap.add_argument("--keep", action="store_true", help="keep the index file")
    ap.add_argument("--ids-vs-none", action="store_true", help="only time add() with ids against without")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    args.path = os.path.join(args.dir, f"bench-{args.n}.hsi")
    if args.stage:
        print(json.dumps(STAGES[args.stage](args)))
        return
    import hashsieve as hs
    results = {"n": args.n, "isa": hs.get_isa(), "cpus": os.cpu_count(), "command": " ".join(sys.argv)}
    if args.ids_vs_none:
        results["add_with_and_without_ids"] = run(args, "ids")
        print(json.dumps(results, indent=1))
        return
    results["build_and_save"] = run(args, "build")
    results["open_mmap"] = run(args, "open")
    results["two_processes"] = shared_pages(args)
    results["daily_update"] = run(args, "update")
    results["verify_after_update"] = run(args, "open")
    if not args.skip_copy_load:
        results["load_copy"] = run(args, "load_copy")
    if not args.keep:
        os.unlink(args.path)
        for entry in os.listdir(args.dir):           # the base file of the incremental save
            if entry.startswith(os.path.basename(args.path) + ".base-"):
                os.unlink(os.path.join(args.dir, entry))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
