"""Bulk scan: walk folders and archives, hash images in worker processes, match, report.

The report has one JSON line per file, in walk order, flushed as it is written::

    {"path": "...", "member": null | "name in archive", "member_path": null | ["name", ...],
     "hash": "hex" | null, "detail": float | null, "low_detail": bool, "degenerate": bool,
     "low_quality": bool,
     "hashes": {KIND: {"hash": "hex" | null, "detail": float | "quality": int,
                       "low_detail" | "low_quality": bool, "degenerate": bool,
                       "flattened": true (only when true), "dihedral": ["hex" x 8] (scan --dihedral, PDQ),
                       "error": "text" (only when this kind failed)}, ...},
     "md5": "...", "sha1": "...",
     "matches": [{"list", "id", "label", "distance", "kind", "line", "variant" (--dihedral, PDQ)}],
     "error": null | "text", "flattened": true (only when true)}

A scan computes every kind the index holds (ScanOptions.kinds: a subset) from one decode of
each file.  ``hashes`` has one object per kind, in the index's order (a 64-bit kind first);
its score is the kind's: ``detail`` and ``low_detail`` for the 64-bit kinds, ``quality``
(0-100, the reference's) and ``low_quality`` for PDQ.  The top-level ``hash``, ``detail``,
``low_detail``, ``degenerate`` and ``flattened`` repeat the first kind's (for a pHash index,
exactly what a report held before several kinds; ``detail`` is null and ``low_detail`` false
when the first kind is PDQ), and ``low_quality`` is true when any kind's is.  A kind that
failed on a file others could hash has ``hash`` null and its ``error``; a file no kind could
hash has the top-level ``error``.  Each match names its entry's ``kind`` and the Hamming
``distance`` (0 for MD5/SHA-1).  Reports written before ``hashes`` existed resume alike.

``flattened``: present, and true, only for an image with alpha that was hashed flattened onto
white (or black) because its hash, which drops the alpha, is degenerate (a logo whose shape is
only in the alpha channel); that hash is not imagehash's or pytx's (hashing.hash_image).
``md5`` / ``sha1``: of the file's bytes as read, also when it is empty or cannot be decoded;
null only when it could not be read.

``degenerate``: the hash carries no identity (kinds.py: one-dimensional bits, or within the
radius of all-zero / all-one), so it makes no perceptual match of its kind unless
match_degenerate; list entries with such hashes make none either.  ``low_detail`` (detail score
below the threshold) is information only: low-contrast images keep their matches (docs/cli.md,
"Degenerate hashes").  ``low_quality`` (PDQ quality under 50, python-threatexchange's threshold)
blocks: such an upload makes no PDQ match unless match_low_quality (its other kinds still match).

``dihedral`` (scan --dihedral): the eight PDQ hashes of the image rotated and flipped, in
pdqhash.compute_dihedral's order (DIHEDRAL_VARIANTS); the plain hash and the other seven are
matched, and each PDQ match names the ``variant`` it matched through (the nearest; ties go to
the earlier variant, "original" first).

``member_path`` names a file inside an archive, one name per level of nesting:
``["inner.zip", "name"]`` is ``name`` inside the archive member ``inner.zip``.  ``member``
is the same joined by ``!/`` (``"inner.zip!/name"``), for reading; only member_path is
unambiguous (a member may itself be called ``"inner.zip!/name"``).  A name repeated in one
archive gets ``#2``, ``#3``... (skipping any taken by another member).  A broken archive gives
one line with ``member`` null (or the nested archive's name) and the error, after the lines of
the members read before the damage.

Names that are not valid UTF-8 (bytes a file system or a tar header holds, decoded by Python
with surrogate escapes) are written as text with U+FFFD for each undecodable byte, plus the
exact bytes in base64: ``"path_b64"`` beside ``"path"``, and ``"member_path_b64"``, a list
beside ``member_path`` with null for each name that is valid UTF-8.  Those fields appear only
when needed.  record_key() turns a record back into the walk's exact key, record_name() into
one printable line.

Resume: the report is read back, a partial last line (a killed writer) is cut off, and every
(path, member_path) already reported is skipped.  Records without member_path (reports
written before it existed) are keyed by their member split at ``!/``, as those scans named them.
"""
import base64
import binascii
import bisect
import bz2
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import signal
import stat
import sys
import tarfile
import threading
import time
import zipfile
import zlib

from PIL import Image

from ._validate import available_cores
from .hashing import CHUNK_BYTES, DEFAULT_MAX_PIXELS, ImageHashError, run_in_workers
from .kinds import KINDS, LOW_DETAIL_THRESHOLD, kind_of

__all__ = ["Limits", "ScanOptions", "Screener", "hash_jobs", "scan", "walk", "LOW_DETAIL_THRESHOLD", "read_report",
           "record_key", "record_kinds", "record_name", "progress_bar", "DIHEDRAL_VARIANTS"]

# The eight PDQ hashes of hash_image(..., dihedral=True), in its order (pdqhash.compute_dihedral's).
DIHEDRAL_VARIANTS = ("original", "rotate90", "rotate180", "rotate270", "flip_x", "flip_y", "flip_plus1",
                     "flip_minus1")

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
    """A file to report: job is a (path, st_dev, st_ino) the worker opens, or the bytes of an
    archive member; or error is set.  member is None or a tuple of names, one per archive level;
    size is what the job weighs in memory."""

    __slots__ = ("path", "member", "job", "size", "error")

    def __init__(self, path, member, job=None, size=0, error=None):
        self.path, self.member, self.job, self.size, self.error = path, member, job, size, error

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


class _MemoryFile(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying it (io.BytesIO copies a bytearray)."""

    def __init__(self, buf):
        self._buf, self._pos = memoryview(buf), 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        self._pos = max(0, (0, self._pos, len(self._buf))[whence] + offset)
        return self._pos

    def readinto(self, b):
        part = self._buf[self._pos:self._pos + len(b)]
        b[:len(part)] = part
        self._pos += len(part)
        return len(part)


def _read_member(f, size, limits, compressed=None):
    """The `size` bytes a member declares (<= max_file_bytes; zipfile and tarfile never give
    more), read into one buffer: shorter if the stream ends early.  BombError past max_ratio."""
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size:
            n = f.readinto(view[got:got + (1 << 20)])
            if not n:
                break
            got += n
            if compressed is not None and got > limits.ratio_floor and got > limits.max_ratio * max(compressed, 1):
                raise BombError(f"zip bomb: expands over {limits.max_ratio}:1 ({got:,} bytes from "
                                f"{compressed:,}); not read further")
    del buf[got:]
    return buf


def _walk_archive(fileobj, size, path, prefix, kind, depth, limits, done, members=None):
    """Items of the members of an archive; a damaged archive ends with an error item (member=prefix).

    fileobj: any seekable binary file object.  members: None, or a range of positions in a zip's
    list of entries to read (the distributed scan splits a big zip by them); the others are named
    (for the #2 suffixes) and counted towards the archive's bomb limit, but not read."""
    try:
        if kind == "zip":
            yield from _walk_zip(fileobj, size, path, prefix, depth, limits, done, members)
        else:
            yield from _walk_tar(fileobj, size, path, prefix, depth, limits, done)
    except BombError as e:
        yield Item(path, prefix or None, error=str(e))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError,
            ValueError, NotImplementedError, RuntimeError) as e:
        what = "zip" if kind == "zip" else "tar"
        yield Item(path, prefix or None, error=f"broken {what} archive ({type(e).__name__}: {e}); members "
                                               "before the damage are reported")


def _member_items(path, member, data, depth, limits, done):
    """The member itself, or the members of the archive it is."""
    kind = _archive_type(member[-1], data[:512]) if depth < limits.max_depth else None
    if kind is not None:
        if (path, member) not in done:
            yield from _walk_archive(_MemoryFile(data), len(data), path, member, kind, depth + 1, limits, done)
        return
    if (path, member) not in done:
        item = Item(path, member, job=data, size=len(data))
        # A suspended generator keeps its locals: without this the data would stay here,
        # after the worker has its copy, until the walk moves on.
        del data
        yield item


def _unique(name, seen):
    """name, or name#2, #3... if an earlier member of the archive took it (as a name or a suffix)."""
    if name not in seen:
        seen[name] = 2
        return name
    n = seen[name]
    while f"{name}#{n}" in seen:
        n += 1
    seen[name] = n + 1
    seen[f"{name}#{n}"] = 2
    return f"{name}#{n}"


class _CentralDirectoryAsCp437(io.RawIOBase):
    """A zip file seen with the UTF-8 name flag cleared in its central directory.

    zipfile decodes a flagged name strictly, so one member whose flagged name is not UTF-8
    made the whole archive unreadable (and every image in it unscanned). Through this view
    every name decodes as cp437, one character per byte, which _zip_name() turns back into
    the exact bytes; the member data are read unchanged.
    """

    def __init__(self, f):
        self.f = f
        endrec = zipfile._EndRecData(f)
        if endrec is None:
            raise zipfile.BadZipFile("no end of central directory record")
        start = endrec[zipfile._ECD_LOCATION] - endrec[zipfile._ECD_SIZE]
        if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        concat = start - endrec[zipfile._ECD_OFFSET]    # bytes prepended to the archive (self-extractors)
        # Where each name's flag byte is (central record and local header: zipfile checks both),
        # and whether the name was flagged UTF-8.
        self.flag_bytes, self.utf8 = set(), []
        pos, end = start, start + endrec[zipfile._ECD_SIZE]
        while pos + 46 <= end:
            f.seek(pos)
            rec = f.read(46)
            if rec[:4] != b"PK\x01\x02":
                break
            self.flag_bytes.add(pos + 9)             # the high byte of the flags holds bit 11 (0x800)
            local = int.from_bytes(rec[42:46], "little")
            if local != 0xFFFFFFFF:                  # (a zip64 offset lives in the extra field: left as it is)
                self.flag_bytes.add(local + concat + 7)
            self.utf8.append(bool(rec[9] & 0x08))
            pos += 46 + int.from_bytes(rec[28:30], "little") + int.from_bytes(rec[30:32], "little") + \
                int.from_bytes(rec[32:34], "little")
        self.flag_bytes = sorted(self.flag_bytes)
        f.seek(0)

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def read(self, n=-1):
        at = self.f.tell()
        data = self.f.read(n)
        lo = bisect.bisect_left(self.flag_bytes, at)
        hi = bisect.bisect_left(self.flag_bytes, at + len(data))
        if lo < hi:
            data = bytearray(data)
            for p in self.flag_bytes[lo:hi]:
                data[p - at] &= 0xF7
            data = bytes(data)
        return data


def _zip_name(info, utf8):
    """The member's name as the walk reports it: bytes of a flagged name decoded as UTF-8 (with surrogate
    escapes for invalid bytes, as file names are), others as cp437, as zipfile does."""
    return info.filename.encode("cp437").decode("utf-8", "surrogateescape") if utf8 else info.filename


def _open_zip(fileobj):
    """(ZipFile, whether each member's name was flagged UTF-8 or None to use the names as zipfile gives them)."""
    try:
        return zipfile.ZipFile(fileobj), None
    except UnicodeDecodeError:          # a flagged name that is not UTF-8: read the names byte for byte
        view = _CentralDirectoryAsCp437(fileobj)
        return zipfile.ZipFile(view), view.utf8


def _walk_zip(fileobj, size, path, prefix, depth, limits, done, members=None):
    zf, utf8 = _open_zip(fileobj)
    seen, total = {}, 0
    for k, info in enumerate(zf.infolist()[:limits.max_members]):
        if info.is_dir():
            continue
        name = info.filename if utf8 is None else _zip_name(info, k < len(utf8) and utf8[k])
        member = prefix + (_unique(name, seen),)
        if (path, member) in done:
            continue
        if members is not None and k not in members:
            if k >= members.stop:
                break
            if not info.flag_bits & 1 and info.file_size <= limits.max_file_bytes:
                total += info.file_size         # what reading it adds below
            continue
        if members is not None and total > limits.ratio_floor and total > limits.max_ratio * max(size, 1):
            return                              # the bomb error is on the range before
        if info.flag_bits & 1:
            yield Item(path, member, error="encrypted zip member; cannot be read without the password")
            continue
        if info.file_size > limits.max_file_bytes:
            yield Item(path, member, error=f"declares {info.file_size:,} bytes, above the "
                                           f"{limits.max_file_bytes >> 20} MiB limit (--max-file-mb); not read")
            continue
        try:
            with zf.open(info) as f:
                data = _read_member(f, info.file_size, limits, info.compress_size)
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
        items = _member_items(path, member, data, depth, limits, done)
        del data                        # (see _member_items)
        yield from items


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
        member = prefix + (_unique(m.name, seen),)
        if (path, member) in done:
            continue
        if not m.isreg():
            what = "symbolic link" if m.issym() else "hard link" if m.islnk() else "special file"
            yield Item(path, member, error=f"{what} inside the archive, not a regular file; not followed")
            continue
        if m.size > limits.max_file_bytes:
            yield Item(path, member, error=too_big(m.size, limits.max_file_bytes))
            continue
        data = _read_member(tf.extractfile(m), m.size, limits)
        if len(data) != m.size:
            raise EOFError(f"member {_text(m.name)!r} is truncated")
        items = _member_items(path, member, data, depth, limits, done)
        del data                        # (see _member_items)
        yield from items


def too_big(size, max_bytes):
    """The error of a file or member above the size limit."""
    return f"{size:,} bytes, above the {max_bytes >> 20} MiB limit (--max-file-mb); not read"


def _walk_file(path, st, limits, done):
    if (path, None) in done:
        return
    job = (path, st.st_dev, st.st_ino)
    if st.st_size == 0:
        yield Item(path, None, job=job)      # the worker reports "empty file"
        return
    try:
        with open(path, "rb") as f:
            if not _same_file(os.fstat(f.fileno()), st):
                yield Item(path, None, error=_CHANGED)
                return
            head = f.read(512)
            kind = _archive_type(path, head)
            if kind is None:
                yield Item(path, None, job=job, size=st.st_size)
                return
            yield from _walk_archive(f, st.st_size, path, (), kind, 1, limits, done)
    except OSError as e:
        yield Item(path, None, error=f"cannot read the file ({e.strerror or e})")


_OUTSIDE = ("resolves outside the folders being scanned (a folder on its path is a symbolic link, or was "
            "replaced by one during the scan); not read (pass --follow-symlinks to allow it)")
_CHANGED = "the file was replaced while it was being scanned (it is not the file the walk checked); not read"


def _same_file(a, b):
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _inside(real, roots):
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def walk(paths, limits=None, done=frozenset(), exclude=(), follow_symlinks=False, list_only=False):
    """Items for every file under paths (folders recursed in name order, archives opened).

    list_only: each regular file is one Item with job (path, dev, ino) and its size, not opened
    (archives too: the distributed scan opens them where it runs).
    A symbolic link to a file is followed only when what it points to is inside one of paths
    (resolved with realpath; a path given may itself be a link), or with follow_symlinks;
    links to folders are never followed.
    """
    limits = limits or Limits()
    paths = [os.fspath(p) for p in paths]
    exclude = {os.path.realpath(p) for p in exclude}
    roots = [os.path.realpath(p) for p in paths]
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
                why = "symbolic link loop" if getattr(e, "errno", None) == errno.ELOOP else "broken symbolic link"
                yield Item(path, None, error=f"{why} ({e.strerror or e}); not followed" if is_link
                           else f"cannot read ({e.strerror or e})")
            return
        if stat.S_ISDIR(st.st_mode):
            if is_link and not top:
                if (path, None) not in done:
                    yield Item(path, None, error="symbolic link to a folder; not followed (scan its target "
                                                 "directly if it belongs to the archive)")
                return
            if not top and not follow_symlinks and not _inside(os.path.realpath(path), roots):
                if (path, None) not in done:
                    yield Item(path, None, error=_OUTSIDE)
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
        real = os.path.realpath(path)
        if real in exclude:
            return
        if not top and not follow_symlinks and not _inside(real, roots):
            # A link, or a path through a folder swapped for a link while the walk ran.
            if (path, None) not in done:
                yield Item(path, None, error=f"symbolic link to {real}, outside the folders being scanned; "
                                             "not followed (pass --follow-symlinks to scan what it points to)"
                           if is_link else _OUTSIDE)
            return
        if not stat.S_ISREG(st.st_mode):
            if (path, None) not in done:
                yield Item(path, None, error="not a regular file (device, FIFO or socket); not read")
            return
        key = os.path.abspath(path)
        if key in seen_files:
            return
        seen_files.add(key)
        if not list_only:
            yield from _walk_file(path, st, limits, done)
        elif (path, None) not in done:
            yield Item(path, None, job=(path, st.st_dev, st.st_ino), size=st.st_size)

    for p in paths:
        yield from visit(p, True)


# ====================================================================== progress
def progress_bar(desc, initial=0):
    """A tqdm bar on standard error that scan() keeps a total, rate and ETA on (files, as
    _Total counts them), or None when standard error is not a terminal or tqdm is missing."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(unit="file", file=sys.stderr, dynamic_ncols=True, initial=initial, total=initial, desc=desc)


def _zip_entries(path, limits):
    """The entries a zip's end-of-central-directory record declares (directories too; zip64
    too), at most max_members; 1 for a file that is no zip.  Reads at most the last 64 KiB."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            start = max(0, size - (22 + 0xFFFF))
            f.seek(start)
            tail = f.read()
            i = tail.rfind(b"PK\x05\x06")
            if i < 0 or i + 22 > len(tail):
                return 1
            n = int.from_bytes(tail[i + 10:i + 12], "little")
            if n == 0xFFFF and i >= 20 and tail[i - 20:i - 16] == b"PK\x06\x07":     # zip64
                f.seek(int.from_bytes(tail[i - 12:i - 4], "little"))
                record = f.read(40)
                if record[:4] == b"PK\x06\x06" and len(record) == 40:
                    n = int.from_bytes(record[32:40], "little")
    except OSError:
        return 1
    return max(1, min(n, limits.max_members))


def _estimate(path, limits):
    """Report lines a file is expected to give: a zip's entries, anything else (a tar, whose
    members cannot be counted without decompressing it all) one."""
    return _zip_entries(path, limits) if path.lower().endswith((".zip", ".cbz")) else 1


class _Total:
    """The progress bar's total: a background walk of the folders (names only, no file opened but
    zips' directories) sums _estimate over the files, and the scan's own walk adds what each file
    gives beyond its estimate (a tar's members, archives inside archives) as it reads them.
    Neither holds more than the folders being listed."""

    def __init__(self, paths, limits, done):
        self.limits = limits
        self.done = {}                  # path: report lines resumed from it (not counted again)
        for path, _ in done:
            self.done[path] = self.done.get(path, 0) + 1
        self.counted = 0                # the background walk's sum
        self.counting = True
        self.extra = 0                  # lines beyond the estimate, in files the scan has finished
        self.path, self.expected, self.got = None, 0, 0     # the file the scan is reading
        self._stop = threading.Event()
        threading.Thread(target=self._count, args=(paths,), daemon=True).start()

    def _expected(self, path):
        return max(0, _estimate(path, self.limits) - self.done.get(path, 0))

    def _count(self, paths):
        for top in paths:
            stack = [top] if os.path.isdir(top) else []
            if not stack:
                self.counted += self._expected(top)
            while stack and not self._stop.is_set():
                try:
                    with os.scandir(stack.pop()) as entries:
                        for e in entries:
                            if e.is_dir(follow_symlinks=False):
                                stack.append(e.path)
                            else:
                                self.counted += self._expected(e.path)
                except OSError:
                    self.counted += 1       # the walk reports the folder it cannot list
        self.counting = False

    def follow(self, items):
        """The items, unchanged, counted per file as they pass."""
        for item in items:
            if item.path != self.path:
                self.extra += self.got - self.expected
                self.path, self.expected, self.got = item.path, self._expected(item.path), 0
            self.got += 1
            yield item

    def close(self):
        self._stop.set()

    @property
    def value(self):
        return self.counted + self.extra + max(self.got, self.expected) - self.expected


# ====================================================================== workers
def hash_jobs(jobs, kinds, fast, max_pixels, max_bytes, dihedral=False):
    """[(hashes, md5|None, sha1|None, error|None)] per job ((path, dev, ino) or bytes).

    hashes: {kind name: (code, score, flattened, dihedral, error)} for each of kinds (names), code
    None and error set where that kind failed; dihedral is uint8 (8, 32) for PDQ when dihedral is
    set, else None.  Every kind is hashed from one decode of the file.  hashes is None, and error
    set, when the file could not be read or is empty.  md5 and sha1 are those of the content read,
    empty too.  Runs in the worker processes (Screener.job_args gives the arguments after jobs);
    never raises for a bad file.
    """
    kinds = [kind_of(name) for name in kinds]
    out = []
    for job in jobs:
        md5 = sha1 = None
        try:
            if isinstance(job, tuple):
                path, dev, ino = job
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if (st.st_dev, st.st_ino) != (dev, ino):
                        raise ImageHashError(path, _CHANGED)
                    if st.st_size > max_bytes:
                        raise ImageHashError(path, too_big(st.st_size, max_bytes))
                    data = f.read(max_bytes + 1)
            else:
                data = job
            md5 = hashlib.md5(data).hexdigest()
            sha1 = hashlib.sha1(data).hexdigest()
            if not data:
                out.append((None, md5, sha1, "empty file (0 bytes); the upload or copy was probably cut short"))
                continue
            out.append((_hash_kinds(data, kinds, fast, max_pixels, dihedral), md5, sha1, None))
        except ImageHashError as e:
            out.append((None, md5, sha1, e.reason))
        except OSError as e:
            out.append((None, md5, sha1, f"cannot read the file ({e.strerror or e})"))
        except Exception as e:          # never let one file stop the scan
            out.append((None, md5, sha1, f"unexpected {type(e).__name__}: {e}"))
    return out


def _hash_kinds(data, kinds, fast, max_pixels, dihedral):
    """{kind name: (code, score, flattened, dihedral codes or None, error or None)} of one file's bytes.

    Several kinds share one decode: the file is opened once as a PIL image, which each kind
    hashes as it is (hash_image of a PIL image is that of its bytes; its max_pixels guard
    runs before the pixels are read).  With fast, each kind decodes the bytes itself at its own
    reduced size instead (a reduced decode is cheaper than one full one).
    """
    image = data
    if len(kinds) > 1 and not fast:
        try:
            image = Image.open(io.BytesIO(data))
        except Exception:
            image = data            # not an image Pillow opens: each kind's hash says why, from the bytes
    try:
        out = {}
        for kind in kinds:
            try:
                if dihedral and kind.dihedral:
                    # One hash of the eight variants; the first is the plain hash (the same flattening too).
                    variants, score, flattened = kind.hash(image, fast, max_pixels=max_pixels, dihedral=True)
                    code = variants[0]
                else:
                    (code, score, flattened), variants = kind.hash(image, fast, max_pixels=max_pixels), None
                out[kind.name] = (code, score, flattened, variants, None)
            except ImageHashError as e:
                out[kind.name] = (None, None, False, None, e.reason)
        return out
    finally:
        if image is not data:
            image.close()


def _worker_died(job):
    return None, None, None, ("the worker process died while decoding this file "
                              "(decoder crash or out-of-memory kill)")


def _units(items, chunk):
    """(items, jobs, bytes) for the worker pool: up to `chunk` files (less than CHUNK_BYTES of data
    unless one file is bigger), or one error item with no job."""
    metas, jobs, nbytes = [], [], 0
    for item in items:
        if metas and (item.error is not None or nbytes + item.size > CHUNK_BYTES):
            yield metas, jobs, nbytes
            metas, jobs, nbytes = [], [], 0
        if item.error is not None:
            yield [item], [], 0
            continue
        metas.append(item)
        jobs.append(item.job)
        item.job = None                 # the pool owns it now (and drops it once a worker has it)
        nbytes += item.size
        if len(metas) == chunk or nbytes >= CHUNK_BYTES:     # (not reading another file first)
            yield metas, jobs, nbytes
            metas, jobs, nbytes = [], [], 0
    if metas:
        yield metas, jobs, nbytes


# ====================================================================== report
def _raw(name):
    return name.encode("utf-8", "surrogateescape")


def _text(s):
    """s as valid UTF-8 text: each undecodable byte (a surrogate escape) becomes U+FFFD."""
    try:
        return _raw(s).decode("utf-8", "replace")
    except UnicodeEncodeError:      # a surrogate no decoder made (from an exception's text)
        return s.encode("utf-8", "replace").decode("utf-8")


def _b64(name):
    return base64.b64encode(_raw(name)).decode("ascii")


def _name_fields(path, member):
    """The naming fields of a record (see the module docstring)."""
    rec = {"path": _text(path)}
    if rec["path"] != path:
        rec["path_b64"] = _b64(path)
    if member is None:
        rec["member"] = rec["member_path"] = None
        return rec
    texts = [_text(m) for m in member]
    rec["member"] = MEMBER_SEP.join(texts)
    rec["member_path"] = texts
    if texts != list(member):
        rec["member_path_b64"] = [None if t == m else _b64(m) for t, m in zip(texts, member)]
    return rec


def _name(text, b64, field):
    if not isinstance(text, str):
        raise ValueError(f"{field} is not a string")
    if b64 is None:
        return text
    if not isinstance(b64, str):
        raise ValueError(f"{field}_b64 is not a string")
    return base64.b64decode(b64, validate=True).decode("utf-8", "surrogateescape")


def record_kinds(rec):
    """The kind names a report record was hashed with (a kind that failed on the file too): those of
    its "hashes", or, for a record written before several kinds, every kind of its top-level hash's
    width (the index's one kind is not named)."""
    if isinstance(rec.get("hashes"), dict):
        return set(rec["hashes"])
    digits = len(rec["hash"]) if isinstance(rec.get("hash"), str) else None
    return {k.name for k in KINDS.values() if k.hex_digits == digits}


def record_key(rec):
    """(path, member) of a report record exactly as walk() names the file: member is None or a
    tuple of names.  ValueError if the record's naming fields are malformed."""
    path = _name(rec.get("path"), rec.get("path_b64"), "path")
    if "member_path" not in rec:            # written before member_path existed
        member = rec.get("member")
        return path, None if member is None else tuple(_name(member, None, "member").split(MEMBER_SEP))
    names = rec["member_path"]
    if names is None:
        return path, None
    b64s = rec.get("member_path_b64") or [None] * len(names)
    if not isinstance(names, list) or not names or not isinstance(b64s, list) or len(b64s) != len(names):
        raise ValueError("member_path is not a list of names (with member_path_b64 of the same length)")
    return path, tuple(_name(t, b, "member_path") for t, b in zip(names, b64s))


# Characters that would make a printed name ambiguous, break its line or deceive a terminal.
_UNPRINTABLE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(m):
    c = m.group()
    o = ord(c)
    if c in _ESCAPES:
        return _ESCAPES[c]
    if 0xDC80 <= o <= 0xDCFF:               # an undecodable byte
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def record_name(rec):
    """The record's file as one printable line, path!/member!/...: lossless, with undecodable
    bytes as \\xNN, control and bidirectional-override characters as \\n, \\t, \\xNN or \\uNNNN,
    and a backslash as \\\\."""
    path, member = record_key(rec)
    return _UNPRINTABLE.sub(_escape, MEMBER_SEP.join((path,) + (member or ())))


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
                record_key(rec)
            except (ValueError, binascii.Error):
                if k == len(lines) - 2 and not lines[-1]:
                    break               # last line garbled: redo that file
                raise ValueError(f"{path}:{k + 1}: not a hashsieve report line; resume needs the report "
                                 "written by `hashsieve scan --report`") from None
            records.append(rec)
        good = end
        pos = end
    return records, good


class ScanOptions:
    """How files are hashed and matched; the scan, the service and the distributed scan take one.

    kinds: kind names to compute for every file; None: every kind the index holds (phash when
        there is no index).  radius: None (each kind's default: pHash 8, PDQ 31), an int (when
        there is one kind), or {kind name: radius}.  match_degenerate: degenerate hashes (and
        entries) match too.  match_low_quality: PDQ hashes under quality 50 match too.
        dihedral: also match the seven rotated and flipped PDQ hashes of each file.
        low_detail: the detail score under which a 64-bit hash is flagged low_detail.
    """

    def __init__(self, radius=None, kinds=None, workers=None, fast=False, match_degenerate=False,
                 match_low_quality=False, dihedral=False, low_detail=LOW_DETAIL_THRESHOLD, limits=None, chunk=4,
                 follow_symlinks=False):
        self.kinds = None if kinds is None else [kind_of(name).name for name in kinds]
        self.radius = radius
        self.workers = workers or available_cores()
        self.fast, self.match_degenerate, self.low_detail = fast, match_degenerate, low_detail
        self.match_low_quality, self.dihedral = match_low_quality, dihedral
        self.limits = limits or Limits()
        self.chunk = chunk
        self.follow_symlinks = follow_symlinks     # also symlinks to files outside the paths scanned


class Summary:
    def __init__(self):
        self.files = self.hashed = self.errors = self.degenerate = self.low_quality = self.matched = self.matches = 0
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
        if rec.get("degenerate"):
            self.degenerate += 1
        if rec.get("low_quality"):
            self.low_quality += 1
        if rec.get("matches"):
            self.matched += 1
            self.matches += len(rec["matches"])

    @property
    def all_failed(self):
        """True when there were files and every one of them is an error line."""
        return self.files > 0 and self.errors == self.files

    def as_dict(self):
        return {"files": self.files, "images": self.hashed, "errors": self.errors, "degenerate": self.degenerate,
                "low_quality": self.low_quality, "matched_files": self.matched, "matches": self.matches,
                "resumed_from_report": self.resumed, "all_failed": self.all_failed, "seconds": round(self.elapsed, 3),
                "images_per_second": round(self.hashed_now / self.elapsed, 1) if self.elapsed else None,
                "interrupted": self.interrupted}


class Screener:
    """What every front end does with a file's hash results: the report record and its matches.

    The scan, the screening service and the distributed scan all run
    ``hash_jobs(jobs, *screener.job_args)`` wherever the bytes are decoded (a worker process, a
    Dask worker), then ``screener.records(items, results)`` where the index is open, so a file
    gets the same record whichever way it came in (the fields: this module's docstring).

    lindex: a lists.ListIndex, or None to only hash.  options: ScanOptions.
    Attributes: kinds (the HashKind objects computed, a 64-bit one first), radius {kind name:
    radius}, job_args (picklable: kind names, fast, max_pixels, max_file_bytes, dihedral).
    ValueError for a kind the index does not hold, or an int radius with several kinds.
    """

    def __init__(self, lindex, options):
        self.lindex, self.options = lindex, options
        if options.kinds is not None:
            self.kinds = [lindex.kind_named(name) if lindex is not None else kind_of(name) for name in options.kinds]
        else:
            self.kinds = list(lindex.kinds) if lindex is not None else [kind_of("phash")]
        radius = options.radius
        if radius is not None and not isinstance(radius, dict):
            if len(self.kinds) != 1:
                raise ValueError(f"radius {radius} is ambiguous with {len(self.kinds)} kinds "
                                 f"({', '.join(k.name for k in self.kinds)}); give {{kind: radius}}")
            radius = {self.kinds[0].name: radius}
        unknown = set(radius or ()) - {k.name for k in self.kinds}
        if unknown:
            raise ValueError(f"radius for {', '.join(sorted(unknown))}, which this scan does not compute "
                             f"({', '.join(k.name for k in self.kinds)})")
        self.radius = {k.name: (radius or {}).get(k.name, k.default_radius) for k in self.kinds}
        self.job_args = (tuple(k.name for k in self.kinds), options.fast, options.limits.max_pixels,
                         options.limits.max_file_bytes, options.dihedral)
        self._digests = lindex is not None and lindex.prov.has_digests()

    def _kind_fields(self, kind, result):
        """The record's "hashes" object of one kind, from its hash_jobs result."""
        code, score, flattened, variants, error = result
        if code is None:
            return {"hash": None, "error": _text(error)}
        below = self.options.low_detail if kind.score == "detail" else None
        fields = {"hash": kind.to_hex(code)[0],
                  kind.score: round(float(score), 3) if kind.score == "detail" else int(score),
                  f"low_{kind.score}": bool(kind.low_quality(score, below)),
                  "degenerate": bool(kind.degenerate(kind.as_codes([code]), self.radius[kind.name])[0])}
        if flattened:
            fields["flattened"] = True
        if variants is not None:
            fields["dihedral"] = kind.to_hex(variants)
        return fields

    def _record(self, item, hashes=None, md5=None, sha1=None, error=None):
        hashes = {k.name: self._kind_fields(k, hashes[k.name]) for k in self.kinds} if hashes else {}
        first = hashes.get(self.kinds[0].name, {})
        if hashes and all(h["hash"] is None for h in hashes.values()):
            error = first["error"]              # no kind could hash it: the file's error
        rec = {**_name_fields(item.path, item.member),
               "hash": first.get("hash"), "detail": first.get("detail"), "low_detail": first.get("low_detail", False),
               "degenerate": first.get("degenerate", False),
               "low_quality": any(h.get("low_quality", False) for h in hashes.values()),
               "hashes": hashes, "md5": md5, "sha1": sha1, "matches": [],
               "error": None if error is None else _text(error)}
        if first.get("flattened"):
            rec["flattened"] = True
        return rec

    def error_record(self, item):
        """The record of an item the walk could not read (item.error set)."""
        return self._record(item, error=item.error)

    def records(self, items, results):
        """Report records (with matches) of items (anything with .path and .member, as walk's
        Items) from their hash_jobs results, in order."""
        recs = [self._record(it, *res) for it, res in zip(items, results)]
        if self.lindex is not None:
            for kind in self.kinds:
                self._match_kind(kind, recs)
        if self._digests:
            for r in recs:
                for digest in ("md5", "sha1"):
                    if r[digest]:
                        r["matches"] += self.lindex.match_digests([r[digest]], digest)[0]
        return recs

    def _match_kind(self, kind, recs):
        """Add the kind's matches to the records that have its hash and pass its quality gate."""
        opts = self.options
        gate = kind.gate_blocks and not opts.match_low_quality
        queries = [r for r in recs if r["hashes"] and r["hashes"][kind.name]["hash"] is not None
                   and not (gate and r["hashes"][kind.name][f"low_{kind.score}"])]
        if not queries:
            return
        fields = [r["hashes"][kind.name] for r in queries]
        hexes = [[f["hash"]] + (f["dihedral"][1:] if "dihedral" in f else []) for f in fields]
        found = self.lindex.match(kind.from_hex([h for group in hexes for h in group]), self.radius[kind.name],
                                  kind=kind, match_degenerate=opts.match_degenerate)
        at = 0
        for rec, group in zip(queries, hexes):
            if len(group) == 1:
                rec["matches"] += found[at]
            else:
                rec["matches"] += _nearest_variants(found[at:at + len(group)])
            at += len(group)


def _nearest_variants(per_variant):
    """One record per entry the variants matched, with the nearest variant (the earlier on a tie)."""
    best = {}
    for variant, matches in zip(DIHEDRAL_VARIANTS, per_variant):
        for m in matches:
            key = (m["list"], m["id"], m["label"], m["line"])
            if key not in best or m["distance"] < best[key]["distance"]:
                best[key] = {**m, "variant": variant}
    return sorted(best.values(), key=lambda m: m["distance"])


class _Stop:
    def __init__(self):
        self.signum = None
        self.event = threading.Event()

    def handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt        # second Ctrl-C: give up at once
        self.signum = signum
        self.event.set()


def report_writer(out):
    """The function that writes one record to out: out itself when it is callable, else a JSON line
    on the text stream, flushed."""
    if callable(out):
        return out
    # The report is UTF-8; any other stream gets JSON's \u escapes, which every encoding can carry.
    ascii_only = (getattr(out, "encoding", None) or "").lower().replace("-", "") != "utf8"

    def write(rec):
        out.write(json.dumps(rec, ensure_ascii=ascii_only) + "\n")
        out.flush()
    return write


def scan(paths, lindex, out, options, resume_records=(), progress=None, stop=None, exclude=()):
    """Scan paths against lindex (lists.ListIndex, or None to only hash), writing each record as a
    JSON line to the text stream out (or calling out(record) if it is callable).

    resume_records: records of an earlier run to skip.  Returns a Summary.
    progress: None or a tqdm bar (progress_bar()): a step per report line, and a total that a
    background count of the folders keeps up to date (_Total).
    Memory: see docs/hashing.md ("Worker pool and memory"); the worker pool keeps at most
    hashing.INFLIGHT_BYTES_PER_WORKER x workers of file data in flight beyond one file.
    """
    opts = options
    summary = Summary()
    done = set()
    for rec in resume_records:
        done.add(record_key(rec))
        summary.count(rec, now=False)
    summary.resumed = len(done)
    screener = Screener(lindex, opts)
    stop = stop or _Stop()
    t0 = time.monotonic()
    items = walk(paths, opts.limits, done, exclude, opts.follow_symlinks)
    total = None
    if progress is not None:
        total = _Total([os.fspath(p) for p in paths], opts.limits, done)
        items = total.follow(items)
    write = report_writer(out)

    def emit(rec):
        write(rec)
        summary.count(rec)
        if progress is not None:
            progress.total = max(progress.n + 1, progress.initial + total.value)
            progress.update(1)
            if summary.files % 8 == 0:
                progress.set_postfix_str(_postfix(summary, t0, total), refresh=False)

    try:
        for metas, results in run_in_workers(_units(items, opts.chunk), hash_jobs, screener.job_args, _worker_died,
                                             opts.workers, stop=stop.event):
            for rec in screener.records(metas, results) if results else [screener.error_record(metas[0])]:
                emit(rec)
    finally:
        summary.elapsed = time.monotonic() - t0
        if stop.signum is not None:
            summary.interrupted = signal.Signals(stop.signum).name
        if progress is not None:
            total.close()
            if stop.signum is None:
                progress.total = progress.n         # the estimate was off by excluded files and the like
            progress.set_postfix_str(_postfix(summary, t0), refresh=True)
    return summary


def _postfix(s, t0, total=None):
    dt = max(time.monotonic() - t0, 1e-9)
    counting = "counting files, " if total is not None and total.counting else ""
    return f"{counting}{s.hashed_now / dt:.1f} img/s, matched {s.matched}, errors {s.errors}"
