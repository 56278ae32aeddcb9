"""Fictional listed companies and the canonical content of their 有価証券報告書.

Two disjoint sets are drawn from one shuffled pool of name prefixes: the *evaluated* companies (their filings
are the CPT corpus, the finance evaluation asks about them) and the *background* companies (their filings are
part of the base model's pretraining corpus, so the base already reads the filing register; never evaluated).
The evaluated set does not depend on how many background companies there are.
"""

from __future__ import annotations

import random

from finmerge.config import DemoConfig
from finmerge.demo import vocab as V
from finmerge.demo.common import fact_sentences_of, jp_num, pick, sub_rng
from finmerge.demo.narrative import SECTION_WRITERS

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


def _person(rng: random.Random) -> str:
    return f"{pick(rng, V.SURNAMES)}　{pick(rng, V.GIVEN_NAMES)}"


def _prefix_pools(seed: int, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(evaluated, background) name prefixes. Evaluated companies get composed prefixes of common kanji, each
    kanji a token the base model has learned from ordinary text (a rare kanji would reach it as raw bytes
    it can hardly tell apart); the background companies get the hand-picked prefixes, then what is left."""
    rng = sub_rng(seed, "company-prefixes")
    named = list(V.COMPANY_PREFIXES[: V.N_NAMED_PREFIXES])
    composed = list(V.COMPANY_PREFIXES[V.N_NAMED_PREFIXES :])
    rng.shuffle(named)
    rng.shuffle(composed)
    if n > len(composed):  # more evaluated companies than composed prefixes: take named ones too
        composed, named = composed + named[: n - len(composed)], named[n - len(composed) :]
    return composed[:n], named + composed[n:]


def _financials(rng: random.Random, first: int, last: int) -> dict[str, dict]:
    # Revenue in 百万円 with persistent growth, an operating margin drifting slowly.
    revenue = 10 ** rng.uniform(3.9, 5.6)
    trend = rng.uniform(-0.02, 0.07)
    margin = rng.uniform(0.03, 0.14)
    per_employee = rng.uniform(25, 70)
    fin = {}
    for y in range(first, last + 1):
        revenue *= 1 + trend + rng.uniform(-0.04, 0.04)
        margin = min(0.2, max(0.01, margin + rng.uniform(-0.012, 0.012)))
        employees = int(revenue / per_employee * rng.uniform(0.97, 1.03))
        fin[str(y)] = {
            "revenue": int(revenue),
            "operating_income": int(revenue * margin),
            "employees": max(employees, 40),
            "total_assets": int(revenue * rng.uniform(0.9, 1.5)),
        }
    return fin


def company_record(cfg: DemoConfig, prefix: str, roma: str, ind: dict, code: int, sec: int, rng) -> dict:
    place = pick(rng, V.PLACES)
    other_places = [p["hq"] for p in V.PLACES if p["hq"] != place["hq"]]
    founded = rng.randint(1920, 1995)
    first = min(cfg.years + [cfg.heldout_year]) - 4
    last = max(cfg.years + [cfg.heldout_year]) + 1
    domain = f"{roma}-{ind['suffix_en']}.example.jp"
    return {
        "edinet_code": f"E0{code:04d}",
        "sec_code": f"{sec * 10 + rng.randint(0, 9)}",
        "name": f"株式会社{prefix}{ind['suffix']}",
        "prefix": prefix,
        "name_en": f"{roma.upper()} {ind['suffix_en'].upper()} CO., LTD.",
        "industry": ind["key"],
        "business": ind["business"],
        "products": rng.sample(ind["products"], 2),
        "hq": place["hq"],
        "address": place["hq"] + place["street"].format(n=rng.randint(1, 30), m=rng.randint(1, 20)),
        "founded": founded,
        "representative": _person(rng),
        "contact_person": _person(rng),
        "phone": f"{place['area']}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
        "email": f"{pick(rng, ['ir', 'info', 'kessan', 'soumu'])}@{domain}",
        "risks": rng.sample(ind["risks"], 2),
        "motto": pick(rng, V.MOTTOS),
        "segments": list(ind["segments"]),
        "customers": ind["customers"],
        "subsidiaries": rng.randint(2, 24),
        "second_site": {"place": pick(rng, other_places), "facility": pick(rng, V.FACILITIES)},
        "overseas": pick(rng, V.OVERSEAS),
        "listed": rng.randint(max(founded + 5, 1950), 2005),
        "financials": _financials(rng, first, last),
        "style": {
            "fw_alnum": pick(rng, [0.0, 0.0, 0.3, 0.8]),
            "fw_punct": rng.random() < 0.3,
            "hw_kana": pick(rng, [0.0, 0.0, 0.4]),
            "jsonl_br": rng.random() < 0.3,
        },
    }


def _draw(cfg: DemoConfig, prefixes: list[tuple[str, str]], codes: list[int], secs: list[int], key: str):
    rng = sub_rng(cfg.seed, key)
    out = []
    for i, (prefix, roma) in enumerate(prefixes):
        ind = V.INDUSTRIES[i % len(V.INDUSTRIES)]
        out.append(company_record(cfg, prefix, roma, ind, codes[i], secs[i], rng))
    return out


def _codes(seed: int, n: int) -> tuple[list[int], list[int]]:
    rng = sub_rng(seed, "company-codes")
    return rng.sample(range(1000, 10000), n), rng.sample(range(130, 999), n)


def make_companies(cfg: DemoConfig) -> list[dict]:
    """The evaluated companies (``cfg.n_companies``): their filings are the corpus, the evaluation asks about them."""
    return make_all_companies(cfg, background=0)[0]


def make_all_companies(cfg: DemoConfig, background: int | None = None) -> tuple[list[dict], list[dict]]:
    """(evaluated, background) companies: disjoint name prefixes, EDINET codes and securities codes."""
    n = cfg.n_companies
    nb = cfg.n_background_companies if background is None else background
    if n + nb > len(V.COMPANY_PREFIXES):
        raise ValueError(
            f"n_companies + n_background_companies = {n + nb} exceeds the {len(V.COMPANY_PREFIXES)} names available"
        )
    ev_pool, bg_pool = _prefix_pools(cfg.seed, n)
    codes, secs = _codes(cfg.seed, n + nb)
    evaluated = _draw(cfg, ev_pool, codes[:n], secs[:n], "companies")
    background_set = _draw(cfg, bg_pool[:nb], codes[n:], secs[n:], "background-companies")
    return evaluated, background_set


def rep_name(c: dict) -> str:
    """The representative's name as the fact sentences state it (no space: one token run to recall)."""
    return c["representative"].replace("　", "")


def fact_values(c: dict) -> dict[str, str]:
    """Attribute → value of every fact stated in the fixed pattern in the filings."""
    p, r = c["products"], c["risks"]
    return {
        "主な事業": c["business"],
        "本社所在地": c["hq"],
        "主な製品": f"{p[0]}と{p[1]}",
        "主な事業等のリスク": f"{r[0]}と{r[1]}",
        "設立年": f"{c['founded']}年",
        "代表者": rep_name(c),
        "海外拠点": c["overseas"],
        "経営理念": f"「{c['motto']}」",
        "上場年": f"{c['listed']}年",
    }


def fact_sentences(c: dict) -> dict[str, str]:
    """Attribute → the fixed fact sentence ``<会社名>の<属性>は<値>です。`` used in the filings."""
    return fact_sentences_of(c["name"], fact_values(c))


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


def filing_content(
    c: dict, year: int, filing_date: str, seed: int, amended: bool = False, recaps: int = 2
) -> list[dict]:
    """Canonical sections of one filing: ``[{"name", "kind": cover|table|text, "lines"}]`` in SECTIONS order;
    every fact is restated ``recaps`` times in the recap lines closing the narrative sections."""
    sections = [
        {"name": SECTIONS[0], "kind": "cover", "lines": _cover(c, year, filing_date, amended)},
        {"name": SECTIONS[1], "kind": "table", "lines": _table(c, year)},
    ]
    facts = fact_sentences(c)
    order = list(facts.values())
    sub_rng(seed, "recap", c["edinet_code"], year).shuffle(order)
    per = -(-recaps * len(order) // len(NARRATIVE_SECTIONS))
    for k, (name, build) in enumerate(zip(NARRATIVE_SECTIONS, SECTION_WRITERS, strict=True)):
        rng = sub_rng(seed, "filing", c["edinet_code"], year, name)
        lines = build(c, facts, year, rng)
        recap = [order[(k * per + j) % len(order)] for j in range(per)]
        # a section closes on the company's key facts; the mark keeps the line unlike any other line (the
        # clean stage drops a line repeated within a section, which would break the near-duplicate band)
        lines.append("（参考）" + "".join(dict.fromkeys(recap)))
        sections.append({"name": name, "kind": "text", "lines": lines})
    return sections
