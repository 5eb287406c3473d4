"""PDQ, Meta's 256-bit perceptual hash, bit-identical to the reference.

The reference is Meta's C++ (facebook/ThreatExchange ``pdq/cpp``) as the
``pdqhash`` package calls it, which is what python-threatexchange's
``PdqSignal.hash_from_file`` (and so HMA) runs on the array Pillow decodes.
The native core (hashsieve._pdq, ext/pdq.c) repeats the reference's float
operations in the same order but streams the image through cache and only
computes the blurred values the 64x64 sampling reads; see docs/pdq.md.

Hash layout: uint8 (32,), the 256-bit vector python-threatexchange reads as
one big integer, most significant byte first, so ``bytes(h).hex()`` is
python-threatexchange's hex (64 lower-case digits).
"""
import numpy as np

from . import _pdq

__all__ = ["pdq_hash", "pdq_from_image"]

# The modes whose Pillow arrays pdqhash accepts (after python-threatexchange's
# LA -> RGB conversion); others (I;16, I, F, PA, La) make pdqhash fail.
_PYTX_MODES = ("1", "L", "P", "LA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


def pdq_hash(rgb, with_quality=False, dihedral=False):
    """The PDQ hash of a decoded image, identical to ``pdqhash.compute(rgb)``.

    rgb: numpy uint8 array (h, w, 3) as Pillow decodes RGB, or (h, w, 4) (the
    fourth channel is ignored, as pdqhash does), or (h, w) greyscale (hashed as
    the grey value stacked into three channels, as python-threatexchange
    does).  A bool array (Pillow mode "1") is hashed as 0/1 values, as pdqhash
    does.

    Returns uint8 (32,): ``bytes(h).hex()`` is python-threatexchange's hex.
    with_quality=True -> (hash, quality), quality an int 0..100 (the
    reference's gradient score; python-threatexchange ignores hashes under 50).
    dihedral=True -> uint8 (8, 32) in ``pdqhash.compute_dihedral``'s order:
    original, rotated 90, 180, 270 degrees, flipped about x, about y, about the
    main diagonal, about the other diagonal (from one DCT, so they differ from
    hashing a physically rotated image).  Like pdqhash, the dihedral original
    of an exactly 64x64 image is blurred and so can differ from the plain hash.
    Images under 5 px on a side hash to zeros with quality 0, as the reference.
    The native call releases the GIL.
    """
    pixels = _checked_pixels(rgb)
    hashes, quality = _pdq.hash_pixels(pixels, bool(dihedral))
    return (hashes, quality) if with_quality else hashes


def pdq_from_image(image):
    """The array python-threatexchange's ``pdq_from_file`` hands to pdqhash for a PIL image.

    Mode LA is converted to RGB, the pixels are read with ``np.asarray``, and a
    2-D array is stacked into three equal channels.  So RGBA and CMYK keep four
    channels (the first three are hashed as R, G, B), palette images ("P") are
    hashed by their palette indices and mode "1" as 0/1 values (returned as
    uint8): what python-threatexchange computes, not what the image looks like.
    Modes pdqhash cannot take (I;16, I, F, PA, La) raise ValueError.
    """
    if image.mode not in _PYTX_MODES:
        raise ValueError(
            f"PDQ: python-threatexchange cannot hash Pillow mode {image.mode!r} (pdqhash "
            f"refuses its array); convert it first, e.g. image.convert('RGB')")
    if image.mode == "LA":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)  # 0/1, as numpy reads it (the bytes may be 0/255)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return array


def _checked_pixels(rgb):
    """rgb as a C-contiguous uint8 array (h, w) or (h, w, 3|4), or a clear TypeError/ValueError."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"pdq_hash: rgb must be a numpy uint8 array (h, w, 3) or (h, w), got "
                        f"{type(rgb).__name__}; for a PIL image pass pdq_from_image(image)")
    if rgb.dtype == np.bool_:
        rgb = rgb.astype(np.uint8)  # 0/1, as pdqhash's numpy luma reads it
    if rgb.dtype != np.uint8:
        raise TypeError(f"pdq_hash: rgb must be uint8 (8-bit pixels), got {rgb.dtype}; "
                        f"convert the image to RGB or L first")
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] in (3, 4))):
        raise ValueError(f"pdq_hash: rgb must have shape (h, w, 3), (h, w, 4) or (h, w), "
                         f"got {rgb.shape}")
    if max(rgb.shape[:2]) >= 2**31:
        raise ValueError(f"pdq_hash: image of {rgb.shape[0]}x{rgb.shape[1]} pixels is too large")
    return np.ascontiguousarray(rgb)
