"""How much per-table thresholds chosen from measured bucket sizes (GPH-style) could save on 256-bit codes.

    .venv/bin/python bench/gph_headroom.py --n 10M --kind correlated

Builds the index, then for each table and ring (substring distance 0..3) measures the candidates a query's
probes would read: the mean, over the benchmark's queries (half near-duplicates, half random), of the bucket
sizes at every key that many bits from the query's key. From those it costs the planner's split (the tight
pigeonhole rule, wider tables first) against the best split any allocation could reach (dynamic programming
over tables, the same r + 1 units, a probe costing HS_PROBE_NS_DRAM / HS_CAND_NS4 = 5 candidates): an upper bound
on what a GPH planner could gain on this data, since it knows the queries' own buckets.
"""
import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_256 as B  # noqa: E402
import harness  # noqa: E402

import hashsieve as hs  # noqa: E402

PROBE = 40 / 8.0
MAX_RING = 3


def ring_costs(segment, queries):
    """Per table k and ring j: mean candidates C[k, j] and probes P[k, j] of a query."""
    bits, m = segment.bits, len(segment.bits)
    words = queries.view("<u8").reshape(-1, 4)
    C, P = np.zeros((m, MAX_RING + 1)), np.zeros((m, MAX_RING + 1))
    for k in range(m):
        key = np.zeros(len(words), np.int64)
        for i in range(bits[k]):            # table k's key: code bits k, k + m, ... (hs_wide_masks)
            p = k + i * m
            key |= ((words[:, 3 - p // 64] >> np.uint64(p % 64)) & np.uint64(1)).astype(np.int64) << i
        sizes = np.diff(np.asarray(segment.offsets[k]).astype(np.int64))
        for j in range(MAX_RING + 1):
            flips = np.array([sum(1 << b for b in c) for c in itertools.combinations(range(bits[k]), j)], np.int64)
            C[k, j] = sizes[key[:, None] ^ flips[None, :]].sum(axis=1).mean()
            P[k, j] = len(flips)
    return C, P


def cost(C, P, t):
    c = sum(C[k, :t[k] + 1].sum() for k in range(len(t)))
    p = sum(P[k, :t[k] + 1].sum() for k in range(len(t)))
    return c + PROBE * p, c, p


def best_split(C, P, units):
    best = {0: (0.0, [])}
    for k in range(len(C)):
        nxt = {}
        for u, (c0, ts) in best.items():
            for t in range(-1, MAX_RING + 1):
                c = c0 + (C[k, :t + 1].sum() + PROBE * P[k, :t + 1].sum() if t >= 0 else 0.0)
                uu = min(u + t + 1, units)
                if uu not in nxt or c < nxt[uu][0]:
                    nxt[uu] = (c, ts + [t])
        best = nxt
    return best[units][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10M")
    ap.add_argument("--kind", default="correlated", choices=sorted(B.KINDS))
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--radius", type=int, default=B.RADIUS)
    args = ap.parse_args()
    n, r = harness.parse_size(args.n), args.radius
    rng = np.random.default_rng(0)
    codes = B.KINDS[args.kind](rng, n)
    index = hs.HashIndex(bits=256)
    index.add(codes)
    segment = index._parts[0].segment     # the main segment (its offsets arrays)
    queries = B.make_queries(rng, codes, args.queries)
    C, P = ring_costs(segment, queries)
    m = len(segment.bits)
    planner = [(r + 1) // m + (k < (r + 1) % m) - 1 for k in range(m)]    # split_radius in ext/mih.c
    best = best_split(C, P, r + 1)
    a, b = cost(C, P, planner), cost(C, P, best)
    print(f"{args.kind} {n} codes, r={r}, tables {segment.bits}")
    print(f"planner's split {planner}: cost {a[0]:.0f} (candidates {a[1]:.0f}, probes {a[2]:.0f})")
    print(f"best split      {best}: cost {b[0]:.0f} (candidates {b[1]:.0f}, probes {b[2]:.0f})")
    print(f"headroom: {100 * (1 - b[0] / a[0]):.1f}% of the estimated cost")


if __name__ == "__main__":
    main()
