"""Scan throughput and the low-detail threshold (docs/cli.md).

    .venv/bin/python bench/bench_scan.py throughput [--jpegs 32 --copies 3 --workers 2 --rounds 2]
    .venv/bin/python bench/bench_scan.py detail

throughput: 1-4 megapixel synthetic JPEGs in a temporary folder; `hashsieve scan`
(the real command, in a subprocess, against an index of 100,000 random hashes plus
the images' own) with --workers N, exact and --fast, interleaved in each round
with a plain single-process imagehash loop (Image.open + imagehash.phash) over
the same files.  images/s for the scan is taken from its own summary (walk to
last report line, excluding interpreter start-up) and from the wall clock.

detail: the detail score (hashing.image_detail: std of the 32x32 grey
thumbnail) of ordinary synthetic scenes and of blank/solid/near-solid images,
and how stable pHash is at each contrast: images of controlled contrast
(detail ~ c) are re-encoded (JPEG q75, 90% resize) and the bit distance to the
original measured, and the distance between unrelated images of that contrast.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import imagegen  # noqa: E402
from hashsieve.hashing import hash_image, image_detail  # noqa: E402
from hashsieve.scan import LOW_DETAIL_THRESHOLD  # noqa: E402

from bench_hashing import make_jpegs  # noqa: E402  (the same 1.2-3.8 MP photo-like JPEGs)


def _imagehash_loop(paths):
    import imagehash
    from PIL import Image
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            imagehash.phash(im)
    return len(paths) / (time.perf_counter() - t)


def _scan(folder, index, workers, fast):
    cmd = [sys.executable, "-m", "hashsieve.cli", "scan", folder, "--index", index, "--workers", str(workers),
           "--summary-json"] + (["--fast"] if fast else [])
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise SystemExit(p.stderr)
    summary = json.loads(p.stderr.strip().splitlines()[-1])
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    return summary["images_per_second"], summary["images"] / wall, sum(bool(r["matches"]) for r in recs)


def throughput(a):
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "jpegs")
        t = time.perf_counter()
        os.makedirs(os.path.join(folder, "c0"))
        paths = make_jpegs(os.path.join(folder, "c0"), a.jpegs)
        # Hard-linked copies in more folders: more images per run (worker start-up amortised), same bytes.
        for c in range(1, a.copies):
            os.makedirs(os.path.join(folder, f"c{c}"))
            for p in paths[:a.jpegs]:
                q = os.path.join(folder, f"c{c}", os.path.basename(p))
                os.link(p, q)
                paths.append(q)
        mp = [int(p.rsplit("-", 1)[1].split(".")[0].split("x")[0]) * int(p.rsplit("x", 1)[1].split(".")[0])
              for p in paths]
        print(f"{len(paths)} JPEGs ({a.jpegs} distinct x {a.copies} hard-linked copies), "
              f"{min(mp) / 1e6:.1f}-{max(mp) / 1e6:.1f} MP "
              f"(mean {statistics.mean(mp) / 1e6:.2f}), generated in {time.perf_counter() - t:.1f} s")
        rng = np.random.default_rng(7)
        with open(os.path.join(tmp, "list.csv"), "w") as f:
            f.write("hash,id,label\n")
            for k, code in enumerate(rng.integers(0, 2**63, a.index_size, dtype=np.int64)):
                f.write(f"{int(code) * 2 + 1 & (2**64 - 1):016x},R{k},random\n")
            listed = 0
            for k, p in enumerate(paths[:a.jpegs:2]):
                code, det = hash_image(p, with_detail=True)
                f.write(f"{code:016x},P{k},listed\n")
                listed += det >= LOW_DETAIL_THRESHOLD
        index = os.path.join(tmp, "idx.hsi")
        subprocess.run([sys.executable, "-m", "hashsieve.cli", "build", os.path.join(tmp, "list.csv"), "-o", index],
                       check=True, capture_output=True)
        rows = {"imagehash loop (1 process)": [], "scan --workers 1": [], f"scan --workers {a.workers}": [],
                f"scan --workers {a.workers} (wall)": [], f"scan --workers {a.workers} --fast": [],
                f"scan --workers {a.workers} --fast (wall)": []}
        load0 = f"{os.getloadavg()[0]:.2f}"
        for r in range(a.rounds):
            rows["imagehash loop (1 process)"].append(_imagehash_loop(paths))
            rows["scan --workers 1"].append(_scan(folder, index, 1, False)[0])
            ips, wall, matched = _scan(folder, index, a.workers, False)
            assert matched >= listed * a.copies, f"only {matched} of {listed} listed images matched"
            rows[f"scan --workers {a.workers}"].append(ips)
            rows[f"scan --workers {a.workers} (wall)"].append(wall)
            ips, wall, matched = _scan(folder, index, a.workers, True)
            rows[f"scan --workers {a.workers} --fast"].append(ips)
            rows[f"scan --workers {a.workers} --fast (wall)"].append(wall)
        base = statistics.median(rows["imagehash loop (1 process)"])
        print(f"load average before: {load0}, after: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
        print(f"\n| run ({a.rounds} rounds, median) | images/s | vs imagehash loop |\n|---|---|---|")
        for name, vals in rows.items():
            med = statistics.median(vals)
            print(f"| {name} | {med:.1f} | {med / base:.2f}x |")


def _contrast(img, c, seed):
    """img's grey structure scaled so that its 32x32 thumbnail std is about c, around mid grey."""
    g = np.asarray(img.convert("L"), dtype=np.float64)
    g = (g - g.mean()) / max(g.std(), 1e-9)
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 200)
    from PIL import Image
    return Image.fromarray(np.clip(base + c * g, 0, 255).round().astype(np.uint8)).convert("RGB")


def _near(img):
    from PIL import Image
    w, h = img.size
    small = img.resize((w * 9 // 10, h * 9 // 10), Image.Resampling.BILINEAR)
    return imagegen.encode(small, "JPEG", quality=75)


def detail(a):
    from PIL import Image
    # 1. Ordinary scenes.
    scenes = []
    for k in range(a.scenes):
        name = imagegen.SCENES[k % len(imagegen.SCENES)]
        img = imagegen.scene(name, 256, 192, seed=3000 + k)
        scenes.append((name, image_detail(imagegen.encode(img, "JPEG", quality=85))))
    vals = sorted(d for _, d in scenes)
    print(f"ordinary synthetic scenes ({len(vals)}, all kinds, JPEG q85): detail min {vals[0]:.2f}, "
          f"1st percentile {np.percentile(vals, 1):.2f}, median {np.median(vals):.2f}")
    for th in (1.0, 2.0, 3.0):
        print(f"  below {th}: {sum(d < th for d in vals)}/{len(vals)}")
    low = sorted(scenes, key=lambda x: x[1])[:3]
    print("  lowest: " + ", ".join(f"{n} {d:.2f}" for n, d in low))
    # 2. Degenerate images.
    rng = np.random.default_rng(5)
    degenerate = {}
    for k in range(20):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        solid = Image.new("RGB", (320, 240), col)
        degenerate.setdefault("solid PNG", []).append(image_detail(imagegen.encode(solid, "PNG")))
        degenerate.setdefault("solid JPEG q75", []).append(image_detail(imagegen.encode(solid, "JPEG", quality=75)))
        noisy = np.clip(np.asarray(solid, dtype=np.float64) + rng.normal(0, 2, (240, 320, 3)), 0, 255)
        degenerate.setdefault("solid + sensor noise sigma 2", []).append(
            image_detail(imagegen.encode(Image.fromarray(noisy.astype(np.uint8)), "JPEG", quality=90)))
        t = np.linspace(0, 3, 320)[None, :, None]
        grad = np.clip(np.asarray(solid, dtype=np.float64) + t, 0, 255).astype(np.uint8)
        degenerate.setdefault("gradient of 3 grey levels", []).append(
            image_detail(imagegen.encode(Image.fromarray(grad), "PNG")))
        degenerate.setdefault("fully transparent PNG", []).append(
            image_detail(imagegen.encode(Image.new("RGBA", (64, 64), col + (0,)), "PNG")))
    print("\n| degenerate image (20 each) | detail max | detail median |\n|---|---|---|")
    for name, v in degenerate.items():
        print(f"| {name} | {max(v):.2f} | {np.median(v):.2f} |")
    # 3. pHash stability against contrast.
    bases = [imagegen.scene(n, 256, 192, seed=4000 + k) for k, n in enumerate(
        ["photo", "landscape", "shapes", "text", "clouds", "radial"] * 3)]
    print("\n| contrast c | measured detail (median) | near-dup distance median / max | "
          "unrelated distance min / median | degenerate hashes |\n|---|---|---|---|---|")
    for c in a.contrasts:
        imgs = [_contrast(b, c, k) for k, b in enumerate(bases)]
        codes, dets, near = [], [], []
        for im in imgs:
            code, d = hash_image(imagegen.encode(im, "PNG"), with_detail=True)
            codes.append(code)
            dets.append(d)
            near.append(bin(code ^ hash_image(_near(im))).count("1"))
        unrel = [bin(codes[i] ^ codes[j]).count("1") for i in range(len(codes)) for j in range(i + 1, len(codes))]
        degen = sum(1 for x in codes if bin(x).count("1") <= 4 or bin(x).count("1") >= 60)
        print(f"| {c} | {np.median(dets):.2f} | {np.median(near):.0f} / {max(near)} | {min(unrel)} / "
              f"{np.median(unrel):.0f} | {degen}/{len(codes)} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--jpegs", type=int, default=32)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--copies", type=int, default=3)
    t.add_argument("--index-size", type=int, default=100_000)
    t.set_defaults(func=throughput)
    d = sub.add_parser("detail")
    d.add_argument("--scenes", type=int, default=200)
    d.add_argument("--contrasts", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 3, 4, 8])
    d.set_defaults(func=detail)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
