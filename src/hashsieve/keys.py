"""API keys of the screening service: a keys file that never holds a secret.

A secret is ``hs_<key id>_<43 random characters>`` (256 random bits). The keys file holds, per
key, one JSON line: name, key id, scopes, a random salt and SHA-256(salt + secret). The key
id (public, 12 hex digits) finds the line; the hash is compared in constant time. A fast
hash is enough: the secret is 256 random bits, so there is nothing to guess a dictionary of,
and a slow hash (scrypt) would cost milliseconds on every request.

The file is written to a temporary name and renamed into place, mode 0600.
"""
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time

__all__ = ["SCOPES", "KeysFileError", "Key", "KeyRing", "add_key", "remove_key", "read_keys", "parse_scopes"]

# What a key may be allowed: each endpoint needs one (service.py); /healthz and /readyz need none.
SCOPES = ("lookup", "match", "status", "metrics")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
_SECRET = re.compile(r"hs_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")


class KeysFileError(ValueError):
    """The keys file or a key given cannot be used; the message names the fix."""


class Key:
    __slots__ = ("name", "key_id", "scopes", "salt", "digest", "created")

    def __init__(self, name, key_id, scopes, salt, digest, created):
        self.name, self.key_id, self.scopes = name, key_id, frozenset(scopes)
        self.salt, self.digest, self.created = salt, digest, created

    def as_json(self):
        return json.dumps({"name": self.name, "key_id": self.key_id, "scopes": sorted(self.scopes),
                           "salt": self.salt.hex(), "sha256": self.digest.hex(), "created": self.created})


def _digest(salt, secret):
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def read_keys(path):
    """[Key] of a keys file; KeysFileError naming the line otherwise. A missing file holds no keys."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise KeysFileError(f"{path}: cannot read the keys file ({e}); check the path and its permissions") from None
    keys, names, ids = [], set(), set()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            key = Key(d["name"], d["key_id"], d["scopes"], bytes.fromhex(d["salt"]), bytes.fromhex(d["sha256"]),
                      d.get("created"))
            if not _NAME.match(key.name) or not re.fullmatch(r"[0-9a-f]{12}", key.key_id) or \
                    not key.scopes <= set(SCOPES) or len(key.digest) != 32:
                raise ValueError("a field has the wrong form")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:   # (JSON nested deep)
            raise KeysFileError(f"{path}:{no}: not a key line written by `hashsieve keys add` ({e}); remove the "
                            "line or add the key again") from None
        if key.name in names or key.key_id in ids:
            raise KeysFileError(f"{path}:{no}: key {key.name!r} appears twice; remove one of the lines")
        names.add(key.name)
        ids.add(key.key_id)
        keys.append(key)
    return keys


def _write_keys(path, keys):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for k in keys:
                f.write(k.as_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def parse_scopes(text):
    """frozenset of scopes from 'lookup,match'; KeysFileError naming the allowed ones otherwise."""
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    bad = sorted(scopes - set(SCOPES))
    if bad or not scopes:
        raise KeysFileError(f"--scopes must be a comma-separated list of {', '.join(SCOPES)}, got {text!r}")
    return scopes


def add_key(path, name, scopes):
    """Add a key to the keys file (created if missing); returns the secret, which is stored nowhere."""
    if not _NAME.match(name):
        raise KeysFileError(f"key name {name!r} must be 1-64 letters, digits or ._@- (starting with a letter or digit)")
    keys = read_keys(path)
    if any(k.name == name for k in keys):
        raise KeysFileError(f"{path} already has a key named {name!r}; remove it first "
                        f"(`hashsieve keys remove {name} --file {path}`) or choose another name")
    key_id = secrets.token_hex(6)
    secret = f"hs_{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    keys.append(Key(name, key_id, scopes, salt, _digest(salt, secret),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    _write_keys(path, keys)
    return secret


def remove_key(path, name):
    keys = read_keys(path)
    left = [k for k in keys if k.name != name]
    if len(left) == len(keys):
        raise KeysFileError(f"{path} has no key named {name!r} (it has: {', '.join(k.name for k in keys) or 'none'})")
    _write_keys(path, left)


class KeyRing:
    """The keys of a keys file, to check bearer secrets against."""

    def __init__(self, keys):
        self._by_id = {k.key_id: k for k in keys}

    def __len__(self):
        return len(self._by_id)

    def check(self, secret):
        """The Key whose secret this is, or None. The comparison takes the same time for a wrong
        secret of a known key id, of an unknown one and for a malformed one."""
        m = _SECRET.match(secret) if len(secret) < 128 else None
        key = self._by_id.get(m.group(1)) if m else None
        salt, want = (key.salt, key.digest) if key is not None else (b"\0" * 16, b"\0" * 32)
        ok = hmac.compare_digest(_digest(salt, secret if m else ""), want)
        return key if ok and key is not None else None
