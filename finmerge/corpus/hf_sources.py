"""Hugging Face datasets as corpus sources: ``save_to_disk`` folders and ``.parquet`` / ``.arrow`` files.

Listing (``ingest.list_files``): a folder holding ``dataset_dict.json`` (a DatasetDict) or ``state.json`` beside
``dataset_info.json`` (a Dataset) is one source, named by its folder, whose size is the sum of its files and
whose version is a digest of their sizes and versions, so the ingest manifest skips an unchanged dataset the
way it skips an unchanged file. ``.parquet`` and ``.arrow`` files are sources by extension.

Reading (``parse_dataset``, called by ``sources.parse_file`` in the worker pool): a remote source is first
copied into a local temp folder through fsspec, hashing the bytes as they pass (the sha256 the manifest keeps
is of the bytes that were parsed). A DatasetDict gives its ``split`` (``corpus.ingest.dataset_split``). The
rows are read with the ``datasets`` library (``load_from_disk``; ``load_dataset("parquet" | "arrow",
streaming=True)``, which reads row groups as it goes and writes no cache) and become records as JSONL lines do:
``text_field`` is the text, ``columns`` maps source columns onto the schema or meta keys
(``sources.map_fields``). A row without a string text, with an empty one or with one longer than
``max_line_bytes`` is a quarantine row ``{"source", "line": None, "row", "reason"}`` (``row`` 0-based, as
``dataset[row]``); a file ``datasets`` cannot read, a missing text column or split quarantine the source
whole. Nothing here raises on bad data.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import decimal
import json
import posixpath
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from finmerge.core import storage
from finmerge.corpus.sources import FileJob, _Out, make_record, map_fields, unwritable

DICT_FILE = "dataset_dict.json"  # a DatasetDict folder
DATASET_FILES = ("state.json", "dataset_info.json")  # a Dataset folder holds both
CHUNK = 1 << 20


class Unreadable(Exception):
    """The whole source cannot be read: its message is the quarantine reason."""


# ----------------------------------------------------------------------------------------------------------------
# Listing


def dataset_roots(paths: Iterable[str]) -> list[str]:
    """The outermost ``save_to_disk`` folders among the folders of ``paths`` (file paths, any order)."""
    names: dict[str, set[str]] = {}
    for p in paths:
        parent, name = posixpath.split(p)
        names.setdefault(parent, set()).add(name)
    roots = sorted(d for d, n in names.items() if DICT_FILE in n or all(f in n for f in DATASET_FILES))
    outer: list[str] = []
    for r in roots:  # sorted: a parent comes before its children
        if not any(r.startswith(o.rstrip("/") + "/") for o in outer):
            outer.append(r)
    return outer


def is_dataset_folder(fs, path: str) -> bool:
    return fs.isfile(posixpath.join(path, DICT_FILE)) or all(
        fs.isfile(posixpath.join(path, f)) for f in DATASET_FILES
    )


def collapse(found: dict[str, dict]) -> tuple[dict[str, dict], set[str]]:
    """``found`` (path -> fsspec info of files) with the files of each dataset folder replaced by one entry for
    the folder (summed size, a version digest of its files); returns it and the folder paths."""
    roots = dataset_roots(found)
    if not roots:
        return found, set()
    out: dict[str, dict] = {}
    members: dict[str, list[tuple[str, int, str]]] = {r: [] for r in roots}
    for p, info in found.items():
        root = next((r for r in roots if p.startswith(r.rstrip("/") + "/")), None)
        if root is None:
            out[p] = info
        else:
            version = file_version(info)
            members[root].append((p[len(root) :], int(info.get("size") or 0), version))
    for root, files in members.items():
        files.sort()
        digest = storage.sha256_bytes(json.dumps(files).encode("utf-8"))
        out[root] = {"size": sum(size for _, size, _ in files), "etag": digest, "type": "directory"}
    return out, set(roots)


def file_version(info: dict) -> str:
    """What changes when a file's content changes, without reading it (ETag on S3, mtime locally)."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _copy(fs, src: str, dest: Path | None, h) -> int:
    """Read one file through fsspec, hashing it (and copying it to ``dest`` unless None); returns its size."""
    size = 0
    with fs.open(src, "rb") as fh, contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(dest, "wb")) if dest is not None else None
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if sink is not None:
                sink.write(chunk)
    return size


def _split_folder(fs, root: str, split: str) -> str:
    """The Dataset folder to read: ``root`` itself, or its ``split`` when ``root`` is a DatasetDict."""
    dict_file = posixpath.join(root, DICT_FILE)
    if not fs.isfile(dict_file):
        return root
    with fs.open(dict_file, "rb") as fh:
        try:
            splits = json.loads(fh.read()).get("splits") or []
        except (ValueError, AttributeError):
            raise Unreadable(f"unreadable dataset: {DICT_FILE} is not a JSON object") from None
    if split not in splits:
        raise Unreadable(f"no split {split!r} in the DatasetDict (splits: {', '.join(map(str, splits))})")
    return posixpath.join(root, split)


@contextlib.contextmanager
def _local(job: FileJob, h) -> Iterator[tuple[Path, int]]:
    """A local path holding the source (the file, or the Dataset folder of the split), its bytes hashed in
    a stable order (a folder: each file's relative name, then its bytes); a remote source is copied first."""
    fs, path = storage.filesystem(job.uri)
    if job.fmt == "dataset":
        path = _split_folder(fs, path, job.split)
        files = sorted(p for p in fs.find(path) if not PurePosixPath(p).name.startswith("."))
    else:
        files = [path]
    # load_dataset reads data_files as patterns: a local file whose name has * ? [ is read from a plain-named copy
    copy = storage.is_remote(job.uri) or (job.fmt != "dataset" and any(c in path for c in "*?["))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finmerge-ds-"))) if copy else None
        size = 0
        for p in files:
            rel = p[len(path) :].lstrip("/") if job.fmt == "dataset" else f"source.{job.fmt}"
            if job.fmt == "dataset":
                h.update(rel.encode("utf-8") + b"\0")
            dest = None
            if tmp is not None:
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
            size += _copy(fs, p, dest, h)
        if tmp is None:
            yield Path(path), size
        else:
            yield (tmp if job.fmt == "dataset" else tmp / f"source.{job.fmt}"), size


def _rows(job: FileJob, local: Path) -> tuple[list[str], Iterator[dict]]:
    """(column names, rows) of a local dataset source, read with ``datasets``."""
    import datasets

    try:
        if job.fmt == "dataset":
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):  # a split folder holding a DatasetDict of its own
                raise Unreadable("unreadable dataset: the split folder is itself a DatasetDict")
        else:
            ds = datasets.load_dataset(job.fmt, data_files=[str(local)], split="train", streaming=True)
        if ds.features is None:  # a streamed file whose schema is known only once read: peek at the first row
            first = next(iter(ds), None)
            rows = iter(()) if first is None else _chain(first, ds)
            return list(first or {}), rows
        columns = list(ds.features)
    except Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - any way datasets / pyarrow fail on bad bytes is a quarantine row
        raise Unreadable(f"unreadable dataset: {_why(exc)}") from None
    return columns, iter(ds)


def _chain(first: dict, ds) -> Iterator[dict]:
    yield first
    it = iter(ds)
    next(it, None)
    yield from it


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}".rstrip(": ")


def plain(value: object) -> object:
    """A dataset value as JSON-ready data (dates as ISO text, decimals as text, bytes as base64)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars (Array features)
        return plain(value.tolist())
    return str(value)


def _text_problem(text: object, job: FileJob) -> str | None:
    if text is None:
        return f"missing text: {job.text_field!r} is null"
    if not isinstance(text, str):
        return f"missing text: {job.text_field!r} holds {type(text).__name__}, not a string"
    if not text.strip():
        return "empty text"
    if len(text) > job.max_line_bytes // 4 and len(text.encode("utf-8", "replace")) > job.max_line_bytes:
        return f"text too long: more than {job.max_line_bytes} bytes"
    return None


def _to_records(job: FileJob, columns: list[str], rows: Iterator[dict], out: _Out) -> None:
    if job.text_field not in columns:
        raise Unreadable(f"missing text: no column {job.text_field!r} (columns: {', '.join(columns)})")
    name = PurePosixPath(job.uri).name if job.fmt == "dataset" else PurePosixPath(job.uri).stem
    per_doc: Counter = Counter()
    for i, row in enumerate(rows):
        text = row.get(job.text_field)
        if why := _text_problem(text, job):
            out.bad(None, why, row=i)
            continue
        meta, extra = map_fields({k: plain(v) for k, v in row.items()}, job.text_field, job.columns)
        doc_id = meta["doc_id"]
        ordinal = 0 if doc_id is None else per_doc[doc_id]
        rec = make_record(text, job.uri, job.fmt, doc_id, ordinal, meta, meta["section"], extra)
        if why := unwritable(rec):
            out.bad(None, why, row=i)
            continue
        if doc_id is None:
            rec["id"] = f"{name}:{i + 1}"  # the id the same row gets as line i + 1 of a JSONL file
        else:
            per_doc[doc_id] += 1
        out.records.append(rec)


def parse_dataset(job: FileJob, out: _Out, h) -> int:
    """Parse one dataset source into ``out`` (records, quarantine rows), hashing its bytes into ``h``;
    returns its size in bytes."""
    size = 0
    try:
        with _local(job, h) as (local, size), _quiet():
            if size == 0:
                raise Unreadable("empty file")
            columns, rows = _rows(job, local)
            try:
                _to_records(job, columns, rows, out)
            except Unreadable:
                raise
            except Exception as exc:  # noqa: BLE001 - a row group that fails to decode midway
                raise Unreadable(f"unreadable dataset after {len(out.records)} rows: {_why(exc)}") from None
    except Unreadable as exc:
        out.records.clear()  # a source read only in part is not ingested in part
        out.quarantine[:] = [r for r in out.quarantine if r.get("row") is None]
        out.bad(None, str(exc))
    if not out.records and not out.quarantine:
        out.bad(None, "empty dataset: no rows")
    return size


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from ``datasets`` in worker logs (restored afterwards)."""
    from datasets import utils

    was_disabled = utils.are_progress_bars_disabled()
    level = utils.logging.get_verbosity()
    utils.disable_progress_bars()
    utils.logging.set_verbosity(utils.logging.CRITICAL)  # its read errors become our quarantine rows
    try:
        yield
    finally:
        utils.logging.set_verbosity(level)
        if not was_disabled:
            utils.enable_progress_bars()
