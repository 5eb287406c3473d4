"""Inputs and indexes by fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``https://...``), and the
files the distributed scan reads: where they are listed, how they are opened.

Storage options come from the environment of each process, as fsspec and the storage's own client
read them (``FSSPEC_S3_ENDPOINT_URL``, ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``...): a URL
is all that travels from the client to the workers, so no credential is ever in a task, the report
or the log.  ``file://`` URLs are local paths (walked by scan.walk, with its symbolic-link rules).
"""
import atexit
import os
import posixpath
import shutil
import tempfile
import threading

from .scan import _CHANGED, Item, too_big

__all__ = ["is_url", "local_path", "list_url", "LocalFile", "RemoteFile", "fetch_index"]


# fsspec's names of the local file system: such inputs are walked by scan.walk, with its rules for
# symbolic links (fsspec's listing would follow a link out of the folder named).
LOCAL_PREFIXES = ("file://", "local://")


def is_url(p):
    """True for a URL fsspec opens (PROTOCOL://...) other than a local one (file://, local://)."""
    return isinstance(p, str) and "://" in p and not p.startswith(LOCAL_PREFIXES)


def local_path(p):
    """p without a file:// or local:// prefix (the local path it names)."""
    for prefix in LOCAL_PREFIXES:
        if isinstance(p, str) and p.startswith(prefix):
            return p[len(prefix):]
    return p


def _fs(url):
    import fsspec
    return fsspec.core.url_to_fs(url)


def _reason(e):
    """A storage error as text for the report: its type and message (never the storage options)."""
    return f"{e.strerror or e}" if isinstance(e, OSError) else f"{type(e).__name__}: {e}"


def list_url(url, done=frozenset()):
    """RemoteFile (or an error Item) for every object under url, folders (prefixes) recursed in name
    order as scan.walk does; what is held is one listing per level of folders being visited."""
    try:
        fs, root = _fs(url)
        info = fs.info(root)
    except Exception as e:      # not found, no permission, unknown protocol, no network...
        yield Item(url, None, error=f"cannot read ({_reason(e)})")
        return
    if info.get("type") != "directory":
        if (url, None) not in done:
            yield RemoteFile(url, info.get("size"))
        return

    def listing(folder):
        try:
            entries = fs.ls(folder, detail=True)
        except Exception as e:
            return [{"error": f"cannot list the folder ({_reason(e)})", "name": folder}]
        own = folder.rstrip("/")
        return sorted((e for e in entries if e["name"].rstrip("/") != own), key=lambda e: e["name"])

    stack = [iter(listing(root))]
    while stack:
        e = next(stack[-1], None)
        if e is None:
            stack.pop()
        elif "error" in e:
            yield Item(fs.unstrip_protocol(e["name"]), None, error=e["error"])
        elif e.get("type") == "directory":
            stack.append(iter(listing(e["name"])))
        elif (fs.unstrip_protocol(e["name"]), None) not in done:
            yield RemoteFile(fs.unstrip_protocol(e["name"]), e.get("size"))


class LocalFile:
    """A regular file scan.walk listed: opened where the task runs, refused if it was replaced."""

    def __init__(self, path, dev, ino, size):
        self.path, self.dev, self.ino, self.size = path, dev, ino, size

    def open(self):
        f = open(self.path, "rb")
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            f.close()
            raise _Replaced()
        return f

    def job(self, f, max_bytes):
        """The hash_jobs job of the file itself (hash_jobs reads it and checks its size)."""
        return (self.path, self.dev, self.ino)


class RemoteFile:
    """An object at a URL, of the size its listing gave: read by range (zip) or stream (tar)."""

    def __init__(self, path, size):
        self.path, self.size = path, size

    def open(self):
        fs, p = _fs(self.path)
        f = fs.open(p, "rb")
        if self.size is not None and f.size is not None and f.size != self.size:
            f.close()
            raise _Replaced()
        self.size = f.size if self.size is None else self.size
        return f

    def job(self, f, max_bytes):
        """The file's bytes, or an ImageHashError-like error text if it is above the limit."""
        if self.size is not None and self.size > max_bytes:
            raise _TooBig(too_big(self.size, max_bytes))
        f.seek(0)
        data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _TooBig(too_big(len(data), max_bytes))
        return data


class _Replaced(Exception):
    """The file is not the one listed (another inode, another size)."""

    reason = _CHANGED


class _TooBig(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def read_error(e):
    """The report's error text for a file that could not be opened or read."""
    if isinstance(e, (_Replaced, _TooBig)):
        return e.reason
    return f"cannot read the file ({_reason(e)})"


# ====================================================================== index by URL
_fetched = {}
_fetch_lock = threading.Lock()


def fetch_index(url):
    """A local copy of the index at url with the files it needs (its provenance table, its base
    file): fetched once per process into a temporary folder removed at exit."""
    from .lists import provenance_path
    from .storage import IndexFormatError, read_metadata
    with _fetch_lock:
        if url in _fetched:
            return _fetched[url]
        folder = tempfile.mkdtemp(prefix="hashsieve-index-")
        atexit.register(shutil.rmtree, folder, True)
        fs, path = _fs(url)
        parent = posixpath.dirname(path)
        local = os.path.join(folder, posixpath.basename(path))
        fs.get_file(path, local)
        try:
            meta = read_metadata(local)
            needed = [provenance_path(local, meta["metadata"])]
            if meta["base"]:          # (loading checks that it is the base this index was saved with)
                needed.append(os.path.join(folder, os.path.basename(meta["base"]["name"])))
        except IndexFormatError:
            needed = []             # open_lists says what is wrong with it
        for name in needed:
            if name is not None:
                fs.get_file(posixpath.join(parent, os.path.basename(name)), name)
        _fetched[url] = local
        return local
