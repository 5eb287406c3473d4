"""The hash-kind objects: width, text form, hasher, degenerate rule and quality gate per kind."""
import io
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import imagegen  # noqa: E402

from hashsieve import hash_image  # noqa: E402
from hashsieve.kinds import KINDS, LOW_DETAIL_THRESHOLD, kind_of  # noqa: E402


def jpeg(width=320, height=240, seed=1):
    return imagegen.encode(imagegen.photo(width, height, seed), "JPEG", quality=90)


def test_every_kind_knows_its_width_text_form_and_radius():
    widths = {name: (k.bits, k.hex_digits, k.default_radius) for name, k in KINDS.items()}
    assert widths == {"phash": (64, 16, 8), "dhash": (64, 16, 8), "ahash": (64, 16, 5), "whash": (64, 16, 8),
                      "pdq": (256, 64, 31)}
    assert all(kind_of(name) is k and k.name == name for name, k in KINDS.items())
    with pytest.raises(ValueError, match="kind must be one of phash, dhash, ahash, whash, pdq"):
        kind_of("md5")


@pytest.mark.parametrize("name", list(KINDS))
def test_kind_hex_round_trips_in_the_index_layout(name):
    kind = kind_of(name)
    rng = np.random.default_rng(3)
    if kind.bits == 64:
        codes = rng.integers(0, 2**63, 5, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    else:
        codes = rng.integers(0, 256, (5, 32), dtype=np.uint8)
    text = kind.to_hex(codes)
    assert isinstance(text, list) and all(len(t) == kind.hex_digits for t in text)
    back = kind.from_hex([" 0x" + t.upper() + "\n" for t in text])
    assert back.dtype == codes.dtype and np.array_equal(back, codes)
    assert kind.from_hex([]).shape == kind.zeros(0).shape
    assert np.array_equal(kind.as_codes(list(codes)), codes)
    assert kind.to_hex(codes[0]) == text[:1]


def test_pdq_hex_is_python_threatexchange_hex():
    data = jpeg()
    code = hash_image(data, "pdq")
    assert kind_of("pdq").to_hex(code) == [bytes(code).hex()]


@pytest.mark.parametrize("name,other", [("phash", "f" * 64), ("pdq", "0123456789abcdef")])
def test_kind_from_hex_refuses_the_other_width_naming_the_kind(name, other):
    with pytest.raises(ValueError, match=rf"\[1\].*{name} hashes are exactly {kind_of(name).hex_digits} hex digits"):
        kind_of(name).from_hex(["0" * kind_of(name).hex_digits, other])


def test_kind_hash_is_hash_image_with_detail():
    data = jpeg()
    for name, kind in KINDS.items():
        assert_equal_results(kind.hash(data), hash_image(data, name, with_detail=True))
        assert_equal_results(kind.hash(data, fast=True, with_detail=False), hash_image(data, name, fast=True))


def assert_equal_results(a, b):
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_pdq_degenerate_is_within_radius_of_all_zero_or_all_one():
    pdq = kind_of("pdq")
    codes = pdq.zeros(6)
    codes[1, :4] = 0xFF                 # 32 bits set: outside 31
    codes[2, :3] = 0xFF                 # 24 bits set
    codes[2, 3] = 0x7F                  # 31 bits set
    codes[3] = 0xFF                     # all one
    codes[4] = 0xAA                     # 128 bits set
    codes[5] = 0xFF
    codes[5, 0] = 0                     # 248 set: within 8 of all-one
    assert pdq.degenerate(codes).tolist() == [True, False, True, True, False, True]
    assert pdq.degenerate(codes, radius=8).tolist() == [True, False, False, True, False, True]
    assert pdq.degenerate(codes, radius=200).tolist() == pdq.degenerate(codes).tolist()   # never past 31


def test_pdq_hashes_of_black_and_tiny_images_are_degenerate_and_photos_are_not():
    black = imagegen.encode(imagegen.scene("photo", 200, 100).point(lambda v: 0), "PNG")
    tiny = imagegen.encode(imagegen.photo(4, 300), "PNG")
    photos = [hash_image(jpeg(seed=s), "pdq") for s in range(4)]
    pdq = kind_of("pdq")
    assert pdq.degenerate(np.stack([hash_image(black, "pdq"), hash_image(tiny, "pdq")])).all()
    assert not pdq.degenerate(np.stack(photos)).any()


def test_quality_gate_blocks_for_pdq_and_only_flags_for_64_bit_kinds():
    pdq = kind_of("pdq")
    assert pdq.gate_blocks and pdq.score == "quality" and pdq.low_quality_below == 50
    assert pdq.low_quality(49) and not pdq.low_quality(50)
    assert pdq.low_quality(np.array([0, 49, 50, 100])).tolist() == [True, True, False, False]
    assert pdq.low_quality(60, below=70)
    for name in ("phash", "dhash", "ahash", "whash"):
        kind = kind_of(name)
        assert not kind.gate_blocks and kind.score == "detail" and kind.low_quality_below == LOW_DETAIL_THRESHOLD
        assert kind.low_quality(0.5) and not kind.low_quality(1.0) and not kind.low_quality(np.nan)


def test_pdq_quality_of_blank_images_is_under_the_gate():
    """Blank images' PDQ bits are rounding noise, not always near zero: the quality gate stops them."""
    pdq = kind_of("pdq")
    for value in (0, 77, 128, 255):
        data = imagegen.encode(imagegen.photo(300, 200).point(lambda v, value=value: value), "PNG")
        code, quality, _ = pdq.hash(data)
        assert pdq.low_quality(quality), value


def test_64_bit_kinds_keep_their_degenerate_rule():
    phash = kind_of("phash")
    assert phash.degenerate(np.array([0, 0x8000000000000000, 0xD887641785F8FA43], np.uint64)).tolist() == \
        [True, True, False]
    assert phash.degenerate(0).tolist() == [True]


def test_pil_and_bytes_hash_alike_through_the_kind():
    from PIL import Image
    data = jpeg()
    code, quality, _ = kind_of("pdq").hash(Image.open(io.BytesIO(data)))
    assert np.array_equal(code, hash_image(data, "pdq")) and quality == hash_image(data, "pdq", with_quality=True)[1]


@pytest.mark.parametrize("name", ["phash", "pdq"])
def test_from_checked_hex_gives_from_hex_codes(name):
    kind = KINDS[name]
    rng = np.random.default_rng(3)
    codes = kind.from_hex(kind.to_hex(rng.integers(0, 2**63, 9, dtype=np.uint64) if kind.bits == 64
                                      else rng.integers(0, 256, (9, 32), dtype=np.uint8)))
    got = kind.from_checked_hex(kind.to_hex(codes))
    assert got.dtype == codes.dtype and got.shape == codes.shape and (got == codes).all()
