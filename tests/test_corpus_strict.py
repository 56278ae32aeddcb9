"""Strict inputs for the corpus stages: a bad record or byte names the file, the line and the reason (clean checks
records exactly as dedup does), and nothing to work on is an error, not an empty corpus, while an incremental
run with nothing new still goes through."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from finmerge.cli import main
from finmerge.config import CleanConfig, DedupConfig, ParallelConfig
from finmerge.corpus.clean import clean
from finmerge.corpus.dedup import dedup
from finmerge.corpus.ingest import ingest
from finmerge.corpus.textio import DecodeError, EmptyInputError, decode_utf8

# Passes every clean filter (the REAL example of tests/test_clean.py).
REAL = (
    "当社は精密機械の製造を主な事業としております。当事業年度の売上高は12,345百万円（前期比3.2％増）となりました。"
    "工作機械の販売が堅調に推移したほか、測定機器も前期を上回りました。"
)
OTHER = (
    "当社グループは物流サービスを国内外で展開しております。倉庫の自動化を進めた結果、作業時間が大きく短縮されました。"
    "今後も設備投資を計画的に行い、収益力の向上に努めてまいります。"
)
FILING = (
    "株式会社テスト工業（E09999）有価証券報告書\n１【表紙】\n【会社名】　株式会社テスト工業\n３【事業の内容】\n"
    + REAL
)


def _line(rec: dict) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode() + b"\n"


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


GOOD = _line({"id": "a", "doc_id": "A", "text": REAL})

# (bad line 3 of a file, what the error says about it); line 2 is blank and still counts
BAD_LINES = [
    (_line({"doc_id": "B", "text": REAL}), r"line 3: expected a JSON object with a string 'id'"),
    (_line({"id": 7, "text": REAL}), r"line 3: expected a JSON object with a string 'id'"),
    (b"[1, 2]\n", r"line 3: expected a JSON object with a string 'id'"),
    (b'{"id": "b", "text": \n', r"line 3: invalid JSON"),
    (_line({"id": "b", "text": ["not", "a", "string"]}), r"line 3: 'text' is not a string"),
    ('{"id": "b", "text": "売上'.encode() + b"\xff" + '高"}\n'.encode(), r"line 3: invalid UTF-8: byte 0xff"),
]


# ----------------------------------------------------------------------------------------------------------------
# One record check for clean and dedup


@pytest.mark.parametrize("bad, says", BAD_LINES, ids=["no-id", "int-id", "array", "json", "text", "utf8"])
def test_clean_and_dedup_refuse_a_bad_record_with_one_message(tmp_path, bad, says):
    src = _write(tmp_path / "in.jsonl", GOOD + b"\n" + bad)
    with pytest.raises(ValueError, match=f"in.jsonl: {says}") as by_clean:
        clean(src, str(tmp_path / "clean"), CleanConfig(), str(tmp_path / "st"))
    with pytest.raises(ValueError, match=f"in.jsonl: {says}") as by_dedup:
        dedup(src, str(tmp_path / "dedup"), DedupConfig(), str(tmp_path / "st"))
    assert str(by_clean.value) == str(by_dedup.value)  # the same check, not two copies of it
    assert not (tmp_path / "clean").exists() and not (tmp_path / "dedup").exists()  # nothing committed


def test_clean_without_id_is_no_keyerror_and_names_the_folder_file(tmp_path):
    """The issue's case: clean on an ingest-like folder whose records lack ``id`` (a KeyError before)."""
    folder = tmp_path / "mine"
    _write(folder / "docs.jsonl", _line({"doc_id": None, "text": REAL}))
    with pytest.raises(
        ValueError, match=r"mine/docs.jsonl: line 1: expected a JSON object with a string 'id'"
    ):
        clean(str(folder), str(tmp_path / "out"), CleanConfig(), str(tmp_path / "st"))


def test_dedup_decode_error_names_the_line_across_worker_processes(tmp_path):
    bad = b'{"id": "z", "text": "\xe6\x97\xa5\xff"}\n'
    src = _write(tmp_path / "in.jsonl", GOOD + _line({"id": "b", "text": OTHER}) + b"\n" + bad)
    par = ParallelConfig(backend="process", workers=2, shard_docs=1)
    with pytest.raises(
        DecodeError, match=r"in.jsonl: line 4: invalid UTF-8: byte 0xff at byte 25 of the line"
    ):
        dedup(src, str(tmp_path / "out"), DedupConfig(), str(tmp_path / "st"), parallel=par)


def test_clean_refuses_what_it_could_not_write_and_tolerates_odd_sections(tmp_path):
    surrogate = b'{"id": "b", "company": "\\ud800", "text": "x"}\n'
    src = _write(tmp_path / "in.jsonl", GOOD + surrogate)
    with pytest.raises(ValueError, match=r"in.jsonl: line 2: .*lone surrogate"):
        clean(src, str(tmp_path / "out"), CleanConfig(), str(tmp_path / "st"))
    # A lone surrogate in the text is cleaned away, and a section that is not a string is no section name.
    odd = _line({"id": "c", "section": 5, "text": REAL[:20]})
    odd += b'{"id": "d", "text": "\\ud800' + REAL.encode() + b'"}\n'
    src = _write(tmp_path / "odd.jsonl", odd)
    res = clean(src, str(tmp_path / "odd"), CleanConfig(), str(tmp_path / "st"))
    assert (res["counts"]["in"], res["counts"]["kept"], res["counts"]["dropped/length"]) == (2, 1, 1)
    kept = json.loads((tmp_path / "odd" / "docs.jsonl").read_text(encoding="utf-8"))
    assert kept["id"] == "d" and kept["text"].startswith("当社は精密機械")


def test_ng_word_file_that_is_not_utf8_names_the_line(tmp_path):
    words = _write(tmp_path / "ng.txt", "カジノ\n# comment\n".encode() + "出会い系".encode("cp932") + b"\n")
    src = _write(tmp_path / "in.jsonl", GOOD)
    with pytest.raises(DecodeError, match=r"ng.txt: line 3: invalid UTF-8"):
        clean(src, str(tmp_path / "out"), CleanConfig(ng_words_uri=words), str(tmp_path / "st"))


def test_decode_utf8_line_column_and_bom():
    assert decode_utf8(b"\xef\xbb\xbf{}", "f") == "{}"
    with pytest.raises(
        DecodeError, match=r"^f: line 12: invalid UTF-8: byte 0x82 at byte 6 of the line"
    ) as err:
        decode_utf8(b"\xef\xbb\xbfok\n\xe3\x81\x82ab\x82", "f", line=11)
    assert err.value.line == 12


# ----------------------------------------------------------------------------------------------------------------
# Ingest: undecodable bytes are quarantined with file and line


def test_ingest_quarantine_rows_name_file_and_line_of_a_bad_byte(tmp_path):
    src = tmp_path / "src"
    _write(src / "ok.txt", FILING.encode())
    _write(
        src / "recs.jsonl",
        _line({"text": REAL}) + '{"text": "売上'.encode() + b"\xff" + '高が増えた"}\n'.encode(),
    )
    lines = FILING.encode().split(b"\n")
    lines[3] = lines[3] + b"\xff\xfe"
    _write(src / "bad.txt", b"\n".join(lines))
    res = ingest([str(src)], str(tmp_path / "out"), str(tmp_path / "st"))
    rows = [
        json.loads(x)
        for x in (tmp_path / "out" / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    reasons = {(Path(r["source"]).name, r["line"]): r["reason"] for r in rows}
    assert reasons[("recs.jsonl", 2)].startswith("invalid utf-8: 1 bad byte(s)")
    assert reasons[("bad.txt", None)].startswith("invalid utf-8: 2 bad byte(s)")
    assert reasons[("bad.txt", None)].endswith(
        "(line 4)"
    )  # the whole file is quarantined; the reason says where
    assert res["counts"]["docs"] > 0 and res["counts"]["quarantined"] == 2


# ----------------------------------------------------------------------------------------------------------------
# Nothing to work on is an error


def test_ingest_without_any_source_is_an_error_naming_the_cause(tmp_path):
    with pytest.raises(
        EmptyInputError, match=r"^ingest: no sources: give --input or set corpus.ingest.sources"
    ):
        ingest([], str(tmp_path / "out"), str(tmp_path / "st"))
    assert not (tmp_path / "out").exists()


def test_ingest_sources_that_hold_no_input_file_are_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "docs" / "README.md", b"# notes\n")
    for sources, says in [
        ([str(tmp_path / "empty")], r"no input files in sources \[.*empty'\]"),
        ([str(tmp_path / "empty" / "*.jsonl")], r"no input files in sources \[.*\*\.jsonl'\]"),
        ([str(tmp_path / "docs")], r"no input files .*; 1 file\(s\) of other formats skipped"),
    ]:
        with pytest.raises(EmptyInputError, match=says):
            ingest(sources, str(tmp_path / "out"), str(tmp_path / "st"))
    assert not (tmp_path / "out").exists()


def test_ingest_with_every_input_quarantined_is_an_error_naming_the_rows(tmp_path):
    src = tmp_path / "src"
    _write(src / "broken.jsonl", b"{broken\n")
    _write(src / "empty.txt", b"")
    with pytest.raises(EmptyInputError) as err:
        ingest([str(src)], str(tmp_path / "out"), str(tmp_path / "st"))
    msg = str(err.value)
    assert msg.startswith(f"ingest: 0 documents from sources ['{src}']: all 2 input file(s) quarantined")
    assert "broken.jsonl line 1: invalid json" in msg and "empty.txt: empty file" in msg
    assert not (tmp_path / "out").exists()


def test_clean_and_dedup_of_an_input_without_records_are_errors(tmp_path):
    for name, data in (("empty.jsonl", b""), ("blank.jsonl", b"\n  \n")):
        src = _write(tmp_path / name, data)
        with pytest.raises(EmptyInputError, match=f"^clean: {re.escape(src)} holds no records"):
            clean(src, str(tmp_path / "c"), CleanConfig(), str(tmp_path / "st"))
        with pytest.raises(EmptyInputError, match=f"^dedup: {re.escape(src)} holds no records"):
            dedup(src, str(tmp_path / "d"), DedupConfig(), str(tmp_path / "st"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_cli_ingest_without_input_and_no_configured_sources_exits_1(tmp_path, capsys):
    staging = ["--set", f"storage.staging_dir={tmp_path / 'staging'}"]
    assert main(["corpus", "ingest", "--output", str(tmp_path / "i"), *staging]) == 1
    assert "finmerge: error: ingest: no sources: give --input" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()


def test_incremental_runs_with_nothing_new_still_work(tmp_path):
    """As flows/corpus.py runs them: a re-run over the same files, new files that are all quarantined, and a new
    batch that clean drops whole are empty batches of a lineage, not errors."""
    st = str(tmp_path / "st")
    src = tmp_path / "src"
    _write(src / "a.jsonl", _line({"doc_id": "A", "text": REAL}) + _line({"doc_id": "B", "text": OTHER}))
    b1 = ingest([str(src)], str(tmp_path / "i1"), st)
    clean(str(tmp_path / "i1"), str(tmp_path / "c1"), CleanConfig(), st)
    d1 = dedup(str(tmp_path / "c1"), str(tmp_path / "d1"), DedupConfig(), st)
    assert b1["counts"]["docs"] == 2 and d1["counts"]["kept"] == 2

    same = ingest([str(src)], str(tmp_path / "i2"), st, prev_uri=str(tmp_path / "i1"))
    assert same["counts"]["docs"] == 0 and same["counts"]["unchanged_files"] == 1

    _write(src / "junk.jsonl", b"{broken\n")  # new, and quarantined whole
    q = ingest([str(src)], str(tmp_path / "i3"), st, prev_uri=str(tmp_path / "i2"))
    assert (q["counts"]["docs"], q["counts"]["quarantined"], q["counts"]["new_files"]) == (0, 1, 1)
    only_new = tmp_path / "newsrc"
    _write(
        only_new / "junk2.jsonl", b"[1]\n"
    )  # a run over nothing but a quarantined file still extends the line
    q2 = ingest([str(only_new)], str(tmp_path / "i3b"), st, prev_uri=str(tmp_path / "i3"))
    assert (q2["counts"]["docs"], q2["counts"]["quarantined"]) == (0, 1)

    _write(src / "short.jsonl", _line({"doc_id": "C", "text": "短い。"}))  # new, dropped whole by clean
    b4 = ingest([str(src)], str(tmp_path / "i4"), st, prev_uri=str(tmp_path / "i3"))
    c4 = clean(str(tmp_path / "i4"), str(tmp_path / "c4"), CleanConfig(), st)
    assert b4["counts"]["docs"] == 1 and c4["counts"]["kept"] == 0
    d4 = dedup(str(tmp_path / "c4"), str(tmp_path / "d4"), DedupConfig(), st, prev_uri=str(tmp_path / "d1"))
    assert d4["counts"]["in"] == 0 and d4["counts"]["batches"] == 2 and d4["counts"]["index_docs"] == 2
