"""The embedded demo world: fictional listed companies, their 有価証券報告書 and everything the demo trains on.

``generate_world(cfg, out_dir)`` writes, deterministically from ``cfg.seed`` (same config ⇒ byte-identical
files; no global random state, nothing downloaded)::

    filings/html/<doc_id>.html        raw filings as EDINET-viewer-like HTML pages
    filings/text/<doc_id>.txt         raw filings as plain text with repeated page headers / footers
    filings/jsonl/part-000.jsonl      raw filings, one record per section
    eval/heldout.jsonl                the companies' held-out-year filings, clean narrative sections
    eval/harness/demo_fin/data.json   multiple-choice questions (japanese-lm-fin-harness format)
    eval/chat_finance.jsonl           chat questions with accepted answers
    general/corpus.jsonl              general Japanese corpus (towns, everyday topics), no company names
    instructions/train.jsonl          general instruction pairs, every answer starts with 回答：
    truth.json                        what the dirt is (duplicates, junk, non-Japanese) and counts
    world.json                        the company (and town) facts

Facts are made learnable by a tiny LM: each categorical fact is stated in the fixed pattern
``<会社名>の<属性>は<値>です。`` in several sections of every filing, between varied narrative sentences.
Filings of one company differ from year to year (sentence variants, numbers), so the only near duplicates
of the corpus are the ones listed in ``truth.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from finmerge.config import DemoConfig
from finmerge.demo import general
from finmerge.demo import vocab as V

# Re-exported: callers and tests use these through this module.
from finmerge.demo.amend import NEAR_JACCARD, SHINGLE, amend_section, clean_view, jaccard, shingles  # noqa: F401
from finmerge.demo.common import jp_num, pick, sub_rng
from finmerge.demo.narrative import SECTION_WRITERS, fact_sentences
from finmerge.demo.render import (  # noqa: F401 - re-exported
    FW_DIGITS,
    LINES_PER_PAGE,
    dirty_sections,
    english_text,
    junk_text,
    render_html,
    render_jsonl,
    render_text,
    section_text,
    write_raw_forms,
)

SECTIONS = [
    "表紙",
    "主要な経営指標等の推移",
    "沿革",
    "事業の内容",
    "従業員の状況",
    "経営方針、経営環境及び対処すべき課題等",
    "事業等のリスク",
    "経営者による財政状態、経営成績及びキャッシュ・フローの状況の分析",
]
NARRATIVE_SECTIONS = SECTIONS[2:]
FORMS = ["html", "jsonl", "text"]  # also the order in which a sorted folder walk meets them


# --------------------------------------------------------------------------------------------------------------
# Companies


def _person(rng: random.Random) -> str:
    return f"{pick(rng, V.SURNAMES)}　{pick(rng, V.GIVEN_NAMES)}"


def make_companies(cfg: DemoConfig) -> list[dict]:
    rng = sub_rng(cfg.seed, "companies")
    n = cfg.n_companies
    if n > len(V.COMPANY_PREFIXES) * len(V.INDUSTRIES):
        raise ValueError(
            f"n_companies={n} exceeds the {len(V.COMPANY_PREFIXES) * len(V.INDUSTRIES)} names available"
        )
    prefixes = list(V.COMPANY_PREFIXES)
    rng.shuffle(prefixes)
    edinet = rng.sample(range(1000, 10000), n)
    sec = rng.sample(range(130, 999), n)
    first = min(cfg.years + [cfg.heldout_year]) - 4
    last = max(cfg.years + [cfg.heldout_year]) + 1
    used: set[str] = set()
    companies = []
    for i in range(n):
        ind = V.INDUSTRIES[i % len(V.INDUSTRIES)] if i < len(V.INDUSTRIES) else pick(rng, V.INDUSTRIES)
        j = i
        while True:  # unique prefix while the pool lasts, then unique (prefix, industry)
            prefix, roma = prefixes[j % len(prefixes)]
            name = f"株式会社{prefix}{ind['suffix']}"
            if name not in used and (i >= len(prefixes) or j < len(prefixes)):
                break
            j += 1
            if j > i + len(prefixes) * len(V.INDUSTRIES):
                ind = pick(rng, V.INDUSTRIES)
        used.add(name)
        place = pick(rng, V.PLACES)
        other_places = [p["hq"] for p in V.PLACES if p["hq"] != place["hq"]]
        products = rng.sample(ind["products"], 2)
        risks = rng.sample(ind["risks"], 2)
        founded = rng.randint(1920, 1995)
        # Financial series: revenue in 百万円 with persistent growth, an operating margin drifting slowly.
        revenue = 10 ** rng.uniform(3.9, 5.6)
        trend = rng.uniform(-0.02, 0.07)
        margin = rng.uniform(0.03, 0.14)
        per_employee = rng.uniform(25, 70)
        fin = {}
        for y in range(first, last + 1):
            revenue *= 1 + trend + rng.uniform(-0.04, 0.04)
            margin = min(0.2, max(0.01, margin + rng.uniform(-0.012, 0.012)))
            employees = int(revenue / per_employee * rng.uniform(0.97, 1.03))
            assets = revenue * rng.uniform(0.9, 1.5)
            fin[str(y)] = {
                "revenue": int(revenue),
                "operating_income": int(revenue * margin),
                "employees": max(employees, 40),
                "total_assets": int(assets),
            }
        area = place["area"]
        phone = f"{area}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
        domain = f"{roma}-{ind['suffix_en']}.example.jp"
        companies.append(
            {
                "edinet_code": f"E0{edinet[i]:04d}",
                "sec_code": f"{sec[i] * 10 + rng.randint(0, 9)}",
                "name": name,
                "prefix": prefix,
                "name_en": f"{roma.upper()} {ind['suffix_en'].upper()} CO., LTD.",
                "industry": ind["key"],
                "business": ind["business"],
                "products": products,
                "hq": place["hq"],
                "address": place["hq"] + place["street"].format(n=rng.randint(1, 30), m=rng.randint(1, 20)),
                "founded": founded,
                "representative": _person(rng),
                "contact_person": _person(rng),
                "phone": phone,
                "email": f"{pick(rng, ['ir', 'info', 'kessan', 'soumu'])}@{domain}",
                "risks": risks,
                "motto": pick(rng, V.MOTTOS),
                "segments": list(ind["segments"]),
                "customers": ind["customers"],
                "subsidiaries": rng.randint(2, 24),
                "second_site": {"place": pick(rng, other_places), "facility": pick(rng, V.FACILITIES)},
                "overseas": pick(rng, V.OVERSEAS),
                "listed": rng.randint(max(founded + 5, 1950), 2005),
                "financials": fin,
                "style": {
                    "fw_alnum": pick(rng, [0.0, 0.0, 0.3, 0.8]),
                    "fw_punct": rng.random() < 0.3,
                    "hw_kana": pick(rng, [0.0, 0.0, 0.4]),
                    "jsonl_br": rng.random() < 0.3,
                },
            }
        )
    return companies


# --------------------------------------------------------------------------------------------------------------
# Filing content (canonical: clean Japanese; dirt is added when rendering)


def _period(c: dict, year: int) -> int:
    return year - c["founded"] + 1


def _cover(c: dict, year: int, filing_date: str, amended: bool) -> list[tuple[str, str]]:
    y, m, d = filing_date.split("-")
    return [
        ("提出書類", "訂正有価証券報告書" if amended else "有価証券報告書"),
        ("根拠条文", "金融商品取引法第24条の2第1項" if amended else "金融商品取引法第24条第1項"),
        ("提出先", "関東財務局長"),
        ("提出日", f"{int(y)}年{int(m)}月{int(d)}日"),
        ("事業年度", f"第{_period(c, year)}期（自　{year - 1}年4月1日　至　{year}年3月31日）"),
        ("会社名", c["name"]),
        ("英訳名", c["name_en"]),
        ("代表者の役職氏名", f"代表取締役社長　{c['representative']}"),
        ("本店の所在の場所", c["address"]),
        ("電話番号", c["phone"]),
        ("事務連絡者氏名", f"経理部長　{c['contact_person']}"),
        ("e-mail", c["email"]),
        ("縦覧に供する場所", "株式会社東京証券取引所（東京都中央区日本橋兜町2番1号）"),
    ]


def _table(c: dict, year: int) -> list[list[str]]:
    ys = list(range(year - 4, year + 1))
    fin = c["financials"]
    return [
        ["回次"] + [f"第{_period(c, y)}期" for y in ys],
        ["決算年月"] + [f"{y}年3月" for y in ys],
        ["売上高（百万円）"] + [jp_num(fin[str(y)]["revenue"]) for y in ys],
        ["営業利益（百万円）"] + [jp_num(fin[str(y)]["operating_income"]) for y in ys],
        ["総資産額（百万円）"] + [jp_num(fin[str(y)]["total_assets"]) for y in ys],
        ["従業員数（名）"] + [jp_num(fin[str(y)]["employees"]) for y in ys],
    ]


def filing_content(c: dict, year: int, filing_date: str, seed: int, amended: bool = False) -> list[dict]:
    """Canonical sections of one filing: ``[{"name", "kind": cover|table|text, "lines"}]`` in SECTIONS order."""
    sections = [
        {"name": SECTIONS[0], "kind": "cover", "lines": _cover(c, year, filing_date, amended)},
        {"name": SECTIONS[1], "kind": "table", "lines": _table(c, year)},
    ]
    facts = fact_sentences(c)
    for name, build in zip(NARRATIVE_SECTIONS, SECTION_WRITERS, strict=True):
        rng = sub_rng(seed, "filing", c["edinet_code"], year, name)
        sections.append({"name": name, "kind": "text", "lines": build(c, facts, year, rng)})
    return sections


# --------------------------------------------------------------------------------------------------------------
# Evaluation sets


def harness_questions(companies: list[dict], seed: int) -> dict:
    rng = sub_rng(seed, "harness")
    attrs = [
        ("business", "{n}の主な事業として正しいものはどれですか。"),
        ("hq", "{n}の本社所在地として正しいものはどれですか。"),
    ]
    values = {"business": [i["business"] for i in V.INDUSTRIES], "hq": [p["hq"] for p in V.PLACES]}
    data = []
    for c in companies:
        for attr, template in attrs:
            distractors = rng.sample([v for v in values[attr] if v != c[attr]], 3)
            answer = len(data) % 4
            choices = distractors[:answer] + [c[attr]] + distractors[answer:]
            data.append(
                {
                    "id": len(data),
                    "question": template.format(n=c["name"]),
                    "context": "",
                    "choices": [{"id": k, "text": t} for k, t in enumerate(choices)],
                    "answer": answer,
                    "comment": "",
                }
            )
    return {"data-type": "multiple-choice-question", "data-name": "demo_fin", "data": data}


def chat_questions(companies: list[dict]) -> list[dict]:
    out = []
    for c in companies:
        out.append(
            {
                "id": f"fin-{len(out):04d}",
                "question": f"{c['name']}の主な事業は何ですか？",
                "answers": [c["business"]],
                "attribute": "主な事業",
            }
        )
        out.append(
            {
                "id": f"fin-{len(out):04d}",
                "question": f"{c['name']}の本社所在地はどこですか？",
                "answers": [c["hq"]],
                "attribute": "本社所在地",
            }
        )
    return out


# --------------------------------------------------------------------------------------------------------------
# The world


class _DocIds:
    """EDINET-like document ids (S100 + 4 base-36 characters), increasing in issue order."""

    ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __init__(self, rng: random.Random):
        self.n = rng.randrange(36**3, 36**4 // 2)

    def next(self) -> str:
        self.n += 1
        k, s = self.n, ""
        for _ in range(4):
            k, r = divmod(k, 36)
            s = self.ALPHABET[r] + s
        return "S100" + s


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8", newline="\n")


def _filing_date(year: int, rng: random.Random) -> str:
    return f"{year}-06-{rng.randint(20, 30):02d}"


def generate_world(cfg: DemoConfig, out_dir: Path) -> dict:
    """Write the demo world under ``out_dir`` (deterministic in ``cfg``) and return its counts."""
    out_dir = Path(out_dir)
    companies = make_companies(cfg)
    by_code = {c["edinet_code"]: c for c in companies}
    ids = _DocIds(sub_rng(cfg.seed, "docids"))
    rng = sub_rng(cfg.seed, "dirt")

    # Originals: one filing per company per training year.
    originals = []
    for year in cfg.years:
        for c in companies:
            date = _filing_date(year, rng)
            originals.append(
                {
                    "doc_id": ids.next(),
                    "kind": "original",
                    "edinet_code": c["edinet_code"],
                    "company": c["name"],
                    "year": year,
                    "filing_date": date,
                    "title": "有価証券報告書",
                    "sections": filing_content(c, year, date, cfg.seed),
                    "jsonl_br": c["style"]["jsonl_br"],
                }
            )
    n_filings = len(originals)
    forms = [FORMS[i % 3] for i in range(n_filings)]
    rng.shuffle(forms)
    for doc, form in zip(originals, forms, strict=True):
        doc["form"] = form
        doc["sections"] = dirty_sections(doc["sections"], by_code[doc["edinet_code"]]["style"], rng)

    n_exact = round(cfg.exact_dup_rate * n_filings)
    n_near = round(cfg.near_dup_rate * n_filings)
    n_junk = round(cfg.junk_rate * n_filings)
    n_nonja = round(cfg.non_japanese_rate * n_filings)
    if n_exact + n_near > n_filings:
        raise ValueError("exact_dup_rate + near_dup_rate must not exceed 1")
    picked = rng.sample(range(n_filings), n_exact + n_near)

    docs = list(originals)
    exact_truth, near_truth = [], []
    for i in picked[:n_exact]:
        orig = originals[i]
        # A re-saved copy is met after its original by a sorted walk (html < jsonl < text, then doc_id).
        form = pick(rng, FORMS[FORMS.index(orig["form"]) :])
        dup = {**orig, "doc_id": ids.next(), "kind": "exact_dup", "form": form}
        docs.append(dup)
        exact_truth.append({"doc_id": dup["doc_id"], "original": orig["doc_id"], "form": form})
    for i in picked[n_exact:]:
        orig = originals[i]
        c = by_code[orig["edinet_code"]]
        date = f"{orig['year']}-{rng.randint(8, 11):02d}-{rng.randint(1, 28):02d}"
        canon = filing_content(c, orig["year"], date, cfg.seed, amended=True)
        jac = {}
        arng = sub_rng(cfg.seed, "amend", orig["doc_id"])
        for sec in canon:
            if sec["kind"] == "text":
                sec["lines"], jac[sec["name"]] = amend_section(sec["lines"], c, arng)
        dup = {
            **orig,
            "doc_id": ids.next(),
            "kind": "near_dup",
            "filing_date": date,
            "title": "訂正有価証券報告書",
            "form": pick(rng, FORMS),
            "sections": dirty_sections(canon, c["style"], rng),
        }
        docs.append(dup)
        near_truth.append(
            {"doc_id": dup["doc_id"], "original": orig["doc_id"], "form": dup["form"], "jaccard": jac}
        )

    junk_truth, nonja_truth = [], []
    kinds = ["soup", "table", "stub", "ng_spam"]
    for k in range(n_junk):
        kind = kinds[k % len(kinds)]
        d = {
            "doc_id": ids.next(),
            "kind": "junk",
            "junk_kind": kind,
            "form": pick(rng, FORMS),
            "text": junk_text(kind, rng),
        }
        docs.append(d)
        junk_truth.append({"doc_id": d["doc_id"], "kind": kind, "form": d["form"]})
    for _ in range(n_nonja):
        c = pick(rng, companies)
        d = {
            "doc_id": ids.next(),
            "kind": "non_japanese",
            "form": pick(rng, FORMS),
            "text": english_text(c, pick(rng, cfg.years), rng),
        }
        docs.append(d)
        nonja_truth.append({"doc_id": d["doc_id"], "form": d["form"]})

    # Write the raw forms.
    fdir = out_dir / "filings"
    jsonl_rows = write_raw_forms(docs, fdir, sub_rng(cfg.seed, "render"))
    _dump_jsonl(fdir / "jsonl" / "part-000.jsonl", jsonl_rows)

    # Held-out year: clean narrative sections only.
    heldout = []
    for c in companies:
        date = _filing_date(cfg.heldout_year, sub_rng(cfg.seed, "heldout-date", c["edinet_code"]))
        doc_id = ids.next()
        for sec in filing_content(c, cfg.heldout_year, date, cfg.seed):
            if sec["kind"] == "text":
                heldout.append(
                    {
                        "text": clean_view(section_text(sec), c),
                        "company": c["name"],
                        "section": sec["name"],
                        "doc_id": doc_id,
                    }
                )
    _dump_jsonl(out_dir / "eval" / "heldout.jsonl", heldout)

    # General corpus and instructions.
    towns = general.make_towns(cfg.n_towns, sub_rng(cfg.seed, "towns"), {p for p, _ in V.COMPANY_PREFIXES})
    corpus = general.general_corpus(cfg.n_general_docs, towns, sub_rng(cfg.seed, "general"))
    _dump_jsonl(out_dir / "general" / "corpus.jsonl", [{"text": t} for t in corpus])
    instr = general.instructions(cfg.n_instructions, towns, sub_rng(cfg.seed, "instructions"))
    _dump_jsonl(out_dir / "instructions" / "train.jsonl", instr)

    harness = harness_questions(companies, cfg.seed)
    _dump_json(out_dir / "eval" / "harness" / "demo_fin" / "data.json", harness)
    chat = chat_questions(companies)
    _dump_jsonl(out_dir / "eval" / "chat_finance.jsonl", chat)

    filings_index = [
        {
            "doc_id": d["doc_id"],
            "kind": d["kind"],
            "form": d["form"],
            "edinet_code": d.get("edinet_code"),
            "company": d.get("company"),
            "year": d.get("year"),
            "filing_date": d.get("filing_date"),
        }
        for d in docs
    ]
    counts = {
        "companies": len(companies),
        "filings": n_filings,
        "exact_duplicates": n_exact,
        "near_duplicates": n_near,
        "junk": n_junk,
        "non_japanese": n_nonja,
        "raw_documents": len(docs),
        "forms": {f: sum(1 for d in docs if d["form"] == f) for f in FORMS},
        "narrative_sections_per_filing": len(NARRATIVE_SECTIONS),
        "heldout_sections": len(heldout),
        "general_docs": len(corpus),
        "instructions": len(instr),
        "towns": len(towns),
        "harness_questions": len(harness["data"]),
        "chat_questions": len(chat),
    }
    truth = {
        "exact_duplicates": exact_truth,
        "near_duplicates": near_truth,
        "junk": junk_truth,
        "non_japanese": nonja_truth,
        "documents": filings_index,
        "counts": counts,
    }
    _dump_json(out_dir / "truth.json", truth)
    world = {
        "seed": cfg.seed,
        "years": list(cfg.years),
        "heldout_year": cfg.heldout_year,
        "companies": [
            {k: v for k, v in c.items() if k not in ("style",)} | {"facts": fact_sentences(c)}
            for c in companies
        ],
        "towns": towns,
    }
    _dump_json(out_dir / "world.json", world)
    return counts
