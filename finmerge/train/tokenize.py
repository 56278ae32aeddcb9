"""Tokenize the clean corpus with the base model's tokenizer and pack it into fixed-length blocks, streaming.

Documents are read in chunks of ``tokenize.batch_docs``; each chunk is encoded (EOS after each document) on
``tokenize.parallel`` (serial, a process pool or Dask) and the results come back in input order. The stream is
cut into ``seq_len`` blocks with no padding (only the final partial block is dropped and reported) and written
as ``shard-NNNNN.npy`` files of at most ``shard_blocks`` rows plus ``index.json`` (see ``finmerge.train.tokenpack``).
Memory holds one shard buffer and the chunks in flight, never the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from finmerge.config import TokenizeConfig
from finmerge.core import storage
from finmerge.core.parallel import map_ordered
from finmerge.models import loading as modelio
from finmerge.train.tokenpack import (
    BlockPacker,
    EncodeJob,
    PackedBlocks,
    ShardWriter,
    cached_tokenizer,
    encode_chunk,
    encode_texts,
    require_eos,
    token_dtype,
    write_index,
)


def pack_documents(
    texts: Iterable[str], tokenizer, seq_len: int, batch: int = 256
) -> tuple[np.ndarray, dict]:
    """Encode, append EOS, concatenate, cut into (n_blocks, seq_len), all in memory. Returns blocks and counts."""
    require_eos(tokenizer)
    packer = BlockPacker(seq_len, token_dtype(tokenizer))
    parts = [np.empty((0, seq_len), dtype=packer.dtype)]
    n_docs = 0
    for chunk in _chunks(texts, batch):
        n_docs += len(chunk)
        parts.append(packer.feed(encode_texts(tokenizer, chunk)))
    return np.concatenate(parts), packer.counts(n_docs)


def corpus_records(corpus_uri: str, staging_dir: str) -> Iterator[dict]:
    """The documents of a corpus: a dedup folder's whole lineage (every kept batch, minus retractions), or a
    plain ``docs.jsonl`` folder / ``.jsonl`` file."""
    if storage.exists(storage.join(corpus_uri, "chain.json")):
        from finmerge.corpus.dedup import iter_kept

        yield from iter_kept(corpus_uri, staging_dir)
    else:
        yield from storage.iter_jsonl(storage.docs_input(corpus_uri, staging_dir), "text")


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tokenize_corpus(
    corpus_uri: str,
    tokenizer_uri: str,
    out_uri: str,
    cfg: TokenizeConfig,
    staging_dir: str,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    overwrite: bool = False,
) -> dict:
    inputs = (corpus_uri, tokenizer_uri)
    storage.check_output(out_uri, "tokenize", inputs, overwrite)
    folder = modelio.stage_model(tokenizer_uri, staging_dir, allow_pickle)
    # Loaded here for eos / vocab size; the cache also serves the encoder when it runs in this process.
    tokenizer = cached_tokenizer(folder, trust_remote_code)
    eos = require_eos(tokenizer, tokenizer_uri)
    dtype = token_dtype(tokenizer)
    header = {
        "seq_len": cfg.seq_len,
        "dtype": dtype.name,
        "vocab_size": len(tokenizer),
        "eos_token_id": eos,
        "tokenizer_digest": modelio.tokenizer_fingerprint(str(folder)),
    }
    meta = {"seq_len": cfg.seq_len, "vocab_size": len(tokenizer), "artifacts": ["index.json"]}
    with storage.output_folder(
        out_uri, staging_dir, meta=meta, stage="tokenize", inputs=inputs, overwrite=overwrite
    ) as out:
        jobs = (
            EncodeJob(str(folder), trust_remote_code, chunk)
            for chunk in _chunks((r["text"] for r in corpus_records(corpus_uri, staging_dir)), cfg.batch_docs)
        )
        counts, shards = _pack_to_shards(map_ordered(encode_chunk, jobs, cfg.parallel), out.path, cfg, dtype)
        if counts["blocks"] == 0:
            raise ValueError(
                f"{corpus_uri}: corpus has {counts['tokens']} tokens, fewer than one block of {cfg.seq_len}"
            )
        write_index(out.path, {**header, "shards": shards, **counts})
        out.meta.update(
            counts=counts, metrics=_metrics(counts, len(shards)), tokenizer_digest=header["tokenizer_digest"]
        )
    return out.result()


def _pack_to_shards(
    encoded: Iterable[tuple[int, np.ndarray]], folder: Path, cfg: TokenizeConfig, dtype: np.dtype
) -> tuple[dict, list[dict]]:
    """Feed encoded chunks, in order, through the packer into shard files. Returns counts and shard entries."""
    packer = BlockPacker(cfg.seq_len, dtype)
    writer = ShardWriter(folder, cfg.seq_len, cfg.shard_blocks, dtype)
    n_docs = 0
    with tqdm(desc="tokenize", unit="doc", leave=False, dynamic_ncols=True) as bar:
        for docs, ids in encoded:
            writer.add(packer.feed(ids))
            n_docs += docs
            bar.update(docs)
    return packer.counts(n_docs), writer.close()


def _metrics(counts: dict, n_shards: int) -> dict[str, float]:
    # Packing has no padding; the efficiency figure is the share of produced tokens that reach a block.
    return {
        "tokenize/tokens": float(counts["tokens"]),
        "tokenize/blocks": float(counts["blocks"]),
        "tokenize/packing_efficiency": counts["tokens_in_blocks"] / max(counts["tokens"], 1),
        "tokenize/shards": float(n_shards),
    }


def load_blocks(tokens_uri: str, staging_dir: str) -> PackedBlocks:
    """The packed blocks of a tokenize output (staged and verified locally when remote), memory-mapped."""
    return PackedBlocks(storage.stage_folder(tokens_uri, staging_dir))
