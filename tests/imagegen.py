"""Synthetic, seeded test images: scenes, encodings, near-duplicates and broken files.

Everything is generated from numpy's seeded RNG and Pillow: nothing is
downloaded, and the same seed always gives the same bytes (for one Pillow
version).  Reused by tests/test_hashing.py and bench/bench_hashing.py.

    scene(name, width, height, seed)  -> PIL RGB image
    photo(width, height, seed)        -> photo-like RGB image (the default scene for benchmarks)
    camera_photo(width, height, seed) -> large photo-like image with detail at every scale
    corpus(seed, n_scenes)            -> [(name, encoded bytes)] covering every format and mode
    variants(image, seed)             -> {name: near-duplicate PIL image}
    broken_files()                    -> {name: bytes} that must fail to hash
    zip_bytes(entries)                -> a zip archive of [(name, bytes)]
"""
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SCENES = ("gradient", "radial", "shapes", "text", "noise", "clouds", "photo", "stripes",
          "checker", "landscape")

_WORDS = ("hash", "sieve", "image", "match", "perceptual", "screen", "index", "radius",
          "quartz", "jumbo", "vexing", "zephyr", "9876", "2024", "#@!", "Lorem ipsum")


def _rng(seed):
    return np.random.default_rng(seed)


def _smooth_noise(rng, w, h, cells, channels=3):
    """Bicubic-upsampled low-resolution noise: soft blobs at the scale of `cells`."""
    cw, ch = max(2, w // cells), max(2, h // cells)
    small = rng.integers(0, 256, (ch, cw, channels), dtype=np.uint8)
    img = Image.fromarray(small.squeeze() if channels == 1 else small)
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64)


def _fractal(rng, w, h, octaves=5):
    """1/f-like texture: a sum of smooth noise at halving scales (photos have ~1/f spectra)."""
    out = np.zeros((h, w, 3))
    amp, cells, total = 1.0, max(w, h) // 2, 0.0
    for _ in range(octaves):
        out += amp * (_smooth_noise(rng, w, h, max(1, cells)) - 128)
        total += amp
        amp *= 0.55
        cells = max(1, cells // 2)
    return out / total


def _to_img(arr):
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _gradient(rng, w, h):
    ang = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:h, 0:w]
    t = (x * np.cos(ang) + y * np.sin(ang))
    t = (t - t.min()) / max(1e-9, np.ptp(t))
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return _to_img(c0 + t[..., None] * (c1 - c0))


def _radial(rng, w, h):
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    y, x = np.mgrid[0:h, 0:w]
    r = np.hypot(x - cx, y - cy) / max(w, h)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (np.sin(r * rng.uniform(3, 20)) + 1) / 2
    return _to_img(c0 + t[..., None] * (c1 - c0))


def _shapes(rng, w, h):
    img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 15))):
        x0, x1 = sorted(rng.integers(-w // 4, w + w // 4, 2))
        y0, y1 = sorted(rng.integers(-h // 4, h + h // 4, 2))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            d.rectangle([x0, y0, x1, y1], fill=col)
        elif shape == 1:
            d.ellipse([x0, y0, x1, y1], fill=col)
        else:
            pts = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(3)]
            d.polygon(pts, fill=col)
    return img


def _text(rng, w, h):
    bg = tuple(int(v) for v in rng.integers(150, 256, 3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        size = int(rng.integers(8, max(9, h // 4)))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:             # Pillow without FreeType sizes
            font = ImageFont.load_default()
        word = " ".join(rng.choice(_WORDS, int(rng.integers(1, 4))))
        xy = (int(rng.integers(-w // 8, w)), int(rng.integers(-h // 8, h)))
        d.text(xy, word, fill=tuple(int(v) for v in rng.integers(0, 120, 3)), font=font)
    return img


def _noise(rng, w, h):
    if rng.integers(0, 2):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    base = rng.uniform(40, 200)
    return _to_img(base + rng.normal(0, rng.uniform(5, 60), (h, w, 3)))


def _clouds(rng, w, h):
    t = _fractal(rng, w, h, octaves=4)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    g = (t.mean(axis=2) + 128) / 256
    return _to_img(c0 + g[..., None] * (c1 - c0))


def _photo(rng, w, h):
    """Colour 1/f texture + soft lighting + a few blurred objects + sensor noise."""
    arr = 128 + 1.6 * _fractal(rng, w, h)
    y, x = np.mgrid[0:h, 0:w]
    lx, ly = rng.uniform(0, w), rng.uniform(0, h)
    light = 1.25 - 0.6 * np.hypot(x - lx, y - ly) / np.hypot(w, h)
    arr = arr * light[..., None] * rng.uniform(0.7, 1.2, 3)
    img = _to_img(arr)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 6))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        rx, ry = int(rng.integers(w // 20 + 1, w // 3 + 2)), int(rng.integers(h // 20 + 1, h // 3 + 2))
        d.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 300))
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, 3, (h, w, 3))
    return _to_img(arr)


def _stripes(rng, w, h):
    period = rng.uniform(2, max(3, min(w, h) / 3))
    ang = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w]
    t = (np.sin((x * np.cos(ang) + y * np.sin(ang)) * 2 * np.pi / period) > 0).astype(float)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return _to_img(c0 + t[..., None] * (c1 - c0))


def _checker(rng, w, h):
    cell = int(rng.integers(1, max(2, min(w, h) // 2)))
    y, x = np.mgrid[0:h, 0:w]
    t = ((x // cell + y // cell) % 2).astype(float)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    return _to_img(c0 + t[..., None] * (c1 - c0))


def _landscape(rng, w, h):
    y = np.arange(h)[:, None] / max(1, h - 1)
    sky0, sky1 = rng.integers(100, 256, 3), rng.integers(0, 200, 3)
    arr = np.broadcast_to(sky0 + y[..., None] * (sky1 - sky0), (h, w, 3)).copy()
    for layer in range(int(rng.integers(1, 4))):
        walk = np.cumsum(rng.normal(0, h / 60, w)) + h * rng.uniform(0.3, 0.8)
        ground = np.arange(h)[:, None] > walk[None, :]
        col = rng.integers(0, 200, 3)
        tex = _smooth_noise(rng, w, h, max(2, w // 40))[..., 0:1] / 255 * 60 - 30
        arr = np.where(ground[..., None], col + tex, arr)
    return _to_img(arr)


_SCENE_FUNCS = dict(gradient=_gradient, radial=_radial, shapes=_shapes, text=_text, noise=_noise,
                    clouds=_clouds, photo=_photo, stripes=_stripes, checker=_checker,
                    landscape=_landscape)


def scene(name, width, height, seed=0):
    """One synthetic RGB scene; `name` is one of SCENES."""
    return _SCENE_FUNCS[name](_rng(seed), int(width), int(height))


def photo(width, height, seed=0):
    return scene("photo", width, height, seed)


def camera_photo(width, height, seed=0, name="photo"):
    """A large photo-like RGB image with detail at every scale, as a camera stores one: the scene
    rendered at half size and upscaled, plus fine texture (~3 px) and per-pixel sensor grain at
    full size.  int16 arithmetic: a 17 MP image needs ~150 MB and a few seconds."""
    rng = _rng(seed)
    w2, h2 = (width + 1) // 2, (height + 1) // 2
    arr = np.asarray(scene(name, w2, h2, seed).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    fine = Image.fromarray(rng.integers(0, 256, (height // 3 + 1, width // 3 + 1), dtype=np.uint8))
    texture = np.asarray(fine.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16) - 128
    arr += (texture >> 2)[..., None] + rng.integers(-4, 5, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def camera_exif(orientation=1):
    """EXIF a camera writes: make, model, date and the orientation tag."""
    exif = _exif_orientation(orientation)
    exif[0x010F], exif[0x0110], exif[0x0132] = "Synthetic", "hashsieve camera", "2026:12:01 10:00:00"
    return exif


# ---------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------

def encode(img, fmt, **params):
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def zip_bytes(entries):
    """A zip archive of [(member name, bytes)], in that order (repeated names kept)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


def _png_raw(width, height, bit_depth, color_type, rows):
    """A PNG written by hand, for layouts Pillow cannot save (16-bit RGB) or lies."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    raw = b"".join(b"\x00" + r for r in rows)        # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def png16_rgb(img, seed=0):
    """16-bit-per-channel RGB PNG (Pillow reads it as 8-bit RGB)."""
    a = np.asarray(img.convert("RGB"), dtype=np.uint16) * 257
    a = a + _rng(seed).integers(0, 200, a.shape, dtype=np.uint16)   # use the low byte too
    be = a.astype(">u2")
    return _png_raw(img.width, img.height, 16, 2, [be[i].tobytes() for i in range(img.height)])


def _exif_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def _quantize(img, colors):
    # Fast octree: Pillow's default median cut costs ~0.15 s per image.
    return img.quantize(colors, method=Image.Quantize.FASTOCTREE)


def _encodings(img, rng):
    """[(suffix, make_bytes)] for img in every format and mode we promise to handle.

    Encoders run lazily so callers pay only for the encodings they keep."""
    rgb = img.convert("RGB")
    grey = rgb.convert("L")
    rgba = rgb.copy()
    alpha = np.asarray(grey.filter(ImageFilter.GaussianBlur(3)))
    rgba.putalpha(Image.fromarray(alpha))
    q = int(rng.integers(60, 96))
    seed16 = int(rng.integers(0, 1 << 30))
    out = [
        ("jpg", lambda: encode(rgb, "JPEG", quality=q)),
        ("progressive.jpg", lambda: encode(rgb, "JPEG", quality=q, progressive=True, subsampling=0)),
        ("grey.jpg", lambda: encode(grey, "JPEG", quality=q)),
        ("cmyk.jpg", lambda: encode(rgb.convert("CMYK"), "JPEG", quality=q)),
        ("exif6.jpg", lambda: encode(rgb, "JPEG", quality=q, exif=_exif_orientation(6))),
        ("png", lambda: encode(rgb, "PNG")),
        ("rgba.png", lambda: encode(rgba, "PNG")),
        ("grey.png", lambda: encode(grey, "PNG")),
        ("la.png", lambda: encode(rgba.convert("LA"), "PNG")),
        ("palette.png", lambda: encode(_quantize(rgb, 64), "PNG")),
        ("palette-trns.png", lambda: encode(_quantize(rgba, 32), "PNG", transparency=0)),
        ("grey16.png", lambda: encode(Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257 // 300), "PNG")),
        ("rgb16.png", lambda: png16_rgb(rgb, seed16)),
        ("bilevel.png", lambda: encode(grey.convert("1"), "PNG")),
        ("gif", lambda: encode(_quantize(rgb, 256), "GIF")),
        ("anim.gif", lambda: encode(_quantize(rgb, 128), "GIF", save_all=True,
                                    append_images=[_quantize(rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 128),
                                                   _quantize(grey.convert("RGB"), 64)],
                                    duration=100)),
        ("webp", lambda: encode(rgb, "WEBP", quality=q, method=0)),
        ("lossless.webp", lambda: encode(rgba, "WEBP", lossless=True, method=0)),
        ("bmp", lambda: encode(rgb, "BMP")),
        ("palette.bmp", lambda: encode(rgb.convert("P"), "BMP")),
        ("tif", lambda: encode(rgb, "TIFF", compression="tiff_lzw")),
        ("cmyk.tif", lambda: encode(rgb.convert("CMYK"), "TIFF")),
        ("grey16.tif", lambda: encode(Image.fromarray(np.asarray(grey, dtype=np.uint16) * 3), "TIFF")),
        ("rgba.tif", lambda: encode(rgba, "TIFF", compression="tiff_deflate")),
    ]
    return out


# Sizes: mostly small (fast tests), some odd, a few tiny, degenerate and wide.
_SIZES = ((64, 64), (96, 72), (128, 96), (200, 150), (256, 256), (333, 211), (160, 240),
          (500, 375), (37, 53), (640, 480), (1000, 17), (17, 700))


def corpus(seed=0, n_scenes=40):
    """[(filename, bytes)]: n_scenes scenes, each in every format/mode, plus edge cases.

    Every entry is an encoded file as it would sit in an archive.  The first
    scene of each kind cycles through all encodings; later ones use a random
    subset so the corpus stays fast to hash.
    """
    rng = _rng(seed)
    files = []
    for i in range(n_scenes):
        name = SCENES[i % len(SCENES)]
        w, h = _SIZES[int(rng.integers(0, len(_SIZES)))]
        img = scene(name, w, h, seed=int(rng.integers(0, 1 << 31)))
        encs = _encodings(img, rng)
        if i >= len(SCENES):
            keep = rng.choice(len(encs), size=8, replace=False)
            encs = [encs[k] for k in sorted(keep)]
        files += [(f"{i:03d}-{name}-{w}x{h}.{suffix}", make()) for suffix, make in encs]
    files += edge_cases(seed)
    return files


def _upscale(img, factor, rng):
    """A large image cheaply: bicubic upscale plus fresh fine grain."""
    big = img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC)
    grain = rng.integers(-6, 7, (big.height, big.width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(big, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def edge_cases(seed=0):
    """Tiny, solid, blank, transparent and large images that must still hash."""
    rng = _rng(seed + 1)
    out = [
        ("edge-1x1.png", encode(Image.new("RGB", (1, 1), (200, 10, 30)), "PNG")),
        ("edge-1x1.jpg", encode(Image.new("RGB", (1, 1), (200, 10, 30)), "JPEG")),
        ("edge-2x3.gif", encode(scene("noise", 2, 3, 5), "GIF")),
        ("edge-7x5.bmp", encode(scene("shapes", 7, 5, 6), "BMP")),
        ("edge-black.png", encode(Image.new("L", (64, 48), 0), "PNG")),
        ("edge-white.jpg", encode(Image.new("RGB", (80, 60), (255, 255, 255)), "JPEG")),
        ("edge-grey.png", encode(Image.new("RGB", (50, 50), (128, 128, 128)), "PNG")),
        ("edge-transparent.png", encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")),
        ("edge-transparent-colour.png", encode(Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "PNG")),
        ("edge-large.jpg", encode(_upscale(photo(750, 500, int(rng.integers(0, 1 << 31))), 4, rng),
                                  "JPEG", quality=85)),
        ("edge-large.png", encode(_upscale(scene("landscape", 512, 384, int(rng.integers(0, 1 << 31))), 4, rng),
                                  "PNG", compress_level=1)),
        ("edge-hgrad.png", encode(Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (40, 1))), "PNG")),
        ("edge-vgrad.png", encode(Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[:, None], (1, 90))),
                                  "PNG")),
    ]
    sym = np.asarray(scene("clouds", 64, 64, 9))
    out.append(("edge-mirror.png", encode(Image.fromarray(np.concatenate([sym, sym[:, ::-1]], 1)), "PNG")))
    return out


# ---------------------------------------------------------------------------
# Near-duplicates
# ---------------------------------------------------------------------------

def _brighten(img, factor):
    a = np.asarray(img.convert("RGB"), dtype=np.float64) * factor
    return _to_img(a)


def _crop(img, frac):
    w, h = img.size
    dx, dy = int(round(w * frac)), int(round(h * frac))
    return img.crop((dx, dy, w - dx, h - dy))


def _reencode(img, quality):
    return Image.open(io.BytesIO(encode(img.convert("RGB"), "JPEG", quality=quality))).convert("RGB")


VARIANTS = ("resize-50%", "resize-200%", "jpeg-q50", "crop-2%", "crop-5%", "brighten+10%",
            "brighten+25%", "darken-15%")


def variants(img):
    """{name: near-duplicate} for one original (names as VARIANTS)."""
    w, h = img.size
    return {
        "resize-50%": img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR),
        "resize-200%": img.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "jpeg-q50": _reencode(img, 50),
        "crop-2%": _crop(img, 0.02),
        "crop-5%": _crop(img, 0.05),
        "brighten+10%": _brighten(img, 1.10),
        "brighten+25%": _brighten(img, 1.25),
        "darken-15%": _brighten(img, 0.85),
    }


# ---------------------------------------------------------------------------
# Files that must fail
# ---------------------------------------------------------------------------

def png_bomb(width=100_000, height=100_000):
    """A tiny PNG whose header claims width x height grey pixels (one row of data)."""
    return _png_raw(width, height, 8, 0, [bytes(min(width, 1 << 16))])


def broken_files(seed=0):
    """{name: bytes} that are not hashable images, each for a different reason."""
    good_jpg = encode(photo(320, 240, seed), "JPEG", quality=90)
    good_png = encode(scene("shapes", 320, 240, seed), "PNG")
    return {
        "empty.jpg": b"",
        "truncated.jpg": good_jpg[: len(good_jpg) // 2],
        "truncated.png": good_png[: len(good_png) // 2],
        "header-only.png": good_png[:40],
        "text.jpg": b"this is not an image, just text pretending\n" * 20,
        "random.bin": _rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "html.png": b"<!DOCTYPE html><html><body>404 not found</body></html>",
        "bomb.png": png_bomb(),
    }
