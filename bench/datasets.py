"""Seeded datasets and query sets for the benchmarks.

Every generator takes a seed and returns the same codes for the same seed
(numpy's PCG64), so a result file names its data by (dataset, n, seed) alone.

    uniform(n, seed)                     -> uint64 (n,)
    skewed(n, seed)                      -> (uint64 (n,), info): 10% one heavy hash,
                                            20% in tight near-duplicate clusters, the rest uniform
    flip_bits(codes, rng, max_flips)     -> codes with 1..max_flips random bits flipped
    make_queries(codes, nq, seed, ...)   -> Queries: alternately a near-duplicate of an
                                            indexed code and a uniform random code
    image_hashes(n, seed)                -> pHashes of synthetic images (tests/imagegen.py)

Ids are always 0..n-1 (the position in `codes`), so the oracle needs no id map.
"""
import os
import sys
from dataclasses import dataclass, field

import numpy as np

HEAVY_HASH = 0                 # blank and solid images hash to 0 (or 0x8000...)
HEAVY_FRACTION = 0.10
CLUSTER_FRACTION = 0.20
CLUSTER_SIZE = 50              # members per near-duplicate cluster
CLUSTER_FLIPS = 3              # members differ from their centre in 1..3 bits


def _u64(rng, n):
    return rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)


def uniform(n, seed=0):
    """n uniform random 64-bit codes."""
    return _u64(np.random.default_rng(seed), int(n))


def flip_bits(codes, rng, max_flips, min_flips=1):
    """Copies of `codes` with min_flips..max_flips distinct random bits flipped each."""
    codes = np.asarray(codes, dtype=np.uint64)
    n = len(codes)
    want = rng.integers(min_flips, max_flips + 1, n)
    mask = np.zeros(n, dtype=np.uint64)
    for j in range(max_flips):
        # Redraw positions that collide with an earlier flip so the count is exact.
        todo = np.flatnonzero(want > j)
        while todo.size:
            bit = np.left_shift(np.uint64(1), rng.integers(0, 64, todo.size).astype(np.uint64))
            fresh = (mask[todo] & bit) == 0
            mask[todo[fresh]] |= bit[fresh]
            todo = todo[~fresh]
    return codes ^ mask


def skewed(n, seed=0, heavy_fraction=HEAVY_FRACTION, cluster_fraction=CLUSTER_FRACTION,
           cluster_size=CLUSTER_SIZE, cluster_flips=CLUSTER_FLIPS):
    """Codes shaped like a real list: one heavy hash, near-duplicate clusters, uniform rest.

    heavy_fraction of the entries are exactly HEAVY_HASH (blank images);
    cluster_fraction are members of clusters of `cluster_size` codes within
    1..cluster_flips bits of a uniform random centre (re-encodes, resizes);
    the rest are uniform. The order is shuffled so ids carry no structure.
    Returns (codes uint64 (n,), info dict).
    """
    rng = np.random.default_rng(seed)
    n = int(n)
    n_heavy = int(round(n * heavy_fraction))
    n_clustered = int(round(n * cluster_fraction))
    n_clusters = max(1, n_clustered // cluster_size)
    centres = _u64(rng, n_clusters)
    members = flip_bits(np.repeat(centres, cluster_size)[:n_clustered], rng, cluster_flips)
    members[::cluster_size] = centres[:len(members[::cluster_size])]   # the original itself
    codes = np.concatenate([np.full(n_heavy, HEAVY_HASH, dtype=np.uint64), members,
                            _u64(rng, n - n_heavy - n_clustered)])
    rng.shuffle(codes)
    info = dict(heavy_hash=HEAVY_HASH, heavy_fraction=heavy_fraction,
                cluster_fraction=cluster_fraction, cluster_size=cluster_size,
                cluster_flips=cluster_flips, n_clusters=n_clusters)
    return codes, info


@dataclass
class Queries:
    """A query set: codes (nq,) uint64 and whether each is a near-duplicate of an indexed code."""
    codes: np.ndarray
    near: np.ndarray              # bool (nq,)
    source: np.ndarray            # int64 (nq,): id it was derived from, -1 for random queries
    info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.codes)

    def head(self, n):
        return Queries(self.codes[:n], self.near[:n], self.source[:n], self.info)


def make_queries(codes, nq, seed=1, near_fraction=0.5, max_flips=4, avoid=None, avoid_radius=16):
    """nq queries: near-duplicates (1..max_flips bits from a random indexed code) and uniform codes.

    Near and random queries alternate (near first), so every prefix of the set
    is half and half and a benchmark that times only the first queries is
    still fair. avoid: a hash (e.g. the heavy one) that no query may come within
    avoid_radius bits of; such candidates are redrawn.
    """
    rng = np.random.default_rng(seed)
    nq = int(nq)
    near = np.zeros(nq, dtype=bool)
    n_near = int(round(nq * near_fraction))
    if near_fraction == 0.5:
        near[0::2] = True
    else:
        near[:n_near] = True
    out = np.empty(nq, dtype=np.uint64)
    source = np.full(nq, -1, dtype=np.int64)
    todo = np.arange(nq)
    while todo.size:
        is_near = near[todo]
        k = int(is_near.sum())
        src = rng.integers(0, len(codes), k)
        out[todo[is_near]] = flip_bits(codes[src], rng, max_flips)
        source[todo[is_near]] = src
        out[todo[~is_near]] = _u64(rng, todo.size - k)
        if avoid is None:
            break
        d = np.bitwise_count(out[todo] ^ np.uint64(avoid))
        todo = todo[d <= avoid_radius]
    info = dict(seed=seed, near_fraction=near_fraction, max_flips=max_flips,
                avoid=None if avoid is None else int(avoid), avoid_radius=avoid_radius)
    return Queries(out, near, source, info)


def image_hashes(n, seed=0, size=(96, 72)):
    """pHashes (uint64 (n,)) of n synthetic images: scenes and their near-duplicate variants.

    About 3 ms per image, so meant for tens of thousands of codes, not millions:
    it shows the distance structure of real hashes (clusters of variants, a
    skewed bit distribution), not scale.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests"))
    import imagegen
    from hashsieve.hashing import hash_image

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        name = imagegen.SCENES[int(rng.integers(len(imagegen.SCENES)))]
        img = imagegen.scene(name, size[0], size[1], seed=int(rng.integers(2**31)))
        out.append(hash_image(img))
        for v in imagegen.variants(img).values():
            if len(out) < n:
                out.append(hash_image(v))
    return np.array(out[:n], dtype=np.uint64)


DATASETS = ("uniform", "skewed")


def load(name, n, seed=0):
    """(codes, info) of a named dataset; queries are made with make_queries_for()."""
    if name == "uniform":
        return uniform(n, seed), {}
    if name == "skewed":
        return skewed(n, seed)
    if name == "images":
        return image_hashes(n, seed), {}
    raise ValueError(f"unknown dataset {name!r}; one of {DATASETS + ('images',)}")


def make_queries_for(name, codes, info, nq, seed=1):
    """The benchmark query set of a dataset: for skewed data, queries away from the heavy hash.

    The heavy hash costs only the queries that land near it; the issue's skew
    target is about the others, so they are what the skewed set measures.
    """
    if name == "skewed":
        # Near-duplicates of heavy entries would land on the heavy hash; redraw them.
        return make_queries(codes, nq, seed, avoid=info["heavy_hash"], avoid_radius=16)
    return make_queries(codes, nq, seed)
