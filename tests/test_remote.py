"""Inputs and the index read by URL (issue 15) from an S3-compatible server the tests start (moto's
server mode, on a local port), scanned on a LocalCluster of 2 worker processes: the same report as
the single-machine scan of the same files on disk."""
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

pytest.importorskip("distributed")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import imagegen  # noqa: E402
from hashsieve import hash_image  # noqa: E402
from hashsieve.lists import open_lists  # noqa: E402
from hashsieve.remote import list_url  # noqa: E402
from hashsieve.scan import ScanOptions, scan  # noqa: E402

CLI = [sys.executable, "-m", "hashsieve.cli"]
SECRET = "hs-test-secret-never-printed"
BUCKET = "uploads"


def png(seed, w=96, h=64):
    return imagegen.encode(imagegen.scene("shapes", w, h, seed=seed), "PNG")


def zip_of(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def tar_gz(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Files on disk: images (one listed), a zip of 12 entries (split into ranges) holding a nested zip
    and a folder entry, a tar.gz, a corrupt image, an empty file, a cut zip; and an index."""
    root = tmp_path_factory.mktemp("remote")
    files = {
        "tree/a/listed.png": png(1),
        "tree/a/other.png": png(2),
        "tree/b/deeper/c.png": png(3),
        "tree/b/empty.jpg": b"",
        "tree/b/broken.jpg": png(4)[:200],
        "tree/photos.zip": zip_of([("album/", b"")] + [(f"album/p{k}.png", png(10 + k)) for k in range(10)]
                                  + [("inner.zip", zip_of([("deep/listed-again.png", png(1))]))]),
        "tree/more.tar.gz": tar_gz([(f"x/t{k}.png", png(30 + k)) for k in range(5)]),
    }
    files["tree/junk/cut.zip"] = files["tree/photos.zip"][:300]
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "list.txt").write_text(f"{hash_image(png(1)):016x}\n")
    (root / "idx").mkdir()
    p = subprocess.run(CLI + ["build", "list.txt", "-o", "idx/index.hsi"], cwd=root, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return root


@pytest.fixture(scope="module")
def s3(tree):
    """A moto S3 server on a local port holding tree/ and idx/; the environment points fsspec at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "hs-test-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec.config
    fsspec.config.set_conf_env(fsspec.config.conf)
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    for folder in ("tree", "idx"):
        fs.put(str(tree / folder), f"{BUCKET}/", recursive=True)
    yield fs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    fsspec.config.conf.pop("s3", None)
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    from distributed import Client

    from hashsieve.distributed import local_cluster
    lc = local_cluster(2, host="127.0.0.1")
    client = Client(lc)
    yield client
    client.close()
    lc.close()


def local_report(tree):
    recs = []
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        with open_lists("idx/index.hsi") as li:
            scan(["tree"], li, recs.append, ScanOptions(workers=1))
    finally:
        os.chdir(cwd)
    return recs


def as_on_disk(recs):
    """Report lines with s3://BUCKET/ taken off their paths, sorted."""
    out = []
    for r in recs:
        assert r["path"].startswith(f"s3://{BUCKET}/"), r["path"]
        out.append(json.dumps({**r, "path": r["path"][len(f"s3://{BUCKET}/"):]}, sort_keys=True))
    return sorted(out)


def test_prefixes_are_listed_in_name_order_like_folders(s3):
    names = [x.path for x in list_url(f"s3://{BUCKET}/tree")]
    assert names == [f"s3://{BUCKET}/{n}" for n in [
        "tree/a/listed.png", "tree/a/other.png", "tree/b/broken.jpg", "tree/b/deeper/c.png", "tree/b/empty.jpg",
        "tree/junk/cut.zip", "tree/more.tar.gz", "tree/photos.zip"]]
    (missing,) = list(list_url(f"s3://{BUCKET}/no-such-prefix"))
    assert missing.error.startswith("cannot read")


def test_s3_inputs_and_index_give_the_report_of_the_same_files_on_disk(tree, s3, cluster, tmp_path):
    report = tmp_path / "s3.jsonl"
    p = subprocess.run(CLI + ["scan", f"s3://{BUCKET}/tree", "--index", f"s3://{BUCKET}/idx/index.hsi",
                              "--report", str(report), "--cluster", cluster.scheduler.address, "--task-files", "4"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr          # the listed image matched, twice
    text = report.read_text()
    recs = [json.loads(x) for x in text.splitlines()]
    want = local_report(tree)
    assert as_on_disk(recs) == sorted(json.dumps(r, sort_keys=True) for r in want)
    assert sum(bool(r["matches"]) for r in recs) == 2
    assert SECRET not in text and SECRET not in p.stderr and SECRET not in p.stdout


def test_url_inputs_without_a_cluster_name_the_fix(tree):
    p = subprocess.run(CLI + ["scan", f"s3://{BUCKET}/tree", "--index", str(tree / "idx/index.hsi")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "needs --cluster" in p.stderr


def test_https_urls_are_read_by_range_as_files_on_disk(tree, cluster):
    """One file and one zip by URL, from a local HTTP server (fsspec reads a zip by range)."""
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tree))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        from hashsieve import distributed as dscan
        recs = []
        with open_lists(tree / "idx/index.hsi") as li:
            dscan.scan([base + "tree/a/listed.png", base + "tree/photos.zip"], li, recs.append,
                       ScanOptions(), cluster=cluster, task_files=4)
    finally:
        server.shutdown()
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        want = []
        with open_lists("idx/index.hsi") as li:
            scan(["tree/a/listed.png", "tree/photos.zip"], li, want.append, ScanOptions(workers=1))
    finally:
        os.chdir(cwd)
    assert sorted(json.dumps({**r, "path": r["path"][len(base):]}, sort_keys=True) for r in recs) == \
        sorted(json.dumps(r, sort_keys=True) for r in want)
