"""hashsieve: match images against lists of perceptual hashes (64-bit and PDQ), exactly and fast.

    index = hashsieve.HashIndex()           exact Hamming index (hashsieve.index)
    hashsieve.hash_image(path, "phash")     imagehash-compatible hashes (hashsieve.hashing)
    hashsieve.hash_image(path, "pdq")       PDQ as python-threatexchange computes it, uint8 (32,)
    hashsieve.kind_of("pdq")                what a kind is: bits, hex, radius, hasher, gates (hashsieve.kinds)
    index.save(path) / HashIndex.load(path) durable memory-mapped files (hashsieve.storage)
    hashsieve.open_lists(path).match(h)     an index built from hash lists, matches with provenance (hashsieve.lists)
    hashsieve.pdq_hash(rgb)                 Meta's 256-bit PDQ, bit-identical to pdqhash (hashsieve.pdq)
"""
from ._core import get_isa, supported_isas
from .hashing import (HASH_KINDS, HashResults, ImageHashError, hash_image, hash_images, image_detail,
                      iter_hash_images)
from .hexcodes import from_hex, to_hex
from .index import HashIndex
from .kinds import KINDS, HashKind, kind_of
from .lists import IndexOpenError, ListIndex, open_lists
from .pdq import pdq_from_image, pdq_hash
from .storage import IndexFormatError, IndexHandle, read_metadata

__all__ = [
    "HashIndex", "from_hex", "to_hex", "get_isa", "supported_isas",
    "HASH_KINDS", "HashResults", "ImageHashError", "hash_image", "hash_images", "image_detail",
    "iter_hash_images", "KINDS", "HashKind", "kind_of",
    "IndexFormatError", "IndexHandle", "read_metadata",
    "IndexOpenError", "ListIndex", "open_lists",
    "pdq_hash", "pdq_from_image",
]
__version__ = "0.1.0"
