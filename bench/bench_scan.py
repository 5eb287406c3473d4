"""Scan throughput and the low-detail threshold (docs/cli.md).

    .venv/bin/python bench/bench_scan.py throughput [--jpegs 32 --copies 3 --workers 2 --rounds 2]
    .venv/bin/python bench/bench_scan.py detail
    .venv/bin/python bench/bench_scan.py memory [--workers 2 --members 12 --cases zip png rgbpng mix]
    .venv/bin/python bench/bench_scan.py decodecost
    .venv/bin/python bench/bench_scan.py zipdir [--entries 200000]
    .venv/bin/python bench/bench_scan.py progress [--files 10000 --per-folder 100 --zip-entries 100000]

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

memory: peak memory of a whole `hashsieve scan` (the command, its fork server and
workers) on hostile-but-legal inputs: "zip", a ~30 MB zip of 12 BMP members of
~241 MB each (80 MP, ~100:1 deflate: under the 200:1 ratio and the 256 MiB cap);
"png", a 9400x9400 greyscale PNG of ~150 KB scanned against a wHash index (the
hash works at 8192x8192); "rgbpng", the same picture as RGB (Pillow decodes RGB
to 4 bytes a pixel); "mix", a zip alternating three such RGB PNGs and three of the
BMPs, so that both workers decode 80-88 MP images while the walker reads a 241 MB
member.  Every 20 ms the RSS and PSS (/proc/PID/smaps_rollup) of
every process in the scan's tree are summed; the peaks of those sums are
printed, with the largest single worker and the hashes found (to compare code
versions).  RSS counts pages shared by the fork server and its workers once per
process, so its sum overstates; PSS splits them.

decodecost: bytes a pixel that opening, decoding and turning to grey take, per
format (the costs hashing.BIG_DECODE_BYTES counts): a 3000x3000 image in each
format, opened and made grey as hashing does in a fresh process; the rise of its
peak RSS (VmHWM) from before Image.open to after the grey copy, over 9 million.

zipdir: what opening a zip of many (empty) members costs the scan process:
zipfile reads the whole central directory into one ZipInfo per member (the
walk stops at Limits.max_members, 1,000,000).

progress: what keeping the progress bar's total costs (scan._Total): a tree of tiny PNGs in
folders of --per-folder, plus a zip of --zip-entries empty members; the background count alone
(seconds, and the peak of Python allocations while it runs, tracemalloc), and scan() with
workers=2 with and without a bar, interleaved: seconds to the first report line and in all,
and the CPU time of the scan process (where the bar's work is done), medians.
"""
import argparse
import io
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
                code, det, _ = hash_image(p, with_detail=True)
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
            code, d, _ = hash_image(imagegen.encode(im, "PNG"), with_detail=True)
            codes.append(code)
            dets.append(d)
            near.append(bin(code ^ hash_image(_near(im))).count("1"))
        unrel = [bin(codes[i] ^ codes[j]).count("1") for i in range(len(codes)) for j in range(i + 1, len(codes))]
        degen = sum(1 for x in codes if bin(x).count("1") <= 4 or bin(x).count("1") >= 60)
        print(f"| {c} | {np.median(dets):.2f} | {np.median(near):.0f} / {max(near)} | {min(unrel)} / "
              f"{np.median(unrel):.0f} | {degen}/{len(codes)} |")


def _big_bmp(k, side=8960, noise=0.0012):
    """A side x side 24-bit BMP (~241 MB at 8960): sparse noise on a blocky pattern, ~100:1 deflated."""
    from PIL import Image
    rng = np.random.default_rng(k)
    y, x = np.ogrid[0:side, 0:side]
    base = ((x // 97 + y // 89) % 7 * 30).astype(np.uint8)
    px = np.stack([base, (base // 2 + 16 * (k % 8)).astype(np.uint8), 255 - base], -1)
    flat = px.reshape(-1, 3)
    where = rng.integers(0, side * side, int(noise * side * side))
    flat[where] = rng.integers(0, 256, (len(where), 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px, "RGB").save(buf, "BMP")
    return buf.getvalue()


def _big_png(mode, side=9400):
    from PIL import Image, ImageDraw
    im = Image.new("L", (side, side), 200)
    d = ImageDraw.Draw(im)
    for k in range(12):
        d.ellipse((300 + 600 * k, 400 + 500 * k, 1500 + 600 * k, 2200 + 500 * k), fill=20 * k)
    d.rectangle((5000, 1000, 9000, 3000), fill=60)
    buf = io.BytesIO()
    im.convert(mode).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _write_zip(path, members):
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, make in members:
            z.writestr(name, make())
    with zipfile.ZipFile(path) as z:
        sizes = [i.file_size for i in z.infolist()]
    print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1e6:.1f} MB holding {len(sizes)} members of "
          f"{min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB (ratio {sum(sizes) / os.path.getsize(path):.0f}:1)")


def _tree_memory(pid):
    """(sum of RSS, sum of PSS, {pid: RSS}) in bytes over pid and its descendants."""
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, {}
    rss_sum = pss_sum = 0
    each = {}
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line[0].isupper()}
        except (OSError, ValueError, IndexError):
            continue
        rss_sum += fields.get("Rss", 0)
        pss_sum += fields.get("Pss", 0)
        each[p.pid] = fields.get("Rss", 0)
    return rss_sum, pss_sum, each


def _peak_memory(cmd, interval=0.02):
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = peak_one = peak_parent = 0
    import threading
    out = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    while proc.poll() is None:
        rss, pss, each = _tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        peak_parent = max(peak_parent, each.get(proc.pid, 0))
        peak_one = max([peak_one] + [v for k, v in each.items() if k != proc.pid])
        time.sleep(interval)
    reader.join()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out['stderr']}")
    return {"wall": time.perf_counter() - t, "rss": peak_rss, "pss": peak_pss, "parent": peak_parent,
            "child": peak_one, "records": [json.loads(x) for x in out["stdout"].splitlines()]}


def memory(a):
    cli = [sys.executable, "-m", "hashsieve.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        indexes = {}
        for kind in ("phash", "whash"):
            lst = os.path.join(tmp, f"{kind}.txt")
            with open(lst, "w") as f:
                f.write("0123456789abcdef\n")
            indexes[kind] = os.path.join(tmp, f"{kind}.hsi")
            subprocess.run(cli + ["build", lst, "-o", indexes[kind], "--kind", kind], check=True, capture_output=True)
        cases = {}
        if "zip" in a.cases:
            path = os.path.join(tmp, "big.zip")
            _write_zip(path, [(f"member{k:02d}.bmp", lambda k=k: _big_bmp(k)) for k in range(a.members)])
            cases[f"zip of {a.members} BMPs of 241 MB, phash"] = (path, "phash")
        for mode, name in (("L", "png"), ("RGB", "rgbpng")):
            if name in a.cases:
                path = os.path.join(tmp, f"big-{mode}.png")
                with open(path, "wb") as f:
                    f.write(_big_png(mode))
                print(f"{name}: 9400x9400 {mode} PNG of {os.path.getsize(path) / 1e3:.0f} KB")
                cases[f"9400x9400 {mode} PNG ({os.path.getsize(path) / 1e3:.0f} KB), whash"] = (path, "whash")
        if "mix" in a.cases:
            path = os.path.join(tmp, "mix.zip")
            rgb = _big_png("RGB")
            _write_zip(path, [(f"{k}.{ext}", (lambda: rgb) if ext == "png" else (lambda k=k: _big_bmp(100 + k)))
                              for k in range(3) for ext in ("png", "bmp")])
            cases["zip of 3 x (9400x9400 RGB PNG, 241 MB BMP), phash"] = (path, "phash")
        print(f"\n| case (--workers {a.workers}) | peak RSS sum | peak PSS sum | parent RSS | largest worker RSS "
              "| wall s | hashes |\n|---|---|---|---|---|---|---|")
        for name, (path, kind) in cases.items():
            r = _peak_memory(cli + ["scan", path, "--index", indexes[kind], "--workers", str(a.workers)])
            hashes = sorted({rec["hash"] or rec["error"][:40] for rec in r["records"]})
            mib = lambda v: f"{v / 2**20:,.0f} MiB"   # noqa: E731
            print(f"| {name} | {mib(r['rss'])} | {mib(r['pss'])} | {mib(r['parent'])} | {mib(r['child'])} "
                  f"| {r['wall']:.1f} | {len(r['records'])} lines: {', '.join(hashes)} |")


_DECODE_COST = """
import sys
from PIL import Image
from hashsieve.hashing import _greyscale

def hwm():      # this process's peak RSS (not ru_maxrss: Linux carries that over from the parent)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

h0 = hwm()
img = Image.open(sys.argv[1])
grey = _greyscale(img)
print(img.mode, (hwm() - h0) / (img.size[0] * img.size[1]))
"""


def decodecost(a):
    rgb = imagegen.photo(3000, 3000, seed=3)
    forms = {"JPEG RGB": ("jpg", rgb, {}), "JPEG CMYK": ("jpg", rgb.convert("CMYK"), {}),
             "PNG RGB": ("png", rgb, {}), "PNG RGBA": ("png", rgb.convert("RGBA"), {}),
             "PNG palette": ("png", rgb.convert("P"), {}), "BMP RGB": ("bmp", rgb, {}),
             "TIFF RGB": ("tif", rgb, {}), "GIF": ("gif", rgb.convert("P"), {}),
             "WebP lossy": ("webp", rgb, {"quality": 80}), "WebP lossless": ("webp", rgb, {"lossless": True})}
    print("| format | mode | bytes a pixel |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (ext, img, params) in forms.items():
            path = os.path.join(tmp, f"x.{ext}")
            img.save(path, **params)
            out = subprocess.run([sys.executable, "-c", _DECODE_COST, path], capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"| {name} | {out[0]} | {float(out[1]):.1f} |")


_ZIP_DIR = """
import sys, zipfile
def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
h0 = hwm()
n = len(zipfile.ZipFile(sys.argv[1]).infolist())
print(n, hwm() - h0)
"""


def zipdir(a):
    import zipfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "many.zip")
        with zipfile.ZipFile(path, "w") as z:
            for k in range(a.entries):
                z.writestr(f"photos/{k:08d}.jpg", b"")
        n, peak = map(int, subprocess.run([sys.executable, "-c", _ZIP_DIR, path], capture_output=True, text=True,
                                          check=True).stdout.split())
        print(f"zip of {n:,} members ({os.path.getsize(path) / 1e6:.1f} MB): zipfile.ZipFile() raised the peak RSS "
              f"by {peak / 2**20:.0f} MiB, {peak / n:.0f} bytes a member")


class _Bar:
    """The part of a tqdm bar scan() uses."""

    def __init__(self):
        self.n = self.initial = self.total = 0

    def update(self, k):
        self.n += k

    def set_postfix_str(self, text, refresh=True):
        pass


def progress(a):
    import tracemalloc
    import zipfile
    from hashsieve.scan import Limits, ScanOptions, _Total, scan
    tiny = imagegen.encode(imagegen.scene("shapes", 24, 16, 1), "PNG")
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "tree")
        for k in range(a.files):
            folder = os.path.join(root, f"d{k // (a.per_folder * 10):03d}", f"e{k // a.per_folder:05d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, f"{k:07d}.png"), "wb") as f:
                f.write(tiny)
        with zipfile.ZipFile(os.path.join(root, "many.zip"), "w") as z:
            for k in range(a.zip_entries):
                z.writestr(f"m/{k:08d}.png", b"")
        lines = a.files + a.zip_entries
        tracemalloc.start()
        t = time.perf_counter()
        total = _Total([root], Limits(), set())
        while total.counting:
            time.sleep(0.001)
        count_s = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"# progress: {a.files:,} files in folders of {a.per_folder}, a zip of {a.zip_entries:,} members "
              f"({lines:,} report lines); load average {os.getloadavg()[0]:.2f}\n")
        print(f"background count alone: {total.counted:,} lines in {count_s:.2f} s, peak Python allocations "
              f"{peak / 2**10:.0f} KiB\n")
        scan([os.path.join(root, "d000", "e00000")], None, lambda rec: None, ScanOptions(workers=2))   # warm-up
        runs = {True: [], False: []}
        for r in range(a.rounds):
            for with_bar in (r % 2 == 0, r % 2 == 1):
                first = []
                t, c = time.perf_counter(), time.process_time()

                def out(rec):
                    if not first:
                        first.append(time.perf_counter() - t)

                s = scan([root], None, out, ScanOptions(workers=2), progress=_Bar() if with_bar else None)
                assert s.files == lines
                runs[with_bar].append((first[0], time.perf_counter() - t, time.process_time() - c))
        print("| bar | first line s | all s, wall | scan process CPU s |\n|---|---|---|---|")
        for with_bar, rs in runs.items():
            cells = [f"{statistics.median(x[k] for x in rs):.{d}f} (min {min(x[k] for x in rs):.{d}f})"
                     for k, d in ((0, 3), (1, 1), (2, 2))]
            print(f"| {'yes' if with_bar else 'no'} | {' | '.join(cells)} |")
        print(f"\n(medians of {a.rounds} runs each, interleaved; load average at end {os.getloadavg()[0]:.2f})\n")


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
    m = sub.add_parser("memory")
    m.add_argument("--workers", type=int, default=2)
    m.add_argument("--members", type=int, default=12)
    m.add_argument("--cases", nargs="+", default=["zip", "png", "rgbpng", "mix"],
                   choices=["zip", "png", "rgbpng", "mix"])
    m.set_defaults(func=memory)
    sub.add_parser("decodecost").set_defaults(func=decodecost)
    z = sub.add_parser("zipdir")
    z.add_argument("--entries", type=int, default=200_000)
    z.set_defaults(func=zipdir)
    g = sub.add_parser("progress")
    g.add_argument("--files", type=int, default=10_000)
    g.add_argument("--per-folder", type=int, default=100)
    g.add_argument("--zip-entries", type=int, default=100_000)
    g.add_argument("--rounds", type=int, default=2)
    g.set_defaults(func=progress)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
