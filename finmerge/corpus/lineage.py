"""The corpus lineage: which ingest and dedup batch folders make up the corpus today.

A lineage is one corpus built with one set of parsing / cleaning / dedup rules (its id hashes those config
sections and the code versions of their modules; the sources are not part of it, so new filings extend the
same lineage). Its ``HEAD.json`` under ``<storage>/corpus/<lineage>/`` points at the latest ingest folder
(whose ``manifest.jsonl`` lists every source file seen) and the latest dedup folder (whose ``chain.json``
lists every kept batch). Batch folders are immutable and content-keyed; only HEAD moves, by an atomic
single-object write, after the folders it names are complete, so a crash leaves HEAD at the last good batch.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from finmerge.core import storage

HEAD = "HEAD.json"


class CorpusHead(BaseModel):
    lineage: str
    ingest: str | None = None  # latest ingest folder (its manifest.jsonl is cumulative)
    dedup: str | None = None  # latest dedup folder (its chain.json lists all kept batches)
    dedup_digest: str | None = None
    batches: int = 0
    # What produced this state: a run over the same inputs replays these, so every stage is a cache hit.
    inputs: str | None = None
    prev_ingest: str | None = None
    prev_dedup: str | None = None
    prev_dedup_digest: str | None = None
    updated: str | None = None


def head_uri(storage_uri: str, lineage: str) -> str:
    return storage.join(storage_uri, "corpus", lineage, HEAD)


def read_head(storage_uri: str, lineage: str) -> CorpusHead:
    uri = head_uri(storage_uri, lineage)
    if not storage.exists(uri):
        return CorpusHead(lineage=lineage)
    return CorpusHead.model_validate(storage.read_json(uri))


def write_head(storage_uri: str, head: CorpusHead, **fields) -> CorpusHead:
    """Move HEAD (one atomic object write) once the folders it names are complete."""
    fields["updated"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    new = head.model_copy(update=fields)
    storage.write_json(head_uri(storage_uri, head.lineage), new.model_dump())
    return new
