"""In-process tests of the archive walker and the report reader (fast; no worker processes)."""
import io
import tarfile

import pytest

import imagegen
from hashsieve.scan import Limits, read_report, walk


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_walk_nested_duplicates_and_done(tmp_path):
    inner = imagegen.zip_bytes([("a.jpg", b"x")])
    (tmp_path / "outer.zip").write_bytes(imagegen.zip_bytes([("d/a.jpg", b"1"), ("d/a.jpg", b"2"), ("in.zip", inner)]))
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
