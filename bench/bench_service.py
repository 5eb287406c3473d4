"""The screening service under load (issue 14): `hashsieve serve` and a load generator on this machine.

    apt-get install wrk                     # the load generator (C, one thread: little CPU per request)
    .venv/bin/python bench/bench_service.py [--n 10M] [--seconds 15]
                                            [--only lookup,batch,match,reload,memory,servers,pools]
                                            [--work /tmp/hashsieve-bench-service] [--out bench/results/service.json]

Sections (each starts its own server on a free local port, and stops it):

* lookup: single-hash POST /v1/lookup against an n-code index (a random query per request), wrk
  with 32 connections, --workers 1 and 2: requests/s, p50/p99/max latency, errors.
* batch: lookups of 1,000 and 10,000 hashes: hashes/s.
* match: POST /v1/match of 1-4 MP JPEGs (wrk cycling through them) against hash_images on the same
  bytes with the same number of processes, measured turn about: images/s and the ratio.
* reload: wrk runs single-hash lookups (every answer checked against the expected bytes) while
  20 new versions of the index are put in place (the 10th one damaged); a probe client measures
  each request's latency, to show the spike at each swap.
* memory: RSS and anonymous memory of the server process before and after 100 reloads (of a 1M
  index, --memory-n).
* servers: the same application under granian and uvicorn (single-hash lookups).
* pools: one upload decoded through hashing.run_in_workers (workers started per call) and through
  the service's persistent process pool.

The machine's load average is recorded before and after each section: other jobs share the cores,
so only figures of one run are compared with each other. The index (built once with the command
line from a generated list) is kept in --work between runs.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

import bench_lists  # noqa: E402
import harness  # noqa: E402
import imagegen  # noqa: E402

import hashsieve as hs  # noqa: E402
from hashsieve.storage import read_metadata  # noqa: E402

CLI = [sys.executable, "-m", "hashsieve.cli"]

# wrk script: POST a body picked at random from BODIES (a file of one JSON body per line) or each
# file of FILES in turn; non_200 counts answers that are not 2xx, or with EXPECT (a file) that are
# not 200, and wrong those that are not exactly the EXPECT body.
WRK_LUA = r"""
local bodies = {}
local expect = os.getenv("EXPECT")
local function read_all(path) local f = assert(io.open(path, "rb")); local d = f:read("*a"); f:close(); return d end
if os.getenv("BODIES") then
  for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
else
  for path in string.gmatch(os.getenv("FILES"), "[^:]+") do bodies[#bodies + 1] = read_all(path) end
end
if expect then expect = read_all(expect) end
local threads = {}
function setup(thread) table.insert(threads, thread) end
local n = 0
bad, wrong = 0, 0           -- globals: done() reads them from each thread
local checking = expect ~= nil
function init(args)
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("SECRET")
  wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/json"
end
function request()
  n = n + 1
  local body = os.getenv("FILES") and bodies[(n % #bodies) + 1] or bodies[math.random(#bodies)]
  return wrk.format(nil, os.getenv("PATH_"), nil, body)
end
if checking then
  function response(status, headers, body)
    if status ~= 200 then bad = bad + 1
    elseif body ~= expect then wrong = wrong + 1 end
  end
end
function done(summary, latency, requests)
  local b, w = 0, 0
  for _, t in ipairs(threads) do b = b + (t:get("bad") or 0); w = w + (t:get("wrong") or 0) end
  io.write(string.format('WRKJSON {"requests": %d, "seconds": %.3f, "errors_connect": %d, "errors_read": %d, ' ..
    '"errors_write": %d, "errors_timeout": %d, "non_200": %d, "wrong": %d, "p50_ms": %.3f, "p90_ms": %.3f, ' ..
    '"p99_ms": %.3f, "max_ms": %.3f}\n', summary.requests, summary.duration / 1e6, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, checking and b or summary.errors.status, w,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args):
    p = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"{' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}")
    return p.stdout


class Server:
    def __init__(self, work, index, *extra, argv=None, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(work, f"server-{self.port}.log")
        argv = argv or CLI + ["serve", index, "--keys", os.path.join(work, "keys.txt"), "--rate", "0",
                              "--audit-log", os.path.join(work, "audit.jsonl")]
        self.proc = subprocess.Popen([str(a) for a in argv + ["--port", self.port] + list(extra)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
                                     env=env, start_new_session=True)
        import httpx
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"server exited:\n{open(self.log_path).read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                sys.exit("server not ready in 300 s")
            time.sleep(0.2)

    def events(self, name):
        out = []
        for line in open(self.log_path).read().split("\n")[:-1]:     # whole lines only
            if line.startswith("{") and f'"{name}"' in line:
                out.append(json.loads(line))
        return out

    def worker_pids(self):
        import psutil
        return [c.pid for c in psutil.Process(self.proc.pid).children() if "serve" in " ".join(c.cmdline())]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def wrk_start(url, path, seconds, connections, env, threads=1):
    script = os.path.join(env["WORK"], "bench.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA)
    return subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s",
                             script, url + path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env, "PATH_": path})


def wrk(url, path, seconds, connections, env, threads=1):
    return wrk_result(wrk_start(url, path, seconds, connections, env, threads))


def wrk_result(p):
    out, err = p.communicate()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"wrk failed:\n{out}\n{err}")
    r = json.loads(line[8:])
    r["requests_per_s"] = round(r["requests"] / r["seconds"], 1)
    return r


def prepare_index(work, n):
    """The n-entry index, built once with the command line from a generated list."""
    os.makedirs(work, exist_ok=True)
    index = os.path.join(work, f"i{harness.size_name(n)}.hsi")
    if not os.path.exists(index):
        lst = os.path.join(work, f"list{harness.size_name(n)}.csv")
        bench_lists.write_list(lst, n)
        t0 = time.perf_counter()
        run("build", lst, "-o", index)
        print(f"built {index} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        os.unlink(lst)
    return index


def make_key(work):
    """A fresh keys file with one key; its secret."""
    keys = os.path.join(work, "keys.txt")
    if os.path.exists(keys):
        os.unlink(keys)
    return run("keys", "add", "bench", "--scopes", "lookup,match,status,metrics", "--file", keys).strip()


def listed_codes(index, count):
    """`count` codes that are in the index: the start of bench_lists.write_list's first chunk."""
    n = read_metadata(index)["count"]
    return np.random.default_rng(1).integers(0, 2**64, min(1 << 20, n), dtype=np.uint64)[:count]


def lookup_bodies(work, codes, per_body):
    path = os.path.join(work, f"bodies-{per_body}.txt")
    with open(path, "w") as f:
        for start in range(0, len(codes) - per_body + 1, per_body):
            f.write(json.dumps({"hashes": [{"kind": "phash", "hash": h}
                                           for h in hs.to_hex(codes[start:start + per_body])]}) + "\n")
    return path


def queries(n_random, hits, seed=5):
    """Random codes (nearly all misses) and some listed codes with a few bits flipped (hits)."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 2**64, n_random, dtype=np.uint64)
    flips = np.zeros(len(hits), dtype=np.uint64)
    for j in range(len(hits)):
        for b in rng.choice(64, rng.integers(0, 6), replace=False):
            flips[j] |= np.uint64(1) << np.uint64(int(b))
    q = np.concatenate([q, hits ^ flips])
    rng.shuffle(q)
    return q


# ====================================================================== sections
def section_lookup(work, index, secret, seconds):
    out = {}
    q = queries(20_000, listed_codes(index, 2_000))
    bodies = lookup_bodies(work, q, 1)
    for workers in (1, 2):
        s = Server(work, index, "--workers", workers)
        try:
            wrk(s.url, "/v1/lookup", 2, 32, {"WORK": work, "SECRET": secret, "BODIES": bodies})   # warm-up
            before = loadavg()
            r = wrk(s.url, "/v1/lookup", seconds, 32, {"WORK": work, "SECRET": secret, "BODIES": bodies})
            r["loadavg_before"], r["loadavg_after"] = before, loadavg()
        finally:
            s.stop()
        out[f"workers_{workers}"] = r
        print(f"lookup, {workers} worker(s): {r['requests_per_s']:,.0f} req/s, p50 {r['p50_ms']} ms, p99 "
              f"{r['p99_ms']} ms, non-200 {r['non_200']}, load {r['loadavg_before']}", file=sys.stderr)
    return out


def section_batch(work, index, secret, seconds):
    out = {}
    s = Server(work, index, "--workers", 1)
    try:
        for size in (1_000, 10_000):
            q = queries(10 * size, listed_codes(index, size // 10))
            bodies = lookup_bodies(work, q, size)
            before = loadavg()
            r = wrk(s.url, "/v1/lookup", seconds, 4, {"WORK": work, "SECRET": secret, "BODIES": bodies})
            r["hashes_per_s"] = round(r["requests_per_s"] * size)
            r["loadavg_before"], r["loadavg_after"] = before, loadavg()
            out[f"batch_{size}"] = r
            print(f"batch of {size}: {r['hashes_per_s']:,} hashes/s ({r['requests_per_s']} req/s, p99 "
                  f"{r['p99_ms']} ms), non-200 {r['non_200']}", file=sys.stderr)
    finally:
        s.stop()
    return out


def jpegs(work, count=24):
    """1-4 MP camera-like JPEGs (quality 88), written once."""
    folder = os.path.join(work, "jpegs")
    sizes = [(1280, 800), (1600, 1200), (2048, 1536), (2400, 1600)]     # 1.0, 1.9, 3.1, 3.8 MP
    paths = [os.path.join(folder, f"{i:03d}.jpg") for i in range(count)]
    if not all(os.path.exists(p) for p in paths):
        os.makedirs(folder, exist_ok=True)
        for i, p in enumerate(paths):
            w, h = sizes[i % len(sizes)]
            with open(p, "wb") as f:
                f.write(imagegen.encode(imagegen.camera_photo(w, h, seed=i), "JPEG", quality=88))
    return paths


def section_match(work, index, secret, seconds):
    paths = jpegs(work)
    datas = [open(p, "rb").read() for p in paths]
    cores = len(os.sched_getaffinity(0))
    s = Server(work, index, "--workers", 1, "--decoders", cores, "--max-upload-mb", 64)
    rounds = []
    try:
        env = {"WORK": work, "SECRET": secret, "FILES": ":".join(paths), "CTYPE": "image/jpeg"}
        wrk(s.url, "/v1/match", 2, 2 * cores, env)                       # warm-up
        t0 = time.perf_counter()
        hs.hash_images(datas, workers=cores)
        # One call about `seconds` long: hash_images starts its workers on each call.
        batch = datas * max(1, round(seconds * len(datas) / (time.perf_counter() - t0) / len(datas)))
        for _ in range(3):
            t0 = time.perf_counter()
            res = hs.hash_images(batch, workers=cores, with_detail=True)
            direct = len(batch) / (time.perf_counter() - t0)
            assert res.ok.all()
            r = wrk(s.url, "/v1/match", seconds, 2 * cores, env)
            rounds.append({"hash_images_per_s": round(direct, 2), "service_images_per_s": r["requests_per_s"],
                           "service_p50_ms": r["p50_ms"], "service_p99_ms": r["p99_ms"], "non_200": r["non_200"],
                           "loadavg": loadavg()})
            print(f"match: service {r['requests_per_s']} img/s vs hash_images {direct:.2f} img/s "
                  f"(non-200 {r['non_200']}, load {loadavg()})", file=sys.stderr)
    finally:
        s.stop()
    service = sum(r["service_images_per_s"] for r in rounds) / len(rounds)
    direct = sum(r["hash_images_per_s"] for r in rounds) / len(rounds)
    mp = [round(w * h / 1e6, 1) for w, h in {imagegen_size(p) for p in paths}]
    return {"rounds": rounds, "service_over_hash_images": round(service / direct, 3), "processes": cores,
            "images": len(paths), "megapixels": sorted(mp)}


def imagegen_size(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def _versions(work, index):
    """Two self-contained versions A (the index) and B (plus a small list) of the served file, and a
    damaged copy of A, in a folder that also holds both provenance tables."""
    folder = os.path.join(work, "reload")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    a = os.path.join(folder, "a", "served.hsi")
    b = os.path.join(folder, "b", "served.hsi")
    os.makedirs(os.path.dirname(a))
    os.makedirs(os.path.dirname(b))
    run("copy", index, a)
    extra = os.path.join(folder, "extra.txt")
    with open(extra, "w") as f:
        f.write("".join(f"{h}\n" for h in hs.to_hex(np.random.default_rng(9).integers(0, 2**64, 1000,
                                                                                      dtype=np.uint64))))
    tmp = os.path.join(folder, "tmp", "served.hsi")
    os.makedirs(os.path.dirname(tmp))
    run("copy", a, tmp)
    run("add", tmp, extra)
    run("copy", tmp, b)
    shutil.rmtree(os.path.dirname(tmp))
    serving = os.path.join(folder, "served.hsi")
    for v in (a, b):                    # each version's provenance table beside the served file
        for name in os.listdir(os.path.dirname(v)):
            if ".lists-" in name:
                os.link(os.path.join(os.path.dirname(v), name), os.path.join(folder, name))
    damaged = os.path.join(folder, "damaged.hsi")
    shutil.copy(a, damaged)
    sec = max(read_metadata(damaged)["sections"], key=lambda s: s["nbytes"])
    with open(damaged, "r+b") as f:
        f.seek(sec["offset"] + sec["nbytes"] // 2)
        byte = f.read(1)
        f.seek(sec["offset"] + sec["nbytes"] // 2)
        f.write(bytes([byte[0] ^ 1]))
    shutil.copy(a, serving)
    return serving, a, b, damaged


def _put(src, serving):
    """A new file at the served path: copied to a temporary name, then renamed over it; the time of
    the rename (the copy is the updater's work, not the service's)."""
    tmp = serving + ".new"
    shutil.copy(src, tmp)
    t = time.time()
    os.replace(tmp, serving)
    return t


class Probe(threading.Thread):
    """One request at a time, every 5 ms: (time, latency, ok) of each, to see each swap's spike."""

    def __init__(self, url, secret, body, expect):
        super().__init__(daemon=True)
        self.url, self.secret, self.body, self.expect = url, secret, body, expect
        self.samples, self.stop = [], threading.Event()

    def run(self):
        import httpx
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.secret}",
                                                      "content-type": "application/json"}, timeout=10) as c:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                r = c.post("/v1/lookup", content=self.body)
                self.samples.append((time.time(), time.perf_counter() - t0,
                                     r.status_code == 200 and r.content == self.expect))
                time.sleep(0.005)


def section_reload(work, index, secret, seconds):
    import httpx
    serving, a, b, damaged = _versions(work, index)
    codes = listed_codes(index, 16)
    body = json.dumps({"hashes": [{"kind": "phash", "hash": h} for h in hs.to_hex(codes)]})
    bodies = os.path.join(work, "reload-body.txt")
    with open(bodies, "w") as f:
        f.write(body + "\n" + body + "\n")
    s = Server(work, serving, "--workers", 2, "--watch", 0.5)
    swaps = []
    try:
        expect = httpx.post(s.url + "/v1/lookup", content=body, headers={"Authorization": f"Bearer {secret}"}).content
        assert json.loads(expect)["results"][0], "the probe hashes must match"
        expect_path = os.path.join(work, "reload-expect.json")
        with open(expect_path, "wb") as f:
            f.write(expect)
        probe = Probe(s.url, secret, body, expect)
        probe.start()
        gen = wrk_start(s.url, "/v1/lookup", 3600, 16, {"WORK": work, "SECRET": secret, "BODIES": bodies,
                                                         "EXPECT": expect_path})
        time.sleep(5)
        handled = 0         # versions loaded or refused, over both processes
        for k in range(20):
            src = damaged if k == 9 else (b if k % 2 == 0 else a)
            t = _put(src, serving)
            handled += 2    # each process loads (or refuses) every version, one after the other
            _wait(lambda: len(s.events("index_reloaded")) + len(s.events("index_refused")) >= handled, 300)
            swaps.append({"at": t, "damaged": src == damaged, "rolled_out_s": round(time.time() - t, 2)})
            time.sleep(1)
        gen.send_signal(2)          # wrk stops and reports on SIGINT
        result = wrk_result(gen)
        probe.stop.set()
        probe.join()
        reloaded = s.events("index_reloaded")
        refused = s.events("index_refused")
        status = httpx.get(s.url + "/metrics", headers={"Authorization": f"Bearer {secret}"}).text
    finally:
        s.stop()
    samples = probe.samples
    lat = np.array([x[1] for x in samples]) * 1000
    base = float(np.median(lat))
    spikes, inside = [], set()
    for sw in swaps:
        window = [k for k, x in enumerate(samples) if sw["at"] <= x[0] <= sw["at"] + sw["rolled_out_s"] + 1]
        inside.update(window)
        spikes.append({"damaged": sw["damaged"], "max_probe_ms": round(max(lat[window]), 2) if window else None,
                       "p99_probe_ms": round(float(np.percentile(lat[window], 99)), 2) if window else None,
                       "probes": len(window), "rolled_out_s": sw["rolled_out_s"]})
    outside = np.array([v for k, v in enumerate(lat) if k not in inside])
    loads = [e["load_seconds"] for e in reloaded]
    out = {"wrk": result, "swaps": 20, "damaged": 1, "reloads_logged": len(reloaded), "refusals_logged": len(refused),
           "workers": 2, "probe_requests": len(samples), "probe_failed_or_wrong": sum(1 for x in samples if not x[2]),
           "probe_median_ms": round(base, 2), "probe_p99_ms": round(float(np.percentile(lat, 99)), 2),
           "outside_swaps": {"probes": len(outside), "p50_ms": round(float(np.median(outside)), 2),
                             "p99_ms": round(float(np.percentile(outside, 99)), 2),
                             "max_ms": round(float(outside.max()), 2)} if len(outside) else None,
           "spikes": spikes, "load_seconds_median": round(float(np.median(loads)), 3) if loads else None,
           "metrics": [ln for ln in status.splitlines() if ln.startswith("hashsieve_reloads")]}
    print(f"reload: {len(reloaded)} reloads and {len(refused)} refusals logged over 2 processes; wrk "
          f"{result['requests_per_s']} req/s, non-200 {result['non_200']}, wrong {result['wrong']}, errors "
          f"{result['errors_connect'] + result['errors_read'] + result['errors_timeout']}; probe median {base:.2f} ms, "
          f"spikes {[x['max_probe_ms'] for x in spikes]}; outside swaps {out['outside_swaps']}", file=sys.stderr)
    return out


MEMORY_N = 1_000_000        # --memory-n


def section_memory(work, index, secret, seconds):
    import psutil
    n = MEMORY_N
    serving, a, b, damaged = _versions(work, prepare_index(work, n))
    s = Server(work, serving, "--workers", 1, "--watch", 0.05)
    try:
        pid = s.worker_pids()[0]

        def mem():
            st = {ln.split(":")[0]: int(ln.split()[1]) for ln in open(f"/proc/{pid}/status") if ln.startswith(
                ("VmRSS", "RssAnon", "RssFile"))}
            return {"rss_mib": round(st["VmRSS"] / 1024, 1), "anon_mib": round(st["RssAnon"] / 1024, 1),
                    "file_mib": round(st["RssFile"] / 1024, 1), "fds": psutil.Process(pid).num_fds(),
                    "maps": sum(1 for _ in open(f"/proc/{pid}/maps"))}

        def reloads():
            return len(s.events("index_reloaded"))

        for k in range(3):             # a few reloads first: the first ones fill caches
            _put(b if k % 2 == 0 else a, serving)
            _wait(lambda: reloads() >= k + 1)
        before = mem()
        t0 = time.perf_counter()
        for k in range(100):
            _put(a if k % 2 == 0 else b, serving)
            _wait(lambda: reloads() >= k + 4)
        after = mem()
    finally:
        s.stop()
    out = {"index_entries": n, "reloads": 100, "before": before, "after": after,
           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"memory over 100 reloads: {before} -> {after}", file=sys.stderr)
    return out


def _wait(cond, timeout=120):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for a reload")
        time.sleep(0.02)


def section_pools(work, index, secret, seconds):
    """Per-upload time of the two ways to decode in other processes: hashing.run_in_workers (which
    starts its workers on each call) and the service's persistent pool (service.Decoders)."""
    import asyncio

    from hashsieve.hashing import run_in_workers
    from hashsieve.scan import ScanOptions, Screener, _worker_died, hash_jobs
    from hashsieve.service import Decoders
    data = open(jpegs(work)[0], "rb").read()
    args = Screener(None, ScanOptions(workers=1)).job_args
    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    for _ in range(10):
        list(run_in_workers([("upload", [data], len(data))], hash_jobs, args, _worker_died, cores))
    per_call = (time.perf_counter() - t0) / 10

    async def persistent():
        d = Decoders(cores)
        await d.warm_up()
        t0 = time.perf_counter()
        for _ in range(10):
            await d.hash(data, args)
        dt = (time.perf_counter() - t0) / 10
        d.close()
        return dt

    pooled = asyncio.run(persistent())
    out = {"run_in_workers_ms": round(per_call * 1000, 1), "persistent_pool_ms": round(pooled * 1000, 1),
           "image_megapixels": 1.0, "loadavg": loadavg()}
    print(f"one 1 MP upload: run_in_workers {out['run_in_workers_ms']} ms, persistent pool "
          f"{out['persistent_pool_ms']} ms", file=sys.stderr)
    return out


def section_servers(work, index, secret, seconds):
    """The same App (hashsieve.service:create_app) under granian and under uvicorn, one process."""
    from hashsieve.service import CONFIG_ENV, ServeConfig
    run_dir = os.path.join(work, "run")
    os.makedirs(run_dir, exist_ok=True)
    cfg = ServeConfig(index=index, keys=os.path.join(work, "keys.txt"), host="127.0.0.1", port=0, workers=1,
                      decoders=1, rate=0, burst=1, max_upload_bytes=32 << 20, max_radius=16,
                      audit_log=os.path.join(work, "audit.jsonl"), watch_seconds=2, header_timeout=10,
                      body_timeout=30, run_dir=run_dir)
    env = {**os.environ, CONFIG_ENV: cfg.to_json()}
    bindir = os.path.dirname(sys.executable)
    q = queries(20_000, listed_codes(index, 2_000))
    bodies = lookup_bodies(work, q, 1)
    argvs = {"granian": [os.path.join(bindir, "granian"), "--interface", "asgi", "--factory", "--log-level", "warning",
                         "--no-ws", "--http", "1", "hashsieve.service:create_app"],
             "uvicorn": [os.path.join(bindir, "uvicorn"), "--factory", "--log-level", "warning", "--no-access-log",
                         "--loop", "uvloop", "--http", "httptools", "hashsieve.service:create_app"]}
    out = {}
    for rnd in range(3):            # turn about, the order alternating: the machine's load drifts
        for name, argv in sorted(argvs.items(), reverse=rnd % 2 == 1):
            s = Server(work, index, argv=argv, env=env)
            try:
                wrk(s.url, "/v1/lookup", 2, 32, {"WORK": work, "SECRET": secret, "BODIES": bodies})
                r = wrk(s.url, "/v1/lookup", seconds, 32, {"WORK": work, "SECRET": secret, "BODIES": bodies})
                r["loadavg"] = loadavg()
            finally:
                s.stop()
            out.setdefault(name, []).append(r)
            print(f"{name}: {r['requests_per_s']:,} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"non-200 {r['non_200']}, load {r['loadavg']}", file=sys.stderr)
    out["median_requests_per_s"] = {name: float(np.median([r["requests_per_s"] for r in out[name]])) for name in argvs}
    return out



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="10M", help="index size (default 10M)")
    ap.add_argument("--seconds", type=int, default=15, help="length of each wrk run (default 15)")
    ap.add_argument("--only", default="lookup,batch,match,reload,memory,servers,pools")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "hashsieve-bench-service"))
    ap.add_argument("--memory-n", default="1M", help="index size of the memory section (default 1M)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    global MEMORY_N
    MEMORY_N = harness.parse_size(a.memory_n)
    if shutil.which("wrk") is None:
        sys.exit("needs the load generator wrk: apt-get install wrk")
    n = harness.parse_size(a.n)
    index, secret = prepare_index(a.work, n), make_key(a.work)
    result = {"machine": harness.machine(), "cpus": len(os.sched_getaffinity(0)), "index_entries": n,
              "loadavg_start": loadavg()}
    only = a.only.split(",")
    for name in only:
        t0 = time.perf_counter()
        result[name] = globals()[f"section_{name}"](a.work, index, secret, a.seconds)
        result[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        if a.out:
            harness.save_json(a.out, result, indent=2)
    result["loadavg_end"] = loadavg()
    print(json.dumps(result, indent=2))
    if a.out:
        harness.save_json(a.out, result, indent=2)


if __name__ == "__main__":
    main()
