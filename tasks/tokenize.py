"""Tokenize the clean corpus with the base model's tokenizer and pack it into fixed-length blocks.

Each document gets EOS appended, documents are concatenated, and the stream is cut into ``seq_len``
blocks: no padding at all; only the final partial block (< seq_len tokens) is dropped and reported.
Blocks go to ``tokens.npy`` (uint16 when the vocabulary fits, else uint32) with ``tokens.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from finmerge import modelio, storage
from finmerge.config import TokenizeConfig
from finmerge.orchestration import stage_task


def pack_documents(
    texts: Iterator[str], tokenizer, seq_len: int, batch: int = 256
) -> tuple[np.ndarray, dict]:
    """Encode, append EOS, concatenate, cut into (n_blocks, seq_len). Returns blocks and counts."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no eos_token; packing needs a document separator")
    stream: list[int] = []
    n_docs = 0
    pending: list[str] = []

    def flush() -> None:
        for ids in tokenizer(pending, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(tokenizer.eos_token_id)
        pending.clear()

    for text in texts:
        pending.append(text)
        n_docs += 1
        if len(pending) >= batch:
            flush()
    flush()
    n_blocks = len(stream) // seq_len
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    blocks = np.asarray(stream[: n_blocks * seq_len], dtype=dtype).reshape(n_blocks, seq_len)
    counts = {
        "documents": n_docs,
        "tokens": len(stream),
        "blocks": n_blocks,
        "tokens_in_blocks": n_blocks * seq_len,
        "tokens_dropped_tail": len(stream) - n_blocks * seq_len,
    }
    return blocks, counts


def corpus_records(corpus_uri: str, staging_dir: str) -> Iterator[dict]:
    """The documents of a corpus: a dedup folder's whole lineage (every kept batch, minus retractions), or a
    plain ``docs.jsonl`` folder / ``.jsonl`` file."""
    if storage.exists(storage.join(corpus_uri, "chain.json")):
        from tasks.dedup import iter_kept

        yield from iter_kept(corpus_uri, staging_dir)
    else:
        yield from storage.iter_jsonl(storage.docs_input(corpus_uri, staging_dir), "text")


def tokenize_corpus(
    corpus_uri: str,
    tokenizer_uri: str,
    out_uri: str,
    cfg: TokenizeConfig,
    staging_dir: str,
    trust_remote_code: bool = False,
) -> dict:
    tokenizer = modelio.load_tokenizer(modelio.stage_model(tokenizer_uri, staging_dir), trust_remote_code)
    docs = (rec["text"] for rec in corpus_records(corpus_uri, staging_dir))
    blocks, counts = pack_documents(docs, tokenizer, cfg.seq_len)
    if counts["blocks"] == 0:
        raise ValueError(
            f"{corpus_uri}: corpus has {counts['tokens']} tokens, fewer than one block of {cfg.seq_len}"
        )
    # Packing has no padding; the efficiency figure is the share of produced tokens that reach a block.
    efficiency = counts["tokens_in_blocks"] / max(counts["tokens"], 1)
    meta = {
        "counts": counts,
        "metrics": {
            "tokenize/tokens": float(counts["tokens"]),
            "tokenize/blocks": float(counts["blocks"]),
            "tokenize/packing_efficiency": efficiency,
        },
        "seq_len": cfg.seq_len,
        "vocab_size": len(tokenizer),
        "artifacts": ["tokens.json"],
    }
    with storage.output_folder(out_uri, staging_dir, meta=meta) as out:
        np.save(out.path / "tokens.npy", blocks)
        (out.path / "tokens.json").write_text(
            json.dumps({"shape": list(blocks.shape), "dtype": str(blocks.dtype), **counts}, indent=2)
        )
    return out.result()


def load_blocks(tokens_uri: str, staging_dir: str) -> np.ndarray:
    folder = storage.stage_folder(tokens_uri, staging_dir)
    return np.load(Path(folder) / "tokens.npy", mmap_mode="r")


tokenize_task = stage_task("tokenize", tokenize_corpus)
