"""``hashsieve scan --cluster``: the scan on a Dask cluster (docs/cli.md, "Scanning on a Dask cluster").

The client lists the inputs lazily (scan.walk for local paths, without opening a file;
remote.list_url for URLs) and submits tasks of at most TASK_FILES files and TASK_BYTES bytes,
keeping at most WINDOW_PER_THREAD tasks per worker thread in flight.  A task runs run_task on a
worker: it opens each file there, walks archives with scan's walker and limits, hashes with
scan.hash_jobs and makes the report records with scan.Screener against the index the worker opened,
so every record is the one the single-machine scan writes.  What a task leaves over comes back as
parts for new tasks: a big zip as ranges of its entries (run in parallel), the rest of a tar or of
a task's budget as a continuation (a tar is a stream: its continuation goes back to the worker that
holds the open stream, or re-reads the prefix elsewhere).

Report order: the order tasks finish; within a task, walk order.  The set of lines is the local scan's.

Faults: a task whose worker dies is run again by Dask (up to its allowed-failures); one that keeps
killing workers (KilledWorker) is retried file by file, one file at a time (its names listed first
by a task that only walks), and the file that still kills its worker becomes the error line the
local scan writes for a decoder crash.  A lost scheduler ends the scan (ClusterError) with every
finished file in the report, for --resume.
"""
import asyncio
import atexit
import collections
import json
import logging
import os
import secrets
import signal
import time
from concurrent.futures import CancelledError

from .remote import LocalFile, RemoteFile, fetch_index, is_url, list_url, read_error
from .scan import (Item, Screener, Summary, _archive_type, _open_zip, _postfix, _Stop, _Total, _units,
                   _walk_archive, _worker_died, hash_jobs, record_key, report_writer, walk)

__all__ = ["scan", "run_task", "index_version", "ClusterError", "TASK_FILES", "TASK_BYTES"]

# A task's budget: ~0.5-1 s of hashing for one worker thread (bench/bench_distributed.py), so the
# scheduler's few ms per task stay below 1 % and a lost worker loses little.
TASK_FILES = 64
TASK_BYTES = 64 << 20
WINDOW_PER_THREAD = 2           # tasks in flight per worker thread: one running, one queued behind it
WORKERS_WAIT = 60               # seconds a scheduler may take to get its first worker
SCHEDULER_GRACE = 20            # seconds without a scheduler before the scan gives up
_OPEN_WALKS = 2                 # tar streams a worker keeps open for their continuation


class ClusterError(Exception):
    """The cluster cannot run the scan (unreachable or lost scheduler, index not the client's)."""


class IndexMismatch(ClusterError):
    pass


# ====================================================================== work items
class Part:
    """Work on one file: its entries `members` (a range, for a zip split by them; None: all), after
    the first `skip` items of its walk; done: the archive members already reported (--resume)."""

    __slots__ = ("source", "members", "skip", "done")

    def __init__(self, source, members=None, skip=0, done=frozenset()):
        self.source, self.members, self.skip, self.done = source, members, skip, done

    @property
    def whole(self):
        return self.members is None and self.skip == 0


class _Split(Exception):
    """A zip too big for one task: these parts instead."""

    def __init__(self, parts):
        self.parts = parts


def _zip_ranges(f, limits, budget):
    """Ranges of a zip's entries of at most budget = (files, compressed bytes), or None
    when one task takes it all (or it cannot be opened: the walk reports that)."""
    try:
        zf, _ = _open_zip(f)
        infos = zf.infolist()[:limits.max_members]
    except Exception:
        return None
    ranges, start, files, nbytes = [], 0, 0, 0
    for k, info in enumerate(infos):
        if files and (files == budget[0] or nbytes + info.compress_size > budget[1]):
            ranges.append(range(start, k))
            start, files, nbytes = k, 0, 0
        files += not info.is_dir()
        nbytes += info.compress_size
    ranges.append(range(start, len(infos)))
    return ranges if len(ranges) > 1 else None


def _items(part, limits, budget):
    """scan's Items of a part, read where this runs (as scan._walk_file reads a local file)."""
    src, path = part.source, part.source.path
    done = {(path, m) for m in part.done}
    if isinstance(src, LocalFile) and src.size == 0:
        yield Item(path, None, job=src.job(None, 0))        # hash_jobs reports it empty
        return
    try:
        with src.open() as f:
            kind = _archive_type(path, f.read(512))
            if kind is None:
                yield Item(path, None, job=src.job(f, limits.max_file_bytes), size=src.size or 0)
                return
            if kind == "zip" and part.whole:
                ranges = _zip_ranges(f, limits, budget)
                if ranges is not None:
                    raise _Split([Part(src, r, 0, part.done) for r in ranges])
            f.seek(0)
            yield from _walk_archive(f, src.size, path, (), kind, 1, limits, done, part.members)
    except _Split:
        raise
    except Exception as e:      # OSError, or the storage client's own errors
        yield Item(path, None, error=read_error(e))


class _Window:
    """The items of a part from its `skip`-th on, up to a budget of files and bytes."""

    def __init__(self, gen, files, nbytes):
        self.gen, self.files, self.nbytes = gen, files, nbytes
        self.count = self.weight = 0
        self.finished = False

    def __iter__(self):
        while self.count < self.files and self.weight < self.nbytes:
            try:
                item = next(self.gen)
            except StopIteration:
                self.finished = True
                return
            self.count += 1
            self.weight += item.size
            yield item


_walks = collections.OrderedDict()      # (scan, path, members, items consumed) -> suspended walk generator


def _walk_from(scan_id, part, limits, budget):
    """The part's walk generator at its skip-th item: the one this worker left there in this scan
    (another scan's --resume skips other files), or a new one."""
    gen = _walks.pop((scan_id, part.source.path, part.members, part.skip), None)
    if gen is not None:
        return gen
    gen = _items(part, limits, budget)
    for _ in range(part.skip):
        if next(gen, None) is None:
            break
    return gen


def _keep_walk(scan_id, part, gen, consumed):
    _walks[(scan_id, part.source.path, part.members, consumed)] = gen
    while len(_walks) > _OPEN_WALKS:
        _walks.popitem(last=False)[1].close()


@atexit.register
def _close_walks():
    """Close the open walks (their files) while the module can still run their clean-up."""
    while _walks:
        _walks.popitem()[1].close()


# ====================================================================== the index on a worker
def index_version(lindex):
    """What identifies an index's version: its header checksum (which covers every section's
    checksum and the metadata), its save time and its provenance table's id."""
    from .lists import META_KEY
    from .storage import read_metadata
    meta = read_metadata(lindex.path)
    if meta["metadata"].get(META_KEY, {}).get("table_id") != lindex.info.get("table_id"):
        raise IndexMismatch(f"the index {lindex.path} was replaced while it was being opened; run the scan again")
    return {"checksum": meta["header_crc32"], "generation": meta["created_iso"],
            "table": lindex.info.get("table_id")}


_indexes = {}


def _screener(index, options):
    """Screener over the worker's copy of the index, opened once per worker process and checked."""
    from .lists import IndexOpenError, open_lists
    location, version = index
    key = (location, json.dumps(version, sort_keys=True))
    li = _indexes.get(key)
    if li is None:
        try:
            li = open_lists(fetch_index(location) if is_url(location) else location)
            got = index_version(li)
        except (IndexOpenError, OSError) as e:
            raise ClusterError(f"a worker cannot open the index: {e}; put it where every worker reads it "
                               "(a shared folder, or give --index as a URL)") from None
        if got != version:
            li.close()
            raise IndexMismatch(f"a worker opened another version of the index {location} (checksum "
                                f"{got['checksum']}, saved {got['generation']}) than the client "
                                f"({version['checksum']}, saved {version['generation']}); one scan never "
                                "mixes versions: give every worker the same file and run the scan again")
        _indexes[key] = li
        while len(_indexes) > 2:            # (a long-lived worker serving scans of new versions)
            _indexes.pop(next(iter(_indexes))).close()
    return Screener(li, options)


def _worker_address():
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return None


# ====================================================================== the task
def run_task(scan_id, parts, budget, index, options, names_only=False):
    """A task's work: the report records of parts within budget (files, bytes), and the parts left.
    scan_id: a token of the scan the task belongs to.

    names_only: walk without hashing, giving the (path, member) keys the task would report
    (to retry a task that kills its worker one file at a time)."""
    screener = None if names_only else _screener(index, options)
    limits = options.limits
    out = {"records": [], "names": [], "rest": [], "worker": _worker_address()}
    files = nbytes = 0
    for k, part in enumerate(parts):
        if files >= budget[0] or nbytes >= budget[1]:
            out["rest"] += parts[k:]
            break
        window = _Window(_walk_from(scan_id, part, limits, budget), budget[0] - files, budget[1] - nbytes)
        try:
            if names_only:
                out["names"] += [item.key for item in window]
            else:
                for metas, jobs, _ in _units(window, options.chunk):
                    out["records"] += (screener.records(metas, hash_jobs(jobs, *screener.job_args)) if jobs
                                       else [screener.error_record(metas[0])])
        except _Split as split:
            out["rest"] += split.parts
            continue
        files += window.count
        nbytes += window.weight
        if not window.finished:
            consumed = part.skip + window.count
            out["rest"].append(Part(part.source, part.members, consumed, part.done))
            _keep_walk(scan_id, part, window.gen, consumed)
    return out


# ====================================================================== the client
class _Task:
    __slots__ = ("parts", "budget", "names_only", "key", "worker")

    def __init__(self, parts, budget, names_only=False, key=None, worker=None):
        self.parts, self.budget, self.names_only, self.key, self.worker = parts, budget, names_only, key, worker


def _listing(paths, limits, done, exclude, follow_symlinks, by_path):
    """Parts (or error Items) of every input, lazily: the local paths in one walk (as scan.scan
    walks them: a link into another PATH given is followed), then each URL."""
    local = [p for p in paths if not is_url(p)]
    for item in walk(local, limits, done, exclude, follow_symlinks, list_only=True) if local else ():
        if item.error is not None:
            yield item
        else:
            path, dev, ino = item.job
            yield Part(LocalFile(path, dev, ino, item.size), done=by_path.get(path, frozenset()))
    for url in (p for p in paths if is_url(p)):
        for x in list_url(url, done):
            yield x if isinstance(x, Item) else Part(x, done=by_path.get(x.path, frozenset()))


def _tasks(listing, budget):
    """Error Items, and _Tasks grouping listed parts up to budget = (files, bytes)."""
    parts, nbytes = [], 0
    for x in listing:
        if isinstance(x, Item):
            yield x
            continue
        size = x.source.size or 0
        if parts and (len(parts) == budget[0] or nbytes + size > budget[1]):
            yield _Task(parts, budget)
            parts, nbytes = [], 0
        parts.append(x)
        nbytes += size
    if parts:
        yield _Task(parts, budget)


def local_cluster(n, **kwargs):
    """A LocalCluster of n worker processes of one thread each, without the malloc setting Dask's
    nanny gives its workers (MALLOC_TRIM_THRESHOLD_=65536), which makes decoding images about 1.8x
    slower: every image buffer freed goes back to the system and is faulted in again."""
    import dask
    from distributed import LocalCluster
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.ERROR, **kwargs)


def connect(cluster):
    """(client, cluster or None) for --cluster: local:N starts a LocalCluster of N worker processes."""
    try:
        from distributed import Client
    except ImportError:
        raise ClusterError("--cluster needs Dask: pip install 'hashsieve[distributed]'") from None
    if cluster.startswith("local:"):
        n = cluster[len("local:"):]
        if not n.isdigit() or not 1 <= int(n) <= 256:
            raise ClusterError(f"--cluster {cluster}: give local:N with N worker processes from 1 to 256")
        lc = local_cluster(int(n))
        return Client(lc), lc
    if "://" not in cluster:
        raise ClusterError(f"--cluster {cluster}: give the scheduler's address (tcp://HOST:8786) or local:N")
    try:
        client = Client(cluster, timeout="10s")
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {cluster} ({type(e).__name__}: {e}); "
                           "start it (dask scheduler, dask worker) or check the address") from None
    try:
        client.wait_for_workers(1, timeout=WORKERS_WAIT)
    except (TimeoutError, asyncio.TimeoutError):
        client.close()
        raise ClusterError(f"the Dask scheduler at {cluster} has no workers (waited {WORKERS_WAIT} s); start "
                           f"some with `dask worker {cluster} --nthreads 1 --nworkers CORES`") from None
    return client, None


def scan(paths, lindex, out, options, resume_records=(), progress=None, stop=None, exclude=(),
         cluster="local:2", index_location=None, task_files=TASK_FILES, task_bytes=TASK_BYTES):
    """scan.scan on a Dask cluster: same arguments and records, plus cluster (an address or
    local:N, or a distributed.Client), index_location (the index's path or URL as the workers
    open it; default lindex.path) and a task's budget.  Returns a Summary; ClusterError if the
    cluster fails the scan."""
    from distributed import Client, wait
    from distributed.scheduler import KilledWorker
    summary = Summary()
    done, by_path = set(), {}
    for rec in resume_records:
        key = record_key(rec)
        done.add(key)
        if key[1] is not None:
            by_path.setdefault(key[0], set()).add(key[1])
        summary.count(rec, now=False)
    by_path = {p: frozenset(m) for p, m in by_path.items()}
    summary.resumed = len(done)
    screener = Screener(lindex, options)
    index = (index_location or os.path.abspath(lindex.path), index_version(lindex))
    scan_id = secrets.token_hex(8)
    stop = stop or _Stop()
    local = [p for p in paths if not is_url(p)]
    total = _Total(local, options.limits, done) if progress is not None and local else None
    listed_urls = [0]
    write = report_writer(out)

    def emit(rec):
        write(rec)
        summary.count(rec)
        if progress is not None:
            found = (total.value if total is not None else 0) + listed_urls[0]
            progress.total = max(progress.n + 1 + queued_files(), progress.initial + found)
            progress.update(1)
            if summary.files % 8 == 0:
                progress.set_postfix_str(_postfix(summary, t0, total), refresh=False)

    if isinstance(cluster, Client):
        client, own = cluster, None
    else:
        client, own = connect(cluster)
    t0 = time.monotonic()           # (not counting a LocalCluster's start-up)
    inflight, pending = {}, collections.deque()
    # Files retried alone run one at a time: a worker killed by one of them must not take another
    # (innocent) one with it, which Dask would count against that one too.
    alone = collections.deque()
    died = set()                # keys of the error lines written for tasks that failed

    def queued_files():
        return sum(len(t.parts) for t in inflight.values())

    def submit(task):
        fut = client.submit(run_task, scan_id, task.parts, task.budget, index, options, task.names_only, pure=False,
                            workers=task.worker, allow_other_workers=task.worker is not None)
        inflight[fut] = task

    def failed(task, exc):
        """A task that raised or kept killing its worker: split it, or its one file's error line."""
        if isinstance(exc, ClusterError):
            raise exc
        if task.key is None and not task.names_only:
            # Its files by name, each then hashed alone: the one that kills its worker again is known.
            pending.extend(_Task([p], task.budget, names_only=True) for p in task.parts)
        else:
            name = task.key or (task.parts[0].source.path, None)
            if name in died:
                return              # (a walk that crashes part way, in several parts of one file)
            died.add(name)
            result = _worker_died(None) if isinstance(exc, KilledWorker) else \
                (None, None, False, None, None, f"the scan task failed ({type(exc).__name__}: {exc})")
            emit(screener.records([Item(*name)], [result])[0])

    def finished(task, res):
        for rec in res["records"]:
            emit(rec)
        if task.names_only:
            part = task.parts[0]
            alone.extend(_Task([Part(part.source, part.members, part.skip + k, part.done)], (1, 1 << 62),
                               key=key) for k, key in enumerate(res["names"]))
        if task.key is not None:
            return                  # one file retried alone: what comes after it has tasks of its own
        for p in res["rest"]:
            # A continuation goes back to the worker that holds its open walk.
            pending.append(_Task([p], task.budget, worker=res["worker"] if p.skip else None))

    tasks = _tasks(_listing([os.fspath(p) for p in paths], options.limits, done, exclude,
                            options.follow_symlinks, by_path), (task_files, task_bytes))
    more, down_since = True, None
    try:
        window, sized = max(2, WINDOW_PER_THREAD * sum(client.nthreads().values())), time.monotonic()
        while (more or pending or alone or inflight) and not stop.event.is_set():
            if alone and not any(t.key is not None for t in inflight.values()):
                submit(alone.popleft())
            while len(inflight) < window and (pending or more):
                task = pending.popleft() if pending else next(tasks, None)
                if task is None:
                    more = False
                elif isinstance(task, Item):
                    emit(screener.error_record(task))
                else:
                    listed_urls[0] += sum(isinstance(p.source, RemoteFile) for p in task.parts)
                    submit(task)
            if not inflight:
                continue
            try:
                ready, _ = wait(list(inflight), timeout=1, return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):     # (the same class from Python 3.11 on)
                ready = ()
            except (CancelledError, asyncio.CancelledError) as e:
                raise ClusterError(f"lost the Dask scheduler ({str(e).splitlines()[-1] if str(e) else 'cancelled'})")
            if client.status == "running":
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since > SCHEDULER_GRACE:
                raise ClusterError(f"lost the Dask scheduler ({client.status} for {SCHEDULER_GRACE} s)")
            for fut in ready:
                task = inflight.pop(fut)
                if fut.status == "finished":
                    finished(task, fut.result())
                elif fut.status == "error":
                    failed(task, fut.exception())
                else:
                    raise ClusterError(f"the Dask scheduler dropped a task ({fut.status}); it was probably lost")
            if time.monotonic() - sized > 5:         # (workers come and go)
                window, sized = max(2, WINDOW_PER_THREAD * sum(client.nthreads().values())), time.monotonic()
    except ClusterError as e:
        raise ClusterError(f"{e}. The report holds every file finished; continue with --resume") from None
    except OSError as e:
        if type(e).__module__.startswith("distributed"):      # CommClosedError and the like
            raise ClusterError(f"lost the Dask scheduler ({type(e).__name__}: {e}). The report holds every "
                               "file finished; continue with --resume") from None
        raise
    finally:
        summary.elapsed = time.monotonic() - t0
        if inflight:
            client.cancel(list(inflight))
        if stop.signum is not None:
            summary.interrupted = signal.Signals(stop.signum).name
        if progress is not None:
            if total is not None:
                total.close()
            if stop.signum is None:
                progress.total = progress.n
            progress.set_postfix_str(_postfix(summary, t0), refresh=True)
        if own is not None:
            client.close()
            own.close()
    return summary
