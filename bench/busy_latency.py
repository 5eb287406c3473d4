"""Query latency of the default threads (None: all cores) against threads=1 while other cores are busy.

    .venv/bin/python bench/busy_latency.py [--n 10M] [--queries 200] [--rounds 3] [--batches 100,2000]
                                           [--json bench/results/busy_latency_10M.json]

Builds N uniform random codes and times r=8 range queries, one at a time,
under four loads that alternate in blocks within one run:

    idle    nothing started by this benchmark (other users of the machine still run)
    busy1   one CPU-bound process (`while 1: pass`) started beside us
    busy2   two of them: on a 2-core machine every core is then contended
    omp     a faiss.IndexBinaryMultiHash query before each of ours, in this
            process: FAISS's OpenMP threads spin for a while after every call

The busy processes are started once and switched on and off with SIGCONT and
SIGSTOP, so a block changes load in microseconds. Inside each block,
sub-blocks of --block queries alternate between the default and threads=1
(which goes first flips every sub-block), each on queries of its own: a
query run twice in a row would find its cache lines warm. FAISS MultiHash
(nflip=2, exact at r=8) is timed in the same run as the anchor: in `omp` on
every query, elsewhere on --faiss-queries queries at the end of the block
(after ours, so its spinning threads do not touch them). With --batches
B1,B2, each block also times range_search over batches of B1 and B2 queries
with the default and with threads=1, turn about, each batch on fresh queries.

Prints per block and overall (all rounds pooled): medians (us), the ratios
default/threads=1 (of the median, and of the capped mean: see summary()) and
FAISS/default, batch means, and how many jobs the default shared with helper
threads ("joined": those a helper took part in), ran alone on its gate's
advice ("gated"), and how often the gate backed off. Every single-query
answer is checked against threads=1 first.
"""
import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402
import harness  # noqa: E402
import hashsieve as hs  # noqa: E402
from hashsieve import _core  # noqa: E402

LOADS = ("idle", "busy1", "busy2", "omp")
SETTINGS = (("default", None), ("threads=1", 1))
SETTLE_S = 0.2     # after switching load: let the scheduler place the new runnable processes
CAP = 4            # see summary()


class BusyProcesses:
    """CPU-bound child processes, stopped until asked for."""

    def __init__(self, n):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
        self.set(0)

    def set(self, k):
        for i, p in enumerate(self.procs):
            p.send_signal(signal.SIGCONT if i < k else signal.SIGSTOP)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


def share_counters():
    """The native core's work-sharing counters (none in builds from before the gate, which this also measures)."""
    return _core.share_counters() if hasattr(_core, "share_counters") else {}


def timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def run_block(load, index, qs, fq, faiss_index, args, flip):
    """One block under `load`: {setting: [seconds]}."""
    out = {"default": [], "threads=1": [], "faiss": []}
    r, blk = args.radius, args.block
    for sub in range(args.queries // blk):
        order = SETTINGS if (sub + flip) % 2 == 0 else SETTINGS[::-1]
        for half, (name, th) in enumerate(order):
            for i in range((2 * sub + half) * blk, (2 * sub + half + 1) * blk):
                if load == "omp":
                    out["faiss"].append(timed(faiss_index.range_search, fq[i], r + 1))
                out[name].append(timed(index.range_search, qs[i:i + 1], r, th))
    start = 0
    for size in args.batches:
        for rep in range(args.batch_reps):
            for name, th in SETTINGS if (rep + flip) % 2 == 0 else SETTINGS[::-1]:
                if start + size > len(qs):
                    start = 0
                batch = qs[start:start + size]
                start += size
                out.setdefault(f"batch{size} {name}", []).append(timed(index.range_search, batch, r, th))
    if faiss_index is not None and load != "omp":
        for i in range(args.faiss_queries):
            out["faiss"].append(timed(faiss_index.range_search, fq[i], r + 1))
    return out


def summary(times, anchor=True):
    """Medians; ratios default/threads=1 of the median and of the capped mean (each query counted at
    most CAP times the threads=1 median: a helper losing its core shows in the tail, one preemption
    of ours by a neighbour does not decide it, as in the CI guard); FAISS/default; batch means."""
    med = {k: float(np.median(v)) * 1e6 for k, v in times.items() if v}
    s = {f"{k} median us": round(v, 1) for k, v in med.items() if not k.startswith("batch")}
    d, one = np.array(times["default"]), np.array(times["threads=1"])
    cap = CAP * np.median(one)
    s["default/threads=1"] = round(med["default"] / med["threads=1"], 3)
    s["capped mean default/threads=1"] = round(np.minimum(d, cap).mean() / np.minimum(one, cap).mean(), 3)
    if "faiss" in med and anchor:
        s["faiss/default"] = round(med["faiss"] / med["default"], 1)
    for k in med:
        if k.startswith("batch") and k.endswith(" default"):
            # Batch times on a busy machine are multimodal (how many others share our core, 2 ms or
            # 6 ms for 100 queries at 10M), so their medians jump between modes: compare means.
            b = k[:-len(" default")]
            s[f"{b} default mean ms"] = round(np.mean(times[k]) * 1e3, 2)
            s[f"{b} threads=1 mean ms"] = round(np.mean(times[b + " threads=1"]) * 1e3, 2)
            s[f"{b} mean default/threads=1"] = round(np.mean(times[k]) / np.mean(times[b + " threads=1"]), 3)
    return s


def fmt(s):
    return "  ".join(f"{k} {v}" for k, v in s.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=harness.parse_size, default=10_000_000)
    ap.add_argument("--queries", type=int, default=200, help="single queries per setting per block")
    ap.add_argument("--block", type=int, default=25, help="queries per sub-block of one setting")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--radius", type=int, default=8)
    ap.add_argument("--loads", default=",".join(LOADS))
    ap.add_argument("--batches", default="", help="also time batches of these sizes, e.g. 100,2000")
    ap.add_argument("--batch-reps", type=int, default=8, help="batches of each size per setting per block")
    ap.add_argument("--faiss-queries", type=int, default=40)
    ap.add_argument("--no-faiss", action="store_true", help="skip FAISS (and the omp load)")
    ap.add_argument("--faiss-n", type=harness.parse_size,
                    help="codes in the FAISS index (default N); smaller keeps the omp load but drops the anchor")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--note", default="", help="stored in the JSON, e.g. which code was measured")
    args = ap.parse_args()
    loads = [x for x in args.loads.split(",") if x and not (args.no_faiss and x == "omp")]
    unknown = set(loads) - set(LOADS)
    if unknown:
        ap.error(f"unknown loads {sorted(unknown)}; choose from {LOADS}")
    if args.queries % args.block:
        ap.error("--queries must be a multiple of --block")
    args.batches = [int(x) for x in args.batches.split(",") if x]

    codes = datasets.uniform(args.n, seed=0)
    t0 = time.perf_counter()
    index = hs.HashIndex()
    index.add(codes)
    build_s = time.perf_counter() - t0
    nq = max([2 * args.queries] + [4 * b for b in args.batches])
    qs = datasets.make_queries(codes, nq, seed=1).codes
    faiss_index = None
    faiss_n = args.faiss_n or args.n
    if not args.no_faiss:
        faiss_index = harness.FaissMIHFamily().build(codes[:faiss_n]).index
    del codes
    n_single = 2 * args.queries
    fq = None if faiss_index is None else [harness.faiss_codes(qs[i:i + 1]) for i in range(n_single)]
    for i in range(n_single):       # the default gives the same answers as threads=1
        a, b = index.range_search(qs[i:i + 1], args.radius), index.range_search(qs[i:i + 1], args.radius, threads=1)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), f"query {i}: default differs from threads=1"

    faiss_note = "" if args.no_faiss else f", FAISS MultiHash over the first {harness.size_name(faiss_n)}"
    head = (f"{harness.size_name(args.n)} uniform codes{faiss_note}, r={args.radius}, {args.queries} single queries per "
            f"setting per block in sub-blocks of {args.block}, {args.rounds} rounds; {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.2f} before starting")
    print("#", head, flush=True)
    busy = BusyProcesses(2 if {"busy1", "busy2"} & set(loads) else 0)
    all_times = {load: {} for load in loads}
    all_shares = {load: {} for load in loads}
    blocks = []
    try:
        for rnd in range(args.rounds):
            order = loads[rnd % len(loads):] + loads[:rnd % len(loads)]
            for load in order:
                busy.set({"busy1": 1, "busy2": 2}.get(load, 0))
                time.sleep(SETTLE_S)
                before = share_counters()
                times = run_block(load, index, qs, fq, faiss_index, args, rnd)
                after = share_counters()
                busy.set(0)
                shares = {f"{k} jobs": after[k] - before[k] for k in after}
                for k, v in times.items():
                    all_times[load].setdefault(k, []).extend(v)
                for k, v in shares.items():
                    all_shares[load][k] = all_shares[load].get(k, 0) + v
                s = dict(summary(times, faiss_n == args.n), **shares)
                blocks.append(dict(round=rnd + 1, load=load, **s))
                print(f"round {rnd + 1} {load:6s} {fmt(s)}", flush=True)
    finally:
        busy.close()
    print("# overall (all rounds pooled)")
    overall = {}
    for load in loads:
        overall[load] = dict(summary(all_times[load], faiss_n == args.n), **all_shares[load])
        print(f"{load:6s} {fmt(overall[load])}", flush=True)
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        out = dict(command=shlex.join(["bench/busy_latency.py"] + sys.argv[1:]), setup=head, commit=commit,
                   note=args.note, date=time.strftime("%Y-%m-%d"), machine=harness.machine(),
                   build_s=round(build_s, 1), overall=overall, blocks=blocks)
        harness.save_json(args.json, out)


if __name__ == "__main__":
    main()
