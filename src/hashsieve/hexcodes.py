"""The hex text form of hashes: 16 digits for 64-bit ones, 64 for 256-bit ones.

imagehash prints the 8x8 bit matrix row-major, first bit most significant, so
int(hex, 16) is the uint64 stored in the index. A 256-bit code is uint8 (32,)
in FAISS's binary layout: byte i is hex digits 2i and 2i+1.
"""
import numpy as np

from ._validate import _is_int, hashes_array

HEX_DIGITS = 16
WIDE_HEX_DIGITS = 64        # a 256-bit code
_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# ASCII byte -> nibble value, 255 for anything that is not a hex digit.
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
    _NIBBLE[ord(chr(_c).upper())] = _i


def to_hex(hashes):
    """One uint64 (int) -> a 16-digit lower-case hex str; an array -> a list of them.
    256-bit codes: uint8 (32,) -> a 64-digit str, uint8 (n, 32) -> a list of them."""
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint8:
        codes = hashes_array(hashes, bits=256).view(np.uint8)
        text = _DIGITS[np.stack([codes >> 4, codes & 15], axis=-1).reshape(len(codes), -1)].tobytes().decode("ascii")
        out = [text[i:i + WIDE_HEX_DIGITS] for i in range(0, len(text), WIDE_HEX_DIGITS)]
        return out[0] if hashes.ndim == 1 else out
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
    A 64-digit hex str (a 256-bit code such as PDQ) -> uint8 (32,); a sequence -> uint8 (n, 32).

    Surrounding whitespace, a 0x prefix and upper case are accepted (as in hash
    lists); anything else that is not exactly 16 or 64 hex digits, or a sequence
    mixing the two, raises ValueError naming the item.
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
        if len(s) not in (HEX_DIGITS, WIDE_HEX_DIGITS):
            raise ValueError(f"hex hash [{i}] {s.decode('ascii', 'replace')!r} must be exactly "
                             f"{HEX_DIGITS} hex digits (a 64-bit imagehash) or {WIDE_HEX_DIGITS} (a 256-bit code "
                             f"such as PDQ), got {len(s)} characters")
        if raw and len(s) != len(raw[0]):
            raise ValueError(f"hex hash [{i}] has {len(s)} hex digits but hash [0] has {len(raw[0])}: "
                             "one call converts hashes of one width; split 64-bit and 256-bit hashes")
        raw.append(s)
    if not raw:
        return np.empty(0, dtype=np.uint64)
    digits = len(raw[0])
    nib = _NIBBLE[np.frombuffer(b"".join(raw), dtype=np.uint8)].reshape(-1, digits)
    bad = np.flatnonzero((nib == 255).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"hex hash [{i}] {raw[i].decode('ascii', 'replace')!r} has a character that "
                         "is not a hex digit (0-9, a-f)")
    if digits == WIDE_HEX_DIGITS:
        codes = (nib[:, 0::2] << 4) | nib[:, 1::2]
        return codes[0] if single else codes
    codes = np.zeros(len(raw), dtype=np.uint64)
    for j in range(HEX_DIGITS):
        codes = (codes << np.uint64(4)) | nib[:, j].astype(np.uint64)
    return int(codes[0]) if single else codes
