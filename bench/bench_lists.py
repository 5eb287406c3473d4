"""Peak memory and time of `hashsieve build` from one big CSV list (issue 10 item 12).

    .venv/bin/python bench/bench_lists.py [--n 10000000] [--out bench/results/lists.json]

Generates a CSV of n rows (uniform random 64-bit hashes, ids and labels, as a merged hotline
list looks), builds an index from it in a fresh process, and reports the process's peak RSS
(VmHWM, read at exit) beside that of a 1,000-row build, so the difference per row is what the
list's length costs. The bound: 100 bytes per entry plus a constant.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import harness
import hashsieve as hs

CODE = ("import sys; from hashsieve.cli import main; rc = main(['build', sys.argv[1], '-o', sys.argv[2]]); "
        "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM'))); sys.exit(rc)")


def write_list(path, n, seed=1):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("hash,id,label\n")
        for start in range(0, n, 1 << 20):
            m = min(1 << 20, n - start)
            hexes = hs.to_hex(rng.integers(0, 2**64, m, dtype=np.uint64))
            f.write("".join(f"{h},ID{start + k},label {start + k}\n" for k, h in enumerate(hexes)))


def build(folder, n):
    lst = os.path.join(folder, f"list{n}.csv")
    write_list(lst, n)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CODE, lst, os.path.join(folder, f"i{n}.hsi")],
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stderr)
    return {"rows": n, "list_bytes": os.path.getsize(lst), "seconds": round(seconds, 1),
            "peak_rss_kib": int(p.stdout.split()[-1])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as folder:
        small = build(folder, 1000)
        big = build(folder, a.n)
    per_entry = (big["peak_rss_kib"] - small["peak_rss_kib"]) * 1024 / (a.n - 1000)
    result = {"small": small, "big": big, "peak_bytes_per_entry": round(per_entry, 1),
              "machine": os.uname().nodename, "cpus": len(os.sched_getaffinity(0))}
    print(json.dumps(result, indent=2))
    if a.out:
        harness.save_json(a.out, result, indent=2)


if __name__ == "__main__":
    main()
