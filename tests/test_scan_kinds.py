"""Scans of an index of several kinds (issue 13): pHash + PDQ + MD5 lists, one decode per file,
per-kind records, PDQ's quality gate and dihedral matching, against a brute-force oracle."""
import functools
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import hashsieve as hs
import imagegen
from hashsieve.kinds import KINDS
from hashsieve.scan import DIHEDRAL_VARIANTS, ScanOptions, Screener, hash_jobs
from test_cli import run as _run

run = functools.partial(_run, timeout=180)     # (a scan of every kind, on a loaded machine)

PHASH, PDQ = KINDS["phash"], KINDS["pdq"]




def png(img):
    return imagegen.encode(img.convert("RGB"), "PNG")


def jpg(img, q=80):
    return imagegen.encode(img.convert("RGB"), "JPEG", quality=q)


def near_dup(img):
    """Resized to 70% and re-encoded as JPEG: a few bits from the original in either kind."""
    w, h = img.size
    return jpg(img.resize((w * 7 // 10, h * 7 // 10), Image.Resampling.BILINEAR), 75)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Uploads (photos, a near-blank gradient of PDQ quality 0, a copy of a listed file) and a mixed list
    of pHash, PDQ and MD5 entries: near-duplicates of some uploads, a rotated one and random distractors."""
    root = tmp_path_factory.mktemp("kinds")
    up = root / "up"
    up.mkdir()
    photos = [imagegen.scene(name, 200, 150, seed=s)
              for s, name in enumerate(["photo", "landscape", "shapes", "text", "photo", "checker"])]
    files = {f"p{i}.{'png' if i % 2 else 'jpg'}": (png(img) if i % 2 else jpg(img, 90)) for i, img in enumerate(photos)}
    files["flat.png"] = png(imagegen.scene("gradient", 200, 150, seed=9))
    files["copy.jpg"] = b"not an image, but its MD5 is listed"
    for name, data in files.items():
        (up / name).write_bytes(data)
    rng = np.random.default_rng(5)
    rows = [("phash", PHASH.to_hex(hs.hash_image(near_dup(photos[0]), "phash"))[0], "ph-near-p0"),
            ("phash", PHASH.to_hex(hs.hash_image(near_dup(photos[3]), "phash"))[0], "ph-near-p3"),
            ("pdq", PDQ.to_hex(hs.hash_image(near_dup(photos[1]), "pdq"))[0], "pdq-near-p1"),
            ("pdq", PDQ.to_hex(hs.hash_image(near_dup(photos[3]), "pdq"))[0], "pdq-near-p3"),
            ("pdq", PDQ.to_hex(hs.hash_image(png(photos[2].transpose(Image.Transpose.ROTATE_90)), "pdq"))[0],
             "pdq-rotated-p2"),
            ("pdq", PDQ.to_hex(hs.hash_image(files["flat.png"], "pdq"))[0], "pdq-flat"),
            ("md5", hashlib.md5(files["copy.jpg"]).hexdigest(), "md5-copy")]
    rows += [("phash", f"{int(x):016x}", f"ph-random-{i}") for i, x in enumerate(rng.integers(0, 2**63, 20))]
    rows += [("pdq", bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex(), f"pdq-random-{i}") for i in range(20)]
    (root / "mixed.csv").write_text("kind,hash,id\n" + "".join(f"{k},{h},{i}\n" for k, h, i in rows))
    run("build", "mixed.csv", "-o", "i.hsi", cwd=root, check=0)
    return {"root": root, "up": up, "files": files, "rows": rows}


def oracle(world, match_low_quality=False, radius=None):
    """{file name: {(list, id, kind, distance)}}: every entry of each kind within its radius of the file's
    hash of that kind (from hash_image alone), less degenerate codes and PDQ hashes under quality 50; and MD5."""
    radius = radius or {"phash": 8, "pdq": 31}
    out = {}
    for name, data in world["files"].items():
        found = set()
        for kind in (PHASH, PDQ):
            try:
                code, score, _ = hs.hash_image(data, kind.name, with_detail=True)
            except hs.ImageHashError:
                continue
            query = kind.as_codes([code])
            if kind.degenerate(query, radius[kind.name])[0] or (kind.gate_blocks and kind.low_quality(score)
                                                                 and not match_low_quality):
                continue
            for k, h, row_id in world["rows"]:
                if k != kind.name:
                    continue
                entry = kind.from_hex([h])
                d = int(kind.popcount(entry ^ query)[0])
                if d <= radius[kind.name] and not kind.degenerate(entry, radius[kind.name])[0]:
                    found.add(("mixed", row_id, k, d))
        md5 = hashlib.md5(data).hexdigest()
        found |= {("mixed", row_id, "md5", 0) for k, h, row_id in world["rows"] if k == "md5" and h == md5}
        out[name] = found
    return out


def scanned(world, *options):
    report = world["root"] / "report.jsonl"
    p = run("scan", world["up"], "--index", "i.hsi", "--report", report, "--overwrite", "--workers", "1", *options,
            cwd=world["root"])
    assert p.returncode in (0, 1), p.stderr
    recs = {r["path"].rsplit("/", 1)[1]: r for r in read_jsonl(report)}
    return recs, p


def match_sets(recs):
    return {name: {(m["list"], m["id"], m["kind"], m["distance"]) for m in r["matches"]} for name, r in recs.items()}


def test_scan_of_a_mixed_index_reports_every_kind_like_the_oracle(world):
    recs, p = scanned(world)
    want = oracle(world)
    assert match_sets(recs) == want
    kinds_matched = {m[2] for found in want.values() for m in found}
    assert kinds_matched == {"phash", "pdq", "md5"}, "the test data must make matches of each kind"
    assert p.returncode == 1
    for name, data in world["files"].items():
        rec = recs[name]
        if name == "copy.jpg":
            assert rec["error"] and rec["hashes"]["phash"]["hash"] is None and rec["hashes"]["pdq"]["error"]
            continue
        code, quality, _ = hs.hash_image(data, "pdq", with_detail=True)
        assert list(rec["hashes"]) == ["phash", "pdq"]
        assert rec["hashes"]["pdq"]["hash"] == PDQ.to_hex(code)[0] and rec["hashes"]["pdq"]["quality"] == quality
        assert rec["hashes"]["pdq"]["low_quality"] == (quality < 50) == rec["low_quality"]
        assert rec["hash"] == rec["hashes"]["phash"]["hash"] == PHASH.to_hex(hs.hash_image(data, "phash"))[0]
        assert rec["detail"] == rec["hashes"]["phash"]["detail"]


def test_low_quality_uploads_make_no_pdq_match_unless_asked(world):
    recs, p = scanned(world)
    flat = recs["flat.png"]
    assert flat["low_quality"] and flat["hashes"]["pdq"]["quality"] < 50
    assert not [m for m in flat["matches"] if m["kind"] == "pdq"]
    assert "1 low quality" in p.stderr
    recs, _ = scanned(world, "--match-low-quality")
    assert match_sets(recs) == oracle(world, match_low_quality=True)
    assert ("mixed", "pdq-flat", "pdq", 0) in match_sets(recs)["flat.png"]


def test_dihedral_scan_matches_a_rotated_copy_and_names_the_variant(world):
    plain = match_sets(scanned(world)[0])["p2.jpg"]
    assert not [m for m in plain if m[1] == "pdq-rotated-p2"]
    recs, _ = scanned(world, "--dihedral")
    rec = recs["p2.jpg"]
    (m,) = [m for m in rec["matches"] if m["id"] == "pdq-rotated-p2"]
    assert m["variant"] in DIHEDRAL_VARIANTS[1:] and m["distance"] <= 31
    variants = rec["hashes"]["pdq"]["dihedral"]
    entry = PDQ.from_hex([h for k, h, i in world["rows"] if i == "pdq-rotated-p2"])
    d = PDQ.popcount(PDQ.from_hex(variants) ^ entry)
    assert m["distance"] == d.min() and m["variant"] == DIHEDRAL_VARIANTS[int(np.argmin(d))]
    # Every plain match is still found (through the original hash, or a nearer variant).
    assert {x[:3] for x in plain} <= {(x["list"], x["id"], x["kind"]) for x in rec["matches"]}


def test_radius_and_kind_options_per_kind(world):
    recs, _ = scanned(world, "--radius", "pdq=40", "--radius", "phash=10")
    assert match_sets(recs) == oracle(world, radius={"phash": 10, "pdq": 40})
    recs, _ = scanned(world, "--kind", "pdq")
    rec = recs["p1.png"]
    assert list(rec["hashes"]) == ["pdq"] and rec["hash"] == rec["hashes"]["pdq"]["hash"] and rec["detail"] is None
    assert not [m for r in recs.values() for m in r["matches"] if m["kind"] == "phash"]
    p = run("scan", world["up"], "--index", "i.hsi", "--radius", "9", cwd=world["root"])
    assert p.returncode == 2 and "ambiguous" in p.stderr
    p = run("scan", world["up"], "--index", "i.hsi", "--kind", "dhash", cwd=world["root"])
    assert p.returncode == 2 and "holds no dhash hashes" in p.stderr


def test_hash_jobs_hash_every_kind_from_one_decode_like_hash_image(world):
    """One decode for all kinds: the same codes and scores as hashing each kind from the bytes."""
    datas = list(world["files"].values()) + [world["files"]["p0.jpg"][:800], b"\x89PNG\r\n\x1a\n broken"]
    for fast in (False, True):
        results = hash_jobs(datas, ("phash", "pdq"), fast, None, 1 << 30)
        for data, (hashes, md5, _, error) in zip(datas, results):
            assert md5 == hashlib.md5(data).hexdigest() and error is None
            for kind in (PHASH, PDQ):
                code, score, flattened, variants, kind_error = hashes[kind.name]
                try:
                    want = kind.hash(data, fast)
                except hs.ImageHashError as e:
                    assert code is None and kind_error == e.reason
                    continue
                assert kind_error is None and variants is None
                assert kind.to_hex(code) == kind.to_hex(want[0]) and score == want[1] and flattened == want[2]


def test_screener_api_for_the_service_and_the_distributed_scan(world):
    """Screener(lindex, ScanOptions) -> job_args for hash_jobs, records() with per-kind fields."""
    with hs.open_lists(world["root"] / "i.hsi") as li:
        screener = Screener(li, ScanOptions(workers=1))
        assert [k.name for k in screener.kinds] == ["phash", "pdq"] and screener.radius == {"phash": 8, "pdq": 31}
        data = world["files"]["p1.png"]
        (rec,) = screener.records([type("Upload", (), {"path": "upload", "member": None})()],
                                  hash_jobs([data], *screener.job_args))
        assert {(m["id"], m["kind"]) for m in rec["matches"]} == {(i, k) for _, i, k, _ in oracle(world)["p1.png"]}
        with pytest.raises(ValueError, match="ambiguous"):
            Screener(li, ScanOptions(radius=5))
        assert Screener(li, ScanOptions(radius={"pdq": 5})).radius == {"phash": 8, "pdq": 5}
        with pytest.raises(ValueError, match="radius for dhash, which this scan does not compute"):
            Screener(li, ScanOptions(radius={"dhash": 5}))
        with pytest.raises(ValueError, match="holds no dhash hashes"):
            Screener(li, ScanOptions(kinds=["dhash"]))


def test_old_reports_resume_in_a_mixed_scan(world):
    """A report written before "hashes" existed (one 64-bit kind) still resumes: its files are skipped."""
    report = world["root"] / "old.jsonl"
    old = {"path": str(world["up"] / "p0.jpg"), "member": None, "member_path": None, "hash": "0" * 16,
           "detail": 5.0, "low_detail": False, "degenerate": False, "md5": None, "sha1": None, "matches": [],
           "error": None}
    report.write_text(json.dumps(old) + "\n")
    run("scan", world["up"], "--index", "i.hsi", "--report", report, "--resume", "--workers", "1",
        cwd=world["root"])
    recs = read_jsonl(report)
    assert recs[0] == old and len(recs) == len(world["files"])
    assert sorted(r["path"].rsplit("/", 1)[1] for r in recs[1:]) == sorted(set(world["files"]) - {"p0.jpg"})


def test_query_radius_without_a_perceptual_hash_or_kind_name_is_a_usage_error(world):
    md5 = next(h for k, h, _ in world["rows"] if k == "md5")
    p = run("query", "i.hsi", md5, "--radius", "5", cwd=world["root"])
    assert p.returncode == 2 and "no perceptual hash is matched here" in p.stderr, p.stderr
    ph = next(h for k, h, _ in world["rows"] if k == "phash")
    p = run("query", "i.hsi", ph, "--radius", "=5", cwd=world["root"])
    assert p.returncode == 2 and "name the kind before '='" in p.stderr, p.stderr


def test_part_ids_naming_rows_of_another_kind_make_no_match(tmp_path):
    """A damaged or forged file whose PDQ part holds the ids of pHash and MD5 rows: no crash, and no
    match reported as PDQ through those rows."""
    from hashsieve.index import HashIndex
    from hashsieve.storage import load_parts, save_parts
    pdq_hex = bytes(range(32)).hex()
    (tmp_path / "l.txt").write_text(f"pdq {pdq_hex}\nphash 8f373714acfcf4d0\nmd5 {'ab' * 16}\n")
    run("build", "l.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    parts = load_parts(tmp_path / "i.hsi")
    forged = HashIndex(bits=256)
    forged.add(np.repeat(PDQ.from_hex([pdq_hex]), 2, axis=0), np.array([1, 2], np.int64))   # the phash, md5 ids
    save_parts({"phash": parts["phash"], "pdq": forged}, tmp_path / "i.hsi", incremental=False)
    with hs.open_lists(tmp_path / "i.hsi") as li:
        assert li.match(PDQ.from_hex([pdq_hex]), kind="pdq") == [[]]
        assert li.nearest(PDQ.from_hex([pdq_hex]), 2, kind="pdq") == [[]]
    run("query", "i.hsi", pdq_hex, cwd=tmp_path, check=0)


def test_dihedral_is_the_kinds_property_and_pdq_is_hashed_once(world, monkeypatch):
    assert KINDS["pdq"].dihedral and not any(k.dihedral for k in KINDS.values() if k.name != "pdq")
    calls = []
    real = type(PDQ).hash

    def counting(kind, *args, **kwargs):
        calls.append(kind.name)
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(type(PDQ), "hash", counting)
    data = world["files"]["p2.jpg"]
    (hashes, *_), = hash_jobs([data], ("phash", "pdq"), False, None, 1 << 30, dihedral=True)
    assert calls == ["phash", "pdq"]
    code, quality, _, variants, _ = hashes["pdq"]
    assert PDQ.to_hex(code) == PDQ.to_hex(hs.hash_image(data, "pdq"))
    assert quality == hs.hash_image(data, "pdq", with_quality=True)[1]
    assert PDQ.to_hex(variants) == PDQ.to_hex(hs.hash_image(data, "pdq", dihedral=True))


def test_fast_help_gives_the_pdq_drift():
    for command in ("scan", "hash"):
        text = " ".join(run(command, "--help", check=0).stdout.split())
        assert "a few for PDQ" in text, text


def test_resume_warns_about_files_scanned_without_a_kind(world):
    report = world["root"] / "by-phash.jsonl"
    run("scan", world["up"], "--index", "i.hsi", "--kind", "phash", "--report", report, "--overwrite",
        "--workers", "1", cwd=world["root"])
    hashed = sum(r["hash"] is not None for r in read_jsonl(report))
    p = run("scan", world["up"], "--index", "i.hsi", "--report", report, "--resume", "--workers", "1",
            cwd=world["root"])
    assert p.returncode in (0, 1) and f"{hashed} files of {report} were scanned without pdq hashes" in p.stderr
    assert "without phash" not in p.stderr
    p = run("scan", world["up"], "--index", "i.hsi", "--report", report, "--resume", "--workers", "1",
            "--kind", "phash", cwd=world["root"])
    assert "scanned without" not in p.stderr, p.stderr


def test_a_forged_kind_in_single_index_metadata_is_an_open_error(tmp_path):
    """A version 2 file names its kind in the metadata; any JSON value there is refused cleanly."""
    from hashsieve.storage import load_index, save_index
    (tmp_path / "l.txt").write_text("8f373714acfcf4d0\n")
    run("build", "l.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    for bad in ([], {"a": 1}, 5, "md5"):
        ix = load_index(tmp_path / "i.hsi")
        info = {**ix.metadata["hashsieve"], "kind": bad}
        save_index(ix, tmp_path / "i.hsi", metadata={"hashsieve": info}, incremental=False)
        with pytest.raises(hs.IndexOpenError, match="is not one this hashsieve knows"):
            hs.open_lists(tmp_path / "i.hsi")
        p = run("info", "i.hsi", cwd=tmp_path)
        assert p.returncode == 2 and "not one this hashsieve knows" in p.stderr, p.stderr


def test_a_csv_kind_that_is_no_name_is_a_bad_row(tmp_path):
    from hashsieve.lists import HashList, ListError
    pdq_hex = bytes(range(32)).hex()
    path = tmp_path / "l.csv"
    path.write_text(f"hash,kind\n{pdq_hex},pdq\n{pdq_hex},PDQ!\n{pdq_hex},sha256\n")
    with pytest.raises(ListError, match=r"l.csv:3: kind 'pdq!' is not a kind name"):
        list(HashList(path))
    hl = HashList(path, skip_bad=True)
    assert len(list(hl)) == 1 and hl.skipped == 1 and hl.unsupported == {"sha256": 1}


def test_record_kinds_of_new_and_old_report_records():
    from hashsieve.scan import record_kinds
    assert record_kinds({"hash": "ab" * 32, "hashes": {"phash": {"hash": None, "error": "x"},
                                                      "pdq": {"hash": "ab" * 32}}}) == {"phash", "pdq"}
    assert record_kinds({"hash": "0" * 16}) == {"phash", "dhash", "ahash", "whash"}
