"""Amended filings: a few sentences or numbers of each narrative section changed, so that the cleaned section
stays a near duplicate of the original (character-shingle Jaccard within ``NEAR_JACCARD``)."""

from __future__ import annotations

import random
import re
import unicodedata

from finmerge.demo.common import pick
from finmerge.demo.companies import fact_sentences

# Amended filings are near duplicates: char-5-gram Jaccard of each cleaned narrative section in this band.
NEAR_JACCARD = (0.88, 0.95)
SHINGLE = 5
AMEND_SENTENCES = [
    "なお、前回提出した報告書の記載内容の一部を訂正しております。",
    "上記の数値は、監査法人による確認を経て訂正したものであります。",
    "当該箇所の記載に誤りがあったため、訂正を行いました。",
    "訂正箇所以外の記載内容に変更はありません。",
]


def clean_view(text: str, c: dict | None = None) -> str:
    """What the cleaning stage makes of canonical text: NFKC, PII masked (as ``finmerge/corpus/clean.py`` does)."""
    text = unicodedata.normalize("NFKC", text)
    if c is not None:
        text = text.replace(c["email"], "<EMAIL>").replace(c["phone"], "<PHONE>")
    return text


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    """Character n-grams of the text normalised as ``finmerge/corpus/dedup.py`` does (no whitespace next to Japanese)."""
    t = re.sub(r" (?=[^\x00-\x7f])|(?<=[^\x00-\x7f]) ", "", re.sub(r"\s+", " ", text).strip())
    if len(t) <= n:
        return {t}
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_NUM = re.compile(r"\d[\d,]*\d|\d")


def _free_numbers(line: str, keep: list[str]) -> list[re.Match]:
    """Numbers of ``line`` outside the fact sentences (an amendment never changes a stated fact)."""
    taken = [(m.start(), m.end()) for f in keep for m in re.finditer(re.escape(f), line)]
    return [m for m in _NUM.finditer(line) if not any(a <= m.start() < b for a, b in taken)]


def _op_number(lines: list[str], rng: random.Random, c: dict, keep: list[str]) -> list[str] | None:
    # never touch the contact line: a changed phone digit would vanish again under PII masking
    idx = [i for i, line in enumerate(lines) if _free_numbers(line, keep) and c["phone"] not in line]
    if not idx:
        return None
    i = pick(rng, idx)
    m = pick(rng, _free_numbers(lines[i], keep))
    digits = [k for k, ch in enumerate(m.group()) if ch.isdigit()]
    if len(digits) < 2:
        return None
    k = pick(rng, digits[1:])
    s = m.group()
    new = s[:k] + str((int(s[k]) + rng.randint(1, 8)) % 10) + s[k + 1 :]
    out = list(lines)
    out[i] = lines[i][: m.start()] + new + lines[i][m.end() :]
    return out


def _op_add(lines: list[str], rng: random.Random) -> list[str] | None:
    idx = [i for i, line in enumerate(lines) if line.endswith("。")]
    if not idx:
        return None
    i = pick(rng, idx)
    out = list(lines)
    out[i] = lines[i] + pick(rng, AMEND_SENTENCES)
    return out


def _op_drop(lines: list[str], rng: random.Random, keep: list[str]) -> list[str] | None:
    cands = []
    for i, line in enumerate(lines):
        sents = [s + "。" for s in line.split("。") if s]
        if len(sents) >= 2:
            cands += [(i, k) for k, s in enumerate(sents) if s not in keep]
    if not cands:
        return None
    i, k = pick(rng, cands)
    sents = [s + "。" for s in lines[i].split("。") if s]
    out = list(lines)
    out[i] = "".join(s for j, s in enumerate(sents) if j != k)
    return out


def _op_reword(lines: list[str], rng: random.Random) -> list[str] | None:
    pairs = [
        ("しております", "しています"),
        ("であります", "です"),
        ("となりました", "になりました"),
        ("まいります", "いきます"),
    ]
    cands = [(i, a, b) for i, line in enumerate(lines) for a, b in pairs if a in line]
    if not cands:
        return None
    i, a, b = pick(rng, cands)
    out = list(lines)
    out[i] = lines[i].replace(a, b, 1)
    return out


def amend_section(lines: list[str], c: dict, rng: random.Random) -> tuple[list[str], float]:
    """A few sentences / numbers changed until the cleaned text's Jaccard falls into NEAR_JACCARD."""
    lo, hi = NEAR_JACCARD
    base = shingles(clean_view("\n".join(lines), c))
    keep = list(fact_sentences(c).values())
    cur, j = list(lines), 1.0
    for _ in range(60):
        if j <= hi:
            break
        op = pick(rng, ["number", "number", "add", "drop", "reword"])
        if op == "number":
            cand = _op_number(cur, rng, c, keep)
        elif op == "add":
            cand = _op_add(cur, rng)
        elif op == "drop":
            cand = _op_drop(cur, rng, keep)
        else:
            cand = _op_reword(cur, rng)
        if cand is None or cand == cur:
            continue
        jc = jaccard(base, shingles(clean_view("\n".join(cand), c)))
        if jc >= lo:
            cur, j = cand, jc
    return cur, round(j, 4)
