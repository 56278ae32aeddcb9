"""How a demo filing reaches the corpus: made dirty (full-width, half-width kana, ``，．``), rendered as an
EDINET-viewer-like HTML page, a paged plain text or JSONL records, plus junk and non-Japanese documents."""

from __future__ import annotations

import html
import random
import re
import unicodedata
from pathlib import Path

from finmerge.demo.common import jp_num, pick

FW_DIGITS = "０１２３４５６７８９"
LINES_PER_PAGE = (16, 21)


def section_text(sec: dict) -> str:
    """Plain text of a section (the body under its heading), one line per paragraph / row / field."""
    if sec["kind"] == "cover":
        return "\n".join(f"【{k}】　{v}" for k, v in sec["lines"])
    if sec["kind"] == "table":
        return "\n".join("\t".join(row) for row in sec["lines"])
    return "\n".join(sec["lines"])


# --------------------------------------------------------------------------------------------------------------
# Dirt (all of it undone by NFKC + punctuation normalisation in finmerge/corpus/clean.py)


def _halfwidth_map() -> dict[str, str]:
    out = {}
    for cp in range(0xFF65, 0xFFA0):
        h = chr(cp)
        f = unicodedata.normalize("NFKC", h)
        if len(f) == 1 and ("\u30a0" <= f <= "\u30ff"):
            out.setdefault(f, h)
        for mark in ("\uff9e", "\uff9f"):
            g = unicodedata.normalize("NFKC", h + mark)
            if len(g) == 1 and g != f:
                out.setdefault(g, h + mark)
    return out


_HALF = _halfwidth_map()
_KATA_RUN = re.compile(r"[\u30a1-\u30fa\u30fc\u30fb]{2,}")
_ALNUM_ADJ_PUNCT = re.compile(r"[0-9A-Za-z][、。][0-9A-Za-z]")


def _fullwidth(s: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in s)


def dirty_line(line: str, style: dict, rng: random.Random) -> str:
    if style["hw_kana"] and rng.random() < style["hw_kana"]:
        line = _KATA_RUN.sub(lambda m: "".join(_HALF.get(ch, ch) for ch in m.group()), line)
    if style["fw_alnum"] and rng.random() < style["fw_alnum"]:
        line = _fullwidth(line)
    if style["fw_punct"] and not _ALNUM_ADJ_PUNCT.search(line):
        line = line.replace("、", "，").replace("。", "．")
    return line


def dirty_sections(sections: list[dict], style: dict, rng: random.Random) -> list[dict]:
    out = []
    for sec in sections:
        if sec["kind"] == "cover":
            lines = [(k, dirty_line(v, style, rng)) for k, v in sec["lines"]]
        elif sec["kind"] == "table":
            lines = [[dirty_line(cell, style, rng) for cell in row] for row in sec["lines"]]
        else:
            lines = [dirty_line(line, style, rng) for line in sec["lines"]]
        out.append({**sec, "lines": lines})
    return out


# --------------------------------------------------------------------------------------------------------------
# Raw forms

_STYLE_CSS = "body{font-family:serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
_SCRIPT = (
    "window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}gtag('js',new Date());"
)


def _heading(i: int, name: str) -> str:
    return f"{FW_DIGITS[(i + 1) % 10] if i < 9 else i + 1}【{name}】"


def render_html(doc: dict) -> str:
    e = html.escape
    title = f"{doc['company']}（{doc['edinet_code']}）{doc['title']}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="ja">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_STYLE_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head>",
        "<body>",
        '<div class="nav"><a href="/">EDINET閲覧サイト</a>&nbsp;|&nbsp;<a href="/list">書類一覧</a>&nbsp;|&nbsp;ヘルプ</div>',
        '<div class="doc">',
    ]
    for i, sec in enumerate(doc["sections"]):
        tag = "h2" if i == 0 else "h3"
        out.append(f"<{tag}>{e(_heading(i, sec['name']))}</{tag}>")
        if sec["kind"] == "cover":
            out += [f"<p>【{e(k)}】&#12288;{e(v)}</p>" for k, v in sec["lines"]]
        elif sec["kind"] == "table":
            out.append('<table class="fin">')
            for r, row in enumerate(sec["lines"]):
                cells = "".join(
                    f"<{'th' if r == 0 or j == 0 else 'td'}>{e(cell) or '&nbsp;'}</{'th' if r == 0 or j == 0 else 'td'}>"
                    for j, cell in enumerate(row)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        else:
            out += [f"<p>{e(line)}</p>" for line in sec["lines"]]
        out.append('<p class="pagetop"><a href="#top">このページの先頭へ</a></p>')
    out += [
        "</div>",
        "<script>document.querySelectorAll('a').forEach(function(a){a.rel='noopener';});</script>",
        '<div class="footer">Copyright &copy; EDINET閲覧サイト All Rights Reserved.</div>',
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


def render_text(doc: dict, rng: random.Random) -> str:
    header = f"{doc['company']}（{doc['edinet_code']}）{doc['title']}"
    body: list[str] = []
    for i, sec in enumerate(doc["sections"]):
        body.append(_heading(i, sec["name"]))
        if sec["kind"] == "cover":
            body += [f"【{k}】　{v}" for k, v in sec["lines"]]
        elif sec["kind"] == "table":
            body += ["　　".join(row) for row in sec["lines"]]
        else:
            body += sec["lines"]
    out, page, k = [header, ""], 1, 0
    per_page = rng.randint(*LINES_PER_PAGE)
    for line in body:
        out.append(line)
        k += 1
        if k >= per_page:
            out += ["", f"- {page} -", "\f" if rng.random() < 0.3 else "", header, ""]
            page, k = page + 1, 0
            per_page = rng.randint(*LINES_PER_PAGE)
    out += ["", f"- {page} -"]
    return "\n".join(out) + "\n"


def render_jsonl(doc: dict) -> list[dict]:
    recs = []
    for sec in doc["sections"]:
        text = section_text(sec)
        if doc.get("jsonl_br") and sec["kind"] == "text":
            text = "<br>".join(sec["lines"])
        recs.append(
            {
                "doc_id": doc["doc_id"],
                "edinet_code": doc["edinet_code"],
                "company": doc["company"],
                "filing_date": doc["filing_date"],
                "section": sec["name"],
                "text": text,
            }
        )
    return recs


# --------------------------------------------------------------------------------------------------------------
# Junk and non-Japanese documents


def junk_text(kind: str, rng: random.Random) -> str:
    if kind == "soup":
        chars = "★☆◆◇■□▲△●○※＃＄％＆＠！？＊＋＝｜〒♪→←↑↓0123456789ｱｲｳ"
        return "\n".join("".join(pick(rng, chars) for _ in range(rng.randint(30, 60))) for _ in range(8))
    if kind == "table":
        rows = []
        for _ in range(12):
            rows.append("　".join(jp_num(rng.randint(100, 999999)) for _ in range(6)))
        return "\n".join(rows)
    if kind == "stub":
        return pick(
            rng,
            [
                "ただいま準備中です。詳細は後日掲載します",
                "このページは現在作成中です。しばらくお待ち",
                "掲載準備中のため、内容は後日公開予定です",
            ],
        )[:20]
    spam = [
        "今すぐクリックして無料登録!",
        "出会い系サイトで素敵な出会いを見つけよう。",
        "カジノ無料ボーナスを今すぐ受け取ろう。",
        "アダルト動画が見放題、今すぐクリック。",
        "人気の出会い系アプリが登場しました。",
        "登録はかんたん、カジノ無料体験を実施中です。",
    ]
    filler = [
        "毎日たくさんの人が利用しています。",
        "詳しくはこちらのページをご覧ください。",
        "期間限定のキャンペーンです。",
    ]
    return "\n".join(rng.sample(spam, len(spam)) + filler)


def english_text(c: dict, year: int, rng: random.Random) -> str:
    fin = c["financials"][str(year)]
    name = c["name_en"].title()
    lines = [
        "FOR IMMEDIATE RELEASE",
        f"{name} Announces Consolidated Financial Results for the Fiscal Year Ended March 31, {year}",
        f'{name} (the "Company") today announced its financial results for the fiscal year ended March 31, {year}. '
        f"Net sales were JPY {fin['revenue']:,} million and operating income was JPY {fin['operating_income']:,} million.",
        pick(
            rng,
            [
                "The Company continued to invest in new production capacity and in research and development.",
                "Demand from key customers remained solid throughout the year despite higher input costs.",
                "The results reflect price revisions and a favorable product mix in the second half.",
            ],
        ),
        pick(
            rng,
            [
                "For the next fiscal year, the Company expects moderate growth in both sales and profit.",
                "Management will focus on cost discipline and on expanding overseas sales channels.",
            ],
        ),
        "Forward-looking statements in this release are based on information currently available and involve risks and uncertainties.",
        "Media contact: Corporate Communications Department.",
    ]
    return "\n".join(lines)


def _junk_html(title: str, text: str) -> str:
    body = "\n".join(f"<p>{html.escape(line)}</p>" for line in text.split("\n"))
    return f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body>\n</html>\n'


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_raw_forms(docs: list[dict], folder: Path, rng: random.Random) -> list[dict]:
    """The documents in doc_id order as ``html/<doc_id>.html`` or ``text/<doc_id>.txt`` under ``folder``; those
    of the JSONL form are returned as records for the caller to write."""
    jsonl_rows: list[dict] = []
    for d in sorted(docs, key=lambda d: d["doc_id"]):
        junk = d["kind"] in ("junk", "non_japanese")
        if d["form"] == "html":
            title = "お知らせ" if d["kind"] == "junk" else "Press Release"
            _write(
                folder / "html" / f"{d['doc_id']}.html",
                _junk_html(title, d["text"]) if junk else render_html(d),
            )
        elif d["form"] == "text":
            _write(folder / "text" / f"{d['doc_id']}.txt", d["text"] + "\n" if junk else render_text(d, rng))
        elif junk:
            jsonl_rows.append(
                {
                    "doc_id": d["doc_id"],
                    "edinet_code": None,
                    "company": None,
                    "filing_date": None,
                    "section": None,
                    "text": d["text"],
                }
            )
        else:
            jsonl_rows += render_jsonl(d)
    return jsonl_rows
