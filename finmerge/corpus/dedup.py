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

Counts: ``candidate_pairs`` (LSH), ``verified_pairs`` (exact Jaccard computed; a pair already in one cluster
is not checked again), ``confirmed_pairs`` (candidates whose two documents end in one cluster).
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finmerge.config import DedupConfig, ParallelConfig
from finmerge.core import storage
from finmerge.core.parallel import map_ordered
from finmerge.corpus import minhash
from finmerge.corpus.minhash import Segment, SignatureParams
from finmerge.corpus.textio import EmptyInputError, check_utf8_lines, input_name, iter_lines

CHAIN = "chain.json"
RETRACTED = "retracted.jsonl"
DROPPED = "dropped.jsonl"


def params_of(cfg: DedupConfig) -> SignatureParams:
    return SignatureParams(ngram=cfg.ngram, bands=cfg.bands, rows=cfg.rows, seed=cfg.seed)


# ----------------------------------------------------------------------------------------------------------
# Pass 1: scan and sign


@dataclass
class Batch:
    """Per-document arrays of one JSONL file, in line order (no texts): byte offset of the line, filing date
    (YYYYMMDD), text length, exact key ``(n, 16)`` and band keys ``(n, bands)``."""

    path: Path
    ids: list[str]
    offset: np.ndarray
    date: np.ndarray
    chars: np.ndarray
    exact: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def scan(path: Path, params: SignatureParams, parallel: ParallelConfig, source: str | None = None) -> Batch:
    """Read ``path`` once; its lines are parsed and signed shard by shard on the configured backend. Errors
    name ``source`` (default: ``path``), the line and the reason (``minhash.parse_record``); a line that is not
    UTF-8 is a ``textio.DecodeError`` saying so."""
    offsets = array("q")  # compact while growing
    source = source or str(path)

    def jobs() -> Iterator[tuple[str, list[tuple[int, bytes]], SignatureParams]]:
        lines: list[tuple[int, bytes]] = []
        for lineno, at, line in iter_lines(path):
            offsets.append(at)
            lines.append((lineno, line))
            if len(lines) >= parallel.shard_docs:
                yield source, lines, params
                lines = []
        if lines:
            yield source, lines, params

    try:
        parts = list(map_ordered(minhash.sign_shard, jobs(), parallel))
    except UnicodeDecodeError:  # json.loads met a byte that is not UTF-8; it does not know the line
        check_utf8_lines(path, source)  # raises the DecodeError naming the line
        raise
    return Batch(
        path,
        [i for p in parts for i in p.ids],
        np.frombuffer(offsets, dtype=np.int64),
        np.concatenate([p.date for p in parts] or [np.zeros(0, np.int64)]),
        np.concatenate([p.chars for p in parts] or [np.zeros(0, np.int64)]),
        np.concatenate([p.exact for p in parts] or [np.zeros((0, minhash.EXACT_BYTES), np.uint8)]),
        np.concatenate([p.keys for p in parts] or [np.zeros((0, params.bands), np.uint64)]),
    )


def _plain_jsonl(path: Path, staging_dir: str) -> Path:
    """Byte offsets need a seekable plain file: a gzipped input is unpacked into the staging area once."""
    if path.suffix != ".gz":
        return path
    dest = Path(staging_dir).expanduser().resolve() / "inputs" / storage.sha256_file(path)[:32] / "docs.jsonl"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".partial")
        with gzip.open(path, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(dest)
    return dest


# ----------------------------------------------------------------------------------------------------------
# The lineage and its index


@dataclass
class Folder:
    uri: str
    digest: str
    path: Path  # local copy


def _staged(uri: str, digest: str | None, staging_dir: str) -> Folder:
    manifest = storage.read_manifest(uri)
    if manifest is None:
        raise storage.StorageError(f"{uri}: missing {storage.MANIFEST}; not a complete dedup folder")
    if digest is not None and manifest["digest"] != digest:
        raise storage.StorageError(
            f"{uri}: content changed since it joined the lineage (digest {manifest['digest'][:12]}, "
            f"chain says {digest[:12]})"
        )
    return Folder(storage.normalize(uri), manifest["digest"], storage.stage_folder(uri, staging_dir))


def lineage(uri: str, staging_dir: str) -> list[Folder]:
    """The dedup folders of the lineage ending at ``uri`` (itself included), oldest first, each verified."""
    last = _staged(uri, None, staging_dir)
    chain_file = last.path / CHAIN
    if not chain_file.exists():
        raise storage.StorageError(f"{uri}: no {CHAIN}; not a dedup folder")
    entries = json.loads(chain_file.read_text(encoding="utf-8"))
    return [_staged(e["uri"], e["digest"], staging_dir) for e in entries[:-1]] + [last]


@dataclass
class Index:
    """What earlier batches kept: their segments, concatenated per-document arrays, and who is still alive."""

    folders: list[Folder] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    base: list[int] = field(default_factory=list)  # global number of each segment's first row
    ids: list[str] = field(default_factory=list)
    folder_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    date: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    chars: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    exact: np.ndarray = field(default_factory=lambda: np.zeros((0, minhash.EXACT_BYTES), np.uint8))
    exact_sorted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # alive docs' key prefix
    exact_docs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ... and their numbers

    def __len__(self) -> int:
        return len(self.ids)


def load_index(folders: list[Folder], params: SignatureParams, parallel: ParallelConfig) -> Index:
    index = Index(folders=folders)
    for f in folders:
        seg = Segment.load(f.path / "index")
        if seg.params != params:  # built with other signature settings: sign its documents again
            seg = _resign(f.path / storage.DOCS, params, parallel)
        index.base.append(len(index.ids))
        index.segments.append(seg)
        index.ids.extend(seg.ids)
    n = len(index.ids)
    index.folder_of = np.repeat(np.arange(len(folders)), [len(s) for s in index.segments]).astype(np.int64)
    index.row = np.concatenate([np.arange(len(s)) for s in index.segments] or [np.zeros(0, np.int64)])
    index.date = np.concatenate([s.date for s in index.segments] or [np.zeros(0, np.int32)]).astype(np.int64)
    index.chars = np.concatenate([s.chars for s in index.segments] or [np.zeros(0, np.int64)])
    index.alive = np.ones(n, dtype=bool)
    by_digest = {f.digest: k for k, f in enumerate(folders)}
    for f in folders:
        retracted = f.path / RETRACTED
        if not retracted.exists():
            continue
        rows: dict[int, dict[str, int]] = {}
        for r in storage.iter_jsonl(retracted):
            k = by_digest.get(r["folder_digest"])
            if k is None:
                continue
            if k not in rows:
                rows[k] = {i: j for j, i in enumerate(index.segments[k].ids)}
            index.alive[index.base[k] + rows[k][r["id"]]] = False
    index.exact = np.concatenate([s.exact for s in index.segments] or [index.exact])
    live = np.flatnonzero(index.alive)
    prefix = _prefix64(index.exact[live])
    order = np.argsort(prefix, kind="stable")
    index.exact_sorted, index.exact_docs = prefix[order], live[order]
    return index


def _prefix64(exact: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each exact key as one integer (a sort key; equality is checked on all 16)."""
    return np.ascontiguousarray(exact[:, :8]).view("<u8").ravel()


def exact_matches(index: Index, exact: np.ndarray) -> np.ndarray:
    """For each exact key, the alive index document with the same key, or -1."""
    if index.exact_sorted.size == 0 or exact.shape[0] == 0:
        return np.full(exact.shape[0], -1, dtype=np.int64)
    q = _prefix64(exact)
    pos = np.minimum(np.searchsorted(index.exact_sorted, q), index.exact_sorted.size - 1)
    docs = index.exact_docs[pos]
    same = (index.exact_sorted[pos] == q) & (index.exact[docs] == exact).all(axis=1)
    return np.where(same, docs, -1)


def _resign(docs: Path, params: SignatureParams, parallel: ParallelConfig) -> Segment:
    b = scan(docs, params, parallel)
    return Segment.build(params, b.ids, b.exact, b.date, b.chars, b.offset, b.keys)


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
    src = _plain_jsonl(storage.docs_input(in_uri, staging_dir), staging_dir)
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
        kept, out_offsets, by_section, near_j = [], [], Counter(), []
        with (
            open(out.path / storage.DOCS, "wb") as kept_fh,
            open(out.path / DROPPED, "w", encoding="utf-8") as drop_fh,
        ):
            written = 0
            for i, (_, _, line) in enumerate(iter_lines(batch.path)):
                if i not in plan.dropped:
                    line = line if line.endswith(b"\n") else line + b"\n"
                    kept.append(i)
                    out_offsets.append(written)
                    kept_fh.write(line)
                    written += len(line)
                    continue
                survivor, kind, j = plan.dropped[i]
                rec = json.loads(line)
                by_section[rec.get("section") or "(none)"] += 1
                if kind == "near":
                    near_j.append(j)
                rec.update(duplicate_of=id_of(survivor), kind=kind, jaccard=j)
                drop_fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        with open(out.path / RETRACTED, "w", encoding="utf-8") as fh:
            for g, survivor, kind, j in plan.retracted:
                f = index.folders[int(index.folder_of[g])]
                row = {"id": index.ids[g], "folder": f.uri, "folder_digest": f.digest}
                row.update(duplicate_of=id_of(survivor), kind=kind, jaccard=j)
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        k = np.asarray(kept, dtype=np.int64)
        Segment.build(
            params,
            [batch.ids[i] for i in kept],
            batch.exact[k],
            batch.date[k],
            batch.chars[k],
            out_offsets,
            batch.keys[k],
        ).save(out.path / "index")
        chain = [{"uri": f.uri, "digest": f.digest} for f in folders]
        chain.append({"uri": storage.normalize(out_uri), "digest": None})
        (out.path / CHAIN).write_text(json.dumps(chain, ensure_ascii=False, indent=2), encoding="utf-8")

        c = plan.counts
        exact = sum(1 for _, kind, _ in plan.dropped.values() if kind == "exact")
        counts = {
            "in": n,
            "kept": len(kept),
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
            "dropped_by_section": dict(sorted(by_section.items())),
        }
        (out.path / "stats.json").write_text(
            json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        seconds = time.perf_counter() - started
        chars = float(batch.chars.sum())
        out.meta["counts"] = counts
        out.meta["metrics"] = {
            "dedup/kept_ratio": len(kept) / n if n else 0.0,
            "dedup/exact_dups": float(exact),
            "dedup/near_dups": float(counts["near_dups"]),
            "dedup/retracted": float(counts["retracted"]),
            "dedup/candidate_pairs": float(counts["candidate_pairs"]),
            "dedup/confirmed_pairs": float(counts["confirmed_pairs"]),
            "dedup/verified_pairs": float(counts["verified_pairs"]),
            "dedup/index_docs": float(counts["index_docs"]),
            "dedup/seconds": seconds,
            "dedup/seconds_scan": t_scan,
            "dedup/mchars_per_s": chars / seconds / 1e6 if seconds > 0 else 0.0,
        }
        out.meta["tables"] = {
            "dedup": [
                {"measure": "documents in", "value": n},
                {"measure": "exact duplicates dropped", "value": exact},
                {"measure": "near duplicates dropped", "value": counts["near_dups"]},
                {"measure": "earlier documents retracted", "value": counts["retracted"]},
                {"measure": "kept", "value": len(kept)},
                {"measure": "candidate pairs (LSH)", "value": counts["candidate_pairs"]},
                {"measure": "confirmed pairs (one cluster)", "value": counts["confirmed_pairs"]},
                {"measure": "pairs checked by exact Jaccard", "value": counts["verified_pairs"]},
                {"measure": "documents indexed by earlier batches", "value": counts["index_docs"]},
            ]
        }
        out.meta["artifacts"] = ["stats.json"]
    return out.result()


def iter_kept(uri: str, staging_dir: str) -> Iterator[dict]:
    """The deduplicated corpus of the lineage ending at dedup folder ``uri``: each folder's docs.jsonl in
    chain order, minus the documents a later folder retracted."""
    folders = lineage(uri, staging_dir)
    gone: set[tuple[str, str]] = set()
    for f in folders:
        if (f.path / RETRACTED).exists():
            gone.update((r["folder_digest"], r["id"]) for r in storage.iter_jsonl(f.path / RETRACTED))
    for f in folders:
        for rec in storage.iter_jsonl(f.path / storage.DOCS):
            if (f.digest, rec["id"]) not in gone:
                yield rec


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.
