"""Single-query latency with and without sharing a query's probes between cores.

    .venv/bin/python bench/shared_query.py [--n 100M] [--queries 400] [--rounds 4]

Builds N uniform random codes, then times r=8 range queries one at a time with
threads=1, threads=2 and threads=None (the default: all cores), in blocks of 50
queries that alternate between the settings, so a change in the machine's
speed hits all three alike and no query runs twice in a row (its lines would
be in cache). Prints the median of each per round.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import datasets  # noqa: E402
import harness  # noqa: E402
import hashsieve as hs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=harness.parse_size, default=100_000_000)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--radius", type=int, default=8)
    args = ap.parse_args()
    codes = datasets.uniform(args.n, seed=0)
    index = hs.HashIndex()
    index.add(codes)
    qs = datasets.make_queries(codes, args.queries, seed=1).codes
    del codes
    settings = (1, 2, None)
    print(f"# {harness.size_name(args.n)} codes, r={args.radius}, {args.queries} queries, median us; "
          f"load average {os.getloadavg()[0]:.2f}")
    for rnd in range(args.rounds):
        times = {th: [] for th in settings}
        for b0 in range(0, len(qs), 50):
            for th in settings if rnd % 2 == 0 else settings[::-1]:
                for i in range(b0, min(b0 + 50, len(qs))):
                    t = time.perf_counter()
                    index.range_search(qs[i:i + 1], args.radius, threads=th)
                    times[th].append(time.perf_counter() - t)
        print("round", rnd + 1, "  ".join(f"threads={th or 'default'}: {np.median(v) * 1e6:.1f}"
                                          for th, v in times.items()), flush=True)


if __name__ == "__main__":
    main()
