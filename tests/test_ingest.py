"""Ingest: raw forms split into sections with metadata; broken input quarantined, never fatal."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from finmerge.config import DemoConfig, IngestConfig, ParallelConfig
from finmerge.core import storage
from finmerge.corpus.ingest import decode, filing_metadata, html_to_text, ingest, split_sections
from finmerge.demo import world as W

SCHEMA = {
    "id",
    "text",
    "source",
    "format",
    "doc_id",
    "edinet_code",
    "company",
    "filing_date",
    "section",
    "sha256",
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    W.generate_world(DemoConfig(), root / "world")
    result = ingest([str(root / "world" / "filings")], str(root / "ingest"), str(root / "staging"))
    return root, result


def test_world_filings_parsed(demo):
    root, result = demo
    truth = json.loads((root / "world" / "truth.json").read_text())
    companies = {
        c["edinet_code"]: c for c in json.loads((root / "world" / "world.json").read_text())["companies"]
    }
    docs = _jsonl(root / "ingest" / "docs.jsonl")
    assert storage.read_manifest(str(root / "ingest"))["meta"]["counts"] == result["counts"]
    assert result["counts"]["docs"] == len(docs) and result["counts"]["quarantined"] == 0
    assert result["counts"]["files"] == sum(1 for _ in (root / "world" / "filings").rglob("*.*"))
    assert len({d["id"] for d in docs}) == len(docs)
    by_doc = defaultdict(list)
    for d in docs:
        assert SCHEMA <= set(d)
        assert d["sha256"] == hashlib.sha256(d["text"].encode()).hexdigest() and d["text"].strip()
        by_doc[d["doc_id"]].append(d)
    for t in truth["documents"]:
        recs = by_doc[t["doc_id"]]
        assert recs, t
        assert {r["format"] for r in recs} == {t["form"]}
        if t["kind"] in ("junk", "non_japanese"):
            assert [r["section"] for r in recs] == [None]
            continue
        c = companies[t["edinet_code"]]
        named = [r for r in recs if r["section"] is not None]
        assert [r["section"] for r in named] == W.SECTIONS
        for r in recs:
            assert (r["edinet_code"], r["company"], r["filing_date"]) == (
                c["edinet_code"],
                c["name"],
                t["filing_date"],
            )
        if t["form"] == "jsonl":
            assert len(recs) == len(W.SECTIONS) and [r["id"] for r in recs] == [
                f"{t['doc_id']}#{k}" for k in range(8)
            ]
        else:  # a preamble (page header / site navigation) before the first heading
            assert recs[0]["section"] is None and recs[0]["id"] == f"{t['doc_id']}#0"
            assert [r["id"] for r in named] == [f"{t['doc_id']}#{k}" for k in range(1, 9)]
        risks = next(r for r in named if r["section"] == "事業等のリスク")
        assert "【" not in risks["text"]  # the heading itself is not part of the body
        if t["form"] == "html":
            table = next(r for r in named if r["section"] == "主要な経営指標等の推移")
            assert "\t" in table["text"] and "<" not in table["text"]
            assert all(tag not in "".join(r["text"] for r in recs) for tag in ("<p>", "gtag", "font-family"))
    stats = json.loads((root / "ingest" / "stats.json").read_text())
    assert stats["sections"]["表紙"] == truth["counts"]["filings"] + len(truth["exact_duplicates"]) + len(
        truth["near_duplicates"]
    )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


FILING = "株式会社テスト工業（E09999）有価証券報告書\n１【表紙】\n【会社名】　株式会社テスト工業\n【提出日】　２０２３年６月２８日\n２【沿革】\n1950年に設立しました。\n３【事業の内容】\n当社は機械を作っております。\n"


def test_broken_inputs_quarantined(tmp_path):
    src = tmp_path / "src"
    _write(src / "good.txt", FILING.encode("utf-8"))
    _write(src / "sjis.txt", FILING.replace("テスト", "エスジス").encode("shift_jis"))
    _write(src / "utf16.txt", FILING.replace("テスト", "ユーティーエフ").encode("utf-16"))
    good_bytes = FILING.encode("utf-8")
    _write(src / "bad_utf8.txt", good_bytes[:40] + b"\xff\xfe\xff" + good_bytes[40:])
    _write(src / "binary.html", bytes([0x80, 0x00, 0x9F, 0xFD, 0xFE]) * 20)
    _write(src / "empty.txt", b"")
    _write(src / "blank.html", b"   \n\n ")
    _write(src / "scripts_only.html", b"<html><head><script>var a=1;</script></head><body> </body></html>")
    _write(src / "notes.md", b"# not a corpus file\n")
    lines = [
        json.dumps(
            {"doc_id": "J1", "section": "沿革", "text": "一行目の文書です。", "extra": 7}, ensure_ascii=False
        ),
        "{this is not json",
        json.dumps([1, 2, 3]),
        json.dumps({"doc_id": "J1", "section": "事業の内容"}),
        json.dumps({"text": "   "}),
        "",
        json.dumps(
            {"doc_id": "J1", "section": "事業の内容", "text": "二行目の文書です。"}, ensure_ascii=False
        ),
    ]
    payload = "\n".join(lines).encode("utf-8") + b"\n" + b'{"text": "\xff\xfe broken"}\n'
    payload += json.dumps({"text": "ドキュメントIDなし", "id": "x-1"}, ensure_ascii=False).encode() + b"\n"
    _write(src / "records.jsonl", payload)
    _write(src / "empty.jsonl", b"")

    result = ingest([str(src)], str(tmp_path / "out"), str(tmp_path / "staging"))
    docs = _jsonl(tmp_path / "out" / "docs.jsonl")
    quarantine = _jsonl(tmp_path / "out" / "quarantine.jsonl")
    reasons = {(Path(q["source"]).name, q["line"]): q["reason"] for q in quarantine}
    assert reasons[("bad_utf8.txt", None)].startswith("invalid utf-8")
    assert reasons[("binary.html", None)].startswith("undecodable")
    assert reasons[("empty.txt", None)] == "empty file"
    assert reasons[("blank.html", None)] == "empty file"
    assert reasons[("empty.jsonl", None)] == "empty file"
    assert reasons[("scripts_only.html", None)].startswith("empty document")
    assert reasons[("records.jsonl", 2)].startswith("invalid json")
    assert reasons[("records.jsonl", 3)].startswith("not an object")
    assert reasons[("records.jsonl", 4)].startswith("missing text")
    assert reasons[("records.jsonl", 5)] == "empty text"
    assert reasons[("records.jsonl", 8)].startswith(("invalid utf-8", "undecodable"))
    assert len(quarantine) == result["counts"]["quarantined"] == 11
    assert result["counts"]["skipped"] == 1  # notes.md

    by_file = defaultdict(list)
    for d in docs:
        by_file[Path(d["source"]).name].append(d)
    for name, company in [("good.txt", "テスト"), ("sjis.txt", "エスジス"), ("utf16.txt", "ユーティーエフ")]:
        recs = by_file[name]
        assert [r["section"] for r in recs] == [None, "表紙", "沿革", "事業の内容"], name
        assert recs[2]["text"] == "1950年に設立しました。"
        assert {(r["edinet_code"], r["company"], r["filing_date"]) for r in recs} == {
            ("E09999", f"株式会社{company}工業", "2023-06-28")
        }
    recs = by_file["records.jsonl"]
    assert [r["text"] for r in recs] == ["一行目の文書です。", "二行目の文書です。", "ドキュメントIDなし"]
    assert [r["id"] for r in recs] == ["J1#0", "J1#1", "records:9"]
    assert recs[0]["meta"] == {"extra": 7} and recs[2]["meta"] == {"source_id": "x-1"}
    assert recs[2]["doc_id"] is None and recs[0]["section"] == "沿革"


def test_globs_and_repeated_sources(tmp_path):
    _write(tmp_path / "a" / "one.txt", FILING.encode())
    _write(tmp_path / "a" / "two.htm", f"<p>{FILING}</p>".encode())
    _write(tmp_path / "a" / "skip.jsonl", b'{"text": "x"}\n')
    r = ingest(
        [str(tmp_path / "a" / "*.txt"), str(tmp_path / "a" / "*.htm"), str(tmp_path / "a" / "one.txt")],
        str(tmp_path / "out"),
        str(tmp_path / "st"),
    )
    assert r["counts"]["files"] == 2 and r["counts"]["files/html"] == 1 and r["counts"]["files/text"] == 1
    with pytest.raises(storage.StorageError):
        ingest([str(tmp_path / "missing")], str(tmp_path / "out2"), str(tmp_path / "st"))


def test_decode_and_parsers():
    text = "日本語のテキストです。"
    assert decode(text.encode("utf-8")) == (text, "utf-8")
    assert decode(text.encode("cp932")) == (text, "cp932")
    assert decode(b"\xef\xbb\xbf" + text.encode("utf-8")) == (text, "utf-8-sig")
    assert decode(text.encode("utf-16")) == (text, "utf-16")
    sections = split_sections(
        "前置き\n【表紙】\nA\n第一部【企業情報】\n第１【企業の概況】\n(1) 見出しではない\n【会社名】　X社\n"
    )
    assert sections == [
        (0, None, "前置き"),
        (1, "表紙", "A"),
        (3, "企業の概況", "(1) 見出しではない\n【会社名】　X社"),
    ]
    body, title = html_to_text(
        "<html><head><title>T &amp; U</title><style>p{}</style></head><body><p>a&amp;b&nbsp;c</p>"
        "<table><tr><td>x</td><td>1</td></tr></table><script>s()</script></body></html>"
    )
    assert title == "T & U" and body == "a&b c\nx\t1"
    meta = filing_metadata(
        "【提出日】　令和5年6月28日\n【会社名】　株式会社ABC", title="株式会社ABC（E01234）有価証券報告書"
    )
    assert meta == {"edinet_code": "E01234", "company": "株式会社ABC", "filing_date": None}


def test_s3_roundtrip(tmp_path, s3_bucket):
    src = tmp_path / "src"
    _write(src / "f" / "one.txt", FILING.encode())
    _write(src / "f" / "two.jsonl", b'{"doc_id": "Z", "text": "\xe6\x96\x87\xe6\x9b\xb8"}\n{bad\n')
    fs, _ = storage.filesystem(f"s3://{s3_bucket}")
    fs.put(str(src / "f"), f"{s3_bucket}/raw", recursive=True)
    out = f"s3://{s3_bucket}/runs/ingest"
    r = ingest([f"s3://{s3_bucket}/raw"], out, str(tmp_path / "staging"))
    assert r["uri"] == out and r["counts"]["docs"] == 5 and r["counts"]["quarantined"] == 1
    manifest = storage.read_manifest(out)
    assert set(manifest["files"]) == {
        "docs.jsonl",
        "quarantine.jsonl",
        "stats.json",
        "manifest.jsonl",
        "state.json",
    }
    docs = [json.loads(x) for x in storage.read_text(f"{out}/docs.jsonl").splitlines()]
    assert {d["source"] for d in docs} == {f"s3://{s3_bucket}/raw/one.txt", f"s3://{s3_bucket}/raw/two.jsonl"}
    rows = [json.loads(x) for x in storage.read_text(f"{out}/manifest.jsonl").splitlines()]
    assert {r["uri"]: r["status"] for r in rows} == {
        f"s3://{s3_bucket}/raw/one.txt": "ingested",
        f"s3://{s3_bucket}/raw/two.jsonl": "ingested",
    }
    assert all(r["version"] for r in rows)  # the S3 ETag: lets a re-run skip reading unchanged objects
    again = ingest([f"s3://{s3_bucket}/raw"], out + "-2", str(tmp_path / "staging"), prev_uri=out)
    assert again["counts"]["docs"] == 0 and again["counts"]["unchanged_files"] == 2


def _manifest_rows(folder: Path) -> dict[str, dict]:
    return {Path(r["uri"]).name: r for r in _jsonl(folder / "manifest.jsonl")}


def test_incremental_batches(tmp_path):
    """Same sources → no work; a new filing → a batch of only its documents; a changed file → a new version."""
    src, st = tmp_path / "src", str(tmp_path / "st")
    _write(src / "a.txt", FILING.encode())
    _write(src / "b.jsonl", json.dumps({"doc_id": "B", "text": "文書Bです。"}, ensure_ascii=False).encode())
    first = ingest([str(src)], str(tmp_path / "b1"), st)
    assert first["counts"]["new_files"] == 2 and first["counts"]["docs"] == 5

    same = ingest([str(src)], str(tmp_path / "b2"), st, prev_uri=str(tmp_path / "b1"))
    assert same["counts"]["docs"] == 0 and same["counts"]["unchanged_files"] == 2
    assert (tmp_path / "b2" / "docs.jsonl").read_text() == ""
    assert _manifest_rows(tmp_path / "b2") == _manifest_rows(
        tmp_path / "b1"
    )  # rows carried, first batch kept

    _write(src / "c.txt", FILING.replace("テスト", "新規").encode())
    os.utime(src / "a.txt")  # touched, same bytes: hashed, not parsed again
    new = ingest([str(src)], str(tmp_path / "b3"), st, prev_uri=str(tmp_path / "b2"))
    assert new["counts"]["new_files"] == 1 and new["counts"]["unchanged_files"] == 2
    docs = _jsonl(tmp_path / "b3" / "docs.jsonl")
    assert {Path(d["source"]).name for d in docs} == {"c.txt"} and len(docs) == 4
    rows = _manifest_rows(tmp_path / "b3")
    assert rows["a.txt"]["batch"] == str(tmp_path / "b1") and rows["c.txt"]["batch"] == str(tmp_path / "b3")

    _write(
        src / "b.jsonl",
        json.dumps({"doc_id": "B", "text": "文書Bの訂正版です。"}, ensure_ascii=False).encode(),
    )
    changed = ingest([str(src)], str(tmp_path / "b4"), st, prev_uri=str(tmp_path / "b3"))
    assert changed["counts"]["changed_files"] == 1 and changed["counts"]["docs"] == 1
    (doc,) = _jsonl(tmp_path / "b4" / "docs.jsonl")
    sha = _manifest_rows(tmp_path / "b4")["b.jsonl"]["sha256"]
    assert doc["id"] == f"B#0@{sha[:8]}" and doc["text"] == "文書Bの訂正版です。"


def test_oversized_input_quarantined_without_loading_it(tmp_path):
    src = tmp_path / "src"
    long_line = b'{"text": "' + b"a" * (2 << 20) + b'"}'
    good = json.dumps({"text": "短い文書です。"}, ensure_ascii=False).encode()
    _write(src / "mixed.jsonl", good + b"\n" + long_line + b"\n" + good + b"\n")
    _write(src / "big.txt", FILING.encode() * 4000)
    _write(src / "ok.txt", FILING.encode())
    r = ingest(
        [str(src)],
        str(tmp_path / "out"),
        str(tmp_path / "st"),
        cfg=IngestConfig(max_line_mb=1, max_file_mb=1),
    )
    reasons = {
        (Path(q["source"]).name, q["line"]): q["reason"]
        for q in _jsonl(tmp_path / "out" / "quarantine.jsonl")
    }
    assert reasons == {
        ("mixed.jsonl", 2): f"line too long: more than {1 << 20} bytes",
        ("big.txt", None): f"file too large: {len(FILING.encode()) * 4000} bytes > {1 << 20}",
    }
    kept = _jsonl(tmp_path / "out" / "docs.jsonl")
    assert [d["id"] for d in kept if d["format"] == "jsonl"] == [
        "mixed:1",
        "mixed:3",
    ]  # lines around it survive
    rows = _manifest_rows(tmp_path / "out")
    assert rows["big.txt"]["status"] == "quarantined" and rows["mixed.jsonl"]["status"] == "ingested"
    assert rows["mixed.jsonl"]["quarantined_lines"] == 1 and r["counts"]["quarantined"] == 2


def test_parallel_backends_give_identical_batches(tmp_path):
    W.generate_world(DemoConfig(n_companies=6), tmp_path / "world")
    outs = {}
    for backend in ("serial", "process"):
        ingest(
            [str(tmp_path / "world" / "filings")],
            str(tmp_path / backend),
            str(tmp_path / "st"),
            parallel=ParallelConfig(backend=backend, workers=2),
        )
        outs[backend] = (tmp_path / backend / "docs.jsonl").read_bytes()
    assert outs["serial"] == outs["process"] and outs["serial"]


def test_edinet_packages_and_connector_feed_the_manifest(tmp_path, monkeypatch):
    """Connector → download folder → ingest: list-API metadata on every record, both package types parsed, a
    broken package quarantined, and a second run fetches and parses nothing."""
    from finmerge.config import EdinetConfig
    from finmerge.demo.edinet import DemoFiling, build_csv_zip
    from tests.edinet_fake import FakeEdinet

    key = "edinet-secret-0123456789"
    monkeypatch.setenv("EDINET_API_KEY", key)
    fake = FakeEdinet(key).start()
    try:
        fake.add("S100B001", "2024-06-20")
        fake.add("S100B002", "2024-06-21")
        fake.add("S100B003", "2024-06-21", doc_type="180")  # not a securities report: never fetched
        cfg = EdinetConfig(
            enabled=True, base_url=fake.base_url, start="2024-06-20", end="2024-06-21", backoff_s=0
        )
        manual = tmp_path / "manual"  # packages a user dropped in by hand, next to the connector's
        filing = DemoFiling(
            "S100C001",
            "E09999",
            "株式会社テスト工業",
            "2024-06-25",
            {"事業等のリスク": "為替の変動リスクがあります。"},
        )
        _write(manual / "S100C001.zip", build_csv_zip(filing))
        _write(manual / "S100C002.zip", build_csv_zip(filing)[:300])  # truncated download
        dl, st = str(tmp_path / "edinet"), str(tmp_path / "st")
        r = ingest(
            [str(manual)], str(tmp_path / "b1"), st, cfg=IngestConfig(edinet=cfg), edinet_download_uri=dl
        )
        assert r["counts"]["edinet/fetched"] == 2 and r["counts"]["files/edinet"] == 4
        docs = _jsonl(tmp_path / "b1" / "docs.jsonl")
        by_doc = defaultdict(list)
        for d in docs:
            by_doc[d["doc_id"]].append(d)
        assert set(by_doc) == {"S100B001", "S100B002", "S100C001"}
        for d in by_doc["S100B001"]:
            assert (
                d["format"] == "edinet"
                and d["filing_date"] == "2024-06-20"
                and d["meta"]["doc_type"] == "120"
            )
            assert d["company"] == fake.docs["S100B001"].filing.company and d["section"]
        assert [d["text"] for d in by_doc["S100C001"]] == ["為替の変動リスクがあります。"]
        (bad,) = _jsonl(tmp_path / "b1" / "quarantine.jsonl")
        assert Path(bad["source"]).name == "S100C002.zip" and bad["reason"].startswith("bad EDINET package")
        rows = _manifest_rows(tmp_path / "b1")
        assert (
            rows["S100B001.zip"]["edinet"]["docID"] == "S100B001"
            and rows["S100C002.zip"]["status"] == "quarantined"
        )
        assert json.loads((tmp_path / "b1" / "state.json").read_text())["listed_through"] == "2024-06-21"
        assert key not in (tmp_path / "b1" / "manifest.jsonl").read_text()

        fake.reset_log()
        again = ingest(
            [str(manual)],
            str(tmp_path / "b2"),
            st,
            cfg=IngestConfig(edinet=cfg),
            edinet_download_uri=dl,
            prev_uri=str(tmp_path / "b1"),
        )
        assert again["counts"]["docs"] == 0 and again["counts"]["edinet/fetched"] == 0
        assert fake.document_requests() == []  # listed again (withdrawals), nothing downloaded
    finally:
        fake.close()
