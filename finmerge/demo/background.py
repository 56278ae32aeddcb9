"""Background finance text for the base model: filings of companies the evaluation never asks about.

A real base LLM has read plenty of financial Japanese before anyone continually pretrains it on a finance
corpus; the demo's base reads the filings of the *background* companies (disjoint names, same generator),
in the cleaned form the corpus stages produce, so CPT on the evaluated companies adds company knowledge
rather than a new register.
"""

from __future__ import annotations

import random

from finmerge.demo.amend import clean_view
from finmerge.demo.chat import ANSWER_PREFIX
from finmerge.demo.common import pick, sub_rng
from finmerge.demo.companies import fact_values, filing_content
from finmerge.demo.render import section_text

# Questions investors ask about a company (an IR FAQ page), and the quiz wording of finance exam workbooks.
FAQ_QUESTIONS = {
    "本社所在地": ["{n}の本社所在地はどこですか？", "{n}の本社所在地を教えてください。"],
    "代表者": ["{n}の代表者は誰ですか？", "{n}の代表者を教えてください。"],
    "設立年": ["{n}の設立年はいつですか？", "{n}の設立年を教えてください。"],
    "上場年": ["{n}の上場年はいつですか？", "{n}の上場年を教えてください。"],
    "海外拠点": ["{n}の海外拠点はどこですか？", "{n}の海外拠点を教えてください。"],
    "主な製品": ["{n}の主な製品は何ですか？", "{n}の主な製品を教えてください。"],
    "主な事業": ["{n}の主な事業は何ですか？", "{n}の主な事業を教えてください。"],
    "経営理念": ["{n}の経営理念は何ですか？", "{n}の経営理念を教えてください。"],
    "主な事業等のリスク": [
        "{n}の主な事業等のリスクは何ですか？",
        "{n}の主な事業等のリスクを教えてください。",
    ],
}


def faq_question(c: dict, attr: str, rng: random.Random) -> str:
    """One of the ways people ask ``attr`` of company ``c``."""
    return pick(rng, FAQ_QUESTIONS[attr]).format(n=c["name"])


def background_docs(companies: list[dict], years: list[int], seed: int) -> list[dict]:
    """Clean narrative sections of each background company's filings: ``{text, company, section, year}``."""
    return [
        {**doc, "year": year}
        for c in companies
        for year in years
        for doc in clean_text_sections(c, year, f"{year}-06-25", seed)
    ]


def clean_text_sections(company: dict, year: int, date: str, seed: int, recaps: int = 2) -> list[dict]:
    """The text sections of one filing in their cleaned form: ``{"text", "company", "section"}``."""
    return [
        {"text": clean_view(section_text(sec), company), "company": company["name"], "section": sec["name"]}
        for sec in filing_content(company, year, date, seed, recaps=recaps)
        if sec["kind"] == "text"
    ]


def faq_doc(c: dict, rng: random.Random) -> str:
    """An IR よくある質問 page of a background company: questions answered with the fact sentence."""
    values = fact_values(c)
    lines = [pick(rng, [f"{c['name']} 株主・投資家の皆様からのよくある質問", f"{c['name']}のIR情報 Q&A"])]
    for attr in rng.sample(list(FAQ_QUESTIONS), rng.randint(4, 6)):
        lines += [f"Q. {faq_question(c, attr, rng)}", f"A. {c['name']}の{attr}は{values[attr]}です。"]
    return "\n".join(lines)


def quiz_doc(c: dict, others: list[dict], rng: random.Random) -> str:
    """A page of an exam workbook: multiple-choice questions on a background company, with the answers.
    Distractors are other background companies' values of the same attribute."""
    lines = [
        pick(rng, ["企業研究 確認問題", "会社四季報で学ぶ 企業クイズ", "就職活動のための企業研究ドリル"])
    ]
    values = fact_values(c)
    for attr in rng.sample(["本社所在地", "設立年", "代表者", "海外拠点", "経営理念", "上場年"], 3):
        pool = sorted({fact_values(o)[attr] for o in others} - {values[attr]})
        choices = rng.sample(pool, 3) + [values[attr]]
        rng.shuffle(choices)
        shown = "".join(f"- {x}\n" for x in choices)
        lines.append(
            f"質問:{c['name']}の{attr}として正しいものはどれですか。\n選択肢:\n{shown}回答:{values[attr]}"
        )
    return "\n\n".join(lines)


def background_extras(companies: list[dict], seed: int, faq: bool, quiz: bool) -> list[dict]:
    """FAQ pages and quiz pages about the background companies (never about an evaluated one)."""
    rng = sub_rng(seed, "background-extras")
    docs = []
    for c in companies:
        if faq:
            docs.append({"text": faq_doc(c, rng), "company": c["name"], "section": "FAQ", "year": None})
        if quiz:
            docs.append(
                {"text": quiz_doc(c, companies, rng), "company": c["name"], "section": "quiz", "year": None}
            )
    return docs


def company_instructions(companies: list[dict], n: int, rng: random.Random) -> list[dict]:
    """Instruction pairs about background companies (business questions, as general instruction sets have),
    answered with the fact sentence the base read in their filings."""
    out = []
    for _ in range(n):
        c = pick(rng, companies)
        attr = pick(rng, list(FAQ_QUESTIONS))
        q = faq_question(c, attr, rng)
        a = f"{ANSWER_PREFIX}{c['name']}の{attr}は{fact_values(c)[attr]}です。"
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out
