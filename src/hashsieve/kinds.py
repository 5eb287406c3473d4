"""Hash kinds: what each perceptual hash is, and when one carries no identity.

One object per kind, so the layers ask it instead of branching on names: its
width, its default match radius and its gate.  The gate (``degenerate``) comes
from the measurements of ``bench/bench_gate.py`` (docs/cli.md, "Degenerate
hashes"): a hash whose bits are one-dimensional (an image that varies along one
axis only: stripes, flags, gradients) or that lies within the radius of
``0000000000000000`` / ``ffffffffffffffff`` (solid, blank and alpha-only images)
matches unrelated images of the same sort, so by default it makes no
perceptual match on either side.
"""
import numpy as np

__all__ = ["HashKind", "KINDS", "kind_of"]

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
    """A 64-bit perceptual hash kind as imagehash computes it (hash_size 8)."""

    bits = 64

    def __init__(self, name, default_radius, one_dimensional):
        self.name, self.default_radius, self._one_dimensional = name, default_radius, one_dimensional

    def _bound(self, radius):
        """The popcount margin: the radius in use, but never more than the kind's default. A wider
        search radius must not make ordinary hashes degenerate (at r >= 32 every hash would be)."""
        return self.default_radius if radius is None else min(radius, self.default_radius)

    def degenerate(self, codes, radius=None):
        """bool array (n,): which uint64 codes carry no identity when matching at this radius.

        One-dimensional bits, or a popcount within min(radius, default radius) of all-zero or all-one.
        """
        codes = np.ascontiguousarray(codes, dtype=np.uint64).reshape(-1)
        r = self._bound(radius)
        ones = np.bitwise_count(codes)
        return self._one_dimensional(codes) | (ones <= r) | (ones >= self.bits - r)

    def __repr__(self):
        return f"<hash kind {self.name}: {self.bits} bits, radius {self.default_radius}>"


# Default radii from the near-duplicate measurements in docs/hashing.md; wHash has no radius that
# keeps unrelated images apart on that corpus, 8 limits its false matches.
KINDS = {
    "phash": HashKind("phash", 8, _phash_one_dimensional),
    "dhash": HashKind("dhash", 8, _rows_or_columns_equal),
    "ahash": HashKind("ahash", 5, _rows_or_columns_equal),
    "whash": HashKind("whash", 8, _rows_or_columns_equal),
}


def kind_of(name):
    """The HashKind called name; ValueError listing the kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {name!r}") from None
