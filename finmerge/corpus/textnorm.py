"""Text modification before the quality filters: markup, punctuation, invisible characters, NFKC, and the
removal of page numbers, boilerplate, repeated page headers/footers and table rows.

Steps 1–5 of ``finmerge/corpus/textclean.py``'s docstring, which gives the rules in full.
"""

from __future__ import annotations

import bisect
import html
import itertools
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

import ahocorasick

# Knobs not in CleanConfig: they describe filing layout rather than corpus quality.
# Knobs not in CleanConfig: they describe filing layout rather than corpus quality.
REPEAT_MIN = 3  # a short line seen this often in one document is a page header / footer
REPEAT_MAX_LEN = 80
TABLE_MIN_CELLS = 3
TABLE_NUMERIC_SHARE = 0.5

# Site furniture: a line holding one of these is removed, as is a line starting with "(C)".
BOILERPLATE_WORDS = [
    "このページの先頭へ",
    "ページの先頭へ",
    "ページトップへ",
    "ページの上部へ",
    "EDINET閲覧サイト",
    "書類一覧",
    "印刷用ページ",
    "目次へ戻る",
    "Copyright",
    "All Rights Reserved",
    "©",
]
BOILERPLATE = re.compile("|".join(map(re.escape, BOILERPLATE_WORDS)), re.I)
_COPYRIGHT_LINE = re.compile(r"^\([Cc]\)", re.M)
PAGE_NUMBER = re.compile(
    r"^\s*(?:[-‐―—–ー~]\s*\d{1,4}\s*[-‐―—–ー~]|\d{1,4}\s*/\s*\d{1,4}|[pP]\.\s*\d{1,4}|\d{1,4})\s*$"
)

_HTML_TAGS = (
    "a|abbr|b|big|blockquote|body|br|caption|center|code|dd|div|dl|dt|em|font|footer|h[1-6]|head|header|hr|html|i|"
    "img|li|link|main|meta|nav|ol|p|pre|s|section|small|span|strong|sub|sup|table|tbody|td|tfoot|th|thead|title|"
    "tr|tt|u|ul|ix:[a-z]+"
)
_SCRIPT = re.compile(r"<(script|style|noscript)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_BREAK_TAG = re.compile(r"<\s*(?:br|/p|/div|/h[1-6]|/tr|/li|/table|hr)\b[^>]*>", re.I)
_CELL_TAG = re.compile(r"<\s*(?:td|th)\b[^>]*>", re.I)
_ANY_TAG = re.compile(rf"</?\s*(?:{_HTML_TAGS})\b[^<>]*>", re.I)
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]{2,8});")
_ALNUM_CHARS = frozenset(  # ASCII letters and digits, half- and full-width (this runs before NFKC)
    string.digits
    + string.ascii_letters
    + "".join(chr(ord(c) + 0xFEE0) for c in string.digits + string.ascii_letters)
)
# Invisible characters; the line breaks of str.splitlines (\r, \x0b, \x0c, \x1c-\x1e) are left to it.
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f\u200b-\u200d\u2060\ufeff\ud800-\udfff]")


def strip_markup(text: str) -> str:
    if "<" in text:
        text = _SCRIPT.sub("", text)
        text = _BREAK_TAG.sub("\n", text)
        text = _CELL_TAG.sub("\t", text)
        text = _ANY_TAG.sub("", text)
    if "&" in text and _ENTITY.search(text):
        text = html.unescape(text)
    return text


def fix_punctuation(text: str) -> str:
    """``，．`` → ``、。`` unless both neighbours are ASCII letters/digits (numbers, addresses)."""
    for mark, japanese in (("，", "、"), ("．", "。")):
        if mark not in text:
            continue
        parts = text.split(mark)
        out = [parts[0]]
        for before, after in itertools.pairwise(parts):  # an empty part: another mark (or an end) is adjacent
            numeric = before[-1:] in _ALNUM_CHARS and after[:1] in _ALNUM_CHARS
            out.append(mark if numeric else japanese)
            out.append(after)
        text = "".join(out)
    return text


def normalize_lines(text: str) -> list[str]:
    """Markup stripped, punctuation fixed, NFKC per line (lines are independent under NFKC, and a line that is
    already normal passes the quick check, unlike a whole text with one full-width digit), lines stripped."""
    text = _INVISIBLE.sub("", fix_punctuation(strip_markup(text)))
    return [unicodedata.normalize("NFKC", line).strip() for line in text.splitlines()]


def normalize(text: str) -> str:
    return "\n".join(normalize_lines(text)).strip("\n")


# Characters that make a line look like a row of figures.
_NUMBER_CHARS = "0123456789,.%+-−()△▲▽※/"
_DELETE_NUMBER = str.maketrans("", "", _NUMBER_CHARS)
_DELETE_CELL = str.maketrans("", "", _NUMBER_CHARS + "年月期")  # 第89期 / 2023年3月 count as number cells
_TABLE_SPLIT = re.compile(r"\t|\s{2,}|\|")
_PAGE_NUMBER_FIRST = frozenset("-‐―—–ー~pP0123456789")


def _numeric_share(s: str, table: dict) -> float:
    """Share of the non-space characters of ``s`` that ``table`` deletes (C-speed counting via translate)."""
    solid = s.replace(" ", "").replace("\t", "")
    return (len(solid) - len(solid.translate(table))) / len(solid) if solid else 0.0


def is_table_line(line: str) -> bool:
    s = line.strip()
    if not s or s[-1] == "。":
        return False
    if len(s.translate(_DELETE_NUMBER)) == len(s):  # not one figure in it
        return False
    if "\t" in s or "  " in s or "|" in s:
        cells = [c for c in _TABLE_SPLIT.split(s) if c.strip()]
        if len(cells) >= TABLE_MIN_CELLS:
            numeric = sum(1 for c in cells if _numeric_share(c, _DELETE_CELL) >= 0.5)
            if numeric * 2 >= len(cells):
                return True
    return _numeric_share(s, _DELETE_NUMBER) >= TABLE_NUMERIC_SHARE


def repeated_lines(texts: Iterable[list[str]]) -> Counter:
    """Occurrences of each short line over all sections of a document (page headers / footers candidates)."""
    counts: Counter = Counter()
    for lines in texts:
        counts.update([s for s in lines if s and len(s) <= REPEAT_MAX_LEN])
    return counts


def word_automaton(words: Iterable[str]) -> ahocorasick.Automaton | None:
    automaton = ahocorasick.Automaton()
    for w in dict.fromkeys(words):
        if w:
            automaton.add_word(w, len(w))
    if len(automaton) == 0:
        return None
    automaton.make_automaton()
    return automaton


_BOILERPLATE_AC = word_automaton(w.lower() for w in BOILERPLATE_WORDS)


def boilerplate_lines(lines: list[str]) -> set[int]:
    """Indices of the lines holding boilerplate: one Aho-Corasick pass over the lower-cased text (several
    times faster than the equivalent case-insensitive regex alternation, which has no literal prefix)."""
    joined = "\n".join(lines)
    folded = joined.lower()
    if len(folded) == len(joined):
        hits = [end + 1 - n for end, n in _BOILERPLATE_AC.iter(folded)]
    else:  # a character whose lower case is longer (İ) would shift the positions
        hits = [m.start() for m in BOILERPLATE.finditer(joined)]
    hits += [m.start() for m in _COPYRIGHT_LINE.finditer(joined)] if "(" in joined else []
    if not hits:
        return set()
    starts = list(itertools.accumulate((len(s) + 1 for s in lines), initial=0))
    return {bisect.bisect_right(starts, h) - 1 for h in hits}


def remove_lines(lines: list[str], repeated: Counter) -> str:
    """Drop page numbers, boilerplate, repeated headers/footers and table rows from stripped ``lines``; a blank
    line survives only between two kept lines (so a removed page break leaves no gap)."""
    boilerplate = boilerplate_lines(lines)
    kept: list[str] = []
    pending_blank = False  # a blank line met right after a kept line
    removed_since = False  # a line removed since the last kept line
    for i, s in enumerate(lines):
        if not s:
            pending_blank = pending_blank or (bool(kept) and not removed_since)
            continue
        if len(s) <= REPEAT_MAX_LEN and (
            repeated[s] >= REPEAT_MIN
            or i in boilerplate
            or (s[0] in _PAGE_NUMBER_FIRST and PAGE_NUMBER.match(s))
        ):
            removed_since = True
            continue
        if s[-1] != "。" and is_table_line(s):
            removed_since = True
            continue
        if pending_blank and not removed_since:
            kept.append("")
        kept.append(s)
        pending_blank = removed_since = False
    return "\n".join(kept)
