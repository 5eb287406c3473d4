"""The 16-hex-digit text form of 64-bit hashes used by imagehash.

imagehash prints the 8x8 bit matrix row-major, first bit most significant, so
int(hex, 16) is the uint64 stored in the index.
"""
import numpy as np

from ._validate import _is_int, hashes_array

HEX_DIGITS = 16
_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# ASCII byte -> nibble value, 255 for anything that is not a hex digit.
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
    _NIBBLE[ord(chr(_c).upper())] = _i


def to_hex(hashes):
    """One uint64 (int) -> a 16-digit lower-case hex str; an array -> a list of them."""
    single = _is_int(hashes)
    codes = hashes_array(hashes)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((codes[:, None] >> shifts) & np.uint64(15)).astype(np.uint8)
    text = _DIGITS[nibbles].tobytes().decode("ascii")
    out = [text[i:i + HEX_DIGITS] for i in range(0, len(text), HEX_DIGITS)]
    return out[0] if single else out


def hex_digits(text):
    """The digits of one hex string: surrounding whitespace and a 0x / 0X prefix removed, case kept.

    The one place the text form is read, for from_hex() and for hash lists alike.
    """
    s = text.strip()
    return s[2:] if s[:2] in ("0x", "0X") else s


def from_hex(strings):
    """A 16-digit hex str -> int; a sequence of them -> a uint64 array.

    Surrounding whitespace, a 0x prefix and upper case are accepted (as in hash
    lists); anything else that is not exactly 16 hex digits raises ValueError
    naming the item.
    """
    single = isinstance(strings, (str, bytes))
    items = [strings] if single else list(strings)
    raw = []
    for i, s in enumerate(items):
        if isinstance(s, bytes):
            s = s.decode("ascii", "replace")
        elif not isinstance(s, str):
            raise TypeError(f"hex hash [{i}] must be a str, got {type(s).__name__}")
        s = hex_digits(s).encode("ascii", "replace")
        if len(s) != HEX_DIGITS:
            raise ValueError(f"hex hash [{i}] {s.decode('ascii', 'replace')!r} must be exactly "
                             f"{HEX_DIGITS} hex digits (a 64-bit imagehash), got {len(s)} characters")
        raw.append(s)
    if not raw:
        return np.empty(0, dtype=np.uint64)
    nib = _NIBBLE[np.frombuffer(b"".join(raw), dtype=np.uint8)].reshape(-1, HEX_DIGITS)
    bad = np.flatnonzero((nib == 255).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"hex hash [{i}] {raw[i].decode('ascii', 'replace')!r} has a character that "
                         "is not a hex digit (0-9, a-f)")
    codes = np.zeros(len(raw), dtype=np.uint64)
    for j in range(HEX_DIGITS):
        codes = (codes << np.uint64(4)) | nib[:, j].astype(np.uint64)
    return int(codes[0]) if single else codes
