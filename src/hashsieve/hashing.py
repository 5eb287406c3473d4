"""Perceptual image hashes (pHash, dHash, aHash, wHash), bit-exact with imagehash 4.3.

The default path repeats imagehash's steps exactly: ``Image.open`` ->
``convert("L")`` -> LANCZOS resize -> transform -> threshold.  The resize is
hashsieve._resample's C/AVX2 copy of Pillow's integer LANCZOS (same bytes,
checked against the installed Pillow on first use).  The transforms are
re-implemented in numpy with the *same floating-point operations* as the code
imagehash calls (scipy's pocketfft DCT-II, PyWavelets' Haar filters), because
synthetic and symmetric images produce exact ties at the median that are broken
by rounding noise: a mathematically equal DCT would still flip bits there.

``fast=True`` trades a few bits for speed: JPEGs are decoded at 1/2-1/8 scale
in greyscale (libjpeg DCT scaling via ``Image.draft``; a progressive JPEG
decoded at 1/8 is first cut to the scans that scale reads, same pixels) and
large images are box-reduced before the LANCZOS resize.  Its cost in bits is
measured in docs/hashing.md.

Images with alpha whose hash is degenerate the imagehash way (the alpha
dropped) are hashed flattened onto white or black (_hash_pil); all others as
imagehash hashes them.

Hash layout: the 8x8 bit matrix row-major, first bit most significant, so
``int(str(imagehash.phash(im)), 16) == hash_image(im)``.
"""
import contextlib
import io
import math
import os
import pickle
import re
import signal
import threading
import time
import warnings
from collections import deque

import numpy as np
from PIL import Image, ImageOps

from . import _resample
from ._validate import available_cores
from .kinds import KINDS, kind_of
from .pdq import pdq_hash

__all__ = ["HASH_KINDS", "DEFAULT_MAX_PIXELS", "ImageHashError", "HashResults",
           "hash_image", "hash_images", "iter_hash_images", "image_detail"]

HASH_KINDS = tuple(KINDS)

# Pillow's own warning threshold (~89.5 MP, e.g. 9459x9459).  Above it an image is
# refused before any pixel is decoded, so a 100-byte file cannot claim gigabytes.
DEFAULT_MAX_PIXELS = 89_478_485

_LANCZOS = Image.Resampling.LANCZOS
_HASH_SIZE = 8
_PHASH_SIZE = 32          # hash_size * highfreq_factor in imagehash.phash
_DETAIL_SIZE = 32         # thumbnail used for the detail score
# fast=True keeps at least this many pixels on the short side before the final
# LANCZOS resize.  Measured on 1-4 MP JPEGs (bench_hashing.py fastcost): 128
# costs phash/ahash < 0.5 bit on average; dhash compares neighbouring pixels
# and needs 256 to stay under 1 bit.
_FAST_MIN_SIDE = {"phash": 128, "ahash": 128, "dhash": 256, "whash": 128}
# fast whash works on at most this scale instead of the short side's power of
# two (up to 2048 for big photos, the bulk of exact whash's time).
_FAST_WHASH_SCALE = 256


class ImageHashError(ValueError):
    """An image could not be hashed.  ``image`` names it, ``reason`` says why."""

    def __init__(self, image, reason):
        self.image = image
        self.reason = reason
        super().__init__(f"cannot hash {image}: {reason}")


# ---------------------------------------------------------------------------
# DCT-II identical to scipy.fftpack.dct (pocketfft T_dcst23, type 2, no norm)
# ---------------------------------------------------------------------------

def _unity_roots_real(n, indices):
    """Real parts of exp(2*pi*i*k/n) computed as pocketfft's UnityRoots does.

    pocketfft builds twiddles from two small tables (v1[k & mask] * v2[k >> shift]);
    a directly computed cos() differs in the last bit for some k, which is enough
    to change hashes of images whose coefficients tie at the median.
    """
    ang = 0.25 * math.pi / n

    def calc(x):
        x <<= 3
        if x < 4 * n:
            if x < 2 * n:
                if x < n:
                    return math.cos(x * ang), math.sin(x * ang)
                return math.sin((2 * n - x) * ang), math.cos((2 * n - x) * ang)
            x -= 2 * n
            if x < n:
                return -math.sin(x * ang), math.cos(x * ang)
            return -math.cos((2 * n - x) * ang), math.sin((2 * n - x) * ang)
        x = 8 * n - x
        if x < 2 * n:
            if x < n:
                return math.cos(x * ang), -math.sin(x * ang)
            return math.sin((2 * n - x) * ang), -math.cos((2 * n - x) * ang)
        x -= 2 * n
        if x < n:
            return -math.sin(x * ang), -math.cos(x * ang)
        return -math.cos((2 * n - x) * ang), -math.sin((2 * n - x) * ang)

    nval = (n + 2) // 2
    shift = 1
    while (1 << shift) * (1 << shift) < nval:
        shift += 1
    mask = (1 << shift) - 1
    v1 = [(1.0, 0.0)] + [calc(i) for i in range(1, mask + 1)]
    v2 = [(1.0, 0.0)] + [calc(i * (mask + 1)) for i in range(1, (nval + mask) // (mask + 1))]
    out = []
    for k in indices:
        if 2 * k > n:
            k = n - k       # the real part is symmetric
        x1, x2 = v1[k & mask], v2[k >> shift]
        out.append(x1[0] * x2[0] - x1[1] * x2[1])
    return np.array(out, dtype=np.float64)


_N = _PHASH_SIZE
_DCT_TW = _unity_roots_real(4 * _N, range(1, _N + 1))
_K = _HASH_SIZE                                   # coefficients kept per axis
_TW_K = _DCT_TW[0:_K - 1].copy()                  # twiddle[k-1],  k = 1.._K-1
_TW_KC = _DCT_TW[_N - 2:_N - _K - 1:-1].copy()    # twiddle[N-k-1]


def _dct2_low(x):
    """Coefficients 0.._K-1 of the unnormalised DCT-II along the last axis of an
    (m, 32) float64 array, bit-identical to scipy.fftpack.dct(x)[:, :_K].

    Same operations, in the same order, as pocketfft's T_dcst23::exec(type=2):
    fold into half-complex order (c[0], c[N-1] doubled; MPINPLACE on pairs), one
    backward real FFT (numpy ships the same pocketfft; norm="forward" means no
    scaling), then the twiddle butterfly, evaluated only for the kept outputs.
    """
    n, m = _N, x.shape[0]
    a = x[:, 2:n - 1:2]
    b = x[:, 1:n - 2:2]
    spec = np.empty((m, n + 2))                   # interleaved re/im of n//2+1 bins
    spec[:, 0] = x[:, 0] * 2
    spec[:, 1] = 0.0
    np.add(a, b, out=spec[:, 2:n:2])              # c[k]   = c[k+1] + c[k]
    np.subtract(a, b, out=spec[:, 3:n + 1:2])     # c[k+1] = c[k+1] - c[k]
    spec[:, n] = x[:, n - 1] * 2
    spec[:, n + 1] = 0.0
    r = np.fft.irfft(spec.view(np.complex128), n=n, axis=-1, norm="forward")
    out = np.empty((m, _K))
    out[:, 0] = r[:, 0]
    rk = r[:, 1:_K]
    rkc = r[:, n - 1:n - _K:-1]
    t1 = _TW_K * rkc + _TW_KC * rk
    t2 = _TW_K * rk - _TW_KC * rkc
    out[:, 1:] = 0.5 * (t1 + t2)
    return out


def _dct_low8(pixels):
    """scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8], 32x32 input."""
    x = np.asarray(pixels, dtype=np.float64)
    cols = _dct2_low(np.ascontiguousarray(x.T))   # DCT down each column, rows 0-7 kept
    return _dct2_low(np.ascontiguousarray(cols.T))


# The same low 8x8 DCT as a product of small matrices: ~10x faster, but rounded
# differently, so only trusted when no coefficient is within _TIE_TOL of the
# median.  Both it and scipy are within ~1e-8 of the exact value (|x| <= 255,
# 2 x 32 terms of magnitude <= 2), so a wider gap decides every bit the same way.
_DCT_MATRIX = 2.0 * np.cos(np.pi * np.arange(_K)[:, None] * (2 * np.arange(_N)[None, :] + 1) / (2 * _N))
_DCT_MATRIX_T = np.ascontiguousarray(_DCT_MATRIX.T)
_TIE_TOL = 1e-5


def _phash_bits(pixels):
    """imagehash.phash's 8x8 bits from the 32x32 uint8 thumbnail."""
    x = np.asarray(pixels, dtype=np.float64)
    coeffs = _DCT_MATRIX @ x @ _DCT_MATRIX_T
    med = _median64(coeffs)
    if np.abs(coeffs - med).min() <= _TIE_TOL:
        # A tie (flat, symmetric or gradient image): imagehash's bits depend on
        # scipy's rounding, so use the bit-identical pocketfft replica.
        coeffs = _dct_low8(x)
        med = _median64(coeffs)
    return coeffs > med


def _median64(v):
    """numpy.median of a float array, without its Python overhead: the mean of the
    two middle values computed as (a + b) / 2, exactly as numpy does."""
    s = np.sort(v, axis=None)
    mid = s.size // 2
    return (s[mid - 1] + s[mid]) / 2 if s.size % 2 == 0 else s[mid]


# ---------------------------------------------------------------------------
# Haar wavelet identical to PyWavelets (wavedec2/waverec2, 'haar', symmetric)
# ---------------------------------------------------------------------------
# For even lengths the Haar filters never reach the signal edge, so the extension
# mode does not matter.  pywt's C loops compute, per output:
#   approx = c*x[2k+1] + c*x[2k],  detail = c*x[2k] - c*x[2k+1]        (dwt)
#   x[2k]  = c*a + c*d,            x[2k+1] = c*a - c*d                 (idwt)
# with c = 0.7071067811865476, each product rounded before the sum.
_HAAR_C = 0.7071067811865476


def _dwt_axis0(x):
    ce = _HAAR_C * x[0::2]
    co = _HAAR_C * x[1::2]
    return co + ce, ce - co


def _idwt_axis0(a, d):
    ca = _HAAR_C * a
    cd = _HAAR_C * d
    out = np.empty((2 * a.shape[0],) + a.shape[1:])
    out[0::2] = ca + cd
    out[1::2] = ca - cd
    return out


def _dwt2(x):
    # pywt.dwtn transforms axis 0 first, then axis 1.
    a, d = _dwt_axis0(x)
    aa, ad = _dwt_axis0(a.T)
    da, dd = _dwt_axis0(d.T)
    return aa.T, (da.T, ad.T, dd.T)


def _idwt2(aa, details):
    # pywt.idwtn undoes axis 1 first, then axis 0.
    da, ad, dd = details
    a = _idwt_axis0(aa.T, ad.T).T
    d = _idwt_axis0(da.T, dd.T).T
    return _idwt_axis0(a, d)


# Pixels per block of the wHash transforms: 8 MB of float64 instead of the whole image
# (imagehash's transforms at scale 8192 allocate several 512 MB arrays).
_WHASH_BLOCK = 1 << 20


def _whash_low(pixels, image_scale, block=_WHASH_BLOCK):
    """The 8x8 coefficients imagehash.whash(mode='haar', remove_max_haar_ll=True) thresholds,
    from the scale x scale uint8 thumbnail, bit-identical to it.

    imagehash transforms the whole image (/255.) down to 1x1, zeroes that mean, rebuilds the
    image and transforms it again down to 8x8.  Every Haar step combines the two halves of an
    aligned pair, so each of the 8x8 outputs depends only on its own tile of (scale/8)^2
    pixels, except through the three coarsest levels, which work on the 8x8 array of the
    tiles' approximations.  So the same operations run tile by tile (tiles grouped into
    blocks of at most `block` pixels): pass 1 finds every tile's approximation, the coarse
    levels run on the 8x8 array, and pass 2 rebuilds each tile from its new approximation
    and its own details and transforms it again.
    """
    levels = int(np.log2(image_scale))
    in_tile = levels - int(np.log2(_HASH_SIZE))
    tile = image_scale // _HASH_SIZE
    bw = min(_HASH_SIZE, max(1, block // (tile * tile)))        # block size in tiles
    bh = min(_HASH_SIZE, max(1, block // (tile * tile * bw)))
    blocks = [(i, j) for i in range(0, _HASH_SIZE, bh) for j in range(0, _HASH_SIZE, bw)]

    def forward(i, j):
        a = pixels[i * tile:(i + bh) * tile, j * tile:(j + bw) * tile] / 255.
        details = []
        for _ in range(in_tile):
            a, ds = _dwt2(a)
            details.append(ds)
        return a, details

    approx = np.empty((_HASH_SIZE, _HASH_SIZE))
    for i, j in blocks:
        approx[i:i + bh, j:j + bw], details = forward(i, j)
    a, coarse = approx, []
    for _ in range(levels - in_tile):
        a, ds = _dwt2(a)
        coarse.append(ds)
    a = a * 0                       # remove_max_haar_ll: the 1x1 mean
    for ds in reversed(coarse):
        a = _idwt2(a, ds)
    out = np.empty((_HASH_SIZE, _HASH_SIZE))
    for i, j in blocks:
        if len(blocks) > 1:         # (a single block's details are still at hand from pass 1)
            details = forward(i, j)[1]
        b = a[i:i + bh, j:j + bw]
        for ds in reversed(details):
            b = _idwt2(b, ds)
        for _ in range(in_tile):
            b, _ds = _dwt2(b)
        out[i:i + bh, j:j + bw] = b
    return out


def _whash_scale(size):
    # Same expression as imagehash: largest power of two <= the short side, >= 8.
    natural = 2 ** int(np.log2(min(size)))
    return max(natural, _HASH_SIZE)


# ---------------------------------------------------------------------------
# Opening images and turning decoder failures into ImageHashError
# ---------------------------------------------------------------------------

def _describe(image):
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fsdecode(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{memoryview(image).nbytes} bytes>"
    if isinstance(image, Image.Image):
        return f"<PIL image {image.mode} {image.size[0]}x{image.size[1]}>"
    name = getattr(image, "name", None)
    if isinstance(name, (str, bytes)):
        return repr(os.fsdecode(name))
    return f"<{type(image).__name__}>"


def _check_input_type(image):
    """TypeError for things that are not an image source at all (a caller's bug)."""
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return
    if isinstance(image, io.TextIOBase):
        raise TypeError(f"image {_describe(image)} is a text-mode file; open it with mode 'rb'")
    if callable(getattr(image, "read", None)):
        return
    raise TypeError(f"image must be a path, bytes, a binary file object or a PIL.Image, "
                    f"got {type(image).__name__}")


def _open(image, name):
    """A PIL image (lazy: header read, pixels not decoded) and whether we own it."""
    if isinstance(image, Image.Image):
        return image, False
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageHashError(name, "no such file; check the path") from None
        except OSError as e:
            raise ImageHashError(name, f"cannot read the file ({e.strerror or e})") from None
        if os.path.isdir(path):
            raise ImageHashError(name, "is a directory, not an image file")
        if st.st_size == 0:
            raise ImageHashError(name, "empty file (0 bytes); the upload or copy was probably cut short")
        fp = path
    elif isinstance(image, (bytes, bytearray, memoryview)):
        if memoryview(image).nbytes == 0:
            raise ImageHashError(name, "empty input (0 bytes)")
        fp = io.BytesIO(image)
    else:
        fp = image
    try:
        return Image.open(fp), True
    except Exception as e:
        raise ImageHashError(name, _explain(e)) from e


def _explain(exc):
    """A reason a person can act on, from whatever the decoder raised."""
    msg = str(exc)
    if isinstance(exc, Image.DecompressionBombError) or isinstance(exc, Image.DecompressionBombWarning):
        return (f"refused as a possible decompression bomb ({msg}); raise PIL.Image.MAX_IMAGE_PIXELS "
                "and max_pixels= only for files you trust")
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read (unknown or unsupported format, or not an image file)"
    if isinstance(exc, MemoryError):
        return "ran out of memory while decoding; lower max_pixels or hash it with fast=True"
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        # (not Pillow's "image file is truncated (0 bytes not processed)": its count says nothing)
        return "truncated: the file ends before its image data does; it is incomplete, re-fetch or re-export it"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {msg})"


# Bytes a pixel that decoding an image and making it grey take (4 for the decoded colour image,
# 1 for the grey copy; `bench_scan.py decodecost`).  max_pixels bounds that memory, so a pixel of
# a costlier format counts cost/5 times against it: WebP 16-18 (Pillow decodes it through libwebp's
# animation decoder and then copies the frame); a progressive JPEG 7.0 (4:2:0) to 10.0 (4:4:4)
# (libjpeg keeps every DCT coefficient until the last scan).
_COST_PER_PIXEL = 5
_COSTLIER = {"WebP": 18, "progressive JPEG": 10}


def _costly_format(img):
    if img.format == "WEBP":
        return "WebP"
    if img.format == "JPEG" and (img.info.get("progressive") or img.info.get("progression")):
        return "progressive JPEG"
    return None


# PDQ hashes an RGB array (3 bytes a pixel) where the other kinds make a grey copy (1 byte): the
# pool's budget for big decodes counts it (max_pixels still counts pixels, whatever the kind).
_PDQ_EXTRA_PER_PIXEL = 2


def _decode_cost(img, kind=None):
    per_pixel = _COSTLIER.get(_costly_format(img), _COST_PER_PIXEL)
    return img.size[0] * img.size[1] * (per_pixel + (_PDQ_EXTRA_PER_PIXEL if kind == "pdq" else 0))


def _check_pixels(img, name, max_pixels):
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageHashError(name, f"image has no pixels (size {w}x{h})")
    if max_pixels is None:
        return
    if w * h > max_pixels:
        raise ImageHashError(name, f"image is {w}x{h} = {w * h:,} pixels, above max_pixels={max_pixels:,} "
                                   "(decompression-bomb guard); pass a larger max_pixels= if you trust it")
    if _decode_cost(img) > _COST_PER_PIXEL * max_pixels:
        what = _costly_format(img)
        raise ImageHashError(name, f"image is a {w}x{h} = {w * h:,} pixel {what}; Pillow takes {_COSTLIER[what]} "
                                   f"bytes a pixel to decode a {what} ({_COST_PER_PIXEL} for most formats), as much "
                                   f"as {_decode_cost(img) // _COST_PER_PIXEL:,} pixels, above max_pixels="
                                   f"{max_pixels:,} (decompression-bomb guard); pass a larger max_pixels= if you "
                                   "trust it")


# ---------------------------------------------------------------------------
# The hashes
# ---------------------------------------------------------------------------

def _bits_to_int(bits):
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def _draft(img, need):
    """The image to hash, set to decode straight to grey at 1/2, 1/4 or 1/8 scale if it is a JPEG
    (libjpeg's DCT scaling), keeping the short side >= need; a progressive JPEG decoded at 1/8
    comes back as a new image of fewer scans (_scans_for_eighth)."""
    # Only when libjpeg can scale: grey decoding alone saves little and (Y instead of RGB->L,
    # +-1 per pixel) flips bits of flat, tie-prone images.  A no-op once the image is loaded.
    if img.format not in ("JPEG", "MPO") or not hasattr(img, "draft"):
        return img
    reduction = min(img.size[0] // need, img.size[1] // need)
    if reduction >= 8 and img.format == "JPEG" and img.info.get("progressive"):
        fewer = _scans_for_eighth(img)
        if fewer is not None:
            img = Image.open(io.BytesIO(fewer))     # (the caller closes the original)
    if reduction >= 2:
        img.draft("L", (need, need))
    return img


# A JPEG marker inside entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart
# marker (RST0-7) nor another fill 0xFF.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF2, _SOS, _EOI = 0xC2, 0xDA, 0xD9


def _scans_for_eighth(img):
    """The progressive JPEG's bytes with only the scans its 1/8-scale decode needs, or None.

    At 1/8 scale libjpeg's inverse DCT reads only each block's DC coefficient, so a progressive
    file's AC scans, most of its bytes and of its decoding time, change nothing; kept are every DC
    scan and each component's first AC scan that reaches coefficients 1-9 (without any AC data
    libjpeg's block smoothing would also interpolate the DC values).  The pixels are the same
    as the whole file's at 1/8 (tests/test_hashing.py).  None, and the whole file is decoded,
    for anything unexpected: no SOF2, a damaged or cut segment, no end of image, or a file
    bigger than 2 bytes a pixel (the file and its cut copy stay in memory while libjpeg decodes;
    camera files are 0.2-0.5 bytes a pixel).
    """
    fp = getattr(img, "fp", None)
    if fp is None:
        return None
    try:
        fp.seek(0, io.SEEK_END)
        if fp.tell() > 2 * img.size[0] * img.size[1]:
            return None
        fp.seek(0)
        data = fp.read()
    except (OSError, ValueError):
        return None
    if data[:2] != b"\xff\xd8":
        return None
    parts, pos, progressive, first_ac = [data[:2]], 2, False, set()
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return None
        if data[pos + 1] == 0xFF:       # fill byte
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == _EOI:
            parts.append(data[pos:pos + 2])
            return b"".join(parts) if progressive else None
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if not pos + 4 <= end <= len(data):
            return None
        keep = True
        progressive |= marker == _SOF2
        if marker == _SOS:
            if not progressive:
                return None
            n = data[pos + 4]
            if end != pos + 8 + 2 * n:
                return None
            ss = data[pos + 5 + 2 * n]
            if ss:                      # an AC scan: one component (ITU T.81, G.1.1.1.1)
                component = data[pos + 5]
                keep = ss <= 9 and component not in first_ac
                if keep:
                    first_ac.add(component)
            found = _MARKER.search(data, end)
            if found is None:
                return None
            end = found.start()
        if keep:
            parts.append(data[pos:end])
        pos = end
    return None


# Pillow converts these modes to "L" through a whole RGB copy (4 more bytes a pixel);
# converting a band of rows at a time gives the same pixels (every conversion to L is
# pixel by pixel) without it.
_VIA_RGB = ("CMYK", "HSV")
_BAND_PIXELS = 1 << 20


def _greyscale(img, owned=True):
    """The image as mode "L", converted exactly as imagehash does (Image.convert)."""
    if img.mode == "L":
        img.load()
        return img          # convert("L") would only copy it
    if isinstance(img.info.get("transparency"), bytes):
        # Pillow warns ("Palette images with Transparency expressed in bytes ...") and converts
        # the pixels without it: converting them without it gives the same image, silently.
        bare = img if owned else img.copy()
        trns = bare.info.pop("transparency")
        try:
            return bare.convert("L")
        finally:
            bare.info["transparency"] = trns    # (the alpha check and flattening need it)
    w, h = img.size
    rows = max(1, _BAND_PIXELS // max(w, 1))
    if img.mode not in _VIA_RGB or rows >= h:
        return img.convert("L")
    grey = Image.new("L", img.size)
    for y in range(0, h, rows):
        grey.paste(img.crop((0, y, w, min(h, y + rows))).convert("L"), (0, y))
    return grey


def _resize(grey, size, fast, need):
    """The LANCZOS thumbnail of the mode "L" image as a (height, width) uint8 array."""
    if fast and min(grey.size) >= 4 * need:
        # Box-reduce by an integer factor first, keeping >= need pixels a side,
        # so LANCZOS runs over far fewer pixels.  Only for big images: on a
        # 256-511 px PNG it saved ~10% and cost flat images up to 26 bits.
        return np.asarray(grey.resize(size, _LANCZOS, reducing_gap=max(1.0, need / min(size))))
    return _lanczos(grey, size)


# Pillow's LANCZOS resize, redone by hashsieve._resample with the same integer
# arithmetic (byte-identical, several times faster, coefficients cached per
# size).  Which pass runs first changes the bytes and depends on the Pillow
# release, so it is found by resizing a few probe images both ways; if neither
# way matches (a Pillow we do not know), Pillow keeps doing the resizes.
_PROBES = (((7, 16), (8, 8)), ((16, 7), (8, 8)), ((31, 33), (32, 32)), ((45, 61), (9, 8)),
           ((61, 45), (32, 32)), ((3, 2), (8, 8)), ((200, 90), (32, 32)))
_UNPROBED = object()
_c_order = _UNPROBED


def _probe_order():
    rng = np.random.default_rng(20240611)
    cases = []
    for (w, h), size in _PROBES:
        grey = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        cases.append((grey, size, np.asarray(grey.resize(size, _LANCZOS))))
    for order in _resample.PASS_ORDERS:
        try:
            if all(np.array_equal(_resample.lanczos_image(g, *size, order=order), ref)
                   for g, size, ref in cases):
                return order
        except Exception:
            return None
    return None


def _lanczos_order():
    """The pass order that reproduces the installed Pillow, or None (use Pillow)."""
    global _c_order
    if _c_order is _UNPROBED:
        _c_order = _probe_order()
    return _c_order


def _lanczos(grey, size):
    order = _lanczos_order()
    if order is None:
        return np.asarray(grey.resize(size, _LANCZOS))
    return _resample.lanczos_image(grey, size[0], size[1], order=order)


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Flattening backgrounds, in the order tried: white (what converters that flatten use), then black.
_BACKGROUNDS = ((255, 255, 255, 255), (0, 0, 0, 255))


def _has_alpha(img):
    return img.mode in _ALPHA_MODES or ("transparency" in img.info and img.mode in ("P", "L", "RGB", "1"))


def _is_fully_transparent(img):
    # (getextrema per band: no copy of the alpha channel)
    if img.mode in _ALPHA_MODES:
        return img.getextrema()[-1][1] == 0
    if _has_alpha(img):
        return img.convert("RGBA").getextrema()[3][1] == 0
    return False


def _flattened(img, background, mode="L"):
    """The image composited onto an opaque RGBA background colour, as mode "L" (or mode) (a band
    of rows at a time: no whole RGBA copy)."""
    w, h = img.size
    rows = max(1, _BAND_PIXELS // max(w, 1))
    out = Image.new(mode, img.size)
    for y in range(0, h, rows):
        band = img.crop((0, y, w, min(h, y + rows))).convert("RGBA")
        out.paste(Image.alpha_composite(Image.new("RGBA", band.size, background), band).convert(mode), (0, y))
    return out


def _hash_pil(img, kind, fast, exif_transpose, with_detail, owned=True):
    """(hash, detail or None, flattened) of a PIL image.

    Images with alpha whose hash (imagehash's: the alpha dropped) is degenerate, such as a logo
    whose shape is only in the alpha channel, are hashed flattened onto white, or else black,
    if that hash is not degenerate (flattened=True); all others exactly as imagehash does.
    """
    size0 = img.size                      # whash's scale comes from the original size
    if kind == "whash":
        scale = _whash_scale(size0)
        if fast:
            scale = min(scale, _FAST_WHASH_SCALE)
        need = max(scale, _FAST_MIN_SIDE[kind]) if fast else scale
    else:
        scale = None
        need = _FAST_MIN_SIDE[kind]
    if fast and owned:              # never change the mode/size of a caller's image
        img = _draft(img, need)
    with _decoding_turn(img):
        if exif_transpose:
            img, owned = ImageOps.exif_transpose(img), True
        alpha = _has_alpha(img)
        transparent = with_detail and alpha and _is_fully_transparent(img)
        grey = _greyscale(img, owned)
        if owned and grey is not img and not alpha:
            img.close()     # free the colour pixels now: 4 bytes a pixel, 358 MB at the default max_pixels
        code, detail = _hash_grey(grey, kind, fast, need, scale, with_detail)
        del grey
        flattened = False
        if alpha and KINDS[kind].degenerate(np.uint64(code))[0]:
            for background in _BACKGROUNDS:
                flat = _hash_grey(_flattened(img, background), kind, fast, need, scale, with_detail)
                if not KINDS[kind].degenerate(np.uint64(flat[0]))[0]:
                    (code, detail), flattened = flat, True
                    break
        return code, 0.0 if transparent else detail, flattened


def _hash_grey(grey, kind, fast, need, scale, with_detail):
    """(hash, detail or None) of the mode "L" image."""
    thumb32 = None
    if kind == "phash":
        thumb32 = _resize(grey, (_PHASH_SIZE, _PHASH_SIZE), fast, need)
        bits = _phash_bits(thumb32)
    elif kind == "dhash":
        px = _resize(grey, (_HASH_SIZE + 1, _HASH_SIZE), fast, need)
        bits = px[:, 1:] > px[:, :-1]
    elif kind == "ahash":
        px = _resize(grey, (_HASH_SIZE, _HASH_SIZE), fast, need)
        bits = px > px.sum(dtype=np.int64) / px.size     # np.mean: exact sum / 64
    elif kind == "whash":
        low = _whash_low(_resize(grey, (scale, scale), fast, need), scale)
        bits = low > _median64(low)
    else:
        raise ValueError(f"kind must be one of {HASH_KINDS}, got {kind!r}")
    code = _bits_to_int(bits)
    if not with_detail:
        return code, None
    if thumb32 is None:
        thumb32 = _resize(grey, (_DETAIL_SIZE, _DETAIL_SIZE), fast, need)
    return code, float(np.asarray(thumb32, dtype=np.float64).std())


# ---------------------------------------------------------------------------
# PDQ: the pixels python-threatexchange hands pdqhash, for the modes where that is the picture
# ---------------------------------------------------------------------------
# Hashed as Pillow decodes them, exactly as python-threatexchange's PdqSignal.hash_from_file does
# (RGBA/RGBX: the fourth channel ignored; LA: its grey, which is what pytx's LA -> RGB gives).
_PDQ_AS_DECODED = ("RGB", "RGBA", "RGBX", "L", "LA")
# Converted to grey: pytx would hash mode "1" as 0/1 (the same bits, quality 0) and refuses I, F.
_PDQ_TO_GREY = ("1", "I", "F")
# 16-bit greyscale: its high byte (65535 is white), where Pillow's convert("L") clips at 255 and
# pytx refuses the mode.  Every other mode (P, PA, CMYK, YCbCr, LAB, HSV, RGBa) is converted to
# RGB: pytx would hash palette indices, or C, M, Y as R, G, B (docs/pdq.md).
_PDQ_16_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# fast=True: JPEGs decoded at 1/2, 1/4 or 1/8 scale keeping at least this short side
# (bench_pdq.py fastcost).
_FAST_PDQ_MIN_SIDE = 512


def _pdq_pixels(img, owned):
    """The uint8 array to hash: (h, w), (h, w, 3) or (h, w, 4) (see _PDQ_AS_DECODED)."""
    if img.mode == "La":
        img = img.convert("LA")     # (Pillow converts premultiplied La to nothing else)
    if img.mode in _PDQ_AS_DECODED:
        return np.asarray(img.getchannel(0) if img.mode == "LA" else img)
    if img.mode in _PDQ_16_BIT:
        return (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    to = "L" if img.mode in _PDQ_TO_GREY else "RGB"
    if isinstance(img.info.get("transparency"), bytes):
        img = img if owned else img.copy()      # (Pillow warns and drops it converting: drop it silently)
        del img.info["transparency"]
    # A band of rows at a time: no whole converted copy beside the array.
    w, h = img.size
    out = np.empty((h, w) if to == "L" else (h, w, 3), np.uint8)
    rows = max(1, _BAND_PIXELS // max(w, 1))
    for y in range(0, h, rows):
        out[y:y + rows] = np.asarray(img.crop((0, y, w, min(h, y + rows))).convert(to))
    return out


def _pdq_draft(img):
    """fast=True: a JPEG set to decode at the smallest of 1/2, 1/4, 1/8 scale that keeps
    _FAST_PDQ_MIN_SIDE on the short side (none if that is 1/1).  A no-op once loaded."""
    if img.format in ("JPEG", "MPO") and min(img.size) >= 2 * _FAST_PDQ_MIN_SIDE:
        img.draft(None, (_FAST_PDQ_MIN_SIDE, _FAST_PDQ_MIN_SIDE))
    return img


def _hash_pdq_pil(img, fast, exif_transpose, dihedral, owned=True):
    """(hash uint8 (32,) or (8, 32), quality, flattened) of a PIL image.

    An image with alpha whose hash (the alpha dropped, as python-threatexchange does) carries no
    identity (degenerate, or quality under the gate) is hashed flattened onto white, or else
    black, when that one does (flattened=True), as for the other kinds.
    """
    pdq = KINDS["pdq"]
    if fast and owned:              # never change the mode/size of a caller's image
        img = _pdq_draft(img)
    with _decoding_turn(img, "pdq"):
        if exif_transpose:
            img, owned = ImageOps.exif_transpose(img), True
        alpha = _has_alpha(img)
        pixels = _pdq_pixels(img, owned)
        if owned and not alpha:
            img.close()     # free the decoded pixels now: the array is a copy
        code, quality = pdq_hash(pixels, with_quality=True, dihedral=dihedral)
        del pixels
        flattened = False
        if alpha and (pdq.degenerate(code[0] if dihedral else code)[0] or pdq.low_quality(quality)):
            for background in _BACKGROUNDS:
                flat = pdq_hash(_pdq_pixels(_flattened(img, background, "RGB"), True), with_quality=True,
                                dihedral=dihedral)
                if not (pdq.degenerate(flat[0][0] if dihedral else flat[0])[0] or pdq.low_quality(flat[1])):
                    (code, quality), flattened = flat, True
                    break
        return code, quality, flattened


def _hash_one(image, kind, fast, exif_transpose, with_detail, max_pixels, dihedral=False):
    """(hash, detail or quality or None, flattened); ImageHashError for any image that cannot be hashed."""
    name = _describe(image)
    img, owned = _open(image, name)
    try:
        _check_pixels(img, name, max_pixels)
        if kind == "pdq":
            return _hash_pdq_pil(img, fast, exif_transpose, dihedral, owned)
        return _hash_pil(img, kind, fast, exif_transpose, with_detail, owned)
    except ImageHashError:
        raise
    except Exception as e:          # any decoder failure is a property of this image
        raise ImageHashError(name, _explain(e)) from e
    finally:
        if owned:
            img.close()


def hash_image(image, kind="phash", fast=False, *, exif_transpose=False, with_detail=False,
               max_pixels=DEFAULT_MAX_PIXELS, with_quality=False, dihedral=False):
    """The perceptual hash of one image: an int (a uint64 value) for the 64-bit kinds, a
    uint8 array (32,) for "pdq".

    image: a path (str or os.PathLike), bytes/bytearray/memoryview holding an encoded
        file, a binary file object, or a PIL.Image (hashed as it is, current frame).
    kind: "phash", "dhash", "ahash" or "whash" (imagehash's functions with
        hash_size=8; whash is haar with remove_max_haar_ll=True), or "pdq" (Meta's
        256-bit PDQ, identical to python-threatexchange's PdqSignal.hash_from_file for
        RGB, RGBA, L and LA images; other modes are hashed as they look, docs/pdq.md).
    fast: False (default) is bit-exact with imagehash 4.3 / pdqhash (but see with_detail on
        flattening).  True decodes JPEGs at reduced scale (in greyscale for the 64-bit
        kinds; a big progressive one from fewer scans) and box-reduces large images first:
        several times faster on big JPEGs, at a cost of about 1 bit for the 64-bit kinds
        and a few for PDQ (docs/hashing.md, docs/pdq.md).
    exif_transpose: apply the EXIF orientation tag first.  Off by default because
        imagehash and python-threatexchange do not, so lists built with them hash the
        stored pixels.
    with_detail: return (hash, detail, flattened).  detail is the standard deviation
        of a 32x32 greyscale thumbnail (0-127.5): 0.0 for solid, blank and fully
        transparent images, whose hashes are degenerate (0000000000000000 or
        8000000000000000) and match each other.  flattened is True when the image has
        alpha and was hashed flattened onto white (or black) because its imagehash
        hash, which drops the alpha, is degenerate (kinds.py; e.g. a logo whose shape
        is only in the alpha channel); then, and only then, the hash is not imagehash's.
        For "pdq" detail is the quality (int 0-100, the reference's; python-threatexchange
        ignores hashes under 50), and the alpha is flattened when the hash is degenerate
        or its quality under 50 and the flattened one's is not.
    with_quality: "pdq" only: return (hash, quality).
    dihedral: "pdq" only: the hash is uint8 (8, 32), the eight hashes of the image rotated
        and flipped, in pdqhash.compute_dihedral's order (docs/pdq.md).
    max_pixels: images with more pixels are refused before decoding (None: only
        Pillow's own PIL.Image.MAX_IMAGE_PIXELS applies).  It bounds decoding memory, so a
        WebP pixel, which Pillow needs 18 bytes to decode instead of 5, counts 18/5 times,
        and a progressive JPEG pixel (up to 10 bytes) 10/5 times.

    Raises ImageHashError (a ValueError) naming the image and the reason when it
    cannot be read or decoded; TypeError if `image` is no kind of image source.
    """
    hash_kind = kind_of(kind)
    if (with_quality and hash_kind.score != "quality") or (dihedral and not hash_kind.dihedral):
        raise ValueError(f"with_quality= and dihedral= are for PDQ (kind='pdq'), not {kind!r}; "
                         "with_detail=True gives the 64-bit kinds' detail score")
    if with_quality and with_detail:
        raise ValueError("pass with_quality=True or with_detail=True, not both (with_detail's second "
                         "value is the quality too)")
    _check_input_type(image)
    code, detail, flattened = _hash_one(image, kind, fast, exif_transpose, with_detail, max_pixels, dihedral)
    if with_detail:
        return code, detail, flattened
    return (code, detail) if with_quality else code


def image_detail(image, fast=False, *, exif_transpose=False, max_pixels=DEFAULT_MAX_PIXELS):
    """How much visual detail an image has: the standard deviation (0-127.5) of its
    32x32 greyscale LANCZOS thumbnail; 0.0 for solid, blank or fully transparent
    images.  Hashes of images below ~2 carry little information (see docs/hashing.md)."""
    return hash_image(image, "phash", fast, exif_transpose=exif_transpose, with_detail=True,
                      max_pixels=max_pixels)[1]


# ---------------------------------------------------------------------------
# Many images, in worker processes
# ---------------------------------------------------------------------------

class HashResults:
    """Hashes of a batch, aligned with the input order.

    hashes: uint64 array (n,), for "pdq" uint8 (n, 32); zeros where the image failed (check
        ``ok``, not the value: 0 is also the hash of a black image).
    errors: list of None or the error message for that image.
    detail: float64 array of detail scores (for "pdq" the quality) when requested (NaN on
        failure), else None.
    quality: "pdq" only (else None): int16 array of PDQ qualities 0-100, -1 on failure.
    flattened: bool array, True where the image was hashed flattened (see hash_image).
    """

    __slots__ = ("hashes", "errors", "detail", "quality", "flattened")

    def __init__(self, hashes, errors, detail, flattened, quality=None):
        self.hashes = hashes
        self.errors = errors
        self.detail = detail
        self.quality = quality
        self.flattened = flattened

    @property
    def ok(self):
        """Boolean array: True where the image was hashed."""
        return np.array([e is None for e in self.errors], dtype=bool)

    @property
    def failed(self):
        """[(index, message), ...] for the images that could not be hashed."""
        return [(i, e) for i, e in enumerate(self.errors) if e is not None]

    def __len__(self):
        return len(self.errors)

    def __repr__(self):
        return f"HashResults({len(self)} images, {len(self.failed)} failed)"


def _job(image):
    """What crosses to a worker process: paths and bytes, never open files.  Plain str and
    bytes: a subclass defined in the caller's script would not unpickle in a worker, which
    does not import the script."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return str.__str__(os.fsdecode(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return image if type(image) is bytes else bytes(image)
    _check_input_type(image)
    data = image.read()             # a file object: read it here, hash it there
    if not data:
        return _Failed(f"cannot hash {_describe(image)}: empty input (0 bytes)")
    return data


def _hash_chunk(jobs, kind, fast, exif_transpose, with_detail, max_pixels):
    out = []
    for image in jobs:
        try:
            _check_input_type(image)
            out.append(_hash_one(image, kind, fast, exif_transpose, with_detail, max_pixels) + (None,))
        except (ImageHashError, TypeError) as e:
            out.append((0, None, False, str(e)))
        except Exception as e:      # never let one image stop the batch
            out.append((0, None, False, f"cannot hash {_describe(image)}: unexpected {type(e).__name__}: {e}"))
    return out


def _died(job):
    return 0, None, False, (f"cannot hash {_describe(job)}: the worker process died while decoding it "
                            "(decoder crash or out-of-memory kill); try a smaller max_pixels")


def iter_hash_images(images, kind="phash", workers=None, fast=False, *, exif_transpose=False,
                     with_detail=False, max_pixels=DEFAULT_MAX_PIXELS, chunksize=None,
                     mp_context=None):
    """Yield (hash, detail, flattened, error) per image, in input order, as results arrive.

    Streaming form of hash_images (for progress bars and very long inputs): the
    input may be any iterable; at most a few chunks per worker are in flight.
    For "pdq", detail is always the quality (it costs nothing) and a failed image's hash
    is 32 zero bytes.
    """
    bits = kind_of(kind).bits
    for code, detail, flattened, error in _iter_hashes(images, kind, workers, fast, exif_transpose, with_detail,
                                                       max_pixels, chunksize, mp_context):
        if error is not None and bits != 64:
            code = kind_of(kind).zeros(1)[0]       # (the workers' failure code is the int 0)
        yield code, detail, flattened, error


def _iter_hashes(images, kind, workers, fast, exif_transpose, with_detail, max_pixels, chunksize, mp_context):
    if workers is None:
        workers = available_cores()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int or None (all cores), got {workers!r}")
    args = (kind, fast, exif_transpose, with_detail, max_pixels)
    n = len(images) if hasattr(images, "__len__") else None
    if workers == 1 or (n is not None and n <= 1):
        for image in images:
            yield _hash_chunk([image], *args)[0]
        return
    if chunksize is not None:
        sizes = lambda done: chunksize          # noqa: E731
    elif n is None:
        sizes = lambda done: 16                 # noqa: E731  (16 amortises the IPC cost)
    else:
        # Chunks shrink as the input runs out, so the workers finish together
        # (with fixed chunks one could idle for a whole chunk at the end).
        sizes = lambda done: max(1, min(64, (n - done) // (workers * 4)))   # noqa: E731
    # The unit's meta marks where the inputs that failed already go; the jobs travel alone.
    units = (([j if isinstance(j, _Failed) else None for j in chunk],
              [j for j in chunk if not isinstance(j, _Failed)], nbytes) for chunk, nbytes in _chunks(images, sizes))
    for failed, results in run_in_workers(units, _hash_chunk, args, _died, workers, mp_context):
        it = iter(results)
        for f in failed:
            yield (0, None, False, f.message) if f is not None else next(it)


def _chunks(images, sizes):
    """(jobs, bytes of data) per chunk; sizes(done) is the most jobs in the chunk after `done`
    images.  A chunk closes early rather than pass CHUNK_BYTES, so a big file goes alone."""
    chunk, nbytes, done = [], 0, 0
    for image in images:
        try:
            job = _job(image)
        except Exception as e:      # unreadable file object, wrong type: this image only
            job = _Failed(f"cannot hash {_describe(image)}: {e}")
        size = len(job) if isinstance(job, bytes) else 0
        if chunk and nbytes + size > CHUNK_BYTES:
            done += len(chunk)
            yield chunk, nbytes
            chunk, nbytes = [], 0
        chunk.append(job)
        nbytes += size
        if len(chunk) >= sizes(done) or nbytes >= CHUNK_BYTES:
            done += len(chunk)
            yield chunk, nbytes
            chunk, nbytes = [], 0
    if chunk:
        yield chunk, nbytes


class _Failed:
    """An input that failed before it could be sent to a worker."""

    def __init__(self, message):
        self.message = message


# ---------------------------------------------------------------------------
# The worker pool, for hash_images and hashsieve.scan
# ---------------------------------------------------------------------------
# Each worker is a process with a pipe of its own and runs one chunk at a time (holding the
# next one if it is small), so a worker that dies (decoder crash, out-of-memory kill) loses
# only its own chunks: the one it ran is redone one job per task, so that only the job that
# kills a worker alone is reported, the one it held is redone as it was.  bytes travel as raw
# buffers beside a small pickle (protocol 5, out of band): neither side makes a pickled copy
# of a 256 MB archive member.

CHUNK_BYTES = 8 << 20                   # chunks close before passing this; a bigger job goes alone
INFLIGHT_BYTES_PER_WORKER = 32 << 20    # data pulled and not yet returned, beyond one chunk
# A worker decodes an image whose _decode_cost is more than BIG_DECODE_BYTES only once the
# pool lets it, and the pool lets such images decode together only while their costs add up
# to at most BIG_DECODES_BYTES (one always may): that memory does not grow with the workers.
BIG_DECODE_BYTES = 80 << 20                                 # 16.8 MP at 5 bytes a pixel
BIG_DECODES_BYTES = _COST_PER_PIXEL * DEFAULT_MAX_PIXELS    # the largest image allowed by default

_pool_conn = None           # in a pool worker: its pipe to the pool


@contextlib.contextmanager
def _decoding_turn(img, kind=None):
    cost = _decode_cost(img, kind)
    if _pool_conn is None or cost <= BIG_DECODE_BYTES:
        yield
        return
    _pool_conn.send(("turn", cost))
    while (msg := _pool_conn.recv()) != "go":      # the pool's go-ahead; a queued chunk may come first
        _stashed.append(_receive_chunk(_pool_conn, msg))
    try:
        yield
    finally:
        _pool_conn.send(("done",))


# Worker processes are named so; the fork server (hashsieve._worker) starts them without
# importing the caller's __main__.
WORKER_NAME = "hashsieve-worker"
# The exit code of a "spawn" worker that found the caller's script calling the pool again
# while the worker imported it: the pool then raises _UNGUARDED instead of reporting deaths.
_UNGUARDED_EXIT = 87
_UNGUARDED = ("the worker processes import the calling script again (as the 'spawn' start method does) and "
              "it starts hashing at its top level; put that code under `if __name__ == \"__main__\":`, or "
              "use the default start method (forkserver), which needs no guard")


def _mp_context(name=None):
    import multiprocessing as mp
    if name is None:
        # forkserver: workers fork from a clean single-threaded server, so threads
        # in the caller (tqdm, native index pools, OpenMP) cannot deadlock them.
        name = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(name)
    if name == "forkserver":
        # Import and warm up once in the server instead of once per worker.
        ctx.set_forkserver_preload(["hashsieve._worker"])
    return ctx


def _worker_main(conn, parent_pid, fn, args):
    """A worker process: fn(jobs, *args) on each chunk received; the list of results goes back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's business
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Decoders' warnings (Pillow's on palette transparency, corrupt EXIF ...) would reach the
    # user's terminal once per worker; what matters about a file is in its result.
    warnings.simplefilter("ignore")
    # With forkserver the workers are not the caller's children: if it is killed (SIGKILL,
    # OOM) nobody tells a busy worker to stop, so each watches the caller's pid.
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    global _pool_conn
    _pool_conn = conn
    while True:
        try:
            chunk = _stashed.popleft() if _stashed else _receive_chunk(conn, conn.recv())
        except EOFError:            # the pool is gone
            return
        if chunk is None:           # the pool is done with us
            return
        conn.send(fn(pickle.loads(chunk[0], buffers=chunk[1]), *args))
        del chunk


_stashed = deque()          # in a pool worker: chunks that came while it waited for a decoding turn


def _receive_chunk(conn, msg):
    """(pickle, buffers) of the chunk whose first message is msg, or None for "stop"."""
    if msg is None:
        return None
    count, head = msg
    return head, [conn.recv_bytes() for _ in range(count)]


def _watch_parent(pid):
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except OSError:
            pass


# A worker gets a second chunk while it runs one (so it need not wait for the parent between
# chunks) only if that chunk is paths and fits in the pipe's buffer: file data or images
# would block the parent until the worker reads them.
_QUEUED_CHUNK_BYTES = 32 << 10


class _Worker:
    __slots__ = ("proc", "conn", "tasks", "turn")

    def __init__(self, ctx, fn, args):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), fn, args), daemon=True,
                                name=WORKER_NAME)
        self.proc.start()
        child.close()
        # [unit, indices of its jobs, result if it dies on this one-job task]: running, then queued
        self.tasks = deque()
        self.turn = 0               # the cost of the big image it has leave to decode

    def stop(self):
        """Start ending the process: an idle one is told to exit, a busy one is terminated."""
        if self.tasks:
            self.proc.terminate()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass                # already gone
        self.conn.close()

    def join(self):
        self.proc.join(2)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()


class _Turns:
    """The pool's side of _decoding_turn: the cost of the big images decoding, workers waiting."""

    def __init__(self, budget):
        self.budget, self.used, self.waiting = budget, 0, deque()

    def ask(self, w, cost):
        self.waiting.append((w, cost))
        self._grant()

    def done(self, w):
        self.used -= w.turn
        w.turn = 0
        self._grant()

    def lost(self, w):
        self.waiting = deque(x for x in self.waiting if x[0] is not w)
        self.done(w)

    def _grant(self):
        while self.waiting and (not self.used or self.used + self.waiting[0][1] <= self.budget):
            w, w.turn = self.waiting.popleft()
            self.used += w.turn
            try:
                w.conn.send("go")
            except OSError:
                pass                # it died: lost() gives the turn back when that is seen


class _Unit:
    __slots__ = ("meta", "jobs", "nbytes", "results", "missing")

    def __init__(self, meta, jobs, nbytes):
        # The list itself, not a copy: entries dropped here are dropped for its maker too.
        self.meta, self.jobs, self.nbytes = meta, jobs, nbytes
        self.results = [None] * len(self.jobs)
        self.missing = len(self.jobs)


def run_in_workers(units, fn, args, died, workers, mp_context=None, max_bytes=None, stop=None):
    """Run fn on chunks of jobs in worker processes; yield (meta, results) per unit, in input order.

    units: iterable of (meta, jobs, nbytes): jobs a list (the pool sets a job to None once a
        worker has it alone), nbytes what the jobs weigh in memory (bytes held here and sent, or
        files a worker reads).  A unit without jobs is yielded as (meta, []) in its turn.
    fn(jobs, *args): runs in a worker (a module-level function), one result per job.
    died(job): the result for a job alone in a worker that died (decoder crash, out-of-memory
        kill); a chunk whose worker died is redone one job per task first.
    max_bytes: units pulled and not yet yielded hold at most this much data beyond the one unit
        that is always let through (default INFLIGHT_BYTES_PER_WORKER x workers); a one-job
        unit's data is dropped here once its worker has it.
    stop: a threading.Event; once set, nothing more is yielded and the workers are ended.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait
    if getattr(mp.current_process(), "_inheriting", False):
        # A "spawn" worker importing the caller's script, which calls us at its top level:
        # starting a pool here would fail in every worker; say so to the pool that started us.
        os._exit(_UNGUARDED_EXIT)
    ctx = _mp_context(mp_context)
    max_bytes = INFLIGHT_BYTES_PER_WORKER * workers if max_bytes is None else max_bytes
    units = iter(units)
    order = deque()             # units pulled and not yet yielded, in input order
    ready = deque()             # [unit, indices, None] waiting for a worker
    held = chunks = 0           # data and number of the units in `order` that have jobs
    more = True
    turns = _Turns(BIG_DECODES_BYTES)
    pool = [_Worker(ctx, fn, args) for _ in range(workers)]
    try:
        while True:
            while more and chunks < 3 * workers and len(order) < 1024 and (held < max_bytes or not chunks):
                unit = next(units, None)
                if unit is None:
                    more = False
                    break
                unit = _Unit(*unit)
                order.append(unit)
                if unit.jobs:
                    held += unit.nbytes
                    chunks += 1
                    ready.append([unit, range(len(unit.jobs)), None])
            for k, w in enumerate(pool):
                if not w.tasks and ready:
                    if not w.proc.is_alive():
                        w.stop()
                        w.join()
                        _check_start(w)
                        w = pool[k] = _Worker(ctx, fn, args)
                    _dispatch(w, ready.popleft(), died)
            for w in pool:
                if len(w.tasks) == 1 and ready and _dispatch(w, ready[0], died):
                    ready.popleft()
            while order and not order[0].missing:
                if stop is not None and stop.is_set():
                    return
                unit = order.popleft()
                if unit.jobs:
                    held -= unit.nbytes
                    chunks -= 1
                yield unit.meta, unit.results
            if not order and not more:
                return
            if stop is not None and stop.is_set():
                return
            busy = {}
            for w in pool:
                if w.tasks:
                    busy[w.conn] = busy[w.proc.sentinel] = w
            for obj in wait(list(busy), timeout=0.2):
                w = busy[obj]
                if not w.tasks:
                    continue            # its pipe and its sentinel were both ready
                try:
                    if not w.conn.poll():
                        raise EOFError  # the sentinel: the process is gone
                    results = w.conn.recv()
                except (EOFError, OSError):
                    turns.lost(w)
                    _lost(w, ready, died)
                    w.stop()
                    w.join()
                    _check_start(w)
                    pool[pool.index(w)] = _Worker(ctx, fn, args)
                    continue
                if isinstance(results, tuple):      # from _decoding_turn
                    if results[0] == "turn":
                        turns.ask(w, results[1])
                    else:
                        turns.done(w)
                    continue
                unit, idx, _ = w.tasks.popleft()
                _fill(unit, idx, results)
                if w.tasks:
                    _started(w, died)
    finally:
        for w in pool:
            w.stop()
        for w in pool:              # (after all were told: they end together)
            w.join()


def _check_start(w):
    if w.proc.exitcode == _UNGUARDED_EXIT:
        raise RuntimeError(_UNGUARDED) from None


def _message(jobs):
    """The chunk's pickle (bytes out of band, as raw buffers) and its size in bytes."""
    buffers = []
    head = pickle.dumps([pickle.PickleBuffer(j) if isinstance(j, (bytes, bytearray)) else j for j in jobs],
                        protocol=5, buffer_callback=buffers.append)
    return head, buffers, len(head) + sum(b.raw().nbytes for b in buffers)


def _dispatch(w, task, died):
    """Send the task to w (idle, or running one task if this chunk is small); False if too big."""
    unit, idx, _ = task
    jobs = [unit.jobs[i] for i in idx]
    if w.tasks and any(isinstance(j, (bytes, bytearray, Image.Image)) for j in jobs):
        return False
    head, buffers, size = _message(jobs)
    if w.tasks and size > _QUEUED_CHUNK_BYTES:
        return False
    w.tasks.append(task)
    try:
        w.conn.send((len(buffers), head))
        for b in buffers:
            w.conn.send_bytes(b)
    except OSError:                 # it died: the wait loop sees it
        return True
    if len(w.tasks) == 1:
        _started(w, died)
    return True


def _started(w, died):
    """w.tasks[0] is running now: a one-job task's data is dropped here, the worker has it."""
    unit, idx, _ = task = w.tasks[0]
    if len(idx) == 1:
        task[2] = died(unit.jobs[idx[0]])
        unit.jobs[idx[0]] = None    # if the worker dies now, this job is the culprit


def _lost(w, ready, died):
    """The worker died: its running one-job task gets its died() result, a running chunk is
    split into one-job tasks, a queued chunk is redone as it was."""
    (unit, idx, if_died), queued = w.tasks[0], list(w.tasks)[1:]
    w.tasks.clear()
    ready.extendleft(reversed(queued))
    if len(idx) == 1:
        _fill(unit, idx, [if_died or died(unit.jobs[idx[0]])])     # (its data is here if it never started)
    else:
        ready.extendleft([unit, [i], None] for i in reversed(idx))


def _fill(unit, idx, results):
    for i, r in zip(idx, results):
        unit.results[i] = r
    unit.missing -= len(idx)


def hash_images(images, kind="phash", workers=None, fast=False, *, exif_transpose=False,
                with_detail=False, max_pixels=DEFAULT_MAX_PIXELS, chunksize=None, mp_context=None):
    """Hash many images in parallel worker processes; one bad image never stops the batch.

    images: any iterable of what hash_image accepts (paths are best: workers read
        the files themselves; file objects are read here and sent as bytes).
    workers: processes to use; None = all available cores, 1 = in this process.
        Worker processes fork from a "forkserver" and do not import the calling
        script again, so a script needs no ``if __name__ == "__main__":`` guard.
        With mp_context="spawn" (the only method on Windows) it does: without it,
        RuntimeError says so.
    Other arguments as hash_image.

    Returns HashResults: ``.hashes`` (uint64 array in input order, 0 on failure; for "pdq"
    uint8 (n, 32) and ``.quality``), ``.errors`` (None or a message naming the image), ``.ok``,
    ``.failed``, ``.flattened`` and, with with_detail=True, ``.detail``.
    """
    hashes, errors, details, flattened = [], [], [], []
    for code, detail, flat, error in iter_hash_images(
            images, kind, workers, fast, exif_transpose=exif_transpose, with_detail=with_detail,
            max_pixels=max_pixels, chunksize=chunksize, mp_context=mp_context):
        hashes.append(code)
        errors.append(error)
        details.append(np.nan if detail is None else detail)
        flattened.append(flat)
    details = np.array(details, dtype=np.float64)
    quality = None
    if kind_of(kind).score == "quality":
        quality = np.where(np.isnan(details), -1, details).astype(np.int16)
    return HashResults(kind_of(kind).as_codes(hashes), errors, details if with_detail else None,
                       np.array(flattened, dtype=bool), quality)
