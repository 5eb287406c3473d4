"""hashsieve: match images against lists of 64-bit perceptual hashes, exactly and fast."""
from ._core import get_isa, supported_isas
from .hexcodes import from_hex, to_hex
from .index import HashIndex

__all__ = ["HashIndex", "from_hex", "to_hex", "get_isa", "supported_isas"]
__version__ = "0.1.0"
