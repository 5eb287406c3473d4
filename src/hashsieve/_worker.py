"""Imported once by the forkserver that the worker processes of hash_images and
scan fork from (hashing._mp_context): what is done here is done once, not again
in every worker of every pool."""
import multiprocessing.spawn

from PIL import Image

from . import hashing, scan  # noqa: F401  (the workers run their functions)

# The common image plugins, as Image.open's first step would (~15 ms a process).
# Not Image.init(): importing every plugin costs ~40 ms more, serially, before
# the first worker starts, which a one-shot `hashsieve scan` never earns back.
Image.preinit()
# The resize pass order of the installed Pillow (~10 ms).
hashing._lanczos_order()

# Our workers run hashsieve's functions on paths, bytes and images: they need nothing of the
# caller's __main__, so they do not import it again.  Importing it would run the top level of a
# script without an `if __name__ == "__main__":` guard (which starts hashing again, in every
# worker) and a heavy script's imports once per worker.  Other processes started from this
# server (a caller's own, under other names) are prepared as usual.
_prepare = multiprocessing.spawn.prepare


def _prepare_worker(data):
    if data.get("name") == hashing.WORKER_NAME:
        data = {k: v for k, v in data.items() if k not in ("init_main_from_path", "init_main_from_name")}
    _prepare(data)


multiprocessing.spawn.prepare = _prepare_worker
