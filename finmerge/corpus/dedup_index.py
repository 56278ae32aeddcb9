"""Per-document signature arrays for dedup: a batch scanned from JSONL, and the index of what the earlier
batches of a lineage kept (their ``index/`` segments, minus what later folders retracted).

The lineage, the index and the output folder layout are described in ``finmerge/corpus/dedup.py``.
"""

from __future__ import annotations

import gzip
import json
import shutil
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finmerge.config import DedupConfig, ParallelConfig
from finmerge.core import storage
from finmerge.core.parallel import map_ordered
from finmerge.corpus import minhash
from finmerge.corpus.minhash import Segment, SignatureParams
from finmerge.corpus.textio import check_utf8_lines, iter_lines

CHAIN = "chain.json"
RETRACTED = "retracted.jsonl"


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


def plain_jsonl(path: Path, staging_dir: str) -> Path:
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
