"""Longer run of the index-file fuzz of tests/test_storage_fuzz.py (which runs a few hundred cases in make test).

    .venv/bin/python bench/fuzz_storage.py --cases 5000 --workers 2 --seed 1

Builds the same file (a main segment over DEEP_CHECK_ENTRIES entries, tombstones, a delta),
mutates it case by case in child processes (truncations, bit/byte/word flips, forged sections
and headers with their CRCs recomputed), and prints the outcome counts and failures as JSON.
Exits 1 if any case failed (a crash, an exception other than IndexFormatError, or a verified
file whose answers differ from the oracle's over its own content).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_storage_fuzz import make_big_file, run_fuzz, scratch_folder  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1, help="the file and the mutations follow from it")
    ap.add_argument("--first", type=int, default=0, help="first case number (to re-run one case)")
    args = ap.parse_args()
    folder = scratch_folder()
    try:
        path = folder / "big.hsi"
        make_big_file(args.seed, path)
        start = time.perf_counter()
        result = run_fuzz(path, args.seed, args.cases, args.workers, args.first)
        result.update(seed=args.seed, first=args.first, workers=args.workers, file_bytes=path.stat().st_size,
                      seconds=round(time.perf_counter() - start, 1), command=" ".join(sys.argv))
    finally:
        shutil.rmtree(folder)
    print(json.dumps(result, indent=1))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
