"""Hash kinds: what each perceptual hash is, how it is written, and when one carries no identity.

One object per kind, so the layers ask it instead of branching on names:

    kind = kind_of("pdq")
    kind.name, kind.bits, kind.hex_digits, kind.default_radius    # "pdq", 256, 64, 31
    codes = kind.from_hex(["0123...", ...])      # the index's layout: uint64 (n,) or uint8 (n, 32)
    kind.to_hex(codes)                           # [str, ...]
    code, score, flattened = kind.hash(path_or_bytes_or_pil, fast=False, max_pixels=...)
    kind.degenerate(codes, radius)               # bool (n,): makes no perceptual match by default
    kind.low_quality(score)                      # bool: the score is under the kind's gate
    kind.gate_blocks                             # True: a low-quality upload makes no match
    kind.dihedral                                # True: hash(..., dihedral=True) gives the 8 rotated/flipped codes

``score`` is what ``hash_image(..., with_detail=True)`` returns second: for the
64-bit kinds the detail score (std of the 32x32 grey thumbnail, 0-127.5), for
PDQ the reference's quality (0-100).

Degenerate hashes (``bench/bench_gate.py``, docs/cli.md "Degenerate hashes"): a
64-bit hash whose bits are one-dimensional (an image that varies along one axis
only: stripes, flags, gradients) or that lies within the radius of all-zero /
all-one (solid, blank and alpha-only images) matches unrelated images of the
same sort.  PDQ thresholds at the median, so a hash has ~128 one bits; it lies
within 31 of all-zero only when most coefficients tie at the median, as for a
black image or one under 5 px (all-zero hash).  One-dimensional images do not
collide under PDQ (docs/pdq.md), and blank images, whose PDQ bits are rounding
noise, are stopped by the quality gate (quality 0) rather than by their bits.
"""
import numpy as np

from . import hexcodes

__all__ = ["HashKind", "KINDS", "kind_of", "LOW_DETAIL_THRESHOLD", "PDQ_LOW_QUALITY"]

# Detail score under which a 64-bit hash is flagged low_detail (information only: it blocks nothing).
LOW_DETAIL_THRESHOLD = 1.0
# python-threatexchange's PDQ quality threshold: it neither indexes nor matches hashes under it.
PDQ_LOW_QUALITY = 50

_BYTE_REPEAT = np.uint64(0x0101010101010101)
# pHash: the DCT coefficients of the first row and column (bits of row 0 and column 0, MSB first).
_PHASH_EDGE = np.uint64(0xFF80808080808080)


def _rows_or_columns_equal(codes):
    """All 8 rows of the 8x8 bit matrix equal, or all 8 columns equal (each row 00 or ff)."""
    rows_equal = codes == (codes >> np.uint64(56)) * _BYTE_REPEAT
    by_row = codes.view(np.uint8).reshape(-1, 8)
    columns_equal = ((by_row == 0) | (by_row == 255)).all(axis=1)
    return rows_equal | columns_equal


def _phash_one_dimensional(codes):
    """No bit outside the first row and column: an image f(x) + g(y) leaves the other 49 DCT
    coefficients tied at the median, so they hash to 0."""
    return (codes & ~_PHASH_EDGE) == 0


class HashKind:
    """A perceptual hash kind: a 64-bit imagehash one (uint64 codes) or PDQ (256 bits, uint8 (n, 32))."""

    def __init__(self, name, bits, default_radius, score, low_quality_below, gate_blocks,
                 one_dimensional=None, dihedral=False):
        self.name, self.bits, self.default_radius = name, bits, default_radius
        self.hex_digits = bits // 4
        self.score = score                          # "detail" or "quality": what hash() returns second
        self.low_quality_below = low_quality_below  # scores under it are low quality
        self.gate_blocks = gate_blocks              # a low-quality upload makes no match (else: flagged only)
        self.dihedral = dihedral                    # hash() computes the eight dihedral codes with dihedral=True
        self._one_dimensional = one_dimensional

    # ------------------------------------------------------------------ layout and text
    def zeros(self, n):
        """n all-zero codes in the index's layout: uint64 (n,) or uint8 (n, bits // 8)."""
        return np.zeros(n if self.bits == 64 else (n, self.bits // 8), np.uint64 if self.bits == 64 else np.uint8)

    def as_codes(self, codes):
        """A sequence of single codes (ints, or uint8 (32,) arrays) as one array in the index's layout."""
        out = self.zeros(len(codes))
        for i, code in enumerate(codes):
            out[i] = code
        return out

    def from_hex(self, strings):
        """Hex strings (each exactly hex_digits digits; whitespace, 0x and upper case accepted) ->
        codes in the index's layout; a single str counts as a list of one.  ValueError naming
        the item for anything else, a hash of the other width included."""
        items = [strings] if isinstance(strings, (str, bytes)) else list(strings)
        if not items:
            return self.zeros(0)
        for i, s in enumerate(items):
            if isinstance(s, bytes):
                s = s.decode("ascii", "replace")
            if not isinstance(s, str):
                raise TypeError(f"hex hash [{i}] must be a str, got {type(s).__name__}")
            digits = len(hexcodes.hex_digits(s))
            if digits != self.hex_digits:
                raise ValueError(f"hex hash [{i}] {s!r} has {digits} characters; {self.name} hashes are "
                                 f"exactly {self.hex_digits} hex digits")
        codes = hexcodes.from_hex(items)
        return codes.reshape(len(items), -1) if self.bits != 64 else codes

    def from_checked_hex(self, strings):
        """from_hex for strings already checked to be exactly hex_digits hex digits (no 0x, no spaces):
        without from_hex's checks, whose fixed cost (~30 us) would dominate a single-hash lookup."""
        raw = bytes.fromhex("".join(strings))
        if self.bits == 64:
            return np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        return np.frombuffer(raw, dtype=np.uint8).reshape(-1, self.bits // 8).copy()

    def to_hex(self, codes):
        """Codes in the index's layout (or one code: an int, a uint8 (32,)) -> a list of hex strings."""
        if self.bits == 64:
            return hexcodes.to_hex(np.atleast_1d(np.asarray(codes, dtype=np.uint64)))
        return hexcodes.to_hex(np.asarray(codes, dtype=np.uint8).reshape(-1, self.bits // 8))

    # ------------------------------------------------------------------ hashing
    def hash(self, image, fast=False, *, with_detail=True, **options):
        """hashing.hash_image(image, this kind, fast, with_detail=with_detail, **options): by
        default (code, score, flattened); options: exif_transpose, max_pixels, and for PDQ
        dihedral (code uint8 (8, 32))."""
        from .hashing import hash_image
        return hash_image(image, self.name, fast, with_detail=with_detail, **options)

    # ------------------------------------------------------------------ gates
    def _bound(self, radius):
        """The popcount margin: the radius in use, but never more than the kind's default. A wider
        search radius must not make ordinary hashes degenerate (at r >= bits / 2 every hash would be)."""
        return self.default_radius if radius is None else min(radius, self.default_radius)

    def popcount(self, codes):
        """Number of one bits of each code (int array (n,))."""
        if self.bits == 64:
            return np.bitwise_count(np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)).astype(np.int64)
        by_code = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, self.bits // 8)
        return np.bitwise_count(by_code).sum(axis=1, dtype=np.int64)

    def degenerate(self, codes, radius=None):
        """bool array (n,): which codes carry no identity when matching at this radius.

        A popcount within min(radius, default radius) of all-zero or all-one, or (64-bit kinds)
        one-dimensional bits.
        """
        r = self._bound(radius)
        ones = self.popcount(codes)
        out = (ones <= r) | (ones >= self.bits - r)
        if self._one_dimensional is not None:
            out |= self._one_dimensional(np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1))
        return out

    def low_quality(self, score, below=None):
        """Whether a score (or an array of them) is under the gate (below, default the kind's
        low_quality_below).  NaN (no score) is not low quality."""
        low = np.asarray(score, dtype=np.float64) < (self.low_quality_below if below is None else below)
        return bool(low) if low.ndim == 0 else low

    def __repr__(self):
        return f"<hash kind {self.name}: {self.bits} bits, radius {self.default_radius}>"


def _imagehash_kind(name, default_radius, one_dimensional):
    return HashKind(name, 64, default_radius, "detail", LOW_DETAIL_THRESHOLD, False, one_dimensional)


# Default radii from the near-duplicate measurements in docs/hashing.md; wHash has no radius that
# keeps unrelated images apart on that corpus, 8 limits its false matches.  PDQ: 31, the threshold
# python-threatexchange and HMA match at.
KINDS = {
    "phash": _imagehash_kind("phash", 8, _phash_one_dimensional),
    "dhash": _imagehash_kind("dhash", 8, _rows_or_columns_equal),
    "ahash": _imagehash_kind("ahash", 5, _rows_or_columns_equal),
    "whash": _imagehash_kind("whash", 8, _rows_or_columns_equal),
    "pdq": HashKind("pdq", 256, 31, "quality", PDQ_LOW_QUALITY, True, dihedral=True),
}


def kind_of(name):
    """The HashKind called name; ValueError listing the kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {name!r}") from None
