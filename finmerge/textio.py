"""Bytes → text for raw documents: codec detection that rejects garbage, and HTML → plain text.

Prefect-free, so parser code can run in spawned workers and fuzzers without the orchestration imports.
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

# Valid multi-byte UTF-8 characters outnumber invalid bytes this many times: a corrupt UTF-8 file, not another
# codec (Shift_JIS read as UTF-8 yields almost no valid multi-byte sequences).
UTF8_VALID_PER_BAD = 4


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
    """(text, encoding) of ``data``; raises DecodeError with the reason when no codec fits."""
    if data.startswith(b"\xef\xbb\xbf"):
        codecs = ["utf-8-sig"]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        codecs = ["utf-16"]
    else:
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            loose = data.decode("utf-8", errors="replace")
            bad = loose.count("\ufffd")
            valid = sum(1 for ch in loose if ord(ch) > 127) - bad
            if valid >= UTF8_VALID_PER_BAD * bad:
                raise DecodeError(f"invalid utf-8: {bad} bad byte(s), first at offset {exc.start}") from exc
        codecs = ["cp932"]
    for codec in codecs:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if _plausible(text):
            return text, codec
    raise DecodeError(f"undecodable: not {'/'.join(['utf-8', *codecs])}")


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


def html_to_text(markup: str) -> tuple[str, str]:
    """(text, title) of an HTML page: one line per block, table cells separated by tabs."""
    p = _TextExtractor()
    p.feed(markup)
    p.close()
    lines = []
    for line in "".join(p.parts).replace("\xa0", " ").split("\n"):
        line = re.sub(r"[ \t]*\t[ \t]*", "\t", line).strip(" \t\r\f\v")
        if line:
            lines.append(line)
    return "\n".join(lines), " ".join("".join(p.title).split())
