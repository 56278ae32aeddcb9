"""Clean and quality-filter Japanese documents (one JSONL record per filing section).

The text logic (normalisation, line removal, table policy, PII masking, measures, filters) and its policy live
in ``finmerge/corpus/textclean.py``; this stage streams the input, cuts it into shards of whole documents, maps
``textclean.clean_shard`` over them with ``finmerge.core.parallel.map_ordered`` (serial, a process pool or Dask, per
``ParallelConfig``) and writes the results in input order, so the output does not depend on the backend. Memory
holds the shards in flight, never the corpus.

Input: a ``.jsonl`` file or a folder holding ``docs.jsonl`` (``storage.docs_input``). Records of one document
share a ``doc_id`` and are consecutive (page headers / footers are detected across a document's sections).
Every record is checked as dedup checks it (``read_records``): a line that is not UTF-8, not JSON, not an object
with a string ``id``, or whose ``text`` is not a string stops the stage with a ValueError naming the file, the
line and the reason, before anything is written; so does an input without a single record
(``textio.EmptyInputError``).

Output folder: ``docs.jsonl`` (kept records, text cleaned, ``sha256`` recomputed), ``dropped.jsonl``
(``{"id","reason","value","detail","text_head"}``), ``stats.json`` (per filter, in order,
``{"threshold","kept","dropped","examples"}``: ``kept`` = records that reached the filter and passed it;
up to three examples). ``meta["tables"]["clean-filters"]`` holds the same per-filter rows for a Prefect table
artifact; ``meta["metrics"]`` the MLflow metrics.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from finmerge.config import CleanConfig, ParallelConfig
from finmerge.core import storage
from finmerge.core.parallel import map_ordered
from finmerge.corpus.minhash import parse_record
from finmerge.corpus.sources import unwritable
from finmerge.corpus.textclean import (
    FILTERS,
    MAX_EXAMPLES,
    Rules,
    ShardResult,
    clean_shard,
    group_key,
    read_word_list,
    threshold_text,
)
from finmerge.corpus.textio import EmptyInputError, decode_utf8, input_name, iter_lines

# A JSON escape of a surrogate (``\ud800``): only lines holding one can carry a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def load_rules(cfg: CleanConfig) -> Rules:
    """The config plus the NG words of ``cfg.ng_words_uri`` (read once here, shipped with every shard)."""
    words = list(cfg.ng_words)
    if cfg.ng_words_uri:
        words += read_word_list(decode_utf8(storage.read_bytes(cfg.ng_words_uri), cfg.ng_words_uri))
    return Rules(cfg, tuple(words))


def read_records(path: str | Path, source: str | None = None) -> Iterator[dict]:
    """The records of a local JSONL file, checked with dedup's own checks: ``textio.decode_utf8`` (UTF-8) and
    ``minhash.parse_record`` (a JSON object with a string ``id``, ``text`` a string or absent). Clean writes each
    record again, so a lone surrogate escape outside ``text`` is refused too (``text`` loses it in cleaning).
    Every error is a ValueError ``<source>: line <n>: <reason>`` (``source``: the file as the user named it,
    default ``path``)."""
    source = source or str(path)
    for lineno, _, line in iter_lines(path):
        rec = parse_record(source, lineno, decode_utf8(line, source, lineno))
        if _SURROGATE_ESCAPE.search(line) and (why := unwritable({**rec, "text": ""})):
            raise ValueError(f"{source}: line {lineno}: {why}")
        yield rec


def shards(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive records in lists of about ``size``, cut only between documents (``doc_id`` groups)."""
    shard: list[dict] = []
    last = None
    for rec in records:
        key = group_key(rec)
        if len(shard) >= size and key != last:
            yield shard
            shard = []
        shard.append(rec)
        last = key
    if shard:
        yield shard


def _example_text(ex: dict) -> str:
    return f"{ex['id']}: {ex['value']} {ex['head'][:40]}…"


def clean(
    in_uri: str,
    out_uri: str,
    cfg: CleanConfig,
    staging_dir: str,
    parallel: ParallelConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Clean and filter the documents of ``in_uri`` into ``out_uri`` (atomic folder); return the folder's result."""
    storage.check_output(out_uri, "clean", [in_uri], overwrite)
    parallel = parallel or ParallelConfig(backend="serial")
    src = storage.docs_input(in_uri, staging_dir)
    rules = load_rules(cfg)
    records = read_records(src, input_name(in_uri))
    first = next(records, None)
    if first is None:
        raise EmptyInputError(f"clean: {in_uri} holds no records: nothing to clean")
    records = itertools.chain([first], records)
    jobs = ((rules, shard) for shard in shards(records, parallel.shard_docs))
    total = ShardResult()
    started = time.perf_counter()
    with storage.output_folder(
        out_uri, staging_dir, meta={}, stage="clean", inputs=[in_uri], overwrite=overwrite
    ) as out:
        with (
            open(out.path / "docs.jsonl", "w", encoding="utf-8") as kept_fh,
            open(out.path / "dropped.jsonl", "w", encoding="utf-8") as drop_fh,
        ):
            for part in map_ordered(clean_shard, jobs, parallel):
                kept_fh.writelines(line + "\n" for line in part.kept)
                drop_fh.writelines(line + "\n" for line in part.dropped)
                _merge(total, part)
        seconds = time.perf_counter() - started
        stats = {
            f: {
                "threshold": threshold_text(f, cfg),
                "kept": total.passed[f],
                "dropped": total.failed[f],
                "examples": [
                    {"id": e["id"], "value": e["value"], "detail": e["detail"], "head": e["text_head"]}
                    for e in total.examples[f]
                ],
            }
            for f in FILTERS
        }
        (out.path / "stats.json").write_text(
            json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        out.meta.update(_report(total, stats, seconds))
    return out.result()


def _merge(total: ShardResult, part: ShardResult) -> None:
    total.counts.update(part.counts)
    for f in FILTERS:
        total.passed[f] += part.passed[f]
        total.failed[f] += part.failed[f]
        room = MAX_EXAMPLES - len(total.examples[f])
        total.examples[f].extend(part.examples[f][:room])


def _report(total: ShardResult, stats: dict, seconds: float) -> dict:
    c: Counter = total.counts
    n_in = c["in"]
    pii = {kind: float(c[kind]) for kind in ("email", "phone", "name")}
    return {
        "counts": {
            "in": n_in,
            "kept": c["kept"],
            "dropped": n_in - c["kept"],
            **{f"dropped/{f}": total.failed[f] for f in FILTERS},
        },
        "metrics": {
            "clean/kept_ratio": c["kept"] / n_in if n_in else 0.0,
            "clean/chars_in": float(c["chars_in"]),
            "clean/chars_out": float(c["chars_out"]),
            "clean/pii_masked": sum(pii.values()),
            **{f"clean/pii_masked/{kind}": n for kind, n in pii.items()},
            "clean/chars_per_s": c["chars_in"] / seconds if seconds > 0 else 0.0,
            **{f"clean/dropped/{f}": float(total.failed[f]) for f in FILTERS},
        },
        "artifacts": ["stats.json"],
        "tables": {
            "clean-filters": [
                {
                    "filter": f,
                    "threshold": st["threshold"],
                    "kept": st["kept"],
                    "dropped": st["dropped"],
                    "example": _example_text(st["examples"][0]) if st["examples"] else "",
                }
                for f, st in stats.items()
            ]
        },
    }


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.
