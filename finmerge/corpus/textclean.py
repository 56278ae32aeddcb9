"""Cleaning of Japanese financial text: normalisation, line removal, PII masking, quality measures and filters.

Pure text logic with no Prefect import: ``clean_shard`` runs in spawned worker processes (``finmerge.core.parallel``),
which must start fast. ``finmerge/corpus/clean.py`` does the I/O, sharding and reporting.

Text modification, in this order, for every record:

1. **Markup left in the text** (e.g. JSONL exported from HTML): ``<script>``/``<style>`` blocks removed, ``<br>``
   and block tags become line breaks, cells become tabs, other HTML tags are removed, entities decoded. Only
   known HTML tag names are touched, so placeholders such as ``<EMAIL>`` survive a second cleaning.
2. **Punctuation**: full-width ``，．`` used as Japanese punctuation become ``、。`` (Swallow); between two
   ASCII letters/digits they are left alone, so ``１，２３４`` and ``ir＠x．example．jp`` stay numbers / addresses.
3. **Invisible characters** are deleted (C0 controls other than tab and line breaks, zero-width spaces/joiners,
   BOMs, lone surrogates, which would make the JSON output unwritable); ``\r\n``, ``\r`` and form feeds become
   line breaks; then **NFKC** line by line (full-width ASCII → half-width, half-width kana → full-width,
   ideographic space → space) and every line is stripped.
4. **Line removal**: page-number lines (``- 12 -``), site boilerplate (``このページの先頭へ``, ``Copyright`` …),
   page headers/footers (a line of at most ``REPEAT_MAX_LEN`` characters met ``REPEAT_MIN`` times or more in the
   same document, i.e. across all sections sharing a ``doc_id``), and table rows. A blank line survives only
   between two kept lines, so a removed page break leaves no gap.
5. **Table policy**: a line is a table row, and dropped, when it does not end with ``。`` and either at least
   ``TABLE_MIN_CELLS`` of its tab / double-space / ``|`` separated cells are mostly digits (at least half of
   them), or digits and number punctuation make up at least ``TABLE_NUMERIC_SHARE`` of it. Numbers inside
   sentences are kept: finance text is number-heavy, and a sentence such as ``売上高は12,345百万円となりました。``
   is exactly what the corpus is for. Tables as text teach the model little and inflate digit statistics;
   the figures they hold are in the XBRL facts, not lost.
6. **PII** (``mask_pii``): e-mail addresses → ``<EMAIL>``, Japanese phone numbers (10–12 digits in a phone
   layout such as ``03-1234-5678``, ``(06)1234-5678``, ``+81-90-1234-5678``) → ``<PHONE>``. Amounts (``12,345百万円``),
   dates (``2023-06-28``) and article numbers never match: a phone number needs a leading ``0``/``+81`` group
   followed by separators and 10–12 digits in all.
7. **Personal names** (``mask_names``, off by default): a name right after an officer's title and a space, as
   in 役員の状況 / 表紙 lines (``代表取締役社長 山田 太郎`` → ``代表取締役社長 <NAME>``). Caught: a kanji surname
   of 1–4 characters, optionally a space and a kanji (or, after a space, kana) given name, ending at a space,
   punctuation, the end of the line, ``氏``/``様`` or a particle. Not caught: names without a preceding title
   or without the space after it (``社長山田太郎は``), names in romaji, names of major shareholders or auditors
   in running text. A role word after the title (``代表取締役 社長執行役員``) is not a name.

Quality filters run in ``FILTERS`` order; a record is dropped by the first filter it fails. Character ratios are
over non-whitespace characters of the cleaned text; n-gram shares over the cleaned text with whitespace removed.
Each measure is computed only when its filter is reached.
"""

from __future__ import annotations

import bisect
import hashlib
import html
import itertools
import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import ahocorasick
import numpy as np

from finmerge.config import CleanConfig

# Knobs not in CleanConfig: they describe filing layout rather than corpus quality.
REPEAT_MIN = 3  # a short line seen this often in one document is a page header / footer
REPEAT_MAX_LEN = 80
TABLE_MIN_CELLS = 3
TABLE_NUMERIC_SHARE = 0.5
HEAD_CHARS = 80
MAX_EXAMPLES = 3


# ----------------------------------------------------------------------------------------------------------------
# Text modification

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

EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# Every branch starts with + ( or 0, so the regex engine scans fast; "not preceded by a digit or -" is checked
# in _phone (a leading lookbehind would make the engine try every position).
_AREA = r"(?:\(0\d{1,4}\)[ \t]?|0\d{1,4}[- \t])"
_AREA_81 = r"(?:\(0?\d{1,4}\)[ \t]?|0?\d{1,4}[- \t])"  # after +81 the trunk 0 is usually dropped
PHONE = re.compile(rf"(?:\+81[- \t]?{_AREA_81}|{_AREA})\d{{1,4}}[- \t]\d{{3,4}}(?![\d\-])")
_KANJI = "一-龥々〆ヵヶ"
_KANA = "ぁ-ゖァ-ヺー"
_TITLE = (
    r"(?:代表)?取締役(?:社長|会長|副社長|専務|常務)?(?:執行役員)?|社外取締役|(?:常勤|社外)?監査役|(?:代表)?執行役(?:員)?"
    r"(?:社長|副社長|専務|常務)?|(?:取締役)?(?:会長|社長|副社長)|[一-龥]{1,4}部長|代表者"
)
_NAME_END = rf"(?=$|[\s、。,.()「」『』【】・/:]|[氏様]|[はがのをにとも](?![{_KANA}]))"
_NAME = rf"[{_KANJI}]{{1,4}}(?:[ ]?[{_KANJI}]{{1,4}}|[ ][{_KANA}]{{2,6}})?"  # surname, optional given name
NAME_AFTER_TITLE = re.compile(
    rf"(?P<title>(?:{_TITLE})(?:[ \t]?(?:{_TITLE}))*)(?P<sep>[ \t]+)(?P<name>{_NAME}){_NAME_END}", re.M
)
# Words that follow a title but are roles or common nouns, not names (``代表取締役 社長執行役員``, ``取締役 全員``).
_NOT_NAMES = re.compile(
    r"^(?:社長|会長|副社長|専務|常務|執行役員|執行役|取締役|監査役|兼|兼務|就任|退任|全員|各位|一同|候補|選任|解任|会|等)"
)


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


def _automaton(words: Iterable[str]) -> ahocorasick.Automaton | None:
    automaton = ahocorasick.Automaton()
    for w in dict.fromkeys(words):
        if w:
            automaton.add_word(w, len(w))
    if len(automaton) == 0:
        return None
    automaton.make_automaton()
    return automaton


_BOILERPLATE_AC = _automaton(w.lower() for w in BOILERPLATE_WORDS)


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


def _phone(m: re.Match) -> str:
    found = m.group()
    if m.start() and m.string[m.start() - 1] in "0123456789-":  # inside a longer number: look further in
        return found[0] + PHONE.sub(_phone, found[1:])
    digits = sum(ch.isdigit() for ch in found)
    return "<PHONE>" if 10 <= digits <= 12 else found


def mask_pii(text: str) -> tuple[str, int, int]:
    """(text, e-mails masked, phone numbers masked)."""
    n_mail = 0
    if "@" in text:
        text, n_mail = EMAIL.subn("<EMAIL>", text)
    before = text.count("<PHONE>")
    text = PHONE.sub(_phone, text)
    return text, n_mail, text.count("<PHONE>") - before


def _name(m: re.Match) -> str:
    if _NOT_NAMES.match(m["name"]):
        return m.group()
    return f"{m['title']}{m['sep']}<NAME>"


def mask_names(text: str) -> tuple[str, int]:
    before = text.count("<NAME>")
    text = NAME_AFTER_TITLE.sub(_name, text)
    return text, text.count("<NAME>") - before


# ----------------------------------------------------------------------------------------------------------------
# Character classes: one lookup table, so every ratio comes from a single np.bincount.

OTHER, SPACE, HIRAGANA, KATAKANA, KANJI, DIGIT, SYMBOL = range(7)
N_CLASSES = 7
# Punctuation and signs that belong in ordinary Japanese (and financial) prose: not "symbols".
_PROSE_PUNCT = set("、。・「」『』()[]【】〔〕〈〉《》:;%-/~〜…‥,.'\"’“”<>#&=+")
_ASTRAL = 0x10000  # code points above the BMP share one table slot and are fixed up by range


def _classify(ch: str) -> int:
    cp = ord(ch)
    if ch.isspace():
        return SPACE
    if 0x3041 <= cp <= 0x309F:
        return HIRAGANA
    if (0x30A0 <= cp <= 0x30FF and ch != "・") or 0x31F0 <= cp <= 0x31FF:
        return KATAKANA
    if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or ch in "々〆〇":
        return KANJI
    if ch.isdigit():
        return DIGIT
    if ch not in _PROSE_PUNCT and unicodedata.category(ch)[0] in "SP":
        return SYMBOL
    return OTHER


CHAR_CLASS = np.array([_classify(chr(cp)) for cp in range(_ASTRAL)] + [OTHER], dtype=np.uint8)


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def char_classes(cp: np.ndarray) -> np.ndarray:
    cls = CHAR_CLASS[np.minimum(cp, _ASTRAL)]
    if cp.size and cp.max() >= _ASTRAL:  # rare: CJK extension kanji (人名用 variants) and emoji
        cls = cls.copy()
        cls[(cp >= 0x20000) & (cp <= 0x3FFFF)] = KANJI
        cls[(cp >= 0x1F000) & (cp <= 0x1FAFF)] = SYMBOL
    return cls


# ----------------------------------------------------------------------------------------------------------------
# Character n-gram repetition (hashed n-grams, numpy; no per-character Python loop)

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier: n-gram hashes wrap around mod 2**64


def ngram_hashes(cp: np.ndarray, n: int, prev: np.ndarray | None = None) -> np.ndarray:
    """Hash of every character n-gram of ``cp``; ``prev`` (the (n-1)-gram hashes) makes it one step."""
    c = cp.astype(np.uint64)
    if len(c) < n:
        return np.zeros(0, dtype=np.uint64)
    if prev is None:
        h = c[: len(c) - n + 1].copy()
        for k in range(1, n):
            h *= _HASH_MUL
            h += c[k : len(c) - n + 1 + k]
        return h
    return prev[:-1] * _HASH_MUL + c[n - 1 :]


def _covered(starts: np.ndarray, n: int, length: int) -> int:
    """Characters covered by n-grams starting at the ``starts`` positions (sorted, distinct)."""
    if starts.size == 0:
        return 0
    # Sorted starts: each occurrence adds the characters up to the next start, at most n.
    return int(np.minimum(np.diff(starts), n).sum()) + min(n, length - int(starts[-1]))


def top_ngram_share(cp: np.ndarray, n: int) -> tuple[float, int]:
    """(share of characters covered by the occurrences of the most frequent character n-gram, its count).

    Gopher's measure, except that an n-gram met only once is no repetition: share 0 (else any text shorter
    than n / limit characters would fail).
    """
    if len(cp) < n:
        return 0.0, 0
    h = ngram_hashes(cp, n)
    values, counts = np.unique(h, return_counts=True)
    best = int(np.argmax(counts))
    count = int(counts[best])
    if count < 2:
        return 0.0, count
    return _covered(np.flatnonzero(h == values[best]), n, len(cp)) / len(cp), count


def duplicated_starts(hashes: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Positions whose n-gram occurs more than once (among ``candidates`` when given: enough, because both
    occurrences of a repeated n-gram are candidates whenever candidates are the repeated (n-1)-gram pairs)."""
    pos = np.arange(hashes.size) if candidates is None else candidates
    h = hashes[pos]
    order = np.argsort(h)  # not a stable sort: several times slower on text hashes
    s = h[order]
    same = s[1:] == s[:-1]
    dup = np.zeros(s.size, dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    marked = np.zeros(hashes.size, dtype=bool)
    marked[pos[order[dup]]] = True
    return np.flatnonzero(marked)


def dup_ngram_failure(cp: np.ndarray, limits: dict[int, float]) -> tuple[int, float] | None:
    """The first n (ascending) whose duplicate n-gram character share exceeds ``limits[n]``, with the share.

    Characters covered by repeated (n+1)-grams are a subset of those covered by repeated n-grams, so repeated
    n-grams are searched only where two repeated (n-1)-grams overlap, and larger n are skipped once the share
    is below every larger limit.
    """
    ns = sorted(limits)
    length = len(cp)
    if not ns or length < ns[0]:
        return None
    h = ngram_hashes(cp, ns[0])
    starts = duplicated_starts(h)
    n_prev = ns[0]
    for i, n in enumerate(ns):
        if n != n_prev:
            for k in range(n_prev + 1, n + 1):  # extend hashes and candidates one character at a time
                h = ngram_hashes(cp, k, prev=h)
                cand = starts[np.isin(starts + 1, starts, assume_unique=True)]  # all < h.size
                starts = duplicated_starts(h, cand)
            n_prev = n
        share = _covered(starts, n, length) / length
        if share > limits[n]:
            return n, share
        if all(share <= limits[m] for m in ns[i + 1 :]):
            return None
    return None


# ----------------------------------------------------------------------------------------------------------------
# Measures of one cleaned text, computed on first use


class Measures:
    def __init__(self, text: str, automaton: ahocorasick.Automaton | None = None):
        self.text = text
        self.automaton = automaton

    @property
    def ng_share(self) -> float:
        return ng_covered(self.text, self.automaton) / max(len(self.text), 1)

    @cached_property
    def _cp_and_classes(self) -> tuple[np.ndarray, np.ndarray]:
        cp = code_points(self.text)
        return cp, char_classes(cp)

    @cached_property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self._cp_and_classes[1], minlength=N_CLASSES)

    @cached_property
    def solid(self) -> np.ndarray:
        """Code points without whitespace."""
        cp, cls = self._cp_and_classes
        return cp[cls != SPACE]

    @cached_property
    def n_solid(self) -> int:
        return int(self.class_counts.sum() - self.class_counts[SPACE])

    def ratio(self, *classes: int) -> float:
        return float(sum(self.class_counts[c] for c in classes)) / max(self.n_solid, 1)

    def mean_sentence_length(self) -> float:
        """Non-whitespace characters per sentence; a sentence ends at ``。!?`` (an unterminated tail counts)."""
        stripped = self.text.rstrip()
        ends = stripped.count("。") + stripped.count("!") + stripped.count("?")
        return self.n_solid / (ends + (0 if stripped.endswith(("。", "!", "?")) else 1))

    def dup_line_ratio(self) -> float:
        lines = [s for s in (line.strip() for line in self.text.split("\n")) if s]
        return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Filters


@dataclass(frozen=True)
class Failure:
    filter: str
    value: float
    detail: str  # the comparison that failed, for people reading dropped.jsonl


def ng_automaton(words: Iterable[str]) -> ahocorasick.Automaton | None:
    return _automaton(unicodedata.normalize("NFKC", w).strip() for w in words)


def ng_covered(text: str, automaton: ahocorasick.Automaton | None) -> int:
    """Characters of ``text`` inside at least one NG-word occurrence (overlapping occurrences counted once)."""
    if automaton is None:
        return 0
    spans = sorted((end + 1 - n, end + 1) for end, n in automaton.iter(text))
    total = reach = 0
    for start, end in spans:  # union of the spans, in start order
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def read_word_list(text: str) -> list[str]:
    """One word per line; blank lines and ``#`` comments skipped."""
    return [w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith("#")]


@dataclass
class Rules:
    """What a worker needs to clean a shard: the config and the NG words (from the config and its word file).
    Compiled state (the automaton) is built once per process, keyed by ``key``."""

    cfg: CleanConfig
    ng_words: tuple[str, ...]
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            blob = json.dumps([self.cfg.model_dump(mode="json"), self.ng_words], ensure_ascii=False)
            self.key = hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CompiledRules:
    cfg: CleanConfig
    automaton: ahocorasick.Automaton | None
    drop_sections: set[str]


_COMPILED: dict[str, CompiledRules] = {}


def compile_rules(rules: Rules) -> CompiledRules:
    got = _COMPILED.get(rules.key)
    if got is None:
        drop = {unicodedata.normalize("NFKC", s).strip() for s in rules.cfg.drop_sections}
        got = _COMPILED[rules.key] = CompiledRules(rules.cfg, ng_automaton(rules.ng_words), drop)
    return got


def _fmt(v: float) -> str:
    return f"{v:.4g}"


@dataclass(frozen=True)
class Bound:
    """A filter that keeps a record when ``measure`` lies within the config fields ``low`` / ``high``."""

    filter: str
    measure: Callable[[Measures], float]
    low: str | None = None
    high: str | None = None

    def rule(self, cfg: CleanConfig) -> str:
        lo = getattr(cfg, self.low) if self.low else None
        hi = getattr(cfg, self.high) if self.high else None
        if lo is not None and hi is not None:
            return f"{lo}–{hi}"
        return f">= {lo}" if lo is not None else f"<= {hi}"

    def passes(self, v: float, cfg: CleanConfig) -> bool:
        return (self.low is None or v >= getattr(cfg, self.low)) and (
            self.high is None or v <= getattr(cfg, self.high)
        )


BOUNDS = [
    Bound("length", lambda m: float(len(m.text)), "min_chars", "max_chars"),
    Bound("ng_words", lambda m: m.ng_share, high="max_ng_word_ratio"),
    Bound("japanese_ratio", lambda m: m.ratio(HIRAGANA, KATAKANA, KANJI), low="min_japanese_ratio"),
    Bound("hiragana_ratio", lambda m: m.ratio(HIRAGANA), low="min_hiragana_ratio"),
    Bound("katakana_ratio", lambda m: m.ratio(KATAKANA), high="max_katakana_ratio"),
    Bound("symbol_ratio", lambda m: m.ratio(SYMBOL), high="max_symbol_ratio"),
    Bound("digit_ratio", lambda m: m.ratio(DIGIT), high="max_digit_ratio"),
    Bound(
        "sentence_length",
        lambda m: m.mean_sentence_length(),
        "min_mean_sentence_chars",
        "max_mean_sentence_chars",
    ),
    Bound("dup_line_ratio", lambda m: m.dup_line_ratio(), high="max_dup_line_ratio"),
]


FILTERS = ["section", *(b.filter for b in BOUNDS), "top_ngram_share", "dup_ngram_share"]


def threshold_text(name: str, cfg: CleanConfig) -> str:
    """The keep rule of a filter as configured, for the report table."""
    if name == "section":
        return "not in " + ", ".join(cfg.drop_sections)
    if name in ("top_ngram_share", "dup_ngram_share"):
        limits = cfg.max_top_ngram_share if name == "top_ngram_share" else cfg.max_dup_ngram_share
        return "<= " + ", ".join(f"{n}-gram {v}" for n, v in sorted(limits.items()))
    return next(b for b in BOUNDS if b.filter == name).rule(cfg)


def failures(text: str, rules: CompiledRules) -> Iterator[Failure]:
    """The filters (in ``FILTERS`` order, after ``section``) that ``text`` fails; lazy, so a caller that stops
    at the first failure never computes the later measures."""
    cfg = rules.cfg
    m = Measures(text, rules.automaton)
    for bound in BOUNDS:
        v = bound.measure(m)
        if not bound.passes(v, cfg):
            yield Failure(bound.filter, v, f"{bound.filter} {_fmt(v)}, keep if {bound.rule(cfg)}")
    top = top_ngram_failure(m.solid, cfg.max_top_ngram_share)
    if top is not None:
        n, v = top
        yield Failure("top_ngram_share", v, f"top {n}-gram share {_fmt(v)} > {cfg.max_top_ngram_share[n]}")
    dup = dup_ngram_failure(m.solid, cfg.max_dup_ngram_share)
    if dup is not None:
        n, v = dup
        yield Failure(
            "dup_ngram_share", v, f"duplicate {n}-gram share {_fmt(v)} > {cfg.max_dup_ngram_share[n]}"
        )


def first_failure(text: str, rules: CompiledRules) -> Failure | None:
    return next(failures(text, rules), None)


def top_ngram_failure(cp: np.ndarray, limits: dict[int, float]) -> tuple[int, float] | None:
    """The first n (ascending) whose top n-gram share exceeds ``limits[n]``, with the share.

    The most frequent n-gram occurs at most as often as the most frequent m-gram (m < n: its prefix is one),
    so its share is at most ``n × that count / length``: when this bound is within the limit, n is skipped.
    """
    length = len(cp)
    bound_count = None  # occurrences of the most frequent m-gram, m the largest n computed so far
    for n in sorted(limits):
        if length < n:
            return None
        if bound_count is not None and n * bound_count / length <= limits[n]:
            continue
        share, count = top_ngram_share(cp, n)
        if share > limits[n]:
            return n, share
        bound_count = count
    return None


# ----------------------------------------------------------------------------------------------------------------
# One shard: what a worker process does


@dataclass
class ShardResult:
    kept: list[str] = field(default_factory=list)  # JSON lines of kept records, input order
    dropped: list[str] = field(default_factory=list)  # JSON lines of dropped.jsonl, input order
    passed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    examples: dict[str, list[dict]] = field(default_factory=lambda: {f: [] for f in FILTERS})
    counts: Counter = field(default_factory=Counter)  # in, kept, chars_in, chars_out, email, phone, name


def group_key(rec: dict) -> str:
    """Records of one document (all sections of a filing) share this; a record without doc_id is its own."""
    return rec.get("doc_id") or f"\0{rec['id']}"


def clean_shard(job: tuple[Rules, list[dict]]) -> ShardResult:
    """Clean a shard of whole documents (consecutive records, never a ``doc_id`` group split)."""
    rules, records = job
    compiled = compile_rules(rules)
    result = ShardResult()
    start = 0
    while start < len(records):
        key = group_key(records[start])
        end = start + 1
        while end < len(records) and group_key(records[end]) == key:
            end += 1
        _clean_group(records[start:end], compiled, result)
        start = end
    return result


def clean_document(
    records: list[dict], rules: CompiledRules
) -> Iterator[tuple[dict, str, Failure | None, Counter]]:
    """``(record, cleaned text, failure or None, masked counts)`` for the sections of one document."""
    cfg = rules.cfg
    texts = [normalize_lines(r.get("text") or "") for r in records]
    repeated = repeated_lines(texts)
    for rec, lines in zip(records, texts, strict=True):
        masked: Counter = Counter()
        section = rec.get("section")
        if not isinstance(section, str):  # a user's own JSONL may hold anything there: no section name then
            section = None
        if section and unicodedata.normalize("NFKC", section).strip() in rules.drop_sections:
            text = "\n".join(lines)
            yield rec, text, Failure("section", 0.0, f"section {section!r} is dropped"), masked
            continue
        text = remove_lines(lines, repeated)
        if cfg.mask_pii:
            text, masked["email"], masked["phone"] = mask_pii(text)
        if cfg.mask_names:
            text, masked["name"] = mask_names(text)
        yield rec, text, first_failure(text, rules), masked


def json_value(v: float) -> float | None:
    """A measured value as a JSON-safe float (no numpy scalars, no NaN / infinity)."""
    v = float(v)
    return round(v, 4) if math.isfinite(v) else None


def _clean_group(records: list[dict], rules: CompiledRules, result: ShardResult) -> None:
    counts = result.counts
    for rec, text, failure, masked in clean_document(records, rules):
        counts["in"] += 1
        counts["chars_in"] += len(rec.get("text") or "")
        for name in FILTERS:
            if failure is not None and name == failure.filter:
                result.failed[name] += 1
                break
            result.passed[name] += 1
        if failure is not None:
            row = {
                "id": rec["id"],
                "reason": failure.filter,
                "value": json_value(failure.value),
                "detail": failure.detail,
                "text_head": text[:HEAD_CHARS],
            }
            examples = result.examples[failure.filter]
            if len(examples) < MAX_EXAMPLES:
                examples.append(row)
            result.dropped.append(json.dumps(row, ensure_ascii=False))
            continue
        counts["kept"] += 1
        counts["chars_out"] += len(text)
        counts.update(masked)
        out = {**rec, "text": text, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        result.kept.append(json.dumps(out, ensure_ascii=False))
