"""The index file: one versioned, checksummed, memory-mappable file per index version.

Layout (every integer little-endian; format version 3, which reads versions 1 and 2)::

    [0, 128)            fixed header: magic, format version, header length, header CRC,
                        code width, file length, created (ns), next id, live count,
                        segment / section / metadata counts, flags, part count; the rest zero
    128 + 64 * p        version 3: one 64-byte record per part (an index of one hash kind):
                        name, code width, segments, next id, live count
    ... + 64 * s        one 64-byte record per segment: entries, distinct codes, live
                        entries, tables m, flags (has tombstones, has id order), bits[16]
    ... + 48 * i        one 48-byte record per section: segment, kind, table, dtype, flags
                        (1 = in the base file), offset, element count, byte length, CRC-32
    [if header flag 1]  base record: base file length, its header CRC, its name (same folder)
    ... + metadata      free-form JSON object (UTF-8), e.g. the provenance of the lists
    [64-aligned)        the sections, each at a 64-byte aligned offset, zero padding
                        between them; the file ends where the last section ends

A file holds one index (versions 1 and 2: no part records, the fixed header's code width,
next id and live count are the index's) or several (version 3, ``save_parts``: one part per
hash kind, e.g. a 64-bit pHash index and a 256-bit PDQ index; the fixed header's code width
and next id are 0, its live count the total; each part's segments follow the segments of the
parts before it, and a part's segments all have the part's code width). One index is always
written as version 2, so earlier hashsieve versions keep reading single-index files;
``load_index`` opens a one-index file, ``load_parts`` any file.

The header CRC covers the whole header region (fixed header, the part, segment and section
tables and the metadata) so a damaged header is always caught, even without ``verify``. Every
section has its own CRC-32, checked by ``verify()`` / ``load(verify=True)``.

Loading checks every header field, every section's kind, dtype, size and position against
the counts (a 256-bit code is four words of the codes section: its 32 bytes in order),
and the invariants that are cheap to check: bucket boundaries of every table,
group bounds, tombstone bitmap, live counts, and that the next id is above the largest id
(read through the id order). Segments of up to ``DEEP_CHECK_ENTRIES`` entries get every
O(n) check on each load too: their entries (codes and groups ascending, ids ascending in
each group, the id order sorts the ids) and their tables (each holds every code once, in
its bucket, with its fingerprint). A bigger segment opened without ``verify`` is checked
later: its entries before the first change or save of the index (O(n) anyway), so those
raise ``IndexFormatError``; its tables not at all, and its queries rely on the native
code's clamps, which keep every read in bounds (a damaged file gives wrong answers at
worst, never a crash). ``verify()`` / ``load(verify=True)`` checks every section's CRC and
all of the above for every segment, whatever its size: open a file from an untrusted place
with ``verify=True``.

Saving writes a temporary file in the target's folder, fsyncs it, renames it over
the target and fsyncs the folder, so a crash leaves either the old or the new
file, never a mix. When most of the index is unchanged sections of a loaded
self-contained file (a daily update), that file is hard-linked beside the target
as ``NAME.base-<header CRC>`` and the new file holds only the changed sections,
referencing the base for the rest (no chains: a base never has a base). Other
sections that come unchanged from a loaded file are copied in the kernel
(``copy_file_range``) with their stored checksums. After the rename, base files
the new version does not reference are deleted.
"""
import datetime
import json
import mmap as _mmap
import os
import re
import secrets
import stat
import struct
import sys
import threading
import time
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _core

__all__ = ["IndexFormatError", "IndexHandle", "read_metadata", "save_index", "save_parts", "load_index",
           "load_parts", "verify_index", "verify_parts", "FORMAT_VERSION"]

MAGIC = b"\x89HSIEVE\n"        # \x89 catches 7-bit transfers, \n catches newline translation
FORMAT_VERSION = 3
SINGLE_VERSION = 2             # what a file of one index is written as (readable by hashsieve before parts)
CODE_BITS = (64, 256)          # code widths a file may hold (the header's code width, or a part's)
MAX_PARTS = 16
PART_NAME = re.compile(r"[a-z0-9_]{1,16}\Z")
ALIGN = 64
MAX_TABLES = 16               # bits[8:16] were reserved zero bytes before 256-bit codes: old files read alike
MAX_HEADER = 64 << 20          # header + metadata; refuse anything bigger before reading it
MAX_SEGMENTS = 1 << 16
CHUNK = 16 << 20               # checksum / write granularity
# Segments this small get every O(n) structural check on each load (about a millisecond).
DEEP_CHECK_ENTRIES = 1 << 20

FIXED = struct.Struct("<8sIIIIQqqQIIIII52x")         # 128 bytes (the part count was reserved zero before v3)
PART = struct.Struct("<16sIIqQ24x")                  # 64 bytes: name, code bits, segments, next id, live
SEGMENT = struct.Struct("<QQQII16B16x")              # 64 bytes
SECTION = struct.Struct("<IHHIIQQQII")               # 48 bytes
CRC_AT = 16                                          # byte position of the header CRC
SEG_HAS_DEAD, SEG_HAS_ORDER = 1, 2
BASE = struct.Struct("<QII")                         # base file: length, header CRC, name length; the name
HDR_HAS_BASE = 1                                     # header flag (version 2): a base record follows the sections
SEC_EXTERNAL = 1                                     # section flag (version 2): the payload is in the base file

DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u4"), 3: np.dtype("<u8"), 4: np.dtype("<i8")}
DTYPE_CODES = {dt: code for code, dt in DTYPES.items()}
# kind -> (name, dtype code); tables have one section per table k (table_* from k=1).
KINDS = {1: ("codes", 3), 2: ("group_start", 2), 3: ("ids", 4), 4: ("dead", 1), 5: ("id_order", 4),
         6: ("offsets", 2), 7: ("fingerprints", 2), 8: ("table_groups", 2)}
KIND_CODES = {name: code for code, (name, _) in KINDS.items()}

assert FIXED.size == 128 and PART.size == 64 and SEGMENT.size == 64 and SECTION.size == 48


class IndexFormatError(ValueError):
    """The file is not a hashsieve index this version can read: damaged, truncated, foreign or too new."""


def _align(x):
    return (x + ALIGN - 1) // ALIGN * ALIGN


def _fail(path, message):
    raise IndexFormatError(f"{path}: {message}")


# ====================================================================== layout
def _expected_sections(seg, code_bits):
    """(kind, table, dtype code, element count) of every section of a segment record, in file order;
    a code is code_bits // 64 words of the codes section."""
    n, u, m, flags, bits = seg["entries"], seg["unique"], seg["m"], seg["flags"], seg["bits"]
    out = [(1, 0, 3, u * (code_bits // 64)), (2, 0, 2, u + 1), (3, 0, 4, n)]
    if flags & SEG_HAS_DEAD:
        out.append((4, 0, 1, (n + 7) // 8))
    if flags & SEG_HAS_ORDER:
        out.append((5, 0, 4, n))
    out += [(6, k, 2, (1 << bits[k]) + 1) for k in range(m)]
    out += [(7, k, 2, u) for k in range(m if code_bits == 64 else 0)]     # 256-bit tables have no fingerprints
    out += [(8, k, 2, u) for k in range(1 if code_bits == 64 else 0, m)]    # 64-bit table 0 is in code order
    return out


def _section_name(sec):
    name = KINDS[sec["kind"]][0]
    if sec["kind"] >= 6:
        name += f"[{sec['table']}]"
    return f"segment{sec['segment']}.{name}"


class _Layout:
    """A parsed and checked header: everything but the section payloads."""

    def __init__(self, path, fixed, parts, segments, sections, metadata, header_length, base=None):
        self.path = path
        self.header_crc = fixed["header_crc"]
        self.base = base            # {"name", "file_length", "header_crc"} of the base file, or None
        self.version, self.file_length = fixed["version"], fixed["file_length"]
        self.created_ns, self.live = fixed["created_ns"], fixed["live"]
        # [{"name" (None before version 3), "code_bits", "first" segment, "segments", "next_id", "live"}]
        self.parts = parts
        self.segments, self.sections, self.metadata = segments, sections, metadata
        self.header_length = header_length

    def info(self):
        created = self.created_ns / 1e9
        widths = {p["code_bits"] for p in self.parts}
        return {
            "format_version": self.version,
            "code_bits": widths.pop() if len(widths) == 1 else None,     # None: parts of both widths
            "count": self.live,
            "entries": sum(s["entries"] for s in self.segments),
            "next_id": max(p["next_id"] for p in self.parts),
            "parts": [{"name": p["name"], "code_bits": p["code_bits"], "count": p["live"],
                       "entries": sum(s["entries"] for s in self.segments[p["first"]:p["first"] + p["segments"]]),
                       "next_id": p["next_id"], "segments": list(range(p["first"], p["first"] + p["segments"]))}
                      for p in self.parts],
            "created": created,
            "created_iso": datetime.datetime.fromtimestamp(created, datetime.timezone.utc).isoformat(),
            "file_size": self.file_length,
            "header_length": self.header_length,
            "segments": [{"entries": s["entries"], "unique": s["unique"], "live": s["live"],
                          "bits": list(s["bits"][:s["m"]]), "tombstones": bool(s["flags"] & SEG_HAS_DEAD)}
                         for s in self.segments],
            "header_crc32": f"{self.header_crc:08x}",
            "base": None if self.base is None else {
                "name": self.base["name"], "file_size": self.base["file_length"],
                "header_crc32": f"{self.base['header_crc']:08x}"},
            "sections": [{"name": _section_name(s), "offset": s["offset"], "nbytes": s["nbytes"],
                          "dtype": DTYPES[s["dtype"]].str, "crc32": s["crc"], "in_base": s["external"]}
                         for s in self.sections],
            "checksums": {_section_name(s): f"crc32:{s['crc']:08x}" for s in self.sections},
            "metadata": self.metadata,
        }


def _parse_layout(path, read_at, file_size):
    """Parse and check the header; read_at(offset, n) returns exactly n bytes of the file."""
    if sys.byteorder != "little":
        raise IndexFormatError("hashsieve index files are little-endian; this host is big-endian")
    if file_size < FIXED.size:
        _fail(path, f"truncated or not an index file: {file_size} bytes, a header alone is {FIXED.size}")
    head = read_at(0, FIXED.size)
    (magic, version, header_length, header_crc, code_bits, file_length, created_ns, next_id, live,
     n_segments, n_sections, metadata_length, flags, n_parts) = FIXED.unpack(head)
    if magic != MAGIC:
        _fail(path, f"not a hashsieve index file (magic {magic!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION:
        _fail(path, f"index file format version {version} is newer than this hashsieve reads "
                    f"({FORMAT_VERSION}); upgrade hashsieve")
    if version < 1:
        _fail(path, f"invalid format version {version}")
    if not FIXED.size <= header_length <= min(file_size, MAX_HEADER):
        _fail(path, f"header length {header_length} is impossible for a file of {file_size} bytes "
                    "(truncated or damaged)")
    raw = bytearray(read_at(0, header_length))
    raw[CRC_AT:CRC_AT + 4] = b"\0\0\0\0"
    if zlib.crc32(raw) != header_crc:
        _fail(path, "header checksum mismatch: the header is damaged")
    # The header is what the writer wrote; from here on, errors mean a writer bug or a forged file.
    if any(raw[FIXED.size - 52:FIXED.size]) or (version < 3 and n_parts):
        _fail(path, "reserved header bytes are not zero")
    if version < 3 and code_bits not in CODE_BITS:
        _fail(path, f"code width {code_bits} bits is not supported by this hashsieve (only 64 and 256)")
    if version >= 3 and (code_bits or next_id or not 1 <= n_parts <= MAX_PARTS):
        _fail(path, f"a file of parts has code width {code_bits}, next id {next_id} (both must be 0) and "
                    f"{n_parts} parts (1 to {MAX_PARTS})")
    if flags & ~HDR_HAS_BASE or (flags and version < 2):
        _fail(path, f"unknown header flags {flags:#x}")
    if file_length != file_size:
        _fail(path, f"file is {file_size} bytes but its header says {file_length} (truncated or appended to)")
    if n_segments > MAX_SEGMENTS:
        _fail(path, f"{n_segments} segments is implausible")
    base_at = FIXED.size + PART.size * n_parts + SEGMENT.size * n_segments + SECTION.size * n_sections
    base, base_bytes = None, 0
    if flags & HDR_HAS_BASE:
        if base_at + BASE.size > header_length:
            _fail(path, "header length does not match its segment, section and metadata counts")
        base_length, base_crc, name_length = BASE.unpack_from(raw, base_at)
        base_bytes = BASE.size + name_length
    if header_length != base_at + base_bytes + metadata_length:
        _fail(path, "header length does not match its segment, section and metadata counts")
    if base_bytes:
        name = bytes(raw[base_at + BASE.size:base_at + base_bytes])
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        if not 0 < len(name) <= 255 or "/" in name or "\0" in name or name in (".", ".."):
            _fail(path, "invalid base file name")
        if base_length < FIXED.size:
            _fail(path, f"base file length {base_length} is impossible")
        base = {"name": name, "file_length": base_length, "header_crc": base_crc}
    if next_id < 0:
        _fail(path, f"negative next id {next_id}")

    pos = FIXED.size
    parts = []
    if version < 3:
        parts.append({"name": None, "code_bits": code_bits, "first": 0, "segments": n_segments,
                      "next_id": next_id, "live": live})
    for p in range(n_parts):
        name, part_bits, part_segments, part_next_id, part_live = PART.unpack_from(raw, pos)
        if any(raw[pos + 40:pos + PART.size]):
            _fail(path, f"part {p}: reserved bytes are not zero")
        pos += PART.size
        name = name.rstrip(b"\0").decode("ascii", "replace")
        if not PART_NAME.match(name) or any(q["name"] == name for q in parts):
            _fail(path, f"part {p}: invalid or repeated name {name!r}")
        if part_bits not in CODE_BITS:
            _fail(path, f"part {name}: code width {part_bits} bits is not supported by this hashsieve "
                        "(only 64 and 256)")
        if part_next_id < 0:
            _fail(path, f"part {name}: negative next id {part_next_id}")
        first = sum(q["segments"] for q in parts)
        if part_segments > n_segments - first:
            _fail(path, f"part {name}: {part_segments} segments, more than the file's {n_segments} leave")
        parts.append({"name": name, "code_bits": part_bits, "first": first, "segments": part_segments,
                      "next_id": part_next_id, "live": part_live})
    if sum(q["segments"] for q in parts) != n_segments:
        _fail(path, f"the parts hold {sum(q['segments'] for q in parts)} segments, the header says {n_segments}")
    segment_bits = [q["code_bits"] for q in parts for _ in range(q["segments"])]
    segments = []
    for s in range(n_segments):
        n, u, seg_live, m, seg_flags, *bits = SEGMENT.unpack_from(raw, pos)
        if any(raw[pos + 48:pos + SEGMENT.size]):
            _fail(path, f"segment {s}: reserved bytes are not zero")
        pos += SEGMENT.size
        if seg_flags & ~(SEG_HAS_DEAD | SEG_HAS_ORDER):
            _fail(path, f"segment {s}: unknown flags {seg_flags:#x}")
        if not (u <= n <= _core.MAX_SEGMENT_ENTRIES and (u == 0) == (n == 0) and seg_live <= n):
            _fail(path, f"segment {s}: impossible counts ({n} entries, {u} distinct codes, {seg_live} live)")
        if not seg_flags & SEG_HAS_DEAD and seg_live != n:
            _fail(path, f"segment {s}: {seg_live} live of {n} entries but no tombstones")
        if m > MAX_TABLES or any(bits[m:]) or (m and (sum(bits[:m]) != segment_bits[s] or
                                                      not all(1 <= b <= _core.MAX_TABLE_BITS for b in bits[:m]))):
            _fail(path, f"segment {s}: invalid table split m={m}, bits={bits}")
        segments.append({"entries": n, "unique": u, "live": seg_live, "m": m, "flags": seg_flags,
                         "bits": tuple(bits), "code_bits": segment_bits[s]})
    for q in parts if version >= 3 else ():
        part_live = sum(s["live"] for s in segments[q["first"]:q["first"] + q["segments"]])
        if part_live != q["live"]:
            _fail(path, f"part {q['name']}: live count {q['live']} does not match its segments' {part_live}")
    if sum(s["live"] for s in segments) != live:
        _fail(path, f"live count {live} does not match the segments' {sum(s['live'] for s in segments)}")

    expected = [(s,) + e for s, seg in enumerate(segments) for e in _expected_sections(seg, seg["code_bits"])]
    if n_sections != len(expected):
        _fail(path, f"{n_sections} sections, the segments need {len(expected)}")
    sections = []
    end, min_offset = header_length, _align(header_length)
    for i, (s, kind, table, dtype, count) in enumerate(expected):
        (seg_no, kind_, table_, dtype_, sec_flags, offset, count_, nbytes, crc, res1) = \
            SECTION.unpack_from(raw, pos)
        pos += SECTION.size
        if (seg_no, kind_, table_, dtype_, count_) != (s, kind, table, dtype, count) or res1:
            _fail(path, f"section {i} is (segment {seg_no}, kind {kind_}, table {table_}, dtype {dtype_}, "
                        f"{count_} items), expected (segment {s}, {KINDS[kind][0]}, table {table}, dtype {dtype}, "
                        f"{count} items)")
        if sec_flags & ~SEC_EXTERNAL or (sec_flags and base is None):
            _fail(path, f"section {i}: unknown flags {sec_flags:#x}")
        if nbytes != count * DTYPES[dtype].itemsize:
            _fail(path, f"section {i}: {nbytes} bytes for {count} items of {DTYPES[dtype]}")
        external = bool(sec_flags & SEC_EXTERNAL)
        if external:
            if offset % ALIGN or offset < FIXED.size or offset + nbytes > base["file_length"]:
                _fail(path, f"section {i} at base file offset {offset} (+{nbytes} bytes) is misaligned or "
                            f"lies outside the base file of {base['file_length']} bytes")
        else:
            if offset % ALIGN or offset < min_offset or offset + nbytes > file_size:
                _fail(path, f"section {i} at offset {offset} (+{nbytes} bytes) is misaligned, overlaps or lies "
                            f"outside the file of {file_size} bytes")
            end = min_offset = offset + nbytes
        sections.append({"segment": s, "kind": kind, "table": table, "dtype": dtype, "offset": offset,
                         "count": count, "nbytes": nbytes, "crc": crc, "external": external})
    if end != file_length:
        _fail(path, f"the last section ends at {end}, the file at {file_length}")
    pos += base_bytes
    try:
        metadata = json.loads(bytes(raw[pos:pos + metadata_length]).decode("utf-8")) if metadata_length else {}
    except (UnicodeDecodeError, ValueError) as e:
        _fail(path, f"metadata is not valid JSON: {e}")
    except RecursionError:
        _fail(path, "metadata is nested too deeply")
    if not isinstance(metadata, dict):
        _fail(path, "metadata is not a JSON object")
    fixed = {"version": version, "file_length": file_length, "created_ns": created_ns, "live": live,
             "header_crc": header_crc}
    return _Layout(path, fixed, parts, segments, sections, metadata, header_length, base)


def _pread_all(fd, offset, n):
    parts, got = [], 0
    while got < n:
        b = os.pread(fd, min(n - got, 1 << 30), offset + got)
        if not b:
            raise IndexFormatError(f"file shrank while reading at offset {offset + got}")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_metadata(path):
    """Header of an index file without loading it.

    Returns a dict: format_version, code_bits (None when the file has parts of both
    widths), count (live hashes), entries (including removed ones not yet
    compacted), next_id (the largest of its parts'), parts (per index in the file:
    name (None in a version 1 or 2 file), code_bits, count, entries, next_id and
    its segments' numbers), created (Unix time) and created_iso, file_size,
    segments, sections (name, offset, nbytes, dtype, crc32), checksums {section:
    "crc32:xxxxxxxx"} and metadata (the JSON object given to save). Raises
    IndexFormatError if the header is damaged.
    """
    path = os.fspath(path)
    fd = _open_regular(path)
    try:
        return _parse_layout(path, lambda off, n: _pread_all(fd, off, n), os.fstat(fd).st_size).info()
    finally:
        os.close(fd)


def _open_regular(path):
    """A read-only descriptor of path; IndexFormatError if it is a folder, FIFO, device or socket.

    O_NONBLOCK: opening a FIFO must not wait for a writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        _fail(path, f"{what}, not an index file; give the path of the index file itself")
    return fd


# ====================================================================== checks
def _check(ok, path, message):
    if not ok:
        _fail(path, message)


def _nondecreasing(a):
    return a.size < 2 or bool((a[1:] >= a[:-1]).all())


def _check_bounds(seg, path, label):
    """The O(1) and O(table size) invariants, checked on every load: group bounds, tombstone bitmap,
    bucket boundaries of every table."""
    n, u = len(seg), seg.n_unique
    gs = seg.group_start
    _check(gs[0] == 0 and gs[u] == n, path, f"{label}: group bounds do not span the {n} entries")
    if seg.dead is not None:
        _check(len(seg.dead) == (n + 7) // 8, path, f"{label}: tombstone bitmap has the wrong length")
        _check(n % 8 == 0 or not seg.dead[-1] >> (n % 8), path, f"{label}: tombstones beyond the last entry")
    for k, offsets in enumerate(seg.offsets):
        _check(offsets[0] == 0 and offsets[-1] == u and _nondecreasing(offsets), path,
               f"{label}: table {k} bucket boundaries are not ascending from 0 to {u}")


def _check_entries(seg, order, path, label):
    """O(n): codes and groups ascending, ids >= 0 and ascending in each group, the id order sorts the ids."""
    problem = _core.check_entries(seg.codes, seg.group_start, seg.ids) or _core.check_id_order(seg.ids, order)
    if problem:
        _fail(path, f"{label}: {problem[0]} (at position {problem[1]})")


def _check_tables(seg, path, label, threads=2):
    """O(n): every table holds each code once, in its bucket, with its fingerprint."""
    shifts = [seg.code_bits - sum(seg.bits[:k + 1]) for k in range(len(seg.bits))]

    def check(k):
        return _core.check_table(seg.codes, seg.offsets[k], seg.fps[k] if seg.fps else None, seg.table_groups[k],
                                 shifts[k], seg.bits[k], k, len(seg.bits))

    if threads > 1 and seg.n_unique > DEEP_CHECK_ENTRIES:     # the check releases the GIL
        with ThreadPoolExecutor(min(threads, len(seg.bits))) as pool:
            problems = list(pool.map(check, range(len(seg.bits))))
    else:
        problems = [check(k) for k in range(len(seg.bits))]
    for k, problem in enumerate(problems):
        if problem:
            _fail(path, f"{label}: table {k} {problem[0]} (slot {problem[1]})")


def _check_next_id(snap, path, segments):
    """next_id is above the largest id of these segments (read through their id order: O(1))."""
    for s in segments:
        seg, order = snap.segments[s], snap.id_order(s)
        last = int(order[-1]) if len(seg) else -1
        if 0 <= last < len(seg):          # else the id order is damaged: _check_entries says so
            _check(snap.next_id > seg.ids[last], path,
                   f"next id {snap.next_id} is not above the largest id {seg.ids[last]} of segment {s}: "
                   "new ids would repeat old ones")


def _check_structure(snap, path, segments, tables=True):
    """Every O(n) invariant of these segments of a snapshot (all of them: the index's ids too)."""
    for s in segments:
        seg, label = snap.segments[s], f"segment {s}"
        _check_entries(seg, snap.id_order(s), path, label)
        if tables:
            _check_tables(seg, path, label)
    if len(segments) == len(snap.segments):
        _check_next_id(snap, path, segments)


# ====================================================================== load
class _File:
    """One opened index file: its bytes (a read-only map or a buffer), layout and identity."""

    def __init__(self, path, layout, buffer, fd, ident):
        self.path, self.layout, self.buffer, self.ident, self.fd = path, layout, buffer, ident, fd
        self.mmap = isinstance(buffer, _mmap.mmap)
        self.bytes = np.frombuffer(buffer, dtype=np.uint8) if layout.file_length else np.empty(0, np.uint8)
        self._closer = weakref.finalize(self, os.close, fd) if fd is not None else None


def _open_file(path, mmap, check=None):
    """_File of path; check(fd, st) may refuse it (raise) before its header is read."""
    fd = _open_regular(path)
    keep_fd = False
    try:
        st = os.fstat(fd)
        if check is not None:
            check(fd, st)
        layout = _parse_layout(path, lambda off, n: _pread_all(fd, off, n), st.st_size)
        if mmap and st.st_size:
            buffer = _mmap.mmap(fd, st.st_size, access=_mmap.ACCESS_READ)
            if len(buffer) != layout.file_length:
                _fail(path, "file changed size while it was being opened")
            keep_fd = True
        else:
            buffer = np.empty(st.st_size, dtype=np.uint8)
            _read_into(fd, buffer)
            buffer.flags.writeable = False
        return _File(path, layout, buffer, fd if keep_fd else None, _file_ident(st))
    finally:
        if not keep_fd:
            os.close(fd)


class _BaseGone(IndexFormatError):
    """The base file named by an index file is missing or is not the one it was saved with."""


class _Source:
    """The file an index was loaded from, and the base file it references (format 2), if any."""

    def __init__(self, main, base=None):
        self.file, self.base = main, base
        self.path, self.layout, self.buffer, self.ident = main.path, main.layout, main.buffer, main.ident
        self.mmap, self.bytes, self.fd = main.mmap, main.bytes, main.fd
        # (address, nbytes) of each section's view -> (file holding it, section record), to reuse on save.
        self.by_address = {}
        for sec in self.layout.sections:
            if sec["nbytes"]:
                holder = self.holder(sec)
                self.by_address[(holder.bytes.__array_interface__["data"][0] + sec["offset"], sec["nbytes"])] = \
                    (holder, sec)

    @property
    def metadata(self):
        return self.layout.metadata

    def holder(self, sec):
        return self.base if sec["external"] else self.file

    def view(self, sec):
        data = self.holder(sec).bytes
        return data[sec["offset"]:sec["offset"] + sec["nbytes"]].view(DTYPES[sec["dtype"]])


def _file_ident(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read_into(fd, out):
    mv = memoryview(out)
    got = 0
    while got < len(mv):
        n = os.preadv(fd, [mv[got:got + (1 << 30)]], got)
        if n == 0:
            raise IndexFormatError("file shrank while it was being read")
        got += n


def _open_base(main, mmap):
    """The base file main references, checked against the record (length, header CRC, sections)."""
    rec = main.layout.base
    folder = os.path.dirname(os.path.realpath(main.path))
    path = os.path.join(folder, rec["name"])
    gone = f"{main.path}: base file {rec['name']} is missing or changed"

    def check(fd, st):
        if st.st_size != rec["file_length"]:
            raise _BaseGone(f"{gone} (it is {st.st_size} bytes, the index was saved with {rec['file_length']})")

    try:
        base = _open_file(path, mmap, check)
    except FileNotFoundError:
        raise _BaseGone(f"{gone} (not found in {folder})") from None
    except _BaseGone:
        raise
    except IndexFormatError as e:
        raise _BaseGone(f"{gone}: {e}") from None
    layout = base.layout
    if layout.header_crc != rec["header_crc"]:
        raise _BaseGone(f"{gone} (header CRC {layout.header_crc:08x}, the index was saved with "
                        f"{rec['header_crc']:08x})")
    if layout.base is not None:
        raise _BaseGone(f"{gone} (it references a base file itself)")
    present = {(s["offset"], s["nbytes"], s["crc"]) for s in layout.sections if not s["external"]}
    for sec in main.layout.sections:
        if sec["external"] and (sec["offset"], sec["nbytes"], sec["crc"]) not in present:
            _fail(main.path, f"{_section_name(sec)} is not a section of the base file {rec['name']}")
    return base


def _load_part(source, part, segments, orders, verify):
    """The HashIndex of one part of a loaded file, with the checks load does."""
    from .index import HashIndex
    first = part["first"]
    segments, orders = segments[first:first + part["segments"]], orders[first:first + part["segments"]]
    # Errors name the part of a file of parts; its segments are numbered within the part.
    path = source.path if part["name"] is None else f"{source.path} (part {part['name']})"
    everything = range(len(segments))
    # Big segments opened without verify: their O(n) checks wait for the first change (which is O(n)
    # anyway) and, until then, queries rely on the native code's clamps. A change needs the entries
    # (groups, ids, id order) to be right; the tables are only read by queries.
    later = [s for s in everything if not verify and source.layout.segments[first + s]["entries"] > DEEP_CHECK_ENTRIES]

    def deferred_check(snap):
        _check_structure(snap, path, everything, tables=False)

    index = HashIndex.from_segments(segments, part["next_id"], orders, source, deferred_check if later else None,
                                    bits=part["code_bits"])
    snap = index.snapshot()
    for s in everything:
        if s not in later:
            _check_entries(segments[s], snap.id_order(s), path, f"segment {s}")
            _check_tables(segments[s], path, f"segment {s}")
    _check_next_id(snap, path, [s for s in everything if s not in later or orders[s] is not None])
    return index


def _load_once(path, mmap, verify):
    """{part name: HashIndex} of every part of the file, in file order (name None before version 3)."""
    main = _open_file(path, mmap)
    base = _open_base(main, mmap) if main.layout.base is not None else None
    source = _Source(main, base)
    if verify:
        _verify_payload(source)     # first: "damaged" is a better diagnosis than a broken invariant
    segments, orders = _segments_from(source)
    return {part["name"]: _load_part(source, part, segments, orders, verify) for part in source.layout.parts}


def load_index(path, mmap=True, verify=False):
    """HashIndex from a file of one index (and the base file it references); see HashIndex.load.

    A file of several parts (save_parts) raises IndexFormatError naming load_parts."""
    parts = load_parts(path, mmap, verify)
    if len(parts) != 1:
        _fail(path, f"this file holds {len(parts)} indexes ({', '.join(parts)}), one per hash kind; open it with "
                    "hashsieve.open_lists(path) or hashsieve.storage.load_parts(path)")
    return next(iter(parts.values()))


def load_parts(path, mmap=True, verify=False):
    """{part name: HashIndex} of every index in the file, in file order (and the base file it references).

    A version 1 or 2 file holds one index, named None. The indexes share the file's mapping; each
    one's verify() checks every section checksum of the file and its own structure. mmap and
    verify as for HashIndex.load.
    """
    path = os.fspath(path)
    for attempt in range(3):
        try:
            before = os.stat(path)
            return _load_once(path, mmap, verify)
        except _BaseGone:
            # A save may have replaced the file and removed its old base between our two opens:
            # then the file at path is a new version; open that one.
            try:
                replaced = _file_ident(os.stat(path)) != _file_ident(before)
            except OSError:
                replaced = False
            if not replaced or attempt == 2:
                raise


def _segments_from(source):
    """The segments of a file and the id order of each (None if the file has none), with their cheap checks."""
    layout, path = source.layout, source.path
    by_segment = {}
    for sec in layout.sections:
        by_segment.setdefault(sec["segment"], []).append(sec)
    segments, orders = [], []
    for s, rec in enumerate(layout.segments):
        arrays = {}
        for sec in by_segment.get(s, []):
            arrays[(sec["kind"], sec["table"])] = source.view(sec)
        m = rec["m"]
        codes = arrays[(1, 0)]
        if rec["code_bits"] != 64:
            codes = codes.reshape(-1, rec["code_bits"] // 64)
        seg = _core.Segment(
            codes, arrays[(2, 0)], arrays[(3, 0)], rec["bits"][:m],
            [arrays[(6, k)] for k in range(m)],
            [arrays[(7, k)] for k in range(m) if (7, k) in arrays],
            [arrays.get((8, k)) for k in range(m)],
            arrays.get((4, 0)))
        label = f"segment {s}"
        _check_bounds(seg, path, label)
        if seg.dead is not None:
            dead = int(np.bitwise_count(seg.dead).sum())
            _check(rec["entries"] - dead == rec["live"], path,
                   f"{label}: {rec['entries'] - dead} live entries, the header says {rec['live']}")
        segments.append(seg)
        orders.append(arrays.get((5, 0)))
    return segments, orders


# ====================================================================== verify
def _crc_of(view):
    crc = 0
    mv = memoryview(view).cast("B")
    for i in range(0, len(mv), CHUNK):
        crc = zlib.crc32(mv[i:i + CHUNK], crc)
    return crc


def _verify_payload(source, threads=2):
    """Every section's CRC (in the base file too) and the zero padding between the file's own sections."""
    layout, path, data = source.layout, source.path, source.bytes
    secs = sorted(layout.sections, key=lambda s: -s["nbytes"])

    def crc(sec):
        return _crc_of(source.view(sec))

    total = sum(s["nbytes"] for s in secs)
    if threads > 1 and total > 4 * CHUNK:
        with ThreadPoolExecutor(min(threads, len(secs))) as pool:    # zlib releases the GIL
            crcs = list(pool.map(crc, secs))
    else:
        crcs = [crc(sec) for sec in secs]
    for sec, crc in zip(secs, crcs):
        where = f" (in base file {layout.base['name']})" if sec["external"] else ""
        _check(crc == sec["crc"], path, f"{_section_name(sec)}: checksum mismatch (stored {sec['crc']:08x}, "
                                        f"computed {crc:08x}){where}: the file is damaged")
    pos = layout.header_length
    for sec in layout.sections:
        if sec["external"]:
            continue
        _check(not data[pos:sec["offset"]].any(), path, f"padding before {_section_name(sec)} is not zero")
        pos = sec["offset"] + sec["nbytes"]


def verify_index(index):
    """Checksums of the file the index was loaded from, then every structural invariant of its segments."""
    verify_parts([index])


def verify_parts(indexes):
    """verify_index of several indexes (the parts of one file, say), each file's checksums checked once."""
    checked = []
    for index in indexes:
        snap = index.snapshot()
        path = snap.source.path if snap.source is not None else "<in-memory index>"
        if snap.source is not None and all(snap.source is not s for s in checked):
            _verify_payload(snap.source)
            checked.append(snap.source)
        _check_structure(snap, path, range(len(snap.segments)))


# ====================================================================== save
def _plan(snap):
    """Segment records and (kind, table, array) of every section, in file order."""
    records, sections = [], []
    for s, seg in enumerate(snap.segments):
        m = len(seg.bits)
        n = len(seg)
        dead = seg.dead
        live = n - int(np.bitwise_count(dead).sum()) if dead is not None else n
        records.append((n, seg.n_unique, live, m, SEG_HAS_ORDER | (SEG_HAS_DEAD if dead is not None else 0),
                        tuple(seg.bits) + (0,) * (MAX_TABLES - m)))
        arrays = [(1, 0, seg.codes.reshape(-1)), (2, 0, seg.group_start), (3, 0, seg.ids)]
        if dead is not None:
            arrays.append((4, 0, dead))
        arrays.append((5, 0, snap.id_order(s)))
        arrays += [(6, k, seg.offsets[k]) for k in range(m)]
        arrays += [(7, k, fps) for k, fps in enumerate(seg.fps)]
        arrays += [(8, k, groups) for k, groups in enumerate(seg.table_groups) if groups is not None]
        sections.append(arrays)
    return records, sections


def _write_all(fd, data, pos):
    mv = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:done + CHUNK], pos + done)


def _copy_range(src_fd, src_off, dst_fd, dst_off, nbytes):
    """In-kernel copy; False if this kernel or filesystem pair cannot do it."""
    if not hasattr(os, "copy_file_range"):
        return False
    done = 0
    try:
        while done < nbytes:
            n = os.copy_file_range(src_fd, dst_fd, nbytes - done, src_off + done, dst_off + done)
            if n == 0:
                return False
            done += n
    except OSError:
        return False
    return True


def _lookup(sources, arr):
    """(file, section record) if arr is the view of a section of a loaded file, else None."""
    if not arr.nbytes:
        return None
    key = (arr.__array_interface__["data"][0], arr.nbytes)
    for src in sources:
        hit = src.by_address.get(key)
        if hit is not None:
            return hit
    return None


def _write_section(fd, pos, arr, sources):
    """Writes arr at pos; returns its CRC (the stored one when it is a view of a loaded file)."""
    arr = np.ascontiguousarray(arr)
    hit = _lookup(sources, arr)
    if hit is not None:
        holder, sec = hit
        if holder.fd is None or not _copy_range(holder.fd, sec["offset"], fd, pos, arr.nbytes):
            _write_all(fd, arr, pos)
        return sec["crc"]
    crc = 0
    mv = memoryview(arr).cast("B")
    for i in range(0, len(mv), CHUNK):
        chunk = mv[i:i + CHUNK]
        crc = zlib.crc32(chunk, crc)
        _write_all(fd, chunk, pos + i)
    return crc


def _fsync_dir(folder):
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return      # platforms without directory handles
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in os.uname().nodename)[:64] if hasattr(os, "uname") \
    else "host"


def _remove_stale_temps(folder, name):
    """Delete temporary files of saves on this host whose process is gone (killed mid-save)."""
    prefix = f".{name}.{_HOST}."
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid = entry[len(prefix):].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue                                  # still running (or not ours to signal)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.unlink(os.path.join(folder, entry))
        except OSError:
            pass


def _base_name(name, holder):
    return f"{name}.base-{holder.layout.header_crc:08x}"


def _is_base_of(entry, name):
    prefix = f"{name}.base-"
    rest = entry[len(prefix):]
    return entry.startswith(prefix) and len(rest) == 8 and all(c in "0123456789abcdef" for c in rest)


def _link_base(holder, folder, name, tmp_name):
    """Hard link of holder's inode as folder/NAME.base-CRC (no data copied); its name, or None if impossible.

    The link is made from the open descriptor when the file is mapped and the kernel allows it
    (the very inode being read), else from the path; either way the new link must be the file
    that was loaded (device, inode, size, mtime), otherwise it is removed and None returned.
    """
    base = os.path.join(folder, _base_name(name, holder))
    want = holder.ident[:2]                                    # (st_dev, st_ino)
    try:
        st = os.stat(base)
        if (st.st_dev, st.st_ino) == want:
            return os.path.basename(base)                      # already there (a chain of daily updates)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    sources = [holder.path]
    if holder.fd is not None and os.path.isdir("/proc/self/fd"):
        sources.insert(0, f"/proc/self/fd/{holder.fd}")
    tmp = os.path.join(folder, tmp_name)
    for src in sources:
        try:
            os.link(src, tmp, follow_symlinks=True)            # linkat(AT_SYMLINK_FOLLOW): O(1)
            break
        except (OSError, NotImplementedError):
            continue                                           # other filesystem, deleted file, no permission
    else:
        return None
    try:
        if _file_ident(os.stat(tmp)) != holder.ident:
            os.unlink(tmp)                                     # the path is another file now
            return None
        os.replace(tmp, base)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
    return os.path.basename(base)


def _remove_other_bases(folder, name, keep):
    """Delete NAME.base-* files the current version does not reference (mapped pages stay readable)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if entry != keep and _is_base_of(entry, name):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                pass


def save_index(index, path, metadata=None, created=None, incremental=True):
    """Write the index to path atomically; see HashIndex.save.

    metadata: a JSON-serialisable dict stored in the header (read back by
    read_metadata); None keeps the metadata of the file the index was loaded
    from, if any. created: Unix time to record (default: now).

    incremental: when at least half of the index's bytes are unchanged sections
    of a loaded self-contained file (typically the main segment after a daily
    update), hard-link that file as ``NAME.base-<its header CRC>`` beside the
    target and write only the other sections, referencing the base for the
    rest. False always writes a self-contained file.
    """
    _save({None: index}, path, metadata, created, incremental)


def save_parts(parts, path, metadata=None, created=None, incremental=True):
    """Write several indexes to one file atomically, e.g. {"phash": index64, "pdq": index256}.

    parts: {name: HashIndex}, 1 to MAX_PARTS, names of 1 to 16 characters a-z, 0-9 and _;
    load_parts reads them back in this order. A single index is written as a version 2 file,
    which has no name (so earlier hashsieve versions read it; load_parts names it None): keep
    its name in the metadata then. Other arguments as save_index; metadata=None keeps the
    metadata of the file the first loaded part came from. Base files work across parts: the
    base is the loaded file holding most of the unchanged bytes, whatever part they belong to.
    """
    parts = dict(parts)
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ValueError(f"a file holds 1 to {MAX_PARTS} indexes, got {len(parts)}")
    for name in parts:
        if not isinstance(name, str) or not PART_NAME.match(name):
            raise ValueError(f"part name {name!r} must be 1 to 16 characters a-z, 0-9 or _ (a hash kind's name)")
    _save(parts if len(parts) > 1 else {None: next(iter(parts.values()))}, path, metadata, created, incremental)


def _save(parts, path, metadata, created, incremental):
    """save_index ({None: index}: a version 2 file) and save_parts (named parts: version 3)."""
    path = os.fspath(path)
    single = None in parts
    # One consistent version of each, even while another thread changes it.
    snaps = [(name, index.bits, index.snapshot(checked=True)) for name, index in parts.items()]
    sources = []
    for *_, snap in snaps:
        if snap.source is not None and all(snap.source is not s for s in sources):
            sources.append(snap.source)
    if metadata is None:
        metadata = dict(sources[0].metadata) if sources else {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict (a JSON object), got {type(metadata).__name__}")
    try:
        meta_bytes = json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise ValueError("metadata is nested too deeply to store") from None
    records, flat, part_records = [], [], []
    for name, bits, snap in snaps:
        part_segments, arrays = _plan(snap)
        flat += [(len(records) + s, kind, table, np.ascontiguousarray(arr)) for s, seg_arrays in enumerate(arrays)
                 for kind, table, arr in seg_arrays]
        records += part_segments
        part_records.append(PART.pack(name.encode("ascii"), bits, len(part_segments), snap.next_id,
                                      sum(r[2] for r in part_segments)) if not single else b"")
    part_table = b"".join(part_records)
    hits = [_lookup(sources, arr) for *_, arr in flat]

    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    if os.path.isdir(target):
        raise IsADirectoryError(f"{path} is a folder; save the index to a file name, e.g. "
                                f"{os.path.join(path, 'lists.hsi')}")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save {path}: folder {folder} does not exist; create it first")
    _remove_stale_temps(folder, name)
    tmp_stem = f".{name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}"

    # The base: the self-contained loaded file holding most of the bytes, if that is at least half of them.
    base_holder, base_name = None, None
    if incremental:
        reused = {}
        for hit, (*_, arr) in zip(hits, flat):
            if hit is not None and hit[0].layout.base is None:
                reused[id(hit[0])] = (hit[0], reused.get(id(hit[0]), (None, 0))[1] + arr.nbytes)
        if reused:
            holder, nbytes = max(reused.values(), key=lambda x: x[1])
            if 2 * nbytes >= sum(arr.nbytes for *_, arr in flat):
                base_name = _link_base(holder, folder, name, tmp_stem + ".base.tmp")
                if base_name is not None:
                    base_holder = holder
                    _fsync_dir(folder)    # the base's name is durable before any version names it

    n_sections = len(flat)
    base_record = b""
    if base_holder is not None:
        encoded = base_name.encode("utf-8")
        base_record = BASE.pack(base_holder.layout.file_length, base_holder.layout.header_crc, len(encoded)) + encoded
    header_length = (FIXED.size + len(part_table) + SEGMENT.size * len(records) + SECTION.size * n_sections
                     + len(base_record) + len(meta_bytes))
    if header_length > MAX_HEADER:
        raise ValueError(f"metadata too large: the header would be {header_length} bytes (limit {MAX_HEADER})")
    placed, pos = [], _align(header_length)
    file_length = header_length
    for (s, kind, table, arr), hit in zip(flat, hits):
        if base_holder is not None and hit is not None and hit[0] is base_holder:
            placed.append((s, kind, table, arr, hit[1]["offset"], hit[1]["crc"]))     # in the base file
        else:
            placed.append((s, kind, table, arr, pos, None))
            file_length = pos + arr.nbytes
            pos = _align(pos + arr.nbytes)
    created_ns = time.time_ns() if created is None else int(round(created * 1e9))

    tmp = os.path.join(folder, tmp_stem + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            os.fchmod(fd, os.stat(target).st_mode & 0o7777)       # keep the old file's permissions
        except (OSError, AttributeError):
            pass
        table = []
        prev_end = header_length
        for s, kind, tbl, arr, off, crc in placed:
            flags = 0
            if crc is not None:
                flags = SEC_EXTERNAL
            else:
                if off > prev_end:
                    _write_all(fd, bytes(off - prev_end), prev_end)   # explicit zero padding, no holes
                crc = _write_section(fd, off, arr, sources)
                prev_end = off + arr.nbytes
            table.append(SECTION.pack(s, kind, tbl, DTYPE_CODES[arr.dtype.newbyteorder("<")], flags, off,
                                      arr.shape[0], arr.nbytes, crc, 0))
        live = sum(r[2] for r in records)
        _, bits, snap = snaps[0]
        header = bytearray(FIXED.pack(MAGIC, SINGLE_VERSION if single else FORMAT_VERSION, header_length, 0,
                                      bits if single else 0, file_length, created_ns, snap.next_id if single else 0,
                                      live, len(records), n_sections, len(meta_bytes),
                                      HDR_HAS_BASE if base_record else 0, 0 if single else len(snaps)))
        header += part_table
        for n, u, seg_live, m, seg_flags, bits in records:
            header += SEGMENT.pack(n, u, seg_live, m, seg_flags, *bits)
        header += b"".join(table) + base_record + meta_bytes
        struct.pack_into("<I", header, CRC_AT, zlib.crc32(header))
        _write_all(fd, header, 0)
        if os.fstat(fd).st_size != file_length:
            os.ftruncate(fd, file_length)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    _remove_other_bases(folder, name, base_name)


# ====================================================================== hot swap
class IndexHandle:
    """A service's view of an index file that follows new versions saved over it.

    ``handle.index`` is the current HashIndex; ``reload()`` opens the file again
    if it was replaced (new inode, size or mtime) and swaps the reference. The
    swap is one attribute assignment: a query holds the index it started with
    to the end, so none sees a half-loaded index, and the old version's memory
    map is released when the last query using it returns. With ``watch=seconds``
    a daemon thread checks the file that often and reloads; a file that fails to
    load is reported in ``last_error`` (and to ``on_error``) and the old version
    keeps serving.

    The query methods (range_search, search, explain, len) delegate to the
    current index.
    """

    def __init__(self, path, mmap=True, verify=False, watch=None, on_reload=None, on_error=None):
        self.path = os.fspath(path)
        self._mmap, self._verify = mmap, verify
        self._on_reload, self._on_error = on_reload, on_error
        self._lock = threading.Lock()
        self.last_error = None
        self.reloads = 0
        self._index = load_index(self.path, mmap=mmap, verify=verify)
        self._stop = threading.Event()
        self._thread = None
        if watch is not None:
            if not watch > 0:
                raise ValueError(f"watch must be a positive number of seconds or None, got {watch!r}")
            self._thread = threading.Thread(target=IndexHandle._watch, args=(weakref.ref(self), float(watch),
                                                                             self._stop),
                                            name=f"hashsieve-watch:{self.path}", daemon=True)
            self._thread.start()

    @property
    def index(self):
        return self._index

    @property
    def metadata(self):
        """read_metadata()-style dict of the version being served."""
        return self._index.snapshot().source.layout.info()

    def changed(self):
        """True if the file at path is no longer the one being served."""
        try:
            return _file_ident(os.stat(self.path)) != self._index.snapshot().source.ident
        except FileNotFoundError:
            return False          # mid-replace on some platforms, or removed: keep serving

    def reload(self, force=False):
        """Load the file again if it changed (or always, with force); True if a new version was swapped in.

        Raises what load raises (IndexFormatError, OSError); the current version stays in service then.
        """
        with self._lock:
            if not force and not self.changed():
                return False
            new = load_index(self.path, mmap=self._mmap, verify=self._verify)
            self._index = new       # the atomic swap
            self.reloads += 1
        if self._on_reload is not None:
            self._on_reload(new)
        return True

    @staticmethod
    def _watch(ref, interval, stop):
        while not stop.wait(interval):
            self = ref()
            if self is None:
                return
            try:
                self.reload()
                self.last_error = None
            except Exception as e:              # keep serving the old version
                self.last_error = e
                if self._on_error is not None:
                    try:
                        self._on_error(e)
                    except Exception:
                        pass
            del self

    def close(self):
        """Stop the watcher (the index stays usable until dropped)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def range_search(self, queries, radius, threads=None):
        """HashIndex.range_search on the version being served: (lims, distances, ids), see there."""
        return self._index.range_search(queries, radius, threads=threads)

    def search(self, queries, k, threads=None):
        """HashIndex.search (k nearest, -1 padded) on the version being served: (distances, ids)."""
        return self._index.search(queries, k, threads=threads)

    def explain(self, queries, radius=None, k=None, threads=None):
        """HashIndex.explain (per-query probes, candidates, hits, scanned) on the version being served."""
        return self._index.explain(queries, radius=radius, k=k, threads=threads)

    def __len__(self):
        return len(self._index)

    def __repr__(self):
        return f"<hashsieve.IndexHandle {self.path!r}: {len(self)} hashes, {self.reloads} reload(s)>"
