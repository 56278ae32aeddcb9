"""Realistic EDINET document packages built from a small filing description (test fixtures, the demo world).

``build_xbrl_zip`` makes the type=1 ZIP: ``XBRL/PublicDoc/`` holds a header inline-XBRL file (DEI facts, the
cover) and one honbun file per part of the report whose ``ix:nonNumeric`` TextBlocks hold the sections as XHTML,
plus the ``.xbrl`` instance with the same TextBlocks as escaped HTML; ``XBRL/AuditDoc/`` holds the audit report.
``build_csv_zip`` makes the type=5 ZIP: ``XBRL_TO_CSV/*.csv``, quoted, tab-separated UTF-16LE with a BOM.

Same filing ⇒ same bytes (fixed member timestamps), so fixtures can be compared by digest.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date
from html import escape

from finmerge.corpus.filings import NARRATIVE_SECTIONS, REPORT_DOC_TYPES


@dataclass
class DemoFiling:
    doc_id: str
    edinet_code: str
    company: str
    filing_date: str  # YYYY-MM-DD
    sections: dict[str, str]  # Japanese section name → text; lines with tabs become table rows
    doc_type_code: str = "120"
    period_end: str | None = None  # default: the 31 March before filing_date
    sec_code: str | None = None


# Sections a report has besides the narrative ones; the parser leaves these out.
OTHER_SECTIONS = {
    "主要な経営指標等の推移": "BusinessResultsOfGroupTextBlock",
    "関係会社の状況": "OverviewOfAffiliatedEntitiesTextBlock",
    "従業員の状況": "InformationAboutEmployeesTextBlock",
    "主要な設備の状況": "MajorFacilitiesTextBlock",
}
ELEMENTS = {name: element for element, name in NARRATIVE_SECTIONS.items()} | OTHER_SECTIONS
COVER = "表紙"

# Honbun files: (file number, part heading, TextBlocks in report order).
PARTS = [
    (
        "0101010",
        "第一部【企業情報】第１【企業の概況】",
        [
            "BusinessResultsOfGroupTextBlock",
            "CompanyHistoryTextBlock",
            "DescriptionOfBusinessTextBlock",
            "OverviewOfAffiliatedEntitiesTextBlock",
            "InformationAboutEmployeesTextBlock",
        ],
    ),
    (
        "0102010",
        "第２【事業の状況】",
        [
            "BusinessPolicyBusinessEnvironmentIssuesToAddressEtcTextBlock",
            "DisclosureOfSustainabilityRelatedFinancialInformationTextBlock",
            "BusinessRisksTextBlock",
            "ManagementAnalysisOfFinancialPositionOperatingResultsAndCashFlowsTextBlock",
            "CriticalContractsForOperationTextBlock",
            "ResearchAndDevelopmentActivitiesTextBlock",
        ],
    ),
    (
        "0103010",
        "第３【設備の状況】",
        ["OverviewOfCapitalExpendituresEtcTextBlock", "MajorFacilitiesTextBlock"],
    ),
    (
        "0104010",
        "第４【提出会社の状況】",
        [
            "DividendPolicyTextBlock",
            "OverviewOfCorporateGovernanceTextBlock",
            "InformationAboutOfficersTextBlock",
            "RemunerationForDirectorsAndOtherOfficersTextBlock",
            "ShareholdingsTextBlock",
        ],
    ),
]
FW_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")
NS = {
    "xmlns": "http://www.w3.org/1999/xhtml",
    "xmlns:ix": "http://www.xbrl.org/2013/inlineXBRL",
    "xmlns:ixt": "http://www.xbrl.org/inlineXBRL/transformation/2011-07-31",
    "xmlns:xbrli": "http://www.xbrl.org/2003/instance",
    "xmlns:link": "http://www.xbrl.org/2003/linkbase",
    "xmlns:xlink": "http://www.w3.org/1999/xlink",
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xmlns:jpcrp_cor": "http://disclosure.edinet-fsa.go.jp/taxonomy/jpcrp/2023-12-01/jpcrp_cor",
    "xmlns:jpdei_cor": "http://disclosure.edinet-fsa.go.jp/taxonomy/jpdei/2013-08-31/jpdei_cor",
}
CSV_HEADER = [
    "要素ID",
    "項目名",
    "コンテキストID",
    "相対年度",
    "連結・個別",
    "期間・時点",
    "ユニットID",
    "単位",
    "値",
]


def as_filing(filing: DemoFiling | Mapping) -> DemoFiling:
    """A DemoFiling from itself or a dict; ``sections`` may also be the demo world's [{"name", "lines"}]."""
    if isinstance(filing, DemoFiling):
        return filing
    known = {f.name for f in fields(DemoFiling)}
    kw = {k: v for k, v in filing.items() if k in known}
    sections = kw.get("sections") or {}
    if not isinstance(sections, Mapping):
        sections = {s["name"]: s["text"] if "text" in s else "\n".join(s["lines"]) for s in sections}
    kw["sections"] = dict(sections)
    return DemoFiling(**kw)


def _period_end(f: DemoFiling) -> str:
    if f.period_end:
        return f.period_end
    filed = date.fromisoformat(f.filing_date)
    return date(filed.year if filed.month > 3 else filed.year - 1, 3, 31).isoformat()


def _report(f: DemoFiling) -> tuple[str, bool]:
    """File-name report code and whether the filing is an amendment (the code after its original's)."""
    by_code = {code: report for report, code in reversed(REPORT_DOC_TYPES.items())}
    if f.doc_type_code in by_code:
        return by_code[f.doc_type_code], False
    original = f"{int(f.doc_type_code) - 10:03d}" if f.doc_type_code.isdigit() else ""
    if original in by_code:
        return by_code[original], True
    return "asr", False  # other doc types are packaged like a 有価証券報告書


def package_stem(filing: DemoFiling | Mapping) -> str:
    """jpcrp030000-asr-001_E00001-000_2024-03-31_01_2024-06-20"""
    f = as_filing(filing)
    return f"jpcrp030000-{_report(f)[0]}-001_{f.edinet_code}-000_{_period_end(f)}_01_{f.filing_date}"


def _japanese_date(iso: str) -> str:
    d = date.fromisoformat(iso)
    return f"{d.year}年{d.month}月{d.day}日"


def _text_html(text: str) -> str:
    """Paragraphs; runs of tab-separated lines become a table."""
    out, rows = [], []
    for line in [*text.split("\n"), ""]:
        if "\t" in line:
            rows.append("".join(f"<td><p>{escape(cell)}</p></td>" for cell in line.split("\t")))
            continue
        if rows:
            out.append("<table>" + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>")
            rows = []
        if line.strip():
            out.append(f"<p>{escape(line)}</p>")
    return "".join(out)


def _blocks(f: DemoFiling) -> list[tuple[str, str, str]]:
    """[(honbun file number, element, section HTML with its heading)] in report order."""
    unknown = set(f.sections) - set(ELEMENTS) - {COVER}
    if unknown:
        raise ValueError(f"no EDINET element for section(s) {sorted(unknown)}")
    by_element = {ELEMENTS[name]: text for name, text in f.sections.items() if name != COVER}
    out = []
    for number, _, elements in PARTS:
        for k, element in enumerate(elements, 1):
            if element in by_element:
                name = NARRATIVE_SECTIONS.get(element) or next(
                    n for n, e in OTHER_SECTIONS.items() if e == element
                )
                heading = f'<h3 class="smt_head2">{str(k).translate(FW_DIGITS)}【{escape(name)}】</h3>'
                out.append((number, element, heading + _text_html(by_element[element])))
    return out


def _dei(f: DemoFiling) -> list[tuple[str, str]]:
    _, amended = _report(f)
    facts = [
        ("jpdei_cor:EDINETCodeDEI", f.edinet_code),
        ("jpdei_cor:FilerNameInJapaneseDEI", f.company),
        ("jpdei_cor:DocumentTypeDEI", "第三号様式"),
        ("jpdei_cor:AccountingStandardsDEI", "Japan GAAP"),
        ("jpdei_cor:CurrentFiscalYearEndDateDEI", _period_end(f)),
        ("jpdei_cor:TypeOfCurrentPeriodDEI", "FY"),
        ("jpdei_cor:AmendmentFlagDEI", "true" if amended else "false"),
    ]
    if f.sec_code:
        facts.append(("jpdei_cor:SecurityCodeDEI", f.sec_code))
    return facts


def _contexts(f: DemoFiling) -> str:
    ident = f'<xbrli:entity><xbrli:identifier scheme="http://disclosure.edinet-fsa.go.jp">{f.edinet_code}-000</xbrli:identifier></xbrli:entity>'
    period_start = date.fromisoformat(_period_end(f)).replace(day=1, month=4)
    period_start = period_start.replace(year=period_start.year - 1)
    return (
        f'<xbrli:context id="FilingDateInstant">{ident}<xbrli:period><xbrli:instant>{f.filing_date}'
        "</xbrli:instant></xbrli:period></xbrli:context>"
        f'<xbrli:context id="CurrentYearDuration">{ident}<xbrli:period><xbrli:startDate>{period_start}'
        f"</xbrli:startDate><xbrli:endDate>{_period_end(f)}</xbrli:endDate></xbrli:period></xbrli:context>"
    )


def _ixbrl_page(f: DemoFiling, title: str, body: str, hidden: str = "") -> str:
    attrs = " ".join(f'{k}="{v}"' for k, v in NS.items())
    header = (
        f'<div style="display:none"><ix:header><ix:hidden>{hidden}</ix:hidden><ix:references>'
        f'<link:schemaRef xlink:type="simple" xlink:href="{package_stem(f)}.xsd"/></ix:references>'
        f"<ix:resources>{_contexts(f)}</ix:resources></ix:header></div>"
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<html {attrs}><head>'
        '<meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>'
        f'<title>{escape(title)}</title><style type="text/css">p {{ margin: 0 }}</style></head>'
        f'<body>{header}<div class="honbun">{body}</div></body></html>\n'
    )


def _nonnumeric(name: str, inner: str, **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<ix:nonNumeric name="{name}" contextRef="FilingDateInstant"{extra}>{inner}</ix:nonNumeric>'


def _header_page(f: DemoFiling) -> str:
    hidden = "".join(_nonnumeric(name, escape(value)) for name, value in _dei(f))
    cover = "".join(
        f"<p>{escape(line)}</p>" for line in f.sections.get(COVER, "").split("\n") if line.strip()
    )
    body = (
        "<h1>【表紙】</h1><p>【提出書類】　有価証券報告書</p><p>【提出日】　"
        + _nonnumeric(
            "jpcrp_cor:FilingDateCoverPage", _japanese_date(f.filing_date), format="ixt:dateyearmonthdaycjk"
        )
        + "</p><p>【会社名】　"
        + _nonnumeric("jpcrp_cor:CompanyNameCoverPage", escape(f.company))
        + "</p>"
        + cover
    )
    return _ixbrl_page(f, f"{f.company} 表紙", body, hidden)


def _instance(f: DemoFiling, blocks: list[tuple[str, str, str]]) -> str:
    attrs = " ".join(f'{k}="{v}"' for k, v in NS.items() if k not in ("xmlns", "xmlns:ix", "xmlns:ixt"))
    facts = [f'<{name} contextRef="FilingDateInstant">{escape(value)}</{name}>' for name, value in _dei(f)]
    facts.append(
        f'<jpcrp_cor:FilingDateCoverPage contextRef="FilingDateInstant">{f.filing_date}</jpcrp_cor:FilingDateCoverPage>'
    )
    facts.append(
        f'<jpcrp_cor:CompanyNameCoverPage contextRef="FilingDateInstant">{escape(f.company)}</jpcrp_cor:CompanyNameCoverPage>'
    )
    for _, element, markup in blocks:
        # The instance carries each TextBlock as escaped HTML (text, not child elements).
        facts.append(
            f'<jpcrp_cor:{element} contextRef="FilingDateInstant">{escape(markup)}</jpcrp_cor:{element}>'
        )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<xbrli:xbrl {attrs}>'
        f'<link:schemaRef xlink:type="simple" xlink:href="{package_stem(f)}.xsd"/>'
        f"{_contexts(f)}{''.join(facts)}</xbrli:xbrl>\n"
    )


def _audit_page(f: DemoFiling) -> str:
    body = (
        "<h1>独立監査人の監査報告書</h1>"
        f"<p>{escape(f.company)} 取締役会 御中</p>"
        "<p>当監査法人は、金融商品取引法第193条の2第1項の規定に基づく監査証明を行うため、連結財務諸表について監査を行った。</p>"
    )
    return _ixbrl_page(f, "監査報告書", body)


def _zip(members: dict[str, bytes], when: str) -> bytes:
    stamp = (*date.fromisoformat(when).timetuple()[:3], 9, 0, 0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def build_xbrl_zip(filing: DemoFiling | Mapping) -> bytes:
    """The type=1 package of ``filing``."""
    f = as_filing(filing)
    stem = package_stem(f)
    blocks = _blocks(f)
    members = {f"XBRL/PublicDoc/0000000_header_{stem}_ixbrl.htm": _header_page(f).encode()}
    for number, part_heading, _ in PARTS:
        part = [
            _nonnumeric(f"jpcrp_cor:{e}", markup, escape="true") for n, e, markup in blocks if n == number
        ]
        if part:
            body = f"<h2>{escape(part_heading)}</h2>" + "".join(part)
            members[f"XBRL/PublicDoc/{number}_honbun_{stem}_ixbrl.htm"] = _ixbrl_page(
                f, f.company, body
            ).encode()
    members[f"XBRL/PublicDoc/{stem}.xbrl"] = _instance(f, blocks).encode()
    members[f"XBRL/PublicDoc/{stem}.xsd"] = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<xsd:schema xmlns:xsd="http://www.w3.org/2001/XMLSchema"/>\n'
    )
    audit = stem.replace(stem.split("_")[0], "jpaud-aar-cn-001")
    members[f"XBRL/AuditDoc/{audit}_ixbrl.htm"] = _audit_page(f).encode()
    return _zip(members, f.filing_date)


def _csv_bytes(rows: list[list[str]]) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(
        [CSV_HEADER, *rows]
    )
    return ("\ufeff" + buf.getvalue()).encode("utf-16-le")


def _csv_row(element: str, label: str, value: str) -> list[str]:
    return [element, label, "FilingDateInstant", "提出日時点", "その他", "時点", "－", "－", value]


def build_csv_zip(filing: DemoFiling | Mapping) -> bytes:
    """The type=5 package of ``filing``."""
    f = as_filing(filing)
    stem = package_stem(f)
    rows = [_csv_row(name, f"{name.split(':')[1]}、DEI", value) for name, value in _dei(f)]
    rows.append(_csv_row("jpcrp_cor:FilingDateCoverPage", "提出日、表紙", f.filing_date))
    rows.append(_csv_row("jpcrp_cor:CompanyNameCoverPage", "会社名、表紙", f.company))
    for _, element, _ in _blocks(f):
        name = NARRATIVE_SECTIONS.get(element) or next(n for n, e in OTHER_SECTIONS.items() if e == element)
        text = f.sections[name]
        rows.append(_csv_row(f"jpcrp_cor:{element}", f"{name} [テキストブロック]", f"【{name}】\n{text}"))
    audit_rows = [
        _csv_row("jpaud_cor:OpinionTextBlock", "監査意見 [テキストブロック]", "適正に表示している。")
    ]
    audit = stem.replace(stem.split("_")[0], "jpaud-aar-cn-001")
    return _zip(
        {f"XBRL_TO_CSV/{stem}.csv": _csv_bytes(rows), f"XBRL_TO_CSV/{audit}.csv": _csv_bytes(audit_rows)},
        f.filing_date,
    )


def write_fixture_filings(prefix: str, first: int, n: int, only: str | None = None) -> list[str]:
    """Write n XBRL packages, as the EDINET connector downloads them, under ``prefix`` (any fsspec URI):
    the demo world's report text for companies ``first`` … ``first + n - 1`` of a world no demo config
    builds (seed 777), so they are new to any demo corpus. ``only`` keeps the cover and that one section.
    Returns the URIs written (``new filings arriving`` in tests and the screenshots)."""
    from finmerge.config import DemoConfig
    from finmerge.core import storage
    from finmerge.demo.world import filing_content, make_companies, section_text

    companies = make_companies(DemoConfig(seed=777, n_companies=first + n))
    written = []
    for k in range(first, first + n):
        c = companies[k]
        content = filing_content(c, 2025, "2026-11-20", seed=k)
        sections = {s["name"]: section_text(s) for s in content if s["kind"] != "table"}
        if only:
            sections = {name: text for name, text in sections.items() if name in (COVER, only)}
        f = DemoFiling(
            doc_id=f"S100R{k:03d}",
            edinet_code=c["edinet_code"],
            company=c["name"],
            filing_date="2026-11-20",
            sections=sections,
        )
        uri = storage.join(prefix, f"{f.doc_id}.zip")
        storage.write_bytes(uri, build_xbrl_zip(f))
        written.append(uri)
    return written
