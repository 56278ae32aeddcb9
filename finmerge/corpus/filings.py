"""EDINET document packages (type=1 XBRL ZIP, type=5 CSV ZIP) → narrative sections and filing metadata.

Everything happens in memory: members are inflated by streaming reads under running byte caps (header sizes are
never trusted; ``safezip.py``), XML goes through defusedxml with DTDs, entities and external references forbidden,
and nothing inside an archive is extracted to disk or executed. Any problem with a package (corrupt, hostile, or simply not an
EDINET filing) is a ``PackageError`` whose message gives the reason.

Sections are the narrative ``jpcrp_cor:*TextBlock`` facts named in ``NARRATIVE_SECTIONS``, under their Japanese
headings, in document order. Every other TextBlock (financial statements, tables such as 主要な経営指標等の推移,
filer extensions, elements the map does not know yet) is left out and listed in ``Filing.skipped``, so the map can
grow from what real packages contain without table dumps leaking into the corpus meanwhile.

Prefect-free on purpose: this runs in spawned worker processes and under fuzzers.
"""

from __future__ import annotations

import csv
import html
import io
import re
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import PurePosixPath
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _defused_fromstring

from finmerge.corpus.safezip import (  # noqa: F401 - _CHUNK, MIB, PackageError, ZipLimits re-exported for callers
    _CHUNK,
    CORRUPTION,
    MIB,
    Archive,
    PackageError,
    ZipLimits,
)
from finmerge.corpus.textio import DecodeError, decode, html_to_text

# jpcrp_cor TextBlock (local name) → the heading it carries in a 有価証券報告書. Extend here.
NARRATIVE_SECTIONS: dict[str, str] = {
    "CompanyHistoryTextBlock": "沿革",
    "DescriptionOfBusinessTextBlock": "事業の内容",
    "BusinessPolicyBusinessEnvironmentIssuesToAddressEtcTextBlock": "経営方針、経営環境及び対処すべき課題等",
    "DisclosureOfSustainabilityRelatedFinancialInformationTextBlock": "サステナビリティに関する考え方及び取組",
    "BusinessRisksTextBlock": "事業等のリスク",
    "ManagementAnalysisOfFinancialPositionOperatingResultsAndCashFlowsTextBlock": (
        "経営者による財政状態、経営成績及びキャッシュ・フローの状況の分析"
    ),
    "CriticalContractsForOperationTextBlock": "経営上の重要な契約等",
    "ResearchAndDevelopmentActivitiesTextBlock": "研究開発活動",
    "OverviewOfCapitalExpendituresEtcTextBlock": "設備投資等の概要",
    "DividendPolicyTextBlock": "配当政策",
    "OverviewOfCorporateGovernanceTextBlock": "コーポレート・ガバナンスの概要",
    "InformationAboutOfficersTextBlock": "役員の状況",
    "RemunerationForDirectorsAndOtherOfficersTextBlock": "役員の報酬等",
    "ShareholdingsTextBlock": "株式の保有状況",
}
NARRATIVE_PREFIX = "jpcrp_cor"

# Facts that carry filing metadata (DEI first; the cover page as a fallback) → Filing field.
META_ELEMENTS: dict[str, str] = {
    "jpdei_cor:EDINETCodeDEI": "edinet_code",
    "jpdei_cor:FilerNameInJapaneseDEI": "company",
    "jpcrp_cor:CompanyNameCoverPage": "company_cover",
    "jpcrp_cor:FilingDateCoverPage": "filing_date",
    "jpdei_cor:AmendmentFlagDEI": "amendment",
}

# Report code in package file names → docTypeCode of the original (an amendment is the next code, +10).
REPORT_DOC_TYPES = {
    "asr": "120",  # 有価証券報告書
    "q1r": "140",  # 四半期報告書
    "q2r": "140",
    "q3r": "140",
    "q4r": "140",
    "ssr": "160",  # 半期報告書
    "srs": "030",  # 有価証券届出書
    "esr": "180",  # 臨時報告書
}
# jpcrp030000-asr-001_E00001-000_2024-03-31_01_2024-06-20: form-report-seq_code-add_period_count_submitted
PACKAGE_NAME = re.compile(
    r"(?P<form>[a-z]+\d{6})-(?P<report>[a-z0-9]{3})-\d{3}_(?P<code>[EG]\d{5})-\d{3}_"
    r"(?P<period>\d{4}-\d{2}-\d{2})_\d{2}_(?P<submitted>\d{4}-\d{2}-\d{2})"
)
DOC_ID = re.compile(
    r"^[A-Z][0-9A-Z]{7}$"
)  # S100ABCD: the name finmerge/corpus/edinet.py stores packages under
# A heading line the TextBlock repeats from its section name: ３【事業等のリスク】, (1)【…】, 第２【…】.
# The whitespace after the prefix lives inside the optional group: two adjacent \s* runs backtrack quadratically
# on a long line of (full-width) spaces.
HEADING_LINE = re.compile(
    r"^\s*(?:(?:第?[0-9０-９一二三四五六七八九十]+[部章節]?|[(（][0-9０-９]+[)）])\s*)?【[^】\n]{1,60}】\s*$"
)
# A tag; [^<>]* keeps scanning linear on markup full of unclosed '<'.
TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
CELL_BLOCKS = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6"}
HTML_TAG = re.compile(r"<(?:p|div|br|table|tr|td|span|h[1-6]|ul|li)\b", re.I)
# Decoded CSV text must not hold C0 controls or private-use characters (what random bytes become as UTF-16).
IMPLAUSIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ue000-\uf8ff]")
CSV_COLUMNS = ("要素ID", "値")
ERAS = {"令和": 2018, "平成": 1988, "昭和": 1925}


@dataclass
class Section:
    ordinal: int
    name: str
    text: str
    element: str | None


@dataclass
class Filing:
    doc_id: str | None
    edinet_code: str | None
    company: str | None
    filing_date: str | None  # YYYY-MM-DD
    doc_type: str | None  # docTypeCode, e.g. "120"
    sections: list[Section]
    package: str  # "xbrl" | "csv"
    skipped: list[str] = field(default_factory=list)  # TextBlocks seen but not kept, e.g. "jppfs_cor:…"


# ----------------------------------------------------------------------------------------------------------------
# Text and metadata helpers


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _is_ix(tag: str, local: str) -> bool:
    ns, name = _split_tag(tag)
    return name == local and ns.endswith("inlineXBRL")


def _inner_html(el: Element) -> str:
    """The element's content as plain HTML (namespaces dropped), iteratively so deep nesting cannot recurse."""
    parts = [html.escape(el.text or "", quote=False)]
    stack: list[tuple[Element, bool]] = [(child, False) for child in reversed(el)]
    while stack:
        node, closing = stack.pop()
        tag = _split_tag(node.tag)[1]
        if closing:
            parts += [f"</{tag}>", html.escape(node.tail or "", quote=False)]
        elif _is_ix(node.tag, "exclude"):  # ix:exclude is display-only, not part of the fact
            parts.append(html.escape(node.tail or "", quote=False))
        else:
            parts += [f"<{tag}>", html.escape(node.text or "", quote=False)]
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node))
    return "".join(parts)


def _flatten_cells(markup: str) -> str:
    """Drop block tags inside table cells (EDINET wraps cell text in <p>), so that a table row stays one line."""
    out, depth, pos = [], 0, 0
    for m in TAG.finditer(markup):
        out.append(markup[pos : m.start()])
        pos = m.end()
        closing, name = m.group(1), m.group(2).lower()
        if name in ("td", "th"):
            depth = max(0, depth - 1) if closing else depth + 1
        elif depth and name in CELL_BLOCKS:
            out.append(" ")
            continue
        out.append(m.group())
    out.append(markup[pos:])
    return "".join(out)


def _section_text(markup: str) -> str:
    """Plain text of a TextBlock's HTML, without the heading line that only repeats the section name."""
    text, _ = html_to_text(_flatten_cells(markup))
    lines = text.split("\n")
    if lines and HEADING_LINE.match(lines[0]):
        lines = lines[1:]
    return "\n".join(lines).strip()


def _plain_text(value: str) -> str:
    if HTML_TAG.search(value):
        return _section_text(value)
    lines = [line.strip() for line in value.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line]
    if lines and HEADING_LINE.match(lines[0]):
        lines = lines[1:]
    return "\n".join(lines)


def iso_date(value: str) -> str | None:
    """YYYY-MM-DD of a date written as 2024-06-20, 2024年6月20日 or 令和6年6月20日; None if there is none."""
    s = unicodedata.normalize("NFKC", value)
    if m := re.search(r"(\d{4})\s*[-/年.]\s*(\d{1,2})\s*[-/月.]\s*(\d{1,2})", s):
        y, mo, d = (int(g) for g in m.groups())
    elif m := re.search(r"(令和|平成|昭和)\s*(元|\d{1,2})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})", s):
        y = ERAS[m.group(1)] + (1 if m.group(2) == "元" else int(m.group(2)))
        mo, d = int(m.group(3)), int(m.group(4))
    else:
        return None
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        return None


def _is_block(qname: str) -> bool:
    return qname.endswith("TextBlock")


class _Collector:
    """Sections, skipped TextBlocks and metadata gathered from the facts of one package, in document order."""

    def __init__(self):
        self.sections: list[Section] = []
        self.skipped: list[str] = []
        self.meta: dict[str, str] = {}
        self._seen: set[tuple[str, str]] = set()

    def block(self, qname: str, text_of) -> None:
        """``text_of()`` makes the text, only for the blocks that are kept."""
        prefix, _, local = qname.rpartition(":")
        name = NARRATIVE_SECTIONS.get(local) if prefix == NARRATIVE_PREFIX else None
        if name is None:
            if qname not in self.skipped:
                self.skipped.append(qname)
            return
        text = text_of()
        if text and (qname, text) not in self._seen:  # the same fact repeated (e.g. per context) is kept once
            self._seen.add((qname, text))
            self.sections.append(Section(len(self.sections) + 1, name, text, qname))

    def fact(self, qname: str, value: str) -> None:
        key = META_ELEMENTS.get(qname)
        if key and key not in self.meta and (value := " ".join(value.split())):
            self.meta[key] = value


# ----------------------------------------------------------------------------------------------------------------
# type=1: inline XBRL (preferred) and the XBRL instance


def _parse_xml(data: bytes, member: str) -> Element:
    try:
        # A bare DOCTYPE (XHTML's) is harmless and real pages may carry one: expat never fetches the external
        # DTD. Entity declarations (internal or external) and external references are what attacks use.
        return _defused_fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise PackageError(f"forbidden XML construct: {exc!r} in {member!r}") from exc
    except ParseError as exc:
        raise PackageError(f"malformed XML in {member!r}: {exc}") from exc


def _walk_ixbrl(root: Element, continuations: dict[str, Element], out: _Collector) -> None:
    stack = [root]
    while stack:
        el = stack.pop()
        if _is_ix(el.tag, "continuation"):
            continue  # its content belongs to the fact that points at it
        if _is_ix(el.tag, "nonNumeric"):
            qname = el.get("name", "")
            if _is_block(qname):
                out.block(qname, lambda el=el: _section_text(_continued_html(el, continuations)))
                continue  # TextBlocks nested inside are part of this one's text
            if qname in META_ELEMENTS:
                out.fact(qname, "".join(el.itertext()))
        stack.extend(reversed(el))


def _continued_html(el: Element, continuations: dict[str, Element]) -> str:
    parts, seen, nxt = [_inner_html(el)], set(), el.get("continuedAt")
    while nxt and nxt not in seen and nxt in continuations:
        seen.add(nxt)
        parts.append(_inner_html(continuations[nxt]))
        nxt = continuations[nxt].get("continuedAt")
    return "".join(parts)


def _read_ixbrl(archive: Archive, members: list[zipfile.ZipInfo], out: _Collector) -> None:
    roots = [_parse_xml(archive.read(info), info.filename) for info in members]
    continuations = {
        el.get("id", ""): el for root in roots for el in root.iter() if _is_ix(el.tag, "continuation")
    }
    for root in roots:
        _walk_ixbrl(root, continuations, out)


def _read_instance(archive: Archive, info: zipfile.ZipInfo, out: _Collector) -> None:
    root = _parse_xml(archive.read(info), info.filename)
    for el in root:
        ns, local = _split_tag(el.tag)
        qname = f"{ns.rstrip('/').rpartition('/')[2]}:{local}"  # …/jpcrp/2023-12-01/jpcrp_cor → jpcrp_cor
        if _is_block(qname):
            # The instance holds the TextBlock as escaped HTML, i.e. markup in the element's text.
            out.block(qname, lambda el=el: _section_text(el.text or "" if len(el) == 0 else _inner_html(el)))
        elif qname in META_ELEMENTS:
            out.fact(qname, "".join(el.itertext()))


# ----------------------------------------------------------------------------------------------------------------
# type=5: XBRL_TO_CSV (tab-separated UTF-16)


def _decode_csv(data: bytes, member: str) -> str:
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = data.decode("utf-16")
        elif b"\x00" in data[:64] and not data.startswith(b"\xef\xbb\xbf"):
            text = data.decode("utf-16-le")  # UTF-16LE that lost its BOM
        else:
            text, _ = decode(data)
    except UnicodeDecodeError as exc:
        raise PackageError(f"undecodable CSV {member!r}: {exc.reason} at byte {exc.start}") from exc
    except DecodeError as exc:
        raise PackageError(f"undecodable CSV {member!r}: {exc}") from exc
    if m := IMPLAUSIBLE.search(text):
        raise PackageError(f"undecodable CSV {member!r}: control character {m.group()!r} after decoding")
    return text


def _csv_rows(text: str, member: str) -> Iterator[tuple[str, str]]:
    # A TextBlock value is one field and easily passes csv's default 128 KiB field limit; the member cap already
    # bounds the size, so the (process-wide) limit only ever goes up, to the whole text.
    if csv.field_size_limit() < len(text):
        csv.field_size_limit(len(text))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        if not all(col in header for col in CSV_COLUMNS):
            raise PackageError(
                f"CSV {member!r} lacks the columns {'/'.join(CSV_COLUMNS)}: header {header[:9]}"
            )
        i_el, i_val = header.index("要素ID"), header.index("値")
        for row in reader:
            if len(row) > max(i_el, i_val):
                yield row[i_el].strip(), row[i_val]
    except csv.Error as exc:
        raise PackageError(f"malformed CSV {member!r}: {exc}") from exc


def _read_csv(archive: Archive, members: list[zipfile.ZipInfo], out: _Collector) -> None:
    for info in members:
        for qname, value in _csv_rows(_decode_csv(archive.read(info), info.filename), info.filename):
            if _is_block(qname):
                out.block(qname, lambda value=value: _plain_text(value))
            else:
                out.fact(qname, value)


# ----------------------------------------------------------------------------------------------------------------
# Package


def _basename(info: zipfile.ZipInfo) -> str:
    return info.filename.rpartition("/")[2]


def _in_folder(info: zipfile.ZipInfo, folder: str) -> bool:
    return re.search(rf"(?:^|/){folder}/[^/]+$", info.filename) is not None


def _doc_type(names: list[str], amendment: str | None) -> str | None:
    for name in names:
        if (m := PACKAGE_NAME.search(name)) and (code := REPORT_DOC_TYPES.get(m.group("report"))):
            return f"{int(code) + 10:03d}" if (amendment or "").lower() == "true" else code
    return None


def _read_package(data: bytes, source: str, limits: ZipLimits) -> Filing:
    archive = Archive(data, limits)
    public = [i for i in archive.members if _in_folder(i, "XBRL/PublicDoc")]
    csvs = [
        i
        for i in archive.members
        if _in_folder(i, "XBRL_TO_CSV")
        and i.filename.lower().endswith(".csv")
        and not _basename(i).startswith("jpaud")  # audit reports are boilerplate
    ]
    out = _Collector()
    if public:
        package = "xbrl"
        inline = sorted(
            (i for i in public if i.filename.lower().endswith((".htm", ".html", ".xhtml"))), key=_basename
        )
        instances = sorted((i for i in public if i.filename.lower().endswith(".xbrl")), key=_basename)
        named = inline + instances
        if inline:
            _read_ixbrl(archive, inline, out)
        if not out.sections and instances:
            out = _Collector()
            _read_instance(archive, instances[0], out)
    elif csvs:
        package = "csv"
        named = sorted(csvs, key=_basename)
        _read_csv(archive, named, out)
    else:
        raise PackageError("not an EDINET package: no XBRL/PublicDoc/ or XBRL_TO_CSV/*.csv members")
    if not out.sections:
        seen = f" (other TextBlocks: {', '.join(out.skipped[:5])})" if out.skipped else ""
        raise PackageError(f"no narrative sections{seen}")

    names = [_basename(i) for i in named]
    from_name = next((m for n in names if (m := PACKAGE_NAME.search(n))), None)
    meta = out.meta
    filing_date = iso_date(meta.get("filing_date", "")) or (from_name and from_name.group("submitted"))
    stem = PurePosixPath(str(source).replace("\\", "/")).name.removesuffix(".zip")
    return Filing(
        doc_id=stem if DOC_ID.match(stem) else None,
        edinet_code=meta.get("edinet_code") or (from_name and from_name.group("code")) or None,
        company=meta.get("company") or meta.get("company_cover"),
        filing_date=filing_date or None,
        doc_type=_doc_type(names, meta.get("amendment")),
        sections=out.sections,
        package=package,
        skipped=out.skipped,
    )


def read_package(data: bytes, source: str, limits: ZipLimits = ZipLimits()) -> Filing:
    """Sections and metadata of an EDINET type=1 or type=5 ZIP held in memory; raises PackageError.

    ``source`` is where the bytes came from; a name like ``S100ABCD.zip`` gives ``doc_id``.
    """
    try:
        return _read_package(data, source, limits)
    except PackageError:
        raise
    except RecursionError as exc:
        raise PackageError("corrupt package: nesting too deep") from exc
    except CORRUPTION as exc:
        raise PackageError(f"corrupt package: {type(exc).__name__}: {exc}") from exc
