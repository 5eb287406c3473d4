"""Hash lists, the provenance table and the commands that update an index from lists."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hashsieve as hs
from hashsieve import cli
from hashsieve.lists import HashList, ListError, list_spec, parse_hash
from test_cli import CLI, run





def one_line_error(p):
    """The command failed with exit 2 and one 'hashsieve: error:' line, no traceback."""
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hashsieve: error:"), p.stderr
    return lines[0]


# ====================================================================== parsing
def test_parse_hash_kinds_and_errors():
    assert parse_hash("0xABCDEF0123456789") == ("phash", "abcdef0123456789")
    assert parse_hash("d41d8cd98f00b204e9800998ecf8427e")[0] == "md5"
    assert parse_hash("da39a3ee5e6b4b0d3255bfef95601890afd80709")[0] == "sha1"
    with pytest.raises(ValueError, match="PDQ hash or a SHA-256 digest; .*--kind pdq"):
        parse_hash("ab" * 32)
    with pytest.raises(ValueError, match="'g'"):
        parse_hash("g123456789abcdef")


def test_plain_list_comments_and_line_numbers(tmp_path):
    p = tmp_path / "hl.txt"
    p.write_text("# header\n\n0123456789abcdef  # trailing, with a comma\nFEDCBA9876543210\n0123456789abcdef\n"
                 "not-a-hash\n")
    with pytest.raises(ListError) as e:
        list(HashList(p))
    assert e.value.line == 6 and str(p) in str(e.value) and "--skip-bad" in str(e.value)
    hl = HashList(p, skip_bad=True)
    rows = list(hl)
    assert [x.hash for x in rows] == ["0123456789abcdef", "fedcba9876543210", "0123456789abcdef"]
    assert [x.line for x in rows] == [3, 4, 5] and hl.skipped == 1 and hl.skipped_examples[0][0] == 6
    assert hl.name == "hl" and hl.rows == 3 and len(hl.sha256) == 64


def test_csv_list_columns_quoting_bom(tmp_path):
    p = tmp_path / "x.csv"
    p.write_bytes('\ufeffHash,ID,Label,Source\n0123456789abcdef,7,"a, quoted label",s1\n'
                  'd41d8cd98f00b204e9800998ecf8427e,,md5 row,\n'.encode("utf-8"))
    hl = HashList(p, name="custom")
    a, b = list(hl)
    assert (a.kind, a.row_id, a.label, a.extra, a.line) == ("phash", "7", "a, quoted label", {"source": "s1"}, 2)
    assert (b.kind, b.row_id, b.label) == ("md5", None, "md5 row")
    assert hl.name == "custom" and hl.counts == {"phash": 1, "md5": 1}


def test_csv_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("hash,id\n0123456789abcdef,1\n0123456789abcdef,2,extra\n")
    with pytest.raises(ListError, match=r"bad.csv:3: 3 columns"):
        list(HashList(p))
    p.write_bytes(b"hash\n0123456789abcdef\n\xff\xfe\n")
    with pytest.raises(ListError, match=r"bad.csv:3: not UTF-8"):
        list(HashList(p))


def test_unterminated_quote_is_an_error_at_the_record_start(tmp_path):
    """Item 8: an unterminated quote used to swallow the rest of the file into one label."""
    p = tmp_path / "q.csv"
    p.write_text('hash,id,label\n0123456789abcdef,1,"never closed\n1123456789abcdef,2,x\n2123456789abcdef,3,y\n')
    with pytest.raises(ListError, match=r"q.csv:2: unterminated quote"):
        list(HashList(p))
    # Closed again later: the record spans lines 2-3, which is refused too (it swallowed a row).
    p.write_text('hash,id,label\n0123456789abcdef,1,"opens\n1123456789abcdef,2,closes"\n2123456789abcdef,3,y\n')
    with pytest.raises(ListError, match=r"q.csv:2: a quoted field runs from line 2 to line 3"):
        list(HashList(p))
    hl = HashList(p, skip_bad=True)
    assert [e.line for e in hl] == [4] and hl.skipped == 1


def test_line_numbers_count_newlines_only(tmp_path):
    """Item 8: \\x0b, \\x1c and \\u2028 inside a row are not line breaks (str.splitlines thinks so)."""
    p = tmp_path / "odd.csv"
    p.write_text("hash,id,label\n0123456789abcdef,1,a\x0bb\x1cc\u2028d\n1123456789abcdef,2,ok\nnothex,3,x\n",
                 encoding="utf-8")
    with pytest.raises(ListError, match=r"odd.csv:4: "):
        list(HashList(p))
    p = tmp_path / "odd.txt"
    p.write_text("# comment \x0b\u2028 still a comment\n0123456789abcdef\nnothex\n", encoding="utf-8")
    with pytest.raises(ListError, match=r"odd.txt:3: "):
        list(HashList(p))


def test_semicolon_csv_is_read(tmp_path):
    p = tmp_path / "semi.csv"
    p.write_text("hash;id;label\n0123456789abcdef;7;first\n")
    (e,) = list(HashList(p))
    assert (e.hash, e.row_id, e.label) == ("0123456789abcdef", "7", "first")


def test_list_spec():
    assert list_spec("hotline=/x/y.csv") == ("hotline", "/x/y.csv")
    assert list_spec("/data/industry.txt") == ("industry", "/data/industry.txt")


# ====================================================================== provenance safety (item 1)
def _forged_index(path, provenance):
    index = hs.HashIndex()
    index.add(np.array([1, 2], dtype=np.uint64))
    index.save(path, metadata={"hashsieve": {"kind": "phash", "provenance": provenance, "schema": 1}})


@pytest.mark.parametrize("name", ["../victim.txt", "ABSOLUTE", "x.lists-0123456789ab.db/../../victim.txt",
                                  "i.hsi.lists-zzzzzzzzzzzz.db"])
def test_provenance_path_cannot_leave_index_folder(tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if name == "ABSOLUTE":
        name = str(victim)
    _forged_index(work / "i.hsi", name)
    (work / "l.txt").write_text("0123456789abcdef\n")
    for args in (["build", "l.txt", "-o", "i.hsi"], ["add", "i.hsi", "l.txt"], ["remove", "i.hsi", "l.txt"],
                 ["info", "i.hsi"], ["query", "i.hsi", "0123456789abcdef"],
                 ["scan", "l.txt", "--index", "i.hsi"]):
        p = run(*args, cwd=work)
        assert "provenance" in one_line_error(p), args
        assert victim.read_text() == "precious", args
    assert sorted(os.listdir(work)) == ["i.hsi", "i.hsi.lock", "l.txt"]


def test_provenance_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim.db"
    victim.write_text("precious")
    work = tmp_path / "work"
    work.mkdir()
    name = "i.hsi.lists-0123456789ab.db"
    os.symlink(victim, work / name)
    _forged_index(work / "i.hsi", name)
    (work / "l.txt").write_text("0123456789abcdef\n")
    for args in (["build", "l.txt", "-o", "i.hsi"], ["add", "i.hsi", "l.txt"]):
        assert "symbolic link" in one_line_error(run(*args, cwd=work))
    assert victim.read_text() == "precious" and os.path.islink(work / name)


# ====================================================================== updates (issue 11 item 3)
def test_rerunning_an_update_is_harmless(tmp_path):
    (tmp_path / "base.csv").write_text("hash,id,label\n00000000ffffffff,A1,first\n")
    (tmp_path / "today.csv").write_text("hash,id,label\n0f0f0f0f0f0f0f0f,B1,new\n0f0f0f0f0f0f0f0f,B1,repeat\n"
                                        "0f0f0f0f0f0f0f0f,B2,same hash other id\n")
    run("build", "hotline=base.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    p = run("add", "i.hsi", "hotline=today.csv", cwd=tmp_path, check=0)
    assert "1 already present" in p.stderr and "added 2 entries" in p.stderr
    p = run("add", "i.hsi", "hotline=today.csv", cwd=tmp_path, check=0)
    assert "3 already present" in p.stderr and "added 0 entries" in p.stderr
    p = run("query", "i.hsi", "0f0f0f0f0f0f0f0f", "-r", "0", "--json", cwd=tmp_path, check=1)
    assert sorted(m["id"] for m in json.loads(p.stdout)["matches"]) == ["B1", "B2"]
    info = json.loads(run("info", "i.hsi", "--json", cwd=tmp_path, check=0).stdout)
    assert info["count"] == 3
    # The same list under another name is another list: its rows are added.
    p = run("add", "i.hsi", "industry=today.csv", cwd=tmp_path, check=0)
    assert "added 2 entries" in p.stderr


def test_two_lists_of_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "hotline.txt").write_text("00000000ffffffff\n")
    (tmp_path / "b" / "hotline.csv").write_text("hash\n0f0f0f0f0f0f0f0f\n")
    line = one_line_error(run("build", "a/hotline.txt", "b/hotline.csv", "-o", "i.hsi", cwd=tmp_path))
    assert "a/hotline.txt" in line and "b/hotline.csv" in line and "NAME=PATH" in line
    assert not (tmp_path / "i.hsi").exists()


# ====================================================================== exit statuses (item 13)
def test_query_usage_errors_exit_2(tmp_path):
    (tmp_path / "a.txt").write_text("00000000ffffffff\n")
    run("build", "a.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    for args, word in ((["-r", "70"], "--radius"), (["-r", "-1"], "--radius"), (["-k", "0"], "-k"),
                       (["-k", str(2**31)], "-k")):
        assert word in one_line_error(run("query", "i.hsi", "00000000ffffffff", *args, cwd=tmp_path)), args
    assert "--radius" in one_line_error(run("scan", "a.txt", "--index", "i.hsi", "-r", "65", cwd=tmp_path))
    line = one_line_error(run("scan", "a.txt", "--index", "i.hsi", "--report", "no/such/dir/r.jsonl",
                              cwd=tmp_path))
    assert "no/such/dir/r.jsonl" in line


def test_internal_error_exits_3_with_one_line(monkeypatch, capsys):
    def broken(a):
        raise RuntimeError("boom")
    monkeypatch.setattr(cli, "cmd_info", broken)
    assert cli.main(["info", "whatever.hsi"]) == cli.EXIT_INTERNAL == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" in err[0] and "boom" in err[0]


def test_scan_where_every_file_failed_says_so(tmp_path):
    (tmp_path / "a.txt").write_text("00000000ffffffff\n")
    run("build", "a.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(b"not an image")
    (tmp_path / "in" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    p = run("scan", "in", "--index", "i.hsi", "--workers", "1", "--report", "r.jsonl", cwd=tmp_path, check=0)
    assert "every file failed (2 errors)" in p.stderr


# ====================================================================== bounded memory (item 12)
def _build_peak_kib(tmp_path, n):
    rng = np.random.default_rng(n)
    lst = tmp_path / f"l{n}.csv"
    with open(lst, "w") as f:
        f.write("hash,id,label\n")
        for k, h in enumerate(hs.to_hex(rng.integers(0, 2**64, n, dtype=np.uint64))):
            f.write(f"{h},ID{k},label {k}\n")
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's (pytest's) RSS across exec.
    code = ("import sys; from hashsieve.cli import main; "
            f"rc = main(['build', {str(lst)!r}, '-o', {str(tmp_path / f'i{n}.hsi')!r}]); "
            "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM'))); "
            "sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[-1])


def test_build_memory_per_entry_is_bounded(tmp_path):
    """Item 12: build used ~600 B per list entry (Python objects per row); the bound is 100 B plus a constant."""
    small, big = _build_peak_kib(tmp_path, 100_000), _build_peak_kib(tmp_path, 400_000)
    per_entry = (big - small) * 1024 / 300_000
    assert per_entry < 100, f"{per_entry:.0f} bytes of peak RSS per list entry"


def test_max_pixels_option(tmp_path):
    """Issue 11 item 8: the refusal told users to pass max_pixels=, which the command line had no way to."""
    from PIL import Image
    Image.new("RGB", (300, 200), (10, 200, 30)).save(tmp_path / "big.png")
    p = run("hash", "big.png", "--max-pixels", "50000", "--workers", "1", cwd=tmp_path)
    assert p.returncode == 1 and "60,000 pixels" in p.stderr
    run("hash", "big.png", "--max-pixels", "60000", "--workers", "1", cwd=tmp_path, check=0)
    assert "--max-pixels" in one_line_error(run("hash", "big.png", "--max-pixels", "0", cwd=tmp_path))
    assert "--workers" in run("hash", "big.png", "--workers", "100000", cwd=tmp_path).stderr


# ====================================================================== copies and the Python API (issue 11 items 4, 5)
def test_copy_of_an_updated_index_is_self_contained(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    rng = np.random.default_rng(4)
    with open(src / "base.csv", "w") as f:
        f.write("hash,id\n" + "".join(f"{h},B{k}\n" for k, h in
                                      enumerate(hs.to_hex(rng.integers(0, 2**64, 5000, dtype=np.uint64)))))
    (src / "today.csv").write_text("hash,id,label\n0f0f0f0f0f0f0f0f,T1,today\n")
    run("build", "hotline=base.csv", "-o", "i.hsi", cwd=src, check=0)
    run("add", "i.hsi", "hotline=today.csv", cwd=src, check=0)
    info = json.loads(run("info", "i.hsi", "--json", cwd=src, check=0).stdout)
    assert len(info["files"]) == 3 and ".base-" in info["files"][1], info["files"]   # the daily update's base
    assert all(os.path.exists(os.path.join(src, f)) for f in info["files"])
    run("copy", "i.hsi", dst, cwd=src, check=0)
    assert "exists" in one_line_error(run("copy", "i.hsi", dst, cwd=src))
    for f in os.listdir(src):
        os.unlink(src / f)
    names = sorted(os.listdir(dst))
    assert len(names) == 2 and names[0] == "i.hsi" and ".lists-" in names[1], names
    copied = json.loads(run("info", "i.hsi", "--json", cwd=dst, check=0).stdout)
    assert copied["count"] == 5001 and len(copied["files"]) == 2
    p = run("query", "i.hsi", "0f0f0f0f0f0f0f0f", "-r", "0", "--json", cwd=dst, check=1)
    assert [m["id"] for m in json.loads(p.stdout)["matches"]] == ["T1"]


def test_open_lists_gives_the_scan_records_from_many_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    (tmp_path / "l.csv").write_text("hash,id,label,source\n00000000ffffffff,A1,first,s1\n"
                                    "00000000fffffff0,A2,second,\nd41d8cd98f00b204e9800998ecf8427e,M1,empty file,\n")
    run("build", "l.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    want = json.loads(run("query", "i.hsi", "00000000ffffffff", "-r", "8", "--json", cwd=tmp_path).stdout)["matches"]
    with hs.open_lists(tmp_path / "i.hsi") as li:
        codes = hs.from_hex(["00000000ffffffff", "ffffffff00000000"])
        with ThreadPoolExecutor(8) as pool:      # a service's threads share one ListIndex
            results = list(pool.map(lambda _: li.match(codes), range(64)))
        assert all(r == [want, []] for r in results)
        assert [m["id"] for m in want] == ["A1", "A2"] and want[1]["distance"] == 4
        assert li.nearest(codes[:1], 1) == [want[:1]]
        (md5,) = li.match_digests(["D41D8CD98F00B204E9800998ECF8427E"], "md5")
        assert [m["id"] for m in md5] == ["M1"]
        prov = li.provenance([0, 1, 99])
        assert sorted(prov) == [0, 1]
        assert prov[0] == {"list": "l", "id": "A1", "label": "first", "kind": "phash",
                           "hash": "00000000ffffffff", "line": 2, "extra": {"source": "s1"}}
    with pytest.raises(hs.IndexOpenError, match="no such index"):
        hs.open_lists(tmp_path / "missing.hsi")


def test_degenerate_hashes_make_no_perceptual_match(tmp_path):
    """Issue 11 item 1: a striped upload (pHash 8000008080000080, high detail score) matched every
    solid-image entry; a degenerate hash carries no identity on either side of a match."""
    from hashsieve.kinds import KINDS
    (tmp_path / "l.csv").write_text("hash,id\n0000000000000000,SOLID\nff80808080808080,STRIPES\n"
                                    "8f0f3f7f0f0f0f00,PHOTO\n")
    p = run("build", "l.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    assert "2 entries have degenerate phash hashes" in p.stderr and "--match-degenerate" in p.stderr
    with hs.open_lists(tmp_path / "i.hsi") as li:
        queries = hs.from_hex(["8000008080000080",      # striped upload: degenerate itself
                               "ff80808080808081",      # ordinary-looking, 1 bit from the STRIPES entry
                               "8f0f3f7f0f0f0f01"])     # a copy of PHOTO
        assert KINDS["phash"].degenerate(queries).tolist() == [True, False, False]
        got = li.match(queries)
        assert [[m["id"] for m in r] for r in got] == [[], [], ["PHOTO"]]
        allowed = li.match(queries, match_degenerate=True)
        assert [[m["id"] for m in r] for r in allowed] == [["SOLID"], ["STRIPES"], ["PHOTO"]]
        assert [[m["id"] for m in r] for r in li.nearest(queries, 1)] == [[], [], ["PHOTO"]]


def test_semicolon_list_builds_from_the_command_line(tmp_path):
    """Issue 11 item 13: a semicolon-separated CSV was refused ('no hash column (columns: hash;id;label)')."""
    (tmp_path / "semi.csv").write_text("hash;id;label\n00000000ffffffff;S1;first\n")
    run("build", "semi.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    p = run("query", "i.hsi", "00000000ffffffff", "-r", "0", "--json", cwd=tmp_path, check=1)
    assert [(m["id"], m["label"]) for m in json.loads(p.stdout)["matches"]] == [("S1", "first")]


def test_help_and_docstrings_describe_defaults_and_threads():
    """Issue 11 item 15: IndexHandle's query methods and get_isa had no docstrings; hash --kind showed no default."""
    for f in (hs.IndexHandle.range_search, hs.IndexHandle.search, hs.IndexHandle.explain, hs.get_isa):
        assert f.__doc__ and len(f.__doc__.strip()) > 20, f
    assert "threads" in hs.HashIndex.__doc__
    assert "default phash" in run("hash", "--help").stdout
    assert "default radius" in run("query", "--help").stdout


# ====================================================================== review findings
def test_wider_radius_keeps_exact_matches(tmp_path):
    """The degenerate margin follows the radius only up to the kind's default: at r >= 32 every hash was degenerate."""
    (tmp_path / "l.csv").write_text("hash,id\n8f0f3f7f0f0f0f00,a\nd1c4e8a3b5f60972,b\n")
    run("build", "l.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    for r in ("8", "24", "32", "40"):
        p = run("query", "i.hsi", "d1c4e8a3b5f60972", "-r", r, "--json", cwd=tmp_path, check=1)
        assert [m["id"] for m in json.loads(p.stdout)["matches"]][0] == "b", r


def test_forged_index_cannot_take_another_indexs_table(tmp_path):
    """A plain-looking name is not enough: the table must be the one this index was saved with."""
    (tmp_path / "l.csv").write_text("hash,id\n8f0f3f7f0f0f0f00,a\n")
    run("build", "l.csv", "-o", "b.hsi", cwd=tmp_path, check=0)
    (b_table,) = [n for n in os.listdir(tmp_path) if n.startswith("b.hsi.lists-")]
    _forged_index(tmp_path / "a.hsi", b_table)
    for args in (["build", "l.csv", "-o", "a.hsi"], ["add", "a.hsi", "l.csv"], ["remove", "a.hsi", "l.csv"],
                 ["info", "a.hsi"]):
        assert "belongs to another index" in one_line_error(run(*args, cwd=tmp_path)), args
    assert os.path.exists(tmp_path / b_table)
    run("info", "b.hsi", cwd=tmp_path, check=0)


def test_output_that_cannot_encode_names_is_escaped(tmp_path):
    from PIL import Image
    (tmp_path / "in").mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "in" / "\u65e5\u672c.png")
    Image.new("RGB", (64, 48), (10, 200, 10)).save(tmp_path / "in" / "z.png")
    p = subprocess.run(CLI + ["hash", "in", "--workers", "1"], capture_output=True, cwd=tmp_path, timeout=60,
                       env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 2 and b"\\u65e5" in p.stdout


def test_limits_and_pipes_are_not_internal_errors(tmp_path):
    (tmp_path / "l.csv").write_text("hash,id\n8f0f3f7f0f0f0f00,a\n")
    run("build", "l.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    assert "--max-file-mb" in one_line_error(run("hash", "l.csv", "--max-file-mb", "inf", cwd=tmp_path))
    assert "--max-file-mb" in one_line_error(run("hash", "l.csv", "--max-file-mb", "1e-9", cwd=tmp_path))
    p = run("scan", "l.csv", "--index", "i.hsi", "--workers", "1", "--report", "/dev/stdout", "--overwrite",
            cwd=tmp_path)
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[0])["path"] == "l.csv", p.stderr
    # A hash list may come from a pipe (process substitution).
    p = subprocess.run(["bash", "-c", " ".join(CLI) + " build hl=<(cat l.csv) -o p.hsi"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(run("info", "p.hsi", "--json", cwd=tmp_path, check=0).stdout)["count"] == 1
    assert "Is a directory" in one_line_error(run("build", "hl=.", "-o", "q.hsi", cwd=tmp_path))


def test_remove_reports_skipped_rows(tmp_path):
    (tmp_path / "l.csv").write_text("hash,id\n8f0f3f7f0f0f0f00,a\n")
    run("build", "l.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    (tmp_path / "gone.csv").write_text("hash,id\n8f0f3f7f0f0f0f00,a\nnothex,b\n")
    p = run("remove", "i.hsi", "gone.csv", "--skip-bad", cwd=tmp_path, check=0)
    assert "1 bad rows skipped" in p.stderr and "gone.csv:3: skipped" in p.stderr


# ====================================================================== several kinds (issue 13)
PDQ_A = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PDQ_B = "0123456789abcdef" * 4


def test_64_hex_pdq_hashes_need_a_kind_in_plain_lists(tmp_path):
    """A 64-hex-digit hash was refused ("not supported yet"); it is PDQ when the reader is told so."""
    p = tmp_path / "mixed.txt"
    p.write_text(f"0123456789abcdef\n{PDQ_A.upper()}\nd41d8cd98f00b204e9800998ecf8427e\n")
    with pytest.raises(ListError, match=r"mixed.txt:2: .*PDQ hash or a SHA-256 digest.*--kind pdq"):
        list(HashList(p))
    hl = HashList(p, kinds=("pdq",))
    assert [(e.kind, e.hash, e.line) for e in hl] == [("phash", "0123456789abcdef", 1), ("pdq", PDQ_A, 2),
                                                      ("md5", "d41d8cd98f00b204e9800998ecf8427e", 3)]
    assert hl.counts == {"phash": 1, "pdq": 1, "md5": 1}
    (tmp_path / "one.txt").write_text("0123456789abcdef\n")
    (e,) = list(HashList(tmp_path / "one.txt", kinds=("dhash", "pdq")))
    assert e.kind == "dhash"
    with pytest.raises(ValueError, match="phash and dhash are both 64-bit"):
        HashList(p, kinds=("phash", "dhash"))


def test_threatexchange_type_hash_lines_and_unsupported_types(tmp_path):
    """python-threatexchange's local files: 'TYPE HASH' per line; types hashsieve does not match are
    skipped and counted (a warning at build), not an error."""
    p = tmp_path / "te.txt"
    p.write_text(f"pdq {PDQ_A}\nvideo_md5 D41D8CD98F00B204E9800998ECF8427E\nurl https://example.com/a b\n"
                 "raw_text some words here\nPDQ 0123456789abcdef\nphash 0123456789abcdef\n")
    with pytest.raises(ListError, match=r"te.txt:5: .* a pdq hash has 64"):
        list(HashList(p))
    hl = HashList(p, skip_bad=True)
    assert [(e.kind, e.hash) for e in hl] == [("pdq", PDQ_A), ("md5", "d41d8cd98f00b204e9800998ecf8427e"),
                                              ("phash", "0123456789abcdef")]
    assert hl.unsupported == {"url": 1, "raw_text": 1} and hl.skipped == 1
    # Typed PDQ rows need no --kind; a 64-hex untyped row in the same file still does.
    p.write_text(f"pdq {PDQ_A}\n{PDQ_B}\n")
    with pytest.raises(ListError, match=r"te.txt:2: .*--kind pdq"):
        list(HashList(p))


def test_csv_kind_column(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text(f"hash,kind,id\n{PDQ_A},pdq,1\n{PDQ_B},sha256,2\n0123456789abcdef,,3\n0123456789abcdef,dhash,4\n"
                 f"0123456789abcdef,pdq,5\n")
    with pytest.raises(ListError, match=r"k.csv:6: '0123456789abcdef' has 16 hex digits; a pdq hash has 64"):
        list(HashList(p))
    hl = HashList(p, skip_bad=True)
    assert [(e.kind, e.row_id, e.extra) for e in hl] == [("pdq", "1", None), ("phash", "3", None),
                                                         ("dhash", "4", None)]
    assert hl.unsupported == {"sha256": 1} and hl.skipped == 1


def test_degenerate_pdq_entries_are_counted_per_kind(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text(f"pdq {'0' * 64}\npdq {PDQ_A}\n0000000000000000\n")
    hl = HashList(p)
    assert len(list(hl)) == 3
    assert hl.degenerate == {"pdq": 1, "phash": 1} and hl.degenerate_example["pdq"] == (1, "0" * 64)
    p = run("build", "d.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    assert f"1 entries have degenerate pdq hashes (e.g. line 1: {'0' * 64})" in p.stderr
    assert "1 entries have degenerate phash hashes (e.g. line 3: 0000000000000000)" in p.stderr


def test_schema_1_tables_read_as_the_index_kind_and_are_rewritten_by_an_update(tmp_path):
    """Tables from before several kinds say 'perceptual': read as the index's kind; an update migrates them."""
    import sqlite3
    (tmp_path / "a.txt").write_text("00000000ffffffff\n")
    run("build", "a.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    with hs.open_lists(tmp_path / "i.hsi") as li:
        table = li.prov.path
    db = sqlite3.connect(table)
    db.execute("UPDATE entries SET kind='perceptual' WHERE kind='phash'")
    db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.commit()
    db.close()
    with hs.open_lists(tmp_path / "i.hsi") as li:
        assert [m["kind"] for m in li.match(0x00000000ffffffff)[0]] == ["phash"]
        assert li.provenance([0])[0]["kind"] == "phash" and li.counts()["phash"] == 1
    (tmp_path / "b.txt").write_text("00000000fffffff0\n")
    run("add", "i.hsi", "b.txt", cwd=tmp_path, check=0)
    with hs.open_lists(tmp_path / "i.hsi") as li:
        assert li.prov.schema() == 2
        assert [m["list"] for m in li.match(0x00000000ffffffff)[0]] == ["a", "b"]
        kinds = li.prov.db.execute("SELECT DISTINCT kind FROM entries").fetchall()
    assert kinds == [("phash",)]


def _mixed_index(tmp_path):
    """An index of a phash + pdq + md5 list: the ListIndex API on it."""
    (tmp_path / "m.csv").write_text(f"hash,kind,id\n00000000ffffffff,phash,P1\n{PDQ_A},pdq,Q1\n{PDQ_B},pdq,Q2\n"
                                    "d41d8cd98f00b204e9800998ecf8427e,md5,M1\n")
    run("build", "m.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    return hs.open_lists(tmp_path / "i.hsi")


def test_list_index_matches_each_kind_with_its_radius(tmp_path):
    from hashsieve.kinds import KINDS
    pdq = KINDS["pdq"]
    with _mixed_index(tmp_path) as li:
        assert [k.name for k in li.kinds] == ["phash", "pdq"]
        assert li.counts() == {"phash": 1, "pdq": 2, "md5": 1, "sha1": 0}
        near = pdq.from_hex([PDQ_A])
        near[0, :3] ^= np.uint8(0xFF)                         # 24 bits off: within PDQ's 31
        got = li.match(near, kind="pdq")[0]
        assert [(m["id"], m["distance"], m["kind"]) for m in got] == [("Q1", 24, "pdq")]
        assert li.match(near, radius=23, kind=pdq) == [[]]
        assert [m["id"] for m in li.nearest(pdq.from_hex([PDQ_B])[0], 2, kind="pdq")[0]] == ["Q2", "Q1"]
        assert [m["id"] for m in li.match(0x00000000ffffffff, kind="phash")[0]] == ["P1"]
        with pytest.raises(ValueError, match="holds phash and pdq hashes; say which with kind="):
            li.match(0x00000000ffffffff)
        with pytest.raises(ValueError, match="holds no dhash hashes"):
            li.match(0x00000000ffffffff, kind="dhash")
        with pytest.raises(ValueError, match=r"one HashIndex each: use .indexes\[kind\]"):
            li.index
        li.verify()
    # verify() checks the PDQ part's sections too.
    data = bytearray((tmp_path / "i.hsi").read_bytes())
    sec = next(s for s in hs.read_metadata(tmp_path / "i.hsi")["sections"] if s["name"] == "segment1.codes")
    data[sec["offset"]] ^= 1
    (tmp_path / "i.hsi").write_bytes(bytes(data))
    with hs.open_lists(tmp_path / "i.hsi") as li:
        with pytest.raises(hs.IndexFormatError, match="segment1.codes: checksum mismatch"):
            li.verify()


def test_build_a_mixed_list_and_info_counts_per_kind(tmp_path):
    with _mixed_index(tmp_path):
        pass
    p = run("build", "m.csv", "-o", "i.hsi", cwd=tmp_path, check=0)
    assert "list m (m.csv): 1 phash, 2 pdq, 1 MD5 entries" in p.stderr
    assert "wrote i.hsi: 1 phash, 2 pdq hashes, 1 MD5/SHA-1 digests" in p.stderr
    info = json.loads(run("info", "i.hsi", "--json", cwd=tmp_path, check=0).stdout)
    assert info["format_version"] == 3 and info["kinds"] == ["phash", "pdq"] and info["code_bits"] is None
    assert info["counts"] == {"phash": 1, "pdq": 2, "md5": 1, "sha1": 0}
    assert [(x["kind"], x["code_bits"], x["count"]) for x in info["parts"]] == [("phash", 64, 1), ("pdq", 256, 2)]
    assert info["lists"][0]["counts"] == {"phash": 1, "pdq": 2, "md5": 1}
    text = run("info", "i.hsi", cwd=tmp_path, check=0).stdout
    assert "phash (64-bit codes), pdq (256-bit codes)" in text and "\npdq          2 live" in text
    assert "m: 1 phash, 2 pdq, 1 MD5;" in text


def test_plain_pdq_list_needs_kind_pdq_on_the_command_line(tmp_path):
    (tmp_path / "pdq.txt").write_text(f"{PDQ_A}\n{PDQ_B}\n")
    line = one_line_error(run("build", "pdq.txt", "-o", "i.hsi", cwd=tmp_path))
    assert "pdq.txt:1:" in line and "--kind pdq" in line and not (tmp_path / "i.hsi").exists()
    p = run("build", "pdq.txt", "-o", "i.hsi", "--kind", "pdq", cwd=tmp_path, check=0)
    assert "wrote i.hsi: 2 pdq hashes" in p.stderr
    info = json.loads(run("info", "i.hsi", "--json", cwd=tmp_path, check=0).stdout)
    assert info["format_version"] == 2 and info["code_bits"] == 256 and info["kinds"] == ["pdq"]
    assert "unknown kind pdqq" in run("build", "pdq.txt", "-o", "j.hsi", "--kind", "pdqq", cwd=tmp_path).stderr


def test_query_pdq_hex_with_radius_per_kind(tmp_path):
    with _mixed_index(tmp_path):
        pass
    off = bytearray.fromhex(PDQ_A)
    off[0] ^= 0x0F                                              # 4 bits from Q1
    p = run("query", "i.hsi", off.hex(), "00000000ffffffff", "--json", cwd=tmp_path, check=1)
    got = [json.loads(x) for x in p.stdout.splitlines()]
    assert [(g["kind"], [(m["id"], m["distance"]) for m in g["matches"]]) for g in got] == \
        [("pdq", [("Q1", 4)]), ("phash", [("P1", 0)])]
    assert run("query", "i.hsi", off.hex(), "-r", "pdq=3", cwd=tmp_path, check=0).stdout.endswith("no match\n")
    assert "ambiguous" in one_line_error(run("query", "i.hsi", off.hex(), "00000000ffffffff", "-r", "3",
                                             cwd=tmp_path))
    assert "from 0 to 256 bits" in one_line_error(run("query", "i.hsi", off.hex(), "-r", "pdq=300", cwd=tmp_path))
    # A 64-bit-only index says it holds no PDQ hashes.
    (tmp_path / "p.txt").write_text("00000000ffffffff\n")
    run("build", "p.txt", "-o", "p.hsi", cwd=tmp_path, check=0)
    assert "holds no pdq hashes" in one_line_error(run("query", "p.hsi", PDQ_A, "--kind", "pdq", cwd=tmp_path))


def test_add_and_remove_entries_of_every_kind(tmp_path):
    """A PDQ list added to a pHash index gives it a PDQ part; removals reach each kind's index."""
    (tmp_path / "p.txt").write_text("00000000ffffffff\n0f0f0f0f33333333\n")
    run("build", "p.txt", "-o", "i.hsi", cwd=tmp_path, check=0)
    (tmp_path / "q.txt").write_text(f"pdq {PDQ_A}\npdq {PDQ_B}\nmd5 d41d8cd98f00b204e9800998ecf8427e\n")
    run("add", "i.hsi", "q.txt", cwd=tmp_path, check=0)
    with hs.open_lists(tmp_path / "i.hsi") as li:
        assert li.counts() == {"phash": 2, "pdq": 2, "md5": 1, "sha1": 0}
        assert [m["list"] for m in li.match(hs.from_hex(PDQ_B), kind="pdq")[0]] == ["q"]
    # Untyped 64-digit rows are PDQ once the index holds PDQ hashes.
    (tmp_path / "gone.txt").write_text(f"{PDQ_B}\n0f0f0f0f33333333\n")
    run("remove", "i.hsi", "gone.txt", cwd=tmp_path, check=0)
    with hs.open_lists(tmp_path / "i.hsi") as li:
        assert {k: len(ix) for k, ix in li.indexes.items()} == {"phash": 1, "pdq": 1}
        assert li.match(hs.from_hex(PDQ_B), kind="pdq") == [[]]
        assert [m["id"] for m in li.match(hs.from_hex(PDQ_A), kind="pdq")[0]] == [None]
        assert li.match(0x0F0F0F0F33333333, kind="phash") == [[]]
    (tmp_path / "r.txt").write_text("1111111111111111\n")
    run("add", "i.hsi", "r.txt", cwd=tmp_path, check=0)
    with hs.open_lists(tmp_path / "i.hsi") as li:
        assert li.counts()["phash"] == 2 and li.counts()["pdq"] == 1
