"""Benchmarks and measurements for hashsieve's image hashing (docs/hashing.md).

    .venv/bin/python bench/bench_hashing.py throughput [--jpegs 24 --pngs 300 --rounds 3]
    .venv/bin/python bench/bench_hashing.py neardup    [--originals 120]
    .venv/bin/python bench/bench_hashing.py fastcost   [--jpegs 40]
    .venv/bin/python bench/bench_hashing.py resize     [--rounds 3]
    .venv/bin/python bench/bench_hashing.py poolstart  [--rounds 3]
    .venv/bin/python bench/bench_hashing.py photos     [--photos 24 --rounds 3 --cache DIR]
    .venv/bin/python bench/bench_hashing.py all

Every image is synthetic (tests/imagegen.py), written to a temporary folder so
decoding from disk is part of the measurement.  On a shared, noisy machine the
throughput ratios are computed from runs interleaved in the same process and
round, never across runs.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import imagegen  # noqa: E402
from hashsieve.hashing import hash_image, hash_images  # noqa: E402
from hashsieve.kinds import KINDS  # noqa: E402

IMAGEHASH_KINDS = tuple(name for name, kind in KINDS.items() if kind.bits == 64)   # (PDQ: bench_pdq.py)

JPEG_SIZES = ((1280, 960), (1600, 1200), (2048, 1536), (2400, 1600))   # 1.2-3.8 MP
PNG_SIZES = ((256, 256), (320, 240), (200, 300), (400, 300))
THUMB_SIZES = ((64, 64), (96, 96), (128, 128), (160, 120))
SCENE_MIX = ("photo", "landscape", "clouds", "shapes", "text")


def popcount(x):
    return bin(int(x)).count("1")


def make_jpegs(folder, n, seed=1):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = JPEG_SIZES[i % len(JPEG_SIZES)]
        # Generate at 1/4 and upscale with fresh grain: photo-like and cheap to make.
        small = imagegen.scene(SCENE_MIX[i % len(SCENE_MIX)], w // 4, h // 4, seed * 1000 + i)
        data = imagegen.encode(imagegen._upscale(small, 4, rng), "JPEG", quality=88)
        p = os.path.join(folder, f"photo{i:03d}-{w}x{h}.jpg")
        with open(p, "wb") as f:
            f.write(data)
        paths.append(p)
    return paths


def make_pngs(folder, n, seed=2, sizes=PNG_SIZES):
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = imagegen.scene(imagegen.SCENES[i % len(imagegen.SCENES)], w, h, seed * 1000 + i)
        p = os.path.join(folder, f"small{i:04d}-{w}x{h}.png")
        img.save(p, "PNG")
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------
# throughput
# ---------------------------------------------------------------------------

def _imagehash_loop(paths):
    import imagehash
    from PIL import Image
    return [str(imagehash.phash(Image.open(p))) for p in paths]


def _ours(paths, workers, fast, mp_context=None):
    res = hash_images(paths, "phash", workers=workers, fast=fast, mp_context=mp_context)
    assert not res.failed, res.failed[:3]
    return res


def throughput(args):
    import imagehash  # noqa: F401  (imported before timing, like scipy below)
    import scipy.fftpack  # noqa: F401
    with tempfile.TemporaryDirectory() as d:
        sets = {"jpeg 1-4 MP": make_jpegs(d, args.jpegs),
                "png 200-400 px": make_pngs(d, args.pngs),
                "png thumbnails 64-160 px": make_pngs(d, args.pngs, seed=3, sizes=THUMB_SIZES)}
        methods = {
            "imagehash.phash loop": lambda p: _imagehash_loop(p),
            "hashsieve exact, workers=2, fork (CPU check)": lambda p: _ours(p, 2, False, "fork"),
            "hashsieve exact, workers=1": lambda p: _ours(p, 1, False),
            "hashsieve fast, workers=1": lambda p: _ours(p, 1, True),
            "hashsieve exact, workers=2": lambda p: _ours(p, 2, False),
            "hashsieve fast, workers=2": lambda p: _ours(p, 2, True),
        }
        # Warm-up: page cache, imports, and the forkserver (started once per process).
        for paths in sets.values():
            _ours(paths[:8], 2, True)
            _imagehash_loop(paths[:2])
        print(f"# throughput: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
              f"{args.rounds} interleaved rounds\n")
        for set_name, paths in sets.items():
            times = {m: [] for m in methods}
            cpu = {m: [] for m in methods}
            for _ in range(args.rounds):
                for m, fn in methods.items():
                    # fork-started workers are our children, so their CPU time shows
                    # up in RUSAGE_CHILDREN once the pool has joined them.
                    c = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                    c += resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
                    t = time.perf_counter()
                    fn(paths)
                    times[m].append(time.perf_counter() - t)
                    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                    cpu[m].append(time.process_time() + ru.ru_utime + ru.ru_stime - c)
            n = len(paths)
            base, base_cpu = times["imagehash.phash loop"], cpu["imagehash.phash loop"]
            w1 = {False: times["hashsieve exact, workers=1"], True: times["hashsieve fast, workers=1"]}
            print(f"## {set_name}: {n} images, {sum(os.path.getsize(p) for p in paths) / 1e6:.1f} MB\n")
            print("| method | images/s wall (median) | x imagehash, wall | x imagehash, CPU time "
                  "| x workers=1, wall |")
            print("|---|---|---|---|---|")
            for m, ts in times.items():
                # Ratios are medians over rounds of ratios taken within one round.
                vs_ih = statistics.median(b / t for b, t in zip(base, ts))
                if "CPU check" in m:
                    # Total CPU of parent + 2 workers against workers=1: the parallel
                    # overhead, which decides the speed-up on an otherwise idle machine.
                    w1_cpu = cpu["hashsieve exact, workers=1"]
                    eff = statistics.median(a / b for a, b in zip(w1_cpu, cpu[m]))
                    vs_cpu = f"CPU efficiency {eff:.2f}"
                    vs_w1 = f"{statistics.median(r / t for r, t in zip(w1[False], ts)):.2f}"
                elif "workers=2" in m:
                    vs_cpu = "(in workers)"
                    ref = w1["fast" in m]
                    vs_w1 = f"{statistics.median(r / t for r, t in zip(ref, ts)):.2f}"
                else:
                    vs_cpu = f"{statistics.median(b / t for b, t in zip(base_cpu, cpu[m])):.2f}"
                    vs_w1 = ""
                print(f"| {m} | {n / statistics.median(ts):.1f} | {vs_ih:.2f} | {vs_cpu} | {vs_w1} |")
            print(f"\nload average at end: {os.getloadavg()[0]:.2f}\n")


# ---------------------------------------------------------------------------
# near-duplicates
# ---------------------------------------------------------------------------

def neardup(args):
    rng = np.random.default_rng(3)
    originals = []
    for i in range(args.originals):
        w, h = ((640, 480), (480, 640), (800, 600), (512, 512))[i % 4]
        originals.append(imagegen.scene(SCENE_MIX[i % len(SCENE_MIX)], w, h, int(rng.integers(0, 2**31))))
    dist = {k: {v: [] for v in imagegen.VARIANTS} for k in IMAGEHASH_KINDS}
    orig_hashes = {k: [] for k in IMAGEHASH_KINDS}
    for img in originals:
        variants = imagegen.variants(img)
        for kind in IMAGEHASH_KINDS:
            h0 = hash_image(img, kind)
            orig_hashes[kind].append(h0)
            for v, vimg in variants.items():
                dist[kind][v].append(popcount(h0 ^ hash_image(vimg, kind)))
    unrelated = {}
    for kind in IMAGEHASH_KINDS:
        hs = np.array(orig_hashes[kind], dtype=np.uint64)
        x = hs[:, None] ^ hs[None, :]
        pc = np.unpackbits(x.view(np.uint8), axis=-1).reshape(len(hs), len(hs), 64).sum(-1)
        unrelated[kind] = pc[np.triu_indices(len(hs), 1)]

    n = args.originals
    print(f"# near-duplicates: {n} synthetic originals ({', '.join(SCENE_MIX)}; 512-800 px), "
          f"{n * (n - 1) // 2} unrelated pairs\n")
    print("Distance (bits) from each original to its modified copy.\n")
    for kind in IMAGEHASH_KINDS:
        print(f"### {kind}\n")
        print("| copy | mean | median | p90 | p99 | max |")
        print("|---|---|---|---|---|---|")
        for v in imagegen.VARIANTS:
            d = np.array(dist[kind][v])
            print(f"| {v} | {d.mean():.1f} | {np.median(d):.0f} | {np.percentile(d, 90):.0f} | "
                  f"{np.percentile(d, 99):.0f} | {d.max()} |")
        u = unrelated[kind]
        print(f"| *unrelated pairs* | {u.mean():.1f} | {np.median(u):.0f} | "
              f"min {u.min()}, p0.1 {np.percentile(u, 0.1):.0f}, p1 {np.percentile(u, 1):.0f} | | |\n")

    # The radius: cover the mild edits (resize, JPEG q50, 2% crop, +-15% light) for
    # >= 95% of images while keeping unrelated pairs inside it rare.
    mild = ("resize-50%", "resize-200%", "jpeg-q50", "crop-2%", "brighten+10%", "darken-15%")
    print("### recommended radius\n")
    print("| kind | radius | mild copies within (resize, jpeg-q50, crop-2%, light +-15%) | all copies within "
          "| unrelated pairs within |")
    print("|---|---|---|---|---|")
    for kind in IMAGEHASH_KINDS:
        m = np.concatenate([dist[kind][v] for v in mild])
        a = np.concatenate([dist[kind][v] for v in imagegen.VARIANTS])
        r = int(np.ceil(np.percentile(m, 95)))
        u = unrelated[kind]
        print(f"| {kind} | {r} | {100 * (m <= r).mean():.1f}% | {100 * (a <= r).mean():.1f}% | "
              f"{100 * (u <= r).mean():.2f}% |")
    print()


# ---------------------------------------------------------------------------
# fast path cost
# ---------------------------------------------------------------------------

def fastcost(args):
    with tempfile.TemporaryDirectory() as d:
        sets = {"jpeg 1-4 MP": make_jpegs(d, args.jpegs, seed=7),
                "png 200-400 px": make_pngs(d, 100, seed=8)}
        print("# fast=True against the exact path (bits differing per image)\n")
        print("| images | kind | mean | median | p95 | max | identical | speed-up (CPU time, same run) |")
        print("|---|---|---|---|---|---|---|---|")
        for set_name, paths in sets.items():
            for kind in IMAGEHASH_KINDS:
                # CPU time of this process: steadier than wall time on a shared machine.
                t = time.process_time()
                exact = [hash_image(p, kind) for p in paths]
                t_exact = time.process_time() - t
                t = time.process_time()
                fast = [hash_image(p, kind, fast=True) for p in paths]
                t_fast = time.process_time() - t
                dd = np.array([popcount(a ^ b) for a, b in zip(exact, fast)])
                print(f"| {set_name} ({len(paths)}) | {kind} | {dd.mean():.2f} | {np.median(dd):.0f} | "
                      f"{np.percentile(dd, 95):.0f} | {dd.max()} | {100 * (dd == 0).mean():.0f}% | "
                      f"{t_exact / t_fast:.1f}x |")
        print()


def resize(args):
    """Pillow's LANCZOS resize of a greyscale image against hashsieve's C copy (same bytes)."""
    from PIL import Image
    from hashsieve import hashing
    rng = np.random.default_rng(0)
    print(f"# LANCZOS resize, median of {args.rounds} x 9 calls, load average {os.getloadavg()[0]:.2f}\n")
    print("| input -> output | Pillow | hashsieve | x |")
    print("|---|---|---|---|")
    for (w, h), size in (((300, 300), (32, 32)), ((2048, 1536), (32, 32)), ((2048, 1536), (256, 256))):
        grey = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        ours = hashing._lanczos(grey, size)          # also fills the coefficient cache
        assert np.array_equal(ours, np.asarray(grey.resize(size, Image.Resampling.LANCZOS)))
        times = {"pillow": [], "ours": []}
        for _ in range(args.rounds):
            for name, fn in (("pillow", lambda: grey.resize(size, Image.Resampling.LANCZOS)),
                             ("ours", lambda: hashing._lanczos(grey, size))):
                for _ in range(9):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        p, o = (statistics.median(times[k]) * 1e6 for k in ("pillow", "ours"))
        print(f"| {w}x{h} -> {size[0]}x{size[1]} | {p:,.0f} us | {o:,.0f} us | {p / o:.1f} |")
    print()


def poolstart(args):
    """What a hash_images call costs before any real work: 2 workers on 4 tiny PNGs."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tiny.png")
        imagegen.scene("shapes", 16, 16, 0).save(path)
        hash_images([path] * 4, workers=2)            # starts the fork server
        times = []
        for _ in range(args.rounds * 3):
            t = time.perf_counter()
            hash_images([path] * 4, workers=2)
            times.append(time.perf_counter() - t)
    ms = sorted(round(t * 1e3, 1) for t in times)
    print(f"# hash_images(4 tiny PNGs, workers=2) with a warm fork server: median "
          f"{statistics.median(times) * 1e3:.1f} ms, all {ms}\n")


# ---------------------------------------------------------------------------
# camera-like JPEGs: large, progressive or baseline, 4:2:0 or 4:4:4, with EXIF
# ---------------------------------------------------------------------------

PHOTO_SIZES = ((2560, 1600), (3000, 2000), (3840, 2160), (4032, 3024), (4608, 3456), (5040, 3360))  # 4-17 MP
PHOTO_SCENES = ("photo", "landscape", "clouds")


def make_photos(folder, n, seed=11):
    """[(path, description)]: pairs of one size, one baseline and one progressive; the last third
    of the pairs 4:4:4, the others 4:2:0; quality 85-95; every fourth rotated by EXIF."""
    out = []
    for i in range(n):
        pair = i // 2
        w, h = PHOTO_SIZES[pair % len(PHOTO_SIZES)]
        progressive = i % 2 == 1
        subsampling = 0 if pair >= (2 * (n // 2)) // 3 else 2
        quality = 85 + (pair * 5) % 11
        orientation = 6 if i % 4 == 3 else 1
        what = (f"{'progressive' if progressive else 'baseline'} {'4:4:4' if subsampling == 0 else '4:2:0'}")
        p = os.path.join(folder, f"camera{seed}-{i:02d}-{w}x{h}-q{quality}-{what.replace(' ', '-').replace(':', '')}"
                                 f"-o{orientation}.jpg")
        if not os.path.exists(p):
            img = imagegen.camera_photo(w, h, seed * 100 + i, PHOTO_SCENES[i % len(PHOTO_SCENES)])
            data = imagegen.encode(img, "JPEG", quality=quality, subsampling=subsampling, progressive=progressive,
                                   exif=imagegen.camera_exif(orientation))
            with open(p + ".part", "wb") as f:
                f.write(data)
            os.replace(p + ".part", p)
        out.append((p, what))
    return out


def photos(args):
    """fast=True, the exact path and imagehash on camera-like JPEGs, interleaved, CPU time per call."""
    import imagehash
    from PIL import Image
    from hashsieve import hashing

    def fast_whole_file(p):
        # fast=True as it was before progressive files were cut to the scans a 1/8 decode needs
        saved, hashing._scans_for_eighth = hashing._scans_for_eighth, lambda img: None
        try:
            return hash_image(p, fast=True)
        finally:
            hashing._scans_for_eighth = saved

    methods = {
        "imagehash.phash": lambda p: int(str(imagehash.phash(Image.open(p))), 16),
        "hashsieve exact": lambda p: hash_image(p),
        "hashsieve fast": lambda p: hash_image(p, fast=True),
        "hashsieve fast, whole progressive file (before)": fast_whole_file,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or tmp
        os.makedirs(folder, exist_ok=True)
        t = time.perf_counter()
        items = make_photos(folder, args.photos)
        print(f"# camera-like JPEGs: {len(items)} images, {sum(os.path.getsize(p) for p, _ in items) / 1e6:.0f} MB "
              f"(made or found in {time.perf_counter() - t:.0f} s); {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.2f}; CPU time per call, {args.rounds} rounds, methods in rotating order\n")
        for p, _ in items[:2]:      # warm-up: imports, the resize probe, page cache
            for fn in methods.values():
                fn(p)
        cpu = {m: {p: [] for p, _ in items} for m in methods}
        answers = {m: {} for m in methods}
        names = list(methods)
        for r in range(args.rounds):
            for k, (p, _) in enumerate(items):
                order = names[(r + k) % len(names):] + names[:(r + k) % len(names)]
                for m in order:
                    c = time.process_time()
                    answers[m][p] = methods[m](p)
                    cpu[m][p].append(time.process_time() - c)
        for p, what in items:    # the answers: exact is imagehash's, the cut file gives fast's hash
            assert answers["hashsieve exact"][p] == answers["imagehash.phash"][p], p
            assert answers["hashsieve fast"][p] == answers["hashsieve fast, whole progressive file (before)"][p], p
        groups = {"all": [p for p, _ in items]}
        for p, what in items:
            groups.setdefault(what, []).append(p)
        print("| images | method | ms per image | x imagehash |\n|---|---|---|---|")
        for g, paths in groups.items():
            base = [sum(cpu["imagehash.phash"][p][r] for p in paths) for r in range(args.rounds)]
            for m in methods:
                tot = [sum(cpu[m][p][r] for p in paths) for r in range(args.rounds)]
                ratio = statistics.median(b / t for b, t in zip(base, tot))
                label = f"{g} ({len(paths)}, {sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6:.1f} MB avg)"
                print(f"| {label} | {m} | {1e3 * statistics.median(tot) / len(paths):.0f} | {ratio:.2f}x |")
                label = ""
        print("\nfast=True against the exact path, bits differing per image:\n")
        print("| images | kind | mean | median | max | identical |\n|---|---|---|---|---|---|")
        for g in ("all", "baseline 4:2:0", "progressive 4:2:0", "baseline 4:4:4", "progressive 4:4:4"):
            for kind in IMAGEHASH_KINDS:
                d = np.array([popcount(hash_image(p, kind) ^ hash_image(p, kind, fast=True)) for p in groups.get(g, [])])
                if d.size:
                    print(f"| {g} ({d.size}) | {kind} | {d.mean():.2f} | {np.median(d):.0f} | {d.max()} | "
                          f"{100 * (d == 0).mean():.0f}% |")
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("throughput", "neardup", "fastcost", "resize", "poolstart", "photos", "all"))
    ap.add_argument("--jpegs", type=int, default=24)
    ap.add_argument("--pngs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--originals", type=int, default=120)
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--cache", help="folder to keep the generated photos in between runs")
    args = ap.parse_args(argv)
    if args.what in ("throughput", "all"):
        throughput(args)
    if args.what in ("fastcost", "all"):
        fastcost(args)
    if args.what in ("neardup", "all"):
        neardup(args)
    if args.what in ("resize", "all"):
        resize(args)
    if args.what in ("poolstart", "all"):
        poolstart(args)
    if args.what in ("photos", "all"):
        photos(args)


if __name__ == "__main__":
    main()
