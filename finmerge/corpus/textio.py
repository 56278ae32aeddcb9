"""Bytes → text for raw documents: codec detection that rejects garbage, and HTML → plain text.

Prefect-free, so parser code can run in spawned workers and fuzzers without the orchestration imports.
"""

from __future__ import annotations

import gzip
import unicodedata
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

# Valid multi-byte UTF-8 characters outnumber invalid bytes this many times: a corrupt UTF-8 file, not another
# codec (Shift_JIS read as UTF-8 yields almost no valid multi-byte sequences).
UTF8_VALID_PER_BAD = 4
# BOM-less UTF-16 is believed when at least one code unit in this many is ASCII (a NUL high byte): newlines,
# digits and spaces make real text pass, while a stray NUL in UTF-8 or binary data does not.
UTF16_UNITS_PER_NUL = 16
BOM_UTF8, BOM_UTF16_LE, BOM_UTF16_BE = b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"


class DecodeError(ValueError):
    """Bytes no codec fits; ``line``: the line holding the first bad byte, when one byte is to blame."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def line_of(data: bytes, offset: int) -> int:
    """The 1-based line of ``data`` holding byte ``offset``."""
    return data.count(b"\n", 0, offset) + 1


class EmptyInputError(ValueError):
    """A corpus stage was given nothing to work on: sources that hold no input file, inputs that were all
    quarantined, or a JSONL input without a single record. The message names the sources or the input."""


# ----------------------------------------------------------------------------------------------------------------
# JSONL files of the corpus stages (clean, dedup): lines as bytes, UTF-8 checked line by line


def input_name(uri: str) -> str:
    """The JSONL file of a stage input (a ``.jsonl`` / ``.jsonl.gz`` file or a folder holding ``docs.jsonl``)
    as errors name it: the URI the user gave, not the staged or unpacked local copy that is read."""
    from finmerge.core import storage

    return uri if uri.endswith((".jsonl", ".jsonl.gz")) else storage.join(uri, storage.DOCS)


def iter_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, line)`` of the non-blank lines of a local JSONL file (``.gz``: of the
    unpacked stream); the line keeps its newline."""
    offset = 0
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, offset, line
            offset += len(line)


def decode_utf8(data: bytes, source: str, line: int = 1) -> str:
    """``data`` (UTF-8; a leading BOM is dropped) as text. An invalid byte is a DecodeError naming ``source``,
    the line it is on (``data`` starts at line ``line``), its column and the byte, never a bare
    UnicodeDecodeError."""
    start = len(BOM_UTF8) if data.startswith(BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        lineno = line + line_of(data, at) - 1
        column = at - (data.rfind(b"\n", 0, at) + 1) + 1
        raise DecodeError(
            f"{source}: line {lineno}: invalid UTF-8: byte 0x{data[at]:02x} at byte {column} of the line "
            f"({exc.reason})",
            lineno,
        ) from None


def check_utf8_lines(path: str | Path, source: str | None = None) -> None:
    """Raise the DecodeError of the first line of ``path`` that is not UTF-8 (for a reader that met a bare
    UnicodeDecodeError and needs the line to name); return when every line decodes."""
    for lineno, _, line in iter_lines(path):
        decode_utf8(line, source or str(path), lineno)


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
            raise DecodeError(
                f"invalid utf-8: {bad} bad byte(s), first at offset {exc.start}", line_of(data, exc.start)
            ) from exc
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
    at = data.index(0)
    raise DecodeError(f"undecodable: binary data (NUL byte at offset {at})", line_of(data, at))


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
