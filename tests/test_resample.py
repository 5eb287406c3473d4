"""hashsieve._resample: Pillow's LANCZOS resize of mode "L" images, byte for byte.

The oracle is the installed Pillow's Image.resize(size, LANCZOS); every kernel
this CPU can run is checked (the generic C one always)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from hashsieve import hashing

_resample = pytest.importorskip("hashsieve._resample")

LANCZOS = Image.Resampling.LANCZOS
ISAS = _resample.supported_isas()
ORDER = hashing._probe_order()


def test_probe_finds_the_installed_pillows_pass_order():
    # None would mean hashing silently falls back to Pillow for every resize.
    assert ORDER in _resample.PASS_ORDERS
    assert "generic" in ISAS


def pillow(a, size):
    return np.asarray(Image.fromarray(a, "L").resize(size, LANCZOS))


def check(a, size, isas=ISAS):
    ref = pillow(a, size)
    for isa in isas:
        got = _resample.lanczos_l(a, size[0], size[1], order=ORDER, isa=isa)
        assert got.dtype == np.uint8 and got.shape == ref.shape
        if not np.array_equal(got, ref):
            bad = np.argwhere(got != ref)
            raise AssertionError(f"{isa}: {a.shape[1]}x{a.shape[0]} -> {size[0]}x{size[1]}: "
                                 f"{len(bad)} bytes differ, first at {tuple(bad[0])}: "
                                 f"{got[tuple(bad[0])]} != {ref[tuple(bad[0])]}")


def pattern(kind, w, h, rng):
    y, x = np.mgrid[0:h, 0:w]
    if kind == "noise":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == "gradient":
        return ((x * 255 // max(w - 1, 1) + y * 97 // max(h - 1, 1)) % 256).astype(np.uint8)
    if kind == "flat":
        return np.full((h, w), rng.integers(0, 256), dtype=np.uint8)
    if kind == "checker":           # +-255 steps: the largest overshoot, clipped both ways
        return (((x // 1 + y // 1) % 2) * 255).astype(np.uint8)
    if kind == "blocks":
        return (((x // 7 + y // 5) % 2) * 255).astype(np.uint8)
    if kind == "extremes":
        return rng.choice(np.array([0, 255], dtype=np.uint8), (h, w))
    raise ValueError(kind)


KINDS = ("noise", "gradient", "flat", "checker", "blocks", "extremes")
OUT_SIZES = ((8, 8), (9, 8), (32, 32), (64, 64), (256, 256))


@pytest.mark.parametrize("w,h", [(1, 1), (1, 7), (7, 1), (2, 3), (5, 3), (8, 8), (9, 8), (15, 17),
                                 (31, 33), (33, 31), (64, 64), (100, 37), (37, 100), (255, 256),
                                 (300, 300), (400, 240), (240, 400), (641, 479)])
def test_matches_pillow_small_and_medium(w, h, rng):
    for kind in KINDS:
        a = pattern(kind, w, h, rng)
        for size in OUT_SIZES + ((w, h), (w, max(1, h // 3)), (max(1, w // 3), h), (w + 3, h), (w, h + 5)):
            check(a, size)


def test_upscaling():
    rng = np.random.default_rng(1)
    check(np.array([[77]], dtype=np.uint8), (8, 8))       # whash of a 1x1 image
    check(np.array([[0]], dtype=np.uint8), (8, 8))
    check(np.array([[255]], dtype=np.uint8), (64, 64))
    check(rng.integers(0, 256, (3, 5), dtype=np.uint8), (32, 32))
    check(rng.integers(0, 256, (1, 1), dtype=np.uint8), (1, 1))
    check(rng.integers(0, 256, (2, 2), dtype=np.uint8), (300, 7))
    check(rng.integers(0, 256, (20, 6), dtype=np.uint8), (9, 8))   # up in x, down in y


@pytest.mark.parametrize("w,h", [(2500, 1), (1, 2500), (2048, 1536), (1536, 2048), (2500, 1900), (1777, 333)])
def test_matches_pillow_large(w, h, rng):
    for kind in ("noise", "blocks"):
        a = pattern(kind, w, h, rng)
        for size in ((8, 8), (9, 8), (32, 32), (1024, 1024)):
            check(a, size)
    check(pattern("noise", w, h, rng), (w, h))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 320), st.integers(1, 320),
       st.sampled_from(KINDS), st.integers(0, 2**32 - 1))
def test_matches_pillow_random_sizes(w, h, ow, oh, kind, seed):
    check(pattern(kind, w, h, np.random.default_rng(seed)), (ow, oh))


def test_pass_order_matters_and_is_followed(rng):
    # Shrinking the height by more than twice the width's shrink: Pillow 13 runs
    # the vertical pass first.  The two orders round differently.
    a = rng.integers(0, 256, (16, 7), dtype=np.uint8)
    ours = {o: _resample.lanczos_l(a, 8, 8, order=o) for o in _resample.PASS_ORDERS}
    assert not np.array_equal(ours["horizontal"], ours["pillow13"])
    assert np.array_equal(ours[ORDER], pillow(a, (8, 8)))
    # Around the rule's edge: height shrink == twice the width shrink, and one more.
    for w, h, ow, oh in ((20, 30, 15, 20), (20, 31, 15, 20), (40, 40, 30, 20), (40, 41, 30, 20),
                         (30, 50, 40, 20), (33, 20, 30, 14), (33, 20, 30, 13)):
        for seed in range(3):
            check(np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8), (ow, oh))


def test_strided_rows_and_readonly_input(rng):
    big = rng.integers(0, 256, (120, 150), dtype=np.uint8)
    view = big[10:110, 20:97]               # rows 150 bytes apart
    ref = pillow(np.ascontiguousarray(view), (32, 32))
    for isa in ISAS:
        assert np.array_equal(_resample.lanczos_l(view, 32, 32, order=ORDER, isa=isa), ref)
    ro = np.ascontiguousarray(view)
    ro.flags.writeable = False
    assert np.array_equal(_resample.lanczos_l(ro, 32, 32, order=ORDER), ref)


def test_image_entry_point_with_and_without_the_zero_copy_export(rng):
    a = rng.integers(0, 256, (200, 300), dtype=np.uint8)
    im = Image.fromarray(a, "L")
    ref = np.asarray(im.resize((32, 32), LANCZOS))
    assert np.array_equal(_resample.lanczos_image(im, 32, 32, order=ORDER), ref)
    # Pixels spread over several memory blocks: no Arrow export, copied instead.
    old = Image.core.get_block_size()
    Image.core.set_block_size(4096)
    try:
        split = Image.fromarray(a, "L")
        assert np.array_equal(_resample.lanczos_image(split, 32, 32, order=ORDER), ref)
    finally:
        Image.core.set_block_size(old)
    with pytest.raises(ValueError):
        _resample.lanczos_image(im.convert("RGB"), 32, 32)


def test_coefficient_cache_eviction_keeps_results_exact(rng, monkeypatch):
    monkeypatch.setattr(_resample, "CACHE_BYTES", 20_000)
    _resample.clear_cache()
    try:
        for w in range(150, 400, 37):
            a = rng.integers(0, 256, (w // 2 + 1, w), dtype=np.uint8)
            check(a, (32, 32))
            check(a, (32, 32))          # now from the cache (or re-made after eviction)
    finally:
        _resample.clear_cache()


def test_bad_arguments():
    a = np.zeros((4, 4), dtype=np.uint8)
    for w, h in ((0, 4), (4, 0), (-1, 3)):
        with pytest.raises(ValueError):
            _resample.lanczos_l(a, w, h)
    with pytest.raises(ValueError):
        _resample.lanczos_l(np.zeros((0, 4), dtype=np.uint8), 2, 2)
    with pytest.raises(ValueError):
        _resample.lanczos_l(np.zeros((8, 8), dtype=np.uint8)[:, ::2], 2, 2)
    with pytest.raises(ValueError):
        _resample.lanczos_l(a, 2, 2, isa="sse9")
    with pytest.raises(ValueError):
        _resample.lanczos_l(a, 2, 2, order="diagonal")
    with pytest.raises((ValueError, TypeError)):
        _resample.lanczos_l(np.zeros((4, 4), dtype=np.int16), 2, 2)
