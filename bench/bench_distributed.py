"""The scan on a Dask cluster against the single-machine scan, on the same inputs in the same run
(docs/cli.md, "Scanning on a Dask cluster").

    .venv/bin/python bench/bench_distributed.py [--distinct 40 --copies 10 --scale 8 --zip-members 100
                                                 --rounds 2 --task-files 4 16 64 256]
    .venv/bin/python bench/bench_distributed.py --malloc

--malloc: only the CPU of hash_image a file over the distinct JPEGs, in this process, in a worker of
hashsieve.distributed.local_cluster and in a worker of a plain LocalCluster (Dask's nanny gives it
MALLOC_TRIM_THRESHOLD_=65536).

Inputs: --distinct synthetic 1280x960 JPEGs (photo-like scenes, q85: phone-upload size),
hard-linked into --copies folders, plus one zip holding --zip-members of them (split into entry
ranges by the cluster scan); an index of 100,000 random hashes plus some of the images' own.

Each round runs, interleaved, the real command in a subprocess: `hashsieve scan --workers 1`,
`--workers 2`, then `--cluster ADDRESS` against a LocalCluster of 1 and of 2 worker processes
(one thread each) started once by this script, so that the figures are the scan's, not the
cluster's start-up (timed apart, as `--cluster local:N` pays it).  images/s is the scan's own
summary (first listing to last line); wall includes the interpreter and connecting.  Then the
task size: --cluster on 2 workers with each --task-files.  Then what the planned figures rest
on: the scheduler's rate of empty tasks (client.submit + result, a window of 64 in flight) and
the client's CPU time per report line.  Every report is checked equal (as a set) to the first
local one.  Writes bench/results/distributed.json.
"""
import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import imagegen  # noqa: E402
from harness import machine, save_json  # noqa: E402

CLI = [sys.executable, "-m", "hashsieve.cli"]


def make_inputs(tmp, a):
    from hashsieve import hash_image
    folder = os.path.join(tmp, "in")
    first = os.path.join(folder, "c0")
    os.makedirs(first)
    rng = np.random.default_rng(5)
    paths = []
    for i in range(a.distinct):
        small = imagegen.scene(["photo", "landscape", "clouds", "text"][i % 4], 160, 120, seed=i)
        p = os.path.join(first, f"p{i:03d}.jpg")
        with open(p, "wb") as f:
            f.write(imagegen.encode(imagegen._upscale(small, a.scale, rng), "JPEG", quality=85))
        paths.append(p)
    for c in range(1, a.copies):
        os.makedirs(os.path.join(folder, f"c{c}"))
        for p in paths[:a.distinct]:
            os.link(p, os.path.join(folder, f"c{c}", os.path.basename(p)))
    with zipfile.ZipFile(os.path.join(folder, "upload.zip"), "w", zipfile.ZIP_STORED) as z:
        for k in range(a.zip_members):
            z.write(paths[k % a.distinct], f"z/{k:04d}.jpg")
    with open(os.path.join(tmp, "list.csv"), "w") as f:
        f.write("hash,id,label\n")
        for k, code in enumerate(rng.integers(0, 2**63, 100_000, dtype=np.int64)):
            f.write(f"{int(code) * 2 + 1:016x},R{k},random\n")
        for k, p in enumerate(paths[::4]):
            f.write(f"{hash_image(p):016x},P{k},listed\n")
    index = os.path.join(tmp, "idx.hsi")
    subprocess.run(CLI + ["build", os.path.join(tmp, "list.csv"), "-o", index], check=True, capture_output=True)
    return folder, index, a.distinct * a.copies + a.zip_members


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def workers_cpu(client):
    return sum(client.run(_cpu).values()) if client is not None else 0.0


def run_scan(folder, index, report, *extra, client=None):
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wcpu = workers_cpu(client)
    p = subprocess.run(CLI + ["scan", folder, "--index", index, "--report", report, "--overwrite",
                              "--summary-json", *extra], capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wcpu = workers_cpu(client) - wcpu
    if p.returncode not in (0, 1):
        raise SystemExit(p.stderr)
    summary = json.loads(p.stderr.strip().splitlines()[-1])
    with open(report) as f:
        lines = sorted(f.read().splitlines())
    # CPU of the command's own process tree that has ended (the client; local workers too).
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"images_per_second": summary["images_per_second"], "wall_images_per_second": summary["images"] / wall,
            "files": summary["files"], "cpu_seconds": cpu, "worker_cpu_seconds": wcpu,
            "cpu_ms_per_file": (cpu + wcpu) / max(summary["files"], 1) * 1e3}, lines


def pipeline_cpu(folder, index):
    """CPU ms per file of what a worker does per file (scan.hash_jobs, then Screener.records),
    in this process, one file at a time over the folder's first copy."""
    from hashsieve.lists import open_lists
    from hashsieve.scan import ScanOptions, Screener, hash_jobs, walk
    items = [i for i in walk([os.path.join(folder, "c0")])]
    with open_lists(index) as li:
        screener = Screener(li, ScanOptions())
        t = time.process_time()
        for item in items:
            screener.records([item], hash_jobs([item.job], *screener.job_args))
        return (time.process_time() - t) / len(items) * 1e3


def tiny_files(tmp, n):
    """n hard links of one 64x48 PNG (about 1 ms to hash): a scan bound by per-file overheads."""
    folder = os.path.join(tmp, "tiny")
    os.makedirs(folder)
    first = os.path.join(folder, "t00000.png")
    with open(first, "wb") as f:
        f.write(imagegen.encode(imagegen.scene("shapes", 64, 48, seed=1), "PNG"))
    for k in range(1, n):
        os.link(first, os.path.join(folder, f"t{k:05d}.png"))
    return folder


def _hash_loop(paths):
    from hashsieve import hash_image
    t = time.thread_time()
    for p in paths:
        hash_image(p)
    return (time.thread_time() - t) / len(paths) * 1e3


def malloc_setting(folder):
    """CPU ms a file of hash_image over the first copy: here, in a worker of local_cluster, and in a
    worker of a plain LocalCluster (whose nanny sets MALLOC_TRIM_THRESHOLD_=65536)."""
    from distributed import Client, LocalCluster

    from hashsieve.distributed import local_cluster
    paths = sorted(os.path.join(folder, "c0", n) for n in os.listdir(os.path.join(folder, "c0")))
    out = {"this process": statistics.median(_hash_loop(paths) for _ in range(3))}
    for name, make in (("local_cluster worker", lambda: local_cluster(1)),
                       ("plain LocalCluster worker", lambda: LocalCluster(n_workers=1, threads_per_worker=1,
                                                                           dashboard_address=":0",
                                                                           silence_logs=logging.CRITICAL))):
        with make() as lc, Client(lc) as client:
            out[name] = statistics.median(client.submit(_hash_loop, paths, pure=False).result() for _ in range(3))
    return out


def scheduler_rate(client, n=2000, window=64):
    """Empty tasks per second through the scheduler, submitted and gathered as the scan does."""
    from distributed import wait
    t = time.perf_counter()
    inflight, done = set(), 0
    while done < n:
        while len(inflight) < window and done + len(inflight) < n:
            inflight.add(client.submit(int, done + len(inflight), pure=False))
        ready, inflight = wait(inflight, return_when="FIRST_COMPLETED")
        for f in ready:
            f.result()
        done += len(ready)
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distinct", type=int, default=40)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--scale", type=int, default=8, help="the JPEGs are 160x120 scenes upscaled this many times")
    ap.add_argument("--zip-members", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--task-files", type=int, nargs="+", default=[4, 16, 64, 256])
    ap.add_argument("--tiny", type=int, default=4000, help="files of the overhead-bound run")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "distributed.json"))
    ap.add_argument("--malloc", action="store_true", help="only compare hash_image's CPU in a worker with and "
                                                          "without Dask's MALLOC_TRIM_THRESHOLD_")
    a = ap.parse_args()
    if a.malloc:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_inputs(tmp, a)[0]
            load = os.getloadavg()[0]
            for name, ms in malloc_setting(folder).items():
                print(f"hash_image in {name}: {ms:.2f} ms CPU a file (median of 3 passes over {a.distinct})")
            print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
        return
    from distributed import Client

    from hashsieve.distributed import local_cluster

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder, index, nfiles = make_inputs(tmp, a)
        print(f"{nfiles} files ({a.distinct} distinct {160 * a.scale}x{120 * a.scale} JPEGs x {a.copies} folders "
              f"+ a zip of {a.zip_members}); {machine()}")
        startup = {}
        clusters = {}
        for n in (1, 2):
            t = time.perf_counter()
            lc = local_cluster(n, host="127.0.0.1")
            client = Client(lc)
            startup[n] = time.perf_counter() - t
            clusters[n] = (lc, client)
        report = os.path.join(tmp, "r.jsonl")
        runs = {"scan --workers 1": (["--workers", "1"], None), "scan --workers 2": (["--workers", "2"], None)}
        for n in (1, 2):
            runs[f"scan --cluster ({n} worker process{'es' if n > 1 else ''})"] = \
                (["--cluster", clusters[n][1].scheduler.address], clusters[n][1])
        rows = {name: [] for name in runs}
        reference = None
        for r in range(a.rounds):
            for name, (extra, client) in runs.items():
                row, lines = run_scan(folder, index, report, *extra, client=client)
                reference = reference or lines
                assert lines == reference, f"{name}: the report differs from the local scan's"
                rows[name].append(row)
                print(f"round {r + 1}: {name}: {row['images_per_second']} images/s", flush=True)
        sizes = {}
        for tf in a.task_files:
            row, lines = run_scan(folder, index, report, "--cluster", clusters[2][1].scheduler.address,
                                  "--task-files", str(tf), client=clusters[2][1])
            assert lines == reference, f"--task-files {tf}: the report differs"
            sizes[tf] = row
            print(f"--task-files {tf}: {row['images_per_second']} images/s", flush=True)
        rate = scheduler_rate(clusters[2][1])
        per_file = pipeline_cpu(folder, index)
        # Overheads: tiny files; the client's CPU beyond what a scan of nothing costs it (start-up,
        # imports, connecting).
        tiny = tiny_files(tmp, a.tiny)
        os.makedirs(os.path.join(tmp, "empty"))
        address = clusters[2][1].scheduler.address
        idle = run_scan(os.path.join(tmp, "empty"), index, report, "--cluster", address)[0]["cpu_seconds"]
        overhead = {}
        for tf in (64, 256):
            row = run_scan(tiny, index, report, "--cluster", address, "--task-files", str(tf), client=clusters[2][1])[0]
            row["client_cpu_ms_per_line"] = (row["cpu_seconds"] - idle) / a.tiny * 1e3
            overhead[tf] = row
            print(f"tiny files, --task-files {tf}: {row['images_per_second']} lines/s", flush=True)
        for lc, client in clusters.values():
            client.close()
            lc.close()
    load1 = os.getloadavg()

    def med(name, key="images_per_second"):
        return statistics.median(x[key] for x in rows[name])

    base = med("scan --workers 1")
    print(f"\nload average before {load0[0]:.2f}, after {load1[0]:.2f} ({os.cpu_count()} cores, shared)")
    print(f"\n| run ({a.rounds} rounds, median) | images/s | wall images/s | vs --workers 1 | CPU ms per file "
          "(client + workers) |\n|---|---|---|---|---|")
    for name in rows:
        # (a local scan's workers are children of its fork server, which getrusage does not reach)
        cpu = f"{med(name, 'cpu_ms_per_file'):.1f}" if "--cluster" in name else "-"
        print(f"| {name} | {med(name):.1f} | {med(name, 'wall_images_per_second'):.1f} | {med(name) / base:.2f}x | "
              f"{cpu} |")
    print("\n| --task-files (2 workers) | images/s | CPU ms per file |\n|---|---|---|")
    for tf, row in sizes.items():
        print(f"| {tf} | {row['images_per_second']:.1f} | {row['cpu_ms_per_file']:.1f} |")
    print(f"\nper file, the worker's pipeline alone (hash_jobs + Screener.records, this process): "
          f"{per_file:.1f} ms CPU -> {1e3 / per_file:.0f} images/s per core")
    print(f"\n| {a.tiny} tiny files, 2 workers | lines/s | client CPU ms per line | CPU ms per file (client + "
          "workers) |\n|---|---|---|---|")
    for tf, row in overhead.items():
        print(f"| --task-files {tf} | {row['images_per_second']:.0f} | {row['client_cpu_ms_per_line']:.2f} | "
              f"{row['cpu_ms_per_file']:.2f} |")
    print(f"\nLocalCluster start-up: 1 worker {startup[1]:.1f} s, 2 workers {startup[2]:.1f} s")
    print(f"scheduler: {rate:.0f} empty tasks/s (window 64, client and scheduler in one process)")
    save_json(a.out, {"machine": machine(), "load_before": load0, "load_after": load1, "files": nfiles,
                      "args": vars(a), "runs": rows, "task_files": sizes, "startup_seconds": startup,
                      "scheduler_empty_tasks_per_second": rate, "pipeline_cpu_ms_per_file": per_file,
                      "tiny_files": overhead})


if __name__ == "__main__":
    main()
