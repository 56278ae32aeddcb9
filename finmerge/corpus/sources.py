"""One raw source file → section-level document records, or quarantine rows saying why not.

Prefect-free: ``parse_file`` is the worker that ``finmerge/corpus/ingest.py`` fans out over a process pool or Dask.

Formats go by extension. HTML is turned into text (``<head>``, ``<script>``, ``<style>`` skipped; block elements
become line breaks, table cells tab-separated, entities decoded). HTML and text filings are split into sections
at EDINET heading lines such as ``３【事業の内容】`` or ``第一部【企業情報】`` (a line that is only the heading); the
text before the first heading is a section ``null``. JSONL lines are records with a text field; the known
metadata fields are mapped onto the schema and any other fields are kept under ``meta``. ``.zip`` files are
EDINET document packages (type=1 XBRL or type=5 CSV, see ``finmerge/corpus/filings.py``): one record per narrative
TextBlock section, with the metadata of the package and, when the connector fetched it, of the EDINET list API.

Bad input never raises: undecodable bytes, invalid JSON lines, non-object lines, lines without text, lines
longer than ``max_line_bytes``, files larger than ``max_file_bytes``, empty files and broken packages (corrupt or
truncated ZIPs, zip bombs, zip-slip names, XML with DTDs / entities) each become a quarantine row
``{"source", "line", "reason"}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from finmerge.core import storage
from finmerge.corpus.textio import DecodeError, decode, html_to_text

FORMATS = {
    ".jsonl": "jsonl",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".zip": "edinet",
    ".parquet": "parquet",  # Hugging Face datasets files, read row by row (finmerge/corpus/hf_sources.py)
    ".arrow": "arrow",
}
DATASET_FOLDER = "dataset"  # a ``save_to_disk`` folder: one source, listed by its root (not by extension)
DATASET_FORMATS = ("parquet", "arrow", DATASET_FOLDER)
ALL_FORMATS = tuple(sorted({*FORMATS.values(), DATASET_FOLDER}))
SCHEMA_META = ("doc_id", "edinet_code", "company", "filing_date", "section")
# A heading line: optional 第…部 / 第１ / ３ / (3) prefix, then 【…】 and nothing else.
# Patterns never put two unbounded whitespace runs side by side (or let one cross lines under re.M): that
# backtracks quadratically on a long line of spaces, which hostile or broken files do have.
HEADING = re.compile(r"^\s*(?:第?[0-9０-９一二三四五六七八九十]+[部章節]?\s*)?【([^】\n]{1,60})】\s*$")
EDINET_CODE = re.compile(r"[(（]\s*(E\d{5})\s*[)）]")
COVER_FIELD = re.compile(r"^[^\S\n]*【(会社名|提出日)】\s*(\S.*)$", re.M)  # the value is stripped after
HEADER_COMPANY = re.compile(
    r"^[^\S\n]*([^\s(]{2,40}?)\s*\(E\d{5}\)", re.M
)  # "<会社名>（E01234）…" after NFKC
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
        value = value.strip()
        if key == "会社名" and meta["company"] is None:
            meta["company"] = value
        elif key == "提出日" and meta["filing_date"] is None and (d := JP_DATE.search(value)):
            meta["filing_date"] = f"{int(d.group(1)):04d}-{int(d.group(2)):02d}-{int(d.group(3)):02d}"
    if meta["company"] is None and (m := HEADER_COMPANY.search(norm)):
        meta["company"] = m.group(1)
    return meta


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _json_int(digits: str) -> int | str:
    """An integer literal; one too long for int() (Python's 4300-digit guard) is kept as its digits."""
    try:
        return int(digits)
    except ValueError:
        return digits


def _load_json_line(line: str) -> object:
    """json.loads, with every way it fails as a ValueError whose message is the quarantine reason."""
    try:
        return json.loads(line, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid json: {exc.msg} at column {exc.colno}") from exc
    except RecursionError:
        raise ValueError("invalid json: nested too deeply") from None


def unwritable(rec: dict) -> str | None:
    """Why ``rec`` cannot be written as a UTF-8 JSON line, or None. JSON string escapes can hold lone
    surrogates (\\ud800) that no UTF-8 file can, and nesting just under the parser's limit can pass json.loads
    yet overflow json.dumps once wrapped in the record."""
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"invalid text: lone surrogate {exc.object[exc.start : exc.end]!r} in a JSON string escape"
    except (ValueError, RecursionError) as exc:
        return f"unwritable record: {type(exc).__name__}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Records


def make_record(text, source, fmt, doc_id, ordinal, meta, section, extra=None) -> dict:
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


@dataclass
class FileJob:
    """What a worker needs to parse one file (small and picklable)."""

    uri: str
    fmt: str
    text_field: str = "text"
    endpoint_url: str | None = None
    max_file_bytes: int = 256 << 20
    max_line_bytes: int = 16 << 20
    size: int | None = None
    edinet: dict | None = None  # the EDINET list-API record of this package, when the connector fetched it
    columns: dict[str, str] = field(default_factory=dict)  # source column -> schema field or meta key
    split: str = "train"  # the split read from a DatasetDict folder


@dataclass
class FileResult:
    uri: str
    sha256: str | None
    size: int
    records: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)


class _Out:
    def __init__(self, uri: str):
        self.uri = uri
        self.records: list[dict] = []
        self.quarantine: list[dict] = []

    def bad(self, line: int | None, reason: str, row: int | None = None) -> None:
        entry = {"source": self.uri, "line": line, "reason": reason}
        if row is not None:  # a dataset row (0-based, as ``dataset[row]``) rather than a file line
            entry["row"] = row
        self.quarantine.append(entry)


def _jsonl_lines(fh, limit: int, h):
    """(line number, bytes or None when longer than ``limit``) for each line, hashing as it reads."""
    lineno, buf, over = 0, bytearray(), False
    while chunk := fh.read(1 << 20):
        h.update(chunk)
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not over:
                buf += piece
                if len(buf) > limit:
                    over, buf = True, bytearray()
            if nl < 0:
                break
            lineno += 1
            yield lineno, (None if over else bytes(buf))
            buf, over, start = bytearray(), False, nl + 1
    if buf or over:
        yield lineno + 1, (None if over else bytes(buf))


def _meta_text(value: object) -> str | None:
    """A schema metadata field as text: scalars as their JSON text, containers compactly (never recursing)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):
        return None


def map_fields(obj: dict, text_field: str, columns: dict[str, str]) -> tuple[dict, dict]:
    """(schema metadata, extra) of a JSONL object or dataset row: a column goes to the schema field or meta key
    ``columns`` names (else to its own name); schema fields as text, any other column kept under meta. A
    source's own ``id`` is kept as ``source_id`` (the record id is ours). Explicitly mapped columns win over
    columns that already bear the target's name."""
    meta: dict = dict.fromkeys(SCHEMA_META)
    extra: dict = {}
    source_id = obj.get("id", _MISSING)
    for key in sorted(obj, key=lambda k: k in columns):  # mapped columns last, so they win
        target = columns.get(key, key)
        if key == text_field or (key == "id" and key not in columns):
            continue
        if target in SCHEMA_META:
            meta[target] = _meta_text(obj[key])
        else:
            extra[target] = obj[key]
    if source_id is not _MISSING and "id" not in columns:
        extra["source_id"] = source_id
    return meta, extra


_MISSING = object()


def _parse_jsonl(fh, job: FileJob, out: _Out, h) -> None:
    stem = PurePosixPath(job.uri).stem
    per_doc: Counter = Counter()
    for lineno, raw in _jsonl_lines(fh, job.max_line_bytes, h):
        if raw is None:
            out.bad(lineno, f"line too long: more than {job.max_line_bytes} bytes")
            continue
        if not raw.strip():
            continue
        try:
            line, _ = decode(raw.strip(b"\r"))
        except DecodeError as exc:
            out.bad(lineno, str(exc))
            continue
        try:
            obj = _load_json_line(line)
        except ValueError as exc:
            out.bad(lineno, str(exc))
            continue
        if not isinstance(obj, dict):
            out.bad(lineno, f"not an object: {type(obj).__name__}")
            continue
        text = obj.get(job.text_field)
        if not isinstance(text, str):
            out.bad(lineno, f"missing text: no string field {job.text_field!r}")
            continue
        if not text.strip():
            out.bad(lineno, "empty text")
            continue
        meta, extra = map_fields(obj, job.text_field, job.columns)
        doc_id = meta["doc_id"]
        ordinal = 0 if doc_id is None else per_doc[doc_id]
        try:
            rec = make_record(text, job.uri, "jsonl", doc_id, ordinal, meta, meta["section"], extra)
        except UnicodeEncodeError:  # hashing the text: a lone surrogate from a JSON escape
            rec = None
        if rec is None or (why := unwritable(rec)):
            out.bad(
                lineno, why if rec else "invalid text: lone surrogate in a JSON string escape of the text"
            )
            continue
        if doc_id is None:
            rec["id"] = f"{stem}:{lineno}"
        else:
            per_doc[doc_id] += 1
        out.records.append(rec)


def _parse_document(text: str, job: FileJob, out: _Out, title: str = "") -> None:
    doc_id = PurePosixPath(job.uri).stem
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    meta = filing_metadata(text, title)
    sections = split_sections(text)
    if not sections:
        out.bad(None, "empty document: no text after extraction")
        return
    for ordinal, name, body in sections:
        out.records.append(make_record(body, job.uri, job.fmt, doc_id, ordinal, meta, name))


def _parse_package(data: bytes, job: FileJob, out: _Out) -> None:
    from finmerge.corpus import filings

    try:
        filing = filings.read_package(data, job.uri)
    except filings.PackageError as exc:
        out.bad(None, f"bad EDINET package: {exc}")
        return
    listed = {
        k: v for k, v in (job.edinet or {}).items() if isinstance(v, str)
    }  # list-API values are untrusted
    submitted = (listed.get("submitDateTime") or "")[:10] or None
    doc_id = listed.get("docID") or filing.doc_id or PurePosixPath(job.uri).stem
    meta = {
        "edinet_code": listed.get("edinetCode") or filing.edinet_code,
        "company": listed.get("filerName") or filing.company,
        "filing_date": submitted or filing.filing_date,
    }
    extra = {"doc_type": listed.get("docTypeCode") or filing.doc_type, "package": filing.package}
    for s in filing.sections:
        if s.text.strip():
            extra_s = {**extra, "element": s.element} if s.element else extra
            out.records.append(
                make_record(s.text, job.uri, "edinet", doc_id, s.ordinal, meta, s.name, extra_s)
            )
    if not out.records:
        out.bad(None, "bad EDINET package: no narrative text")


def parse_file(job: FileJob) -> FileResult:
    """Parse one file into records; every problem becomes a quarantine row (this never raises on bad data)."""
    storage.configure(job.endpoint_url)
    out = _Out(job.uri)
    h = hashlib.sha256()
    if job.size is not None and job.size > job.max_file_bytes and job.fmt not in ("jsonl", *DATASET_FORMATS):
        out.bad(None, f"file too large: {job.size} bytes > {job.max_file_bytes}")
        return FileResult(job.uri, None, job.size, [], out.quarantine)
    if job.fmt in DATASET_FORMATS:
        from finmerge.corpus.hf_sources import parse_dataset

        size = parse_dataset(job, out, h)
        return FileResult(job.uri, h.hexdigest(), size, out.records, out.quarantine)
    fs, path = storage.filesystem(job.uri)
    with fs.open(path, "rb") as fh:
        if job.fmt == "jsonl":
            _parse_jsonl(fh, job, out, h)
            size = fh.tell()
            if size == 0:
                out.bad(None, "empty file")
            elif not out.records and not out.quarantine:
                out.bad(None, "empty file: blank lines only")
            return FileResult(job.uri, h.hexdigest(), size, out.records, out.quarantine)
        data = fh.read(job.max_file_bytes + 1)
    h.update(data)
    if len(data) > job.max_file_bytes:
        out.bad(None, f"file too large: more than {job.max_file_bytes} bytes")
        return FileResult(job.uri, None, len(data), [], out.quarantine)
    if not data.strip():
        out.bad(None, "empty file")
    elif job.fmt == "edinet":
        _parse_package(data, job, out)
    else:
        try:
            text, _ = decode(data)
        except DecodeError as exc:  # the whole file is quarantined (line None); the reason names the line
            out.bad(None, str(exc) if exc.line is None else f"{exc} (line {exc.line})")
        else:
            if job.fmt == "html":
                text, title = html_to_text(text)
                _parse_document(text, job, out, title)
            else:
                _parse_document(text, job, out)
    return FileResult(job.uri, h.hexdigest(), len(data), out.records, out.quarantine)


def parse_files(jobs: list[FileJob]) -> list[FileResult]:
    """A shard of files (the unit sent to a worker)."""
    return [parse_file(j) for j in jobs]
