"""Hostile corpus input, fuzzed: every parser entry point takes arbitrary bytes without crashing, hostile files are
quarantined with a reason that names them, the counts add up, and valid documents planted beside them survive.

Entry points: ``textio.decode`` / ``html_to_text``, ``sources.split_sections`` / ``filing_metadata`` /
``parse_file`` (jsonl, text, html, edinet), ``filings.read_package`` on generated packages, the EDINET list API
client (``finmerge/corpus/edinet.py``) against a loopback server, and ``finmerge.corpus.ingest.ingest`` end to end.
Fixed profile (derandomized), so every run sees the same cases; tests/test_filings.py fuzzes raw package bytes.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import struct
import threading
import zipfile
import zlib
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finmerge.config import EdinetConfig, IngestConfig
from finmerge.corpus import edinet
from finmerge.corpus.filings import PackageError, read_package
from finmerge.corpus.ingest import ingest
from finmerge.corpus.sources import HEADING, FileJob, filing_metadata, parse_file, sha256_text, split_sections
from finmerge.corpus.textio import DecodeError, decode, html_to_text
from finmerge.demo.edinet import DemoFiling, build_csv_zip, build_xbrl_zip
from tests.edinet_fake import make_zip

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FEW = settings(FUZZ, max_examples=60)

# ----------------------------------------------------------------------------------------------------------------
# Strategies

KANA_KANJI = "あいうえおかきくけこさしすせそアイウエオカキクケコ日本語会社事業売上利益株式市場経営"
WORD = st.text(alphabet=KANA_KANJI + "abcXYZ0123456789、。（）％&>\"'", min_size=1, max_size=12)
# A line of words with single inner spaces, never blank, never padded: what every parser must keep as is.
LINE = st.lists(WORD, min_size=1, max_size=4).map(" ".join)
BODY = st.lists(LINE, min_size=1, max_size=5).map("\n".join)
TEXT = st.text(max_size=200)  # any code point, lone surrogates included
NASTY = st.sampled_from(
    [
        b"\x00",
        b"\xff",
        b"\xfe\xff",
        b"\xff\xfe",
        b"\xef\xbb\xbf",
        b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
        b"\x82",  # a Shift_JIS lead byte without its trail
        b"\xe3\x81",  # a truncated UTF-8 sequence
        b"\r",
        b"\n",
        b"\x1a",
        b"<",
        b"&#xD800;",
        b"\\ud800",
    ]
)


def mutate(data: bytes, cuts: list[tuple[float, bytes]]) -> bytes:
    out = bytearray(data)
    for where, piece in cuts:
        at = int(where * len(out))
        out[at:at] = piece
    return bytes(out)


ENCODED_TEXT = st.tuples(TEXT, st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-16-be"])).map(
    lambda tc: tc[0].encode(tc[1], "surrogatepass")
)
HOSTILE_BYTES = st.one_of(
    st.binary(max_size=400),
    ENCODED_TEXT,
    st.builds(mutate, ENCODED_TEXT, st.lists(st.tuples(st.floats(0, 1), NASTY), min_size=1, max_size=4)),
)


def writable(obj: object) -> bool:
    json.dumps(obj, ensure_ascii=False).encode("utf-8")  # what finmerge/corpus/ingest.py does with every row
    return True


# ----------------------------------------------------------------------------------------------------------------
# textio: decode


@FUZZ
@given(HOSTILE_BYTES)
def test_decode_returns_utf8_safe_text_or_decode_error(data):
    try:
        text, codec = decode(data)
    except DecodeError as exc:
        assert str(exc)
        return
    text.encode("utf-8")  # no lone surrogates, whatever the bytes
    assert "\x00" not in text and codec


@FUZZ
@given(BODY, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp932", "utf-16-le", "utf-16-be", "bad-bom"]))
def test_decode_keeps_valid_text_whatever_the_codec_or_bom(body, codec):
    """Nothing valid is lost: every codec a filing comes in, with or without (or with the wrong) BOM."""
    text = body + "\n"  # a text file's trailing newline makes BOM-less UTF-16 recognisable
    data = b"\xff\xfe" + text.encode("utf-8") if codec == "bad-bom" else text.encode(codec)
    assert decode(data)[0] == text


@pytest.mark.parametrize(
    "data, reason",
    [
        ("有価証券報告書です。".encode("utf-16")[:-1], "invalid utf-16: truncated data"),  # odd byte count
        (
            b"\xff\xfe" + "本文\n".encode("utf-16-le") + b"\x00\xd8" + "続き".encode("utf-16-le"),
            "invalid utf-16",
        ),
        (b"\xef\xbb\xbf" + "本文です。".encode("cp932"), "invalid utf-8"),  # a UTF-8 BOM on Shift_JIS
        ("事業の内容です。".encode("cp932") + b"\x82", "undecodable: not utf-8/cp932"),  # cut mid-character
        ("当社グループの事業です。".encode() + b"\xff", "invalid utf-8: 1 bad byte(s), first at offset 36"),
        (b"\x00\x00binary\x00\x01", "undecodable: binary data (NUL byte at offset 0)"),
        ("本文です。".encode() + b"\x00", "undecodable: binary data (NUL byte at offset 15)"),
    ],
)
def test_broken_encodings_are_decode_errors(data, reason):
    with pytest.raises(DecodeError) as err:
        decode(data)
    assert str(err.value).startswith(reason)


# ----------------------------------------------------------------------------------------------------------------
# textio: HTML, sources: sections and metadata

HTML_PIECES = st.sampled_from(
    ["<", ">", "</", "<!--", "-->", "<![CDATA[", "]]>", "<?", "<!DOCTYPE", "&#", "&#x", ";", "&amp", "=", '"']
    + [
        "<p>",
        "</p>",
        "<td>",
        "<tr>",
        "<script>",
        "</script>",
        "<style>",
        "<title>",
        "</title>",
        "<a",
        "<br/>",
    ]
    + ["&#xD800;", "&#99999999999;", "\u3000", "【", "】", "第1部", "\n", " ", "\t", "\x00", "\ud800"]
)
MARKUP = st.lists(st.one_of(HTML_PIECES, st.text(max_size=6)), max_size=60).map("".join)


@FUZZ
@given(MARKUP)
def test_html_soup_never_raises_and_sections_lose_no_line(markup):
    text, title = html_to_text(markup)
    assert isinstance(title, str) and "\n\n" not in text
    sections = split_sections(text)
    kept = "".join("".join(body.split()) for _, _, body in sections)
    lines = [line for line in text.split("\n") if not _is_heading(line)]
    assert kept == "".join("".join(line.split()) for line in lines)  # every non-heading line is in a body
    meta = filing_metadata(text, title)
    assert set(meta) == {"edinet_code", "company", "filing_date"}


def _is_heading(line: str) -> bool:
    return HEADING.match(line) is not None


@FUZZ
@given(st.lists(LINE, min_size=1, max_size=6))
def test_html_paragraphs_come_back_exactly(lines):
    markup = "".join(f"<p>{line.replace('&', '&amp;').replace('>', '&gt;')}</p>" for line in lines)
    assert html_to_text(f"<html><head><title>t</title></head><body>{markup}</body></html>") == (
        "\n".join(lines),
        "t",
    )


@pytest.mark.timeout(30)  # ~0.15 s each; the quadratic versions took minutes to hours
@pytest.mark.parametrize(
    "markup",
    ["<a" * 250_000, "</" * 250_000, "<?" * 250_000, "<![CDATA[" * 60_000, "<p>x</p>" + "<b" * 250_000],
)
def test_unterminated_markup_is_read_as_text_in_linear_time(markup):
    """HTMLParser re-scans an unterminated tag once per '<' (quadratic: these took minutes to hours)."""
    text, _ = html_to_text(markup)
    assert "".join(text.split()).endswith(markup[-20:].replace(" ", ""))


@pytest.mark.timeout(30)  # ~0.15 s each; the quadratic versions took minutes to hours
@pytest.mark.parametrize(
    "line",
    [" " * 500_000 + "x", "\u3000" * 500_000 + "【", "\t" * 300_000 + "第1" + " " * 300_000 + "x"],
)
def test_huge_whitespace_lines_do_not_backtrack(line):
    """The heading and cover regexes once held adjacent \\s* runs: quadratic on lines like these."""
    text = f"【会社名】株式会社X\n{line}\n" + "\n" * 20_000 + "本文"
    assert split_sections(text)[-1][2].endswith("本文")
    assert filing_metadata(text)["company"] == "株式会社X"
    assert html_to_text(f"<p>{line}</p><td>{line}</td>")[0].endswith(line.strip()[-1:])
    (section,) = read_package(
        ixbrl_zip("", f"{line}</p><p>本文", zipfile.ZIP_STORED), "S100HUGE.zip"
    ).sections  # stored: it deflates past the 500:1 bomb ratio
    assert section.text.endswith("本文")


# ----------------------------------------------------------------------------------------------------------------
# sources.parse_file, every format, with small limits


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_names = itertools.count()


def parse(folder: Path, data: bytes, suffix: str, fmt: str, **limits) -> tuple[str, object]:
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    job = FileJob(str(path), fmt, size=len(data), **limits)
    return str(path), parse_file(job)


def check_result(uri: str, res) -> None:
    assert res.records or res.quarantine, "a file vanished: neither records nor a quarantine row"
    for rec in res.records:
        assert rec["source"] == uri and rec["text"].strip() and rec["sha256"] == sha256_text(rec["text"])
        assert writable(rec)
    for row in res.quarantine:
        assert row["source"] == uri and row["reason"] and writable(row)


@FUZZ
@given(data=HOSTILE_BYTES, kind=st.sampled_from([(".txt", "text"), (".html", "html"), (".zip", "edinet")]))
def test_parse_file_never_raises_on_any_bytes(scratch, data, kind):
    uri, res = parse(scratch, data, *kind, max_file_bytes=300)
    check_result(uri, res)
    if len(data) > 300:
        assert [q["reason"] for q in res.quarantine] == [f"file too large: {len(data)} bytes > 300"]


GOOD_LINE = BODY.map(lambda t: (json.dumps({"text": t, "n": 1}, ensure_ascii=False).encode(), "good"))
BAD_LINES = st.sampled_from(
    [
        (b"{not json", "invalid json"),
        (b"[1, 2]", "not an object"),
        (b'{"title": "x"}', "missing text"),
        (b'{"text": "  "}', "empty text"),
        (b'{"text": "\\ud800 lone"}', "invalid text: lone surrogate"),
        (b'{"text": "ok", "meta": "\\udfff"}', "invalid text: lone surrogate"),
        (b'{"text": "x", "deep": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "invalid json: nested too deeply"),
        (b'{"text": "\xff\xfe\x00"}', "undecodable"),
        (b'{"text": "' + "文書の本文です".encode() + b'\xff"}', "invalid utf-8"),
        (b'{"text": "' + b"a" * 130_000 + b'"}', "line too long: more than 120000 bytes"),
    ]
)
BIG_INT = st.integers(4301, 6000).map(
    lambda n: ('{"text": "大きな数", "n": '.encode() + b"7" * n + b"}", "good")
)
JSONL_LINE = st.one_of(
    GOOD_LINE,
    BAD_LINES,
    BIG_INT,
    st.just((b"   ", "blank")),
    st.binary(max_size=40).map(lambda b: (b.replace(b"\n", b""), "random")),
)


@FUZZ
@given(st.lists(JSONL_LINE, min_size=1, max_size=12), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_jsonl_every_line_is_a_record_or_quarantined_by_number(scratch, lines, eol, final_eol):
    data = eol.join(raw for raw, _ in lines) + (eol if final_eol else b"")
    uri, res = parse(scratch, data, ".jsonl", "jsonl", max_line_bytes=120_000)
    if not res.records and not res.quarantine:
        raise AssertionError("lines vanished")
    stem = Path(uri).stem
    kept = {int(r["id"].split(":")[1]): r for r in res.records}
    bad = {q["line"]: q["reason"] for q in res.quarantine if q["line"] is not None}
    assert not set(kept) & set(bad) and len(bad) == len([q for q in res.quarantine if q["line"]])
    for n, (raw, expected) in enumerate(lines, 1):
        if expected == "good":
            assert kept[n]["text"] == json.loads(raw.decode(), parse_int=str)["text"]
            assert kept[n]["id"] == f"{stem}:{n}"
        elif expected == "blank":
            assert n not in kept and n not in bad
        elif expected != "random":
            assert bad[n].startswith(expected), (n, bad[n])
        elif raw.strip():
            assert (n in kept) != (n in bad)
    if all(expected == "blank" for _, expected in lines):
        assert [q["reason"] for q in res.quarantine] == ["empty file: blank lines only"]
    check_result(uri, res)


def test_a_huge_integer_is_kept_not_lost(scratch):
    uri, res = parse(scratch, b'{"text": "t", "n": ' + b"9" * 5000 + b"}\n", ".jsonl", "jsonl")
    (rec,) = res.records
    assert rec["meta"]["n"] == "9" * 5000 and not res.quarantine


# ----------------------------------------------------------------------------------------------------------------
# filings.read_package on generated packages


def small_filing(sections: dict[str, str], doc_id: str = "S100FUZZ") -> DemoFiling:
    return DemoFiling(doc_id, "E02222", "株式会社小", "2024-06-20", sections)


NAMES = ["事業の内容", "事業等のリスク", "研究開発活動", "沿革"]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(NAMES), BODY, min_size=1),
    st.sampled_from([build_xbrl_zip, build_csv_zip]),
)
def test_packages_round_trip_any_narrative_text(sections, build):
    """Nothing valid lost: whatever the section text, it comes back from both package types as it went in."""
    filing = read_package(build(small_filing(sections)), "S100FUZZ.zip")
    assert {s.name: s.text for s in filing.sections} == sections


XML_HOSTILE = st.sampled_from(
    [
        '<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE html [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]>',
        '<!DOCTYPE x [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>',
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://127.0.0.1:9/never.dtd">',
        "",
    ]
)
INNER = st.lists(
    st.one_of(
        st.sampled_from(
            ["<p>", "</p>", "&xxe;", "&c;", "&#xD800;", "&#0;", "<![CDATA[", "]]>", "<!--", "-->"]
        ),
        st.sampled_from(["<ix:continuation id='c'>", "<ix:exclude>", "</ix:exclude>", "\x00", "\ud800"]),
        WORD,
    ),
    max_size=20,
).map("".join)


@FUZZ
@given(head=XML_HOSTILE, inner=INNER)
def test_hostile_inline_xbrl_is_a_package_error_or_a_filing(head, inner):
    page = (
        f'<?xml version="1.0" encoding="utf-8"?>\n{head}<html xmlns="http://www.w3.org/1999/xhtml" '
        'xmlns:ix="http://www.xbrl.org/2013/inlineXBRL"><body>'
        f'<ix:nonNumeric name="jpcrp_cor:BusinessRisksTextBlock"><p>リスク。</p>{inner}</ix:nonNumeric></body></html>'
    )
    data = make_zip({"XBRL/PublicDoc/0101010_honbun_ixbrl.htm": page.encode("utf-8", "surrogatepass")})
    try:
        filing = read_package(data, "S100XXXX.zip")
    except PackageError as exc:
        assert str(exc)
        if "ENTITY" in head:
            assert str(exc).startswith("forbidden XML construct")
        return
    assert "ENTITY" not in head and filing.sections[0].text.startswith("リスク。")
    assert "root:" not in filing.sections[0].text  # /etc/passwd never read


def zip_bomb() -> bytes:
    """One member whose deflate stream of ~64 KB inflates to 64 MiB of zeros."""
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = b"".join(zeros.compress(bytes(1 << 20)) for _ in range(64)) + zeros.flush()
    size, crc = 64 << 20, zlib.crc32(bytes(64 << 20))
    package = make_zip({"XBRL/PublicDoc/0101010_honbun_ixbrl.htm": b""})
    local_end = 30 + struct.unpack("<H", package[26:28])[0] + struct.unpack("<H", package[28:30])[0]
    central = package.index(b"PK\x01\x02")
    local, cd = bytearray(package[:local_end]), bytearray(package[central:])
    struct.pack_into("<III", local, 14, crc, len(stream), size)
    struct.pack_into("<III", cd, 16, crc, len(stream), size)
    struct.pack_into("<I", cd, cd.index(b"PK\x05\x06") + 16, len(local) + len(stream))
    return bytes(local) + stream + bytes(cd)


# ----------------------------------------------------------------------------------------------------------------
# The EDINET list API: its JSON is parsed input too


class _Listing(http.server.BaseHTTPRequestHandler):
    body = b"{}"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(type(self).body)))
        self.end_headers()
        self.wfile.write(type(self).body)


@pytest.fixture(scope="module")
def listing_api():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listing)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    cfg = EdinetConfig(
        enabled=True, base_url=f"http://127.0.0.1:{server.server_address[1]}/api/v2", retries=0, backoff_s=0
    )
    api = edinet._Api(cfg, "key-0000")
    yield api
    api.close()
    server.shutdown()
    server.server_close()


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        k: JSON_VALUE
        for k in ["docID", "edinetCode", "filerName", "submitDateTime", "docTypeCode", "xbrlFlag"]
    },
)
LISTING_BODY = st.one_of(
    st.builds(
        lambda results: {"metadata": {"status": "200"}, "results": results},
        st.lists(ENTRY | JSON_VALUE, max_size=4),
    ),
    st.builds(lambda status, msg: {"metadata": {"status": status, "message": msg}}, JSON_VALUE, TEXT),
    JSON_VALUE,
).map(lambda obj: json.dumps(obj).encode())
RAW_BODY = st.one_of(
    LISTING_BODY,
    st.binary(max_size=200),
    st.just(b"[" * 100_000),
    st.just(b'{"metadata": {"status": ' + b"1" * 5000 + b"}}"),
)


@FUZZ
@given(RAW_BODY)
def test_edinet_listing_is_clean_entries_or_an_edinet_error(listing_api, body):
    _Listing.body = body
    try:
        entries = listing_api.list_documents(date(2024, 6, 20))
    except edinet.EdinetError as exc:
        assert "key-0000" not in str(exc)
        return
    for entry in entries:
        assert writable(entry)
        assert all(v is None or isinstance(v, str | int | float | bool) for v in entry.values())
        assert all(
            v is None or isinstance(v, str) for v in edinet._record("S1", entry, "x")["edinet"].values()
        )


# ----------------------------------------------------------------------------------------------------------------
# Ingest end to end: hostile files next to valid ones

FILING_TEXT = (
    "株式会社テスト工業（E09999）\n１【表紙】\n【会社名】　株式会社テスト工業\n２【事業の内容】\n{body}\n"
)
JAPANESE = "当社グループの事業は精密機械の製造と販売です。売上高は前期比で増加しました。"
PACKAGE = build_csv_zip(small_filing({"事業の内容": "本文です。", "研究開発活動": "研究。"}))
IXBRL_PAGE = (
    '<?xml version="1.0"?>\n{head}<html xmlns="http://www.w3.org/1999/xhtml" xmlns:ix="http://www.xbrl.org/2013/'
    'inlineXBRL"><body><ix:nonNumeric name="jpcrp_cor:BusinessRisksTextBlock"><p>{body}</p></ix:nonNumeric>'
    "</body></html>"
)


def ixbrl_zip(head: str, body: str, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    page = IXBRL_PAGE.format(head=head, body=body).encode()
    return make_zip({"XBRL/PublicDoc/0101010_honbun_ixbrl.htm": page}, compression)


# (suffix, bytes, reason prefix): each is a whole file that must be quarantined.
HOSTILE_FILES = [
    (".txt", b"", "empty file"),
    (".html", b"  \r\n\t ", "empty file"),
    (".txt", "\u3000\n\u3000\n".encode(), "empty document"),
    (".html", b"<html><head><script>x()</script></head><body><!-- c --></body></html>", "empty document"),
    (".jsonl", b"\n \n\r\n", "empty file: blank lines only"),
    (".txt", JAPANESE.encode()[:30] + b"\xff\xfe" + JAPANESE.encode()[30:], "invalid utf-8"),
    (".txt", JAPANESE.encode("cp932") + b"\x83", "undecodable: not utf-8/cp932"),
    (".txt", JAPANESE.encode("utf-16")[:-1], "invalid utf-16: truncated data"),
    (".html", b"\xff\xfe" + "本文\n".encode("utf-16-le") + b"\x00\xdc", "invalid utf-16"),
    (".txt", b"\xef\xbb\xbf" + JAPANESE.encode("cp932"), "invalid utf-8"),
    (".html", b"\x00\x00\x01\x02binary\x00", "undecodable: binary data"),
    (".zip", b"PK\x03\x04" + bytes(range(256)), "bad EDINET package: truncated or corrupt zip"),
    (".zip", PACKAGE[: len(PACKAGE) // 2], "bad EDINET package: truncated or corrupt zip"),
    (".zip", b'{"StatusCode": 404}', "bad EDINET package: not a zip archive: a JSON body"),
    (".zip", make_zip({"../../evil.htm": b"<p/>", "XBRL_TO_CSV/a.csv": b""}), "bad EDINET package: zip-slip"),
    (
        ".zip",
        ixbrl_zip('<!DOCTYPE html [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;"),
        "bad EDINET package: forbidden",
    ),
    (
        ".zip",
        ixbrl_zip('<!DOCTYPE h [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>', "&b;"),
        "bad EDINET package: forbidden XML construct",
    ),
    (".zip", make_zip({"readme.txt": b"hi"}), "bad EDINET package: not an EDINET package"),
    (".jsonl", b'{"text": "\\ud800"}\n[1]\n{bad\n', "invalid text: lone surrogate"),
]
VALID_KINDS = ["utf-8", "cp932", "utf-16", "utf-8-sig", "html", "jsonl", "csv-zip", "xbrl-zip"]


def plant_valid(folder: Path, n: int, kind: str, body: str) -> tuple[str, list[str]]:
    """Write a valid document; returns its file name and the texts ingest must produce from it."""
    if kind == "jsonl":
        lines = body.split("\n")
        data = "\n".join(json.dumps({"text": t, "doc_id": f"J{n}"}, ensure_ascii=False) for t in lines)
        return write(folder / f"valid{n}.jsonl", data.encode()), lines
    if kind.endswith("-zip"):
        build = build_csv_zip if kind == "csv-zip" else build_xbrl_zip
        return write(folder / f"S100V{n:03d}.zip", build(small_filing({"事業の内容": body}))), [body]
    text = FILING_TEXT.format(body=body)
    expected = ["株式会社テスト工業（E09999）", "【会社名】　株式会社テスト工業", body]
    if kind == "html":
        markup = "".join(
            f"<p>{line.replace('&', '&amp;').replace('>', '&gt;')}</p>" for line in text.split("\n")
        )
        return write(folder / f"valid{n}.html", markup.encode()), expected
    return write(folder / f"valid{n}.txt", text.encode(kind)), expected


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def run_ingest(root: Path, **kw) -> tuple[dict, list[dict], list[dict], dict[str, dict]]:
    out = root / "out"
    result = ingest([str(root / "src")], str(out), str(root / "staging"), **kw)
    docs = [json.loads(x) for x in (out / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = {
        Path(r["uri"]).name: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }
    return result["counts"], docs, quarantine, rows


def check_batch(counts, docs, quarantine, rows, hostile: dict[str, str], valid: dict[str, list[str]]) -> None:
    assert counts["docs"] == len(docs) and counts["quarantined"] == len(quarantine)
    assert counts["files"] == len(hostile) + len(valid) == len(rows)
    status = Counter(r["status"] for r in rows.values())
    assert status["ingested"] + status["quarantined"] == counts["files"]  # every input is one or the other
    for name, reason in hostile.items():
        assert rows[name]["status"] == "quarantined" or name.endswith(".jsonl"), name
        mine = [q for q in quarantine if Path(q["source"]).name == name]
        assert mine and mine[0]["reason"].startswith(reason), (name, mine)
    by_file: dict[str, list[str]] = {}
    for d in docs:
        by_file.setdefault(Path(d["source"]).name, []).append(d["text"])
    for name, texts in valid.items():
        assert rows[name]["status"] == "ingested" and by_file[name] == texts, name  # intact, in order
    assert set(by_file) <= set(valid) | {n for n in hostile if n.endswith(".jsonl")}


_runs = itertools.count()


@FEW
@given(
    hostile=st.lists(st.sampled_from(range(len(HOSTILE_FILES))), min_size=1, max_size=6, unique=True),
    randoms=st.lists(
        st.tuples(st.sampled_from([".txt", ".html", ".zip"]), st.binary(min_size=1, max_size=64)), max_size=3
    ),
    valid=st.lists(st.tuples(st.sampled_from(VALID_KINDS), BODY), min_size=1, max_size=4),
)
def test_ingest_quarantines_hostile_files_and_keeps_valid_ones(tmp_path_factory, hostile, randoms, valid):
    root = tmp_path_factory.mktemp(f"mix{next(_runs)}")
    src = root / "src"
    src.mkdir()
    bad = {
        write(src / f"bad{i}{HOSTILE_FILES[i][0]}", HOSTILE_FILES[i][1]): HOSTILE_FILES[i][2] for i in hostile
    }
    for k, (suffix, data) in enumerate(randoms):  # guaranteed garbage: NULs on both byte parities
        bad[write(src / f"rand{k}{suffix}", b"\x00\x00\xff" + data)] = (
            "bad EDINET package: not a zip" if suffix == ".zip" else "undecodable: binary data"
        )
    good = dict(plant_valid(src, n, kind, body) for n, (kind, body) in enumerate(valid))
    check_batch(*run_ingest(root), hostile=bad, valid=good)


def test_ingest_explicit_worst_cases(tmp_path):
    """Zip bomb, huge JSONL lines, an oversized file and a non-UTF-8 file name, next to a valid filing."""
    src = tmp_path / "src"
    src.mkdir()
    bad = {
        write(src / "bomb.zip", zip_bomb()): "bad EDINET package: zip bomb",
        write(src / "huge.txt", FILING_TEXT.format(body="x" * (1 << 20)).encode()): "file too large",
        write(
            src / "lines.jsonl", b'{"text": "' + b"a" * ((1 << 20) + 1) + b'"}\n' + b"\xff\n"
        ): "line too long",
    }
    (src / "ok.jsonl").write_bytes(b'{"text": "\xe5\xa3\xb2"}\n' + b'{"text": "' + b"b" * (2 << 20) + b'"}\n')
    bad_name = os.path.join(os.fsencode(src), "社名".encode("cp932") + b".txt")
    with open(bad_name, "wb") as fh:
        fh.write(FILING_TEXT.format(body="本文").encode())
    write(src / "valid.txt", FILING_TEXT.format(body=JAPANESE).encode())
    counts, docs, quarantine, rows = run_ingest(tmp_path, cfg=IngestConfig(max_file_mb=1, max_line_mb=1))
    reasons = {(Path(q["source"]).name, q["line"]): q["reason"] for q in quarantine}
    assert reasons[("lines.jsonl", 1)].startswith("line too long") and reasons[("lines.jsonl", 2)]
    assert reasons[("ok.jsonl", 2)].startswith("line too long")
    assert [d["text"] for d in docs if d["source"].endswith("ok.jsonl")] == ["売"]
    renamed = next(n for n in rows if n.endswith(".txt") and n not in ("huge.txt", "valid.txt"))
    assert "\\udc" in renamed and rows[renamed]["status"] == "quarantined"
    assert reasons[(renamed, None)].startswith("file name is not valid UTF-8")
    for name, reason in bad.items():
        assert next(r for (n, _), r in reasons.items() if n == name).startswith(reason), name
    assert [d["text"] for d in docs if d["source"].endswith("valid.txt")][-1] == JAPANESE
    assert counts["quarantined"] == len(quarantine) == 6 and counts["files"] == 6
    assert rows["bomb.zip"]["status"] == rows["huge.txt"]["status"] == "quarantined"
    # A second run reads nothing again, the badly named file included.
    again = ingest(
        [str(src)], str(tmp_path / "out2"), str(tmp_path / "staging"), prev_uri=str(tmp_path / "out")
    )
    assert again["counts"]["unchanged_files"] == 6 and again["counts"]["quarantined"] == 0
