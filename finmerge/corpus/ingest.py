"""Ingest: raw documents (files, S3 prefixes, globs, EDINET) → section-level JSONL records, incrementally.

Parsing of one file lives in ``finmerge/corpus/sources.py`` (formats, sections, metadata, what gets quarantined),
of a Hugging Face dataset (a ``save_to_disk`` folder, ``.parquet`` / ``.arrow`` files) in
``finmerge/corpus/hf_sources.py``;
EDINET packages in ``finmerge/corpus/filings.py``; the EDINET API client in ``finmerge/corpus/edinet.py``. This module lists the
sources, decides what is new, fans the parsing out (``corpus.parallel``) and writes the batch.

**Incremental manifest.** Every output folder carries ``manifest.jsonl``: one row per source file ever seen by
this corpus lineage ``{"uri", "size", "version", "sha256", "status", "reason", "docs", "batch", "edinet"}``
(``status`` = ``ingested`` | ``quarantined`` | ``unchanged``-carried-over rows keep their first batch). Given
``prev_uri`` (the previous ingest folder of the lineage), a file whose size and version (S3 ETag / local mtime)
match its row is not read at all; a file whose bytes hash to the recorded sha256 is not parsed again. So a
re-run over the same sources does no work and writes an empty batch, and new filings produce a batch holding
only their documents — the only ones clean and dedup then see. A changed file is parsed again as a new version.

**EDINET.** With ``edinet.enabled`` the connector first lists filings by file date (from the manifest's
``listed_through`` minus ``relist_days``) and downloads those whose docID the manifest does not know into
``edinet_download_uri``, which is then ingested like any other source folder. The list-API record of each
package (filer, EDINET code, submit date, docTypeCode) goes into its manifest row and its documents' metadata.

Output folder: ``docs.jsonl`` (this batch's records: ``id, text, source, format, doc_id, edinet_code, company,
filing_date, section, sha256`` [+ ``meta``]), ``quarantine.jsonl`` (this batch's ``{"source","line","reason"}``),
``manifest.jsonl`` (cumulative, sorted by uri), ``state.json`` (``listed_through``), ``stats.json``.

**Nothing to ingest is an error** (``textio.EmptyInputError``, naming the sources), never an empty corpus:
sources that hold no input file (no sources at all, e.g. a forgotten ``--input`` with an empty
``corpus.ingest.sources``; an empty folder or a glob matching nothing; only files of other formats), and, in a
first batch (no ``prev_uri``), inputs that were all quarantined. An incremental run in which nothing is new (or
every new file is quarantined) is not an error: it writes an empty batch and its manifest learns what it saw.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import PurePosixPath

from finmerge.config import EdinetConfig, IngestConfig, ParallelConfig
from finmerge.core import storage
from finmerge.core.parallel import map_ordered
from finmerge.corpus import hf_sources
from finmerge.corpus.sources import (  # noqa: F401 - re-exported for callers and tests
    ALL_FORMATS,
    DATASET_FOLDER,
    FORMATS,
    FileJob,
    filing_metadata,
    parse_files,
    split_sections,
)
from finmerge.corpus.textio import EmptyInputError, decode, html_to_text  # noqa: F401 - re-exported

log = logging.getLogger("finmerge.ingest")
MANIFEST_ROWS = "manifest.jsonl"
FILES_PER_SHARD = 16


# ----------------------------------------------------------------------------------------------------------------
# Source listing


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


_version = hf_sources.file_version


def _found(fs, path: str, src: str) -> dict[str, dict]:
    """path -> fsspec info of the files a source names (a glob's matching folders only when datasets)."""
    if _is_glob(path):
        found = {}
        for p, info in fs.glob(path, detail=True).items():
            if info.get("type") == "file":
                found[p] = info
            elif hf_sources.is_dataset_folder(fs, p):
                found.update(fs.find(p, detail=True))
        return found
    if fs.isdir(path):
        return fs.find(path, detail=True)
    if fs.exists(path):
        return {path: fs.info(path)}
    raise storage.StorageError(f"{src}: no such file, folder or glob match")


def list_files(sources: list[str]) -> list[tuple[str, int, str, str | None]]:
    """``(uri, size, version, format)`` of every file under ``sources`` (folders recursed, globs expanded),
    sorted per source, without repeats; a ``save_to_disk`` folder is one entry (format ``dataset``), a file of
    no known format has format None; a source matching nothing is an error naming it."""
    seen, out = set(), []
    for src in sources:
        fs, path = storage.filesystem(src)
        found, folders = hf_sources.collapse(_found(fs, path, src))
        for p in sorted(found):
            uri = f"{src.split('://', 1)[0]}://{p}" if storage.is_remote(src) else p
            if uri not in seen:
                seen.add(uri)
                fmt = DATASET_FOLDER if p in folders else FORMATS.get(PurePosixPath(p).suffix.lower())
                out.append((uri, int(found[p].get("size") or 0), _version(found[p]), fmt))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The stage


class _Batch:
    """Writes this batch's records and quarantine rows; unique ids; counts."""

    def __init__(self, folder):
        self.docs = open(folder / "docs.jsonl", "w", encoding="utf-8")
        self.quarantine = open(folder / "quarantine.jsonl", "w", encoding="utf-8")
        self.ids: set[str] = set()
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.sections: Counter = Counter()
        self.chars = 0
        self.examples: list[dict] = []  # the first quarantine rows, for an error message

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

    def bad(self, row: dict) -> None:
        self.quarantine.write(json.dumps(row, ensure_ascii=False) + "\n")
        if len(self.examples) < 3:
            self.examples.append(row)
        self.counts["quarantined"] += 1
        self.reasons[row["reason"].split(":")[0]] += 1

    def close(self) -> None:
        self.docs.close()
        self.quarantine.close()


def _previous(prev_uri: str | None, staging_dir: str) -> tuple[dict[str, dict], dict]:
    if not prev_uri:
        return {}, {}
    folder = storage.stage_folder(prev_uri, staging_dir)
    rows = {r["uri"]: r for r in storage.iter_jsonl(folder / MANIFEST_ROWS)}
    state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").exists() else {}
    return rows, state


def _printable(uri: str) -> str:
    """``uri`` as UTF-8-safe text: a local file name that is not UTF-8 reaches Python with lone surrogates
    (surrogateescape), which no JSON line can hold; they are spelled out as \\udcxx escapes."""
    return uri.encode("utf-8", "backslashreplace").decode("utf-8")


def _shards(jobs: list[FileJob], size: int) -> Iterator[list[FileJob]]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


def _no_input(
    sources: list[str], files: list[tuple[str, int, str, str | None]], edinet_dir: str | None
) -> EmptyInputError:
    """Sources that hold no input file: an error naming them, never an empty corpus."""
    if sources:
        what = (
            f"no input files in sources {sources} (known formats: {', '.join(FORMATS)} and "
            "Hugging Face save_to_disk folders)"
        )
    else:
        what = "no sources: give --input or set corpus.ingest.sources"
    if files:
        what += f"; {len(files)} file(s) of other formats skipped"
    if edinet_dir is not None:
        what += f"; EDINET fetched nothing into {edinet_dir}"
    return EmptyInputError(f"ingest: {what}")


def _where(row: dict) -> str:
    if row.get("row") is not None:
        return f" row {row['row']}"
    return "" if row["line"] is None else f" line {row['line']}"


def _all_quarantined(sources: list[str], batch: _Batch, files: int) -> EmptyInputError:
    shown = "; ".join(f"{r['source']}{_where(r)}: {r['reason']}" for r in batch.examples)
    return EmptyInputError(
        f"ingest: 0 documents from sources {sources}: all {files} input file(s) quarantined "
        f"({batch.counts['quarantined']} quarantine row(s), e.g. {shown})"
    )


def _fetch_edinet(cfg: EdinetConfig, download_uri: str, manifest: dict[str, dict], state: dict) -> dict:
    """Run the connector; returns ``{"by_uri": {uri: list record}, "listed_through", "counts"}``."""
    from finmerge.corpus.edinet import fetch_new_filings, resolve_api_key

    api_key = resolve_api_key(cfg)
    if not api_key:
        raise RuntimeError(
            f"EDINET is enabled but no API key: set ${cfg.api_key_env}"
            + (f" or the Prefect Secret block {cfg.api_key_block!r}" if cfg.api_key_block else "")
        )
    known = {r["edinet"]["docID"] for r in manifest.values() if r.get("edinet") and r["edinet"].get("docID")}
    res = fetch_new_filings(
        cfg, download_uri, known, api_key=api_key, listed_through=state.get("listed_through")
    )
    by_uri = {}
    for rec in res.records:
        if rec.get("uri") and rec["status"] in ("fetched", "reused"):
            by_uri[storage.normalize(rec["uri"])] = {"docID": rec["doc_id"], **(rec.get("edinet") or {})}
    return {"by_uri": by_uri, "listed_through": res.listed_through, "counts": dict(res.counts)}


def ingest(
    sources: list[str],
    out_uri: str,
    staging_dir: str,
    cfg: IngestConfig | None = None,
    *,
    prev_uri: str | None = None,
    edinet_download_uri: str | None = None,
    parallel: ParallelConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Ingest what is new in ``sources`` (relative to ``prev_uri``'s manifest) into ``out_uri``, with
    ``cfg``'s text field, size limits and EDINET connector (its ``sources`` are not read here)."""
    cfg = cfg or IngestConfig()
    text_field, edinet, max_file_mb, max_line_mb = (
        cfg.text_field,
        cfg.edinet,
        cfg.max_file_mb,
        cfg.max_line_mb,
    )
    inputs = [*([sources] if isinstance(sources, str) else sources), *([prev_uri] if prev_uri else [])]
    storage.check_output(out_uri, "ingest", inputs, overwrite)
    manifest, state = _previous(prev_uri, staging_dir)
    sources = list(sources)
    fetched: dict = {"by_uri": {}, "listed_through": state.get("listed_through"), "counts": {}}
    if edinet is not None and edinet.enabled:
        if not edinet_download_uri:
            raise ValueError("edinet.enabled needs a download folder (edinet.download_uri)")
        fetched = _fetch_edinet(edinet, edinet_download_uri, manifest, state)
        if storage.exists(edinet_download_uri) and edinet_download_uri not in sources:
            sources.append(edinet_download_uri)
    files = list_files(sources) if sources else []
    edinet_meta = {**{u: r["edinet"] for u, r in manifest.items() if r.get("edinet")}, **fetched["by_uri"]}

    counts: Counter = Counter()
    jobs: list[FileJob] = []
    bad_names: list[tuple[str, int, str, str]] = []  # files quarantined for their name alone, never read
    for uri, size, version, fmt in files:
        if fmt is None:
            counts["skipped"] += 1  # _manifest.json, README, images, …
            continue
        counts["files"] += 1
        name = _printable(uri)
        row = manifest.get(name)
        if row is not None and row.get("size") == size and row.get("version") == version:
            counts["unchanged"] += 1
            continue
        if name != uri:
            bad_names.append((name, size, version, fmt))
            continue
        jobs.append(
            FileJob(
                uri,
                fmt,
                text_field,
                storage.endpoint_url(),
                max_file_bytes=max_file_mb << 20,
                max_line_bytes=max_line_mb << 20,
                size=size,
                edinet=edinet_meta.get(uri),
                columns=dict(cfg.metadata_columns),
                split=cfg.dataset_split,
            )
        )
    versions = {uri: (size, version, fmt) for uri, size, version, fmt in files}
    if counts["files"] == 0:
        raise _no_input(
            sources, files, edinet_download_uri if edinet is not None and edinet.enabled else None
        )

    with storage.output_folder(
        out_uri, staging_dir, meta={}, stage="ingest", inputs=inputs, overwrite=overwrite
    ) as out:
        batch = _Batch(out.path)
        try:
            for name, size, version, fmt in bad_names:
                counts["new" if name not in manifest else "changed"] += 1
                counts[f"files/{fmt}"] += 1
                reason = "file name is not valid UTF-8 (undecodable bytes shown as \\udcxx): rename the file"
                batch.bad({"source": name, "line": None, "reason": reason})
                manifest[name] = {
                    **dict.fromkeys(("sha256", "edinet")),
                    **{"uri": name, "size": size, "version": version, "status": "quarantined"},
                    **{"reason": reason, "docs": 0, "quarantined_lines": 0, "batch": out_uri},
                }
            results = map_ordered(parse_files, _shards(jobs, FILES_PER_SHARD), parallel)
            for shard in results:
                for res in shard:
                    old = manifest.get(res.uri)
                    size, version, fmt = versions[res.uri]
                    if old is not None and res.sha256 is not None and old.get("sha256") == res.sha256:
                        manifest[res.uri] = {**old, "size": size, "version": version}  # touched, same bytes
                        counts["unchanged"] += 1
                        continue
                    counts["new" if old is None else "changed"] += 1
                    counts[f"files/{fmt}"] += 1
                    for rec in res.records:
                        if old is not None:  # a new version of a file: its ids must not collide with the old
                            rec["id"] = f"{rec['id']}@{res.sha256[:8]}"
                        batch.doc(rec)
                    for row in res.quarantine:
                        batch.bad(row)
                    whole_file_bad = not res.records and bool(res.quarantine)
                    manifest[res.uri] = {
                        "uri": res.uri,
                        "size": size,
                        "version": version,
                        "sha256": res.sha256,
                        "status": "quarantined" if whole_file_bad else "ingested",
                        "reason": res.quarantine[0]["reason"] if whole_file_bad else None,
                        "docs": len(res.records),
                        "quarantined_lines": 0 if whole_file_bad else len(res.quarantine),
                        "batch": out_uri,
                        "edinet": edinet_meta.get(res.uri),
                    }
        finally:
            batch.close()
        if batch.counts["docs"] == 0 and not prev_uri:  # a first batch: there would be no corpus at all
            raise _all_quarantined(sources, batch, counts["files"])  # nothing is committed
        with open(out.path / MANIFEST_ROWS, "w", encoding="utf-8") as fh:
            for uri in sorted(manifest):
                fh.write(json.dumps(manifest[uri], ensure_ascii=False) + "\n")
        (out.path / "state.json").write_text(
            json.dumps({"listed_through": fetched["listed_through"], "prev": prev_uri}, indent=2)
        )
        result_counts = {
            "files": counts["files"],
            "new_files": counts["new"],
            "changed_files": counts["changed"],
            "unchanged_files": counts["unchanged"],
            "docs": batch.counts["docs"],
            "quarantined": batch.counts["quarantined"],
            "skipped": counts["skipped"],
            "manifest_files": len(manifest),
            **{f"files/{f}": counts[f"files/{f}"] for f in ALL_FORMATS},
            **{f"docs/{f}": batch.counts[f"docs/{f}"] for f in ALL_FORMATS},
            **{f"edinet/{k}": v for k, v in sorted(fetched["counts"].items())},
        }
        stats = {
            "counts": result_counts,
            "quarantine_reasons": dict(sorted(batch.reasons.items())),
            "sections": dict(batch.sections.most_common()),
            "chars": batch.chars,
            "sources": sources,
            "prev": prev_uri,
        }
        (out.path / "stats.json").write_text(
            json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        out.meta["counts"] = result_counts
        out.meta["metrics"] = {
            "ingest/files": float(counts["files"]),
            "ingest/new_files": float(counts["new"] + counts["changed"]),
            "ingest/docs": float(batch.counts["docs"]),
            "ingest/quarantined": float(batch.counts["quarantined"]),
            "ingest/chars": float(batch.chars),
        }
        out.meta["tables"] = {
            "ingest-quarantine": [
                {"reason": r, "count": n} for r, n in sorted(batch.reasons.items(), key=lambda kv: -kv[1])
            ]
        }
        out.meta["artifacts"] = ["stats.json", "quarantine.jsonl"]
    log.info("ingest: %s", json.dumps(result_counts, ensure_ascii=False))
    return out.result()


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.
