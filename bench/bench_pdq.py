"""PDQ measurements for docs/pdq.md and docs/hashing.md.

    .venv/bin/python bench/bench_pdq.py speed [--jpegs 16 --rounds 5]
    .venv/bin/python bench/bench_pdq.py modes [--scenes 40]
    .venv/bin/python bench/bench_pdq.py fastcost [--jpegs 16 --rounds 5]
    .venv/bin/python bench/bench_pdq.py neardup [--jpegs 16]
    .venv/bin/python bench/bench_pdq.py gate [--scenes 40]

Data: synthetic JPEGs of 1.2-3.8 MP written to a temporary folder, two sets of --jpegs
each: bench_hashing.make_jpegs (tests/imagegen.py scenes rendered at 1/4 and upscaled with
fresh grain) and make_camera_jpegs (imagegen.camera_photo: detail at every scale, sensor
grain).  No real photographs.

speed: python-threatexchange's pipeline (Image.open, its array, pdqhash.compute) against
hash_image(path, "pdq") and hash_image(path, "pdq", fast=True), decode included, same run,
one thread; per image the median of --rounds rounds whose path order alternates (ABC, CBA).
Every exact hash and quality is checked against pdqhash's; fast's drift is reported.

modes: python-threatexchange's hash against hash_image(data, "pdq") per Pillow mode, over
tests/imagegen.py's corpus (every format and mode).

fastcost: drift (bits from the exact hash) and time of reduced-size JPEG decodes
(Image.draft: 1/2, 1/4, 1/8 scale keeping a short side, RGB or luma-only), to choose fast=True.

gate: the measurements behind kinds.py's PDQ degenerate rule and quality gate (blank,
one-dimensional and corpus images).

neardup: what fast's drift costs in matches: near-duplicates of camera-like photos
(imagegen.variants) hashed exact and fast against the originals' exact hashes.
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
from bench_hashing import JPEG_SIZES, make_jpegs  # noqa: E402
from hashsieve import hash_image, kind_of  # noqa: E402
from hashsieve.pdq import pdq_from_image, pdq_hash  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _decode(path):
    with Image.open(path) as image:
        return pdq_from_image(image)


def _pytx(path):
    """python-threatexchange's PdqSignal.hash_from_file: Pillow decode, its array, pdqhash."""
    vector, quality = pdqhash.compute(_decode(path))
    return np.packbits(np.asarray(vector, dtype=np.uint8)), quality


PATHS = {"pytx": _pytx,
         "exact": lambda path: hash_image(path, "pdq", with_quality=True),
         "fast": lambda path: hash_image(path, "pdq", fast=True, with_quality=True)}


def measure(paths, rounds):
    """Per image: the median over rounds of each path's time, decode included; the order of the
    paths alternates between rounds (ABC, CBA, ...) so a drifting machine load hits each alike."""
    rows = []
    names = list(PATHS)
    for path in paths:
        times = {k: [] for k in names}
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                t, out = _timed(lambda: PATHS[name](path))
                times[name].append(t)
                if name == "pytx":
                    want = out
                elif name == "exact":
                    got = out
                else:
                    fast = out
            assert np.array_equal(got[0], want[0]) and got[1] == want[1], f"{path}: differs from pdqhash"
        with Image.open(path) as image:
            w, h = image.size
        rows.append({"image": os.path.basename(path), "size": f"{w}x{h}", "megapixels": h * w / 1e6,
                     "fast_bits": int(np.unpackbits(fast[0] ^ want[0]).sum()),
                     **{k: statistics.median(v) for k, v in times.items()}})
    return rows


def speed(args):
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        sets = {"upscaled scenes (bench_hashing.make_jpegs)": make_jpegs(folder, args.jpegs),
                "camera-like (imagegen.camera_photo)": make_camera_jpegs(folder, args.jpegs)}
        result = {}
        for label, paths in sets.items():
            rows = measure(paths, args.rounds)
            load.append(os.getloadavg()[0])
            result[label] = rows
            print(f"\n{label}: {len(rows)} JPEGs, decode included, median of {args.rounds} alternating "
                  f"rounds, one thread; every exact hash and quality identical to pdqhash's")
            print("| images | pytx ms | exact ms | exact speed-up | fast ms | fast speed-up | "
                  "fast bits from exact: mean | max |")
            print("|---|---|---|---|---|---|---|---|")
            groups = sorted({(r["megapixels"], r["size"]) for r in rows}) + [(None, "all")]
            for megapixels, size in groups:
                group = [r for r in rows if megapixels is None or r["size"] == size]
                tag = f"{len(group)} x {size} ({megapixels:.1f} MP)" if megapixels else f"all {len(group)}"
                ms = {k: sum(r[k] for r in group) / len(group) * 1e3 for k in PATHS}
                bits = [r["fast_bits"] for r in group]
                print(f"| {tag} | {ms['pytx']:.1f} | {ms['exact']:.1f} | {ms['pytx'] / ms['exact']:.2f}x | "
                      f"{ms['fast']:.1f} | {ms['pytx'] / ms['fast']:.2f}x | {statistics.mean(bits):.2f} | "
                      f"{max(bits)} |")
    print(f"\n1-minute load average during the run: {' -> '.join(f'{x:.1f}' for x in load)} (2 cores)")
    _save("speed", {"rounds": args.rounds, "load": load, "sets": result})


def neardup(args):
    """What fast=True's drift costs in matches: camera-like originals' exact hashes (the list)
    against near-duplicates (tests/imagegen.py variants, saved as JPEG q90) hashed exact and fast."""
    stats = {}
    with tempfile.TemporaryDirectory() as folder:
        for i, original in enumerate(make_camera_jpegs(folder, args.jpegs)):
            listed = hash_image(original, "pdq")
            with Image.open(original) as image:
                copies = imagegen.variants(image.convert("RGB"))
            for name, copy in copies.items():
                if name == "resize-200%":
                    continue            # (8-15 MP: slow to make, and no reduced decode to test)
                path = os.path.join(folder, f"{i}-{name}.jpg")
                copy.save(path, "JPEG", quality=90)
                row = stats.setdefault(name, {"exact": [], "fast": []})
                for mode in ("exact", "fast"):
                    code = hash_image(path, "pdq", fast=mode == "fast")
                    row[mode].append(int(np.unpackbits(code ^ listed).sum()))
    print(f"{args.jpegs} camera-like JPEGs of 1.2-3.8 MP (list: their exact hashes); each near-duplicate "
          "saved as JPEG q90 and hashed exact / fast")
    print("| near-duplicate | distance exact: mean | max | distance fast: mean | max | within 31 exact | fast |")
    print("|---|---|---|---|---|---|---|")
    for name, row in stats.items():
        e, f = row["exact"], row["fast"]
        print(f"| {name} | {statistics.mean(e):.1f} | {max(e)} | {statistics.mean(f):.1f} | {max(f)} | "
              f"{sum(d <= 31 for d in e)}/{len(e)} | {sum(d <= 31 for d in f)}/{len(f)} |")
    _save("neardup", stats)


def modes(args):
    """python-threatexchange's PDQ (pdq_from_image + pdqhash) against hashsieve's hash_image(data,
    "pdq") per Pillow mode: identical where pytx hashes the picture, apart where it does not."""
    by_mode = {}
    for name, data in imagegen.corpus(seed=5, n_scenes=args.scenes):
        image = Image.open(io.BytesIO(data))
        try:
            vector, pytx_quality = pdqhash.compute(pdq_from_image(image))
            pytx = np.packbits(np.asarray(vector, dtype=np.uint8))
        except ValueError:
            pytx, pytx_quality = None, None
        ours, quality, flattened = hash_image(data, "pdq", with_detail=True)
        row = by_mode.setdefault(image.mode, {"n": 0, "refused": 0, "flattened": 0, "bits": [],
                                              "quality_pytx": [], "quality_ours": []})
        row["n"] += 1
        row["flattened"] += flattened
        row["quality_ours"].append(quality)
        if pytx is None:
            row["refused"] += 1
            continue
        row["bits"].append(int(np.unpackbits(pytx ^ ours).sum()))
        row["quality_pytx"].append(pytx_quality)
    print(f"tests/imagegen.py corpus (seed 5, {args.scenes} scenes): python-threatexchange's PDQ "
          f"against hashsieve's hash_image(data, 'pdq')")
    print("| mode | images | pytx refuses | hashed flattened | identical | bits apart: mean | max | "
          "quality pytx / ours (mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, row in sorted(by_mode.items()):
        bits = row["bits"]
        mean = f"{statistics.mean(bits):.1f}" if bits else "-"
        most = f"{max(bits)}" if bits else "-"
        same = f"{sum(b == 0 for b in bits)}/{len(bits)}" if bits else "-"
        qp = f"{statistics.mean(row['quality_pytx']):.0f}" if bits else "-"
        print(f"| {mode} | {row['n']} | {row['refused']} | {row['flattened']} | {same} | {mean} | {most} | "
              f"{qp} / {statistics.mean(row['quality_ours']):.0f} |")
    _save("modes", by_mode)


def make_camera_jpegs(folder, n, seed=7):
    """Camera-like JPEGs (imagegen.camera_photo: detail at every scale, sensor grain) of 1.2-3.8 MP."""
    scenes = ("photo", "landscape", "clouds", "shapes")
    paths = []
    for i in range(n):
        w, h = JPEG_SIZES[i % len(JPEG_SIZES)]
        image = imagegen.camera_photo(w, h, seed * 100 + i, name=scenes[i % len(scenes)])
        p = os.path.join(folder, f"camera{i:03d}-{w}x{h}.jpg")
        image.save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


def _draft_decode(path, min_side, mode):
    """The array PDQ hashes when the JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale that
    keeps min_side on the short side (None: full scale), in mode (None: RGB, "L": luma only)."""
    with Image.open(path) as image:
        if min_side is not None or mode is not None:
            side = min_side or min(image.size)
            image.draft(mode, (side, side))
        return np.asarray(image)


FAST_CONFIGS = [(None, None), (None, "L"), (1024, None), (768, None), (512, None), (512, "L"), (384, None),
                (256, None)]


def fastcost(args):
    """Drift and time of reduced-size decodes, on two synthetic sets."""
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        sets = {"upscaled scenes (bench_hashing.make_jpegs)": make_jpegs(folder, args.jpegs),
                "camera-like (imagegen.camera_photo)": make_camera_jpegs(folder, args.jpegs)}
        for label, paths in sets.items():
            bits = {c: [] for c in FAST_CONFIGS}
            times = {c: [] for c in FAST_CONFIGS}
            reference_times = []
            for path in paths:
                exact = pdq_hash(_decode(path))
                for c in FAST_CONFIGS:
                    bits[c].append(int(np.unpackbits(pdq_hash(_draft_decode(path, *c)) ^ exact).sum()))
                per_round = {c: [] for c in FAST_CONFIGS}
                ref_round = []
                for r in range(args.rounds):
                    order = FAST_CONFIGS if r % 2 == 0 else FAST_CONFIGS[::-1]    # alternating blocks
                    t, array = _timed(lambda: _decode(path))
                    ref_round.append(t + _timed(lambda: pdqhash.compute(array))[0])
                    for c in order:
                        per_round[c].append(_timed(lambda: pdq_hash(_draft_decode(path, *c)))[0])
                for c in FAST_CONFIGS:
                    times[c].append(statistics.median(per_round[c]))
                reference_times.append(statistics.median(ref_round))
            ref = sum(reference_times) / len(paths) * 1e3
            print(f"\n{label}: {len(paths)} JPEGs of 1.2-3.8 MP, decode included, median of {args.rounds} "
                  f"rounds, one thread; pytx pipeline (Image.open, np.asarray, pdqhash): {ref:.1f} ms per image")
            print("| keep short side >= | decode mode | ms per image | speed-up vs pdqhash | "
                  "bits from exact: mean | max |")
            print("|---|---|---|---|---|---|")
            rows = []
            for c in FAST_CONFIGS:
                ours = sum(times[c]) / len(paths) * 1e3
                side, mode = c
                print(f"| {side or 'full size'} | {mode or 'RGB'} | {ours:.1f} | {ref / ours:.2f}x | "
                      f"{statistics.mean(bits[c]):.2f} | {max(bits[c])} |")
                rows.append({"min_side": side, "mode": mode, "ms": ours, "bits": bits[c]})
            result[label] = {"pdqhash_ms": ref, "configs": rows}
    print(f"\nload average at the end: {os.getloadavg()}")
    _save("fastcost", {"rounds": args.rounds, "sets": result})


def gate(args):
    """The numbers behind kinds.py's PDQ degenerate rule and quality gate."""
    pdq = kind_of("pdq")
    rng = np.random.default_rng(1)
    sizes = [(5, 5), (64, 64), (100, 100), (480, 640), (1000, 333)]
    blank = [hash_image(Image.new("RGB", (w, h), (v, v, v)), "pdq", with_quality=True)
             for v in range(0, 256, 5) for h, w in sizes]
    ones = pdq.popcount(np.stack([b[0] for b in blank]))
    print(f"blank images ({len(blank)}: grey 0, 5, .. 255 x {len(sizes)} sizes): quality max "
          f"{max(b[1] for b in blank)}; popcount {ones.min()}..{ones.max()}, within 31 of zero: "
          f"{int((ones <= 31).sum())}; pairs within 31: {_close_pairs([b[0] for b in blank])}")
    for label, make in (("varying along x only", lambda h, w: rng.integers(0, 256, w)[None, :]),
                        ("varying along y only", lambda h, w: rng.integers(0, 256, h)[:, None]),
                        ("f(x) + g(y)", lambda h, w: rng.integers(0, 128, w)[None, :] + rng.integers(0, 128, h)[:, None])):
        codes, qualities = [], []
        for i in range(40):
            h, w = 300 + 7 * i, 400 - 3 * i
            grey = np.ascontiguousarray(np.broadcast_to(make(h, w), (h, w)).astype(np.uint8))
            code, quality = pdq_hash(grey, with_quality=True)
            codes.append(code)
            qualities.append(quality)
        print(f"40 images {label}: quality {min(qualities)}..{max(qualities)}; degenerate "
              f"{int(pdq.degenerate(np.stack(codes)).sum())}; pairs within 31: {_close_pairs(codes)}")
    codes, qualities = [], []
    for name, data in imagegen.corpus(seed=5, n_scenes=args.scenes):
        code, quality = hash_image(data, "pdq", with_quality=True)
        codes.append(code)
        qualities.append(quality)
    codes, qualities = np.stack(codes), np.array(qualities)
    print(f"tests/imagegen.py corpus ({len(codes)} files, {args.scenes} scenes): degenerate "
          f"{int(pdq.degenerate(codes).sum())} (all of quality < 50: "
          f"{bool(pdq.low_quality(qualities[pdq.degenerate(codes)]).all())}); quality < 50: "
          f"{int(pdq.low_quality(qualities).sum())}")


def _close_pairs(codes):
    codes = np.stack(codes)
    d = np.unpackbits(codes[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    n = len(codes)
    return f"{int(((d <= 31).sum() - n) // 2)} of {n * (n - 1) // 2}"


def _save(name, result):
    harness.save_json(os.path.join(HERE, "results", f"pdq_{name}.json"), result)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "modes", "fastcost", "neardup", "gate"))
    ap.add_argument("--jpegs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scenes", type=int, default=40)
    args = ap.parse_args(argv)
    {"speed": speed, "modes": modes, "fastcost": fastcost, "neardup": neardup, "gate": gate}[args.what](args)


if __name__ == "__main__":
    main()
