"""Imported once by the forkserver that hashing and scanning workers fork from
(hashing._mp_context, scan._mp_context): what is done here is done once, not
again in every worker of every pool."""
from PIL import Image

from . import hashing, scan  # noqa: F401  (the workers run their functions)

# Every Pillow plugin (~40 ms per process), the five common ones first as
# Image.open's own preinit() registers them, so formats are tried in the same order.
Image.preinit()
Image.init()
# The resize pass order of the installed Pillow (~10 ms).
hashing._lanczos_order()
