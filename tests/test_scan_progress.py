"""The progress bar's total, rate and ETA (issue 11, item 10): a background count of the folders
(zip directories read, other archives as one) corrected by what the scan's walk finds."""
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import tarfile
import termios
import time
import zipfile

import pytest

import imagegen
from hashsieve import scan as scan_module
from hashsieve.scan import Limits, ScanOptions, _Total, scan, walk

CLI = [sys.executable, "-m", "hashsieve.cli"]


def png(seed):
    return imagegen.encode(imagegen.scene("shapes", 48, 32, seed=seed), "PNG")


def tar_gz(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """4 files in folders, a zip of 4 entries (a folder entry, 2 images, a zip of 2 inside), a zip64
    of 3 images and a tar.gz of 3: 4 + 4 + 3 + 1 counted before the scan, 4 + 4 + 3 + 3 lines."""
    root = tmp_path / "upload"
    (root / "a" / "b").mkdir(parents=True)
    for k, p in enumerate(["one.png", "a/two.png", "a/b/three.png", "a/b/notes.txt"]):
        (root / p).write_bytes(png(k) if p.endswith(".png") else b"text")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("x.png", png(10))
        z.writestr("y.png", png(11))
    with zipfile.ZipFile(root / "a" / "pack.zip", "w") as z:
        z.writestr("dir/", b"")
        z.writestr("dir/p.png", png(12))
        z.writestr("q.png", png(13))
        z.writestr("inner.zip", inner.getvalue())
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)      # writes a zip64 end record for 3 entries
    with zipfile.ZipFile(root / "big.zip", "w") as z:
        for k in range(3):
            z.writestr(f"z{k}.png", png(20 + k))
    monkeypatch.undo()
    (root / "c.tar.gz").write_bytes(tar_gz({f"t{k}.png": png(30 + k) for k in range(3)}))
    return root


def counted(total, timeout=30):
    end = time.monotonic() + timeout
    while total.counting and time.monotonic() < end:
        time.sleep(0.01)
    assert not total.counting
    return total.counted


def test_progress_total_counts_folders_zip_directories_and_tar_members(tree):
    with zipfile.ZipFile(tree / "big.zip") as z:
        assert len(z.infolist()) == 3                       # (a valid zip64 file)
    assert scan_module._zip_entries(str(tree / "big.zip"), Limits()) == 3
    total = _Total([str(tree)], Limits(), set())
    assert counted(total) == 4 + 4 + 3 + 1
    items = list(total.follow(walk([str(tree)])))
    assert len(items) == 14 and total.value == 14           # the tar's members and the inner zip's added


class Bar:
    """What scan() does to a tqdm bar, recorded."""

    def __init__(self, initial=0):
        self.n = self.initial = initial
        self.total = initial
        self.seen = []

    def update(self, k):
        self.n += k
        self.seen.append((self.n, self.total))

    def set_postfix_str(self, text, refresh=True):
        pass


def test_progress_total_is_never_below_the_count_and_ends_exact(tree):
    recs, bar = [], Bar()
    scan([str(tree)], None, recs.append, ScanOptions(workers=1), progress=bar)
    assert len(recs) == 14 and bar.n == 14 and bar.total == 14
    assert bar.seen[-1] == (14, 14)                         # known before the end
    assert all(total >= n for n, total in bar.seen)
    # resumed: the lines already reported are neither redone nor counted twice
    resumed, bar = recs[:9], Bar(initial=9)
    more = []
    scan([str(tree)], None, more.append, ScanOptions(workers=1), resume_records=resumed, progress=bar)
    assert len(more) == 5 and bar.n == bar.total == 14 and bar.seen[-1] == (14, 14)
    assert max(total for _, total in bar.seen) <= 14 + 1      # (+1: the zip's folder entry)


def run_on_a_terminal(args):
    """Run the CLI with standard error on a pseudo-terminal (120 columns): (exit code, what it drew)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    p = subprocess.Popen(CLI + [str(a) for a in args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:             # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(timeout=120), out.decode("utf-8", "replace")


def test_bar_shows_total_rate_and_eta_on_a_terminal_and_stays_off_otherwise(tree, tmp_path):
    (tmp_path / "list.txt").write_text("0123456789abcdef\n")
    assert subprocess.run(CLI + ["build", str(tmp_path / "list.txt"), "-o", str(tmp_path / "i.hsi")],
                          capture_output=True).returncode == 0
    args = ["scan", tree, "--index", tmp_path / "i.hsi", "--report", tmp_path / "r.jsonl", "--workers", "1"]
    code, drawn = run_on_a_terminal(args)
    assert code == 0 and "14/14 [" in drawn and "file/s" in drawn
    assert any("<" in frame for frame in drawn.split("\r") if "/14 [" in frame)     # elapsed<remaining
    # hash: a bar when the hashes go to a pipe (exit code 1: notes.txt is no image)
    code, drawn = run_on_a_terminal(["hash", tree, "--workers", "1"])
    assert code == 1 and "14/14 [" in drawn and "notes.txt: not an image" in drawn
    p = subprocess.run(CLI + [str(a) for a in args] + ["--overwrite"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "\r" not in p.stderr and "file/s" not in p.stderr
