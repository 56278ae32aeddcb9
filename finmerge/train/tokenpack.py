"""Token packing without Prefect: encode document chunks, cut the stream into blocks, write and read shards.

Workers of ``finmerge.core.parallel.map_ordered`` import this module, so it stays free of Prefect / MLflow. A packed
folder holds ``shard-00000.npy``, ``shard-00001.npy``, … (2-D, ``shard_blocks`` rows of ``seq_len`` at most)
and ``index.json`` describing them; ``PackedBlocks`` reads it back through memory maps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from finmerge.core import storage
from finmerge.models import loading as modelio

INDEX = "index.json"

# One tokenizer per (folder, trust_remote_code) per process: loading it costs far more than a chunk.
_TOKENIZERS: dict[tuple[str, bool], Any] = {}


def cached_tokenizer(folder: str | Path, trust_remote_code: bool = False):
    key = (str(folder), trust_remote_code)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = modelio.load_tokenizer(Path(folder), trust_remote_code)
    return _TOKENIZERS[key]


def token_dtype(tokenizer) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32)


def require_eos(tokenizer, where: str = "tokenizer") -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{where}: tokenizer has no eos_token; packing needs a document separator")
    return int(tokenizer.eos_token_id)


def encode_texts(tokenizer, texts: list[str]) -> np.ndarray:
    """The token stream of ``texts`` in order, EOS after each document (uint32, flat)."""
    if not texts:
        return np.empty(0, dtype=np.uint32)
    eos = require_eos(tokenizer)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ends = np.cumsum([len(x) + 1 for x in ids]) - 1
    out = np.empty(int(ends[-1]) + 1, dtype=np.uint32)
    body = np.ones(len(out), dtype=bool)
    body[ends] = False
    out[body] = np.fromiter(chain.from_iterable(ids), dtype=np.uint32, count=len(out) - len(ids))
    out[ends] = eos
    return out


@dataclass(frozen=True)
class EncodeJob:
    """One chunk of documents for a worker; the tokenizer travels as a local folder path, not an object."""

    tokenizer_dir: str
    trust_remote_code: bool
    texts: list[str]


def encode_chunk(job: EncodeJob) -> tuple[int, np.ndarray]:
    """Worker entry point: (documents, token stream with EOS per document)."""
    tokenizer = cached_tokenizer(job.tokenizer_dir, job.trust_remote_code)
    return len(job.texts), encode_texts(tokenizer, job.texts)


class BlockPacker:
    """Cuts a token stream into ``seq_len`` rows in order, carrying the partial remainder between feeds."""

    def __init__(self, seq_len: int, dtype: np.dtype):
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self.tokens = 0
        self._carry = np.empty(0, dtype=self.dtype)

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """The complete blocks (k, seq_len) that ``ids`` finishes; the rest waits for the next feed."""
        self.tokens += len(ids)
        stream = np.concatenate([self._carry, ids.astype(self.dtype, copy=False)])
        n = len(stream) // self.seq_len
        self._carry = stream[n * self.seq_len :].copy()
        return stream[: n * self.seq_len].reshape(n, self.seq_len)

    def counts(self, documents: int) -> dict[str, int]:
        dropped = len(self._carry)
        in_blocks = self.tokens - dropped
        return {
            "documents": documents,
            "tokens": self.tokens,
            "blocks": in_blocks // self.seq_len,
            "tokens_in_blocks": in_blocks,
            "tokens_dropped_tail": dropped,
        }


class ShardWriter:
    """Buffers blocks and writes ``shard-NNNNN.npy`` files of ``shard_blocks`` rows (the last may be short).

    Only one shard's buffer is ever held, so memory does not grow with the corpus.
    """

    def __init__(self, folder: Path, seq_len: int, shard_blocks: int, dtype: np.dtype):
        self.folder = Path(folder)
        self.shards: list[dict] = []
        self._buf = np.empty((shard_blocks, seq_len), dtype=dtype)
        self._fill = 0

    def add(self, blocks: np.ndarray) -> None:
        start = 0
        while start < len(blocks):
            take = min(len(self._buf) - self._fill, len(blocks) - start)
            self._buf[self._fill : self._fill + take] = blocks[start : start + take]
            self._fill += take
            start += take
            if self._fill == len(self._buf):
                self._flush()

    def close(self) -> list[dict]:
        if self._fill:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        rows = self._buf[: self._fill]
        name = f"shard-{len(self.shards):05d}.npy"
        np.save(self.folder / name, rows)
        self.shards.append(
            {
                "file": name,
                "blocks": int(self._fill),
                "sha256": storage.sha256_file(self.folder / name),
                "max_token_id": int(rows.max()),
            }
        )
        self._fill = 0


def write_index(folder: Path, index: dict) -> None:
    (Path(folder) / INDEX).write_text(json.dumps(index, ensure_ascii=False, indent=2))


class PackedBlocks:
    """All blocks of a packed folder as one (n, seq_len) table over memory-mapped shards."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.exists():
            raise storage.StorageError(f"{self.folder}: no {INDEX}; not a tokenize output")
        self.index: dict = json.loads(index_path.read_text())
        self.seq_len: int = int(self.index["seq_len"])
        self.dtype = np.dtype(self.index["dtype"])
        self._shards = [self._open(s) for s in self.index["shards"]]
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards])

    def _open(self, entry: dict) -> np.ndarray:
        path = self.folder / entry["file"]
        if not path.exists():
            raise storage.StorageError(f"{path}: shard listed in {INDEX} is missing")
        arr = np.load(path, mmap_mode="r")
        if arr.shape != (entry["blocks"], self.seq_len):
            raise storage.StorageError(
                f"{path}: shape {arr.shape}, {INDEX} says ({entry['blocks']}, {self.seq_len})"
            )
        return arr

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.seq_len)

    @property
    def max_token_id(self) -> int:
        return max((int(s["max_token_id"]) for s in self.index["shards"]), default=-1)

    def rows(self, idx) -> np.ndarray:
        """Rows by global index (any order, repeats allowed) as int64 (len(idx), seq_len)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.folder}: row index out of range [0, {len(self)})")
        out = np.empty((len(idx), self.seq_len), dtype=np.int64)
        shard_of = np.searchsorted(self._offsets, idx, side="right") - 1
        for s in np.unique(shard_of):
            hit = shard_of == s
            out[hit] = self._shards[s][idx[hit] - self._offsets[s]]
        return out

    def to_numpy(self) -> np.ndarray:
        """Every block in memory, stored dtype (meant for small data)."""
        if not self._shards:
            return np.empty((0, self.seq_len), dtype=self.dtype)
        return np.concatenate([np.asarray(s) for s in self._shards])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self.to_numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)
