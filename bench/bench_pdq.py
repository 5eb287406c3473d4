"""PDQ measurements for docs/pdq.md.

    .venv/bin/python bench/bench_pdq.py speed [--jpegs 16 --rounds 5]
    .venv/bin/python bench/bench_pdq.py modes [--scenes 40]
    .venv/bin/python bench/bench_pdq.py fastcost [--jpegs 16 --rounds 5]

speed: hashsieve.pdq against pdqhash (Meta's C++) in the same run.  Synthetic
photo-like JPEGs of 1.2-3.8 MP (bench_hashing.make_jpegs, from tests/imagegen.py
scenes) are written to a temporary folder.  Per image and round, interleaved:
decode (Image.open + pdq_from_image, python-threatexchange's array), our hash of
that array, pdqhash's.  Medians over rounds, summed over images; one thread.
Every hash is checked against pdqhash's.

modes: for the Pillow modes python-threatexchange hashes oddly (palette indices,
CMYK as RGB, mode "1" as 0/1), the distance between its hash and the hash of
the image converted to RGB (what it looks like), over tests/imagegen.py's corpus.

fastcost: what a reduced-size JPEG decode (Image.draft, libjpeg's DCT scaling to
1/2, 1/4, 1/8) costs in bits from the exact hash and gains in time, against
pdqhash on the full decode (python-threatexchange's pipeline), same JPEGs as speed.
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pdqhash
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import imagegen  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from bench_hashing import make_jpegs  # noqa: E402
from hashsieve.pdq import pdq_from_image, pdq_hash  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _decode(path):
    with Image.open(path) as image:
        return pdq_from_image(image)


def measure(paths, rounds):
    rows = []
    for path in paths:
        times = {"decode": [], "ours": [], "pdqhash": []}
        for _ in range(rounds):
            t, array = _timed(lambda: _decode(path))
            times["decode"].append(t)
            t, ours = _timed(lambda: pdq_hash(array, with_quality=True))
            times["ours"].append(t)
            t, (vector, quality) = _timed(lambda: pdqhash.compute(array))
            times["pdqhash"].append(t)
            want = np.packbits(np.asarray(vector, dtype=np.uint8))
            assert np.array_equal(ours[0], want) and ours[1] == quality, f"{path}: differs from pdqhash"
        h, w = array.shape[:2]
        rows.append({"image": os.path.basename(path), "size": f"{w}x{h}", "megapixels": h * w / 1e6,
                     **{k: statistics.median(v) for k, v in times.items()}})
    return rows


def speed(args):
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(make_jpegs(folder, args.jpegs), args.rounds)
    mp = sum(r["megapixels"] for r in rows)
    n = len(rows)
    print(f"{n} JPEGs, {mp / n:.2f} MP on average, median of {args.rounds} rounds, one thread; "
          f"every hash identical to pdqhash's")
    print("| images | path | ms per image (ours) | ms per image (pdqhash) | speed-up |")
    print("|---|---|---|---|---|")
    groups = sorted({(r["megapixels"], r["size"]) for r in rows}) + [(None, "all")]
    for megapixels, size in groups:
        group = [r for r in rows if megapixels is None or r["size"] == size]
        label = f"{len(group)} x {size} ({megapixels:.1f} MP)" if megapixels else f"all {len(group)}"
        total = {k: sum(r[k] for r in group) for k in ("decode", "ours", "pdqhash")}
        for path, extra in (("hash only", 0.0), ("decode included", total["decode"])):
            ours = (total["ours"] + extra) / len(group) * 1e3
            ref = (total["pdqhash"] + extra) / len(group) * 1e3
            print(f"| {label} | {path} | {ours:.1f} | {ref:.1f} | {ref / ours:.2f}x |")
    print(f"(decode: Image.open + pdq_from_image, {sum(r['decode'] for r in rows) / n * 1e3:.1f} ms "
          f"per image, the same for both)")
    _save("speed", {"rounds": args.rounds, "images": rows})


def modes(args):
    by_mode = {}
    for name, data in imagegen.corpus(seed=5, n_scenes=args.scenes):
        image = Image.open(io.BytesIO(data))
        try:
            pytx, pytx_quality = pdq_hash(pdq_from_image(image), with_quality=True)
        except ValueError:
            pytx, pytx_quality = None, None
        rgb, rgb_quality = pdq_hash(np.asarray(image.convert("RGB")), with_quality=True)
        row = by_mode.setdefault(image.mode, {"n": 0, "refused": 0, "bits": [], "quality_pytx": [],
                                              "quality_rgb": []})
        row["n"] += 1
        row["quality_rgb"].append(rgb_quality)
        if pytx is None:
            row["refused"] += 1
            continue
        row["bits"].append(int(np.unpackbits(pytx ^ rgb).sum()))
        row["quality_pytx"].append(pytx_quality)
    print(f"tests/imagegen.py corpus (seed 5, {args.scenes} scenes): python-threatexchange's PDQ "
          f"against the image converted to RGB")
    print("| mode | images | pytx refuses | bits apart: mean | max | quality pytx / RGB (mean) |")
    print("|---|---|---|---|---|---|")
    for mode, row in sorted(by_mode.items()):
        bits = row["bits"]
        mean = f"{statistics.mean(bits):.1f}" if bits else "-"
        most = f"{max(bits)}" if bits else "-"
        qp = f"{statistics.mean(row['quality_pytx']):.0f}" if bits else "-"
        print(f"| {mode} | {row['n']} | {row['refused']} | {mean} | {most} | {qp} / "
              f"{statistics.mean(row['quality_rgb']):.0f} |")
    _save("modes", by_mode)


def _draft_decode(path, scale):
    with Image.open(path) as image:
        image.draft("RGB", (image.width // scale, image.height // scale))
        return pdq_from_image(image)


def fastcost(args):
    scales = (1, 2, 4, 8)
    bits = {s: [] for s in scales}
    times = {s: [] for s in scales}
    reference_times = []
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(folder, args.jpegs)
        for path in paths:
            exact = pdq_hash(_decode(path))
            for s in scales:
                bits[s].append(int(np.unpackbits(pdq_hash(_draft_decode(path, s)) ^ exact).sum()))
            per_round = {s: [] for s in scales}
            ref_round = []
            for _ in range(args.rounds):
                t, array = _timed(lambda: _decode(path))
                ref_round.append(t + _timed(lambda: pdqhash.compute(array))[0])
                for s in scales:
                    per_round[s].append(_timed(lambda: pdq_hash(_draft_decode(path, s)))[0])
            for s in scales:
                times[s].append(statistics.median(per_round[s]))
            reference_times.append(statistics.median(ref_round))
    ref = sum(reference_times) / len(paths) * 1e3
    print(f"{len(paths)} JPEGs of 1.2-3.8 MP, decode included, median of {args.rounds} rounds, one "
          f"thread; pdqhash on the full decode: {ref:.1f} ms per image")
    print("| JPEG decode scale | ms per image | speed-up vs pdqhash | bits from exact: mean | max |")
    print("|---|---|---|---|---|")
    for s in scales:
        ours = sum(times[s]) / len(paths) * 1e3
        print(f"| 1/{s} | {ours:.1f} | {ref / ours:.2f}x | {statistics.mean(bits[s]):.2f} | {max(bits[s])} |")
    _save("fastcost", {"rounds": args.rounds, "pdqhash_ms": ref, "bits": bits, "seconds": times})


def _save(name, result):
    harness.save_json(os.path.join(HERE, "results", f"pdq_{name}.json"), result)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "modes", "fastcost"))
    ap.add_argument("--jpegs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scenes", type=int, default=40)
    args = ap.parse_args(argv)
    {"speed": speed, "modes": modes, "fastcost": fastcost}[args.what](args)


if __name__ == "__main__":
    main()
