import numpy as np
import pytest

import hashsieve as hs


def test_imagehash_form():
    assert hs.to_hex(0x8F0F3F7F0F0F0F00) == "8f0f3f7f0f0f0f00"
    assert hs.from_hex("8F0F3F7F0F0F0F00") == 0x8F0F3F7F0F0F0F00
    assert hs.from_hex(" 0000000000000001\n") == 1
    assert hs.to_hex(np.array([1, 2**64 - 1], dtype=np.uint64)) == ["0000000000000001", "ffffffffffffffff"]
    arr = hs.from_hex(["ffffffffffffffff", "0000000000000000"])
    assert arr.dtype == np.uint64 and arr.tolist() == [2**64 - 1, 0]
    assert hs.from_hex([]).shape == (0,)


@pytest.mark.parametrize("bad, match", [
    ("abc", r"\[0\] 'abc' must be exactly 16 hex digits"),
    ("0x000000000000000", "must be exactly 16"),
    ("0x0x00000000000000", "not a hex digit"),
    ("000000000000000g", "not a hex digit"),
    ("00000000 0000000", "not a hex digit"),
])
def test_malformed_hex_names_the_item(bad, match):
    with pytest.raises(ValueError, match=match):
        hs.from_hex(bad)
    with pytest.raises(ValueError, match=r"\[1\]"):
        hs.from_hex(["0000000000000000", bad])


def test_non_string_hex_is_a_type_error():
    with pytest.raises(TypeError, match="must be a str"):
        hs.from_hex([123])


def test_from_hex_accepts_what_hash_lists_accept():
    """Issue 11 item 7: from_hex refused the 0x prefix that hash lists accept; one parser reads both."""
    from hashsieve.lists import parse_hash
    for text in ("0x8F0F3F7F0F0F0F00", "0X8f0f3f7f0f0f0f00", " 8F0F3F7F0F0F0F00\n", "8f0f3f7f0f0f0f00"):
        assert hs.from_hex(text) == int(parse_hash(text)[1], 16) == 0x8F0F3F7F0F0F0F00
    assert hs.from_hex(["0x0000000000000001", b"0X00000000000000FF"]).tolist() == [1, 255]


def test_256_bit_hex_is_the_bytes_in_order():
    text = "00ff10" + "0" * 56 + "a5"
    code = hs.from_hex(text)
    assert code.dtype == np.uint8 and code.shape == (32,)
    assert code[:3].tolist() == [0x00, 0xFF, 0x10] and code[31] == 0xA5
    assert hs.to_hex(code) == text
    arr = hs.from_hex(["0x" + text.upper(), " " + "f" * 64 + "\n"])
    assert arr.shape == (2, 32) and arr[1].tolist() == [255] * 32
    assert hs.to_hex(arr) == [text, "f" * 64]
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    np.testing.assert_array_equal(hs.from_hex(hs.to_hex(codes)), codes)
    assert hs.to_hex(codes[3]) == bytes(codes[3]).hex()


def test_mixed_hex_lengths_are_refused_naming_the_item():
    with pytest.raises(ValueError, match=r"\[2\] has 16 hex digits but hash \[0\] has 64"):
        hs.from_hex(["0" * 64, "1" * 64, "0" * 16])
    with pytest.raises(ValueError, match=r"\[1\] has 64 hex digits but hash \[0\] has 16"):
        hs.from_hex(["0" * 16, "0" * 64])


@pytest.mark.parametrize("digits", [15, 17, 32, 63, 65])
def test_hex_of_another_length_names_both_widths(digits):
    with pytest.raises(ValueError, match="exactly 16 hex digits .* or 64"):
        hs.from_hex("0" * digits)


def test_to_hex_refuses_256_bit_codes_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        hs.to_hex(np.zeros((2, 31), np.uint8))
