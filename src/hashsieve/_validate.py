"""Input checks at the Python edge: one helper per kind of input.

Each refuses ambiguous conversions (signed or float arrays for hashes) with a
message naming the argument, what was expected, what came and the fix.
"""
import numbers
import os

import numpy as np

MAX_DISTANCE = 64
# Code widths an index holds: 64-bit codes are uint64 (n,), 256-bit ones uint8 (n, 32) (FAISS's binary layout).
CODE_BITS = (64, 256)
# Largest id: add(ids=None) numbers on from the largest id + 1, which must still be an int64.
MAX_ID = 2**63 - 2
# Largest k of search(): the results take 12 bytes per query and k, allocated before searching.
MAX_K = 10_000


_PLAIN_INTS = (int, np.uint64, np.int64)


def _is_int(x):
    if type(x) in _PLAIN_INTS:   # the common case, without the slower ABC check
        return True
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def code_bits_value(value, name="bits"):
    if type(value) is not int or value not in CODE_BITS:
        raise ValueError(f"{name} must be 64 (uint64 hashes) or 256 (uint8 (n, 32) codes, e.g. PDQ), got {value!r}")
    return value


def wide_hashes_array(value, bits, name="hashes"):
    """uint64 (n, bits // 64), C-contiguous, from uint8 codes (n, bits // 8) or one code (bits // 8,):
    each row's bytes read as little-endian 64-bit words (a view when the input is contiguous)."""
    nbytes = bits // 8
    example = f"hashsieve.from_hex() of {bits // 4}-digit hex strings"
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a uint8 array of shape (n, {nbytes}) ({bits}-bit codes), got "
                        f"{type(value).__name__}; parse hex with {example}")
    if value.dtype != np.uint8:
        hint = (" (64-bit hashes: this index holds 256-bit codes; use HashIndex() for 64-bit ones)"
                if value.dtype == np.uint64 else "")
        raise TypeError(f"{name} must be a uint8 array of shape (n, {nbytes}) ({bits}-bit codes), got dtype "
                        f"{value.dtype}{hint}; parse hex with {example}")
    if value.ndim == 1 and value.shape[0] == nbytes:
        value = value[None, :]
    if value.ndim != 2 or value.shape[1] != nbytes:
        raise ValueError(f"{name} must have shape (n, {nbytes}) or ({nbytes},): {bits}-bit codes are {nbytes} bytes "
                         f"each, got shape {value.shape}")
    value = np.ascontiguousarray(value)
    if value.ctypes.data % 8:          # the native core reads whole 64-bit words
        value = value.copy()
    return value.view("<u8")


def hashes_array(value, name="hashes", bits=64):
    """A C-contiguous uint64 array of shape (n,) from an array, a sequence of ints or one int;
    bits=256: uint64 (n, 4) from uint8 codes (n, 32) (see wide_hashes_array)."""
    if bits != 64:
        return wide_hashes_array(value, bits, name)
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint64:
            if value.dtype == np.uint8 and value.ndim in (1, 2) and value.shape[-1] == 32:
                raise TypeError(f"{name} are 256-bit codes (uint8 (n, 32)) but this index holds 64-bit hashes; "
                                "use HashIndex(bits=256) for them")
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


def radius_value(value, name="radius", bits=MAX_DISTANCE):
    """An int from 0 to bits (the code width) inclusive."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int from 0 to {bits}, got {type(value).__name__}")
    if not 0 <= value <= bits:
        raise ValueError(f"{name} must be from 0 to {bits} bits (inclusive) for {bits}-bit codes, got {value}")
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
