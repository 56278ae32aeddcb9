"""EDINET package parsing: round trips through the fixture builders, every safety case, and a fuzzer."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finmerge.corpus.filings import _CHUNK, PackageError, ZipLimits, iso_date, read_package
from finmerge.demo.edinet import DemoFiling, build_csv_zip, build_xbrl_zip, package_stem
from tests.edinet_fake import make_zip

NARRATIVE = {
    "沿革": "1950年4月\t東京都で創業\n1970年6月\t株式を上場",
    "事業の内容": "当社グループは精密機械の製造と販売を行っています。\n主な製品は工作機械です。",
    "経営方針、経営環境及び対処すべき課題等": "当社は顧客第一を経営方針としています。",
    "事業等のリスク": "為替の変動が業績に影響を与える可能性があります。\n区分\t内容\n為替\t円高の進行",
    "経営者による財政状態、経営成績及びキャッシュ・フローの状況の分析": "当期の売上高は前期比5％増加しました。",
    "研究開発活動": "新素材の研究を進めました。",
    "役員の状況": "代表取締役社長\t山田太郎",
}
FILING = DemoFiling(
    doc_id="S100ABCD",
    edinet_code="E01234",
    company="株式会社テスト精機",
    filing_date="2024-06-20",
    sections={
        "表紙": "【会社名】株式会社テスト精機",
        "主要な経営指標等の推移": "売上高\t100\t110",
        **NARRATIVE,
    },
    sec_code="12340",
)
SOURCE = "s3://bucket/raw/edinet/S100ABCD.zip"
XBRL = build_xbrl_zip(FILING)
CSV = build_csv_zip(FILING)
DEI = (
    '<ix:nonNumeric name="jpdei_cor:EDINETCodeDEI" contextRef="FilingDateInstant">E09999</ix:nonNumeric>'
    '<ix:nonNumeric name="jpdei_cor:FilerNameInJapaneseDEI" contextRef="FilingDateInstant">株式会社例</ix:nonNumeric>'
)


def members_of(package: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def ixbrl(body: str, head: str = "") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n{head}<html xmlns="http://www.w3.org/1999/xhtml" '
        'xmlns:ix="http://www.xbrl.org/2013/inlineXBRL"><head><title>t</title></head>'
        f"<body>{body}</body></html>"
    ).encode()


def one_page(body: str, head: str = "") -> bytes:
    return make_zip({"XBRL/PublicDoc/0101010_honbun_ixbrl.htm": ixbrl(body, head)})


def reason(data: bytes, limits: ZipLimits = ZipLimits()) -> str:
    with pytest.raises(PackageError) as err:
        read_package(data, "x.zip", limits)
    return str(err.value)


@pytest.fixture()
def inflated(monkeypatch) -> dict[str, int]:
    """Bytes handed out by the stdlib's member reader (``zipfile.ZipExtFile.read``), per member name.

    The real reader runs unchanged underneath; only what it returns is counted. Counts instead of clocks:
    they say how much work was done and do not move with the machine's load.
    """
    counts: dict[str, int] = {}
    real = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = real(self, n)
        counts[self.name] = counts.get(self.name, 0) + len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("package, kind", [(XBRL, "xbrl"), (CSV, "csv")])
def test_round_trip(package, kind):
    filing = read_package(package, SOURCE)
    assert filing.package == kind
    assert (filing.doc_id, filing.edinet_code, filing.company, filing.filing_date, filing.doc_type) == (
        "S100ABCD",
        "E01234",
        "株式会社テスト精機",
        "2024-06-20",
        "120",
    )
    assert {s.name: s.text for s in filing.sections} == NARRATIVE
    assert [s.ordinal for s in filing.sections] == list(range(1, len(NARRATIVE) + 1))
    assert filing.sections[0].element == "jpcrp_cor:CompanyHistoryTextBlock"
    assert filing.skipped == ["jpcrp_cor:BusinessResultsOfGroupTextBlock"]  # a table, not narrative


def test_instance_is_the_fallback_when_there_is_no_inline_xbrl():
    members = {k: v for k, v in members_of(XBRL).items() if not k.endswith(".htm")}
    filing = read_package(make_zip(members), SOURCE)
    assert {s.name: s.text for s in filing.sections} == NARRATIVE
    assert (filing.edinet_code, filing.company, filing.filing_date) == (
        "E01234",
        "株式会社テスト精機",
        "2024-06-20",
    )


def test_metadata_from_file_names_and_amendments():
    amended = DemoFiling(
        "S100ZZZZ", "E05555", "株式会社訂正", "2024-07-01", {"事業の内容": "本文です。"}, "130"
    )
    filing = read_package(build_csv_zip(amended), "S100ZZZZ.zip")
    assert filing.doc_type == "130"
    assert package_stem(amended) == "jpcrp030000-asr-001_E05555-000_2024-03-31_01_2024-07-01"
    # No DEI at all: the EDINET code and filing date still come from the member's name.
    page = ixbrl('<ix:nonNumeric name="jpcrp_cor:BusinessRisksTextBlock"><p>リスクです。</p></ix:nonNumeric>')
    bare = make_zip({f"XBRL/PublicDoc/0102010_honbun_{package_stem(amended)}_ixbrl.htm": page})
    filing = read_package(bare, "not-a-doc-id.zip")
    assert (filing.doc_id, filing.edinet_code, filing.filing_date, filing.company) == (
        None,
        "E05555",
        "2024-07-01",
        None,
    )


def test_world_style_filing_dicts_are_accepted():
    world_doc = {
        "doc_id": "S100WRLD",
        "edinet_code": "E07777",
        "company": "株式会社世界",
        "filing_date": "2023-06-28",
        "title": "有価証券報告書",
        "sections": [{"name": "事業の内容", "kind": "text", "lines": ["一行目です。", "二行目です。"]}],
    }
    filing = read_package(build_xbrl_zip(world_doc), "S100WRLD.zip")
    assert [(s.name, s.text) for s in filing.sections] == [("事業の内容", "一行目です。\n二行目です。")]


def test_inline_xbrl_nesting_continuation_exclude_and_cover_date():
    body = (
        DEI
        + '<p>【提出日】<ix:nonNumeric name="jpcrp_cor:FilingDateCoverPage">令和６年６月２７日</ix:nonNumeric></p>'
        '<ix:nonNumeric name="jpcrp_cor:BusinessRisksTextBlock" escape="true" continuedAt="c1">'
        "<h3>３【事業等のリスク】</h3><p>第一のリスク。</p>"
        '<ix:nonNumeric name="jpcrp_cor:SomeDetailTextBlock"><p>入れ子の段落。</p></ix:nonNumeric>'
        '<table><tr><td><p>売上高</p></td><td><p><ix:nonFraction name="jpcrp_cor:NetSales">1,000</ix:nonFraction></p></td></tr></table>'
        "<ix:exclude><p>表示だけの注記</p></ix:exclude>"
        "</ix:nonNumeric>"
        "<p>ページの区切り</p>"
        '<ix:continuation id="c1"><p>続きのリスク。</p></ix:continuation>'
    )
    filing = read_package(one_page(body), "S100NEST.zip")
    (section,) = filing.sections
    assert section.name == "事業等のリスク"
    assert section.text == "第一のリスク。\n入れ子の段落。\n売上高\t1,000\n続きのリスク。"
    assert (filing.edinet_code, filing.company, filing.filing_date) == ("E09999", "株式会社例", "2024-06-27")


def test_iso_date():
    assert iso_date("2024年6月20日") == "2024-06-20"
    assert iso_date("令和元年５月１日") == "2019-05-01"
    assert iso_date("平成31年3月31日") == "2019-03-31"
    assert iso_date("2024-02-30") is None and iso_date("なし") is None


@pytest.mark.timeout(60)  # ~0.3 s on a quiet 2-core machine: only a super-linear parse gets near this
def test_a_typical_package_parses_in_one_pass(inflated):
    rng = random.Random(0)
    words = [
        "当社グループ",
        "売上高",
        "営業利益",
        "前期比",
        "増加",
        "減少",
        "堅調に推移",
        "設備投資",
        "為替",
        "需要",
    ]

    def paragraph() -> str:
        return (
            "、".join(f"{rng.choice(words)}は{rng.randint(1, 99999)}百万円" for _ in range(12)) + "でした。"
        )

    sections = {name: "\n".join(paragraph() for _ in range(1500)) for name in NARRATIVE}  # ~5 MB of XHTML
    package = build_xbrl_zip(DemoFiling("S100BIG1", "E01111", "株式会社大型", "2024-06-20", sections))
    filing = read_package(package, "S100BIG1.zip")
    assert sum(len(s.text) for s in filing.sections) > 1_500_000
    # each public inline XBRL page inflated exactly once (every byte handed out once), nothing else
    # (the audit report, the instance) inflated at all
    pages = {
        i.filename: i.file_size
        for i in zipfile.ZipFile(io.BytesIO(package)).infolist()
        if i.filename.startswith("XBRL/PublicDoc/") and i.filename.endswith("_ixbrl.htm")
    }
    assert inflated == pages and sum(pages.values()) > 3_500_000, inflated


# ----------------------------------------------------------------------------------------------------------------
# Safety


@pytest.mark.parametrize(
    "name", ["../evil_ixbrl.htm", "XBRL/PublicDoc/../../../etc/cron.d/x", "/etc/passwd", "C:\\Windows\\x.htm"]
)
def test_zip_slip_names_are_refused(name):
    members = members_of(XBRL) | {name: b"<html/>"}
    assert reason(make_zip(members)).startswith("zip-slip:")


@pytest.mark.timeout(60)
def test_zip_bomb_by_compression_ratio(inflated):
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = b"".join(zeros.compress(bytes(1 << 20)) for _ in range(64)) + zeros.flush()  # 64 MiB → ~64 KB
    info = zipfile.ZipInfo("XBRL/PublicDoc/0101010_honbun_ixbrl.htm")
    info.compress_type = zipfile.ZIP_DEFLATED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(info, b"")  # a placeholder entry, rewritten below with the raw deflate stream
    bomb = _with_raw_member(buf.getvalue(), stream, 64 << 20, zlib.crc32(bytes(64 << 20)))
    message = reason(bomb)
    assert message.startswith("zip bomb:") and "ratio" in message
    # stopped at the first read chunk past the 500:1 cap (32 MiB read), not after inflating all 64 MiB
    (read,) = inflated.values()
    assert read <= ZipLimits().max_ratio * len(stream) + _CHUNK < 64 << 20, read


def _with_raw_member(package: bytes, stream: bytes, size: int, crc: int) -> bytes:
    """The one-member ``package`` with its (empty) data replaced by ``stream`` and its headers patched."""
    local_end = 30 + struct.unpack("<H", package[26:28])[0] + struct.unpack("<H", package[28:30])[0]
    central = package.index(b"PK\x01\x02")
    local = bytearray(package[:local_end])
    struct.pack_into("<III", local, 14, crc, len(stream), size)
    cd = bytearray(package[central:])
    struct.pack_into("<III", cd, 16, crc, len(stream), size)
    eocd = cd.index(b"PK\x05\x06")
    struct.pack_into("<I", cd, eocd + 16, len(local) + len(stream))  # central directory offset
    return bytes(local) + stream + bytes(cd)


def test_zip_bomb_by_member_size_total_size_and_member_count():
    page = ixbrl(" " * (600 << 10))  # 600 KiB of markup each
    loose = dict(max_ratio=1e9)
    two = make_zip({f"XBRL/PublicDoc/{i}_ixbrl.htm": page for i in range(2)})
    assert "inflates past 0.5 MiB" in reason(two, ZipLimits(max_member_bytes=512 << 10, **loose))
    assert "in total" in reason(two, ZipLimits(max_total_bytes=1 << 20, **loose))
    many = make_zip({f"XBRL/PublicDoc/{i}.txt": b"" for i in range(11)})
    assert reason(many, ZipLimits(max_members=10)) == "zip bomb: 11 members (limit 10)"


def test_sizes_in_headers_are_not_trusted():
    data = bytearray(make_zip({"XBRL/PublicDoc/0101010_ixbrl.htm": ixbrl("<p>x</p>" * 5000)}))
    cd = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 10)  # central directory claims 10 bytes uncompressed
    assert "corrupt" in reason(bytes(data))


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99])
def test_truncated_zip(cut):
    assert reason(XBRL[: int(len(XBRL) * cut)]).startswith("truncated or corrupt zip")


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", "not a zip archive: empty"),
        (b"hello world", "not a zip archive: starts with"),
        (b'{"StatusCode": 404, "message": "not found"}', "not a zip archive: a JSON body"),
        (b"%PDF-1.4", "not a zip archive: a PDF"),
    ],
)
def test_not_a_zip(data, expected):
    assert reason(data).startswith(expected)


def test_encrypted_members_are_refused():
    data = bytearray(XBRL)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            data[at + offset] |= 0x1
            at = data.find(signature, at + 4)
    assert reason(bytes(data)).startswith("encrypted member")


def test_unsupported_compression_is_refused():
    data = make_zip({"XBRL/PublicDoc/0101010_ixbrl.htm": ixbrl("<p>x</p>")}, zipfile.ZIP_BZIP2)
    assert reason(data).startswith("unsupported compression method 12")


def test_external_entities_are_refused():
    head = '<!DOCTYPE html [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    body = '<ix:nonNumeric name="jpcrp_cor:BusinessRisksTextBlock"><p>&xxe;</p></ix:nonNumeric>'
    assert reason(one_page(body, head)).startswith("forbidden XML construct: EntitiesForbidden")


def test_plain_xhtml_doctype_is_read_and_never_fetched():
    head = '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://127.0.0.1:9/never.dtd">'
    body = '<ix:nonNumeric name="jpcrp_cor:BusinessRisksTextBlock"><p>為替の変動リスクがあります。</p></ix:nonNumeric>'
    filing = read_package(one_page(body, head), "S100TEST.zip")
    assert [s.text for s in filing.sections] == ["為替の変動リスクがあります。"]


def test_entity_expansion_in_the_instance_is_refused():
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b'<xbrli:xbrl xmlns:xbrli="http://www.xbrl.org/2003/instance">&b;</xbrli:xbrl>'
    )
    message = reason(make_zip({"XBRL/PublicDoc/jpcrp030000-asr-001.xbrl": laughs}))
    assert message.startswith("forbidden XML construct") and "jpcrp030000-asr-001.xbrl" in message


def test_malformed_xml():
    assert reason(one_page("<p>unclosed")).startswith(
        "malformed XML in 'XBRL/PublicDoc/0101010_honbun_ixbrl.htm'"
    )


def test_no_narrative_sections():
    other = '<ix:nonNumeric name="jppfs_cor:BalanceSheetTextBlock"><p>資産</p></ix:nonNumeric>'
    assert (
        reason(one_page(DEI + other))
        == "no narrative sections (other TextBlocks: jppfs_cor:BalanceSheetTextBlock)"
    )
    assert reason(one_page(DEI)) == "no narrative sections"


def test_not_an_edinet_package():
    assert reason(make_zip({"readme.txt": b"hi"})).startswith("not an EDINET package")


@pytest.mark.parametrize(
    "csv_bytes, expected",
    [
        (b"\xff\xfe" + "要素ID\t値\n".encode("utf-16-le") + b"\x00\xd8", "undecodable CSV"),  # lone surrogate
        (b"\xff\xfe" + "要素ID\t値\n\x01\x02".encode("utf-16-le"), "undecodable CSV"),
        (b"\x81\x20\xff\xfe garbage \xff\xff\xff", "undecodable CSV"),
        ("項目\t値\nx\ty\n".encode("utf-16"), "CSV 'XBRL_TO_CSV/a.csv' lacks the columns 要素ID/値"),
    ],
)
def test_bad_csv(csv_bytes, expected):
    assert reason(make_zip({"XBRL_TO_CSV/a.csv": csv_bytes})).startswith(expected)


# ----------------------------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, the only exception is PackageError

SMALL = DemoFiling(
    "S100FUZZ", "E02222", "株式会社小", "2024-06-20", {"事業の内容": "本文。", "研究開発活動": "研究。"}
)
SEEDS = [
    build_xbrl_zip(SMALL),
    build_csv_zip(SMALL),
    make_zip(members_of(build_xbrl_zip(SMALL)), zipfile.ZIP_STORED),  # raw XML bytes reachable by mutation
]
# No per-example deadline (wall clock flakes on a loaded machine); each fuzz test has a generous
# pytest timeout instead, which a hanging or super-linear parse of one example still trips.
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def only_package_errors(data: bytes) -> None:
    try:
        read_package(data, "fuzz.zip")
    except PackageError:
        pass


@pytest.mark.timeout(120)
@FUZZ
@given(st.one_of(st.binary(max_size=2048), st.binary(max_size=2048).map(lambda b: b"PK\x03\x04" + b)))
def test_fuzz_arbitrary_bytes(data):
    only_package_errors(data)


@pytest.mark.timeout(120)
@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_fuzz_corrupted_packages(seed, flips, cut):
    data = bytearray(seed)
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    only_package_errors(bytes(data))


@pytest.mark.timeout(120)
@FUZZ
@given(
    seed=st.sampled_from(SEEDS[:2]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_fuzz_corrupted_members_in_a_valid_zip(seed, flips):
    """Mutate member contents and re-zip, so the XML / CSV / HTML parsers see the damage (CRCs stay valid)."""
    members = members_of(seed)
    for where, value in flips:
        name = sorted(members)[int(where * len(members))]
        content = bytearray(members[name])
        content[int(where * len(content) * 7919) % len(content)] = value
        members[name] = bytes(content)
    only_package_errors(make_zip(members))
