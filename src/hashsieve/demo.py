"""`make demo`: the whole job on generated images, in a few seconds.

    python -m hashsieve.demo [--out DIR] [--workers N]

1. generates "listed" images and writes a pHash list (CSV: hash,id,label) of them,
   a PDQ list in python-threatexchange's local-file format ("pdq HEX" lines, with a
   video_md5 row, indexed as MD5, and a url row, which hashsieve skips) and an MD5
   list naming one exact file;
2. builds one index of both kinds with `hashsieve build` (the same code path as the
   command) and shows its counts per kind;
3. generates an archive: a folder, a zip and a tar.gz holding resized and
   re-encoded copies of listed images, unrelated images, a blank image, junk,
   corrupt files and a zip bomb;
4. scans it with `hashsieve scan` (pHash and PDQ of every file from one decode) and
   prints the summary and the matches of each kind.

Everything is synthetic and written under --out (default ./demo-out).
"""
import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
import zipfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import cli
from .hashing import hash_image
from .kinds import KINDS
from .scan import record_name


def _picture(seed, w=480, h=360):
    """A synthetic 'photo': smooth colour noise, a light gradient and a few shapes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        rx, ry = int(rng.integers(w // 12, w // 3)), int(rng.integers(h // 12, h // 3))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.integers(0, 2):
            d.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=col)
        else:
            d.rectangle([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=col)
    img = img.filter(ImageFilter.GaussianBlur(2))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _name(rec, out):
    """A report record's file, relative to the demo folder."""
    return record_name({**rec, "path": os.path.relpath(rec["path"], out)})


def _enc(img, fmt="JPEG", **kw):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, fmt, **kw)
    return buf.getvalue()


def _near_dup(img, k):
    w, h = img.size
    scale = (0.5, 0.75, 1.5)[k % 3]
    return _enc(img.resize((int(w * scale), int(h * scale)), Image.Resampling.BILINEAR), quality=(70, 60, 85)[k % 3])


def make_world(out):
    lists = os.path.join(out, "lists")
    arc = os.path.join(out, "archive")
    for d in (lists, os.path.join(arc, "incoming", "2024"), os.path.join(arc, "junk")):
        os.makedirs(d, exist_ok=True)
    listed = [_picture(1000 + k) for k in range(12)]
    unrelated = [_picture(5000 + k) for k in range(10)]

    with open(os.path.join(lists, "demo-list.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["hash", "id", "label"])
        for k, img in enumerate(listed[:10]):
            w.writerow([f"{hash_image(img):016x}", f"DEMO-{k:03d}", f"synthetic listed image {k}"])
        w.writerow(["0000000000000000", "DEMO-BLANK", "a blank image (degenerate hash)"])
    # PDQ as hash-sharing programmes distribute it: python-threatexchange's "TYPE HASH" lines.
    pdq = KINDS["pdq"]
    with open(os.path.join(lists, "threatexchange-pdq.txt"), "w") as f:
        f.write("# PDQ hashes in python-threatexchange's local-file format\n")
        for img in listed[9:]:
            f.write(f"pdq {pdq.to_hex(hash_image(img, 'pdq'))[0]}\n")
        f.write(f"video_md5 {hashlib.md5(b'a listed video').hexdigest()}\nurl https://example.invalid/listed\n")
    exact = _enc(unrelated[9], quality=90)
    with open(os.path.join(lists, "md5-list.txt"), "w") as f:
        f.write("# MD5 of exact files\n" + hashlib.md5(exact).hexdigest() + "\n")

    inc = os.path.join(arc, "incoming")
    for k in (0, 1, 2):
        _write(os.path.join(inc, f"listed-{k}-copy.jpg"), _near_dup(listed[k], k))
    for k in range(4):
        _write(os.path.join(inc, "2024", f"holiday-{k}.jpg"), _enc(unrelated[k], quality=85))
    _write(os.path.join(inc, "2024", "exact-copy.jpg"), exact)
    _write(os.path.join(inc, "blank.png"), _enc(Image.new("RGB", (300, 200), "white"), "PNG"))
    with zipfile.ZipFile(os.path.join(arc, "upload-batch.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        for k in (3, 4, 5):
            z.writestr(f"batch/listed-{k}.jpg", _near_dup(listed[k], k))
        for k in (4, 5, 6):
            z.writestr(f"batch/other-{k}.png", _enc(unrelated[k], "PNG"))
        z.writestr("batch/readme.txt", b"not an image\n")
    with tarfile.open(os.path.join(arc, "old-backup.tar.gz"), "w:gz") as tf:
        for name, data in [("backup/listed-6.webp", _enc(listed[6], "WEBP", quality=75)),
                           ("backup/listed-7.jpg", _near_dup(listed[7], 7)),
                           ("backup/listed-10.jpg", _near_dup(listed[10], 1)),
                           ("backup/listed-11.png", _enc(listed[11], "PNG")),
                           ("backup/photo-7.jpg", _enc(unrelated[7], quality=80)),
                           ("backup/photo-8.jpg", _enc(unrelated[8], quality=80))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    junk = os.path.join(arc, "junk")
    good = _enc(unrelated[0], quality=90)
    _write(os.path.join(junk, "truncated.jpg"), good[:len(good) // 3])
    _write(os.path.join(junk, "empty.jpg"), b"")
    _write(os.path.join(junk, "notes.txt"), b"meeting notes\n")
    with zipfile.ZipFile(os.path.join(junk, "bomb.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("huge.bmp", bytes(48 << 20))
    with open(os.path.join(junk, "broken.zip"), "wb") as f:
        f.write(b"PK\x03\x04" + os.urandom(300))
    try:
        os.symlink("loop-b", os.path.join(junk, "loop-a"))
        os.symlink("loop-a", os.path.join(junk, "loop-b"))
    except OSError:
        pass
    return lists, arc


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hashsieve.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out", help="folder for the generated files (default ./demo-out; "
                                                     "replaced on each run)")
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    t0 = time.monotonic()
    out = os.path.abspath(a.out)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    print(f"== generating demo images, lists and archive in {out}")
    lists, arc = make_world(out)
    index = os.path.join(out, "demo.hsi")
    report = os.path.join(out, "report.jsonl")
    print("\n== hashsieve build")
    rc = cli.main(["build", os.path.join(lists, "demo-list.csv"), os.path.join(lists, "threatexchange-pdq.txt"),
                   os.path.join(lists, "md5-list.txt"), "-o", index])
    if rc != 0:
        return rc
    cli.main(["info", index])
    print(f"\n== hashsieve scan {arc}")
    scan_args = ["scan", arc, "--index", index, "--report", report, "--overwrite"]
    if a.workers:
        scan_args += ["--workers", str(a.workers)]
    rc = cli.main(scan_args)
    with open(report) as f:
        recs = [json.loads(line) for line in f]
    print(f"\n== report {report}: {len(recs)} lines; matches (pHash radius {KINDS['phash'].default_radius}, "
          f"PDQ radius {KINDS['pdq'].default_radius}):")
    for r in recs:
        for m in r["matches"]:
            print(f"  {_name(r, out)}: {m['kind']} distance {m['distance']}; list {m['list']}, id {m['id'] or '-'}, "
                  f"label {m['label'] or '-'}")
    print("errors:")
    for r in recs:
        if r["error"]:
            print(f"  {_name(r, out)}: {r['error'][:110]}")
    flat = [_name(r, out) for r in recs if r["degenerate"]]
    print(f"degenerate hashes (blank, solid, striped: no perceptual match without --match-degenerate): "
          f"{', '.join(flat) or '-'}")
    low = [f"{_name(r, out)} (quality {r['hashes']['pdq']['quality']})" for r in recs if r["low_quality"]]
    print(f"low-quality PDQ hashes (quality under 50: no PDQ match without --match-low-quality): "
          f"{', '.join(low) or '-'}")
    print(f"\nscan exit status {rc} (1 = something matched); demo took {time.monotonic() - t0:.1f} s")
    return 0 if rc in (0, 1) else rc


if __name__ == "__main__":
    sys.exit(main())
