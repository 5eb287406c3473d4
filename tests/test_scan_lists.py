"""In-process tests of hash-list parsing and the archive walker (fast; no worker processes)."""
import io
import tarfile
import zipfile

import pytest

from hashsieve.lists import ListError, list_spec, parse_hash, parse_list
from hashsieve.scan import Limits, read_report, walk


def test_parse_hash_kinds_and_errors():
    assert parse_hash("0xABCDEF0123456789") == ("perceptual", "abcdef0123456789")
    assert parse_hash("d41d8cd98f00b204e9800998ecf8427e")[0] == "md5"
    assert parse_hash("da39a3ee5e6b4b0d3255bfef95601890afd80709")[0] == "sha1"
    with pytest.raises(ValueError, match="PDQ"):
        parse_hash("ab" * 32)
    with pytest.raises(ValueError, match="'g'"):
        parse_hash("g123456789abcdef")


def test_plain_list_comments_and_line_numbers(tmp_path):
    p = tmp_path / "hl.txt"
    p.write_text("# header\n\n0123456789abcdef  # trailing\nFEDCBA9876543210\n0123456789abcdef\nnot-a-hash\n")
    with pytest.raises(ListError) as e:
        parse_list(p)
    assert e.value.line == 6 and str(p) in str(e.value) and "--skip-bad" in str(e.value)
    pl = parse_list(p, skip_bad=True)
    assert [x.hash for x in pl.entries] == ["0123456789abcdef", "fedcba9876543210"]
    assert [x.line for x in pl.entries] == [3, 4] and pl.duplicates == 1 and pl.skipped[0][0] == 6
    assert pl.name == "hl"


def test_csv_list_columns_quoting_bom(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes('\ufeffHash,ID,Label,Source\n0123456789abcdef,7,"a, quoted label",s1\n'
                  'd41d8cd98f00b204e9800998ecf8427e,,md5 row,\n'.encode("utf-8"))
    pl = parse_list(p, name="custom")
    a, b = pl.entries
    assert (a.kind, a.row_id, a.label, a.extra, a.line) == ("perceptual", "7", "a, quoted label", {"source": "s1"}, 2)
    assert (b.kind, b.row_id, b.label) == ("md5", None, "md5 row")
    assert pl.name == "custom"


def test_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("hash,id\n0123456789abcdef,1\n0123456789abcdef,2,extra\n")
    with pytest.raises(ListError, match=r"bad.csv:3: 3 columns"):
        parse_list(p)
    p.write_bytes(b"hash\n0123456789abcdef\n\xff\xfe\n")
    with pytest.raises(ListError, match=r"bad.csv:3: not UTF-8"):
        parse_list(p)


def test_list_spec():
    assert list_spec("hotline=/x/y.csv") == ("hotline", "/x/y.csv")
    assert list_spec("/data/industry.txt") == ("industry", "/data/industry.txt")


def _zip(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_walk_nested_duplicates_and_done(tmp_path):
    inner = _zip([("a.jpg", b"x")])
    (tmp_path / "outer.zip").write_bytes(_zip([("d/a.jpg", b"1"), ("d/a.jpg", b"2"), ("in.zip", inner)]))
    keys = [it.key for it in walk([tmp_path / "outer.zip"])]
    p = str(tmp_path / "outer.zip")
    assert keys == [(p, ("d/a.jpg",)), (p, ("d/a.jpg#2",)), (p, ("in.zip", "a.jpg"))]
    assert [it.key for it in walk([tmp_path / "outer.zip"], done={(p, ("d/a.jpg",))})] == keys[1:]
    assert list(walk([tmp_path / "outer.zip"], done={(p, ("in.zip",))}))[-1].key == (p, ("d/a.jpg#2",))


def test_tar_bomb_stops_with_one_error(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("zeros")
        info.size = 8 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "b.tar.gz").write_bytes(buf.getvalue())
    limits = Limits(ratio_floor=1 << 20, max_ratio=50)
    (item,) = list(walk([tmp_path / "b.tar.gz"], limits))
    assert item.member is None and "bomb" in item.error


def test_read_report_drops_partial_line(tmp_path):
    p = tmp_path / "r.jsonl"
    data = b'{"path": "a", "member": null}\n{"path": "b", "member": "m"}\n{"path": "c", "mem'
    p.write_bytes(data)
    recs, valid = read_report(p)
    assert [r["path"] for r in recs] == ["a", "b"] and valid == data.rindex(b"\n") + 1
    p.write_bytes(b'garbage\n{"path": "a", "member": null}\n')
    with pytest.raises(ValueError, match="r.jsonl:1"):
        read_report(p)
