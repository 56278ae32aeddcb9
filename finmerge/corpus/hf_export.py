"""The kept documents of a dedup folder as a Hugging Face parquet dataset with a dataset card.

``write_dataset`` streams the folder's ``docs.jsonl`` (the training input, unchanged) into
``data/train-NNNNN-of-MMMMM.parquet`` (zstd, one string column per schema field, everything else as a JSON
string column ``meta``, so rows of any source share one schema) and writes ``README.md``: YAML (config
``default`` on ``data/train-*.parquet``, features, license, language) and a description with the counts, the
inputs' digests and how the documents were cleaned and deduplicated. So ``load_dataset(<folder>)`` and
``load_dataset("parquet", data_files=<folder>/data/train-*.parquet)`` give the kept documents.

A dedup folder holds one batch of a corpus lineage (``chain.json``): the card says which, and that the whole
corpus is the union of the chain's folders minus what later folders retracted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from finmerge.core import storage
from finmerge.corpus.sources import SCHEMA_META
from finmerge.corpus.textio import iter_lines

DATA_DIR = "data"
CARD = "README.md"
COLUMNS = ("id", "text", "source", "format", *SCHEMA_META, "sha256", "meta")  # the ingest record schema
SCHEMA = pa.schema([(c, pa.string()) for c in COLUMNS])
SHARD_BYTES = 256 << 20  # of JSONL per shard: Hugging Face suggests parquet files of a few hundred MB at most
BATCH_ROWS = 2048


@dataclass
class CardFacts:
    """What the card says beyond the documents themselves."""

    counts: dict
    input_uri: str
    input_digest: str | None
    input_stage: str | None
    chain: list[dict] = field(
        default_factory=list
    )  # [{"uri", "digest"}] of earlier dedup folders, oldest first
    config: dict = field(default_factory=dict)


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def to_row(rec: dict) -> dict:
    """A document record as a row of the fixed schema: the fields other than the schema's go into ``meta``."""
    row = {c: _text(rec.get(c)) for c in COLUMNS if c != "meta"}
    rest = {k: v for k, v in rec.items() if k not in COLUMNS}
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    if rec.get("meta") is not None and not isinstance(rec.get("meta"), dict):
        rest["meta"] = rec["meta"]
    merged = {**meta, **rest}
    row["meta"] = json.dumps(merged, ensure_ascii=False) if merged else None
    return row


def shard_names(n: int) -> list[str]:
    return [f"{DATA_DIR}/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def write_dataset(folder: Path, docs: Path, rows: int, facts: CardFacts) -> list[str]:
    """Write ``docs`` (``rows`` JSONL records) under ``folder`` as parquet shards plus the card; returns the
    relative names of the files written."""
    n = max(1, math.ceil(docs.stat().st_size / SHARD_BYTES))
    names = shard_names(n)
    per_shard = max(1, math.ceil(rows / n))
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    writers = [pq.ParquetWriter(folder / name, SCHEMA, compression="zstd") for name in names]
    shard, in_shard, buffer = 0, 0, []

    def flush() -> None:
        if buffer:
            writers[shard].write_table(pa.Table.from_pylist(buffer, schema=SCHEMA))
            buffer.clear()

    try:
        for _, _, line in iter_lines(docs):
            if in_shard == per_shard and shard < n - 1:
                flush()
                shard, in_shard = shard + 1, 0
            buffer.append(to_row(json.loads(line)))
            in_shard += 1
            if len(buffer) >= BATCH_ROWS:
                flush()
        flush()
    finally:
        for w in writers:
            w.close()  # a shard given no rows is still a valid, empty parquet file
    (folder / CARD).write_text(card(facts, rows, names), encoding="utf-8")
    return [*names, CARD]


def _size_category(rows: int) -> str:
    for bound, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < bound:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


def card(facts: CardFacts, rows: int, names: list[str]) -> str:
    header = {
        "license": "other",
        "language": ["ja"],
        "pretty_name": "finmerge deduplicated corpus batch",
        "size_categories": [_size_category(rows)],
        "task_categories": ["text-generation"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": f"{DATA_DIR}/train-*.parquet"}],
            }
        ],
        "dataset_info": {"features": [{"name": c, "dtype": "string"} for c in COLUMNS]},
    }
    c, cfg = facts.counts, facts.config
    if facts.input_stage == "clean":
        cleaned = "cleaned by the finmerge `clean` stage (its filters, counts and examples: that folder's `stats.json`)"
    elif facts.input_stage:
        cleaned = f"a finmerge `{facts.input_stage}` folder, not cleaned by finmerge"
    else:
        cleaned = "not a finmerge folder: taken as given, not cleaned by finmerge"
    earlier = "".join(f"\n  - `{e['uri']}` (digest `{e['digest']}`)" for e in facts.chain)
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        "# finmerge deduplicated corpus (one batch)",
        "",
        "Japanese securities-report sections (EDINET filings and other sources), one document per row: `id`, "
        "`text`, and the metadata `source`, `format`, `doc_id`, `edinet_code`, `company`, `filing_date`, "
        "`section`, `sha256` (of the text); any other field of a source is in `meta` (a JSON object as text).",
        "",
        "## Counts",
        "",
        f"- documents in: {c.get('in')}; kept: {rows} (in {len(names)} parquet file(s))",
        f"- dropped as exact duplicates: {c.get('exact_dups')}; as near duplicates: {c.get('near_dups')}",
        f"- documents of earlier batches retracted by this one: {c.get('retracted')}",
        "",
        "## Sources",
        "",
        f"- input: `{facts.input_uri}` (digest `{facts.input_digest}`), {cleaned}.",
        f"- earlier batches of this lineage: {len(facts.chain)}{earlier}",
        "",
        "## How it was deduplicated",
        "",
        "Exact duplicates share the sha256 of the whitespace-normalised text; near duplicates are found by "
        f"MinHash-LSH on character {cfg.get('ngram')}-grams ({cfg.get('bands')} bands × {cfg.get('rows')} rows) "
        + (
            f"and confirmed by exact Jaccard ≥ {cfg.get('threshold')}. "
            if cfg.get("verify")
            else "(every candidate pair counts). "
        )
        + f"One document per duplicate cluster is kept (`{cfg.get('keep')}`), across this batch and every earlier "
        "one: the whole corpus is the union of the lineage's folders (`chain.json`) minus the documents listed in "
        "their `retracted.jsonl`.",
        "",
        "This is the same content as `docs.jsonl` in this folder (which the tokenizer reads); "
        "`dropped.jsonl` names what each dropped document duplicates.",
        "",
    ]
    return "\n".join(lines)


def input_facts(in_uri: str, docs: Path) -> tuple[str | None, str | None]:
    """(digest, stage) of the dedup input: a finmerge folder's manifest digest, else the file's sha256."""
    manifest = storage.read_manifest(in_uri) if not in_uri.endswith((".jsonl", ".jsonl.gz")) else None
    if manifest is not None:
        return manifest.get("digest"), manifest.get("stage")
    return storage.sha256_file(docs), None
