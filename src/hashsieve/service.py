"""The screening service behind ``hashsieve serve``: an HTTP API over an index file.

One raw ASGI application (no framework: seven routes) served by granian (docs/service.md says
why, with the measurements). Each server process (``--workers``) opens the index memory-mapped,
so the processes share its pages, and runs:

* the event loop, which answers requests; a lookup of more than ``INLINE_HASHES`` hashes runs in a
  thread (the index and SQLite release the GIL), so a big batch never stalls the loop;
* a pool of decoder processes (``--decoders``) that decode and hash uploads with
  scan.hash_jobs; the answer is built by scan.Screener.records, so it is the scan report's;
* a watcher thread that polls the index file and the keys file. A new index version is opened
  and fully verified (every checksum and invariant) in the watcher, under a lock file the
  server's processes share, so they re-read it one after another, never all at once; then the
  event loop swaps it in. Requests keep the version they started with; the old version's
  provenance table is closed and its memory map released when the last of them ends. A file
  that fails to open or verify is refused: the old version keeps serving, /metrics counts it
  and the log and /v1/status say why.

Per-kind logic (which kinds the index holds, reading a lookup's {"kind", "hash"}, the answer's
"hashes") lives in the five functions under "Kinds", the one place to change for indexes that
hold several kinds.
"""
import asyncio
import concurrent.futures
from concurrent.futures.process import BrokenProcessPool
import fcntl
import json
import math
import multiprocessing
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import warnings


from .keys import KeyRing, KeysFileError, read_keys
from .lists import IndexOpenError, open_lists
from .scan import Item, Limits, ScanOptions, Screener, hash_jobs
from .storage import IndexFormatError, _file_ident

__all__ = ["ServeConfig", "ServeError", "create_app", "load_version", "serve"]

CONFIG_ENV = "HASHSIEVE_SERVE_CONFIG"
MAX_BATCH = 10_000              # hashes in one /v1/lookup
MAX_LOOKUP_BODY = 4 << 20       # bytes of a /v1/lookup body: 10,000 hashes take about 0.5 MB
MAX_MATCHES = 100_000           # match records in one /v1/lookup answer (about 8 MB of JSON)
MAX_PARTS = 100                 # parts of a multipart upload: a form sends a few
MAX_DRAIN = 8 << 20             # bytes of a body over its limit still read before the 413 (see _read_body)
INLINE_HASHES = 64              # lookups of more hashes run in a thread, off the event loop
DIGEST_KINDS = ("md5", "sha1")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")
_HEX = re.compile(r"[0-9a-fA-F]+\Z")


class ServeError(ValueError):
    """The service cannot start with this configuration; the message names the fix."""


class ServeConfig:
    """Everything a server process needs, passed to granian's processes as JSON in CONFIG_ENV."""

    FIELDS = ("index", "keys", "host", "port", "workers", "decoders", "rate", "burst", "max_upload_bytes",
              "max_radius", "audit_log", "watch_seconds", "header_timeout", "body_timeout", "run_dir")

    def __init__(self, **kw):
        for name in self.FIELDS:
            setattr(self, name, kw[name])

    def to_json(self):
        return json.dumps({name: getattr(self, name) for name in self.FIELDS})

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


# ====================================================================== kinds
# What the service does per kind, asked of the kind objects of the index (kinds.py).
def index_kinds(lindex):
    """{kind name: HashKind} of the perceptual kinds the index holds, in file order."""
    return {k.name: k for k in lindex.kinds}


def list_counts(entry, kinds):
    """{kind: entries} of one list as the index metadata records it (files from before several kinds
    count their one perceptual kind as 'perceptual')."""
    if "counts" in entry:
        return entry["counts"]
    return {next(iter(kinds)): entry.get("perceptual", 0), "md5": entry.get("md5", 0), "sha1": entry.get("sha1", 0)}


def parse_lookup_hash(kinds, item, j):
    """(kind name, lower-case hex digits) of hashes[j] of a lookup, {"kind", "hash"}. HTTPError 400
    naming the field otherwise."""
    if type(item) is dict and len(item) == 2:         # the common case, quickly
        name, text = item.get("kind"), item.get("hash")
        kind = kinds.get(name) if type(name) is str else None
        if kind is not None and type(text) is str and len(text) == kind.hex_digits and _HEX.match(text):
            return name, text.lower()
    where = f"hashes[{j}]"
    if not isinstance(item, dict):
        raise HTTPError(400, f"{where} must be an object {{\"kind\": ..., \"hash\": ...}}", where)
    extra = set(item) - {"kind", "hash"}
    if extra:
        raise HTTPError(400, f"{where} has unknown field(s) {', '.join(sorted(extra))}; it takes kind and hash",
                        where)
    name, text = item.get("kind"), item.get("hash")
    bits = None
    if isinstance(name, str):          # (a list or an object is no kind, and no dict key either)
        bits = kinds[name].bits if name in kinds else {"md5": 128, "sha1": 160}.get(name)
    if bits is None:
        raise HTTPError(400, f"{where}.kind must be one of {', '.join(list(kinds) + list(DIGEST_KINDS))} "
                             f"(the kinds this index holds), got {name!r}", f"{where}.kind")
    digits = bits // 4
    if not isinstance(text, str):
        raise HTTPError(400, f"{where}.hash must be a string of {digits} hex digits, got {type(text).__name__}",
                        f"{where}.hash")
    s = text[2:] if text[:2] in ("0x", "0X") else text
    if len(s) != digits or not all(c in "0123456789abcdefABCDEF" for c in s):
        raise HTTPError(400, f"{where}.hash must be {digits} hex digits (a {bits}-bit {name} hash), got "
                             f"{text[:80]!r}", f"{where}.hash")
    return name, s.lower()


def radius_cap(kind, max_radius):
    """The widest radius a lookup may ask of a kind: --max-radius, but never below the kind's default
    (PDQ's 31 with the default cap of 16) nor above its width."""
    return min(kind.bits, max(max_radius, kind.default_radius))


def check_radius(kinds, radius, max_radius):
    """The lookup's radius for the perceptual kinds it asks (None: each kind's default); HTTPError 400
    naming the limits otherwise."""
    if radius is None:
        return None
    top = min(radius_cap(k, max_radius) for k in kinds.values())
    if type(radius) is not int or not 0 <= radius <= top:
        raise HTTPError(400, f"radius must be an integer from 0 to {top} bits for the kinds asked "
                             f"({', '.join(kinds)}; the code width and this server's --max-radius {max_radius}), "
                             f"got {radius!r}", "radius")
    return radius


def lookup_matches(lindex, name, values, radius):
    """Match records of each value of one kind, in order."""
    if name in DIGEST_KINDS:
        return lindex.match_digests(values, name)
    kind = lindex.kind_named(name)
    return lindex.match(kind.from_checked_hex(values), radius, kind=name)   # (parse_lookup_hash checked them)


def answer_hashes(record):
    """The answer's "hashes" of a scan record: each hash computed, with its score and flags as the
    record's per-kind "hashes" gives them, then the file's digests."""
    out = [{"kind": name, **fields} for name, fields in (record.get("hashes") or {}).items()
           if fields.get("hash") is not None]
    for name in DIGEST_KINDS:
        if record[name] is not None:
            out.append({"kind": name, "hash": record[name]})
    return out


# ====================================================================== errors
class HTTPError(Exception):
    def __init__(self, status, message, field=None, headers=()):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, list(headers)


class ClientGone(Exception):
    pass


# ====================================================================== index versions
class Version:
    """One loaded version of the index; closed when it is retired and its last request ends."""

    def __init__(self, lindex, screener, generation):
        self.lindex, self.screener, self.generation = lindex, screener, generation
        self.kinds = index_kinds(lindex)
        source = next(iter(lindex.indexes.values())).snapshot().source    # (every part is in one file)
        self.ident = source.ident
        self.info = source.layout.info()
        del self.info["sections"], self.info["checksums"], self.info["metadata"]
        # Per list counts as saved in the index's metadata (the table's own count takes seconds at 10M).
        self.lists = lindex.info.get("lists", [])
        self.counts = {name: len(index) for name, index in lindex.indexes.items()}
        for name in DIGEST_KINDS:
            self.counts[name] = sum(list_counts(x, self.kinds).get(name, 0) for x in self.lists)
        self.loaded_at = time.time()
        self.users = 0
        self.retired = False

    def release(self):
        self.users -= 1
        if self.retired and self.users == 0:
            self.close()

    def retire(self):
        self.retired = True
        if self.users == 0:
            self.close()

    def close(self):
        if self.lindex is not None:
            self.lindex.close()
            # Nothing else refers to the index: its memory map goes with these references.
            self.lindex = self.screener = None


def load_version(path, generation, max_upload_bytes):
    """Open and fully verify the index at path; IndexOpenError / IndexFormatError say why not."""
    lindex = open_lists(path)
    try:
        lindex.verify()
        opts = ScanOptions(workers=1, limits=Limits(max_file_bytes=max_upload_bytes))
        return Version(lindex, Screener(lindex, opts), generation)
    except BaseException:
        lindex.close()
        raise


# ====================================================================== metrics
class Metrics:
    """Counters and histograms of one process, in Prometheus' text format; with several server
    processes each writes its own to the run folder every second and /metrics adds them up."""

    def __init__(self):
        self.counters = {}          # (name, labels tuple) -> value
        self.histograms = {}        # (name, labels tuple) -> [bucket counts..., +Inf count, sum]
        self.gauges = {}            # (name, labels tuple) -> value (per process)

    def inc(self, name, labels=(), by=1):
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + by

    def observe(self, name, labels, value):
        h = self.histograms.get((name, labels))
        if h is None:
            h = self.histograms[(name, labels)] = [0] * (len(LATENCY_BUCKETS) + 2)
        for k, b in enumerate(LATENCY_BUCKETS):
            if value <= b:
                h[k] += 1
                break
        else:
            h[len(LATENCY_BUCKETS)] += 1
        h[-1] += value

    def snapshot(self):
        return {"counters": [[n, list(lb), v] for (n, lb), v in self.counters.items()],
                "histograms": [[n, list(lb), h] for (n, lb), h in self.histograms.items()],
                "gauges": [[n, list(lb), v] for (n, lb), v in self.gauges.items()]}

    @staticmethod
    def render(snapshots):
        """Prometheus text of {pid: snapshot}: counters and histograms summed, gauges per process."""
        counters, hists, gauges = {}, {}, {}
        for pid, snap in snapshots.items():
            for n, lb, v in snap["counters"]:
                key = (n, tuple(map(tuple, lb)))
                counters[key] = counters.get(key, 0) + v
            for n, lb, h in snap["histograms"]:
                key = (n, tuple(map(tuple, lb)))
                old = hists.get(key)
                hists[key] = list(h) if old is None else [a + b for a, b in zip(old, h)]
            for n, lb, v in snap["gauges"]:
                gauges[(n, tuple(map(tuple, lb)) + (("process", str(pid)),))] = v

        def fmt(labels):
            if not labels:
                return ""
            return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"

        lines = []
        for kind, table in (("counter", counters), ("gauge", gauges)):
            for name in sorted({n for n, _ in table}):
                lines.append(f"# HELP {name} {_HELP.get(name, name)}")
                lines.append(f"# TYPE {name} {kind}")
                for (n, lb), v in sorted(table.items()):
                    if n == name:
                        lines.append(f"{name}{fmt(lb)} {v}")
        for name in sorted({n for n, _ in hists}):
            lines.append(f"# HELP {name} {_HELP.get(name, name)}")
            lines.append(f"# TYPE {name} histogram")
            for (n, lb), h in sorted(hists.items()):
                if n != name:
                    continue
                total = 0
                for b, c in zip(LATENCY_BUCKETS + (math.inf,), h):
                    total += c
                    le = "+Inf" if b == math.inf else repr(b)
                    lines.append(f"{name}_bucket{fmt(lb + (('le', le),))} {total}")
                lines.append(f"{name}_sum{fmt(lb)} {h[-1]}")
                lines.append(f"{name}_count{fmt(lb)} {total}")
        return "\n".join(lines) + "\n"


_HELP = {
    "hashsieve_requests_total": "HTTP requests answered, by endpoint and status",
    "hashsieve_request_duration_seconds": "Time to answer a request, by endpoint and status",
    "hashsieve_matches_total": "Match records returned, by endpoint",
    "hashsieve_hashes_looked_up_total": "Hashes looked up by /v1/lookup",
    "hashsieve_images_total": "Uploads decoded by /v1/match, by outcome",
    "hashsieve_reloads_total": "New index versions swapped in",
    "hashsieve_reloads_refused_total": "New index files refused (damaged, foreign or unreadable); the old version serves",
    "hashsieve_index_generation": "Index versions loaded by this process (1 = the one it started with)",
    "hashsieve_index_entries": "Entries of the index version in service, by kind",
    "hashsieve_index_loaded_timestamp_seconds": "When the index version in service was loaded",
    "hashsieve_index_current": "1 if the index version in service is the file on disk, 0 if that file was refused",
}


# ====================================================================== rate limit, audit log
class RateLimiter:
    """A token bucket per key: `rate` requests/s with bursts of `burst`. rate 0: no limit."""

    def __init__(self, rate, burst):
        self.rate, self.burst = rate, max(1.0, burst)
        self.buckets = {}           # key name -> [tokens, time]

    def retry_after(self, name, now):
        """0 if the request may go ahead (and takes a token), else the seconds to wait."""
        if not self.rate:
            return 0
        b = self.buckets.get(name)
        if b is None:
            b = self.buckets[name] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] >= 1:
            b[0] -= 1
            return 0
        return (1 - b[0]) / self.rate


class AuditLog:
    """JSON lines, one per request, each written with one write() to a file opened for appending,
    so the lines of several server processes never interleave. Never image bytes nor hashes."""

    def __init__(self, path):
        self.fd = 1 if path in (None, "-") else os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, entry):
        try:
            os.write(self.fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        except OSError as e:         # a full disk must not take the screening down; say so once a line
            print(f"hashsieve serve: cannot write the audit log ({e})", file=sys.stderr, flush=True)


def log_event(event, **fields):
    """One JSON line on stderr: what the service did (loaded, reloaded, refused...)."""
    line = {"time": _iso(time.time()), "event": event, "process": os.getpid(), **fields}
    print(json.dumps(line), file=sys.stderr, flush=True)


def _iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# ====================================================================== decoding
def _decoder_init(parent_pid):
    """A decoder process: quiet decoders, and exit with the server process that started it."""
    import signal

    from .hashing import _watch_parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


class Decoders:
    """A process pool running scan.hash_jobs on uploads; a pool broken by a crashing decoder is
    replaced, and the upload retried once there (the crash may have been another upload's)."""

    def __init__(self, n):
        self.n = n
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["hashsieve.scan"])
        self._ctx = ctx
        self.pool = self._new()

    def _new(self):
        return concurrent.futures.ProcessPoolExecutor(self.n, mp_context=self._ctx, initializer=_decoder_init,
                                                      initargs=(os.getpid(),))

    async def hash(self, data, job_args):
        for attempt in (1, 2):
            pool = self.pool
            try:
                return (await asyncio.wrap_future(pool.submit(hash_jobs, [data], *job_args)))[0]
            except BrokenProcessPool:
                if self.pool is pool:
                    self.pool = self._new()
                    pool.shutdown(wait=False)
        return None, None, False, None, None, ("the decoder process died on this upload (a decoder crash or "
                                               "out of memory); it was not hashed")

    async def warm_up(self):
        """Start every decoder process now, not on the first uploads."""
        await asyncio.gather(*(asyncio.wrap_future(self.pool.submit(time.sleep, 0.05)) for _ in range(self.n)))

    def close(self):
        # Waits for the decoders to exit: without it the process's exit would close the queue that
        # tells them to, and then wait for them forever.
        self.pool.shutdown(wait=True, cancel_futures=True)


# ====================================================================== the application
ROUTES = {  # path -> (endpoint name for metrics and the audit log, methods, scope or None for any key)
    "/v1/match": ("match", ("POST",), "match"),
    "/v1/lookup": ("lookup", ("POST",), "lookup"),
    "/v1/status": ("status", ("GET",), "status"),
    "/metrics": ("metrics", ("GET",), "metrics"),
    "/openapi.json": ("openapi", ("GET",), None),
    "/healthz": ("healthz", ("GET",), False),
    "/readyz": ("readyz", ("GET",), False),
}


class App:
    """The ASGI application of one server process."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.metrics = Metrics()
        self.keys_ident, self.keys = self._read_keys()
        self.version = None
        self.generation = 0
        self.refused = None         # {"at", "reason", "ident"} of the last file refused
        self.limiter = RateLimiter(cfg.rate / cfg.workers, cfg.burst / cfg.workers)
        self.audit = AuditLog(cfg.audit_log)
        self.loop = None
        self.stop = threading.Event()
        self.lookup_threads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="hashsieve-lookup")
        self.decoders = None
        self.uploads = None         # semaphore: uploads read or decoding at once
        self._swap(self._load(initial=True))
        self._last_ident = self.version.ident   # the watcher's: the file last loaded or refused

    # ------------------------------------------------------------ keys and index versions
    def _read_keys(self):
        try:
            st = os.stat(self.cfg.keys)
            ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            ident = None
        keys = read_keys(self.cfg.keys)
        if not keys:                # a keys file moved away or emptied must not lock every client out
            raise KeysFileError(f"{self.cfg.keys} is missing or holds no keys; the keys in service are kept")
        return ident, KeyRing(keys)

    def _load(self, initial=False):
        """Load the file at the index path (one process at a time); a new Version or the error."""
        with open(os.path.join(self.cfg.run_dir, "reload.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = time.time()
            try:
                got = load_version(self.cfg.index, self.generation + 1, self.cfg.max_upload_bytes)
            except Exception as e:      # a new file that fails to load in any way is refused, with the reason
                if initial:
                    raise
                got = e if isinstance(e, (IndexOpenError, IndexFormatError, OSError, sqlite3.Error)) else \
                    IndexFormatError(f"{self.cfg.index}: cannot be loaded ({type(e).__name__}: {e})")
            finally:
                ended = time.time()     # (before the next process may start)
                fcntl.flock(lock, fcntl.LOCK_UN)
            got.load_started, got.load_seconds = started, ended - started
            return got

    def _swap(self, new):
        old, self.version = self.version, new
        self.generation = new.generation
        self.refused = None
        m = self.metrics
        m.gauges[("hashsieve_index_generation", ())] = new.generation
        m.gauges[("hashsieve_index_loaded_timestamp_seconds", ())] = round(new.loaded_at, 3)
        m.gauges[("hashsieve_index_current", ())] = 1
        for name, n in new.counts.items():
            m.gauges[("hashsieve_index_entries", (("kind", name),))] = n
        if old is not None:
            m.inc("hashsieve_reloads_total")
            old.retire()
        log_event("index_loaded" if old is None else "index_reloaded", index=self.cfg.index,
                  generation=new.generation, created=new.info["created_iso"], entries=new.info["count"],
                  load_started=_iso(new.load_started), load_seconds=round(new.load_seconds, 4))

    def _refuse(self, error):
        self.refused = {"at": _iso(time.time()), "reason": str(error)}
        self.metrics.inc("hashsieve_reloads_refused_total")
        self.metrics.gauges[("hashsieve_index_current", ())] = 0
        log_event("index_refused", index=self.cfg.index, reason=str(error), load_started=_iso(error.load_started),
                  load_seconds=round(error.load_seconds, 4),
                  serving_generation=self.version.generation, serving_created=self.version.info["created_iso"])

    def _watch(self):
        """Thread: poll the index and keys files; load a new index version and hand it to the loop."""
        while not self.stop.wait(self.cfg.watch_seconds):
            try:
                self._watch_once()
            except Exception as e:          # the watcher must outlive any surprise; say what it was
                log_event("watcher_error", error=f"{type(e).__name__}: {e}")

    def _watch_once(self):
        try:
            st = os.stat(self.cfg.keys)
            keys_ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            keys_ident = None
        if keys_ident != self.keys_ident:
            try:
                ident, keys = self._read_keys()
                self.loop.call_soon_threadsafe(self._set_keys, ident, keys)
            except KeysFileError as e:
                self.keys_ident = keys_ident
                log_event("keys_refused", keys=self.cfg.keys, reason=str(e))
        try:
            ident = _file_ident(os.stat(self.cfg.index))
        except FileNotFoundError:
            return                  # mid-replace, or removed: keep serving
        if ident == self._last_ident:
            return
        got = self._load()
        if isinstance(got, Version):
            self._last_ident = got.ident
            self.loop.call_soon_threadsafe(self._swap, got)
            return
        try:
            still = _file_ident(os.stat(self.cfg.index)) == ident
        except OSError:
            still = False
        if still:                   # not an update caught half-way (then the next poll loads it): refused
            self._last_ident = ident
            self.loop.call_soon_threadsafe(self._refuse, got)

    def _set_keys(self, ident, keys):
        self.keys_ident, self.keys = ident, keys
        log_event("keys_loaded", keys=self.cfg.keys, count=len(keys))

    async def _metrics_writer(self):
        path = os.path.join(self.cfg.run_dir, f"metrics-{os.getpid()}.json")
        while True:
            await asyncio.sleep(1.0)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.metrics.snapshot(), f)
            os.replace(tmp, path)

    def _all_metrics(self):
        snaps = {os.getpid(): self.metrics.snapshot()}
        if self.cfg.workers > 1:
            for name in os.listdir(self.cfg.run_dir):
                m = re.fullmatch(r"metrics-(\d+)\.json", name)
                if m and int(m.group(1)) != os.getpid():
                    try:
                        with open(os.path.join(self.cfg.run_dir, name)) as f:
                            snap = json.load(f)
                    except (OSError, ValueError):
                        continue
                    try:
                        os.kill(int(m.group(1)), 0)
                    except ProcessLookupError:
                        snap["gauges"] = []      # a process gone: its counts stay, its gauges do not
                    snaps[int(m.group(1))] = snap
        return Metrics.render(snaps)

    # ------------------------------------------------------------ ASGI
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _REQUEST_ID.match(rid):
            rid = os.urandom(8).hex()
        route = ROUTES.get(scope["path"])
        endpoint = route[0] if route else "other"
        audit = {"time": _iso(time.time()), "request_id": rid, "key": None, "endpoint": endpoint}
        try:
            status, body, extra = await self._handle(scope, receive, headers, route, audit)
        except HTTPError as e:
            status, extra = e.status, e.headers
            body = {"error": e.message, "field": e.field, "request_id": rid}
        except ClientGone:
            status, body, extra = 499, None, []
        except Exception as e:      # a bug in hashsieve, never the client's doing
            status, extra = 500, []
            body = {"error": f"internal error ({type(e).__name__}); this is a bug in hashsieve, please report it "
                             f"with request id {rid}", "field": None, "request_id": rid}
            log_event("internal_error", request_id=rid, traceback=traceback.format_exc())
        if body is not None:
            try:
                await self._send(send, status, body, extra + [(b"x-request-id", rid.encode())])
            except OSError:             # the client went away before its answer
                status = 499
        self.metrics.inc("hashsieve_requests_total", (("endpoint", endpoint), ("status", str(status))))
        self.metrics.observe("hashsieve_request_duration_seconds", (("endpoint", endpoint), ("status", str(status))),
                             time.perf_counter() - t0)
        if route is not None and route[2] is not False:
            audit["status"] = status
            self.audit.write(audit)

    async def _lifespan(self, receive, send):
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                self.uploads = asyncio.Semaphore(4 * self.cfg.decoders)
                self.decoders = Decoders(self.cfg.decoders)
                await self.decoders.warm_up()
                self._watcher = threading.Thread(target=self._watch, name="hashsieve-watch", daemon=True)
                self._watcher.start()
                if self.cfg.workers > 1:
                    self._writer = asyncio.ensure_future(self._metrics_writer())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                self.stop.set()
                self.decoders.close()
                self.lookup_threads.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _send(send, status, body, headers):
        if isinstance(body, str):
            data, ctype = body.encode(), b"text/plain; version=0.0.4; charset=utf-8"
        else:
            data, ctype = json.dumps(body, separators=(",", ":")).encode(), b"application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())] + headers})
        await send({"type": "http.response.body", "body": data})

    async def _handle(self, scope, receive, headers, route, audit):
        if route is None:
            raise HTTPError(404, f"no endpoint {scope['path'][:200]!r}; see /openapi.json")
        endpoint, methods, scope_needed = route
        if scope["method"] not in methods:
            raise HTTPError(405, f"{scope['path']} takes {' or '.join(methods)}, not {scope['method']}",
                            headers=[(b"allow", ", ".join(methods).encode())])
        if scope_needed is False:
            return await getattr(self, f"_{endpoint}")()
        if [name for name, _ in scope["headers"] if name == b"authorization"][1:]:
            # (headers keeps the last: a proxy that checked the first must not see another one used)
            raise HTTPError(400, "more than one Authorization header; send one, Authorization: Bearer <secret>")
        key = self._authenticate(headers)
        audit["key"] = key.name
        if scope_needed is not None and scope_needed not in key.scopes:
            raise HTTPError(403, f"key {key.name!r} lacks the {scope_needed!r} scope this endpoint needs (it has "
                                 f"{', '.join(sorted(key.scopes))}); add a key with --scopes {scope_needed}")
        wait = self.limiter.retry_after(key.name, time.monotonic())
        if wait:
            raise HTTPError(429, f"key {key.name!r} is over its rate limit of {self.cfg.rate:g} requests/s "
                                 f"(burst {self.cfg.burst:g}); retry after the Retry-After seconds",
                            headers=[(b"retry-after", str(math.ceil(wait)).encode())])
        version = self.version      # the version this request uses to its end, whatever swaps meanwhile
        version.users += 1
        try:
            return await getattr(self, f"_{endpoint}")(version, receive, headers, audit)
        finally:
            version.release()

    def _authenticate(self, headers):
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, secret = value.partition(" ")
        if not value:
            raise HTTPError(401, "no API key: send the header Authorization: Bearer <secret> (hashsieve keys add)",
                            headers=[(b"www-authenticate", b'Bearer realm="hashsieve"')])
        key = self.keys.check(secret.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise HTTPError(401, "the API key is not valid (wrong, revoked or malformed); send "
                                 "Authorization: Bearer <secret> with a secret from `hashsieve keys add`",
                            headers=[(b"www-authenticate", b'Bearer realm="hashsieve", error="invalid_token"')])
        return key

    async def _read_body(self, receive, headers, limit, what):
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        too_big = HTTPError(413, f"the body is {declared:,} bytes, above the {limit:,}-byte limit of {what}"
                            if declared is not None else f"the body is over the {limit:,}-byte limit of {what}")
        # A body over the limit is still read (and dropped) up to MAX_DRAIN bytes past it before the 413:
        # answered with it unread, the connection is closed on data the kernel then resets it for, and a
        # client still sending sees the reset, not the answer. Further past, reading it costs too much.
        if declared is not None and declared > limit + MAX_DRAIN:
            raise too_big
        # A timer that cancels this task: cheaper than asyncio.wait_for, which starts a task per request.
        task, expired = asyncio.current_task(), []
        timer = self.loop.call_later(self.cfg.body_timeout, lambda: expired.append(task.cancel()))
        chunks, n = [], 0
        try:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ClientGone
                part = msg.get("body", b"")
                n += len(part)
                if n > limit + MAX_DRAIN:
                    raise too_big
                if n <= limit:
                    chunks.append(part)
                if not msg.get("more_body"):
                    if n > limit:
                        raise too_big
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if not expired:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise HTTPError(408, f"the body did not arrive within {self.cfg.body_timeout:g} s; send it faster "
                                 "or in a smaller request") from None
        finally:
            timer.cancel()

    # ------------------------------------------------------------ endpoints
    async def _lookup(self, version, receive, headers, audit):
        body = await self._read_body(receive, headers, MAX_LOOKUP_BODY, "/v1/lookup")
        try:
            req = json.loads(body)
        except RecursionError:
            raise HTTPError(400, "the body nests JSON too deeply; a lookup is one object holding a list") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the body is not valid JSON ({e}); send "
                                 '{"hashes": [{"kind": "phash", "hash": "<hex>"}, ...]}') from None
        if not isinstance(req, dict):
            raise HTTPError(400, 'the body must be a JSON object {"hashes": [...], "radius": optional}')
        extra = set(req) - {"hashes", "radius"}
        if extra:
            raise HTTPError(400, f"unknown field(s) {', '.join(sorted(extra))}; a lookup takes hashes and radius",
                            sorted(extra)[0])
        items = req.get("hashes")
        if not isinstance(items, list):
            raise HTTPError(400, 'hashes must be a list of {"kind": ..., "hash": ...}', "hashes")
        if len(items) > MAX_BATCH:
            raise HTTPError(413, f"{len(items):,} hashes in one lookup, above the limit of {MAX_BATCH:,}; "
                                 "split the batch", "hashes")
        kinds = version.kinds
        by_kind = {}
        for j, item in enumerate(items):
            name, value = parse_lookup_hash(kinds, item, j)
            pos, values = by_kind.setdefault(name, ([], []))
            pos.append(j)
            values.append(value)
        radius = check_radius({n: kinds[n] for n in by_kind if n in kinds} or kinds, req.get("radius"),
                              self.cfg.max_radius)

        def run():
            # In chunks, counting: a lookup whose answer would pass MAX_MATCHES (hashes amid a cluster
            # of near-identical entries, repeated) stops there, not after building gigabytes of records.
            results, total = [None] * len(items), 0
            for name, (pos, values) in by_kind.items():
                for at in range(0, len(values), INLINE_HASHES):
                    found = lookup_matches(version.lindex, name, values[at:at + INLINE_HASHES], radius)
                    total += sum(map(len, found))
                    if total > MAX_MATCHES:
                        raise HTTPError(422, f"the lookup matches more than {MAX_MATCHES:,} entries; ask fewer "
                                             "hashes at once or a smaller radius", "hashes")
                    for j, one in zip(pos[at:], found):
                        results[j] = one
            return results

        if len(items) > INLINE_HASHES:
            results = await self.loop.run_in_executor(self.lookup_threads, run)
        else:
            results = run()
        self._count_matches("lookup", [m for found in results for m in found], audit)
        self.metrics.inc("hashsieve_hashes_looked_up_total", by=len(items))
        audit["hashes"] = len(items)
        return 200, {"results": results}, []

    async def _match(self, version, receive, headers, audit):
        async with self.uploads:
            body = await self._read_body(receive, headers, self.cfg.max_upload_bytes,
                                         f"an upload (--max-upload-mb {self.cfg.max_upload_bytes / (1 << 20):g})")
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if ctype.split(";", 1)[0].strip().lower() == "multipart/form-data":
                body = multipart_field(body, ctype, "image")
            if not body:
                raise HTTPError(400, "the upload is empty: send the image as the body, or as the multipart field "
                                     "'image'", "image")
            result = await self.decoders.hash(body, version.screener.job_args)
            del body
        rec = version.screener.records([Item("upload", None)], [result])[0]
        self.metrics.inc("hashsieve_images_total", (("outcome", "hashed" if rec["hash"] else "not_an_image"),))
        self._count_matches("match", rec["matches"], audit)
        answer = {"hashes": answer_hashes(rec), "matches": rec["matches"]}
        if rec["error"] is not None:
            if not rec["matches"]:
                raise HTTPError(422, f"not hashed: {rec['error']}", "image")
            answer["error"] = rec["error"]      # not an image, but its bytes are on a list
        return 200, answer, []

    def _count_matches(self, endpoint, matches, audit):
        if matches:
            self.metrics.inc("hashsieve_matches_total", (("endpoint", endpoint),), len(matches))
        audit["matches"] = len(matches)
        audit["matched"] = sorted({(m["list"], m["id"]) for m in matches}, key=str)

    async def _status(self, version, receive, headers, audit):
        v = version
        lists = [{"name": x["name"], **{name: 0 for name in (*v.kinds, *DIGEST_KINDS)}, **list_counts(x, v.kinds),
                  "updated": x["updated"], "sha256": x["sha256"]} for x in v.lists]
        counts = v.counts
        refused = self.refused
        return 200, {"index": self.cfg.index, "generation": v.generation, "loaded_at": _iso(v.loaded_at),
                     "created": v.info["created_iso"], "file_size": v.info["file_size"],
                     "kinds": {name: {"bits": k.bits, "default_radius": k.default_radius} for name, k in v.kinds.items()},
                     "counts": counts, "lists": lists, "current": refused is None, "refused": refused,
                     "process": os.getpid()}, []

    async def _metrics(self, version, receive, headers, audit):
        return 200, self._all_metrics(), []

    async def _openapi(self, version, receive, headers, audit):
        return 200, openapi(self.cfg), []

    async def _healthz(self):
        return 200, {"ok": True}, []

    async def _readyz(self):
        v = self.version
        if v is None or self.loop is None:
            raise HTTPError(503, "the index is not loaded yet")
        return 200, {"ready": True, "generation": v.generation, "current": self.refused is None}, []


def multipart_field(body, content_type, name):
    """The bytes of the multipart/form-data field `name`; HTTPError 400 naming what is wrong."""
    m = re.search(r'boundary=(?:"([^"]{1,70})"|([^;\s]{1,70}))', content_type)
    if m is None:
        raise HTTPError(400, "multipart/form-data without a boundary in its Content-Type", "image")
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    # Found part by part (no split: an upload of a million tiny parts would be a million bytes objects).
    at, parts = body.find(delim), 0
    while at >= 0 and not body.startswith(b"--", at + len(delim)):
        parts += 1
        if parts > MAX_PARTS:
            raise HTTPError(400, f"the multipart body has more than {MAX_PARTS} parts; send the image as the "
                                 f"field {name!r} of a form of a few fields (or as the whole body)", name)
        start = at + len(delim)
        at = body.find(delim, start)
        end = len(body) if at < 0 else at
        head_end = body.find(b"\r\n\r\n", start, end)
        if head_end < 0:
            continue
        disposition = next((line for line in body[start:head_end].split(b"\r\n")
                            if line.lower().startswith(b"content-disposition:")), b"")
        field = re.search(rb'[;\s]name="([^"]*)"', disposition)
        if field and field.group(1) == name.encode():
            data = body[head_end + 4:end]
            return data[:-2] if data.endswith(b"\r\n") else data
    raise HTTPError(400, f"the multipart body has no field {name!r}; send the image as the field {name!r} "
                         "(or as the whole body)", name)


def openapi(cfg):
    """The OpenAPI 3.1 description of the service."""
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    match = {"type": "object", "properties": {
        "list": {"type": "string"}, "id": {"type": ["string", "null"]}, "label": {"type": ["string", "null"]},
        "distance": {"type": "integer"}, "kind": {"type": "string"}, "line": {"type": "integer"}}}
    auth = [{"bearer": []}]
    common = {"401": err, "403": err, "429": err}
    return {
        "openapi": "3.1.0",
        "info": {"title": "hashsieve screening service", "version": "1",
                 "description": "Match images and hashes against the hash lists of an index. No endpoint returns "
                                "the lists' hashes."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {
                "error": {"type": "string"}, "field": {"type": ["string", "null"]}, "request_id": {"type": "string"}}},
                "Match": match}},
        "paths": {
            "/v1/match": {"post": {
                "summary": "Hash an image and match it (scope match)", "security": auth,
                "requestBody": {"content": {"image/*": {}, "application/octet-stream": {},
                                            "multipart/form-data": {"schema": {"type": "object", "properties": {
                                                "image": {"type": "string", "format": "binary"}}}}}},
                "responses": {"200": {"description": "hashes computed and matches (records of the scan report)"},
                              "400": err, "408": err, "413": err, "422": err, **common}}},
            "/v1/lookup": {"post": {
                "summary": f"Match up to {MAX_BATCH:,} hashes (scope lookup)", "security": auth,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                    "hashes": {"type": "array", "maxItems": MAX_BATCH, "items": {"type": "object", "properties": {
                        "kind": {"type": "string"}, "hash": {"type": "string"}}, "required": ["kind", "hash"]}},
                    "radius": {"type": "integer", "minimum": 0, "description":
                               f"at most --max-radius ({cfg.max_radius}), or a kind's default radius if wider "
                               "(PDQ 31), and the code width"}},
                    "required": ["hashes"]}}}},
                "responses": {"200": {"description": "results: per hash, in input order, its matches",
                                      "content": {"application/json": {"schema": {"type": "object", "properties": {
                                          "results": {"type": "array", "items": {"type": "array", "items": {
                                              "$ref": "#/components/schemas/Match"}}}}}}}},
                              "400": err, "413": err, "422": err, **common}}},
            "/v1/status": {"get": {"summary": "The index in service: file, generation, counts (scope status)",
                                   "security": auth, "responses": {"200": {"description": "status"}, **common}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (scope metrics)", "security": auth,
                                 "responses": {"200": {"description": "text format 0.0.4"}, **common}}},
            "/openapi.json": {"get": {"summary": "This description (any key)", "security": auth,
                                      "responses": {"200": {"description": "OpenAPI 3.1"}, **common}}},
            "/healthz": {"get": {"summary": "The process is alive (no key)", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "The index is loaded (no key); current: false when a newer file was "
                                           "refused", "responses": {"200": {"description": "ready"},
                                                                    "503": err}}},
        },
    }


def create_app():
    """granian's factory: the App of one server process, configured by CONFIG_ENV."""
    return App(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def serve(cfg):
    """Check the index and keys, then run granian with cfg.workers processes until SIGINT / SIGTERM."""
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
    except ImportError:
        raise ServeError("the service needs granian: pip install 'hashsieve[serve]'") from None
    try:
        keys = read_keys(cfg.keys)
    except KeysFileError as e:
        raise ServeError(str(e)) from None
    if not keys:
        raise ServeError(f"{cfg.keys} holds no keys; add one with `hashsieve keys add NAME --scopes lookup,match "
                         f"--file {cfg.keys}`")
    try:
        load_version(cfg.index, 1, cfg.max_upload_bytes).close()
    except (IndexOpenError, IndexFormatError) as e:
        raise ServeError(str(e)) from None
    # The processes' shared folder: the reload lock, and each process's metrics for /metrics.
    cfg.run_dir = tempfile.mkdtemp(prefix="hashsieve-serve-")
    try:
        os.environ[CONFIG_ENV] = cfg.to_json()
        log_event("serving", index=cfg.index, host=cfg.host, port=cfg.port, workers=cfg.workers,
                  decoders=cfg.decoders, run_dir=cfg.run_dir)
        Granian("hashsieve.service:create_app", factory=True, address=cfg.host, port=cfg.port,
                interface=Interfaces.ASGI, workers=cfg.workers, http=HTTPModes.http1, websockets=False,
                http1_settings=HTTP1Settings(header_read_timeout=int(cfg.header_timeout * 1000)),
                log_level=LogLevels.warning, respawn_failed_workers=True).serve()
    finally:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
