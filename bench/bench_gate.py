"""Which hashes carry identity, and which gate keeps their matches (issue 11, items 1-2).

    .venv/bin/python bench/bench_gate.py [--ordinary 300 --seed 11 --kinds phash,dhash,ahash,whash]

Synthetic, seeded image families (nothing is downloaded):
  ordinary      photo-like tests/imagegen.py scenes (photo, landscape, clouds, shapes, text, radial, noise)
  pattern       imagegen's own stripes (any angle) and checkerboards
  mirror        ordinary scenes made left-right or top-bottom symmetric
  low-contrast  ordinary scenes scaled so the detail score is c (0.25-3 grey levels), like a dim wallpaper
  striped       horizontal or vertical bands (flags), 2-6 colours, equal or random widths
  emblem-flag   striped plus a small disc or rectangle (a flag with an emblem)
  gradient      two-colour linear gradients, horizontal, vertical or at an angle
  solid         solid colours (PNG and JPEG), white, black, fully transparent
  near-solid    solid + sensor noise (sigma 0.5-4), PNG or JPEG q50-90
  alpha-only    LA, P+tRNS and RGBA images whose shape is only in the alpha channel

Half of each family's originals are "listed" (their hashes form the list, as a
hotline's list would); the uploads are 7 modified copies of every original
(resize 50%, resize 90% + JPEG q75, JPEG q50, JPEG q75, crop 3%, brightness
+15% and -15%) plus the unlisted originals.  An upload/list pair within the
kind's default radius is a true match when both come from one original, a false
match otherwise.  Each candidate gate refuses a pair when either side is
"degenerate" by its rule (rules on the detail score apply to the upload only:
a list holds only hashes).

Printed (markdown) and written to --out (JSON, default bench/results/gate.json):
  families      detail score and popcount of each family's hashes, per kind
  identity      copies within the radius of their own original, unrelated originals within it
  rules         per kind and candidate gate: copies still matched, false pairs and uploads
                with a false match, and how crowded the refused identity images' hashes are
  item 1        uploads matching a solid / alpha-only entry (0000000000000000 and the like)
  item 2        low-contrast copies matched, by contrast
  radius        the popcount bound tied to the radius in use, or fixed, at other radii
  alpha         alpha-only images hashed as imagehash does (alpha dropped), flattened onto
                white or black always, or only when the imagehash hash is degenerate; and
                whether each stays equal to imagehash on opaque and partly transparent RGBA
The recommended gate (degenerate() below): a hash is degenerate when its bits are
one-dimensional (see bits_from_one_dimensional) or its popcount is <= r or >= 64 - r,
r the radius (it would then match a 0000000000000000 or ffffffffffffffff entry).
"""
import argparse
import io
import os
import sys
import time
import warnings

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, HERE)

import harness  # noqa: E402
import imagegen  # noqa: E402
from hashsieve.hashing import hash_image  # noqa: E402
from hashsieve.kinds import KINDS  # noqa: E402
from hashsieve.scan import LOW_DETAIL_THRESHOLD  # noqa: E402

DEFAULT_RADIUS = {name: kind.default_radius for name, kind in KINDS.items()}


def imagehash_way(img, kind, **kw):
    """The hash exactly as imagehash computes it: alpha dropped by the greyscale conversion.
    (hash_image itself flattens an image with alpha whose hash that way is degenerate.)"""
    return hash_image(img.convert("L") if has_alpha(img) else img, kind, **kw)

PHOTO_SCENES = ("photo", "landscape", "clouds", "shapes", "text", "radial", "noise")
SIZES = ((160, 120), (128, 128), (200, 150), (120, 160), (256, 192), (150, 100))
CONTRASTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
COPIES = ("resize-50%", "resize-90%+jpeg-q75", "jpeg-q50", "jpeg-q75", "crop-3%", "brighten+15%", "darken-15%")
# Families whose images carry identity (a gate must keep their copies' matches) and those
# that carry none by construction (one-dimensional or flat: their copies' matches are worthless).
IDENTITY = ("ordinary", "pattern", "mirror", "low-contrast")
NO_IDENTITY = ("striped", "emblem-flag", "gradient", "solid", "near-solid", "alpha-only")


def popcount(codes):
    return np.bitwise_count(np.asarray(codes, dtype=np.uint64)).astype(np.int64)


def bit_matrix(codes):
    """(n, 8, 8) bools, row-major with the first bit most significant (hashsieve's layout)."""
    b = np.asarray(codes, dtype=">u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(b, axis=1).reshape(-1, 8, 8).astype(bool)


# ---------------------------------------------------------------------------
# Image families
# ---------------------------------------------------------------------------

def _colour(rng):
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _size(rng):
    return SIZES[int(rng.integers(0, len(SIZES)))]


def _jpeg(img, q):
    return Image.open(io.BytesIO(imagegen.encode(img.convert("RGB"), "JPEG", quality=q))).convert("RGB")


def _bands(rng, w, h):
    horizontal = bool(rng.integers(0, 2))
    n = int(rng.integers(2, 7))
    length = h if horizontal else w
    if rng.integers(0, 2):
        edges = np.linspace(0, length, n + 1).round().astype(int)
    else:
        cuts = np.sort(rng.choice(np.arange(1, length), n - 1, replace=False))
        edges = np.concatenate([[0], cuts, [length]])
    palette = [_colour(rng) for _ in range(int(rng.integers(2, n + 1)))]
    a = np.zeros((h, w, 3), np.uint8)
    for i in range(n):
        col = palette[i % len(palette)]
        if horizontal:
            a[edges[i]:edges[i + 1]] = col
        else:
            a[:, edges[i]:edges[i + 1]] = col
    return Image.fromarray(a), f"{'horizontal' if horizontal else 'vertical'} {n} bands"


def _striped(rng):
    return _bands(rng, *_size(rng))


def _emblem_flag(rng):
    w, h = _size(rng)
    img, what = _bands(rng, w, h)
    d = ImageDraw.Draw(img)
    cx, cy, r = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.08, 0.2) * min(w, h)
    if rng.integers(0, 2):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng))
        return img, what + " + disc"
    d.rectangle([0, 0, int(w * rng.uniform(0.25, 0.5)), int(h * rng.uniform(0.25, 0.55))], fill=_colour(rng))
    return img, what + " + canton"


def _gradient(rng):
    w, h = _size(rng)
    kind = ("horizontal", "vertical", "angle")[int(rng.integers(0, 3))]
    ang = {"horizontal": 0.0, "vertical": np.pi / 2}.get(kind, rng.uniform(0, 2 * np.pi))
    y, x = np.mgrid[0:h, 0:w]
    t = x * np.cos(ang) + y * np.sin(ang)
    t = (t - t.min()) / max(1e-9, np.ptp(t))
    c0, c1 = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray(np.clip(c0 + t[..., None] * (c1 - c0), 0, 255).round().astype(np.uint8)), kind


def _solid(rng):
    w, h = _size(rng)
    k = int(rng.integers(0, 5))
    if k == 0:
        return Image.new("RGBA", (w, h), _colour(rng) + (0,)), "fully transparent"
    if k == 1:
        return Image.new("RGB", (w, h), (255, 255, 255) if rng.integers(0, 2) else (0, 0, 0)), "white or black"
    if k == 2:
        return _jpeg(Image.new("RGB", (w, h), _colour(rng)), int(rng.integers(50, 91))), "solid JPEG"
    return Image.new("RGB", (w, h), _colour(rng)), "solid PNG"


def _near_solid(rng):
    w, h = _size(rng)
    sigma = rng.uniform(0.5, 4)
    a = np.clip(np.array(_colour(rng), dtype=np.float64) + rng.normal(0, sigma, (h, w, 3)), 0, 255)
    img = Image.fromarray(a.round().astype(np.uint8))
    if rng.integers(0, 2):
        return img, f"noise sigma {sigma:.1f} PNG"
    return _jpeg(img, int(rng.integers(50, 91))), f"noise sigma {sigma:.1f} JPEG"


def _ordinary(rng, k):
    name = PHOTO_SCENES[k % len(PHOTO_SCENES)]
    return imagegen.scene(name, *_size(rng), seed=int(rng.integers(0, 1 << 31))), name


def _pattern(rng, k):
    name = ("stripes", "checker")[k % 2]
    return imagegen.scene(name, *_size(rng), seed=int(rng.integers(0, 1 << 31))), name


def _mirror(rng, k):
    img, name = _ordinary(rng, k)
    a = np.asarray(img)
    w, h = img.size
    if k % 2:
        half = a[:, : w // 2]
        return Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)), name + " left-right"
    half = a[: h // 2]
    return Image.fromarray(np.concatenate([half, half[::-1]], axis=0)), name + " top-bottom"


def _thumb_std(grey):
    """Detail score of a float grey image: std of its 32x32 LANCZOS thumbnail (as hashing computes it)."""
    small = Image.fromarray(grey.astype(np.float32), "F").resize((32, 32), Image.Resampling.LANCZOS)
    return float(np.asarray(small, dtype=np.float64).std())


def low_contrast(img, c, rng):
    """img's grey structure scaled to a detail score of about c, on a random tinted background."""
    g = np.asarray(img.convert("L"), dtype=np.float64)
    g = (g - g.mean()) / max(g.std(), 1e-9)
    g *= c / max(_thumb_std(g), 1e-9)
    base = rng.uniform(50, 205) + rng.uniform(-20, 20, 3)
    return Image.fromarray(np.clip(base + g[..., None], 0, 255).round().astype(np.uint8))


def alpha_shape(rng, w, h):
    """An antialiased mask of a few ellipses, triangles or rectangles (the shape lives only here)."""
    big = Image.new("L", (w * 2, h * 2), 0)
    d = ImageDraw.Draw(big)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = sorted(rng.integers(0, 2 * w, 2))
        y0, y1 = sorted(rng.integers(0, 2 * h, 2))
        k = int(rng.integers(0, 3))
        if k == 0:
            d.ellipse([x0, y0, x1 + 4, y1 + 4], fill=255)
        elif k == 1:
            d.polygon([(int(rng.integers(0, 2 * w)), int(rng.integers(0, 2 * h))) for _ in range(3)], fill=255)
        else:
            d.rectangle([x0, y0, x1 + 4, y1 + 4], fill=255)
    return big.resize((w, h), Image.Resampling.LANCZOS)


def alpha_only(rng, k):
    """LA, P with tRNS transparency, or RGBA: one colour everywhere, the shape only in alpha (a logo
    on transparency, as icon exporters write it)."""
    w, h = _size(rng)
    mask = alpha_shape(rng, w, h)
    mode = ("LA", "P+tRNS", "RGBA")[k % 3]
    dark = bool(rng.integers(0, 2))
    grey = int(rng.integers(0, 60)) if dark else int(rng.integers(195, 256))
    if mode == "LA":
        img = Image.merge("LA", (Image.new("L", (w, h), grey), mask))
    elif mode == "RGBA":
        col = tuple(min(255, max(0, grey + int(v))) for v in rng.integers(-30, 31, 3))
        img = Image.new("RGB", (w, h), col)
        img.putalpha(mask)
    else:
        # Palette: 16 entries of the same colour, transparency stepping 0..255 (a common icon export).
        levels = (np.asarray(mask, dtype=np.uint16) * 15 + 127) // 255
        img = Image.fromarray(levels.astype(np.uint8), "P")
        img.putpalette([grey, grey, grey] * 16)
        img.info["transparency"] = bytes(int(round(i * 255 / 15)) for i in range(16))
        img = Image.open(io.BytesIO(imagegen.encode(img, "PNG")))   # as read from a file: mode P + tRNS
        img.load()
    return img, f"{mode} {'dark' if dark else 'light'}"


def copies(img):
    """{name: modified copy} of an RGB original, names as COPIES."""
    rgb = img.convert("RGB")
    w, h = rgb.size

    def brighten(f):
        return Image.fromarray(np.clip(np.asarray(rgb, dtype=np.float64) * f, 0, 255).round().astype(np.uint8))

    dx, dy = round(w * 0.03), round(h * 0.03)
    return {
        "resize-50%": rgb.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "resize-90%+jpeg-q75": _jpeg(rgb.resize((w * 9 // 10, h * 9 // 10), Image.Resampling.BILINEAR), 75),
        "jpeg-q50": _jpeg(rgb, 50),
        "jpeg-q75": _jpeg(rgb, 75),
        "crop-3%": rgb.crop((dx, dy, w - dx, h - dy)),
        "brighten+15%": brighten(1.15),
        "darken-15%": brighten(0.85),
    }


def alpha_copies(img):
    """Copies of an alpha-only image that keep its alpha (resize, crop, re-save as palette PNG) and one
    converted to JPEG on white, as a converter that flattens would."""
    rgba = img.convert("RGBA")
    w, h = rgba.size
    dx, dy = round(w * 0.03), round(h * 0.03)
    return {
        "resize-50% (RGBA)": rgba.resize((w // 2, h // 2), Image.Resampling.BILINEAR),
        "crop-3% (RGBA)": rgba.crop((dx, dy, w - dx, h - dy)),
        "re-saved palette PNG": Image.open(io.BytesIO(imagegen.encode(
            rgba.quantize(32, method=Image.Quantize.FASTOCTREE), "PNG"))),
        "JPEG q75 on white": _jpeg(flatten(rgba, WHITE), 75),
    }


def flatten(img, bg):
    """img composited over an opaque background colour (RGBA out, alpha 255 everywhere)."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, bg + (255,)), rgba)


def generate(a):
    """[(family, what, image, listed)] of originals, seeded."""
    rng = np.random.default_rng(a.seed)
    out = []
    makers = [("ordinary", a.ordinary, _ordinary), ("pattern", a.small, _pattern), ("mirror", a.small, _mirror)]
    for family, n, make in makers:
        for k in range(n):
            img, what = make(rng, k)
            out.append((family, what, img, k % 2 == 0))
    for k in range(a.low_contrast):
        c = CONTRASTS[k % len(CONTRASTS)]
        base, name = _ordinary(rng, k // len(CONTRASTS))
        out.append(("low-contrast", f"c={c}", low_contrast(base, c, rng), (k // len(CONTRASTS)) % 2 == 0))
    simple = [("striped", a.striped, _striped), ("emblem-flag", a.small, _emblem_flag),
              ("gradient", a.small, _gradient), ("solid", a.small, _solid), ("near-solid", a.small, _near_solid)]
    for family, n, make in simple:
        for k in range(n):
            img, what = make(rng)
            out.append((family, what, img, k % 2 == 0))
    for k in range(a.small):
        img, what = alpha_only(rng, k)
        out.append(("alpha-only", what, img, k % 2 == 0))
    return out


# ---------------------------------------------------------------------------
# Hashing the pool
# ---------------------------------------------------------------------------

class Pool:
    """Every original and copy, hashed: per item its family, source original, whether it is a copy."""

    def __init__(self, originals, kinds):
        self.kinds = kinds
        fam, what, src, listed, is_copy, variant, images = [], [], [], [], [], [], []
        for i, (family, w, img, lst) in enumerate(originals):
            items = [(None, img)]
            if family != "alpha-only":      # alpha-only copies are measured in the alpha part
                items += list(copies(img).items())
            for name, im in items:
                fam.append(family)
                what.append(w)
                src.append(i)
                listed.append(lst)
                is_copy.append(name is not None)
                variant.append(name or "original")
                images.append(im)
        self.family = np.array(fam)
        self.what = np.array(what)
        self.src = np.array(src)
        self.listed = np.array(listed)
        self.is_copy = np.array(is_copy)
        self.variant = np.array(variant)
        with_detail = [imagehash_way(im, "phash", with_detail=True) for im in images]
        self.detail = np.array([d for _, d, _ in with_detail])
        self.codes = {kind: np.array([c for c, _, _ in with_detail] if kind == "phash" else
                                     [imagehash_way(im, kind) for im in images], dtype=np.uint64)
                      for kind in kinds}
        self.entries = np.flatnonzero(self.listed & ~self.is_copy)           # the list
        self.uploads = np.flatnonzero(~(self.listed & ~self.is_copy))        # copies + unlisted originals


def pairs_within(pool, kind, radius):
    """(upload item, entry item, distance) of every upload/list pair within radius."""
    codes = pool.codes[kind]
    eu = codes[pool.entries]
    us, es, ds = [], [], []
    for start in range(0, len(pool.uploads), 2048):
        up = pool.uploads[start:start + 2048]
        d = popcount(codes[up][:, None] ^ eu[None, :])
        i, j = np.nonzero(d <= radius)
        us.append(up[i])
        es.append(pool.entries[j])
        ds.append(d[i, j])
    return np.concatenate(us), np.concatenate(es), np.concatenate(ds)


# ---------------------------------------------------------------------------
# Candidate gates: each maps (codes, detail-or-None) -> True where that side is refused
# ---------------------------------------------------------------------------

def bits_from_one_dimensional(kind, codes):
    """How many bits each hash is from the hash of a one-dimensional image (one that varies
    along one axis only, or is a sum of a function of x and a function of y).

    pHash: the set bits outside the first row and first column.  Such an image has non-zero
    DCT coefficients only there; the other 49 tie at the median and give 0.  A pHash
    without ties has 32 bits set, more than the 15 places, so no such hash qualifies.
    Spatial hashes (aHash, dHash, wHash): the bits to flip to make all 8 rows equal, or
    all 8 columns equal.
    """
    m = bit_matrix(codes)
    if kind == "phash":
        return m[:, 1:, 1:].sum(axis=(1, 2))
    per_column = m.sum(axis=1)      # rows all equal <=> every column constant
    per_row = m.sum(axis=2)
    to_rows_equal = np.minimum(per_column, 8 - per_column).sum(axis=1)
    to_cols_equal = np.minimum(per_row, 8 - per_row).sum(axis=1)
    return np.minimum(to_rows_equal, to_cols_equal)


def one_dimensional(kind, codes):
    return bits_from_one_dimensional(kind, codes) == 0


def separable(codes):
    """At most 2 distinct rows and at most 2 distinct columns in the 8x8 bits: what an image of
    one axis-aligned rectangle, or a product f(x)g(y), gives (a candidate wider than one-dimensional)."""
    m = bit_matrix(codes)

    def distinct(lines):                            # (n, 8) bytes -> distinct values per hash
        s = np.sort(lines, axis=1)
        return 1 + (s[:, 1:] != s[:, :-1]).sum(axis=1)

    rows = np.packbits(m, axis=2)[..., 0]
    cols = np.packbits(m.transpose(0, 2, 1), axis=2)[..., 0]
    return (distinct(rows) <= 2) & (distinct(cols) <= 2)


def unbalanced(codes, lo):
    pc = popcount(codes)
    return (pc <= lo) | (pc >= 64 - lo)


def degenerate(kind, codes, radius):
    """The recommended test: one-dimensional bits, or within the radius of 0000000000000000 or
    ffffffffffffffff (so it would match every solid-image entry)."""
    return one_dimensional(kind, codes) | unbalanced(codes, radius)


def _no_rule(codes, detail):
    return np.zeros(len(codes), bool)


def rules_for(kind, r):
    """[(name, side_rule(codes, detail) -> bool array)] at radius r; detail is None for list entries."""
    def detail_below(th):
        return lambda codes, detail: _no_rule(codes, detail) if detail is None else detail < th

    def plus_detail(th):
        return lambda codes, detail: degenerate(kind, codes, r) | detail_below(th)(codes, detail)

    out = [("no gate (radius only)", _no_rule),
           (f"today: upload detail < {LOW_DETAIL_THRESHOLD:g}", detail_below(LOW_DETAIL_THRESHOLD)),
           ("upload detail < 0.5", detail_below(0.5)),
           ("popcount <= 4 or >= 60 (is_degenerate)", lambda codes, detail: unbalanced(codes, 4))]
    out += [(f"popcount <= {lo} or >= {64 - lo}", lambda codes, detail, lo=lo: unbalanced(codes, lo))
            for lo in sorted({r, 8, 12, 16}) if lo != 4]
    if kind == "phash":
        out.append(("popcount != 32 (any tie at the median)", lambda codes, detail: popcount(codes) != 32))
    out.append(("one-dimensional bits", lambda codes, detail: one_dimensional(kind, codes)))
    out.append((f"RECOMMENDED: one-dimensional, or popcount <= {r} or >= {64 - r}",
                lambda codes, detail: KINDS[kind].degenerate(codes, r)))   # the gate as shipped (kinds.py)
    if kind != "phash":
        out.append((f"within 2 bits of one-dimensional, or popcount <= {r} or >= {64 - r}",
                    lambda codes, detail: (bits_from_one_dimensional(kind, codes) <= 2) | unbalanced(codes, r)))
    out.append((f"separable (<= 2 distinct rows and columns), or popcount <= {r} or >= {64 - r}",
                lambda codes, detail: separable(codes) | unbalanced(codes, r)))
    out.append((f"recommended, or upload detail < {LOW_DETAIL_THRESHOLD:g}", plus_detail(LOW_DETAIL_THRESHOLD)))
    out.append(("recommended, or upload detail < 0.5", plus_detail(0.5)))
    return out


def evaluate(pool, kind, radius, rules):
    """Per rule: own-original matches kept per family, false pairs and falsely matched uploads."""
    codes = pool.codes[kind]
    u, e, d = pairs_within(pool, kind, radius)
    true = pool.src[u] == pool.src[e]
    # Copies of listed originals: the matches a gate must keep (for families with identity).
    want = np.flatnonzero(pool.is_copy & pool.listed)
    # How many unrelated originals lie within the radius of each original: a hash with
    # identity has next to none, so refusing it costs a real match.
    orig = np.flatnonzero(~pool.is_copy)
    crowd = (popcount(codes[orig][:, None] ^ codes[orig][None, :]) <= radius).sum(axis=1) - 1
    ident_orig = np.isin(pool.family[orig], IDENTITY)
    solid_entries = np.isin(pool.family[e], ("solid", "alpha-only"))
    rows = []
    for name, rule in rules:
        refused_upload = rule(codes, pool.detail)        # the upload side sees the detail score
        refused_entry = rule(codes, None)                # a list entry is only a hash
        ok = ~refused_upload[u] & ~refused_entry[e]
        matched_own = np.zeros(len(codes), bool)
        matched_own[u[ok & true]] = True
        kept = {f: [int(matched_own[want][pool.family[want] == f].sum()), int((pool.family[want] == f).sum())]
                for f in IDENTITY + NO_IDENTITY if (pool.family[want] == f).any()}
        low = want[pool.family[want] == "low-contrast"]
        kept_by_contrast = {c: [int(matched_own[low][pool.what[low] == f"c={c}"].sum()),
                                int((pool.what[low] == f"c={c}").sum())] for c in CONTRASTS}
        false_ok = ok & ~true
        fam_u = pool.family[u[false_ok]]
        fam_e = pool.family[e[false_ok]]
        false_uploads = np.unique(u[false_ok])
        on_solid = np.unique(u[false_ok & solid_entries])
        refused_ident = refused_upload[orig] & ident_orig
        rows.append({
            "rule": name, "kept": kept, "kept_low_contrast_by_c": kept_by_contrast,
            "false_pairs": int(false_ok.sum()),
            "false_pairs_identity_only": int((np.isin(fam_u, IDENTITY) & np.isin(fam_e, IDENTITY)).sum()),
            "false_uploads": int(len(false_uploads)),
            "false_uploads_by_family": {f: int((pool.family[false_uploads] == f).sum())
                                        for f in IDENTITY + NO_IDENTITY},
            "uploads_matching_solid_or_alpha_entry_by_family": {
                f: int((pool.family[on_solid] == f).sum()) for f in IDENTITY + NO_IDENTITY},
            "false_pairs_by_family": _pair_families(fam_u, fam_e),
            "refused_identity_originals": int(refused_ident.sum()),
            "refused_identity_originals_unrelated_within_r_median":
                float(np.median(crowd[refused_ident])) if refused_ident.any() else None,
        })
    uploads_per_family = {f: int((pool.family[pool.uploads] == f).sum()) for f in IDENTITY + NO_IDENTITY}
    return {"radius": radius, "pairs_within_radius": int(len(u)), "true_pairs": int(true.sum()),
            "false_pairs": int((~true).sum()), "uploads_per_family": uploads_per_family,
            "identity_originals_unrelated_within_r_median": float(np.median(crowd[ident_orig])),
            "rules": rows}


def radius_sensitivity(pool, kind):
    """The recommended gate at radii around the default: popcount bound tied to the radius in use,
    or fixed at the kind's default radius."""
    r0 = DEFAULT_RADIUS[kind]
    out = []
    for r in (max(1, r0 - 4), r0, r0 + 4):
        rules = [("no gate", _no_rule),
                 (f"one-dimensional, or popcount <= {r0} (the default radius)",
                  lambda codes, detail: degenerate(kind, codes, r0)),
                 (f"one-dimensional, or popcount <= {r} (the radius in use)",
                  lambda codes, detail, r=r: degenerate(kind, codes, r))]
        ev = evaluate(pool, kind, r, rules[:2] if r == r0 else rules)
        for row in ev["rules"]:
            out.append({"radius": r, "rule": row["rule"], "ordinary_kept": row["kept"]["ordinary"],
                        "low_contrast_kept_c_ge_0.5": _columns(row)[0], "false_uploads": row["false_uploads"]})
    return out


def _pair_families(fu, fe):
    out = {}
    for a, b in zip(fu.tolist(), fe.tolist()):
        key = f"{a} -> {b}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------
# Distributions and the identity question
# ---------------------------------------------------------------------------

def quantiles(v, qs=(0, 5, 50, 95, 100)):
    v = np.asarray(v, dtype=np.float64)
    return [round(float(np.percentile(v, q)), 2) for q in qs] if len(v) else []


def distributions(pool):
    """Per family: detail quantiles, and per kind the popcount histogram and the share that is one-dimensional."""
    out = {}
    orig = ~pool.is_copy
    for f in IDENTITY + NO_IDENTITY:
        sel = orig & (pool.family == f)
        rec = {"originals": int(sel.sum()), "detail_q0_5_50_95_100": quantiles(pool.detail[sel])}
        for kind in pool.kinds:
            pc = popcount(pool.codes[kind][sel])
            vals, counts = np.unique(pc, return_counts=True)
            rec[kind] = {"popcount_q0_5_50_95_100": quantiles(pc),
                         "popcount_hist": {int(v): int(c) for v, c in zip(vals, counts)},
                         "one_dimensional": int(one_dimensional(kind, pool.codes[kind][sel]).sum())}
        out[f] = rec
    return out


def identity(pool, kind, groups):
    """For each group of originals: distance of each copy to its own original, and of unrelated originals
    to each other; how many of each fall within the default radius."""
    radius = DEFAULT_RADIUS[kind]
    codes = pool.codes[kind]
    out = {}
    for label, sel in groups:
        orig = np.flatnonzero(sel & ~pool.is_copy)
        cop = np.flatnonzero(sel & pool.is_copy)
        original_of = {s: i for i, s in zip(orig, pool.src[orig])}
        own = popcount(codes[cop] ^ codes[[original_of[s] for s in pool.src[cop]]])
        d = popcount(codes[orig][:, None] ^ codes[orig][None, :])
        unrel = d[np.triu_indices(len(orig), 1)]
        out[label] = {"originals": int(len(orig)), "detail_median": round(float(np.median(pool.detail[orig])), 2),
                      "copy_distance_q50_95_100": quantiles(own, (50, 95, 100)),
                      "copies_within": [int((own <= radius).sum()), int(len(own))],
                      "copies_within_by_copy": {v: [int((own[pool.variant[cop] == v] <= radius).sum()),
                                                    int((pool.variant[cop] == v).sum())] for v in COPIES},
                      "unrelated_distance_q0_1_50": quantiles(unrel, (0, 1, 50)),
                      "unrelated_within": [int((unrel <= radius).sum()), int(len(unrel))]}
    return out


def identity_groups(pool):
    groups = [("ordinary", pool.family == "ordinary")]
    groups += [(f"low-contrast c={c}", pool.what == f"c={c}") for c in CONTRASTS]
    groups += [(f, pool.family == f) for f in ("mirror", "pattern") + NO_IDENTITY if f != "alpha-only"]
    return groups


# ---------------------------------------------------------------------------
# Alpha: what flattening would change
# ---------------------------------------------------------------------------

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def has_alpha(img):
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def flatten_if_degenerate(img, kind, backgrounds):
    """The hash as imagehash computes it, unless that is degenerate and the image has alpha:
    then the hash of the image flattened onto the first background that gives a hash that is not."""
    code = imagehash_way(img, kind)
    if not has_alpha(img):
        return code
    for bg in (None,) + backgrounds:
        c = code if bg is None else hash_image(flatten(img, bg), kind)
        if not degenerate(kind, np.array([c], dtype=np.uint64), DEFAULT_RADIUS[kind])[0]:
            return c
    return code


ALPHA_METHODS = {
    "as imagehash (alpha dropped)": imagehash_way,
    "always flatten on white": lambda im, kind: hash_image(flatten(im, WHITE), kind),
    "always flatten on black": lambda im, kind: hash_image(flatten(im, BLACK), kind),
    "flatten only if degenerate (white, then black)": lambda im, kind: flatten_if_degenerate(im, kind, (WHITE, BLACK)),
    "flatten only if degenerate (black, then white)": lambda im, kind: flatten_if_degenerate(im, kind, (BLACK, WHITE)),
}


def alpha_part(a, pool):
    """Alpha-only images: degenerate hashes, copies within the radius, unrelated ones within it (each
    other, and the pool's originals that are not degenerate), per way of hashing; and whether each way
    stays equal to imagehash on ordinary RGBA images (opaque, and with a real partial alpha, as
    imagegen's rgba.png)."""
    import imagehash
    kinds = pool.kinds
    ih = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
          "whash": imagehash.whash}
    rng = np.random.default_rng(a.seed + 7)
    shapes = [alpha_only(rng, k)[0] for k in range(a.small)]
    shape_copies = [alpha_copies(im) for im in shapes]
    scenes = [imagegen.scene(PHOTO_SCENES[k % len(PHOTO_SCENES)], *_size(rng), seed=int(rng.integers(0, 1 << 31)))
              for k in range(a.small)]
    opaque = [im.convert("RGBA") for im in scenes]
    partial = []
    for im in scenes:
        im = im.convert("RGBA")
        im.putalpha(im.convert("L").filter(ImageFilter.GaussianBlur(3)))
        partial.append(im)
    out = {"alpha_only": {}, "ordinary_rgba": {}}
    for kind in kinds:
        radius = DEFAULT_RADIUS[kind]
        ref_shapes = [int(str(ih[kind](im)), 16) for im in shapes]
        ref_opaque = [int(str(ih[kind](im)), 16) for im in opaque]
        ref_partial = [int(str(ih[kind](im)), 16) for im in partial]
        others = pool.codes[kind][~pool.is_copy]
        others = others[~degenerate(kind, others, radius)]
        per, rgba = {}, {}
        for mname, hash_of in ALPHA_METHODS.items():
            orig = np.array([hash_of(im, kind) for im in shapes], dtype=np.uint64)
            own = np.array([[(int(code) ^ hash_of(c, kind)).bit_count() for c in cps.values()]
                            for code, cps in zip(orig, shape_copies)])
            d = popcount(orig[:, None] ^ orig[None, :])[np.triu_indices(len(orig), 1)]
            per[mname] = {
                "images": len(orig), "degenerate": int(degenerate(kind, orig, radius).sum()),
                "equal_to_imagehash": int(sum(int(c) == r for c, r in zip(orig, ref_shapes))),
                "popcount_q0_50_100": quantiles(popcount(orig), (0, 50, 100)),
                "copies_within_by_copy": {n: int((own[:, k] <= radius).sum()) for k, n in enumerate(shape_copies[0])},
                "unrelated_within": [int((d <= radius).sum()), int(len(d))],
                "pool_originals_within": [int((popcount(orig[:, None] ^ others[None, :]) <= radius).sum()),
                                          len(orig) * len(others)],
            }
            bits = [(hash_of(im, kind) ^ r).bit_count() for im, r in zip(partial, ref_partial)]
            same_opaque = sum(hash_of(im, kind) == r for im, r in zip(opaque, ref_opaque))
            rgba[mname] = {"opaque_equal_to_imagehash": [same_opaque, len(opaque)],
                           "partial_equal_to_imagehash": [sum(b == 0 for b in bits), len(bits)],
                           "partial_bits_changed_q50_95_100": quantiles(bits, (50, 95, 100))}
        out["alpha_only"][kind] = per
        out["ordinary_rgba"][kind] = rgba
    return out


# ---------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------

def frac(kv):
    k, n = kv
    return f"{k}/{n}" if n else "-"


def print_distributions(dist, kinds):
    print("\n### Families: detail score and hash popcount of the originals (one-dimensional hashes in brackets)\n")
    print("| family | n | detail min / median / max | " + " | ".join(
        f"{k} popcount min / median / max" for k in kinds) + " |\n|" + "---|" * (3 + len(kinds)))
    for f, rec in dist.items():
        q = rec["detail_q0_5_50_95_100"]
        cells = []
        for k in kinds:
            p = rec[k]["popcount_q0_5_50_95_100"]
            cells.append(f"{p[0]:.0f} / {p[2]:.0f} / {p[4]:.0f} ({rec[k]['one_dimensional']})")
        print(f"| {f} | {rec['originals']} | {q[0]:.2f} / {q[2]:.2f} / {q[4]:.2f} | " + " | ".join(cells) + " |")


def print_identity(ident, kinds):
    print("\n### Identity: copies within the radius of their own original / unrelated originals within the "
          "radius of each other (smallest unrelated distance)\n")
    print("| group | detail median | " + " | ".join(kinds) + " |\n|" + "---|" * (2 + len(kinds)))
    for label in ident[kinds[0]]:
        cells = []
        for k in kinds:
            r = ident[k][label]
            cells.append(f"{frac(r['copies_within'])} / {frac(r['unrelated_within'])} "
                         f"({r['unrelated_distance_q0_1_50'][0]:.0f})")
        print(f"| {label} | {ident[kinds[0]][label]['detail_median']:.2f} | " + " | ".join(cells) + " |")


def _columns(row):
    kc = row["kept_low_contrast_by_c"]
    lc = [sum(kc[c][i] for c in CONTRASTS if c >= 0.5) for i in (0, 1)]
    mp = [row["kept"]["mirror"][i] + row["kept"]["pattern"][i] for i in (0, 1)]
    ni = [sum(row["kept"][f][i] for f in NO_IDENTITY if f in row["kept"]) for i in (0, 1)]
    return lc, kc[0.25], mp, ni


def print_rules(kind, ev):
    n_up = sum(ev["uploads_per_family"].values())
    print(f"\n### {kind}, radius {ev['radius']}: {ev['true_pairs']} true and {ev['false_pairs']} false "
          f"upload/list pairs within the radius before any gate; {n_up} uploads\n")
    print("Copies matched = copies of listed originals that still match their own original. "
          "Refused = originals of the identity families (ordinary, pattern, mirror, low-contrast) the rule "
          "refuses, with the median number of unrelated originals within the radius of each "
          f"(over all of them: {ev['identity_originals_unrelated_within_r_median']:g}).\n")
    print("| rule (a pair is refused if either side is...) | ordinary copies matched | low-contrast c>=0.5 "
          "| low-contrast c=0.25 | mirror + pattern | no-identity copies matched | refused (median unrelated "
          "within r) | false pairs (both identity) | uploads with a false match |\n|" + "---|" * 9)
    for row in ev["rules"]:
        lc, c025, mp, ni = _columns(row)
        med = row["refused_identity_originals_unrelated_within_r_median"]
        print(f"| {row['rule']} | {frac(row['kept']['ordinary'])} | {frac(lc)} | {frac(c025)} | {frac(mp)} "
              f"| {frac(ni)} | {row['refused_identity_originals']} ({'-' if med is None else f'{med:g}'}) "
              f"| {row['false_pairs']} ({row['false_pairs_identity_only']}) | {row['false_uploads']} |")


def print_on_solid(evals, kinds):
    print("\n### Item 1: uploads that match a solid or alpha-only list entry (0000000000000000 and the like)\n")
    fams = ("striped", "emblem-flag", "gradient", "near-solid", "low-contrast", "ordinary")
    print("| kind | rule | " + " | ".join(fams) + " |\n|" + "---|" * (2 + len(fams)))
    for k in kinds:
        ev = evals[k]
        for row in ev["rules"]:
            if row["rule"].startswith(("no gate", "today", "popcount <= 4", "RECOMMENDED")):
                c = row["uploads_matching_solid_or_alpha_entry_by_family"]
                print(f"| {k} | {row['rule']} | " + " | ".join(
                    f"{c[f]}/{ev['uploads_per_family'][f]}" for f in fams) + " |")


def print_by_contrast(evals, kinds):
    print("\n### Item 2: low-contrast copies that match their own original, by contrast (detail ~ c)\n")
    print("| kind | rule | " + " | ".join(f"c={c}" for c in CONTRASTS) + " |\n|" + "---|" * (2 + len(CONTRASTS)))
    for k in kinds:
        for row in evals[k]["rules"]:
            if row["rule"].startswith(("no gate", "today", "RECOMMENDED")):
                kc = row["kept_low_contrast_by_c"]
                print(f"| {k} | {row['rule']} | " + " | ".join(frac(kc[c]) for c in CONTRASTS) + " |")


def print_summary(evals, kinds):
    print("\n### Summary (for docs/cli.md)\n")
    print("| kind (radius) | gate | ordinary copies matched | low-contrast copies matched (detail 0.5-3) "
          "| uploads matching a solid or alpha-only entry | uploads with any false match "
          "| of which ordinary or low-contrast |\n|---|---|---|---|---|---|---|")
    for k in kinds:
        ev = evals[k]
        for row in ev["rules"]:
            if row["rule"].startswith(("no gate", "today", "RECOMMENDED")):
                lc = _columns(row)[0]
                fu = row["false_uploads_by_family"]
                on_solid = sum(row["uploads_matching_solid_or_alpha_entry_by_family"].values())
                print(f"| {k} ({ev['radius']}) | {row['rule']} | {frac(row['kept']['ordinary'])} | {frac(lc)} "
                      f"| {on_solid} | {row['false_uploads']} | {fu['ordinary'] + fu['low-contrast']} |")


def print_sensitivity(sens, kinds):
    print("\n### The popcount bound at other radii: tied to the radius in use, or fixed at the default\n")
    print("| kind | radius | rule | ordinary copies matched | low-contrast c>=0.5 | uploads with a false match |"
          "\n|---|---|---|---|---|---|")
    for k in kinds:
        for row in sens[k]:
            print(f"| {k} | {row['radius']} | {row['rule']} | {frac(row['ordinary_kept'])} "
                  f"| {frac(row['low_contrast_kept_c_ge_0.5'])} | {row['false_uploads']} |")


def print_alpha(al, kinds):
    print("\n### Alpha-only images (one colour, the shape only in alpha; LA, P+tRNS, RGBA)\n")
    names = list(next(iter(al["alpha_only"].values()))["as imagehash (alpha dropped)"]["copies_within_by_copy"])
    print(f"| kind | hashing | degenerate | == imagehash | copies within r: {' / '.join(names)} "
          "| unrelated within r | pairs with other non-degenerate originals within r |\n|---|---|---|---|---|---|---|")
    for k in kinds:
        for m, r in al["alpha_only"][k].items():
            c = " / ".join(str(x) for x in r["copies_within_by_copy"].values())
            print(f"| {k} | {m} | {r['degenerate']}/{r['images']} | {r['equal_to_imagehash']}/{r['images']} "
                  f"| {c} (of {r['images']}) | {frac(r['unrelated_within'])} | {frac(r['pool_originals_within'])} |")
    print("\n### Ordinary scenes as RGBA: equal to imagehash?\n")
    print("| kind | hashing | opaque RGBA | partial alpha (bits changed median / max) |\n|---|---|---|---|")
    for k in kinds:
        for m, r in al["ordinary_rgba"][k].items():
            q = r["partial_bits_changed_q50_95_100"]
            print(f"| {k} | {m} | {frac(r['opaque_equal_to_imagehash'])} | {frac(r['partial_equal_to_imagehash'])} "
                  f"({q[0]:.0f} / {q[2]:.0f}) |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--ordinary", type=int, default=300, help="ordinary scenes")
    p.add_argument("--low-contrast", type=int, default=210, help="low-contrast scenes (spread over the contrasts)")
    p.add_argument("--striped", type=int, default=120, help="striped (flag) images")
    p.add_argument("--small", type=int, default=60, help="images in each of the other families")
    p.add_argument("--kinds", default="phash,dhash,ahash,whash")
    p.add_argument("--out", default=os.path.join(HERE, "results", "gate.json"))
    a = p.parse_args()
    # Pillow warns on every grey conversion of a P+tRNS image; dropping the alpha is what is measured.
    warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    t0 = time.perf_counter()
    pool = Pool(generate(a), kinds)
    print(f"{int((~pool.is_copy).sum())} originals, {int(pool.is_copy.sum())} copies, {len(pool.entries)} listed, "
          f"{len(pool.uploads)} uploads; generated and hashed in {time.perf_counter() - t0:.1f} s")
    dist = distributions(pool)
    ident = {k: identity(pool, k, identity_groups(pool)) for k in kinds}
    evals = {k: evaluate(pool, k, DEFAULT_RADIUS[k], rules_for(k, DEFAULT_RADIUS[k])) for k in kinds}
    sens = {k: radius_sensitivity(pool, k) for k in kinds}
    al = alpha_part(a, pool)
    print_distributions(dist, kinds)
    print_identity(ident, kinds)
    for k in kinds:
        print_rules(k, evals[k])
    print_on_solid(evals, kinds)
    print_by_contrast(evals, kinds)
    print_sensitivity(sens, kinds)
    print_alpha(al, kinds)
    print_summary(evals, kinds)
    elapsed = time.perf_counter() - t0
    print(f"\n{elapsed:.1f} s in all (load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores)")
    result = {"command": "bench/bench_gate.py " + " ".join(sys.argv[1:]), "settings": vars(a),
              "radius": {k: DEFAULT_RADIUS[k] for k in kinds}, "families": dist, "identity": ident,
              "rules": evals, "radius_sensitivity": sens, "alpha": al, "seconds": round(elapsed, 1)}
    harness.save_json(a.out, result)


if __name__ == "__main__":
    main()
