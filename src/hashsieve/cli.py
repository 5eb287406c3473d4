"""The ``hashsieve`` command line; see docs/cli.md and ``hashsieve COMMAND --help``.

Exit status: 0 nothing matched / success, 1 something matched (scan, query) or
some files could not be hashed (hash), 2 usage, list, index or file error (one
line on stderr naming the fix), 3 internal error (a bug; one line, the traceback
with HASHSIEVE_TRACEBACK=1), 130 / 143 scan interrupted by Ctrl-C / SIGTERM (the
report is complete up to the last finished file; continue with --resume).
"""
import argparse
import contextlib
import json
import math
import os
import signal
import stat
import sys

from ._validate import MAX_K, available_cores

EXIT_OK, EXIT_MATCH, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3


class CliError(Exception):
    """A usage, list or index problem: printed as one line, exit status 2."""


def _err(msg):
    print(f"hashsieve: error: {msg}", file=sys.stderr)


def _warn(msg):
    print(f"hashsieve: warning: {msg}", file=sys.stderr)


def _info(msg):
    print(msg, file=sys.stderr)


# ====================================================================== lists -> index
_LABELS = {"md5": "MD5", "sha1": "SHA-1"}


def _counts_text(counts):
    """'3 phash, 2 pdq, 1 MD5' of {kind: n} (every kind given, in its order)."""
    return ", ".join(f"{n:,} {_LABELS.get(k, k)}" for k, n in counts.items()) or "no"


def _hash_lists(specs, skip_bad, kinds):
    """HashList per NAME=PATH spec; two lists of one name in one command are refused, naming both files."""
    from .lists import HashList, list_spec
    out, by_name = [], {}
    for spec in specs:
        name, path = list_spec(spec)
        if name in by_name:
            raise CliError(f"lists {by_name[name]} and {path} are both named {name!r}; name them apart with "
                           f"NAME=PATH (e.g. {name}-2={path})")
        by_name[name] = path
        try:
            out.append(HashList(path, name=name, skip_bad=skip_bad, kinds=kinds))
        except ValueError as e:
            raise CliError(f"--kind: {e}") from None
    return out


def _report_list(hl, already):
    """The one-line account of a list just read, and its warnings."""
    _info(f"list {hl.name} ({hl.path}): {_counts_text(hl.counts)} entries"
          + (f", {hl.skipped} bad rows skipped" if hl.skipped else "")
          + (f", {already} already present (skipped)" if already else ""))
    for line, reason in hl.skipped_examples:
        _warn(f"{hl.path}:{line}: skipped: {reason}")
    if hl.skipped > len(hl.skipped_examples):
        _warn(f"{hl.path}: ... and {hl.skipped - len(hl.skipped_examples)} more bad rows skipped")
    if hl.unsupported:
        _warn(f"{hl.path}: {sum(hl.unsupported.values())} rows of types hashsieve does not match were skipped ("
              + ", ".join(f"{t}: {n}" for t, n in sorted(hl.unsupported.items()))
              + "); only perceptual hashes (phash, pdq, ...), MD5 and SHA-1 are indexed")
    for kind, n in hl.degenerate.items():
        line, h = hl.degenerate_example[kind]
        _warn(f"{hl.path}: {n} entries have degenerate {kind} hashes (e.g. line {line}: {h}): "
              "blank, solid, striped or transparent images, which carry no identity; they make no perceptual "
              "match unless --match-degenerate (their MD5/SHA-1 rows still match)")
    if not hl.rows:
        _warn(f"{hl.path}: no entries")


def _add_lists(prov, hash_lists):
    """Stream every list into the provenance table; returns the rows added."""
    from .lists import ListError
    added = 0
    for hl in hash_lists:
        try:
            already = prov.add_list(hl)
        except ListError as e:
            raise CliError(str(e)) from None
        _report_list(hl, already)
        added += hl.rows - already
    return added


def _in_file_order(indexes):
    """{kind: HashIndex} in the order an index file holds them: KINDS order, so a 64-bit kind comes first."""
    from .kinds import KINDS
    return {name: indexes[name] for name in KINDS if name in indexes}


def _add_perceptual(indexes, prov, hash_lists, since=0):
    """Add the lists' perceptual entries (table ids >= since) to their kind's HashIndex, creating it if new."""
    from .index import HashIndex
    from .kinds import KINDS, kind_of
    for name in {k for hl in hash_lists for k in hl.counts if k in KINDS}:
        kind = kind_of(name)
        ids, codes = prov.perceptual_rows(kind, since)
        if name not in indexes:
            indexes[name] = HashIndex(bits=kind.bits)
        if len(ids):
            indexes[name].add(codes, ids)
        del ids, codes          # the index holds its own sorted copies; keep the save's peak down


def cmd_build(a):
    from .index import HashIndex
    from .kinds import kind_of
    from .lists import IndexLock, Provenance, write_index
    kinds = a.kind or ("phash",)
    hash_lists = _hash_lists(a.lists, a.skip_bad, kinds)
    if os.path.isdir(a.output):
        raise CliError(f"-o {a.output} is a folder; give the index file name, e.g. {a.output}/lists.hsi")
    folder = os.path.dirname(os.path.abspath(a.output))
    if not os.path.isdir(folder):
        raise CliError(f"folder {folder} does not exist; create it first")
    with IndexLock(a.output):
        old_prov = _old_provenance(a.output)
        prov = Provenance.new_file(a.output)
        try:
            total = _add_lists(prov, hash_lists)
            if total == 0:
                raise CliError("the lists hold no entries; nothing to build (nothing written)")
            indexes = {}
            _add_perceptual(indexes, prov, hash_lists)
            if not indexes:                 # digests only: an empty index of the first kind named
                indexes[kinds[0]] = HashIndex(bits=kind_of(kinds[0]).bits)
            indexes = _in_file_order(indexes)
        except BaseException:
            prov.discard()
            raise
        write_index(a.output, indexes, prov, old_prov)
    perceptual = sum(len(ix) for ix in indexes.values())
    _info(f"wrote {a.output}: {_counts_text({k: len(ix) for k, ix in indexes.items()})} hashes, "
          f"{total - perceptual} MD5/SHA-1 digests from {len(hash_lists)} list(s)")
    return EXIT_OK


def _old_provenance(path):
    """The provenance table of the index being replaced (deleted after the new one is saved), or None.

    A file that is not a readable index has none; one whose metadata names a table unsafely is refused.
    """
    import sqlite3

    from .lists import Provenance, check_provenance, provenance_path
    from .storage import IndexFormatError, read_metadata
    try:
        meta = read_metadata(path)["metadata"]
    except (IndexFormatError, OSError):
        return None
    try:
        prov_path = provenance_path(path, meta)
        if prov_path is None or not os.path.exists(prov_path):
            return None
        try:
            prov = Provenance(prov_path)
        except (OSError, sqlite3.Error):
            return None
        try:
            check_provenance(prov, path, meta)
        finally:
            prov.close()
        return prov_path
    except (IndexFormatError, sqlite3.Error) as e:
        raise CliError(f"{e}; or delete {path} yourself before building over it") from None


def _open(path):
    from .lists import IndexOpenError, open_lists
    try:
        return open_lists(path)
    except IndexOpenError as e:
        raise CliError(str(e)) from None


@contextlib.contextmanager
def _updating(index_path):
    """Lock the index, open it and a new provenance table; save both if the block succeeds.

    The block may change li.indexes (add kinds to it). On any error the new table is discarded
    and the index file is left as it was.
    """
    from .lists import IndexLock, ListError, Provenance, write_index
    with IndexLock(index_path):
        li = _open(index_path)
        prov = Provenance.new_file(index_path, copy_from=li.prov)
        try:
            yield li, prov
        except ListError as e:
            prov.discard()
            raise CliError(str(e)) from None
        except BaseException:
            prov.discard()
            raise
        write_index(index_path, _in_file_order(li.indexes), prov, li.prov.path)
        li.close()


def _index_counts(li):
    return _counts_text({k: len(ix) for k, ix in _in_file_order(li.indexes).items()})


def cmd_add(a):
    with _updating(a.index) as (li, prov):
        # Untyped hashes are of the index's kinds unless --kind says otherwise.
        hash_lists = _hash_lists(a.lists, a.skip_bad, a.kind or tuple(li.indexes))
        since = prov.next_id()
        added = _add_lists(prov, hash_lists)
        _add_perceptual(li.indexes, prov, hash_lists, since)
    _info(f"added {added} entries to {a.index}; it now holds {_index_counts(li)} hashes")
    return EXIT_OK


def cmd_remove(a):
    with _updating(a.index) as (li, prov):
        hash_lists = _hash_lists(a.lists, a.skip_bad, a.kind or tuple(li.indexes))
        removed, missing = 0, 0
        for hl in hash_lists:
            ids, r, m = prov.remove_list_rows(hl, a.list)
            _report_list(hl, 0)
            removed += r
            missing += m
            for kind, kind_ids in ids.items():
                index = li.indexes[kind]
                index.remove(kind_ids)
                # Fold the tombstones in once they are a quarter of what is stored.
                if index.tombstones > len(index) / 3:
                    index.compact()
    _info(f"removed {removed} entries from {a.index}; it now holds {_index_counts(li)} hashes")
    if missing:
        _warn(f"{missing} rows matched no entry in the index")
    return EXIT_OK


def _files_of(li, meta):
    """Every file the index needs, index first: the base file of an incremental save, the provenance table."""
    folder = os.path.dirname(os.path.abspath(li.path))
    files = [li.path]
    if meta["base"] is not None:
        files.append(os.path.join(folder, meta["base"]["name"]))
    return files + [li.prov.path]


def cmd_info(a):
    from .storage import read_metadata
    li = _open(a.index)
    meta = read_metadata(a.index)
    lists = li.prov.summary()
    parts = [{"kind": kind.name, "code_bits": kind.bits, "count": p["count"], "entries": p["entries"]}
             for kind, p in zip(li.kinds, meta["parts"])]
    out = {"path": a.index, "format_version": meta["format_version"], "code_bits": meta["code_bits"],
           "kinds": [k.name for k in li.kinds], "counts": li.counts(), "parts": parts,
           "count": meta["count"], "entries": meta["entries"],
           "file_size": meta["file_size"], "created": meta["created_iso"],
           "provenance": li.prov.path, "files": _files_of(li, meta), "lists": lists}
    if a.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    counts = out["counts"]
    print(f"index        {a.index}")
    print(f"format       hashsieve index v{out['format_version']}: "
          + ", ".join(f"{p['kind']} ({p['code_bits']}-bit codes)" for p in parts))
    for p in parts:
        print(f"{p['kind']:<13}{p['count']:,} live ({p['entries']:,} stored, incl. removed not yet compacted)")
    print(f"digests      {counts.get('md5', 0):,} MD5, {counts.get('sha1', 0):,} SHA-1")
    print(f"file         {out['file_size']:,} bytes, written {out['created']}")
    print(f"provenance   {out['provenance']}")
    print(f"files        {len(out['files'])} (copy them together, or use `hashsieve copy`): "
          + ", ".join(out["files"]))
    print(f"lists        {len(lists)}")
    for x in lists:
        print(f"  {x['name']}: {_counts_text(x['counts'])}; "
              f"from {x['source']} (sha256 {x['sha256'][:12]}…, updated {x['updated']})")
    return EXIT_OK


def cmd_copy(a):
    from .lists import IndexLock, Provenance, write_index
    li = _open(a.index)
    dest = os.path.join(a.dest, os.path.basename(a.index)) if os.path.isdir(a.dest) else a.dest
    if os.path.lexists(dest):
        raise CliError(f"{dest} already exists; remove it first or copy to another name")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        raise CliError(f"folder {os.path.dirname(os.path.abspath(dest))} does not exist; create it first")
    with IndexLock(dest) as lock:
        prov = Provenance.new_file(dest, copy_from=li.prov)
        final = write_index(dest, li.indexes, prov, incremental=False)
        lock.remove()               # the copy is exactly two files
    li.close()
    _info(f"wrote {dest} ({_index_counts(li)} hashes) and its provenance table {final}; "
          "the two files are all the copy needs")
    return EXIT_OK


def _radii(specs, kinds):
    """{kind name: radius} from --radius values: R (one kind only) or KIND=R; every kind not named keeps
    its default."""
    radii = {}
    for spec in specs or ():
        if not kinds:
            raise CliError(f"--radius {spec}: no perceptual hash is matched here (MD5 and SHA-1 digests match "
                           "exactly); leave --radius out")
        name, equals, value = spec.rpartition("=")
        if equals and not name:
            raise CliError(f"--radius {spec}: name the kind before '=' (e.g. --radius {kinds[0].name}=R), "
                           "or give R alone")
        if not name:
            if len(kinds) != 1:
                raise CliError(f"--radius {spec} is ambiguous: this command matches {', '.join(k.name for k in kinds)} "
                               f"hashes; give one radius per kind, e.g. --radius {kinds[0].name}=R")
            name = kinds[0].name
        kind = next((k for k in kinds if k.name == name), None)
        if kind is None:
            raise CliError(f"--radius {spec}: no {name} hashes are matched here "
                           f"(kinds: {', '.join(k.name for k in kinds)})")
        try:
            r = int(value)
        except ValueError:
            raise CliError(f"--radius {spec}: the radius must be a whole number of bits") from None
        if not 0 <= r <= kind.bits:
            raise CliError(f"--radius must be from 0 to {kind.bits} bits for {kind.name}, got {r}")
        radii[kind.name] = r
    return radii


def cmd_query(a):
    from .kinds import kind_of
    from .lists import DIGEST_KINDS, parse_hash, perceptual_kinds
    li = _open(a.index)
    try:
        by_digits = perceptual_kinds(a.kind or tuple(li.indexes))
    except ValueError as e:
        raise CliError(f"--kind: {e}") from None
    parsed = []
    for h in a.hashes:
        try:
            kind, hx = parse_hash(h, by_digits)
        except ValueError as e:
            raise CliError(f"query {e}") from None
        if kind not in DIGEST_KINDS and kind not in li.indexes:
            raise CliError(f"query {h}: a {kind} hash, but {a.index} holds no {kind} hashes "
                           f"(it holds {', '.join(li.indexes)})")
        parsed.append((kind, hx))
    radii = _radii(a.radius, [kind_of(k) for k in dict.fromkeys(k for k, _ in parsed) if k not in DIGEST_KINDS])
    if a.k is not None and not 1 <= a.k <= MAX_K:
        raise CliError(f"-k must be from 1 to {MAX_K}, got {a.k}")
    any_match = False
    for kind, h in parsed:
        if kind in DIGEST_KINDS:
            matches, radius = li.match_digests([h], kind)[0], 0
        else:
            k = kind_of(kind)
            radius = radii.get(kind, k.default_radius)
            code = k.from_hex([h])
            matches = (li.nearest(code, a.k, kind=k, match_degenerate=a.match_degenerate)[0] if a.k is not None
                       else li.match(code, radius, kind=k, match_degenerate=a.match_degenerate)[0])
        any_match |= any(m["distance"] <= radius for m in matches)
        if a.json:
            print(json.dumps({"hash": h, "kind": kind, "matches": matches}), flush=True)
        elif not matches:
            print(f"{h}\t-\tno match")
        else:
            for m in matches:
                print(f"{h}\t{m['distance']}\t{m['list']}\t{m['id'] if m['id'] is not None else '-'}\t"
                      f"{m['label'] if m['label'] is not None else '-'}")
    return EXIT_MATCH if any_match else EXIT_OK


def _limits(a):
    from .scan import Limits
    if not (math.isfinite(a.max_file_mb) and a.max_file_mb * (1 << 20) >= 1):
        raise CliError(f"--max-file-mb must be a finite number of MiB, at least one byte, got {a.max_file_mb}")
    if not a.max_pixels >= 1:
        raise CliError(f"--max-pixels must be at least 1, got {a.max_pixels}")
    return Limits(max_file_bytes=int(a.max_file_mb * (1 << 20)), max_pixels=a.max_pixels)


def _add_limit_options(p):
    from .hashing import DEFAULT_MAX_PIXELS
    p.add_argument("--max-file-mb", type=float, default=256,
                   help="largest file or archive member read, decompressed (default 256)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"largest image decoded, in pixels (default {DEFAULT_MAX_PIXELS:,}, Pillow's "
                        "decompression-bomb guard); raise it only for files you trust")


def cmd_hash(a):
    from .scan import ScanOptions, progress_bar, record_name, scan
    for p in a.paths:
        if not os.path.lexists(p):
            raise CliError(f"{p}: no such file or folder")
    failed = [0]
    # A bar only when the hashes go to a file or pipe: on the terminal they show the progress.
    progress = None if sys.stdout.isatty() else progress_bar("hash")

    def out(rec):
        name = record_name(rec)
        if rec["hash"] is not None:
            print(f"{rec['hash']}\t{name}", flush=True)
        else:
            failed[0] += 1
            line = f"hashsieve: {name}: {rec['error']}"
            if progress is None:
                print(line, file=sys.stderr, flush=True)
            else:
                progress.write(line, file=sys.stderr)   # (clears the bar, writes, draws it again)

    opts = ScanOptions(kinds=[a.kind], workers=a.workers, fast=a.fast, limits=_limits(a),
                       follow_symlinks=a.follow_symlinks)
    stop = _install_stop()
    try:
        s = scan(a.paths, None, out, opts, progress=progress, stop=stop)
    finally:
        if progress is not None:
            progress.close()
    if s.interrupted:
        return 130 if stop.signum == signal.SIGINT else 143
    return EXIT_MATCH if failed[0] else EXIT_OK


def _install_stop():
    from .scan import _Stop
    stop = _Stop()
    signal.signal(signal.SIGINT, stop.handler)
    signal.signal(signal.SIGTERM, stop.handler)
    return stop


def _scan_function(a):
    """(scan function, local path of the index): scan.scan, or with --cluster the distributed scan,
    which also reads inputs and the index by URL."""
    from .remote import is_url, local_path
    a.paths = [local_path(p) for p in a.paths]
    urls = [p for p in a.paths + [a.index] if is_url(p)]
    if a.task_files < 1:
        raise CliError(f"--task-files must be at least 1, got {a.task_files}")
    if a.cluster is None:
        from .scan import scan
        if urls:
            raise CliError(f"{urls[0]} is a URL: reading from storage needs --cluster (local:N for N worker "
                           "processes here, or the scheduler's address)")
        return scan, a.index

    def cluster_scan(*args, **kwargs):
        import logging

        from . import distributed
        with contextlib.suppress(ImportError):      # (distributed.scan says how to install Dask)
            import distributed as dask_distributed  # noqa: F401  (its import sets its loggers' levels)
        # Dask's log of a lost connection is a traceback: the scan says it in one line.
        for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "distributed"]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            return distributed.scan(*args, cluster=a.cluster, index_location=a.index if is_url(a.index) else None,
                                    task_files=a.task_files, **kwargs)
        except distributed.ClusterError as e:
            raise CliError(str(e)) from None

    if not is_url(a.index):
        return cluster_scan, a.index
    from .remote import fetch_index
    try:
        return cluster_scan, fetch_index(a.index)
    except Exception as e:
        raise CliError(f"cannot fetch the index {a.index} ({type(e).__name__}: {e}); check the URL") from None


def _warn_unhashed_kinds(previous, kinds, report):
    """Warn when files of the report being resumed were hashed without a kind this scan matches (the
    index gained a kind, or --kind changed): they are skipped, so they are never matched by it."""
    from .scan import record_kinds
    hashed = [record_kinds(r) for r in previous if r.get("error") is None]     # (errors: not hashed at all)
    for kind in kinds:
        n = sum(kind.name not in names for names in hashed)
        if n:
            _warn(f"{n} files of {report} were scanned without {kind.name} hashes (by an earlier index or "
                  f"--kind) and are not scanned again, so they make no {kind.name} match; scan with --overwrite "
                  "to hash them all")


def cmd_scan(a):
    from .remote import is_url
    from .scan import ScanOptions, progress_bar, read_report
    scan, index_path = _scan_function(a)
    for p in a.paths:
        if not is_url(p) and not os.path.lexists(p):
            raise CliError(f"{p}: no such file or folder; check the path")
    li = _open(index_path)
    try:
        kinds = [li.kind_named(k) for k in a.kind] if a.kind else li.kinds
    except ValueError as e:
        raise CliError(f"--kind: {e}; scan with --kind {','.join(li.indexes)} or leave --kind out") from None
    radii = _radii(a.radius, kinds)
    if a.dihedral and not any(k.dihedral for k in kinds):
        raise CliError(f"--dihedral matches the rotated and flipped PDQ hashes of each file, but this scan matches "
                       f"no PDQ hashes ({', '.join(k.name for k in kinds)})")
    if a.resume and not a.report:
        raise CliError("--resume needs --report OUT.jsonl (the report of the interrupted scan)")
    opts = ScanOptions(radius=radii, kinds=[k.name for k in kinds], workers=a.workers, fast=a.fast,
                       match_degenerate=a.match_degenerate, match_low_quality=a.match_low_quality,
                       dihedral=a.dihedral, low_detail=a.low_detail_threshold, limits=_limits(a),
                       follow_symlinks=a.follow_symlinks)
    previous = []
    if a.report:
        if os.path.isdir(a.report):
            raise CliError(f"--report {a.report} is a folder; give a file name such as {a.report}/report.jsonl")
        exists = os.path.exists(a.report) and os.path.getsize(a.report) > 0
        if exists and not a.resume and not a.overwrite:
            raise CliError(f"report {a.report} already exists; pass --resume to continue that scan, "
                           "--overwrite to start again, or choose another file")
        if exists and a.resume:
            try:
                previous, valid = read_report(a.report)
            except ValueError as e:
                raise CliError(str(e)) from None
            with open(a.report, "r+b") as f:
                f.truncate(valid)       # drop a line cut short by a kill
            _warn_unhashed_kinds(previous, kinds, a.report)
        out = open(a.report, "a" if a.resume else "w", encoding="utf-8")
    else:
        out = sys.stdout
    # No bar between report lines on the terminal: they show the progress.
    progress = None if out is sys.stdout and sys.stdout.isatty() else progress_bar("scan", initial=len(previous))
    stop = _install_stop()
    exclude = [a.index, a.index + ".lock", li.prov.path] + ([a.report] if a.report else [])
    try:
        s = scan(a.paths, li, out, opts, resume_records=previous, progress=progress, stop=stop, exclude=exclude)
    finally:
        if progress is not None:
            progress.close()
        if out is not sys.stdout:
            out.flush()
            if stat.S_ISREG(os.fstat(out.fileno()).st_mode):    # a pipe or terminal cannot be fsynced
                os.fsync(out.fileno())
            out.close()
    d = s.as_dict()
    rate = f"{d['images_per_second']} images/s" if d["images_per_second"] is not None else "-"
    _info(f"scanned {d['files']} files ({d['resumed_from_report']} from the earlier run): {d['images']} images "
          f"hashed, {d['matched_files']} matched ({d['matches']} matches), {d['degenerate']} degenerate, "
          f"{d['low_quality']} low quality, {d['errors']} errors; {d['seconds']} s, {rate}"
          + (f"; report {a.report}" if a.report else ""))
    if d["all_failed"]:
        _warn(f"every file failed ({d['errors']} errors): nothing was hashed or matched against the lists; "
              "see the error field of the report lines" + (f" in {a.report}" if a.report else ""))
    if a.summary_json:
        print(json.dumps(d), file=sys.stderr)
    if s.interrupted:
        _info(f"interrupted by {s.interrupted}; every finished file is in the report. "
              + ("Continue with the same command plus --resume." if a.report else
                 "Use --report FILE to be able to resume."))
        return 130 if stop.signum == signal.SIGINT else 143
    return EXIT_MATCH if s.matched else EXIT_OK


# ====================================================================== service
def cmd_keys_add(a):
    from .keys import KeysFileError, add_key, parse_scopes
    try:
        secret = add_key(a.file, a.name, parse_scopes(a.scopes))
    except KeysFileError as e:
        raise CliError(str(e)) from None
    print(secret)
    _info(f"added key {a.name!r} to {a.file}; the secret above is shown only this once (the file keeps a salted "
          "hash of it): send it as the header Authorization: Bearer <secret>")
    return EXIT_OK


def cmd_keys_remove(a):
    from .keys import KeysFileError, remove_key
    try:
        remove_key(a.file, a.name)
    except KeysFileError as e:
        raise CliError(str(e)) from None
    _info(f"removed key {a.name!r} from {a.file}; a running service refuses it within its --watch interval")
    return EXIT_OK


def cmd_serve(a):
    from .service import ServeConfig, ServeError, serve
    for name in ("rate", "burst", "max_upload_mb", "watch", "header_timeout", "body_timeout"):
        value = getattr(a, name)
        if not (math.isfinite(value) and value >= 0) or (value == 0 and name not in ("rate",)):
            raise CliError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if a.decoders is not None and not 1 <= a.decoders <= 4 * available_cores():
        raise CliError(f"--decoders must be from 1 to {4 * available_cores()}, got {a.decoders}")
    if not 1 <= a.port <= 65535:
        raise CliError(f"--port must be from 1 to 65535, got {a.port}")
    if not 0 <= a.max_radius <= 256:
        raise CliError(f"--max-radius must be from 0 to 256 bits, got {a.max_radius}")
    workers = a.workers or 1
    cfg = ServeConfig(index=os.path.abspath(a.index), keys=os.path.abspath(a.keys), host=a.host, port=a.port,
                      workers=workers, decoders=a.decoders or max(1, available_cores() // workers),
                      rate=a.rate, burst=a.burst, max_upload_bytes=int(a.max_upload_mb * (1 << 20)),
                      max_radius=a.max_radius, audit_log=a.audit_log, watch_seconds=a.watch,
                      header_timeout=a.header_timeout, body_timeout=a.body_timeout, run_dir=None)
    try:
        serve(cfg)
    except ServeError as e:
        raise CliError(str(e)) from None
    return EXIT_OK


def _add_service_parsers(sub):
    from .keys import SCOPES
    k = sub.add_parser("keys", help="manage the API keys of `hashsieve serve`")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    ka = ksub.add_parser("add", help="add a key; prints its secret once")
    ka.add_argument("name", metavar="NAME", help="who holds the key (shown in the audit log)")
    ka.add_argument("--scopes", required=True, help=f"comma-separated, from: {', '.join(SCOPES)}")
    ka.add_argument("--file", required=True, metavar="KEYS", help="keys file (created if missing)")
    ka.set_defaults(func=cmd_keys_add)
    kr = ksub.add_parser("remove", help="remove (revoke) a key")
    kr.add_argument("name", metavar="NAME")
    kr.add_argument("--file", required=True, metavar="KEYS")
    kr.set_defaults(func=cmd_keys_remove)

    v = sub.add_parser("serve", help="serve an index over HTTP (the screening service, docs/service.md)",
                       description="Serve INDEX over HTTP: POST /v1/match (an image), POST /v1/lookup (hashes), "
                                   "GET /v1/status, /metrics, /openapi.json (API key needed) and /healthz, "
                                   "/readyz. New versions of INDEX are swapped in as they are saved.")
    v.add_argument("index", metavar="INDEX")
    v.add_argument("--keys", required=True, metavar="KEYS", help="keys file from `hashsieve keys add`")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    v.add_argument("--workers", type=int, default=None, help="server processes, sharing the mapped index "
                                                             "(default 1)")
    v.add_argument("--decoders", type=int, default=None,
                   help="image decoding processes per server process (default: cores / workers)")
    v.add_argument("--rate", type=float, default=200.0,
                   help="requests/s allowed per key, across all workers (default 200; 0: no limit)")
    v.add_argument("--burst", type=float, default=400.0, help="requests a key may send at once (default 400)")
    v.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload, MiB (default 32)")
    v.add_argument("--max-radius", type=int, default=16,
                   help="largest radius a lookup may ask for (default 16: wider ones return floods); "
                        "never below a kind's default radius (PDQ 31)")
    v.add_argument("--audit-log", default="-", metavar="FILE",
                   help="audit log, JSON lines appended (default -: standard output)")
    v.add_argument("--watch", type=float, default=2.0, help="seconds between checks for a new index (default 2)")
    v.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a client has to send the request headers (default 10)")
    v.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send the request body (default 30)")
    v.set_defaults(func=cmd_serve)


# ====================================================================== parser
def _kinds_arg(text):
    """--kind K[,K...]: kind names."""
    from .kinds import KINDS
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown) or repr(text)}; kinds: {', '.join(KINDS)}")
    return names


def build_parser():
    from .distributed import TASK_FILES
    from .hashing import HASH_KINDS
    from .kinds import KINDS, LOW_DETAIL_THRESHOLD, PDQ_LOW_QUALITY
    radii = ", ".join(f"{k.name} {k.default_radius}" for k in KINDS.values())
    radius_help = (f"largest Hamming distance, inclusive: R, or KIND=R per kind (repeat it); default per kind: "
                   f"{radii}")
    kinds_help = ("what untyped hashes in the lists are, as KIND[,KIND]: 16 hex digits are the 64-bit kind named "
                  "(default phash); 64 digits are PDQ only with pdq named (64 digits are also SHA-256). CSV 'kind' "
                  "columns and 'TYPE HASH' lines say it per row")
    fast_help = ("faster hashing (big images decoded or reduced at a smaller size): about 1 bit from the exact "
                 "hash for the 64-bit kinds, a few for PDQ (mean 3-5, up to 20 measured); see docs/hashing.md "
                 "and docs/pdq.md")
    degenerate_help = ("also match degenerate hashes (blank, solid, striped, transparent images; list entries "
                       "of them too), which carry no identity; see docs/cli.md")
    p = argparse.ArgumentParser(
        prog="hashsieve",
        description="Match images against lists of perceptual hashes (and MD5/SHA-1 digests).",
        epilog="Exit status: 0 nothing matched / success; 1 something matched (scan, query) or some files "
               "could not be hashed (hash); 2 usage, list, index or file error; 3 internal error (a bug); "
               "130/143 scan interrupted by Ctrl-C/SIGTERM (continue with --resume). See docs/cli.md.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    list_help = ("hash list files: plain text (one hex hash per line, or python-threatexchange's 'TYPE HASH' "
                 "lines such as 'pdq 01ab...', # comments) or CSV with a 'hash' column and optional 'kind', 'id', "
                 "'label' and more; 16 hex digits = 64-bit perceptual hash, 64 = PDQ (with --kind pdq or a type), "
                 "32 = MD5, 40 = SHA-1. NAME=PATH names the list (default: file name without extension)")

    b = sub.add_parser("build", help="build an index file from hash lists",
                       description="Build an index (and its provenance table INDEX.lists-*.db beside it) from "
                                   "hash lists. Nothing is written unless every list parses.")
    b.add_argument("lists", nargs="+", metavar="LIST", help=list_help)
    b.add_argument("-o", "--output", required=True, metavar="INDEX", help="index file to write (atomically)")
    b.add_argument("--kind", type=_kinds_arg, metavar="KIND[,KIND]", help=kinds_help)
    b.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows instead of stopping")
    b.set_defaults(func=cmd_build)

    update_kinds_help = kinds_help.replace("(default phash)", "(default: the index's kinds, else phash)")
    ad = sub.add_parser("add", help="add hash lists to an index, in place and atomically")
    ad.add_argument("index", metavar="INDEX")
    ad.add_argument("lists", nargs="+", metavar="LIST", help=list_help)
    ad.add_argument("--kind", type=_kinds_arg, metavar="KIND[,KIND]", help=update_kinds_help)
    ad.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    ad.set_defaults(func=cmd_add)

    rm = sub.add_parser("remove", help="remove the entries of hash lists from an index, in place and atomically",
                        description="Remove entries with the same hash (and the same id, when the row has one).")
    rm.add_argument("index", metavar="INDEX")
    rm.add_argument("lists", nargs="+", metavar="LIST", help=list_help)
    rm.add_argument("--list", metavar="NAME", help="only remove from the list of this name (default: any list)")
    rm.add_argument("--kind", type=_kinds_arg, metavar="KIND[,KIND]", help=update_kinds_help)
    rm.add_argument("--skip-bad", action="store_true", help="skip and count malformed rows")
    rm.set_defaults(func=cmd_remove)

    i = sub.add_parser("info", help="format, counts per kind and lists of an index")
    i.add_argument("index", metavar="INDEX")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("copy", help="write a self-contained copy of an index (and its provenance) elsewhere",
                       description="Write DEST: the index as one self-contained file (no base file) and a copy of "
                                   "its provenance table beside it, each written atomically. DEST is a new file "
                                   "name or an existing folder.")
    c.add_argument("index", metavar="INDEX")
    c.add_argument("dest", metavar="DEST")
    c.set_defaults(func=cmd_copy)

    h = sub.add_parser("hash", help='print "HEX<TAB>PATH" per image (recurses into folders and archives)')
    h.add_argument("paths", nargs="+", metavar="PATH")
    h.add_argument("--kind", default="phash", choices=HASH_KINDS, help="which hash to print (default phash)")
    h.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    h.add_argument("--fast", action="store_true", help=fast_help)
    _add_limit_options(h)
    h.add_argument("--follow-symlinks", action="store_true",
                   help="also follow symbolic links to files outside the PATHs given (default: an error line)")
    h.set_defaults(func=cmd_hash)

    q = sub.add_parser("query", help="look hex hashes up in an index")
    q.add_argument("index", metavar="INDEX")
    q.add_argument("hashes", nargs="+", metavar="HEX",
                   help="16-digit 64-bit perceptual hash, 64-digit PDQ hash, or 32/40-digit MD5/SHA-1")
    q.add_argument("--kind", type=_kinds_arg, metavar="KIND[,KIND]",
                   help="what untyped hashes are, as for build (default: the index's kinds)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--radius", "-r", action="append", metavar="[KIND=]R", help=radius_help)
    g.add_argument("-k", type=int, help=f"the k nearest entries instead of a radius (1 to {MAX_K}); the exit "
                                         "status is 1 only if one of them is within the kind's default radius")
    q.add_argument("--json", action="store_true", help="one JSON line per query")
    q.add_argument("--match-degenerate", action="store_true", help=degenerate_help)
    q.set_defaults(func=cmd_query)

    s = sub.add_parser("scan", help="scan folders and archives against an index, writing a JSON-lines report",
                       description="Walk folders and zip/tar archives (also .tar.gz/.bz2/.xz and archives in "
                                   "archives), hash every image in worker processes (every kind the index holds, "
                                   "from one decode) and report one JSON line per file. Exit 0 nothing matched, "
                                   "1 something matched, 2 usage/index error, 130/143 interrupted (continue with "
                                   "--resume).")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--index", required=True, metavar="INDEX")
    s.add_argument("--radius", "-r", action="append", metavar="[KIND=]R", help=radius_help)
    s.add_argument("--kind", type=_kinds_arg, metavar="KIND[,KIND]",
                   help="match only these of the index's kinds (default: every kind it holds)")
    s.add_argument("--report", metavar="OUT.jsonl", help="report file (default: standard output)")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted scan: keep its report, skip the files already in it")
    s.add_argument("--overwrite", action="store_true", help="replace an existing report")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    s.add_argument("--fast", action="store_true", help=fast_help)
    s.add_argument("--match-degenerate", action="store_true", help=degenerate_help)
    s.add_argument("--match-low-quality", action="store_true",
                   help=f"also match PDQ hashes of files under quality {PDQ_LOW_QUALITY} (python-threatexchange's "
                        "threshold; they are flagged low_quality and make no PDQ match by default)")
    s.add_argument("--dihedral", action="store_true",
                   help="also match the seven rotated and flipped PDQ hashes of each file; each PDQ match names "
                        "the variant it matched through")
    s.add_argument("--low-detail-threshold", type=float, default=LOW_DETAIL_THRESHOLD, metavar="D",
                   help=f"detail score below which a file is flagged low_detail in the report, for information "
                        f"(default {LOW_DETAIL_THRESHOLD})")
    _add_limit_options(s)
    s.add_argument("--summary-json", action="store_true", help="also print the summary as JSON on stderr")
    s.add_argument("--follow-symlinks", action="store_true",
                   help="also follow symbolic links to files outside the PATHs given (default: an error line)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="scan on a Dask cluster: its scheduler's address (tcp://HOST:8786), or local:N for N "
                        "worker processes here; PATHs and --index may then be URLs (s3://, gs://, https://); "
                        "see docs/cli.md")
    s.add_argument("--task-files", type=int, default=TASK_FILES, metavar="N",
                   help=f"with --cluster: files per task, at most (default {TASK_FILES}; big zips are split by it)")
    s.set_defaults(func=cmd_scan)
    _add_service_parsers(sub)
    return p


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):     # a non-UTF-8 terminal gets escapes, never an error
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    a = parser.parse_args(argv)
    most = 4 * available_cores()                # more worker processes than that only thrash
    if getattr(a, "workers", None) is not None and not 1 <= a.workers <= most:
        parser.error(f"--workers must be from 1 to {most} (4 per core), got {a.workers}")
    try:
        return a.func(a)
    except CliError as e:
        _err(str(e))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:        # a file we were told to read or write: name it
        where = f"{e.filename}: " if e.filename else ""
        _err(f"{where}{e.strerror or e}; check the paths given and their permissions")
        return EXIT_ERROR
    except Exception as e:      # a bug: one line, never the 'match' status
        _err(f"internal error ({type(e).__name__}: {e}); this is a bug in hashsieve, please report it "
             "(set HASHSIEVE_TRACEBACK=1 to print the traceback)")
        if os.environ.get("HASHSIEVE_TRACEBACK") == "1":
            import traceback
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
