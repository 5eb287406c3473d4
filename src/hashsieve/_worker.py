"""Imported once by the forkserver that the worker processes of hash_images and
scan fork from (hashing._mp_context): what is done here is done once, not again
in every worker of every pool."""
from PIL import Image

from . import hashing, scan  # noqa: F401  (the workers run their functions)

# The common image plugins, as Image.open's first step would (~15 ms a process).
# Not Image.init(): importing every plugin costs ~40 ms more, serially, before
# the first worker starts, which a one-shot `hashsieve scan` never earns back.
Image.preinit()
# The resize pass order of the installed Pillow (~10 ms).
hashing._lanczos_order()
