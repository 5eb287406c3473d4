"""The scan on a Dask cluster (issue 15): a LocalCluster of 2 worker processes, started once for the
module, against the end-to-end archive of test_cli (folders, zip, tar.gz, near-duplicates, hostile
files); small tasks (3 files) so that zips are split by entry ranges and tars continue across tasks."""
import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("distributed")

from distributed import Client  # noqa: E402

from hashsieve import distributed as dscan  # noqa: E402
from hashsieve.lists import open_lists  # noqa: E402
from hashsieve.scan import ScanOptions, scan  # noqa: E402
from test_cli import CLI, _wait_lines, key, normalise, read_jsonl, read_jsonl_tolerant, world  # noqa: E402,F401

TASK = 3


def start_cluster(**kwargs):
    lc = dscan.local_cluster(2, host="127.0.0.1", **kwargs)
    return lc, Client(lc)


@pytest.fixture(scope="module")
def cluster():
    lc, client = start_cluster()
    yield client
    client.close()
    lc.close()


def inputs(world):
    return [world["arc"]]


@pytest.fixture(scope="module")
def reference(world):
    """The single-machine scan of the archive."""
    recs = []
    with open_lists(world["root"] / "index.hsi") as li:
        s = scan(inputs(world), li, recs.append, ScanOptions(workers=2))
    return recs, s


def cluster_scan(world, client, **kw):
    recs = []
    with open_lists(world["root"] / "index.hsi") as li:
        s = dscan.scan(inputs(world), li, kw.pop("out", recs.append), ScanOptions(), cluster=client,
                       task_files=TASK, **kw)
    return recs, s


def test_cluster_report_is_the_local_report(world, cluster, reference):
    ref, ref_summary = reference
    recs, s = cluster_scan(world, cluster)
    assert len({key(r) for r in recs}) == len(recs), "a file appears more than once"
    assert normalise(recs) == normalise(ref)
    got, want = s.as_dict(), ref_summary.as_dict()
    for d in (got, want):
        del d["seconds"], d["images_per_second"]
    assert got == want


def worker_pids(client):
    return client.run(os.getpid)


def test_worker_killed_mid_task_changes_nothing(world, cluster, reference):
    before = worker_pids(cluster)
    killed = []

    def out(rec):
        recs.append(rec)
        if len(recs) >= 4 and not killed:
            busy = [w for w, keys in cluster.processing().items() if keys]
            if busy:
                os.kill(before[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

    recs = []
    cluster_scan(world, cluster, out=out)
    assert killed, "no task was running"
    assert len({key(r) for r in recs}) == len(recs), "a file appears more than once"
    assert normalise(recs) == normalise(reference[0])
    cluster.wait_for_workers(2, timeout=30)
    assert set(worker_pids(cluster).values()) != set(before.values()), "no worker was killed"


def test_resume_after_the_client_is_killed(world, cluster, reference):
    root = world["root"]
    part = root / "cluster-part.jsonl"
    args = CLI + ["scan", world["arc"], "--index", "index.hsi", "--cluster", cluster.scheduler.address,
                  "--task-files", "1"]
    proc = subprocess.Popen(args + ["--report", str(part)], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_lines(part, 6, proc)
    proc.kill()
    proc.wait(timeout=30)
    first = read_jsonl_tolerant(part)
    assert 0 < len(first) < len(reference[0]), "the scan was not killed part way"
    p = subprocess.run(args + ["--report", str(part), "--resume", "--summary-json"], cwd=root, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1, p.stderr          # something matched, as the local scan
    assert f"({len(first)} from the earlier run)" in p.stderr
    resumed = read_jsonl(part)
    assert len({key(r) for r in resumed}) == len(resumed), "a file appears more than once"
    assert normalise(resumed) == normalise(reference[0])
    summary = json.loads(p.stderr.strip().splitlines()[-1])
    want = reference[1].as_dict()
    for k in ("files", "images", "errors", "degenerate", "matched_files", "matches", "all_failed"):
        assert summary[k] == want[k], k


def test_workers_refuse_another_version_of_the_index(world, cluster, tmp_path):
    root = world["root"]
    other = tmp_path / "other.hsi"
    p = subprocess.run(CLI + ["build", "lists/industry.txt", "-o", str(other)], cwd=root, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    with open_lists(root / "index.hsi") as li:
        with pytest.raises(dscan.ClusterError, match="another version of the index"):
            dscan.scan([f"{world['arc']}/blank.png"], li, [].append, ScanOptions(), cluster=cluster,
                       index_location=str(other))


def test_a_file_that_kills_its_worker_is_an_error_line_after_bounded_retries(tmp_path):
    import dask
    from PIL import Image

    import imagegen
    folder = tmp_path / "crash"
    folder.mkdir()
    for k in range(2):
        (folder / f"ok{k}.png").write_bytes(imagegen.encode(imagegen.scene("shapes", 64, 48, seed=k), "PNG"))
    # Decodes to 363 MB, with the worker past its 400 MiB: Dask's nanny kills the worker each time.
    Image.new("RGB", (11000, 11000)).save(folder / "huge.png")
    (tmp_path / "l.txt").write_text("0123456789abcdef\n")
    assert subprocess.run(CLI + ["build", str(tmp_path / "l.txt"), "-o", str(tmp_path / "i.hsi")]).returncode == 0
    recs = []
    opts = ScanOptions()
    opts.limits.max_pixels = 10 ** 9
    # Its own cluster, of workers with 400 MiB each, not paused or spilling near it (killed past
    # it), and one retry by Dask of a task whose worker died (the default is 3; not 0: a task that
    # only shared the worker with the culprit must get another go).
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.worker.memory.pause": False,
                          "distributed.worker.memory.target": False, "distributed.worker.memory.spill": False}):
        lc, cluster = start_cluster(memory_limit="400MiB")
    try:
        with open_lists(tmp_path / "i.hsi") as li:
            s = dscan.scan([str(folder)], li, recs.append, opts, cluster=cluster, task_files=TASK)
    finally:
        cluster.close()
        lc.close()
    by_name = {os.path.basename(r["path"]): r for r in recs}
    assert sorted(by_name) == ["huge.png", "ok0.png", "ok1.png"] and len(recs) == 3
    assert "worker process died" in by_name["huge.png"]["error"]
    assert by_name["ok0.png"]["hash"] and by_name["ok1.png"]["hash"]
    assert s.errors == 1


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_split_by_entry_ranges_names_each_member_once_and_keeps_the_archive_bomb_limit(tmp_path):
    """The ranges of a split zip give the whole walk's items: #2 names, and the archive-wide bomb
    limit (members of 2 MiB zeros, each below the 3 MiB ratio floor, over 200x the archive together)."""
    import zipfile

    from hashsieve.scan import Limits, walk
    path = tmp_path / "z.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("dir/", b"")
        z.writestr("a.bin", b"x")
        z.writestr("a.bin", b"y")                   # the same name again: a.bin#2
        for k in range(4):
            z.writestr(f"zeros{k}.bin", bytes(2 << 20))
    limits = Limits(ratio_floor=3 << 20)
    want = [(i.key, i.error) for i in walk([str(path)], limits)]
    assert any("zip bomb" in (e or "") for _, e in want) and ((str(path), ("a.bin#2",)), None) in want
    size = path.stat().st_size
    for step in (1, 2, 3):
        got = []
        for start in range(0, 7, step):
            with open(path, "rb") as f:
                got += [(i.key, i.error) for i in dscan._walk_archive(f, size, str(path), (), "zip", 1, limits, set(),
                                                                     range(start, start + step))]
        assert got == want, step


def test_a_lost_scheduler_ends_the_scan_with_a_message_and_a_resumable_report(cluster, tmp_path):
    import imagegen
    for k in range(6):
        data = imagegen.encode(imagegen.scene("photo", 320, 240, seed=k), "PNG")
        for d in range(10):
            (tmp_path / "imgs" / f"d{d}").mkdir(parents=True, exist_ok=True)
            (tmp_path / "imgs" / f"d{d}" / f"{k}.png").write_bytes(data)
    (tmp_path / "l.txt").write_text("0123456789abcdef\n")
    assert subprocess.run(CLI + ["build", "l.txt", "-o", "i.hsi"], cwd=tmp_path).returncode == 0
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", "0", "--no-dashboard"], cwd=tmp_path,
                                 stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        for line in scheduler.stderr:           # "Scheduler at: tcp://127.0.0.1:PORT"
            if "Scheduler at:" in line:
                address = line.split("Scheduler at:")[1].strip()
                break
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                   "--no-dashboard"], cwd=tmp_path, stderr=subprocess.DEVNULL)
        report = tmp_path / "r.jsonl"
        args = CLI + ["scan", "imgs", "--index", "i.hsi", "--task-files", "1", "--report", str(report)]
        proc = subprocess.Popen(args + ["--cluster", address], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _wait_lines(report, 5, proc)
        scheduler.kill()
        err = proc.communicate(timeout=60)[1]
    finally:
        for p in (scheduler, worker):
            if p is not None:
                p.kill()
                p.wait()
    assert proc.returncode == 2, err
    assert err.splitlines()[-1].startswith("hashsieve: error: lost the Dask scheduler") and "--resume" in err
    assert "Traceback" not in err
    first = read_jsonl(report)                  # whole lines only
    assert 0 < len(first) < 60
    p = subprocess.run(args + ["--resume", "--cluster", cluster.scheduler.address], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    recs = read_jsonl(report)
    assert sorted(key(r) for r in recs) == sorted((f"imgs/d{d}/{k}.png", None) for d in range(10) for k in range(6))


def test_progress_counts_every_line_and_ends_exact(world, cluster, reference):
    from test_scan_progress import Bar

    class Postfix(Bar):
        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

    bar = Postfix()
    recs, _ = cluster_scan(world, cluster, progress=bar)
    assert bar.n == len(recs) == len(reference[0]) and bar.total == bar.n
    assert all(total >= n for n, total in bar.seen)
    assert "img/s" in bar.postfix and f"errors {sum(bool(r['error']) for r in recs)}" in bar.postfix


def test_a_tar_continued_on_a_worker_is_never_another_scans_open_stream(world):
    """A worker keeps a tar's walk open for its continuation; a later scan (a --resume, which skips
    the members already reported) must not pick up the first scan's stream."""
    from hashsieve.remote import LocalFile
    root = world["root"]
    path = f"{world['arc']}/more.tar.gz"
    st = os.stat(root / path)
    src = LocalFile(path, st.st_dev, st.st_ino, st.st_size)
    with open_lists(root / "index.hsi") as li:
        index, opts = (str(root / "index.hsi"), dscan.index_version(li)), ScanOptions()
    first = dscan.run_task("scan-a", [dscan.Part(src)], (1, 1 << 40), index, opts)
    assert [r["member"] for r in first["records"]] == ["x/H1.jpg"] and first["rest"][0].skip == 1
    done = frozenset({("x/H1.jpg",)})
    again = dscan.run_task("scan-b", [dscan.Part(src, None, 1, done)], (1, 1 << 40), index, opts)
    assert [r["member"] for r in again["records"]] == ["x/u6.jpg"]    # x/H2.webp was its item 0


def test_the_client_lists_lazily_and_keeps_a_bounded_number_of_tasks_in_flight(world, cluster, reference,
                                                                               monkeypatch):
    listed = [0]
    real = dscan._listing

    def counting(*args):
        for x in real(*args):
            listed[0] += 1
            yield x

    monkeypatch.setattr(dscan, "_listing", counting)
    window = dscan.WINDOW_PER_THREAD * 2            # tasks: 2 worker threads
    recs, ahead = [], []

    def out(rec):
        recs.append(rec)
        ahead.append(listed[0] - len(recs))

    cluster_scan(world, cluster, out=out)
    assert normalise(recs) == normalise(reference[0])
    # Listed but not yet reported: at most the tasks in flight and the one being filled, however many files.
    assert max(ahead) <= (window + 1) * TASK and listed[0] > (window + 1) * TASK


def test_cluster_local_n_starts_and_stops_its_own_cluster(world):
    files = [f"{world['arc']}/originals/H0.png", f"{world['arc']}/unrelated/u0.jpg"]
    recs = []
    with open_lists(world["root"] / "index.hsi") as li:
        s = dscan.scan(files, li, recs.append, ScanOptions(), cluster="local:1")
        with pytest.raises(dscan.ClusterError, match="local:N"):
            dscan.scan(files, li, recs.append, ScanOptions(), cluster="local:zero")
    assert sorted(r["path"] for r in recs) == sorted(files) and s.matched == 1


def test_local_cluster_workers_keep_the_default_malloc_trim(cluster):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which makes hashing ~1.8x slower."""
    assert set(cluster.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == {None}


def test_names_that_are_not_utf8_give_the_local_records(world, cluster, tmp_path):
    import io
    import tarfile

    import imagegen
    folder = os.fsencode(tmp_path / "odd")
    os.mkdir(folder)
    with open(os.path.join(folder, b"caf\xe9.png"), "wb") as f:
        f.write(imagegen.encode(imagegen.scene("shapes", 64, 48, seed=1), "PNG"))
    with tarfile.open(os.path.join(folder, b"t.tar"), "w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        data = imagegen.encode(imagegen.scene("shapes", 64, 48, seed=2), "PNG")
        info = tarfile.TarInfo("m\udce9.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    paths = [os.fsdecode(folder)]
    with open_lists(world["root"] / "index.hsi") as li:
        want = []
        scan(paths, li, want.append, ScanOptions(workers=1))
        got = []
        dscan.scan(paths, li, got.append, ScanOptions(), cluster=cluster)
    assert len(want) == 2 and any("path_b64" in r for r in want) and any("member_path_b64" in r for r in want)
    assert normalise(got) == normalise(want)


def test_mixed_kind_index_gives_the_local_records(cluster, tmp_path_factory):
    """An index of pHash + PDQ + MD5 lists: every kind hashed on the workers, the same matches."""
    import test_scan_kinds
    kinds_world = test_scan_kinds.world.__wrapped__(tmp_path_factory)
    with open_lists(kinds_world["root"] / "i.hsi") as li:
        assert {k.name for k in li.kinds} == {"phash", "pdq"}
        want, got = [], []
        scan([kinds_world["up"]], li, want.append, ScanOptions(workers=1))
        dscan.scan([str(kinds_world["up"])], li, got.append, ScanOptions(), cluster=cluster)
    assert {m["kind"] for r in want for m in r["matches"]} == {"phash", "pdq", "md5"}
    assert normalise(got) == normalise(want)


def test_local_url_input_keeps_the_symlink_rules_of_a_path(world, tmp_path):
    """local:// is fsspec's local file system too: a link out of the folder named is an error line,
    as for the path, not a file read (its MD5 and SHA-1 in the report)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (tmp_path / "private.txt").write_text("not for the report\n")
    os.symlink(tmp_path / "private.txt", folder / "link.jpg")
    report = tmp_path / "r.jsonl"
    p = subprocess.run(CLI + ["scan", f"local://{folder}", "--index", str(world["root"] / "index.hsi"),
                              "--report", str(report), "--cluster", "local:1"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    [rec] = read_jsonl(report)
    assert rec["md5"] is None and "outside the folders being scanned" in rec["error"], rec
