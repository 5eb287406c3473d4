"""Hash lists and their provenance: what a match traces back to.

A hash list is a text file (UTF-8; a line ends at ``\\n``, so line numbers are
what an editor shows):

* plain text: one hex hash per line, or ``TYPE HASH`` per line as
  python-threatexchange writes its local files (``pdq 0123...``, ``video_md5 ...``);
  ``#`` starts a comment (whole line or the rest of a line); blank lines are ignored.
* CSV: a header row with a ``hash`` column and optional ``kind``, ``id``, ``label``
  and further columns (kept as ``extra``).  A file is read as CSV when its name ends
  in ``.csv`` or ``.tsv`` or its first line (after comments) holds a comma,
  semicolon or tab; the header's delimiter is used for the whole file.  Every
  record is one line: a quoted field that runs past the end of its line is an
  error (it is almost always an unterminated quote that would swallow the rows
  after it).

A hash is 16 hex digits (a 64-bit perceptual hash, imagehash's form), 64 (a
PDQ hash), 32 (MD5) or 40 (SHA-1) of the file's bytes; an optional ``0x`` prefix
and upper case are accepted.  Its kind comes from, in this order: the row's type
(the ``kind`` column, or the TYPE of a ``TYPE HASH`` line: a hash kind's name,
``md5``, ``sha1``, or python-threatexchange's ``pdq``, ``video_md5``,
``photo_md5``), else its length: 32 MD5, 40 SHA-1, 16 the 64-bit kind the
reader is given (``--kind``, default phash), 64 PDQ only when the reader is given
pdq (64 hex digits are also a SHA-256 digest: an untyped one without ``--kind
pdq`` is a bad row naming the fix).  A row whose type hashsieve does not match
(python-threatexchange's ``url``, ``raw_text``, ``trend_query``, ``sha256``...) is
skipped and counted per type (``unsupported``), with a warning, not an error:
threatexchange exports mix signal types.  A type that is no name at all (``PDQ!``:
not letters, digits and ``_``) or a hash whose length does not fit its type is a
bad row.  A list may mix kinds.  Every entry keeps its list name (the file name
without extension, or ``NAME=PATH`` on the command line), its kind, id, label and
line number.  A list is read as a stream straight into the provenance table, so
memory does not grow with its length.

An index built by the command line has a *provenance table* beside it: an
SQLite file ``INDEX.lists-<token>.db`` in the index's folder, named in the
index metadata (``metadata["hashsieve"]["provenance"]``; nothing but a plain
file name of that form is ever opened or deleted).  Row ``id`` of its
``entries`` table is the int64 id of the entry in the HashIndex of its ``kind``
(one id space over every kind: the index file holds one HashIndex per kind,
storage.save_parts); MD5/SHA-1 entries live only in the table (looked up by
digest).  Schema 2 names each entry's kind (``phash``, ``pdq``, ``md5``...);
schema 1 tables (before several kinds) wrote ``perceptual`` for the index's one
kind: they are read as that kind, and an update rewrites them as schema 2.  A row whose list, hash
and id are already in the table is skipped, so running an update twice is
harmless.  Every update writes a new table under a new token, then saves the
index atomically pointing at it, then deletes the old table: a crash leaves the
old pair or the new pair intact, at worst plus an orphan table file.
"""
import csv
import hashlib
import itertools
import json
import os
import re
import secrets
import sqlite3
import threading
import time

import numpy as np

from ._validate import hashes_array
from .hexcodes import hex_digits
from .kinds import KINDS, kind_of

__all__ = ["ListError", "Entry", "HashList", "list_spec", "parse_hash", "perceptual_kinds", "Provenance",
           "provenance_path", "DIGEST_KINDS", "ListIndex", "IndexOpenError", "open_lists"]

DIGEST_KINDS = {"md5": 32, "sha1": 40}      # digest kind -> hex digits
# Row types (a CSV 'kind' column, the TYPE of python-threatexchange's "TYPE HASH" lines) -> entry kind.
ROW_TYPES = {**{name: name for name in KINDS}, "md5": "md5", "sha1": "sha1",
             "video_md5": "md5", "photo_md5": "md5"}
_HEX = re.compile(r"^[0-9a-f]+$")
_TYPE = re.compile(r"^[a-z][a-z0-9_]*$")
META_KEY = "hashsieve"
SCHEMA_VERSION = 2
LEGACY_PERCEPTUAL = "perceptual"    # schema 1's kind of every perceptual entry (the index's one kind)
# The only provenance file names an index may point at: what Provenance.new_file writes.
_PROVENANCE_NAME = re.compile(r"[^/\\\x00]+\.lists-[0-9a-f]{12}\.db\Z")
MAX_LINE = 1 << 20          # bytes in one line of a hash list


class ListError(ValueError):
    """A hash list cannot be read.  ``path`` and ``line`` locate the problem."""

    def __init__(self, path, line, reason):
        self.path, self.line, self.reason = path, line, reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {reason}")


class Entry:
    """One list row: kind (a hash kind's name such as 'phash' or 'pdq', or 'md5' / 'sha1'), hash (lower-case
    hex), row id, label, line, extra."""

    __slots__ = ("kind", "hash", "row_id", "label", "line", "extra")

    def __init__(self, kind, hash, row_id=None, label=None, line=0, extra=None):
        self.kind, self.hash, self.row_id, self.label, self.line, self.extra = kind, hash, row_id, label, line, extra

    def __repr__(self):
        return f"Entry({self.kind}, {self.hash}, id={self.row_id!r}, label={self.label!r}, line={self.line})"


def list_spec(arg):
    """'NAME=PATH' or 'PATH' -> (name, path); the name defaults to the file name without extensions."""
    if "=" in arg and not os.path.exists(arg):
        name, path = arg.split("=", 1)
        if name and path:
            return name, path
    base = os.path.basename(arg.rstrip("/"))
    for ext in (".csv", ".txt", ".tsv", ".list", ".hashes"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    return base or arg, arg


def perceptual_kinds(names):
    """{hex digits: kind name} of the perceptual kinds a reader is given (e.g. ("phash", "pdq")): what an
    untyped hash of that length is.  16 digits default to phash; 64 only mean PDQ when pdq is named.
    ValueError for an unknown name or two kinds of one width (a list cannot tell them apart)."""
    by_digits = {}
    for name in names:
        kind = kind_of(name)
        if by_digits.get(kind.hex_digits, name) != name:
            raise ValueError(f"kinds {by_digits[kind.hex_digits]} and {name} are both {kind.bits}-bit: an untyped "
                             f"{kind.hex_digits}-digit hash cannot say which it is; name one (or give the "
                             "lists a 'kind' column)")
        by_digits[kind.hex_digits] = name
    by_digits.setdefault(KINDS["phash"].hex_digits, "phash")
    return by_digits


def parse_hash(text, kinds=None, row_type=None):
    """(kind, normalised hex) of one hash, or raise ValueError with a reason a person can act on.

    kinds: perceptual_kinds() of the reader (default: 16 digits are phash).  row_type: the
    row's type (see the module docstring), None to go by the length; a type ROW_TYPES does
    not know raises KeyError (the caller skips and counts such rows).
    """
    kind = None if row_type is None else ROW_TYPES[row_type]
    s = hex_digits(text).lower()
    if not s:
        raise ValueError("empty hash")
    if not _HEX.match(s):
        bad = next(c for c in s if c not in "0123456789abcdef")
        raise ValueError(f"{text.strip()!r} is not a hex hash (character {bad!r} is not 0-9 or a-f)")
    kinds = perceptual_kinds(()) if kinds is None else kinds
    if kind is not None:
        want = DIGEST_KINDS.get(kind) or kind_of(kind).hex_digits
        if len(s) != want:
            raise ValueError(f"{text.strip()!r} has {len(s)} hex digits; a {row_type} hash has {want}")
        return kind, s
    kind = {**{n: k for k, n in DIGEST_KINDS.items()}, **kinds}.get(len(s))
    if kind is None:
        if len(s) == 64:
            raise ValueError(f"{text.strip()!r} has 64 hex digits: a PDQ hash or a SHA-256 digest; if the list holds "
                             "PDQ hashes pass --kind pdq (or name the kind in a 'kind' column)")
        raise ValueError(f"{text.strip()!r} has {len(s)} hex digits; expected 16 (64-bit perceptual hash), "
                         "64 (PDQ), 32 (MD5) or 40 (SHA-1)")
    return kind, s


class HashList:
    """One hash list file, read as a stream: iterating yields its rows as Entry objects, one at a time.

    Nothing is kept per row.  A bad row raises ListError (FILE:LINE: reason) unless
    skip_bad, which counts it instead.  kinds: the perceptual kinds untyped hashes
    are (see parse_hash; default phash for 16 digits, 64 digits need "pdq").  After
    a complete iteration: ``sha256`` (of the file's bytes), ``rows`` (good rows),
    ``skipped`` (bad rows) with the first few in ``skipped_examples`` [(line,
    reason)], ``counts`` {kind: rows}, ``unsupported`` {row type: rows skipped
    because hashsieve does not match that type}, and ``degenerate`` {kind: hashes
    that carry no identity, see kinds.py} with the first of each kind in
    ``degenerate_example`` {kind: (line, hex)}.
    """

    EXAMPLES = 5

    def __init__(self, path, name=None, skip_bad=False, kinds=("phash",)):
        self.path = os.fspath(path)
        self.name = list_spec(self.path)[0] if name is None else name
        self.skip_bad = skip_bad
        self.kinds = perceptual_kinds(kinds)
        self.sha256 = None
        self.rows = self.skipped = 0
        self.skipped_examples = []
        self.counts, self.unsupported, self.degenerate, self.degenerate_example = {}, {}, {}, {}
        self._perceptual = {}               # kind -> [(line, hex)] not yet judged degenerate or not

    def _lines(self):
        """(line number, text) of every line, decoded one at a time; hashes the bytes on the way."""
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise ListError(self.path, 0, f"cannot read the list ({e.strerror or e}); check the path") from None
        sha = hashlib.sha256()
        with f:
            # Binary lines end at b"\n" only; a line is bounded, so a file without newlines cannot fill memory.
            for no, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
                if len(raw) > MAX_LINE:
                    raise ListError(self.path, no, f"line longer than {MAX_LINE >> 10} KiB; not a hash list")
                sha.update(raw)
                if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    yield no, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ListError(self.path, no, f"not UTF-8 text (byte {raw[e.start]:#04x}); save the list "
                                                   "as UTF-8") from None
        self._count_degenerate()
        self.sha256 = sha.hexdigest()

    def _bad(self, line, reason):
        if not self.skip_bad:
            raise ListError(self.path, line, reason + "; fix the row or pass --skip-bad to skip bad rows")
        self.skipped += 1
        if len(self.skipped_examples) < self.EXAMPLES:
            self.skipped_examples.append((line, reason))

    def _parse(self, line, text, row_type):
        """(kind, hex) of a row's hash, or None after counting it as bad or of an unsupported type."""
        if row_type is not None:
            row_type = row_type.strip().lower() or None
            if row_type is not None and not _TYPE.match(row_type):
                self._bad(line, f"kind {row_type!r} is not a kind name (letters, digits and _, such as pdq, "
                                "phash, md5)")
                return None
        try:
            return parse_hash(text, self.kinds, row_type)
        except KeyError:
            self.unsupported[row_type] = self.unsupported.get(row_type, 0) + 1
        except ValueError as e:
            self._bad(line, str(e))
        return None

    def _entry(self, kind, h, row_id, label, line, extra):
        self.rows += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind in KINDS:
            pending = self._perceptual.setdefault(kind, [])
            pending.append((line, h))
            if len(pending) == 8192:
                self._count_degenerate()
        return Entry(kind, h, row_id, label, line, extra)

    def _count_degenerate(self):
        """Judge the perceptual hashes read since the last call, one vectorised step per kind."""
        for name, pending in self._perceptual.items():
            if not pending:
                continue
            kind = kind_of(name)
            bad = np.flatnonzero(kind.degenerate(kind.from_hex([h for _, h in pending])))
            if len(bad):
                self.degenerate[name] = self.degenerate.get(name, 0) + len(bad)
                self.degenerate_example.setdefault(name, pending[bad[0]])
        self._perceptual = {}

    def __iter__(self):
        lines = self._lines()
        for no, text in lines:
            s = text.split("#", 1)[0].strip()
            if not s:
                continue
            delimiter = next((d for d in ",;\t" if d in s), None)
            if delimiter is not None or self.path.lower().endswith((".csv", ".tsv")):
                yield from self._csv(itertools.chain([(no, text)], lines), delimiter or ",")
            else:
                yield from self._plain(itertools.chain([(no, text)], lines))
            return
        if self.path.lower().endswith((".csv", ".tsv")):
            raise ListError(self.path, 0, "empty CSV list: no header row with a 'hash' column")

    def _plain(self, lines):
        for no, text in lines:
            s = text.split("#", 1)[0].strip()
            if not s or (no == 1 and s.lower() == "hash"):
                continue
            parts = s.split(None, 1)
            # "TYPE VALUE": python-threatexchange's local files (a type is never a hex string; the value of
            # a type hashsieve does not match, such as raw_text, may hold spaces).
            typed = len(parts) == 2 and _TYPE.match(parts[0].lower()) and not _HEX.match(parts[0].lower())
            if len(parts) != 1 and not typed:
                self._bad(no, f"expected one hex hash or 'TYPE HASH' per line, got {s[:60]!r}")
                continue
            parsed = self._parse(no, parts[-1], parts[0] if typed else None)
            if parsed is not None:
                yield self._entry(*parsed, None, None, no, None)

    def _csv(self, lines, delimiter):
        first = [None]

        def texts():
            for no, text in lines:
                if first[0] is None:
                    first[0] = no - 1       # line number = first[0] + the reader's line_num
                yield text

        rows = csv.reader(texts(), delimiter=delimiter, strict=True)
        header = None
        end = 0                             # reader line_num after the previous record
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as e:
                start = first[0] + end + 1
                if "end of data" in str(e):
                    raise ListError(self.path, start, "unterminated quote: the quoted field that starts on this "
                                                      "line is never closed; close the quote") from None
                raise ListError(self.path, start, f"malformed CSV ({e}); check the quoting") from None
            line, last = first[0] + end + 1, first[0] + rows.line_num
            end = rows.line_num
            if last != line:
                self._bad(line, f"a quoted field runs from line {line} to line {last}; every record must be "
                                "on one line (an unterminated quote?)")
                continue
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                header_line = line
                if "hash" not in header:
                    raise ListError(self.path, line, f"CSV header has no 'hash' column (columns: "
                                                     f"{', '.join(header)}); name the column holding the hex "
                                                     "hashes 'hash'")
                hi = header.index("hash")
                ki = header.index("kind") if "kind" in header else None
                ii = header.index("id") if "id" in header else None
                li = header.index("label") if "label" in header else None
                others = [(i, c) for i, c in enumerate(header) if i not in (hi, ki, ii, li) and c]
                continue
            if len(row) != len(header):
                self._bad(line, f"{len(row)} columns, the header (line {header_line}) has {len(header)}")
                continue
            parsed = self._parse(line, row[hi], row[ki] if ki is not None else None)
            if parsed is None:
                continue
            kind, h = parsed
            row_id = row[ii].strip() if ii is not None and row[ii].strip() else None
            label = row[li].strip() if li is not None and row[li].strip() else None
            extra = {c: row[i] for i, c in others if row[i] != ""} or None
            yield self._entry(kind, h, row_id, label, line, extra)
        if header is None:
            raise ListError(self.path, 0, "empty CSV list: no header row with a 'hash' column")


# ====================================================================== provenance table
_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE lists(list_no INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, source TEXT, sha256 TEXT,
                   added TEXT, updated TEXT);
CREATE TABLE entries(id INTEGER PRIMARY KEY, list_no INTEGER NOT NULL, kind TEXT NOT NULL, hash TEXT NOT NULL,
                     row_id TEXT, label TEXT, line INTEGER, extra TEXT);
CREATE INDEX entries_hash ON entries(hash);
"""


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder):
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Provenance:
    """The provenance table of an index (an SQLite file); see the module docstring.

    legacy_kind: the kind a schema 1 table's 'perceptual' entries are (the index's one kind).
    """

    def __init__(self, path, writable=False, legacy_kind="phash"):
        self.path = path
        if writable:
            self.db = sqlite3.connect(path)
        else:
            self.db = self._read_only(path)
        self.legacy_kind = legacy_kind
        self._list_names = None
        self._lock = threading.Lock()       # one connection, shared by the threads of a service

    @staticmethod
    def _read_only(path):
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return sqlite3.connect(f"file:{_uri(path)}?mode=ro", uri=True, check_same_thread=False)

    # ------------------------------------------------------------ writing
    @classmethod
    def new_file(cls, index_path, copy_from=None):
        """A writable table at a fresh temporary path beside index_path.

        copy_from: an open Provenance to start from, copied through its open connection
        (SQLite's backup), so a concurrent update that replaces its file cannot break the copy;
        a schema 1 table is rewritten as schema 2 (its perceptual entries named by its legacy_kind).
        """
        folder, base = os.path.split(os.path.abspath(index_path))
        token = secrets.token_hex(6)
        tmp = os.path.join(folder, f".{base}.lists-{token}.db.tmp")
        prov = cls(tmp, writable=True)
        try:
            if copy_from is not None:
                with copy_from._lock:
                    copy_from.db.backup(prov.db)
            prov.db.execute("PRAGMA journal_mode=OFF")      # a temp file: published whole or deleted
            prov.db.execute("PRAGMA synchronous=OFF")       # publish() fsyncs it
            if copy_from is None:
                prov.db.executescript(_SCHEMA)
                prov.db.execute("INSERT INTO meta VALUES ('schema', ?), ('next_id', '0')", (str(SCHEMA_VERSION),))
            elif copy_from.schema() < 2:
                prov.db.execute("UPDATE entries SET kind=? WHERE kind=?", (copy_from.legacy_kind, LEGACY_PERCEPTUAL))
                prov.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            # A secret the index's metadata repeats: a forged index can name this file, not know this.
            prov.table_id = secrets.token_hex(16)
            prov.db.execute("INSERT OR REPLACE INTO meta VALUES ('table_id', ?)", (prov.table_id,))
        except BaseException:
            prov.discard()
            raise
        prov.final_path = os.path.join(folder, f"{base}.lists-{token}.db")
        return prov

    def publish(self):
        """Commit, fsync and rename the temporary table to its final name; returns that path."""
        self.db.commit()
        self.db.close()
        _fsync_file(self.path)
        os.replace(self.path, self.final_path)
        _fsync_dir(os.path.dirname(self.final_path))
        self.path = self.final_path
        self.db = self._read_only(self.path)
        return self.path

    def discard(self):
        try:
            self.db.close()
        finally:
            for p in (self.path,):
                try:
                    os.unlink(p)
                except OSError:
                    pass

    def _list_no(self, hash_list):
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        source = os.path.abspath(hash_list.path)
        row = self.db.execute("SELECT list_no FROM lists WHERE name=?", (hash_list.name,)).fetchone()
        if row:
            self.db.execute("UPDATE lists SET source=?, updated=? WHERE list_no=?", (source, now, row[0]))
            return row[0]
        cur = self.db.execute("INSERT INTO lists(name, source, added, updated) VALUES (?,?,?,?)",
                              (hash_list.name, source, now, now))
        return cur.lastrowid

    def next_id(self):
        with self._lock:
            return int(self.db.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()[0])

    def schema(self):
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return int(row[0]) if row else 1

    def stored_table_id(self):
        """The table's own id (None for tables written before ids existed)."""
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key='table_id'").fetchone()
        return row[0] if row else None

    def add_list(self, hash_list):
        """Stream a HashList's rows into the table; returns how many were already present and skipped.

        A row is already present when its list already holds the same hash with the same id
        (or both without an id): a repeated row of the file, or a row of an earlier update.
        The rows added get ids from next_id() on; read the perceptual ones with perceptual_rows().
        """
        list_no = self._list_no(hash_list)
        start = self.next_id()
        # A bulk load into a small table: build the hash index once afterwards, not row by row.
        try:
            bulk = os.path.getsize(hash_list.path) > 20 * max(50_000, start)    # ~20+ bytes a row
        except OSError:
            bulk = False            # reading it will say what is wrong
        if bulk:
            self.db.execute("DROP INDEX IF EXISTS entries_hash")
        rows = ((start + k, list_no, e.kind, e.hash, e.row_id, e.label, e.line,
                 json.dumps(e.extra, ensure_ascii=False) if e.extra else None)
                for k, e in enumerate(hash_list))
        self.db.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", rows)
        if bulk:
            self.db.execute("CREATE INDEX entries_hash ON entries(hash)")
        present = self.db.execute(
            "DELETE FROM entries WHERE id >= ? AND EXISTS (SELECT 1 FROM entries AS e WHERE e.hash = entries.hash "
            "AND e.list_no = entries.list_no AND e.row_id IS entries.row_id AND e.id < entries.id)",
            (start,)).rowcount
        self.db.execute("UPDATE lists SET sha256=? WHERE list_no=?", (hash_list.sha256, list_no))
        self.db.execute("UPDATE meta SET value=? WHERE key='next_id'", (str(start + hash_list.rows),))
        return present

    def perceptual_rows(self, kind, since=0):
        """(ids int64 (n,), codes in the kind's layout) of the entries of this HashKind with id >= since,
        in id order (a table being written: schema 2)."""
        cur = self.db.execute("SELECT id, hash FROM entries WHERE id >= ? AND kind = ? ORDER BY id",
                              (since, kind.name))
        ids, codes = [np.empty(0, np.int64)], [kind.from_hex([])]
        while True:
            batch = cur.fetchmany(8192)
            if not batch:
                break
            ids.append(np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch)))
            codes.append(kind.from_hex([r[1] for r in batch]))
        return np.concatenate(ids), np.concatenate(codes)

    def remove_list_rows(self, hash_list, only_list=None):
        """Delete entries of the kind and hash (and id, when the row has one) of each row.

        only_list: restrict to that list name.  Returns ({kind: ids int64 of removed perceptual
        entries}, number of entries removed, number of rows that matched nothing).
        """
        where_list = ""
        args_list = ()
        if only_list is not None:
            row = self.db.execute("SELECT list_no FROM lists WHERE name=?", (only_list,)).fetchone()
            if row is None:
                raise ListError(hash_list.path, 0, f"the index has no list named {only_list!r} "
                                                   f"(it has: {', '.join(self.list_names().values())})")
            where_list, args_list = " AND list_no=?", (row[0],)
        removed_ids, removed, missing = {}, 0, 0
        for e in hash_list:
            q = "SELECT id, kind FROM entries WHERE hash=? AND kind=?" + where_list
            args = (e.hash, e.kind) + args_list
            if e.row_id is not None:
                q += " AND row_id=?"
                args += (e.row_id,)
            found = self.db.execute(q, args).fetchall()
            if not found:
                missing += 1
                continue
            self.db.executemany("DELETE FROM entries WHERE id=?", [(i,) for i, _ in found])
            removed += len(found)
            if e.kind in KINDS:
                removed_ids.setdefault(e.kind, []).extend(i for i, _ in found)
        return {k: np.array(v, dtype=np.int64) for k, v in removed_ids.items()}, removed, missing

    # ------------------------------------------------------------ reading
    def list_names(self):
        if self._list_names is None:
            with self._lock:
                self._list_names = dict(self.db.execute("SELECT list_no, name FROM lists"))
        return self._list_names

    def entry_kind(self, kind):
        """An entries row's kind as stored -> its kind (schema 1's 'perceptual' is legacy_kind)."""
        return self.legacy_kind if kind == LEGACY_PERCEPTUAL else kind

    def _record(self, row, distance):
        _id, list_no, kind, h, row_id, label, line, extra = row
        return {"list": self.list_names().get(list_no), "id": row_id, "label": label, "distance": distance,
                "kind": self.entry_kind(kind), "line": line}

    def rows_of(self, ids):
        """{index id: row tuple (id, list_no, kind, hash, row_id, label, line, extra)} of these entry ids."""
        out = {}
        ids = [int(i) for i in ids]
        with self._lock:
            for k in range(0, len(ids), 500):
                part = ids[k:k + 500]
                q = ("SELECT id, list_no, kind, hash, row_id, label, line, extra FROM entries WHERE id IN (%s)"
                     % ",".join("?" * len(part)))
                for row in self.db.execute(q, part):
                    out[row[0]] = row
        return out

    def digest_rows(self, hexdigest, kind):
        """[row tuple] of the kind's ('md5' or 'sha1') entries equal to this lower-case digest."""
        with self._lock:
            return self.db.execute("SELECT id, list_no, kind, hash, row_id, label, line, extra FROM entries "
                                   "WHERE hash=? AND kind=? ORDER BY id", (hexdigest, kind)).fetchall()

    def has_digests(self):
        with self._lock:
            return self.db.execute("SELECT 1 FROM entries WHERE kind IN ('md5', 'sha1') LIMIT 1").fetchone() is not None

    def summary(self):
        """[{name, source, sha256, added, updated, counts: {kind: entries}}] per list."""
        counts = {}
        with self._lock:
            by_kind = self.db.execute("SELECT list_no, kind, count(*) FROM entries GROUP BY 1, 2").fetchall()
            lists = self.db.execute("SELECT list_no, name, source, sha256, added, updated FROM lists "
                                    "ORDER BY list_no").fetchall()
        order = {k: i for i, k in enumerate([*KINDS, *DIGEST_KINDS])}      # perceptual kinds first, as in files
        for list_no, kind, n in sorted(by_kind, key=lambda r: order.get(r[1], len(order))):
            counts.setdefault(list_no, {})[self.entry_kind(kind)] = n
        return [{"name": name, "source": source, "sha256": sha, "added": added, "updated": updated,
                 "counts": counts.get(list_no, {})} for list_no, name, source, sha, added, updated in lists]

    def close(self):
        self.db.close()


def _uri(path):
    from urllib.parse import quote
    return quote(os.path.abspath(path))


# ====================================================================== index + table
class IndexOpenError(ValueError):
    """The index or its provenance table cannot be opened (exit status 2 on the command line)."""


class ListIndex:
    """An index file opened with its provenance table: what a match traces back to.

    ``open_lists(path)`` opens one.  It holds one HashIndex per perceptual kind its lists
    carried (``indexes`` {kind name: HashIndex}; ``kinds``: their HashKind objects, in file
    order, a 64-bit kind first) and the MD5/SHA-1 entries in the table.

        match(codes, radius=None, kind=None, threads=None, match_degenerate=False)
        nearest(codes, k, kind=None, threads=None, match_degenerate=False)
        match_digests(digests, kind)            # kind 'md5' or 'sha1'
        provenance(ids)                         # {index id: full row}
        counts()                                # {kind: live entries}, digests included
        verify()                                # every checksum and invariant of every kind's index

    ``kind`` is a kind name or HashKind; None means the index's only perceptual kind (a
    ValueError naming the kinds when it holds several).  Codes are in the kind's layout:
    uint64 (n,) or one int for 64-bit kinds, uint8 (n, 32) or one (32,) for PDQ (as
    ``kind.from_hex`` returns them).  Match records are the dicts ``hashsieve scan``
    reports: {list, id, label, distance, kind, line}.  Attributes: indexes, kinds, prov
    (its Provenance), metadata, path; ``index``, ``kind`` and ``default_radius`` are the
    only kind's (for single-kind callers).  Safe to use from many threads.  Use as a
    context manager, or call close().
    """

    def __init__(self, path, indexes, prov, metadata):
        self.path, self.indexes, self.prov, self.metadata = path, dict(indexes), prov, metadata
        self.info = metadata.get(META_KEY, {})
        self.kinds = [kind_of(name) for name in self.indexes]

    def kind_named(self, kind=None):
        """The HashKind of this index called kind (a name or HashKind; None: the only one), or ValueError."""
        if kind is None:
            if len(self.kinds) != 1:
                raise ValueError(f"this index holds {' and '.join(k.name for k in self.kinds)} hashes; say which "
                                 "with kind=")
            return self.kinds[0]
        name = getattr(kind, "name", kind)
        if name not in self.indexes:
            raise ValueError(f"this index holds no {name} hashes (it holds {', '.join(self.indexes)})")
        return kind_of(name)

    def _only_kind(self):
        if len(self.kinds) != 1:
            raise ValueError(f"this index holds {' and '.join(self.indexes)} hashes, one HashIndex each: use "
                             ".indexes[kind] and .kinds")
        return self.kinds[0]

    @property
    def index(self):
        """The HashIndex of the only perceptual kind (ValueError when there are several: use indexes)."""
        return self.indexes[self._only_kind().name]

    @property
    def kind(self):
        """The name of the only perceptual kind (ValueError when there are several: use kinds)."""
        return self._only_kind().name

    @property
    def default_radius(self):
        """The only perceptual kind's default radius (ValueError when there are several)."""
        return self._only_kind().default_radius

    @staticmethod
    def _codes(kind, codes):
        """codes checked and in the kind's layout: uint64 (n,), or uint8 (n, bytes) for wider kinds."""
        if kind.bits == 64:
            return hashes_array(codes)
        return hashes_array(codes, bits=kind.bits).view(np.uint8)

    def match(self, codes, radius=None, kind=None, threads=None, match_degenerate=False):
        """Match records of each code, in input order.

        codes: of one kind (see the class docstring); radius: inclusive Hamming radius (default:
        the kind's, as scan uses: pHash 8, PDQ 31).  Returns a list of n lists of dicts {list,
        id, label, distance, kind, line}, each sorted by (distance, index id).  A degenerate code
        (see kinds.py: no identity) makes no match on either side, the query's or the entry's,
        unless match_degenerate.  Perceptual entries only; see match_digests() for MD5/SHA-1.
        """
        kind = self.kind_named(kind)
        codes = self._codes(kind, codes)
        radius = kind.default_radius if radius is None else radius
        lims, dist, ids = self.indexes[kind.name].range_search(codes, radius, threads=threads)
        rows = self._rows(kind, ids, radius, match_degenerate)
        blocked = kind.degenerate(codes, radius) if not match_degenerate else np.zeros(len(codes), bool)
        return [[] if blocked[j] else self._records(kind, dist[lims[j]:lims[j + 1]], ids[lims[j]:lims[j + 1]], rows)
                for j in range(len(codes))]

    def nearest(self, codes, k, kind=None, threads=None, match_degenerate=False):
        """Match records of the k nearest entries of the kind to each code (fewer if it holds fewer), in
        input order; degenerate codes as in match(), judged at the kind's default radius."""
        kind = self.kind_named(kind)
        codes = self._codes(kind, codes)
        dist, ids = self.indexes[kind.name].search(codes, k, threads=threads)
        rows = self._rows(kind, ids[ids >= 0], None, match_degenerate)
        blocked = kind.degenerate(codes) if not match_degenerate else np.zeros(len(codes), bool)
        return [[] if b else self._records(kind, d[i >= 0], i[i >= 0], rows) for b, d, i in zip(blocked, dist, ids)]

    def _rows(self, kind, ids, radius, match_degenerate):
        """{index id: row} of the entries hit, less the degenerate ones unless match_degenerate.

        Only rows of this kind: a damaged or forged index whose ids name another kind's rows makes
        no match through them (as for removed rows) rather than reporting them as this kind."""
        rows = self.prov.rows_of(ids) if len(ids) else {}
        rows = {i: row for i, row in rows.items() if self.prov.entry_kind(row[2]) == kind.name}
        if rows and not match_degenerate:
            hit = list(rows)
            for i in np.compress(kind.degenerate(kind.from_hex([rows[i][3] for i in hit]), radius), hit):
                del rows[int(i)]
        return rows

    def _records(self, kind, dists, ids, rows):
        found = []
        for d, i in zip(dists.tolist(), ids.tolist()):
            row = rows.get(i)
            if row is not None:            # removed from the table (or degenerate), not yet from the index
                rec = self.prov._record(row, d)
                rec["kind"] = kind.name
                found.append(rec)
        return found

    def match_digests(self, digests, kind):
        """Match records (distance 0) of each MD5 or SHA-1 hex digest (kind 'md5' or 'sha1'), in input order."""
        if kind not in DIGEST_KINDS:
            raise ValueError(f"kind must be 'md5' or 'sha1', got {kind!r}")
        return [[self.prov._record(row, 0) for row in self.prov.digest_rows(hex_digits(d).lower(), kind)]
                for d in digests]

    def counts(self):
        """{kind: live entries}: every perceptual kind of the index, then 'md5' and 'sha1' (from the table)."""
        out = {name: len(index) for name, index in self.indexes.items()}
        for x in self.prov.summary():
            for kind in DIGEST_KINDS:
                out[kind] = out.get(kind, 0) + x["counts"].get(kind, 0)
        return out

    def verify(self):
        """Check every section checksum of the index file (once) and every invariant of each kind's index
        (HashIndex.verify); IndexFormatError naming the file and the damage."""
        from .storage import verify_parts
        verify_parts(self.indexes.values())

    def provenance(self, ids):
        """{index id: {list, id, label, kind, hash, line, extra}} for these index ids (absent ids are left out)."""
        out = {}
        for i, row in self.prov.rows_of(np.ravel(ids)).items():
            rec = self.prov._record(row, None)
            del rec["distance"]
            rec["hash"] = row[3]
            rec["extra"] = json.loads(row[7]) if row[7] else None
            out[i] = rec
        return out

    def close(self):
        if self.prov is not None:
            self.prov.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def provenance_path(index_path, metadata):
    """Path of the provenance table an index's metadata names; IndexFormatError unless it is safe.

    Safe means what Provenance.new_file writes: a plain file name NAME.lists-<12 hex digits>.db,
    taken in the index's own folder, and not a symbolic link.  A forged index must not make an
    update open or delete any other file.  None when the metadata names no table.
    """
    from .storage import IndexFormatError
    info = metadata.get(META_KEY) if isinstance(metadata, dict) else None
    if not isinstance(info, dict) or "provenance" not in info:
        return None
    name = info["provenance"]
    if not isinstance(name, str) or not _PROVENANCE_NAME.match(name):
        raise IndexFormatError(f"{index_path}: its metadata names the provenance table {name!r}, which is not a "
                               "file name of the form INDEX.lists-<token>.db (a forged or damaged index); "
                               "nothing was opened or deleted. Rebuild the index from its hash lists")
    path = os.path.join(os.path.dirname(os.path.abspath(index_path)), name)
    if os.path.islink(path):
        raise IndexFormatError(f"{index_path}: its provenance table {path} is a symbolic link; nothing was "
                               "opened or deleted. Replace the link with the file, or rebuild the index")
    return path


def check_provenance(prov, index_path, metadata):
    """IndexFormatError unless prov (an open Provenance) is the table this index was saved with.

    The index's metadata repeats the table's secret id; tables from before ids existed must at
    least carry the index's own file name, as they were written.
    """
    from .storage import IndexFormatError
    want = metadata[META_KEY].get("table_id")
    if want is None:
        ok = os.path.basename(prov.path).startswith(os.path.basename(index_path) + ".lists-")
    else:
        ok = prov.stored_table_id() == want
    if not ok:
        raise IndexFormatError(f"{index_path}: the provenance table {prov.path} it names belongs to another index "
                               "(a forged, damaged or renamed index); nothing was changed or deleted. "
                               "Rebuild the index from its hash lists")


def open_lists(path, mmap=True):
    """ListIndex of an index written by the command line; IndexOpenError naming the fix otherwise."""
    from .storage import IndexFormatError, load_parts
    path = os.fspath(path)
    if not os.path.exists(path):
        raise IndexOpenError(f"{path}: no such index file; build one with `hashsieve build LIST... -o {path}`")
    try:
        parts = load_parts(path, mmap=mmap)
        meta = next(iter(parts.values())).metadata   # of the very file loaded, not of a later version saved over it
        prov_path = provenance_path(path, meta)
    except (IndexFormatError, OSError) as e:
        raise IndexOpenError(f"cannot open index {path}: {e}") from None
    if prov_path is None:
        raise IndexOpenError(f"{path}: this index has no list provenance (it was not written by "
                             "`hashsieve build`); rebuild it from the hash lists with `hashsieve build`")
    # A file of one index (format 2) names its kind in the metadata; a file of parts names each part.
    indexes = {}
    for name, ix in parts.items():
        name = meta[META_KEY].get("kind", "phash") if name is None else name
        try:
            kind = kind_of(name)
        except (ValueError, TypeError) as e:
            raise IndexOpenError(f"cannot open index {path}: the hash kind {name!r} it holds is not one this "
                                 f"hashsieve knows ({e}); upgrade hashsieve or rebuild the index") from None
        indexes[kind.name] = ix
        if kind.bits != ix.bits:
            raise IndexOpenError(f"cannot open index {path}: its {name} index holds {ix.bits}-bit codes, {name} "
                                 f"hashes are {kind.bits}-bit (a damaged or forged index); rebuild the index")
    try:
        prov = Provenance(prov_path, legacy_kind=next(iter(indexes)))
        prov.next_id()
    except (OSError, sqlite3.Error) as e:
        raise IndexOpenError(f"{path}: its provenance table {prov_path} is missing or unreadable ({e}); "
                             "keep the .lists-*.db file next to the index, or rebuild the index") from None
    try:
        check_provenance(prov, path, meta)
    except IndexFormatError as e:
        prov.close()
        raise IndexOpenError(f"cannot open index {path}: {e}") from None
    return ListIndex(path, indexes, prov, meta)


def write_index(path, indexes, prov_tmp, old_prov_path=None, extra_meta=None, incremental=True):
    """Publish prov_tmp, save the indexes ({kind name: HashIndex}, a 64-bit kind first) atomically
    in one file pointing at it, then delete the old table.

    On any failure the new table is removed and the old index and table are untouched.
    incremental=False always writes a self-contained index file (no base file).
    """
    from .storage import save_parts
    try:
        final = prov_tmp.publish()
    except BaseException:
        prov_tmp.discard()
        raise
    # "kind": what a file of one index (format 2, no part names) holds; files of parts name their parts.
    info = {"kind": next(iter(indexes)), "kinds": list(indexes), "provenance": os.path.basename(final),
            "table_id": prov_tmp.table_id, "schema": SCHEMA_VERSION,
            "lists": [{k: s[k] for k in ("name", "sha256", "counts", "updated")} for s in prov_tmp.summary()]}
    info.update(extra_meta or {})
    try:
        save_parts(indexes, path, metadata={META_KEY: info}, incremental=incremental)
    except BaseException:
        prov_tmp.discard()
        raise
    prov_tmp.close()
    if old_prov_path and os.path.abspath(old_prov_path) != os.path.abspath(final):
        try:
            os.unlink(old_prov_path)
        except OSError:
            pass
    return final


class IndexLock:
    """An exclusive advisory lock (INDEX.lock) so two updates of one index never interleave."""

    def __init__(self, index_path):
        self.path = os.path.abspath(index_path) + ".lock"
        self.fd = None

    def __enter__(self):
        import fcntl
        # O_NOFOLLOW: a planted INDEX.lock symlink must not make us create or open its target.
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def remove(self):
        """Delete the lock file while holding it (for a destination nobody else updates yet)."""
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def __exit__(self, *exc):
        os.close(self.fd)
