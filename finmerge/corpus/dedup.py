"""Exact and near-duplicate removal, incremental over the batches of a corpus lineage.

**Detection** (primitives in ``finmerge/corpus/minhash.py``):

1. **Exact**: documents with the same exact key (sha256 of the dedup key: whitespace collapsed, none kept next
   to Japanese characters) are one unit; only one document of a unit is signed into the LSH.
2. **Near**: MinHash LSH on character ``cfg.ngram``-grams (one-permutation hashing, ``cfg.bands`` ×
   ``cfg.rows`` values). Documents sharing a band key are candidate pairs; with ``cfg.verify`` a pair is linked
   only when the exact Jaccard of the two n-gram sets is ``>= cfg.threshold`` (the texts are read back from
   disk by byte offset), without it every candidate pair is linked (as Swallow / datatrove do).
3. **Clusters**: union-find over exact units and linked pairs; one document per cluster survives.

**Keep policy** (``cfg.keep``): ``earliest`` = earliest ``filing_date`` (undated last), then input order;
``longest`` = most characters, then input order. Earlier batches count as earlier in input order.

**Incremental** (``prev_uri`` = the previous dedup folder of the lineage): the documents kept by every earlier
batch are an index (each folder's ``index/``, minus what later folders retracted). New documents are linked to
indexed ones exactly as to each other; pairs of indexed documents are never re-examined. The keep policy
then picks one survivor per cluster among new and indexed members alike: new members that lose are dropped
(``duplicate_of`` = the survivor), indexed members that lose are **retracted** (e.g. a back-filled filing
older than the kept copy wins over it). So the lineage ends as one pass over all batches would, except that
a cluster is never split or merged through links between two earlier batches.

**Streaming**: pass 1 reads the input in shards of ``parallel.shard_docs`` and signs them with
``finmerge.core.parallel.map_ordered`` (process pool or Dask); only compact per-document arrays stay in memory.
Pass 2 streams the input again: kept records are copied byte for byte. Outputs do not depend on the backend.

Output folder:

* ``docs.jsonl``: kept records of this batch, input order.
* ``dropped.jsonl``: each dropped record in full plus ``duplicate_of`` (the surviving id), ``kind``
  (``exact``: same dedup key; else ``near``) and ``jaccard`` (exact, to the survivor).
* ``retracted.jsonl``: ``{"id", "folder", "folder_digest", "duplicate_of", "kind", "jaccard"}`` of documents
  kept by an earlier folder that this batch supersedes.
* ``index/``: this batch's index segment (``finmerge.corpus.minhash.Segment``: exact keys, filing dates, lengths,
  byte offsets into this folder's docs.jsonl, sorted band keys, ids, signature params). A segment built with
  other signature params is recomputed from its docs.jsonl when loaded.
* ``chain.json``: ``[{"uri", "digest"}, …]`` of every dedup folder of the lineage, oldest first; the last
  entry is this folder itself (``digest`` null: it is not known while writing; read it from the manifest).
* ``stats.json``: counts, config, LSH detection curve. Timings go to the manifest meta only.
* ``data/train-NNNNN-of-MMMMM.parquet`` + ``README.md``: the kept records again, as a Hugging Face parquet
  dataset with its dataset card (``finmerge/corpus/hf_export.py``); ``load_dataset(<folder>)`` reads it.

Counts: ``candidate_pairs`` (LSH), ``verified_pairs`` (exact Jaccard computed; a pair already in one cluster
is not checked again), ``confirmed_pairs`` (candidates whose two documents end in one cluster).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finmerge.config import DedupConfig, ParallelConfig
from finmerge.core import storage
from finmerge.corpus import hf_export, minhash
from finmerge.corpus.dedup_index import (  # noqa: F401 - CHAIN, RETRACTED, iter_kept re-exported for callers
    CHAIN,
    RETRACTED,
    Batch,
    Index,
    exact_matches,
    iter_kept,
    lineage,
    load_index,
    params_of,
    plain_jsonl,
    scan,
)
from finmerge.corpus.minhash import Segment
from finmerge.corpus.textio import EmptyInputError, input_name, iter_lines

DROPPED = "dropped.jsonl"
# Counts logged as metrics ``dedup/<name>``, and the rows of the report table (measure, count).
COUNT_METRICS = (
    "exact_dups",
    "near_dups",
    "retracted",
    "candidate_pairs",
    "confirmed_pairs",
    "verified_pairs",
    "index_docs",
)
TABLE_ROWS = (
    ("documents in", "in"),
    ("exact duplicates dropped", "exact_dups"),
    ("near duplicates dropped", "near_dups"),
    ("earlier documents retracted", "retracted"),
    ("kept", "kept"),
    ("candidate pairs (LSH)", "candidate_pairs"),
    ("confirmed pairs (one cluster)", "confirmed_pairs"),
    ("pairs checked by exact Jaccard", "verified_pairs"),
    ("documents indexed by earlier batches", "index_docs"),
)


# ----------------------------------------------------------------------------------------------------------
# Resolution: links, clusters, survivors


@dataclass
class Plan:
    dropped: dict[int, tuple[int, str, float]]  # new doc -> (survivor node, kind, jaccard)
    retracted: list[tuple[int, int, str, float]]  # (index doc, survivor node, kind, jaccard)
    counts: Counter


class TextSource:
    """Texts by node (new docs 0..n-1, index docs n+g), read back from disk by byte offset."""

    def __init__(self, batch: Batch, index: Index):
        self.batch, self.index = batch, index
        self.files: dict[Path, object] = {}

    def __call__(self, node: int) -> str:
        n = len(self.batch)
        if node < n:
            path, offset = self.batch.path, int(self.batch.offset[node])
        else:
            g = node - n
            k = int(self.index.folder_of[g])
            path = self.index.folders[k].path / storage.DOCS
            offset = int(self.index.segments[k].offset[self.index.row[g]])
        fh = self.files.get(path)
        if fh is None:
            fh = self.files[path] = open(path, "rb")
        fh.seek(offset)
        return json.loads(fh.readline()).get("text") or ""

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def resolve(batch: Batch, index: Index, cfg: DedupConfig, texts: TextSource) -> Plan:
    n, counts = len(batch), Counter()
    uf = minhash.UnionFind()
    exact_bytes = batch.exact.tobytes()
    w = minhash.EXACT_BYTES

    def key_of(node: int) -> bytes:
        if node < n:
            return exact_bytes[node * w : (node + 1) * w]
        return index.exact[node - n].tobytes()

    first: dict[bytes, int] = {}
    reps = []
    for i in range(n):
        r = first.setdefault(key_of(i), i)
        if r == i:
            reps.append(i)
        else:
            uf.union(r, i)
    reps_arr = np.asarray(reps, dtype=np.int64)
    for r, g in zip(reps, exact_matches(index, batch.exact[reps_arr]).tolist(), strict=True):
        if g >= 0:
            uf.union(r, n + g)
            counts["exact_links_to_index"] += 1

    keys = batch.keys[reps_arr]
    found = [reps_arr[minhash.pairs_within(keys)]]
    for k, seg in enumerate(index.segments):
        p = minhash.pairs_against(keys, seg.lsh_keys, seg.lsh_docs)
        g = index.base[k] + p[:, 1]
        ok = index.alive[g]
        found.append(np.stack([reps_arr[p[ok, 0]], n + g[ok]], axis=1))
    candidates = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    counts["candidate_pairs"] = len(candidates)
    shingles = minhash.ShingleCache(texts, cfg.ngram, cfg.seed)
    pairs = candidates.tolist()
    for a, b in pairs:
        if uf.find(a) == uf.find(b):  # already one cluster (exact copies, or through other pairs)
            continue
        if cfg.verify:
            counts["verified_pairs"] += 1
            if minhash.jaccard(shingles(a), shingles(b)) < cfg.threshold:
                continue
        uf.union(a, b)
    counts["confirmed_pairs"] = sum(uf.find(a) == uf.find(b) for a, b in pairs)

    order_new = len(index.folders)

    def rank(node: int) -> tuple:
        if node < n:
            date, chars, pos = int(batch.date[node]), int(batch.chars[node]), (order_new, node)
        else:
            g = node - n
            date, chars, pos = (
                int(index.date[g]),
                int(index.chars[g]),
                (int(index.folder_of[g]), int(index.row[g])),
            )
        return (date, *pos) if cfg.keep == "earliest" else (-chars, *pos)

    def link(node: int, survivor: int) -> tuple[str, float]:
        if key_of(node) == key_of(survivor):
            return "exact", 1.0
        return "near", round(minhash.jaccard(shingles(node), shingles(survivor)), 4)

    dropped: dict[int, tuple[int, str, float]] = {}
    retracted: list[tuple[int, int, str, float]] = []
    for members in uf.groups().values():
        if len(members) < 2:
            continue
        counts["duplicate_clusters"] += 1
        survivor = min(members, key=rank)
        for m in members:
            if m == survivor:
                continue
            kind, j = link(m, survivor)
            if m < n:
                dropped[m] = (survivor, kind, j)
            else:
                retracted.append((m - n, survivor, kind, j))
    counts["unique_texts"] = len(reps)
    return Plan(dropped, sorted(retracted), counts)


# ----------------------------------------------------------------------------------------------------------
# The stage


def dedup(
    in_uri: str,
    out_uri: str,
    cfg: DedupConfig,
    staging_dir: str,
    prev_uri: str | None = None,
    parallel: ParallelConfig | None = None,
    overwrite: bool = False,
) -> dict:
    """Deduplicate the documents of ``in_uri`` against themselves and the lineage ending at ``prev_uri``
    into ``out_uri`` (atomic folder); return the folder's result."""
    inputs = [in_uri, *([prev_uri] if prev_uri else [])]
    storage.check_output(out_uri, "dedup", inputs, overwrite)
    started = time.perf_counter()
    parallel = parallel or ParallelConfig(backend="serial")
    params = params_of(cfg)
    folders = lineage(prev_uri, staging_dir) if prev_uri else []
    if any(f.uri == storage.normalize(out_uri) for f in folders):
        raise ValueError(f"{out_uri}: already part of the lineage it would extend")
    index = load_index(folders, params, parallel)
    src = plain_jsonl(storage.docs_input(in_uri, staging_dir), staging_dir)
    batch = scan(src, params, parallel, source=input_name(in_uri))
    if len(batch) == 0 and not prev_uri:  # with prev_uri: nothing new in this batch, the lineage goes on
        raise EmptyInputError(f"dedup: {in_uri} holds no records: a corpus needs at least one document")
    t_scan = time.perf_counter() - started
    texts = TextSource(batch, index)
    try:
        plan = resolve(batch, index, cfg, texts)
    finally:
        texts.close()
    n = len(batch)

    def id_of(node: int) -> str:
        return batch.ids[node] if node < n else index.ids[node - n]

    with storage.output_folder(
        out_uri, staging_dir, meta={}, stage="dedup", inputs=inputs, overwrite=overwrite
    ) as out:
        written = _write_batch(out.path, batch, plan, id_of)
        with open(out.path / RETRACTED, "w", encoding="utf-8") as fh:
            for g, survivor, kind, j in plan.retracted:
                f = index.folders[int(index.folder_of[g])]
                row = {"id": index.ids[g], "folder": f.uri, "folder_digest": f.digest}
                row.update(duplicate_of=id_of(survivor), kind=kind, jaccard=j)
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        k = np.asarray(written.kept, dtype=np.int64)
        Segment.build(
            params,
            [batch.ids[i] for i in written.kept],
            batch.exact[k],
            batch.date[k],
            batch.chars[k],
            written.offsets,
            batch.keys[k],
        ).save(out.path / "index")
        chain = [{"uri": f.uri, "digest": f.digest} for f in folders]
        chain.append({"uri": storage.normalize(out_uri), "digest": None})
        (out.path / CHAIN).write_text(json.dumps(chain, ensure_ascii=False, indent=2), encoding="utf-8")

        c = plan.counts
        exact = sum(1 for _, kind, _ in plan.dropped.values() if kind == "exact")
        counts = {
            "in": n,
            "kept": len(written.kept),
            "exact_dups": exact,
            "near_dups": len(plan.dropped) - exact,
            "retracted": len(plan.retracted),
            "unique_texts": c["unique_texts"],
            "candidate_pairs": c["candidate_pairs"],
            "confirmed_pairs": c["confirmed_pairs"],
            "verified_pairs": c["verified_pairs"],
            "index_docs": int(index.alive.sum()),
            "batches": len(folders) + 1,
        }
        near_j = written.near_jaccard
        stats = {
            **counts,
            "duplicate_clusters": c["duplicate_clusters"],
            "exact_links_to_index": c["exact_links_to_index"],
            "config": cfg.model_dump(),
            "signature": params.to_json(),
            "detection_threshold": round((1 / cfg.bands) ** (1 / cfg.rows), 4),
            "detection_probability": {
                str(j): round(minhash.detection_probability(j, cfg.bands, cfg.rows), 4)
                for j in (0.5, 0.7, 0.8, 0.85, 0.9, 0.95)
            },
            "near_jaccard": {
                "min": min(near_j) if near_j else None,
                "mean": round(sum(near_j) / len(near_j), 4) if near_j else None,
            },
            "dropped_by_section": dict(sorted(written.by_section.items())),
        }
        (out.path / "stats.json").write_text(
            json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        digest, stage = hf_export.input_facts(in_uri, src)
        facts = hf_export.CardFacts(counts, in_uri, digest, stage, chain[:-1], cfg.model_dump())
        dataset_files = hf_export.write_dataset(out.path, out.path / storage.DOCS, len(written.kept), facts)
        seconds = time.perf_counter() - started
        chars = float(batch.chars.sum())
        out.meta["counts"] = counts
        out.meta["metrics"] = {
            "dedup/kept_ratio": len(written.kept) / n if n else 0.0,
            **{f"dedup/{name}": float(counts[name]) for name in COUNT_METRICS},
            "dedup/seconds": seconds,
            "dedup/seconds_scan": t_scan,
            "dedup/mchars_per_s": chars / seconds / 1e6 if seconds > 0 else 0.0,
        }
        out.meta["tables"] = {"dedup": [{"measure": m, "value": counts[name]} for m, name in TABLE_ROWS]}
        out.meta["artifacts"] = ["stats.json", hf_export.CARD]
        out.meta["dataset"] = {"files": dataset_files, "rows": len(written.kept)}
    return out.result()


@dataclass
class Written:
    """What pass 2 wrote: the kept line numbers, their byte offsets in docs.jsonl, and drop statistics."""

    kept: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    by_section: Counter = field(default_factory=Counter)
    near_jaccard: list[float] = field(default_factory=list)


def _write_batch(folder: Path, batch: Batch, plan: Plan, id_of: Callable[[int], str]) -> Written:
    """Pass 2: kept records copied byte for byte to docs.jsonl, dropped ones annotated in dropped.jsonl."""
    out = Written()
    with (
        open(folder / storage.DOCS, "wb") as kept_fh,
        open(folder / DROPPED, "w", encoding="utf-8") as drop_fh,
    ):
        written = 0
        for i, (_, _, line) in enumerate(iter_lines(batch.path)):
            if i not in plan.dropped:
                line = line if line.endswith(b"\n") else line + b"\n"
                out.kept.append(i)
                out.offsets.append(written)
                kept_fh.write(line)
                written += len(line)
                continue
            survivor, kind, j = plan.dropped[i]
            rec = json.loads(line)
            out.by_section[rec.get("section") or "(none)"] += 1
            if kind == "near":
                out.near_jaccard.append(j)
            rec.update(duplicate_of=id_of(survivor), kind=kind, jaccard=j)
            drop_fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out
