"""Issue 11: images whose shape is only in the alpha channel (item 2), decoder warnings on the
user's terminal (item 11), truncated and empty files (item 12)."""
import io
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

import imagegen
from hashsieve import hash_image, hash_images
from hashsieve.kinds import KINDS
from hashsieve.scan import LOW_DETAIL_THRESHOLD, ScanOptions, scan

imagehash = pytest.importorskip("imagehash")

CLI = [sys.executable, "-m", "hashsieve.cli"]


def ih_phash(im):
    return int(str(imagehash.phash(im)), 16)


def logo_mask(w=160, h=120):
    """An antialiased mask: a disc, a triangle and a bar (the shape lives only here)."""
    big = Image.new("L", (2 * w, 2 * h), 0)
    d = ImageDraw.Draw(big)
    d.ellipse([20, 30, 150, 170], fill=255)
    d.polygon([(170, 220), (300, 40), (310, 230)], fill=255)
    d.rectangle([40, 200, 140, 226], fill=255)
    return big.resize((w, h), Image.Resampling.LANCZOS)


def logo(mode, grey):
    """One colour everywhere, the shape only in alpha: LA, PA, RGBA or P with tRNS bytes."""
    mask = logo_mask()
    if mode == "LA":
        return Image.merge("LA", (Image.new("L", mask.size, grey), mask))
    if mode == "RGBA":
        img = Image.new("RGB", mask.size, (grey, grey, grey))
        img.putalpha(mask)
        return img
    levels = Image.fromarray(((np.asarray(mask, dtype=np.uint16) * 15 + 127) // 255).astype(np.uint8), "P")
    levels.putpalette([grey, grey, grey] * 16)
    if mode == "PA":
        return Image.merge("PA", (levels, mask))
    return Image.open(io.BytesIO(imagegen.encode(levels, "PNG", transparency=bytes(range(0, 256, 17)))))


def flat_jpeg(img, background):
    rgba = img.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)), rgba).convert("RGB")
    return imagegen.encode(flat, "JPEG", quality=75)


def resaved_palette_png(img):
    return imagegen.encode(img.convert("RGBA").quantize(32, method=Image.Quantize.FASTOCTREE), "PNG")


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")     # imagehash's, on P images
@pytest.mark.parametrize("mode", ["LA", "PA", "RGBA", "P"])
@pytest.mark.parametrize("grey, background", [(30, (255, 255, 255)), (255, (0, 0, 0))])
def test_alpha_only_shape_is_hashed_flattened_and_matches_its_copies(mode, grey, background):
    img = logo(mode, grey)
    phash = KINDS["phash"]
    assert phash.degenerate(np.uint64(ih_phash(img)))[0]          # what imagehash sees: one colour
    code, detail, flattened = hash_image(img, with_detail=True)
    assert flattened and not phash.degenerate(np.uint64(code))[0] and detail > LOW_DETAIL_THRESHOLD
    # a dark logo shows on white; a white one only on black (white is tried first)
    copies = {"palette PNG": resaved_palette_png(img), "JPEG on the background": flat_jpeg(img, background)}
    for name, data in copies.items():
        assert (hash_image(data) ^ code).bit_count() <= phash.default_radius, name
    for kind in ("dhash", "ahash", "whash"):
        code_k, _, flattened_k = hash_image(img, kind, with_detail=True)
        assert flattened_k and not KINDS[kind].degenerate(np.uint64(code_k))[0], kind


def test_images_with_alpha_whose_imagehash_hash_is_fine_stay_bit_exact():
    photo = imagegen.photo(200, 150, seed=5)
    opaque = photo.convert("RGBA")
    partial = photo.convert("RGBA")
    partial.putalpha(photo.convert("L"))
    for img in (opaque, partial, Image.open(io.BytesIO(imagegen.encode(partial, "PNG")))):
        code, _, flattened = hash_image(img, with_detail=True)
        assert code == ih_phash(img) and not flattened
    res = hash_images([imagegen.encode(opaque, "PNG"), imagegen.encode(logo("LA", 30), "PNG")], workers=1)
    assert res.flattened.tolist() == [False, True]


def test_scan_report_flags_flattened_images_only(tmp_path):
    (tmp_path / "logo.png").write_bytes(imagegen.encode(logo("LA", 30), "PNG"))
    (tmp_path / "photo.png").write_bytes(imagegen.encode(imagegen.photo(200, 150, seed=6), "PNG"))
    recs = []
    scan([str(tmp_path)], None, recs.append, ScanOptions(workers=1))
    by = {r["path"].rsplit("/", 1)[1]: r for r in recs}
    assert by["logo.png"]["flattened"] is True and not by["logo.png"]["degenerate"]
    assert "flattened" not in by["photo.png"]


# ---------------------------------------------------------------- item 11: warnings
def palette_with_byte_transparency(seed):
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 16, (48, 64), dtype=np.uint8), "P")
    img.putpalette([v * 16 for v in range(16) for _ in range(3)])
    return imagegen.encode(img, "PNG", transparency=bytes(range(0, 256, 16)))


def test_decoder_warnings_stay_off_the_terminal(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        (images / f"p{k}.png").write_bytes(palette_with_byte_transparency(k))
    (tmp_path / "list.txt").write_text("0123456789abcdef\n")
    assert subprocess.run(CLI + ["build", str(tmp_path / "list.txt"), "-o", str(tmp_path / "i.hsi")],
                          capture_output=True).returncode == 0
    for args in (["scan", str(images), "--index", str(tmp_path / "i.hsi")], ["hash", str(images)]):
        for workers in ("1", "2"):
            p = subprocess.run(CLI + args + ["--workers", workers], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0 and "Warning" not in p.stderr, p.stderr
    # in the caller's process (hash_image, workers=1): no warning is raised at all
    data = palette_with_byte_transparency(9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect = ih_phash(Image.open(io.BytesIO(data)))     # (imagehash's convert("L") warns)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hash_image(data) == expect
        assert hash_images([data, data], workers=1).hashes.tolist() == [expect, expect]


# ---------------------------------------------------------------- item 12: truncated and empty files
def test_truncated_jpeg_is_called_truncated(tmp_path):
    good = imagegen.encode(imagegen.photo(320, 240, 0), "JPEG", quality=90)
    for cut in (len(good) // 2, 5341, len(good) - 200):     # 5341: Pillow says "(0 bytes not processed)"
        (tmp_path / f"cut{cut}.jpg").write_bytes(good[:cut])
    recs = []
    scan([str(tmp_path)], None, recs.append, ScanOptions(workers=1))
    assert len(recs) == 3
    for r in recs:
        assert r["error"].startswith("truncated:") and "not processed" not in r["error"], r["error"]


def test_empty_file_has_the_digests_of_empty_content(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("empty.png", b"")
    recs = []
    scan([str(tmp_path)], None, recs.append, ScanOptions(workers=1))
    assert len(recs) == 2
    for r in recs:
        assert r["md5"] == "d41d8cd98f00b204e9800998ecf8427e"
        assert r["sha1"] == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        assert r["hash"] is None and r["error"].startswith("empty file (0 bytes)")

