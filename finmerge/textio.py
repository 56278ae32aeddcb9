"""Bytes → text for raw documents: codec detection that rejects garbage, and HTML → plain text.

Prefect-free, so parser code can run in spawned workers and fuzzers without the orchestration imports.
"""

from __future__ import annotations

import unicodedata
from html.parser import HTMLParser

# Valid multi-byte UTF-8 characters outnumber invalid bytes this many times: a corrupt UTF-8 file, not another
# codec (Shift_JIS read as UTF-8 yields almost no valid multi-byte sequences).
UTF8_VALID_PER_BAD = 4
# BOM-less UTF-16 is believed when at least one code unit in this many is ASCII (a NUL high byte): newlines,
# digits and spaces make real text pass, while a stray NUL in UTF-8 or binary data does not.
UTF16_UNITS_PER_NUL = 16
BOM_UTF8, BOM_UTF16_LE, BOM_UTF16_BE = b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"


class DecodeError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# Decoding


def _plausible(text: str) -> bool:
    for ch in text:
        cat = unicodedata.category(ch)
        if (cat == "Cc" and ch not in "\t\n\r\f\v") or cat in ("Co", "Cs", "Cn"):
            return False
    return True


def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding) of ``data``; raises DecodeError with the reason when no codec fits.

    A BOM is believed only when the bytes behind it fit: UTF-8 behind a UTF-16 BOM is read as UTF-8, UTF-16
    behind a UTF-8 BOM (or none) is recognised by its NUL bytes. Other NUL bytes mean binary data.
    """
    if data.startswith(BOM_UTF8):
        return _decode_unmarked(data[len(BOM_UTF8) :], "utf-8-sig")
    if data.startswith((BOM_UTF16_LE, BOM_UTF16_BE)):
        return _decode_utf16_bom(data)
    return _decode_unmarked(data, "utf-8")


def _decode_utf16_bom(data: bytes) -> tuple[str, str]:
    body = data[2:]
    if b"\x00" not in body:  # UTF-16 text without a NUL byte that is also valid UTF-8: a wrong BOM on UTF-8
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            pass
    try:
        text = data.decode("utf-16")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid utf-16: {exc.reason} at byte {exc.start + 2}") from exc
    if not _plausible(text):
        raise DecodeError("undecodable: utf-16 BOM but control or unassigned characters after decoding")
    return text, "utf-16"


def _decode_unmarked(data: bytes, utf8_name: str) -> tuple[str, str]:
    if b"\x00" in data:
        return _decode_bomless_utf16(data)
    try:
        return data.decode("utf-8"), utf8_name
    except UnicodeDecodeError as exc:
        loose = data.decode("utf-8", errors="replace")
        bad = loose.count("\ufffd")
        valid = sum(1 for ch in loose if ord(ch) > 127) - bad
        if utf8_name != "utf-8" or valid >= UTF8_VALID_PER_BAD * bad:
            raise DecodeError(f"invalid utf-8: {bad} bad byte(s), first at offset {exc.start}") from exc
    try:
        text = data.decode("cp932")
    except UnicodeDecodeError:
        raise DecodeError("undecodable: not utf-8/cp932") from None
    if not _plausible(text):
        raise DecodeError("undecodable: not utf-8/cp932 (control or unassigned characters)")
    return text, "cp932"


def _decode_bomless_utf16(data: bytes) -> tuple[str, str]:
    """UTF-16 without a BOM has its NUL bytes (the high byte of ASCII characters) all on one side."""
    even, odd = data[0::2].count(0), data[1::2].count(0)
    codec = "utf-16-le" if even == 0 else "utf-16-be" if odd == 0 else None
    enough = (even + odd) * UTF16_UNITS_PER_NUL >= len(data) // 2
    if codec and enough and len(data) % 2 == 0:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            pass
        else:
            if _plausible(text):
                return text, codec
    raise DecodeError(f"undecodable: binary data (NUL byte at offset {data.index(0)})")


# ----------------------------------------------------------------------------------------------------------------
# HTML → text

_BLOCK = {
    "p",
    "div",
    "br",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "li",
    "ul",
    "ol",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "main",
    "pre",
    "blockquote",
    "dt",
    "dd",
    "hr",
    "caption",
    "title",
    "body",
}
_SKIP = {"script", "style", "head", "noscript", "template"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skip = 0
        self.in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        if tag in _SKIP:
            self.skip += 1
        elif tag in ("td", "th"):
            self.parts.append("\t")
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)
        if not self.skip:
            self.parts.append(data)


def _defuse_unterminated(markup: str) -> str:
    """Escape every '<' after the last '>': HTMLParser re-scans an unterminated tag, comment or declaration to
    the end of the input once per '<' (quadratic; minutes for a few hundred KB of '<a'), and at the end of the
    input it turns such markup into text anyway, which is what the escaped '<' becomes."""
    last = markup.rfind(">")
    if "<" not in markup[last + 1 :]:
        return markup
    return markup[: last + 1] + markup[last + 1 :].replace("<", "&lt;")


def _join_cells(line: str) -> str:
    """Runs of spaces and tabs holding a tab become one tab (a str-method twin of re.sub(r"[ \t]*\t[ \t]*",
    "\t"), which is quadratic on long runs of spaces)."""
    if "\t" not in line:
        return line
    return "\t".join(cell for cell in (c.strip(" ") for c in line.split("\t")) if cell)


def html_to_text(markup: str) -> tuple[str, str]:
    """(text, title) of an HTML page: one line per block, table cells separated by tabs."""
    p = _TextExtractor()
    p.feed(_defuse_unterminated(markup))
    p.close()
    lines = []
    for line in "".join(p.parts).replace("\xa0", " ").split("\n"):
        line = _join_cells(line).strip(" \t\r\f\v")
        if line:
            lines.append(line)
    return "\n".join(lines), " ".join("".join(p.title).split())
