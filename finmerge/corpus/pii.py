"""PII masking: e-mail addresses, Japanese phone numbers and personal names after an officer's title.

Steps 6–7 of ``finmerge/corpus/textclean.py``'s docstring, which says what is caught and what is not.
"""

from __future__ import annotations

import re

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
