"""Brute-force NumPy oracles for exact Hamming search, and skewed test data."""
import numpy as np


def distances(queries, codes):
    """Hamming distances (nq, n), one query row at a time (memory: n per row). Codes and queries are
    uint64 (n,) hashes, or uint8 (n, 32) 256-bit codes: np.bitwise_count over their four 8-byte words, summed."""
    if np.asarray(codes).dtype == np.uint8:
        # the same popcount over the 32 bytes, 8 bytes at a time
        codes = np.ascontiguousarray(codes).view("<u8")
        for q in np.ascontiguousarray(queries, np.uint8).reshape(-1, 32).view("<u8"):
            yield np.bitwise_count(codes ^ q).sum(axis=1, dtype=np.int64)
        return
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
    """(codes uint64 (or uint8 (n, 32) for a 256-bit index), ids int64) of every live entry of an index,
    decoded from its snapshot's segment arrays with NumPy (not with the index's own code), for the
    oracles above."""
    wide = index.bits == 256
    codes = [np.empty((0, 32), np.uint8) if wide else np.empty(0, np.uint64)]
    ids = [np.empty(0, np.int64)]
    for seg in index.snapshot().segments:
        seg_codes = np.repeat(np.asarray(seg.codes), np.diff(np.asarray(seg.group_start, np.int64)), axis=0)
        if wide:
            seg_codes = seg_codes.view(np.uint8)
        seg_ids = np.asarray(seg.ids)
        if seg.dead is not None:
            live = np.unpackbits(np.asarray(seg.dead), count=len(seg_ids), bitorder="little") == 0
            seg_codes, seg_ids = seg_codes[live], seg_ids[live]
        codes.append(seg_codes)
        ids.append(seg_ids)
    return np.concatenate(codes), np.concatenate(ids)


# ---------------------------------------------------------------- 256-bit codes: uint8 (n, 32)
def flip_bits256(rng, codes, low, high):
    """Each 256-bit code with a random number of distinct bits in [low, high] flipped."""
    out = np.array(codes, dtype=np.uint8).reshape(-1, 32)
    bits = np.unpackbits(out, axis=1)
    for row in bits:
        row[rng.choice(256, rng.integers(low, high + 1), replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def uniform256(rng, n):
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def skewed256(rng, n):
    """10% of the entries one code, clusters of near-duplicates 4-20 bits from their centre, exact
    duplicates, all-zero and all-one codes, and uniform codes for the rest."""
    parts = [np.repeat(uniform256(rng, 1), n // 10, axis=0),
             np.zeros((n // 50, 32), np.uint8), np.full((n // 50, 32), 255, np.uint8)]
    centres = uniform256(rng, max(n // 100, 1))
    parts.append(flip_bits256(rng, centres[rng.integers(0, len(centres), n // 4)], 4, 20))
    uniform = uniform256(rng, n - sum(len(p) for p in parts) - n // 10)
    parts += [uniform, uniform[rng.integers(0, len(uniform), n // 10)]]
    codes = np.concatenate(parts)
    return codes[rng.permutation(len(codes))]


def correlated256(rng, n):
    """Bits not independent, as in real PDQ lists: bit j is set with probability p_j in [0.2, 0.8],
    and each bit copies its neighbour's value half of the time."""
    p = rng.uniform(0.2, 0.8, 256)
    bits = rng.random((n, 256)) < p
    copy = rng.random((n, 256)) < 0.5
    for j in range(1, 256):
        bits[:, j] = np.where(copy[:, j], bits[:, j - 1], bits[:, j])
    return np.packbits(bits, axis=1)


def queries256(rng, codes, n):
    """Half near-duplicates of indexed codes (8-24 bits flipped), half random, plus all-zero and all-one."""
    near = flip_bits256(rng, codes[rng.integers(0, len(codes), n // 2)], 8, 24)
    return np.concatenate([near, uniform256(rng, n - n // 2), np.zeros((1, 32), np.uint8),
                           np.full((1, 32), 255, np.uint8)])
