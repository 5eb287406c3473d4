"""The scan against hostile and unusual inputs (issue 10): symbolic links leaving the scanned
tree, names that are not UTF-8, report keys that could collide, memory, and scans in which
every file failed.  In-process scans use one worker; the CLI runs as a subprocess."""
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest

import imagegen
from hashsieve import hash_image
from hashsieve.scan import ScanOptions, hash_jobs, read_report, record_key, record_name, scan, walk

CLI = [sys.executable, "-m", "hashsieve.cli"]


def png(seed, w=64, h=48):
    return imagegen.encode(imagegen.scene("shapes", w, h, seed=seed), "PNG")


def hex_of(data):
    return f"{hash_image(data):016x}"


def run_scan(paths, resume=(), **options):
    recs = []
    summary = scan([str(p) for p in paths], None, recs.append, ScanOptions(workers=1, **options),
                   resume_records=resume)
    return recs, summary


def cli(*args, env=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture
def index(tmp_path):
    (tmp_path / "list.txt").write_text("0123456789abcdef\n")
    p = cli("build", tmp_path / "list.txt", "-o", tmp_path / "i.hsi")
    assert p.returncode == 0, p.stderr
    return tmp_path / "i.hsi"


# ---------------------------------------------------------------- 2: symbolic links
@pytest.fixture
def upload(tmp_path):
    """An unpacked upload whose links point out of it (absolute and relative) and within it."""
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.png"
    secret.write_bytes(png(1))
    root = tmp_path / "upload"
    root.mkdir()
    (root / "own.png").write_bytes(png(2))
    os.symlink(secret, root / "escape.png")
    os.symlink("../outside/secret.png", root / "relative.png")
    os.symlink("own.png", root / "inside.png")
    return root, secret


def test_symlink_to_a_file_outside_the_scanned_tree_is_an_error_line(upload):
    root, secret = upload
    recs, _ = run_scan([root])
    by = {os.path.basename(r["path"]): r for r in recs}
    assert sorted(by) == ["escape.png", "inside.png", "own.png", "relative.png"]
    for name in ("escape.png", "relative.png"):
        r = by[name]
        assert r["hash"] is None and r["md5"] is None and r["sha1"] is None, "the target was read"
        assert "outside the folders being scanned" in r["error"] and "--follow-symlinks" in r["error"]
    assert by["inside.png"]["error"] is None and by["inside.png"]["md5"] == by["own.png"]["md5"]
    recs, _ = run_scan([root], follow_symlinks=True)
    by = {os.path.basename(r["path"]): r for r in recs}
    assert by["escape.png"]["hash"] == by["relative.png"]["hash"] == hex_of(secret.read_bytes())


def test_symlinked_roots_and_links_into_another_root_are_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.png").write_bytes(png(3))
    os.symlink(real, tmp_path / "named-folder")
    os.symlink(real / "a.png", tmp_path / "named-file.png")
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(real / "a.png", other / "to-real.png")
    recs, _ = run_scan([tmp_path / "named-folder", tmp_path / "named-file.png"])
    assert len(recs) == 2 and all(r["error"] is None for r in recs)
    recs, _ = run_scan([other, real])
    assert len(recs) == 2 and all(r["error"] is None for r in recs)


def test_cli_names_the_fix_and_follow_symlinks_allows_it(upload):
    root, secret = upload
    p = cli("hash", root, "--workers", "1")
    assert p.returncode == 1
    assert hex_of(secret.read_bytes()) not in p.stdout
    assert "escape.png: symbolic link to" in p.stderr and "--follow-symlinks" in p.stderr
    p = cli("hash", root, "--workers", "1", "--follow-symlinks")
    assert p.returncode == 0, p.stderr
    assert f"{hex_of(secret.read_bytes())}\t{root / 'escape.png'}" in p.stdout.splitlines()


def test_a_file_replaced_after_the_walk_checked_it_is_not_read(upload):
    root, secret = upload
    (item,) = [i for i in walk([root]) if i.path.endswith("own.png")]
    os.replace(root / "escape.png", root / "own.png")       # now a link out of the tree
    ((hashes, md5, _, error),) = hash_jobs([item.job], ("phash",), False, None, 1 << 20)
    assert hashes is None and md5 is None and "replaced while it was being scanned" in error


# ---------------------------------------------------------------- 5: names that are not UTF-8
BAD_NAME = b"bad\xffname.png"
LATIN1_MEMBER = "caf\xe9.png"           # stored as latin-1 bytes b"caf\xe9.png"


@pytest.fixture
def odd_names(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), BAD_NAME), "wb") as f:
        f.write(png(4))
    (root / "good.png").write_bytes(png(5))
    with tarfile.open(root / "latin1.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo(LATIN1_MEMBER)
        data = png(6)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return root


def test_names_that_are_not_utf8_are_reported_losslessly_and_resumed(odd_names, index, tmp_path):
    report = tmp_path / "r.jsonl"
    p = cli("scan", odd_names, "--index", index, "--report", report, "--workers", "1")
    assert p.returncode == 0, p.stderr
    recs, _ = read_report(report)
    assert len(recs) == 3 and all(r["error"] is None for r in recs)
    bad = next(r for r in recs if "path_b64" in r)
    raw = os.path.join(os.fsencode(odd_names), BAD_NAME)
    assert base64.b64decode(bad["path_b64"]) == raw
    assert bad["path"] == raw.decode("utf-8", "replace") and "\ufffd" in bad["path"]
    assert bad["hash"] == hex_of(png(4))
    (member,) = [r for r in recs if r["member"] is not None]
    assert member["member"] == "caf\ufffd.png" and member["member_path"] == ["caf\ufffd.png"]
    assert [base64.b64decode(b) for b in member["member_path_b64"]] == [b"caf\xe9.png"]
    assert {record_key(r) for r in recs} == {i.key for i in walk([str(odd_names)])}
    full = report.read_bytes()
    report.write_bytes(full[:full.index(b"\n") + 1])            # as if killed after one line
    p = cli("scan", odd_names, "--index", index, "--report", report, "--workers", "1", "--resume")
    assert p.returncode == 0, p.stderr
    assert sorted(report.read_bytes().splitlines()) == sorted(full.splitlines())
    p = cli("scan", odd_names, "--index", index, "--report", report, "--workers", "1", "--resume")
    assert p.returncode == 0 and "(3 from the earlier run)" in p.stderr
    assert sorted(report.read_bytes().splitlines()) == sorted(full.splitlines())


def test_names_that_are_not_utf8_print_escaped_in_hash_and_stdout_reports(odd_names, index):
    p = cli("hash", odd_names, "--workers", "1")
    assert p.returncode == 0, p.stderr
    lines = dict(line.split("\t")[::-1] for line in p.stdout.splitlines())
    assert lines[f"{odd_names}/bad\\xffname.png"] == hex_of(png(4))
    assert lines[f"{odd_names}/latin1.tar!/caf\\xe9.png"] == hex_of(png(6))
    p = cli("scan", odd_names, "--index", index, "--workers", "1", env={"PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(recs) == 3 and sum("path_b64" in r for r in recs) == 1


def test_hash_prints_one_line_per_file_whatever_its_name(tmp_path):
    (tmp_path / "two\nlines.png").write_bytes(png(7))
    (tmp_path / "back\\slash\x1b[31m.png").write_bytes(png(8))
    p = cli("hash", tmp_path, "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == sorted([f"{hex_of(png(8))}\t{tmp_path}/back\\\\slash\\x1b[31m.png",
                                                    f"{hex_of(png(7))}\t{tmp_path}/two\\nlines.png"])
    assert record_name({"path": "a!/b", "member_path": ["\udce9"]}) == "a!/b!/\\xe9"


# ---------------------------------------------------------------- 9: report keys
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_member_named_like_a_nested_path_has_its_own_key_and_resume_keeps_both(tmp_path):
    outer = tmp_path / "outer.zip"
    outer.write_bytes(imagegen.zip_bytes([("x.zip!/y.png", png(10)), ("x.zip", imagegen.zip_bytes([("y.png", png(11))])),
                                 ("a.png", png(12)), ("a.png", png(13)), ("a.png#2", png(14))]))
    recs, _ = run_scan([outer])
    assert [r["md5"] is not None for r in recs] == [True] * 5
    keys = [record_key(r) for r in recs]
    assert len(set(keys)) == 5, keys
    assert keys[:2] == [(str(outer), ("x.zip!/y.png",)), (str(outer), ("x.zip", "y.png"))]
    assert recs[1]["member"] == "x.zip!/y.png" and recs[1]["member_path"] == ["x.zip", "y.png"]
    for k in range(len(recs)):        # resume after any one line: every other file is redone once
        again, summary = run_scan([outer], resume=[recs[k]])
        assert [r["md5"] for r in again] == [r["md5"] for j, r in enumerate(recs) if j != k]
        assert summary.files == 5


def test_resume_from_a_report_written_before_member_path(tmp_path):
    outer = tmp_path / "outer.zip"
    outer.write_bytes(imagegen.zip_bytes([("x.zip", imagegen.zip_bytes([("y.png", png(11))])), ("z.png", png(12))]))
    old = {"path": str(outer), "member": "x.zip!/y.png", "hash": None, "error": None}
    again, _ = run_scan([outer], resume=[old])
    assert [r["member_path"] for r in again] == [["z.png"]]


# ---------------------------------------------------------------- 10: memory
def test_scan_keeps_a_bounded_amount_of_member_data_in_flight(tmp_path):
    # Ten 10 MiB members: the pool lets 32 MiB per worker (one here) wait beyond the one file
    # it always lets through.  The old scan queued 3 chunks of 4 whole members, plus their
    # pickled copies: all 100 MiB and more.
    rng = np.random.default_rng(10)
    with tarfile.open(tmp_path / "big.tar", "w") as tf:
        for k in range(10):
            info = tarfile.TarInfo(f"m{k}.bin")
            info.size = 10 << 20
            tf.addfile(info, io.BytesIO(rng.bytes(info.size)))
    tracemalloc.start()
    try:
        recs, _ = run_scan([tmp_path / "big.tar"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(recs) == 10 and all(r["md5"] and "not an image" in r["error"] for r in recs)
    assert peak < 64 << 20, f"the scan held {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------- 13: every file failed
def test_summary_says_when_every_file_failed(tmp_path, index):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name, data in imagegen.broken_files(seed=4).items():
        (broken / name).write_bytes(data)
    recs, summary = run_scan([broken])
    assert summary.errors == summary.files == len(recs) > 0
    assert summary.all_failed and summary.as_dict()["all_failed"] is True
    (tmp_path / "ok.png").write_bytes(png(15))
    _, summary = run_scan([broken, tmp_path / "ok.png"])
    assert not summary.all_failed and summary.as_dict()["all_failed"] is False
    p = cli("scan", broken, "--index", index, "--summary-json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stderr.strip().splitlines()[-1])["all_failed"] is True



def test_folder_swapped_for_a_symlink_during_the_walk_is_not_followed(tmp_path):
    """A folder on the path replaced by a link mid-walk led the walk out of the tree (the check looked at
    the last path component only)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "up" / "sub").mkdir(parents=True)
    outside.mkdir()
    for name in ("a.png", "z.png"):
        (root / "up" / "sub" / name).write_bytes(b"inside")
        (outside / name).write_bytes(b"outside")
    items = walk([str(root)])
    first = next(items)
    assert first.path.endswith("a.png") and first.error is None
    shutil.rmtree(root / "up" / "sub")
    os.symlink(outside, root / "up" / "sub")
    rest = list(items)
    assert [(os.path.basename(i.path), "resolves outside" in (i.error or "")) for i in rest] == [("z.png", True)]


def test_zip_member_flagged_utf8_with_invalid_bytes_hides_nothing(tmp_path):
    """One member whose UTF-8-flagged name is not UTF-8 made zipfile refuse the whole archive, so every
    image in it went unscanned (an evasion)."""
    good = png(1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("good.png", good)
        z.writestr("bad\u00e9.png", png(2))          # written with the UTF-8 flag: b"bad\xc3\xa9.png"
    data = buf.getvalue().replace(b"bad\xc3\xa9.png", b"bad\xff\xfe.png")   # same length, invalid UTF-8
    (tmp_path / "evil.zip").write_bytes(data)
    with pytest.raises(UnicodeDecodeError):
        zipfile.ZipFile(tmp_path / "evil.zip")
    items = list(walk([str(tmp_path / "evil.zip")]))
    assert [i.error for i in items] == [None, None]
    assert items[0].member == ("good.png",) and items[0].job == good
    assert items[1].member == ("bad\udcff\udcfe.png",)
    recs = []
    scan([str(tmp_path / "evil.zip")], None, recs.append, ScanOptions(workers=1))
    assert [r["hash"] is not None for r in recs] == [True, True]
    assert base64.b64decode(recs[1]["member_path_b64"][0]) == b"bad\xff\xfe.png"
