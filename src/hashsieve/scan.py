"""Bulk scan: walk folders and archives, hash images in worker processes, match, report.

The report has one JSON line per file, in walk order, flushed as it is written::

    {"path": "...", "member": null | "name in archive", "hash": "hex" | null,
     "detail": float | null, "low_detail": bool, "md5": "...", "sha1": "...",
     "matches": [{"list", "id", "label", "distance", "kind", "line"}], "error": null | "text"}

``member`` of a file inside a nested archive is ``"inner.zip!/name"``.  A broken
archive gives one line with ``member`` null (or the nested archive's name) and
the error, after the lines of the members read before the damage.

Resume: the report is read back, a partial last line (a killed writer) is cut
off, and every (path, member) already reported is skipped.
"""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import signal
import stat
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .hashing import DEFAULT_MAX_PIXELS, HASH_KINDS, ImageHashError, hash_image

__all__ = ["Limits", "ScanOptions", "scan", "walk", "DEFAULT_RADIUS", "LOW_DETAIL_THRESHOLD", "read_report"]

# Radius recommended per kind (d <= radius), from the near-duplicate measurements in
# docs/hashing.md. wHash has no radius that keeps unrelated images apart on that corpus;
# 8 limits its false matches.
DEFAULT_RADIUS = {"phash": 8, "dhash": 8, "ahash": 5, "whash": 8}
# Detail score (hashing.image_detail: std of the 32x32 grey thumbnail, 0-127.5) below which an
# image's perceptual hash is not trusted for matching; chosen from measurements in docs/cli.md.
LOW_DETAIL_THRESHOLD = 1.0

ARCHIVE_SUFFIXES = (".zip", ".cbz", ".tar", ".tgz", ".tar.gz", ".tbz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
MEMBER_SEP = "!/"


class Limits:
    """Defences against hostile inputs; every limit turns into an error line, never a crash."""

    def __init__(self, max_file_bytes=256 << 20, max_ratio=200, ratio_floor=32 << 20, max_depth=3,
                 max_pixels=DEFAULT_MAX_PIXELS, max_members=1_000_000):
        self.max_file_bytes = max_file_bytes    # a single file or archive member, decompressed
        self.max_ratio = max_ratio              # decompressed / compressed beyond ratio_floor bytes = bomb
        self.ratio_floor = ratio_floor
        self.max_depth = max_depth              # archives inside archives
        self.max_pixels = max_pixels            # decompression-bomb guard of the image decoder
        self.max_members = max_members


class BombError(Exception):
    pass


# ====================================================================== walking
class Item:
    """A file to report: job is a path (worker reads it) or bytes, or error is set."""

    __slots__ = ("path", "member", "job", "error")

    def __init__(self, path, member, job=None, error=None):
        self.path, self.member, self.job, self.error = path, member, job, error

    @property
    def key(self):
        return (self.path, self.member)


def _archive_type(name, head):
    low = name.lower()
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or low.endswith((".zip", ".cbz")):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    compressed = head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00"
    if low.endswith(ARCHIVE_SUFFIXES) or (compressed and low.endswith((".gz", ".bz2", ".xz"))):
        return "tar"
    return None


def _join(prefix, name):
    return name if prefix is None else prefix + MEMBER_SEP + name


class _Counting:
    """A read-only stream that counts bytes read from the raw (compressed) file."""

    def __init__(self, raw):
        self.raw, self.n = raw, 0

    def read(self, n=-1):
        b = self.raw.read(n)
        self.n += len(b)
        return b

    def readable(self):
        return True


class _Guarded(io.RawIOBase):
    """Decompressed stream that raises BombError when it expands beyond the limits."""

    def __init__(self, stream, counter, limits, base_size):
        self.stream, self.counter, self.limits, self.out = stream, counter, limits, 0
        self.base_size = base_size

    def readable(self):
        return True

    def readinto(self, b):
        data = self.stream.read(len(b))
        self.out += len(data)
        lim = self.limits
        if self.out > lim.ratio_floor and self.out > lim.max_ratio * max(self.counter.n, 1):
            raise BombError(f"decompression bomb: {self.out:,} bytes from {self.counter.n:,} compressed "
                            f"(ratio above {lim.max_ratio}:1); archive not read further")
        b[:len(data)] = data
        return len(data)


def _read_capped(f, limits, compressed=None):
    chunks, total = [], 0
    while True:
        b = f.read(1 << 20)
        if not b:
            return b"".join(chunks)
        total += len(b)
        if total > limits.max_file_bytes:
            raise BombError(f"larger than the {limits.max_file_bytes >> 20} MiB limit (--max-file-mb); "
                            "not read")
        if compressed is not None and total > limits.ratio_floor and total > limits.max_ratio * max(compressed, 1):
            raise BombError(f"zip bomb: expands over {limits.max_ratio}:1 ({total:,} bytes from "
                            f"{compressed:,}); not read further")
        chunks.append(b)


def _walk_archive(fileobj, size, path, prefix, kind, depth, limits, done):
    """Items of the members of an archive; a damaged archive ends with an error item (member=prefix)."""
    try:
        if kind == "zip":
            yield from _walk_zip(fileobj, size, path, prefix, depth, limits, done)
        else:
            yield from _walk_tar(fileobj, size, path, prefix, depth, limits, done)
    except BombError as e:
        yield Item(path, prefix, error=str(e))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError,
            ValueError, NotImplementedError, RuntimeError) as e:
        what = "zip" if kind == "zip" else "tar"
        yield Item(path, prefix, error=f"broken {what} archive ({type(e).__name__}: {e}); members before the "
                                       "damage are reported")


def _member_item(path, prefix, name, data, depth, limits, done):
    member = _join(prefix, name)
    kind = _archive_type(name, data[:512]) if depth < limits.max_depth else None
    if kind is not None:
        if (path, member) in done:
            return
        yield from _walk_archive(io.BytesIO(data), len(data), path, member, kind, depth + 1, limits, done)
        return
    if (path, member) not in done:
        yield Item(path, member, job=data)


def _unique(name, seen):
    n = seen.get(name, 0) + 1
    seen[name] = n
    return name if n == 1 else f"{name}#{n}"


def _walk_zip(fileobj, size, path, prefix, depth, limits, done):
    zf = zipfile.ZipFile(fileobj)
    seen, total = {}, 0
    for info in zf.infolist()[:limits.max_members]:
        if info.is_dir():
            continue
        name = _unique(info.filename, seen)
        member = _join(prefix, name)
        if (path, member) in done:
            continue
        if info.flag_bits & 1:
            yield Item(path, member, error="encrypted zip member; cannot be read without the password")
            continue
        if info.file_size > limits.max_file_bytes:
            yield Item(path, member, error=f"declares {info.file_size:,} bytes, above the "
                                           f"{limits.max_file_bytes >> 20} MiB limit (--max-file-mb); not read")
            continue
        try:
            with zf.open(info) as f:
                data = _read_capped(f, limits, info.compress_size)
        except BombError as e:
            yield Item(path, member, error=str(e))
            continue
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError,
                lzma.LZMAError, RuntimeError) as e:
            yield Item(path, member, error=f"cannot read zip member ({type(e).__name__}: {e})")
            continue
        total += len(data)
        if total > limits.ratio_floor and total > limits.max_ratio * max(size, 1):
            raise BombError(f"zip bomb: members expand to over {limits.max_ratio}x the archive size; "
                            "archive not read further")
        yield from _member_item(path, prefix, name, data, depth, limits, done)


def _walk_tar(fileobj, size, path, prefix, depth, limits, done):
    counter = _Counting(fileobj)
    fileobj.seek(0)
    head = fileobj.read(6)
    fileobj.seek(0)
    if head[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=counter, mode="rb")
    elif head[:3] == b"BZh":
        stream = bz2.BZ2File(counter, mode="rb")
    elif head[:6] == b"\xfd7zXZ\x00":
        stream = lzma.LZMAFile(counter, mode="rb")
    else:
        stream = counter
    guarded = io.BufferedReader(_Guarded(stream, counter, limits, size), 1 << 16)
    tf = tarfile.open(fileobj=guarded, mode="r|")
    seen, count = {}, 0
    for m in tf:
        count += 1
        if count > limits.max_members:
            raise BombError(f"more than {limits.max_members:,} members; archive not read further")
        if m.isdir():
            continue
        name = _unique(m.name, seen)
        member = _join(prefix, name)
        if (path, member) in done:
            continue
        if not m.isreg():
            what = "symbolic link" if m.issym() else "hard link" if m.islnk() else "special file"
            yield Item(path, member, error=f"{what} inside the archive, not a regular file; not followed")
            continue
        if m.size > limits.max_file_bytes:
            yield Item(path, member, error=f"{m.size:,} bytes, above the {limits.max_file_bytes >> 20} MiB "
                                           "limit (--max-file-mb); not read")
            continue
        f = tf.extractfile(m)
        data = _read_capped(f, limits)
        if len(data) != m.size:
            raise EOFError(f"member {m.name!r} is truncated")
        yield from _member_item(path, prefix, name, data, depth, limits, done)


def _walk_file(path, st, limits, done):
    if (path, None) in done:
        return
    if st.st_size == 0:
        yield Item(path, None, job=path)      # the worker reports "empty file"
        return
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            kind = _archive_type(path, head)
            if kind is None:
                yield Item(path, None, job=path)
                return
            yield from _walk_archive(f, st.st_size, path, None, kind, 1, limits, done)
    except OSError as e:
        yield Item(path, None, error=f"cannot read the file ({e.strerror or e})")


def walk(paths, limits=None, done=frozenset(), exclude=()):
    """Items for every file under paths (folders recursed in name order, archives opened)."""
    limits = limits or Limits()
    exclude = {os.path.realpath(p) for p in exclude}
    seen_dirs = set()
    seen_files = set()

    def visit(path, top):
        try:
            lst = os.lstat(path)
        except OSError as e:
            yield Item(path, None, error=f"cannot read ({e.strerror or e})")
            return
        is_link = stat.S_ISLNK(lst.st_mode)
        try:
            st = os.stat(path)
        except OSError as e:
            if (path, None) not in done:
                why = "symbolic link loop" if getattr(e, "errno", None) == 40 else "broken symbolic link"
                yield Item(path, None, error=f"{why} ({e.strerror or e}); not followed" if is_link
                           else f"cannot read ({e.strerror or e})")
            return
        if stat.S_ISDIR(st.st_mode):
            if is_link and not top:
                if (path, None) not in done:
                    yield Item(path, None, error="symbolic link to a folder; not followed (scan its target "
                                                 "directly if it belongs to the archive)")
                return
            ident = (st.st_dev, st.st_ino)
            if ident in seen_dirs:
                return
            seen_dirs.add(ident)
            try:
                names = sorted(os.listdir(path))
            except OSError as e:
                if (path, None) not in done:
                    yield Item(path, None, error=f"cannot list the folder ({e.strerror or e})")
                return
            for name in names:
                yield from visit(os.path.join(path, name), False)
            return
        if os.path.realpath(path) in exclude:
            return
        if not stat.S_ISREG(st.st_mode):
            if (path, None) not in done:
                yield Item(path, None, error="not a regular file (device, FIFO or socket); not read")
            return
        key = os.path.abspath(path)
        if key in seen_files:
            return
        seen_files.add(key)
        yield from _walk_file(path, st, limits, done)

    for p in paths:
        yield from visit(os.fspath(p), True)


# ====================================================================== workers
def _worker_init(parent_pid):
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Workers are children of the forkserver, not of the scan: if the scan is killed
    # (SIGKILL, OOM) nobody would tell them to stop, so each watches the scan's pid.
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(pid):
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass


def _hash_jobs(jobs, kind, fast, max_pixels, max_bytes):
    """[(code|None, detail|None, md5|None, sha1|None, error|None)] per job (path or bytes)."""
    out = []
    for job in jobs:
        md5 = sha1 = None
        try:
            if isinstance(job, str):
                with open(job, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size > max_bytes:
                        raise ImageHashError(job, f"{size:,} bytes, above the {max_bytes >> 20} MiB limit "
                                                  "(--max-file-mb); not read")
                    data = f.read(max_bytes + 1)
            else:
                data = job
            if data:
                md5 = hashlib.md5(data).hexdigest()
                sha1 = hashlib.sha1(data).hexdigest()
            code, detail = hash_image(data, kind, fast, with_detail=True, max_pixels=max_pixels)
            out.append((code, detail, md5, sha1, None))
        except ImageHashError as e:
            out.append((None, None, md5, sha1, e.reason))
        except OSError as e:
            out.append((None, None, md5, sha1, f"cannot read the file ({e.strerror or e})"))
        except Exception as e:          # never let one file stop the scan
            out.append((None, None, md5, sha1, f"unexpected {type(e).__name__}: {e}"))
    return out


def _mp_context():
    import multiprocessing as mp
    name = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(name)
    if name == "forkserver":
        ctx.set_forkserver_preload(["hashsieve._worker"])
    return ctx


# ====================================================================== report
def read_report(path):
    """(records, valid_length) of an existing report; a partial or garbled last line is left out."""
    records, good = [], 0
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
        end = pos + len(line) + 1
        if k == len(lines) - 1:          # no newline after it: cut short by a kill
            break
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "path" not in rec:
                    raise ValueError("not a report record")
            except ValueError:
                if k == len(lines) - 2 and not lines[-1]:
                    break               # last line garbled: redo that file
                raise ValueError(f"{path}:{k + 1}: not a hashsieve report line; resume needs the report "
                                 "written by `hashsieve scan --report`") from None
            records.append(rec)
        good = end
        pos = end
    return records, good


class ScanOptions:
    def __init__(self, radius=None, kind="phash", workers=None, fast=False, match_low_detail=False,
                 low_detail=LOW_DETAIL_THRESHOLD, limits=None, chunk=4):
        if kind not in HASH_KINDS:
            raise ValueError(f"kind must be one of {HASH_KINDS}, got {kind!r}")
        self.kind = kind
        self.radius = DEFAULT_RADIUS[kind] if radius is None else radius
        self.workers = workers or max(1, len(os.sched_getaffinity(0)))
        self.fast, self.match_low_detail, self.low_detail = fast, match_low_detail, low_detail
        self.limits = limits or Limits()
        self.chunk = chunk


class Summary:
    def __init__(self):
        self.files = self.hashed = self.errors = self.low_detail = self.matched = self.matches = 0
        self.resumed = 0
        self.elapsed = 0.0
        self.hashed_now = 0
        self.interrupted = None

    def count(self, rec, now=True):
        self.files += 1
        if rec.get("hash") is not None:
            self.hashed += 1
            if now:
                self.hashed_now += 1
        if rec.get("error"):
            self.errors += 1
        if rec.get("low_detail"):
            self.low_detail += 1
        if rec.get("matches"):
            self.matched += 1
            self.matches += len(rec["matches"])

    def as_dict(self):
        return {"files": self.files, "images": self.hashed, "errors": self.errors, "low_detail": self.low_detail,
                "matched_files": self.matched, "matches": self.matches, "resumed_from_report": self.resumed,
                "seconds": round(self.elapsed, 3),
                "images_per_second": round(self.hashed_now / self.elapsed, 1) if self.elapsed else None,
                "interrupted": self.interrupted}


class _Stop:
    def __init__(self):
        self.signum = None
        self.event = threading.Event()

    def handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt        # second Ctrl-C: give up at once
        self.signum = signum
        self.event.set()


def scan(paths, lindex, out, options, resume_records=(), progress=None, stop=None, exclude=()):
    """Scan paths against lindex (lists.ListIndex, or None to only hash), writing each record as a
    JSON line to the text stream out (or calling out(record) if it is callable).

    resume_records: records of an earlier run to skip.  Returns a Summary.
    """
    opts = options
    summary = Summary()
    done = set()
    for rec in resume_records:
        done.add((rec.get("path"), rec.get("member")))
        summary.count(rec, now=False)
    summary.resumed = len(done)
    want_digests = lindex is not None and lindex.prov.has_digests()
    stop = stop or _Stop()
    t0 = time.monotonic()
    items = walk(paths, opts.limits, done, exclude)

    def emit(rec):
        if callable(out):
            out(rec)
        else:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
        summary.count(rec)
        if progress is not None:
            progress.update(1)
            if summary.files % 8 == 0:
                progress.set_postfix_str(_postfix(summary, t0), refresh=False)

    def record(item, code=None, detail=None, md5=None, sha1=None, error=None):
        return {"path": item.path, "member": item.member,
                "hash": None if code is None else f"{code:016x}",
                "detail": None if detail is None else round(float(detail), 3),
                "low_detail": detail is not None and detail < opts.low_detail,
                "md5": md5, "sha1": sha1, "matches": [], "error": error}

    def finish_chunk(metas, results):
        recs = [record(it, *res) for it, res in zip(metas, results)]
        queries = [k for k, r in enumerate(recs) if r["hash"] is not None
                   and (opts.match_low_detail or not r["low_detail"])]
        if queries and lindex is not None:
            codes = np.array([int(recs[k]["hash"], 16) for k in queries], dtype=np.uint64)
            for k, found in zip(queries, lindex.match(codes, opts.radius)):
                recs[k]["matches"] += found
        if want_digests:
            for r in recs:
                for kind in ("md5", "sha1"):
                    if r[kind]:
                        r["matches"] += lindex.match_digests([r[kind]], kind)[0]
        for r in recs:
            emit(r)

    ctx = _mp_context()
    pool = _new_pool(opts.workers, ctx)
    args = (opts.kind, opts.fast, opts.limits.max_pixels, opts.limits.max_file_bytes)
    pending = deque()            # ("item", Item) for ready error lines, ("chunk", items, future)
    exhausted = False
    try:
        while True:
            # Keep a few chunks per worker in flight; error items queue in order between them.
            chunk = []
            while not exhausted and not stop.event.is_set() and \
                    sum(1 for p in pending if p[0] == "chunk") < 3 * opts.workers:
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                if item.error is not None:
                    if chunk:
                        pending.append(("chunk", chunk, pool.submit(_hash_jobs, [i.job for i in chunk], *args)))
                        chunk = []
                    pending.append(("item", item))
                    continue
                chunk.append(item)
                if len(chunk) == opts.chunk:
                    pending.append(("chunk", chunk, pool.submit(_hash_jobs, [i.job for i in chunk], *args)))
                    chunk = []
            if chunk:
                pending.append(("chunk", chunk, pool.submit(_hash_jobs, [i.job for i in chunk], *args)))
            if stop.event.is_set() or not pending:
                break
            unit = pending.popleft()
            if unit[0] == "item":
                emit(record(unit[1], error=unit[1].error))
                continue
            _, metas, fut = unit
            results = None
            while results is None and not stop.event.is_set():
                try:
                    results = fut.result(timeout=0.2)
                except FutureTimeout:
                    continue
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    rest = list(pending)
                    pending.clear()
                    pool = _new_pool(opts.workers, ctx)
                    for u in rest:      # resubmit, keeping the order
                        if u[0] == "chunk":
                            pending.append(("chunk", u[1], pool.submit(_hash_jobs, [i.job for i in u[1]], *args)))
                        else:
                            pending.append(u)
                    results = _one_by_one(metas, args, ctx)
            if results is None:
                break
            finish_chunk(metas, results)
    finally:
        _terminate(pool)
        summary.elapsed = time.monotonic() - t0
        if stop.signum is not None:
            summary.interrupted = signal.Signals(stop.signum).name
        if progress is not None:
            progress.set_postfix_str(_postfix(summary, t0), refresh=True)
    return summary


def _new_pool(workers, ctx):
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(os.getpid(),))


def _one_by_one(metas, args, ctx):
    out = []
    for it in metas:
        with _new_pool(1, ctx) as solo:
            try:
                out.append(solo.submit(_hash_jobs, [it.job], *args).result()[0])
            except BrokenProcessPool:
                out.append((None, None, None, None, "the worker process died while decoding this file "
                                                    "(decoder crash or out-of-memory kill)"))
    return out


def _terminate(pool):
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            if p.is_alive():
                p.terminate()
        except Exception:
            pass
    for p in procs:
        try:
            p.join(5)
        except Exception:
            pass


def _postfix(s, t0):
    dt = max(time.monotonic() - t0, 1e-9)
    return f"{s.hashed_now / dt:.1f} img/s, matched {s.matched}, errors {s.errors}"
