"""Input checks at the Python edge: one helper per kind of input.

Each refuses ambiguous conversions (signed or float arrays for hashes) with a
message naming the argument, what was expected, what came and the fix.
"""
import numbers
import os

import numpy as np

MAX_DISTANCE = 64
# Largest id: add(ids=None) numbers on from the largest id + 1, which must still be an int64.
MAX_ID = 2**63 - 2
# Largest k of search(): the results take 12 bytes per query and k, allocated before searching.
MAX_K = 10_000


_PLAIN_INTS = (int, np.uint64, np.int64)


def _is_int(x):
    if type(x) in _PLAIN_INTS:   # the common case, without the slower ABC check
        return True
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def hashes_array(value, name="hashes"):
    """A C-contiguous uint64 array of shape (n,) from an array, a sequence of ints or one int."""
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint64:
            raise TypeError(
                f"{name} must be a uint64 array, got dtype {value.dtype}; hashes are unsigned 64-bit "
                f"codes: convert explicitly, e.g. {name}.astype(np.uint64) after checking the values, "
                "or parse hex strings with hashsieve.from_hex()")
        if value.ndim != 1:
            raise ValueError(f"{name} must have shape (n,), got shape {value.shape}; use {name}.ravel()")
        return np.ascontiguousarray(value)
    if _is_int(value):
        if not 0 <= value < 2**64:
            raise ValueError(f"{name} = {value!r} is not a 64-bit unsigned integer (0 .. 2**64-1)")
        return np.array([value], dtype=np.uint64)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be integers, got a string; parse hex with hashsieve.from_hex({name})")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a uint64 array or a sequence of ints, got {type(value).__name__}") from None
    for i, x in enumerate(items):
        if not _is_int(x) or not 0 <= int(x) < 2**64:
            raise ValueError(f"{name}[{i}] = {x!r} is not a 64-bit unsigned integer (0 .. 2**64-1)")
    return np.array([int(x) for x in items], dtype=np.uint64)


def ids_array(value, n, name="ids"):
    """A C-contiguous int64 array of shape (n,) of ids from 0 to MAX_ID."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or not np.can_cast(value.dtype, np.int64, "safe"):
            raise TypeError(f"{name} must be an int64 array, got dtype {value.dtype}; "
                            f"convert with {name}.astype(np.int64) after checking the values")
        arr = np.ascontiguousarray(value, dtype=np.int64)
    else:
        items = [value] if _is_int(value) else list(value)
        for i, x in enumerate(items):
            if not _is_int(x) or not -2**63 <= int(x) < 2**63:
                raise TypeError(f"{name}[{i}] = {x!r} is not a 64-bit integer id")
        arr = np.array([int(x) for x in items], dtype=np.int64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the hashes, got shape {arr.shape}")
    if n and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks 'no result'), got {arr.min()}")
    if n and arr.max() > MAX_ID:
        raise ValueError(f"{name} must be at most 2**63-2 = {MAX_ID} (new ids are numbered from the largest "
                         f"id + 1, which must fit in int64), got {arr.max()}")
    return arr


def radius_value(value, name="radius"):
    if not _is_int(value):
        raise TypeError(f"{name} must be an int from 0 to {MAX_DISTANCE}, got {type(value).__name__}")
    if not 0 <= value <= MAX_DISTANCE:
        raise ValueError(f"{name} must be from 0 to {MAX_DISTANCE} bits (inclusive), got {value}")
    return int(value)


def k_value(value, name="k"):
    if not _is_int(value):
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if value > MAX_K:
        raise ValueError(f"{name} must be at most {MAX_K}, got {value}: search() allocates k results per query; "
                         "for every entry within a distance use range_search()")
    return int(value)


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


_CORES = available_cores()   # read once: a syscall per query would show in latency
# Each call starts up to this many OS threads; more than the cores only adds overhead.
MAX_THREADS = max(256, _CORES)


def threads_value(value, name="threads"):
    """An int from 1 to MAX_THREADS; None means every core this process may use."""
    if value is None:
        return _CORES
    if type(value) is int and 1 <= value <= MAX_THREADS:
        return value
    if not _is_int(value) or not 1 <= value <= MAX_THREADS:
        raise ValueError(f"{name} must be an int from 1 to {MAX_THREADS}, or None (all {_CORES} cores), "
                         f"got {value!r}")
    return int(value)
