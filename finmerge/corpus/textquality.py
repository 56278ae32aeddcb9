"""Quality measures of a cleaned text and the filters over them (``FILTERS`` order; the first failure drops).

Character ratios are over non-whitespace characters; n-gram shares over the text with whitespace removed. Each
measure is computed only when its filter is reached.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import ahocorasick
import numpy as np

from finmerge.config import CleanConfig
from finmerge.corpus.textnorm import word_automaton

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
    return word_automaton(unicodedata.normalize("NFKC", w).strip() for w in words)


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
