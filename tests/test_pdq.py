"""PDQ against its reference: pdqhash (Meta's C++) on the same arrays, bit for bit, and hash_image(..., "pdq")
against python-threatexchange's pipeline (Pillow decode, its array, pdqhash)."""
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

import imagegen
from hashsieve import ImageHashError, _pdq, hash_image, hash_images
from hashsieve.pdq import pdq_from_image, pdq_hash

pdqhash = pytest.importorskip("pdqhash")


def reference(array):
    """pdqhash's (hash as our uint8 (32,), quality)."""
    vector, quality = pdqhash.compute(array)
    return np.packbits(np.asarray(vector, dtype=np.uint8)), quality


def reference_hex(array):
    """python-threatexchange's hex: the bit vector read as one big integer (its _pdq_from_numpy_array)."""
    vector, quality = pdqhash.compute(array)
    return "%064x" % int("".join(str(int(b)) for b in vector), 2), quality


def pytx_array(image):
    """What python-threatexchange's pdq_from_file hands pdqhash (written from its source)."""
    if image.mode == "LA":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.concatenate([array[..., np.newaxis]] * 3, axis=2)
    return array


def smooth(height, width, seed, cells=24):
    """A cheap photo-like RGB array: bicubic-upsampled noise plus fine grain."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // cells), max(2, width // cells), 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.integers(-6, 7, big.shape)
    return np.clip(big.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def assert_same(array, ours=None):
    """Hash, quality and the 256 float DCT coefficients identical to pdqhash's (the floats
    catch a rounding difference even where it flips no bit)."""
    want, want_quality = reference(array)
    got, quality = pdq_hash(array if ours is None else ours, with_quality=True)
    distance = int(np.unpackbits(want ^ got).sum())
    assert (distance, quality) == (0, want_quality), f"{array.shape}: {distance} bits off"
    if min(array.shape[:2]) >= 5:  # pdqhash.compute_float has no small-image check
        assert_same_floats(array, np.ascontiguousarray(array if ours is None else ours))


def assert_same_floats(reference_array, pixels, use_avx2=True):
    want, want_quality = pdqhash.compute_float(reference_array)
    got, quality = _pdq.coefficients(pixels, use_avx2)
    assert quality == want_quality
    assert np.array_equal(got[::-1].view(np.uint32), np.asarray(want, np.float32).view(np.uint32)), \
        f"{reference_array.shape}: DCT coefficients differ from pdqhash's"


SIZES = [(5, 5), (5, 9), (7, 5), (31, 17), (63, 64), (64, 63), (64, 65), (100, 100),
         (127, 129), (128, 128), (129, 127), (255, 256), (257, 383), (480, 640), (601, 799),
         (1000, 333), (333, 1000), (1080, 1920), (1201, 1599), (2000, 2000)]


@pytest.mark.parametrize("height,width", SIZES)
def test_pdq_identical_to_pdqhash_on_every_size(height, width):
    for seed in range(2):
        assert_same(smooth(height, width, seed))


def test_pdq_identical_to_pdqhash_at_6_megapixels():
    assert_same(smooth(2000, 3000, 7, cells=60))


@pytest.mark.parametrize("name", imagegen.SCENES)
def test_pdq_identical_to_pdqhash_on_scenes(name):
    for size in [(97, 131), (640, 480)]:
        assert_same(np.asarray(imagegen.scene(name, *size, seed=3)))


def test_pdq_identical_to_pdqhash_on_64x64_which_the_reference_does_not_blur():
    for seed in range(4):
        assert_same(smooth(64, 64, seed, cells=8))


def test_pdq_identical_to_pdqhash_on_near_solid_and_low_quality_images():
    solid = np.full((300, 200, 3), 128, np.uint8)
    dot = solid.copy()
    dot[150, 100] = 131
    ramp = np.broadcast_to(np.linspace(100, 104, 200).astype(np.uint8)[None, :, None], (300, 200, 3))
    faint = np.clip(smooth(300, 200, 1).astype(np.int16) // 40 + 120, 0, 255).astype(np.uint8)
    for array in (solid, dot, np.ascontiguousarray(ramp), faint, np.zeros((50, 50, 3), np.uint8),
                  np.full((50, 50, 3), 255, np.uint8)):
        assert_same(array)
    assert pdq_hash(faint, with_quality=True)[1] < 50


@pytest.mark.parametrize("height,width", [(1, 1), (4, 4), (4, 500), (500, 4), (1, 5)])
def test_pdq_under_5_pixels_is_zero_hash_quality_0(height, width):
    array = smooth(height, width, 0)
    hashed, quality = pdq_hash(array, with_quality=True)
    assert not hashed.any() and quality == 0
    assert_same(array)
    eight, quality = pdq_hash(array, with_quality=True, dihedral=True)
    assert eight.shape == (8, 32) and not eight.any() and quality == 0
    assert pdqhash.compute_dihedral(array)[1] == 0 and not np.any(pdqhash.compute_dihedral(array)[0])


def test_pdq_bytes_hex_is_python_threatexchange_hex():
    for seed in range(3):
        array = smooth(200, 300, seed)
        want, want_quality = reference_hex(array)
        got, quality = pdq_hash(array, with_quality=True)
        assert (bytes(got).hex(), quality) == (want, want_quality)
        assert got.dtype == np.uint8 and got.shape == (32,)


PYTX_MODES = ["1", "L", "P", "LA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"]


@pytest.mark.parametrize("mode", PYTX_MODES)
def test_pdq_from_image_identical_to_python_threatexchange_pipeline(mode):
    base = Image.fromarray(smooth(211, 157, 5))
    image = base.convert(mode)
    # Through an encoded file where the format keeps the mode, as pdq_from_file opens it.
    fmt = {"CMYK": "TIFF", "YCbCr": "TIFF", "LAB": "TIFF", "HSV": None, "RGBX": None, "RGBa": None}.get(mode, "PNG")
    if fmt:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        image = Image.open(io.BytesIO(buffer.getvalue()))
        assert image.mode == mode
    want, want_quality = reference_hex(pytx_array(image))
    got, quality = pdq_hash(pdq_from_image(image), with_quality=True)
    assert (bytes(got).hex(), quality) == (want, want_quality)
    if mode != "LA":  # the array as Pillow gives it (2-D, bool for "1") hashes the same
        assert bytes(pdq_hash(np.asarray(image))).hex() == want


def test_pdq_jpeg_decoded_identical_to_python_threatexchange_pipeline():
    for mode in ("RGB", "L", "CMYK"):
        buffer = io.BytesIO()
        Image.fromarray(smooth(480, 640, 2)).convert(mode).save(buffer, "JPEG", quality=85)
        image = Image.open(io.BytesIO(buffer.getvalue()))
        assert_same(pytx_array(image), pdq_from_image(image))


@pytest.fixture(scope="module")
def pdq_corpus():
    """tests/imagegen.py's corpus: 10 scenes in every format and mode."""
    return imagegen.corpus(seed=13, n_scenes=10)


def test_pdq_identical_to_python_threatexchange_on_the_corpus(pdq_corpus):
    """Every format and mode of tests/imagegen.py's corpus: the same hash and quality as
    pytx's pipeline, and a clear ValueError exactly where pdqhash fails."""
    hashed = refused = 0
    for name, data in pdq_corpus:
        image = Image.open(io.BytesIO(data))
        try:
            want = reference_hex(pytx_array(image))
        except (ValueError, IndexError):
            with pytest.raises(ValueError, match="cannot hash Pillow mode"):
                pdq_from_image(image)
            refused += 1
            continue
        got, quality = pdq_hash(pdq_from_image(image), with_quality=True)
        assert (bytes(got).hex(), quality) == want, name
        hashed += 1
    assert hashed > 100 and refused > 0


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "PA", "La"])
def test_pdq_from_image_refuses_modes_pdqhash_cannot_take(mode):
    image = Image.fromarray(smooth(20, 20, 0)).convert("L").convert(mode) if mode.startswith("I") or mode == "F" \
        else Image.fromarray(smooth(20, 20, 0)).convert(mode)
    with pytest.raises(ValueError, match=f"mode '{mode}'.*convert"):
        pdq_from_image(image)


@pytest.mark.parametrize("use_avx2", [True, False])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_pdq_avx2_and_portable_kernels_identical_to_pdqhash(use_avx2, channels):
    for height, width in [(5, 13), (64, 64), (97, 203), (480, 641), (1203, 1601)]:
        rgba = np.ascontiguousarray(np.dstack([smooth(height, width, width), smooth(height, width, 1)[:, :, :1]]))
        array = rgba[:, :, 0].copy() if channels == 1 else np.ascontiguousarray(rgba[:, :, :channels])
        stacked = np.repeat(array[:, :, None], 3, axis=2) if channels == 1 else array
        want, want_quality = reference(stacked)
        got, quality = _pdq.hash_pixels(array, False, use_avx2)
        assert np.array_equal(got, want) and quality == want_quality, (height, width)
        assert_same_floats(stacked, array, use_avx2)


def test_pdq_greyscale_2d_equals_stacked_channels():
    grey = smooth(300, 400, 4)[:, :, 1].copy()
    stacked = np.repeat(grey[:, :, None], 3, axis=2)
    assert_same(stacked, grey)


def test_pdq_non_contiguous_array_equals_its_copy():
    array = smooth(400, 600, 6)
    view = array[::2, 1::2]
    assert_same(np.ascontiguousarray(view), view)


@pytest.mark.parametrize("height,width", [(5, 5), (64, 64), (65, 200), (480, 640), (1080, 1920)])
def test_pdq_dihedral_identical_to_pdqhash_compute_dihedral(height, width):
    array = smooth(height, width, 8)
    vectors, want_quality = pdqhash.compute_dihedral(array)
    want = np.stack([np.packbits(np.asarray(v, dtype=np.uint8)) for v in vectors])
    got, quality = pdq_hash(array, with_quality=True, dihedral=True)
    assert got.shape == (8, 32) and got.dtype == np.uint8
    assert quality == want_quality
    assert [int(np.unpackbits(w ^ g).sum()) for w, g in zip(want, got)] == [0] * 8
    assert np.array_equal(pdq_hash(array, dihedral=True), got)


def test_pdq_threads_give_the_serial_answers():
    arrays = [smooth(700 + 37 * i, 900 - 41 * i, i) for i in range(8)]
    serial = [pdq_hash(a) for a in arrays]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(pdq_hash, arrays))
    assert all(np.array_equal(s, t) for s, t in zip(serial, threaded))


@pytest.mark.parametrize("bad,error,match", [
    ([[1, 2], [3, 4]], TypeError, "numpy uint8 array"),
    (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
    (np.zeros((10, 10, 3), np.uint16), TypeError, "uint8"),
    (np.zeros((10, 10, 2), np.uint8), ValueError, r"shape \(h, w, 3\)"),
    (np.zeros((10,), np.uint8), ValueError, "shape"),
])
def test_pdq_bad_input_is_a_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        pdq_hash(bad)


# ---------------------------------------------------------------------------
# hash_image(..., "pdq"): the decode pipeline, python-threatexchange's for the normal modes
# ---------------------------------------------------------------------------
# The modes hashed as Pillow decodes them, exactly as python-threatexchange does.
PYTX_EXACT_MODES = ("RGB", "RGBA", "L", "LA")


def pytx_reference(image):
    """python-threatexchange's PdqSignal.hash_from_file: (hex, quality)."""
    return reference_hex(pytx_array(image))


def looks_like(image):
    """What hash_image hashes for the modes python-threatexchange hashes oddly: the picture."""
    if image.mode.startswith("I;16"):
        return np.repeat((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    return pytx_array(image.convert("L" if image.mode in ("1", "I", "F") else "RGB"))


def test_hash_image_pdq_is_python_threatexchange_on_every_normal_mode_and_format(pdq_corpus):
    seen = set()
    for name, data in pdq_corpus:
        image = Image.open(io.BytesIO(data))
        if image.mode not in PYTX_EXACT_MODES:
            continue
        seen.add((image.format, image.mode))
        code, quality = hash_image(data, "pdq", with_quality=True)
        assert (bytes(code).hex(), quality) == pytx_reference(image), name
    assert {m for _, m in seen} == set(PYTX_EXACT_MODES) and {f for f, _ in seen} >= {"JPEG", "PNG", "WEBP", "TIFF"}


def test_hash_image_pdq_hashes_odd_modes_as_the_picture(pdq_corpus):
    """Palette, CMYK, bilevel and 16-bit images: the hash of what they look like (pdqhash on the
    RGB or grey picture), not of palette indices / C, M, Y as R, G, B / 0-1 values."""
    seen = set()
    for name, data in pdq_corpus:
        image = Image.open(io.BytesIO(data))
        if image.mode in PYTX_EXACT_MODES:
            continue
        code, quality, flattened = hash_image(data, "pdq", with_detail=True)
        if flattened:       # (transparency and a hash under the gate: see the alpha-only logo test)
            assert "transparency" in image.info and pdq_hash(looks_like(image), with_quality=True)[1] < 50
            continue
        seen.add(image.mode)
        assert (bytes(code).hex(), quality) == reference_hex(looks_like(image)), name
    assert seen >= {"P", "CMYK", "1", "I;16"}


@pytest.mark.parametrize("mode", ["RGBX", "RGBa", "PA", "La", "YCbCr", "LAB", "HSV", "I", "F"])
def test_hash_image_pdq_hashes_every_other_pillow_mode_as_the_picture(mode):
    rgba = Image.fromarray(np.dstack([smooth(150, 170, 3), np.full((150, 170, 1), 200, np.uint8)]), "RGBA")
    source = {"PA": rgba.convert("P").convert("PA"), "La": rgba.convert("LA").convert("La"),
              "I": rgba.convert("L").convert("I"), "F": rgba.convert("L").convert("F")}
    image = source.get(mode) or rgba.convert(mode)
    assert image.mode == mode
    picture = image.convert("LA").getchannel(0) if mode == "La" else image
    want = reference_hex(pytx_array(picture) if mode in ("RGBX", "La") else looks_like(picture))
    code, quality = hash_image(image, "pdq", with_quality=True)
    assert (bytes(code).hex(), quality) == want


def test_hash_image_pdq_palette_and_cmyk_are_close_to_their_rgb_copy():
    rgb = imagegen.photo(400, 300, 4)
    want = hash_image(rgb, "pdq")
    for odd in (rgb.quantize(256), rgb.convert("CMYK")):
        assert int(np.unpackbits(hash_image(odd, "pdq") ^ want).sum()) <= 16, odd.mode


def test_hash_image_pdq_16_bit_grey_is_its_high_byte():
    grey = np.asarray(imagegen.photo(300, 200, 2).convert("L"), dtype=np.uint16) * 257
    image = Image.open(io.BytesIO(imagegen.encode(Image.fromarray(grey), "PNG")))
    assert image.mode == "I;16"
    eight_bit = np.asarray(imagegen.photo(300, 200, 2).convert("L"))
    assert np.array_equal(hash_image(image, "pdq"), pdq_hash(eight_bit))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_hash_image_pdq_exif_orientation_is_optional_as_for_the_other_kinds(orientation):
    data = imagegen.encode(imagegen.photo(160, 120, orientation), "JPEG", quality=90,
                           exif=imagegen.camera_exif(orientation))
    image = Image.open(io.BytesIO(data))
    assert bytes(hash_image(data, "pdq")).hex() == pytx_reference(image)[0]
    upright = ImageOps.exif_transpose(image)
    assert bytes(hash_image(data, "pdq", exif_transpose=True)).hex() == reference_hex(np.asarray(upright))[0]


@pytest.mark.parametrize("width,height", [(1, 1), (4, 4), (3, 900), (5, 5), (7, 3001), (1999, 3001)])
def test_hash_image_pdq_sizes_from_1x1_to_6_megapixels(width, height):
    data = imagegen.encode(Image.fromarray(smooth(height, width, width + height)), "PNG" if width < 1000 else "JPEG")
    code, quality = hash_image(data, "pdq", with_quality=True)
    assert (bytes(code).hex(), quality) == pytx_reference(Image.open(io.BytesIO(data)))
    if min(width, height) < 5:
        assert not code.any() and quality == 0


def test_hash_image_pdq_dihedral_is_pdqhash_compute_dihedral():
    data = imagegen.encode(imagegen.photo(333, 250, 9), "JPEG", quality=90)
    vectors, want_quality = pdqhash.compute_dihedral(np.asarray(Image.open(io.BytesIO(data))))
    eight = hash_image(data, "pdq", dihedral=True)
    assert eight.shape == (8, 32) and np.array_equal(eight, np.stack([np.packbits(v.astype(np.uint8)) for v in vectors]))
    code, quality, flattened = hash_image(data, "pdq", dihedral=True, with_detail=True)
    assert np.array_equal(code, eight) and quality == want_quality and not flattened


def test_hash_image_pdq_with_detail_is_the_tuple_scan_uses():
    data = imagegen.encode(imagegen.photo(320, 240, 5), "PNG")
    code, quality, flattened = hash_image(data, "pdq", with_detail=True)
    assert code.dtype == np.uint8 and code.shape == (32,) and isinstance(quality, int) and flattened is False
    assert (bytes(code).hex(), quality) == pytx_reference(Image.open(io.BytesIO(data)))


def test_hash_image_pdq_alpha_only_logo_is_hashed_flattened():
    """A shape only in the alpha channel: pytx's hash (alpha dropped) is of a black image (zero,
    quality 0); flattened onto white it carries the shape, as for the other kinds."""
    alpha = np.asarray(imagegen.scene("shapes", 300, 200, seed=2).convert("L"))
    logo = Image.fromarray(np.dstack([np.zeros((200, 300, 3), np.uint8), alpha]), "RGBA")
    code, quality, flattened = hash_image(logo, "pdq", with_detail=True)
    on_white = Image.alpha_composite(Image.new("RGBA", logo.size, (255, 255, 255, 255)), logo).convert("RGB")
    assert flattened and quality >= 50
    assert np.array_equal(code, pdq_hash(np.asarray(on_white)))
    assert not pdq_hash(np.asarray(logo)).any()        # python-threatexchange's


def test_hash_images_pdq_gives_codes_and_quality_in_input_order(tmp_path):
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(imagegen.encode(imagegen.photo(200 + 10 * i, 150, i), "JPEG", quality=90))
        paths.append(str(p))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths.insert(2, str(tmp_path / "bad.jpg"))
    for workers in (1, 2):
        res = hash_images(paths, "pdq", workers=workers)
        assert res.hashes.dtype == np.uint8 and res.hashes.shape == (6, 32)
        assert res.ok.tolist() == [True, True, False, True, True, True] and "bad.jpg" in res.errors[2]
        assert not res.hashes[2].any() and res.quality[2] == -1 and res.quality.dtype == np.int16
        for i, p in enumerate(paths):
            if i != 2:
                code, quality = hash_image(p, "pdq", with_quality=True)
                assert np.array_equal(res.hashes[i], code) and res.quality[i] == quality
    assert hash_images(paths[:2], "phash", workers=1).quality is None


def test_hash_image_pdq_bad_files_and_limits_raise_image_hash_error():
    for name, data in imagegen.broken_files().items():
        with pytest.raises(ImageHashError):
            hash_image(data, "pdq")
    with pytest.raises(ImageHashError, match="max_pixels"):
        hash_image(imagegen.encode(imagegen.photo(300, 200), "PNG"), "pdq", max_pixels=1000)


def test_hash_image_quality_and_dihedral_are_pdq_only():
    data = imagegen.encode(imagegen.photo(100, 80), "PNG")
    for option in ("with_quality", "dihedral"):
        with pytest.raises(ValueError, match="for PDQ"):
            hash_image(data, "phash", **{option: True})


def test_hash_image_pdq_fast_decodes_big_jpegs_at_reduced_scale_close_to_exact(monkeypatch):
    """fast=True: a JPEG with a short side >= 1024 is decoded at 1/2 (or less) keeping >= 512 px;
    its hash stays close to the exact one (the drift is measured in docs/pdq.md)."""
    big = imagegen.encode(imagegen.camera_photo(1600, 1200, 3), "JPEG", quality=90)
    from PIL import JpegImagePlugin
    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: drafts.append(a) or real(self, *a))
    fast = hash_image(big, "pdq", fast=True)
    assert drafts == [(None, (512, 512))]
    exact = hash_image(big, "pdq")
    image = Image.open(io.BytesIO(big))
    image.draft(None, (512, 512))
    assert image.size == (800, 600)
    assert np.array_equal(fast, pdq_hash(np.asarray(image)))
    assert 0 < int(np.unpackbits(fast ^ exact).sum()) <= 16


def test_hash_image_pdq_fast_is_exact_when_there_is_nothing_to_reduce():
    small_jpeg = imagegen.encode(imagegen.photo(1000, 800, 4), "JPEG", quality=90)     # short side < 1024
    png = imagegen.encode(imagegen.photo(1200, 1100, 4), "PNG")
    for data in (small_jpeg, png):
        assert np.array_equal(hash_image(data, "pdq", fast=True), hash_image(data, "pdq"))
    caller = Image.open(io.BytesIO(imagegen.encode(imagegen.photo(1200, 1100, 4), "JPEG", quality=90)))
    exact = hash_image(caller, "pdq", fast=True)     # a caller's image is never drafted
    assert caller.size == (1200, 1100) and np.array_equal(exact, pdq_hash(np.asarray(caller)))
