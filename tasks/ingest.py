"""Ingest raw documents (.jsonl / .txt / .html) into one JSONL of section-level document records.

Sources are fsspec URIs (local paths or ``s3://…``): files, folders (recursed, sorted) or globs. Formats go by
extension. HTML is turned into text (``<head>``, ``<script>``, ``<style>`` skipped; block elements become line
breaks, table cells tab-separated, entities decoded). HTML and text filings are split into sections at EDINET
heading lines such as ``３【事業の内容】`` or ``第一部【企業情報】`` (a line that is only the heading); the text
before the first heading is a section ``null``. JSONL lines are records with a text field; the known metadata
fields are mapped onto the schema and any other fields are kept under ``meta``.

Bad input never stops the stage. Undecodable bytes (UTF-8, then UTF-16 / UTF-8 with BOM, then CP932 are tried;
text that only decodes to control or private-use characters is rejected), invalid JSON lines, non-object lines,
lines without text, and empty files each become one record of ``quarantine.jsonl`` ``{"source","line","reason"}``.

Output folder: ``docs.jsonl`` (schema ``id, text, source, format, doc_id, edinet_code, company, filing_date,
section, sha256`` [+ ``meta``]), ``quarantine.jsonl``, ``stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from pathlib import PurePosixPath

from finmerge import storage
from finmerge.orchestration import stage_task
from finmerge.textio import DecodeError, decode, html_to_text

FORMATS = {".jsonl": "jsonl", ".txt": "text", ".html": "html", ".htm": "html"}
SCHEMA_META = ("doc_id", "edinet_code", "company", "filing_date", "section")
# A heading line: optional 第…部 / 第１ / ３ / (3) prefix, then 【…】 and nothing else.
HEADING = re.compile(r"^\s*(?:第?[0-9０-９一二三四五六七八九十]+[部章節]?)?\s*【([^】\n]{1,60})】\s*$")
EDINET_CODE = re.compile(r"[(（]\s*(E\d{5})\s*[)）]")
COVER_FIELD = re.compile(r"^\s*【(会社名|提出日)】\s*(.+?)\s*$", re.M)
HEADER_COMPANY = re.compile(r"^\s*([^\s(]{2,40}?)\s*\(E\d{5}\)", re.M)  # "<会社名>（E01234）…" after NFKC
JP_DATE = re.compile(r"(\d{4})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*日")
# ----------------------------------------------------------------------------------------------------------------
# Sections and metadata


def split_sections(text: str) -> list[tuple[int, str | None, str]]:
    """[(ordinal, section name or None, body)] split at heading lines; empty bodies are left out."""
    out, name, k, body = [], None, 0, []

    def flush():
        t = "\n".join(body).strip()
        if t:
            out.append((k, name, t))

    for line in text.split("\n"):
        m = HEADING.match(line)
        if m:
            flush()
            name, k, body = unicodedata.normalize("NFKC", m.group(1)).strip(), k + 1, []
        else:
            body.append(line.rstrip())
    flush()
    return out


def filing_metadata(text: str, title: str = "") -> dict:
    """edinet_code / company / filing_date found in a filing's cover, header lines or HTML title."""
    norm = unicodedata.normalize("NFKC", title + "\n" + text[:20000])
    meta: dict = {"edinet_code": None, "company": None, "filing_date": None}
    if m := EDINET_CODE.search(norm):
        meta["edinet_code"] = m.group(1)
    for key, value in COVER_FIELD.findall(norm):
        if key == "会社名" and meta["company"] is None:
            meta["company"] = value
        elif key == "提出日" and meta["filing_date"] is None and (d := JP_DATE.search(value)):
            meta["filing_date"] = f"{int(d.group(1)):04d}-{int(d.group(2)):02d}-{int(d.group(3)):02d}"
    if meta["company"] is None and (m := HEADER_COMPANY.search(norm)):
        meta["company"] = m.group(1)
    return meta


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Source listing


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def list_files(sources: list[str]) -> list[str]:
    """Every file URI under ``sources`` (folders recursed, globs expanded), sorted per source, without repeats."""
    seen, out = set(), []
    for src in sources:
        fs, path = storage.filesystem(src)
        if _is_glob(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = fs.find(path)
        elif fs.exists(path):
            found = [path]
        else:
            raise storage.StorageError(f"{src}: no such file, folder or glob match")
        for p in sorted(found):
            uri = f"{src.split('://', 1)[0]}://{p}" if storage.is_remote(src) else p
            if uri not in seen:
                seen.add(uri)
                out.append(uri)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The stage


class _Writer:
    def __init__(self, folder):
        self.docs = open(folder / "docs.jsonl", "w", encoding="utf-8")
        self.quarantine = open(folder / "quarantine.jsonl", "w", encoding="utf-8")
        self.ids: set[str] = set()
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.sections: Counter = Counter()
        self.chars = 0

    def doc(self, rec: dict) -> None:
        base, n = rec["id"], 1
        while rec["id"] in self.ids:  # the same doc_id met twice (e.g. a filing saved in two forms)
            n += 1
            rec["id"] = f"{base}~{n}"
        self.ids.add(rec["id"])
        self.docs.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.counts["docs"] += 1
        self.counts[f"docs/{rec['format']}"] += 1
        self.sections[rec["section"] or "(none)"] += 1
        self.chars += len(rec["text"])

    def bad(self, source: str, line: int | None, reason: str) -> None:
        self.quarantine.write(
            json.dumps({"source": source, "line": line, "reason": reason}, ensure_ascii=False) + "\n"
        )
        self.counts["quarantined"] += 1
        self.reasons[reason.split(":")[0]] += 1

    def close(self) -> None:
        self.docs.close()
        self.quarantine.close()


def _record(text, source, fmt, doc_id, ordinal, meta, section, extra=None) -> dict:
    rec = {
        "id": f"{doc_id}#{ordinal}",
        "text": text,
        "source": source,
        "format": fmt,
        "doc_id": doc_id,
        "edinet_code": meta.get("edinet_code"),
        "company": meta.get("company"),
        "filing_date": meta.get("filing_date"),
        "section": section,
        "sha256": sha256_text(text),
    }
    if extra:
        rec["meta"] = extra
    return rec


def _ingest_jsonl(data: bytes, source: str, w: _Writer, text_field: str) -> None:
    stem = PurePosixPath(source).stem
    per_doc: Counter = Counter()
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line, _ = decode(raw.strip(b"\r"))
        except DecodeError as exc:
            w.bad(source, lineno, str(exc))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            w.bad(source, lineno, f"invalid json: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            w.bad(source, lineno, f"not an object: {type(obj).__name__}")
            continue
        text = obj.get(text_field)
        if not isinstance(text, str):
            w.bad(source, lineno, f"missing text: no string field {text_field!r}")
            continue
        if not text.strip():
            w.bad(source, lineno, "empty text")
            continue
        meta = {k: (str(obj[k]) if obj.get(k) is not None else None) for k in SCHEMA_META}
        extra = {k: v for k, v in obj.items() if k not in SCHEMA_META and k not in (text_field, "id")}
        if "id" in obj:
            extra["source_id"] = obj["id"]
        doc_id = meta["doc_id"]
        if doc_id is None:
            rec = _record(text, source, "jsonl", None, 0, meta, meta["section"], extra)
            rec["id"] = f"{stem}:{lineno}"
        else:
            rec = _record(text, source, "jsonl", doc_id, per_doc[doc_id], meta, meta["section"], extra)
            per_doc[doc_id] += 1
        w.doc(rec)


def _ingest_document(text: str, source: str, fmt: str, w: _Writer, title: str = "") -> None:
    doc_id = PurePosixPath(source).stem
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    meta = filing_metadata(text, title)
    sections = split_sections(text)
    if not sections:
        w.bad(source, None, "empty document: no text after extraction")
        return
    for ordinal, name, body in sections:
        w.doc(_record(body, source, fmt, doc_id, ordinal, meta, name))


def ingest(sources: list[str], out_uri: str, staging_dir: str, *, text_field: str = "text") -> dict:
    """Read every source document, write section records to ``out_uri`` (atomic folder), return its result."""
    files = list_files(list(sources))
    with storage.output_folder(out_uri, staging_dir, meta={}) as out:
        w = _Writer(out.path)
        try:
            for uri in files:
                fmt = FORMATS.get(PurePosixPath(uri).suffix.lower())
                if fmt is None:
                    w.counts["skipped"] += 1  # _manifest.json, README, images, …
                    continue
                w.counts["files"] += 1
                w.counts[f"files/{fmt}"] += 1
                data = storage.read_bytes(uri)
                if not data.strip():
                    w.bad(uri, None, "empty file")
                    continue
                if fmt == "jsonl":
                    _ingest_jsonl(data, uri, w, text_field)
                    continue
                try:
                    text, _ = decode(data)
                except DecodeError as exc:
                    w.bad(uri, None, str(exc))
                    continue
                if fmt == "html":
                    text, title = html_to_text(text)
                    _ingest_document(text, uri, fmt, w, title)
                else:
                    _ingest_document(text, uri, fmt, w)
        finally:
            w.close()
        counts = {
            "files": w.counts["files"],
            "docs": w.counts["docs"],
            "quarantined": w.counts["quarantined"],
        }
        counts["skipped"] = w.counts["skipped"]
        for fmt in sorted(set(FORMATS.values())):
            counts[f"files/{fmt}"] = w.counts[f"files/{fmt}"]
            counts[f"docs/{fmt}"] = w.counts[f"docs/{fmt}"]
        stats = {
            "counts": counts,
            "quarantine_reasons": dict(sorted(w.reasons.items())),
            "sections": dict(w.sections.most_common()),
            "chars": w.chars,
            "sources": list(sources),
        }
        (out.path / "stats.json").write_text(
            json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        out.meta["counts"] = counts
        out.meta["metrics"] = {
            "ingest/files": float(counts["files"]),
            "ingest/docs": float(counts["docs"]),
            "ingest/quarantined": float(counts["quarantined"]),
            "ingest/chars": float(w.chars),
        }
        out.meta["artifacts"] = ["stats.json", "quarantine.jsonl"]
    return out.result()


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.
ingest_task = stage_task("ingest", ingest)
