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

Steps 1–5 live in ``textnorm.py``, 6–7 in ``pii.py``, the measures and filters in ``textquality.py``; this
module cleans a shard with them and re-exports their names.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

# Re-exported: the stage, tests and fuzzers import these names from here.
from finmerge.corpus.pii import EMAIL, NAME_AFTER_TITLE, PHONE, mask_names, mask_pii  # noqa: F401
from finmerge.corpus.textnorm import (  # noqa: F401 - re-exported
    BOILERPLATE,
    BOILERPLATE_WORDS,
    PAGE_NUMBER,
    REPEAT_MAX_LEN,
    REPEAT_MIN,
    TABLE_MIN_CELLS,
    TABLE_NUMERIC_SHARE,
    boilerplate_lines,
    fix_punctuation,
    is_table_line,
    normalize,
    normalize_lines,
    remove_lines,
    repeated_lines,
    strip_markup,
)
from finmerge.corpus.textquality import (  # noqa: F401 - re-exported
    BOUNDS,
    CHAR_CLASS,
    DIGIT,
    FILTERS,
    HIRAGANA,
    KANJI,
    KATAKANA,
    N_CLASSES,
    OTHER,
    SPACE,
    SYMBOL,
    Bound,
    CompiledRules,
    Failure,
    Measures,
    Rules,
    char_classes,
    code_points,
    compile_rules,
    dup_ngram_failure,
    duplicated_starts,
    failures,
    first_failure,
    ng_automaton,
    ng_covered,
    ngram_hashes,
    read_word_list,
    threshold_text,
    top_ngram_failure,
    top_ngram_share,
)

HEAD_CHARS = 80
MAX_EXAMPLES = 3


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
