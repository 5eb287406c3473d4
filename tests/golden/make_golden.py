"""Writes the golden index files of the current format version, with their expected answers.

Run once per format version and commit the output; never regenerate old versions' files,
the tests check that they still load:  .venv/bin/python tests/golden/make_golden.py [NAME ...]
(names: tiny, tables, update, wide256 up to version 2; parts, parts_update from version 3; default
all). A file added to a version later is written alone by naming it, leaving the version's earlier
files as they were (v2_wide256 came so). From version 2 on, vN_update.hsi is an incremental save:
it needs its base file vN_update.hsi.base-XXXXXXXX beside it (commit both). From version 3 on a
file of one index is still written as version 2, so version 3's golden files are files of parts
(save_parts): vN_parts.hsi, and vN_parts_update.hsi, an incremental save of parts.
"""
import json
import sys
from pathlib import Path

import numpy as np

import hashsieve as hs
from hashsieve import storage

HERE = Path(__file__).resolve().parent
CREATED = 1717750000.0          # fixed, so the files are reproducible


def tiny():
    """Scan-only segments: a main with tombstones and a delta, duplicate codes, edge values."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**64, 200, dtype=np.uint64)
    codes[:4] = (0, 2**64 - 1, 0, 0x8000000000000001)
    codes[10:20] = codes[20:30]
    index = hs.HashIndex()
    index.add(codes, ids=np.arange(200) * 2 + 1)
    index.add(rng.integers(0, 2**64, 20, dtype=np.uint64))
    index.remove([1, 3, 41, 401, 402])
    return index, {"sources": ["golden-tiny.csv"], "purpose": f"format v{storage.FORMAT_VERSION} golden file"}


def tables():
    """The smallest segment the builder gives MIH tables (4096 distinct codes), plus a delta."""
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 2**64, 4200, dtype=np.uint64)
    codes[4096:] = codes[:104]
    index = hs.HashIndex()
    index.add(codes)
    index.add(rng.integers(0, 2**64, 30, dtype=np.uint64))
    index.remove(np.arange(0, 4200, 50))
    assert index.snapshot().segments[0].bits, "expected a segment with tables"
    return index, {"sources": ["golden-tables-a.csv", "golden-tables-b.csv"]}


def save(index, path, metadata):
    """save_parts for a dict of parts, save_index for one index, at the fixed creation time."""
    (storage.save_parts if isinstance(index, dict) else storage.save_index)(index, path, metadata=metadata,
                                                                            created=CREATED)


def saved_day0(index, path):
    """Day 0 of an incremental save: written to path (base files of earlier runs dropped) and loaded back."""
    for old in HERE.glob(path.name + ".base-*"):
        old.unlink()
    save(index, path, {"day": 0})
    return storage.load_parts(path, mmap=False) if isinstance(index, dict) else hs.HashIndex.load(path, mmap=False)


def update():
    """Format 2: an incremental save (a daily update) referencing its full predecessor as base file."""
    index = saved_day0(tables()[0], HERE / f"v{storage.FORMAT_VERSION}_update.hsi")
    index.remove(np.arange(1, 4200, 97))
    index.add(np.random.default_rng(4).integers(0, 2**64, 25, dtype=np.uint64), ids=np.arange(10**6, 10**6 + 25))
    return index, {"day": 1}


def wide256():
    """256-bit codes: a main segment with duplicates, all-zero and all-one codes and tombstones, and a delta."""
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    codes[0], codes[1] = 0, 255
    codes[10:20] = codes[20:30]
    index = hs.HashIndex(bits=256)
    index.add(codes, ids=np.arange(300) * 3 + 2)
    index.add(rng.integers(0, 256, (20, 32), dtype=np.uint8))
    index.remove([2, 5, 47, 900, 901])
    return index, {"sources": ["golden-pdq.csv"]}


def parts():
    """Version 3: a 64-bit part with MIH tables and a delta, and a 256-bit part (as pHash + PDQ lists give)."""
    return {"phash": tables()[0], "pdq": wide256()[0]}, {"sources": ["golden-mixed.csv"]}


def parts_update():
    """Version 3: an incremental save of parts; the base is the saved predecessor, the changes are in both parts."""
    indexes = saved_day0(parts()[0], HERE / f"v{storage.FORMAT_VERSION}_parts_update.hsi")
    indexes["phash"].remove(np.arange(1, 4200, 97))
    indexes["pdq"].remove([8, 11])
    indexes["pdq"].add(np.random.default_rng(6).integers(0, 256, (5, 32), dtype=np.uint8), ids=np.arange(2000, 2005))
    return indexes, {"day": 1}


def answers(index, rng):
    """The queries (hex) of a golden file's index and its expected range and k-nearest answers."""
    queries, query_hex = queries_of(index, rng)
    radii = (0, 4, 10, 16) if index.bits == 64 else (0, 1, 100, 256)
    return {"queries": query_hex,
            "range": {str(r): [a.tolist() for a in index.range_search(queries, r)] for r in radii},
            "k": 6,
            "knn": [a.tolist() for a in index.search(queries, 6)]}


def queries_of(index, rng):
    """12 queries: stored codes with one bit flipped, the first two all-zero and all-one."""
    stored = np.concatenate([np.asarray(seg.codes) for seg in index.snapshot().segments])
    picked = stored[rng.integers(0, len(stored), 12)]
    if index.bits == 64:
        queries = picked ^ (np.uint64(1) << rng.integers(0, 64, 12).astype(np.uint64))
        queries[:2] = (0, 2**64 - 1)
        return queries, [f"{int(x):016x}" for x in queries]
    queries = np.ascontiguousarray(picked).view(np.uint8).copy()
    queries[np.arange(12), rng.integers(0, 32, 12)] ^= np.uint8(1) << rng.integers(0, 8, 12).astype(np.uint8)
    queries[0], queries[1] = 0, 255
    return queries, hs.to_hex(queries)


def main(names):
    version = storage.FORMAT_VERSION
    makers = [("tiny", tiny), ("tables", tables)] + ([("update", update), ("wide256", wide256)] if version == 2 else [])
    makers += [("parts", parts), ("parts_update", parts_update)] if version >= 3 else []
    for name, make in makers:
        if names and name not in names:
            continue
        index, meta = make()
        path = HERE / f"v{version}_{name}.hsi"
        save(index, path, meta)
        info = storage.read_metadata(path)
        assert (info["base"] is not None) == name.endswith("update"), name
        expected = {"header": {k: info[k] for k in ("format_version", "code_bits", "count", "entries", "next_id",
                                                    "created", "metadata", "base")}}
        if isinstance(index, dict):
            expected["parts"] = {part: answers(ix, np.random.default_rng(3)) for part, ix in index.items()}
        else:
            expected.update(answers(index, np.random.default_rng(3)))
        path.with_suffix(".json").write_text(json.dumps(expected) + "\n")
        print(path.name, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
