"""End-to-end tests of the `hashsieve` command, run as a subprocess on generated archives."""
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
from PIL import Image

import imagegen
from hashsieve import hash_image

CLI = [sys.executable, "-m", "hashsieve.cli"]
BIG_ZEROS = 64 << 20        # decompressed size of the bomb members (above the 32 MiB ratio floor)


def run(*args, cwd=None, timeout=120, check=None):
    p = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def jpg(img, q=85):
    return imagegen.encode(img.convert("RGB"), "JPEG", quality=q)


def near_dup(img):
    """Resized to 60% and re-encoded as JPEG q75."""
    w, h = img.size
    return jpg(img.resize((w * 3 // 5, h * 3 // 5), Image.Resampling.BILINEAR), 75)


def tar_add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Lists, and an archive of folders, zip, tar.gz, near-duplicates, unrelated, corrupt and hostile files.

    expect[(path, member)] = set of (list, id, label, kind) that must match (empty: must not match);
    errors = keys that must be error lines; optional = keys allowed (members of damaged archives).
    """
    root = tmp_path_factory.mktemp("world")
    os.chdir(root)          # report paths are relative: keep them short and stable
    arc = "archive"
    os.makedirs(f"{arc}/originals")
    os.makedirs(f"{arc}/near")
    os.makedirs(f"{arc}/unrelated/deeper")
    os.makedirs(f"{arc}/junk")
    os.makedirs("lists")
    expect, errors, optional = {}, set(), set()

    hotline = {f"H{k}": imagegen.scene(s, 320, 240, seed=500 + k) for k, s in
               enumerate(["photo", "landscape", "shapes", "text"])}
    industry = {f"I{k}": imagegen.scene(s, 300, 200, seed=700 + k) for k, s in enumerate(["photo", "shapes"])}
    unrelated = [imagegen.scene(s, 256, 192, seed=900 + k) for k, s in
                 enumerate(["photo", "landscape", "shapes", "text", "radial", "clouds", "photo", "landscape"])]

    with open("lists/hotline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["hash", "id", "label", "source"])
        for rid, img in hotline.items():
            w.writerow([f"{hash_image(img):016x}", rid, f"hotline {rid}", "synthetic"])
        w.writerow(["0000000000000000", "BLANK", "degenerate entry", "synthetic"])
    with open("lists/industry.txt", "w") as f:
        f.write("# industry list, plain text\n\n")
        for img in industry.values():
            f.write(f"{hash_image(img):016X}  # upper case on purpose\n")
    hot = {rid: {("hotline", rid, f"hotline {rid}", "phash")} for rid in hotline}
    ind_lines = {rid: {("industry", None, None, "phash")} for rid in industry}

    def put(path, data, matches=frozenset()):
        with open(path, "wb") as f:
            f.write(data)
        expect[(path, None)] = set(matches)

    for rid, img in hotline.items():
        put(f"{arc}/originals/{rid}.png", imagegen.encode(img, "PNG"), hot[rid])
        put(f"{arc}/near/{rid}-small.jpg", near_dup(img), hot[rid])
    put(f"{arc}/near/I0-small.jpg", near_dup(industry["I0"]), ind_lines["I0"])
    for k, img in enumerate(unrelated[:4]):
        put(f"{arc}/unrelated/u{k}.jpg", jpg(img))
    put(f"{arc}/unrelated/deeper/u4.png", imagegen.encode(unrelated[4], "PNG"))
    known_md5 = jpg(unrelated[5], 90)
    known_sha1 = imagegen.encode(unrelated[6], "PNG")
    with open("lists/digests.csv", "w") as f:
        f.write("hash,id,label\n")
        f.write(f"{hashlib.md5(known_md5).hexdigest()},M1,known by md5\n")
        f.write(f"{hashlib.sha1(known_sha1).hexdigest()},S1,known by sha1\n")
    put(f"{arc}/unrelated/deeper/known-md5.jpg", known_md5, {("digests", "M1", "known by md5", "md5")})
    put(f"{arc}/unrelated/known-sha1.png", known_sha1, {("digests", "S1", "known by sha1", "sha1")})
    put(f"{arc}/blank.png", imagegen.encode(Image.new("RGB", (200, 150), (255, 255, 255)), "PNG"))
    put(f"{arc}/transparent.png", imagegen.encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"))
    for name, data in imagegen.broken_files(seed=3).items():
        put(f"{arc}/junk/{name}", data)
        errors.add((f"{arc}/junk/{name}", None))
    put(f"{arc}/junk/notes.txt", b"just some notes\n")
    errors.add((f"{arc}/junk/notes.txt", None))

    # Symbolic links: a loop, a dangling link, a link to a folder (not followed).
    os.symlink("loop2", f"{arc}/junk/loop1")
    os.symlink("loop1", f"{arc}/junk/loop2")
    os.symlink("does-not-exist", f"{arc}/junk/dangling")
    os.symlink("..", f"{arc}/junk/up")
    for n in ("loop1", "loop2", "dangling", "up"):
        errors.add((f"{arc}/junk/{n}", None))
        expect[(f"{arc}/junk/{n}", None)] = set()

    # A zip: near-duplicates, an unrelated image, a corrupt member, a nested zip, a folder entry.
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("deep/H3-q50.jpg", jpg(hotline["H3"], 50))
        z.writestr("deep/other.jpg", jpg(unrelated[7]))
    with zipfile.ZipFile(f"{arc}/photos.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("album/", b"")
        z.writestr("album/I1.webp", imagegen.encode(industry["I1"], "WEBP", quality=80))
        z.writestr("album/H0.jpg", near_dup(hotline["H0"]))
        z.writestr("album/u5.jpg", jpg(unrelated[5], 60))
        z.writestr("album/broken.jpg", jpg(unrelated[4])[:500])
        z.writestr("nested/inner.zip", inner.getvalue())
    zp = f"{arc}/photos.zip"
    expect[(zp, "album/I1.webp")] = ind_lines["I1"]
    expect[(zp, "album/H0.jpg")] = hot["H0"]
    expect[(zp, "album/u5.jpg")] = set()
    expect[(zp, "album/broken.jpg")] = set()
    errors.add((zp, "album/broken.jpg"))
    expect[(zp, "nested/inner.zip!/deep/H3-q50.jpg")] = hot["H3"]
    expect[(zp, "nested/inner.zip!/deep/other.jpg")] = set()

    # A tar.gz: near-duplicates, an unrelated image and a symlink member.
    tp = f"{arc}/more.tar.gz"
    with tarfile.open(tp, "w:gz") as tf:
        tar_add(tf, "x/H1.jpg", jpg(hotline["H1"], 50))
        tar_add(tf, "x/H2.webp", imagegen.encode(hotline["H2"], "WEBP", quality=70))
        tar_add(tf, "x/u6.jpg", jpg(unrelated[6]))
        link = tarfile.TarInfo("x/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "H1.jpg"
        tf.addfile(link)
    expect[(tp, "x/H1.jpg")] = hot["H1"]
    expect[(tp, "x/H2.webp")] = hot["H2"]
    expect[(tp, "x/u6.jpg")] = set()
    expect[(tp, "x/link.jpg")] = set()
    errors.add((tp, "x/link.jpg"))

    # Damaged archives: a truncated zip and a truncated tar.gz.
    with open(zp, "rb") as f:
        zdata = f.read()
    put(f"{arc}/junk/cut.zip", zdata[:len(zdata) // 2])
    errors.add((f"{arc}/junk/cut.zip", None))
    with open(tp, "rb") as f:
        tdata = f.read()
    put(f"{arc}/junk/cut.tar.gz", tdata[:len(tdata) * 2 // 3])
    errors.add((f"{arc}/junk/cut.tar.gz", None))
    for m in ("x/H1.jpg", "x/H2.webp", "x/u6.jpg", "x/link.jpg"):
        optional.add((f"{arc}/junk/cut.tar.gz", m))

    # Bombs: a zip member and a tar.gz member of 64 MiB zeros (about 64 KiB compressed).
    zeros = bytes(BIG_ZEROS)
    bz = f"{arc}/junk/bomb.zip"
    with zipfile.ZipFile(bz, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ok.jpg", jpg(unrelated[0]))
        z.writestr("zeros.bmp", zeros)
    expect[(bz, "ok.jpg")] = set()
    expect[(bz, "zeros.bmp")] = set()
    errors.add((bz, "zeros.bmp"))
    bt = f"{arc}/junk/bomb.tar.gz"
    with tarfile.open(bt, "w:gz") as tf:
        tar_add(tf, "ok.jpg", jpg(unrelated[1]))
        tar_add(tf, "zeros.bmp", zeros)
    expect[(bt, "ok.jpg")] = set()
    expect[(bt, None)] = set()
    errors.add((bt, None))
    del zeros

    for key in errors:
        expect.setdefault(key, set())
    paths = {"root": root, "arc": arc, "lists": ["lists/hotline.csv", "lists/industry.txt", "lists/digests.csv"]}
    run("build", *paths["lists"], "-o", "index.hsi", cwd=root, check=0)
    return {"root": root, "arc": arc, "expect": expect, "errors": errors, "optional": optional, **paths}


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def key(rec):
    return (rec["path"], rec["member"])


def match_set(rec):
    return {(m["list"], m["id"], m["label"], m["kind"]) for m in rec["matches"]}


def check_report(world, recs):
    keys = [key(r) for r in recs]
    assert len(keys) == len(set(keys)), "a file appears more than once"
    expect, optional = world["expect"], world["optional"]
    missing = set(expect) - set(keys)
    assert not missing, f"files missing from the report: {sorted(missing, key=str)}"
    extra = set(keys) - set(expect) - optional
    assert not extra, f"unexpected report lines: {sorted(extra, key=str)}"
    by_key = {key(r): r for r in recs}
    for k, want in expect.items():
        rec = by_key[k]
        assert match_set(rec) == want, f"{k}: matches {rec['matches']}, expected {want}"
        if k in world["errors"]:
            assert rec["error"], f"{k} should be an error line"
            assert rec["hash"] is None
        for m in rec["matches"]:
            assert m["distance"] <= 8 and (m["kind"] == "phash" or m["distance"] == 0)
    for k in optional & set(keys):
        assert not by_key[k]["matches"] or by_key[k]["member"] in ("x/H1.jpg", "x/H2.webp")


def test_scan_end_to_end(world):
    root = world["root"]
    p = run("scan", world["arc"], "--index", "index.hsi", "--report", "full.jsonl", "--workers", "2",
            "--summary-json", cwd=root)
    assert p.returncode == 1, p.stderr          # something matched
    recs = read_jsonl(root / "full.jsonl")
    check_report(world, recs)
    by_key = {key(r): r for r in recs}
    blank = by_key[(f"{world['arc']}/blank.png", None)]
    assert blank["degenerate"] and blank["hash"] is not None and blank["matches"] == []
    assert by_key[(f"{world['arc']}/transparent.png", None)]["degenerate"]
    assert "bomb" in by_key[(f"{world['arc']}/junk/bomb.zip", "zeros.bmp")]["error"]
    assert "bomb" in by_key[(f"{world['arc']}/junk/bomb.tar.gz", None)]["error"]
    assert "decompression bomb" in by_key[(f"{world['arc']}/junk/bomb.png", None)]["error"]
    assert "loop" in by_key[(f"{world['arc']}/junk/loop1", None)]["error"]
    summary = json.loads(p.stderr.strip().splitlines()[-1])
    assert summary["files"] == len(recs) and summary["matched_files"] == sum(bool(r["matches"]) for r in recs)


def test_match_degenerate_and_exit_zero(world):
    root, arc = world["root"], world["arc"]
    files = [f"{arc}/blank.png"] + [f"{arc}/unrelated/u{k}.jpg" for k in range(4)]
    p = run("scan", *files, "--index", "index.hsi", "--workers", "1", cwd=root)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(x) for x in p.stdout.splitlines()]
    assert [r["path"] for r in recs] == files and not any(r["matches"] for r in recs)
    p = run("scan", f"{arc}/blank.png", "--index", "index.hsi", "--workers", "1", "--match-degenerate", cwd=root)
    assert p.returncode == 1
    (rec,) = [json.loads(x) for x in p.stdout.splitlines()]
    assert rec["degenerate"] and [m["id"] for m in rec["matches"]] == ["BLANK"]


def _wait_lines(path, n, proc, timeout=60):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if os.path.exists(path):
            with open(path, "rb") as f:
                if f.read().count(b"\n") >= n:
                    return
        assert proc.poll() is None, "scan finished before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("scan made no progress")


def normalise(recs):
    return sorted(json.dumps(r, sort_keys=True) for r in recs)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupt_and_resume(world, sig):
    root, arc = world["root"], world["arc"]
    ref = root / f"ref-{sig.name}.jsonl"
    part = root / f"part-{sig.name}.jsonl"
    # The reference: one uninterrupted scan (of the folder without the big bombs, to stay quick).
    args = ["scan", f"{arc}/originals", f"{arc}/near", f"{arc}/unrelated", f"{arc}/photos.zip",
            f"{arc}/more.tar.gz", f"{arc}/junk", "--index", "index.hsi", "--workers", "1"]
    run(*args, "--report", ref, cwd=root, check=1)
    errfile = root / f"err-{sig.name}.txt"
    with open(errfile, "w") as errf:
        proc = subprocess.Popen(CLI + args + ["--report", str(part)], cwd=root,
                                stdout=subprocess.DEVNULL, stderr=errf)
        _wait_lines(part, 6, proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    err = errfile.read_text()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert "interrupted" in err and "--resume" in err
        with open(part, "rb") as f:
            assert f.read().endswith(b"\n")
    else:
        assert proc.returncode == -signal.SIGKILL
        # Its worker processes (children of the forkserver, not of the scan) must go too.
        deadline = time.monotonic() + 10
        while _orphans(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _orphans(root), "worker processes outlived the killed scan"
        with open(part, "ab") as f:
            f.write(b'{"path": "half a line')      # what a kill mid-write leaves behind
    first = read_jsonl_tolerant(part)
    full = read_jsonl(ref)
    assert 0 < len(first) < len(full), "the scan was not interrupted part way"
    p = run(*args, "--report", part, "--resume", cwd=root)
    assert p.returncode == 1, p.stderr
    assert f"({len(first)} from the earlier run)" in p.stderr
    resumed = read_jsonl(part)
    assert normalise(resumed) == normalise(full)
    assert [key(r) for r in resumed] == [key(r) for r in full]     # same order, nothing twice


def _orphans(root):
    """Pids of multiprocessing helpers started from root (their sys.path, in argv, holds it)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"forkserver" in cmd and str(root).encode() in cmd:
                out.append(int(pid))
    return out


def read_jsonl_tolerant(path):
    with open(path) as f:
        return [json.loads(x) for x in f.read().split("\n")[:-1] if x]


def test_report_exists_needs_resume_or_overwrite(world):
    root, arc = world["root"], world["arc"]
    (root / "old.jsonl").write_text('{"path": "x", "member": null}\n')
    p = run("scan", f"{arc}/originals", "--index", "index.hsi", "--report", "old.jsonl", cwd=root)
    assert p.returncode == 2 and "--resume" in p.stderr
    assert (root / "old.jsonl").read_text() == '{"path": "x", "member": null}\n'


def test_usage_and_index_errors_exit_2(world, tmp_path):
    root = world["root"]
    assert run("scan", "nope", "--index", "index.hsi", cwd=root).returncode == 2
    assert run("scan", world["arc"], "--index", "missing.hsi", cwd=root).returncode == 2
    (tmp_path / "fake.hsi").write_bytes(b"not an index at all" * 10)
    p = run("scan", world["arc"], "--index", tmp_path / "fake.hsi", cwd=root)
    assert p.returncode == 2 and "not a hashsieve index" in p.stderr
    p = run("scan", world["arc"], "--index", "index.hsi", "--kind", "dhash", cwd=root)
    assert p.returncode == 2 and "phash" in p.stderr
    assert run("query", "index.hsi", "xyz", cwd=root).returncode == 2
    assert run("frobnicate", cwd=root).returncode == 2


def test_bad_list_names_file_and_line_and_writes_nothing(tmp_path):
    good = "hash,id,label\n" + "".join(f"{k:016x},{k},L{k}\n" for k in range(1, 6))
    (tmp_path / "bad.csv").write_text(good + "12345,x,too short\n" + "zz" * 8 + ",y,not hex\n")
    p = run("build", "bad.csv", "-o", "out.hsi", cwd=tmp_path)
    assert p.returncode == 2
    assert "bad.csv:7" in p.stderr and "--skip-bad" in p.stderr and "16" in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "out.hsi.lock"] or sorted(os.listdir(tmp_path)) == ["bad.csv"]
    p = run("build", "bad.csv", "-o", "out.hsi", "--skip-bad", cwd=tmp_path, check=0)
    assert "2 bad rows skipped" in p.stderr
    info = json.loads(run("info", "out.hsi", "--json", cwd=tmp_path, check=0).stdout)
    assert info["count"] == 5 and info["code_bits"] == 64 and info["lists"][0]["name"] == "bad"
    (tmp_path / "noheader.csv").write_text("a,b\n0123456789abcdef,1\n")
    p = run("build", "noheader.csv", "-o", "other.hsi", cwd=tmp_path)
    assert p.returncode == 2 and "noheader.csv:1" in p.stderr and "'hash' column" in p.stderr
    assert not (tmp_path / "other.hsi").exists()


def test_query_add_remove_info(tmp_path):
    (tmp_path / "a.csv").write_text("hash,id,label\n00000000ffffffff,A1,first\n0f0f0f0f0f0f0f0f,A2,second\n")
    (tmp_path / "b.txt").write_text("# b list\n00000000fffffff0\n")
    run("build", "a.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    p = run("query", "i.hsi", "00000000ffffffff", "1111111111111111", "--radius", "2", "--json", cwd=tmp_path, check=1)
    got = [json.loads(x) for x in p.stdout.splitlines()]
    assert [m["id"] for m in got[0]["matches"]] == ["A1"] and got[1]["matches"] == []
    assert run("query", "i.hsi", "1111111111111111", cwd=tmp_path).returncode == 0
    run("add", "i.hsi", "newlist=b.txt", cwd=tmp_path, check=0)
    p = run("query", "i.hsi", "00000000ffffffff", "-r", "4", cwd=tmp_path, check=1)
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    assert [(r[1], r[2], r[3]) for r in rows] == [("0", "a", "A1"), ("4", "newlist", "-")]
    (tmp_path / "gone.csv").write_text("hash,id\n00000000ffffffff,A1\n")
    run("remove", "i.hsi", "gone.csv", cwd=tmp_path, check=0)
    p = run("query", "i.hsi", "00000000ffffffff", "-k", "1", "--json", cwd=tmp_path, check=1)
    assert [m["list"] for m in json.loads(p.stdout)["matches"]] == ["newlist"]
    info = json.loads(run("info", "i.hsi", "--json", cwd=tmp_path, check=0).stdout)
    assert info["count"] == 2 and {x["name"]: x["counts"]["phash"] for x in info["lists"]} == {"a": 1, "newlist": 1}
    dbs = [n for n in os.listdir(tmp_path) if ".lists-" in n]
    assert dbs == [os.path.basename(info["provenance"])], "old provenance tables must be deleted"
    assert "provenance" in run("info", "i.hsi", cwd=tmp_path, check=0).stdout


def test_hash_command(world):
    root, arc = world["root"], world["arc"]
    p = run("hash", f"{arc}/originals", f"{arc}/photos.zip", "--workers", "1", cwd=root, check=1)
    lines = dict(reversed(line.split("\t")) for line in p.stdout.splitlines())
    assert lines[f"{arc}/originals/H0.png"] == f"{hash_image(root / arc / 'originals' / 'H0.png'):016x}"
    assert f"{arc}/photos.zip!/nested/inner.zip!/deep/H3-q50.jpg" in lines
    assert "album/broken.jpg" in p.stderr       # the corrupt member: exit 1, named on stderr
