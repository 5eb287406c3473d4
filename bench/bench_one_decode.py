"""What one decode for several kinds saves: scan.hash_jobs of pHash + PDQ together against each alone.

    .venv/bin/python bench/bench_one_decode.py [--files 8] [--width 1600] [--height 1200] [--rounds 3]

Synthetic photos as JPEG q90, hashed in this process (no worker pool); prints ms per file, the
minimum over the rounds.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import imagegen  # noqa: E402
from hashsieve.scan import hash_jobs  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    datas = [imagegen.encode(imagegen.photo(a.width, a.height, seed=s).convert("RGB"), "JPEG", quality=90)
             for s in range(a.files)]

    def ms_per_file(*kind_sets):
        best = float("inf")
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for kinds in kind_sets:
                hash_jobs(datas, kinds, False, None, 1 << 30)
            best = min(best, time.perf_counter() - t0)
        return 1000 * best / len(datas)

    print(f"{a.files} JPEGs of {a.width}x{a.height}, ms per file (min of {a.rounds} rounds, one process): "
          f"phash {ms_per_file(('phash',)):.1f}, pdq {ms_per_file(('pdq',)):.1f}, "
          f"phash+pdq from one decode {ms_per_file(('phash', 'pdq')):.1f}, "
          f"phash then pdq, two decodes {ms_per_file(('phash',), ('pdq',)):.1f}")


if __name__ == "__main__":
    main()
