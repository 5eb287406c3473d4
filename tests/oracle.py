"""Brute-force NumPy oracles for exact Hamming search, and skewed test data."""
import numpy as np


def distances(queries, codes):
    """Hamming distances (nq, n), one query row at a time (memory: n per row)."""
    codes = np.asarray(codes, np.uint64)
    for q in np.asarray(queries, np.uint64):
        yield np.bitwise_count(codes ^ q)


def range_oracle(codes, ids, queries, radius):
    """(lims, distances, ids) with results sorted by (distance, id), inclusive radius."""
    lims, out_d, out_i = [0], [], []
    for row in distances(queries, codes):
        hit = np.flatnonzero(row <= radius)
        order = np.lexsort((ids[hit], row[hit]))
        out_d.append(row[hit][order])
        out_i.append(ids[hit][order])
        lims.append(lims[-1] + len(hit))
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return np.array(lims, np.int64), cat(out_d, np.int32), cat(out_i, np.int64)


def knn_oracle(codes, ids, queries, k):
    out_d = np.full((len(queries), k), -1, np.int32)
    out_i = np.full((len(queries), k), -1, np.int64)
    for qi, row in enumerate(distances(queries, codes)):
        # only entries within the k-th smallest distance can be among the k nearest
        near = np.flatnonzero(row <= np.partition(row, k - 1)[k - 1]) if len(row) > k else np.arange(len(row))
        order = near[np.lexsort((ids[near], row[near]))][:k]
        out_d[qi, :len(order)] = row[order]
        out_i[qi, :len(order)] = ids[order]
    return out_d, out_i


def flip_bits(rng, codes, nbits):
    """Each code with `nbits` distinct random bits flipped."""
    out = np.array(codes, dtype=np.uint64)
    for i in range(len(out)):
        for b in rng.choice(64, nbits, replace=False):
            out[i] ^= np.uint64(1) << np.uint64(b)
    return out


def skewed_codes(rng, n):
    """Codes like real collections: a blank-image hash shared by many entries,
    exact duplicates, tight near-duplicate clusters, and the extreme values."""
    uniform = rng.integers(0, 2**64, n // 2, dtype=np.uint64, endpoint=False)
    blank = np.zeros(n // 10, dtype=np.uint64)
    full = np.full(n // 50, 2**64 - 1, dtype=np.uint64)
    dups = rng.choice(uniform, n // 10)
    centers = rng.integers(0, 2**64, max(n // 200, 1), dtype=np.uint64)
    members = rng.choice(centers, n - len(uniform) - len(blank) - len(full) - len(dups))
    clusters = members.copy()
    for i in range(len(clusters)):   # 0..3 bits away from their center
        for b in rng.choice(64, rng.integers(0, 4), replace=False):
            clusters[i] ^= np.uint64(1) << np.uint64(b)
    codes = np.concatenate([uniform, blank, full, dups, clusters])
    return codes[rng.permutation(len(codes))]


def queries_for(rng, codes, n):
    """Half near-duplicates of indexed codes (0..6 bits flipped), half random, plus edge values."""
    near = rng.choice(codes, n // 2)
    for i in range(len(near)):
        for b in rng.choice(64, rng.integers(0, 7), replace=False):
            near[i] ^= np.uint64(1) << np.uint64(b)
    rand = rng.integers(0, 2**64, n - n // 2, dtype=np.uint64, endpoint=False)
    return np.concatenate([near, rand, np.array([0, 2**64 - 1], dtype=np.uint64)])


def index_content(index):
    """(codes uint64, ids int64) of every live entry of an index, decoded from its snapshot's segment
    arrays with NumPy (not with the index's own code), for the oracles above."""
    codes, ids = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
    for seg in index.snapshot().segments:
        seg_codes = np.repeat(np.asarray(seg.codes), np.diff(np.asarray(seg.group_start, np.int64)))
        seg_ids = np.asarray(seg.ids)
        if seg.dead is not None:
            live = np.unpackbits(np.asarray(seg.dead), count=len(seg_ids), bitorder="little") == 0
            seg_codes, seg_ids = seg_codes[live], seg_ids[live]
        codes.append(seg_codes)
        ids.append(seg_ids)
    return np.concatenate(codes), np.concatenate(ids)
