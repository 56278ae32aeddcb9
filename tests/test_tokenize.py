"""Streaming, sharded tokenization: packing, shards and index, parallel equivalence, reading back, S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from finmerge.config import TokenizeConfig, WorkersConfig
from finmerge.core import storage
from finmerge.demo.models import train_tokenizer
from finmerge.models import loading as modelio
from finmerge.train.tokenize import load_blocks, pack_documents, tokenize_corpus
from tests.helpers import TEXTS, tiny_model, write_corpus

SEQ = 16
# Small chunks and shards so that a 120-document corpus crosses many chunk and shard boundaries.
CFG = TokenizeConfig(seq_len=SEQ, shard_blocks=50, batch_docs=7)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("m") / "base")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("c") / "corpus", TEXTS)


@pytest.fixture(scope="module")
def packed(base, corpus, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("t")
    return tokenize_corpus(corpus, str(base), str(root / "tok"), CFG, str(root / "st"))


@pytest.fixture(scope="module")
def expected(base) -> tuple[np.ndarray, dict]:
    return pack_documents(iter(TEXTS), modelio.load_tokenizer(base), SEQ)


def _shards(folder: str) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(Path(folder).glob("shard-*.npy"))]


def test_packing_has_no_padding_and_keeps_document_boundaries(base):
    tok = modelio.load_tokenizer(base)
    docs = ["株式会社青葉精機の主な事業は精密機械の製造です。", "今日は晴れです。"] * 20
    blocks, counts = pack_documents(iter(docs), tok, SEQ, batch=3)
    stream = [i for d in docs for i in [*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    n = len(stream) // SEQ
    assert counts == {
        "documents": 40,
        "tokens": len(stream),
        "blocks": n,
        "tokens_in_blocks": n * SEQ,
        "tokens_dropped_tail": len(stream) % SEQ,
    }
    # the blocks are exactly the document stream, EOS-separated, cut without padding
    assert blocks.dtype == np.uint16 and blocks.reshape(-1).tolist() == stream[: n * SEQ]
    assert tok.pad_token_id not in blocks


def test_shards_split_at_shard_blocks_and_concatenate_to_pack_documents(packed, expected):
    blocks, counts = expected
    shards = _shards(packed["uri"])
    assert [len(s) for s in shards] == [50, 50, 50, 50, counts["blocks"] - 200]
    assert all(s.dtype == np.uint16 and s.shape[1] == SEQ for s in shards)
    assert np.array_equal(np.concatenate(shards), blocks)
    assert packed["counts"] == counts
    assert packed["metrics"]["tokenize/shards"] == 5.0
    assert packed["metrics"]["tokenize/blocks"] == float(counts["blocks"])
    assert packed["seq_len"] == SEQ and packed["vocab_size"] == 400 and packed["artifacts"] == ["index.json"]


def test_process_pool_gives_the_same_shards_as_serial(base, corpus, packed, tmp_path):
    cfg = CFG.model_copy(update={"parallel": WorkersConfig(backend="process", workers=2)})
    res = tokenize_corpus(corpus, str(base), str(tmp_path / "tok"), cfg, str(tmp_path / "st"))
    assert res["digest"] == packed["digest"]  # same files, byte for byte
    assert all(np.array_equal(a, b) for a, b in zip(_shards(res["uri"]), _shards(packed["uri"]), strict=True))


def test_index_describes_every_shard(base, packed):
    folder = Path(packed["uri"])
    index = json.loads((folder / "index.json").read_text())
    tok = modelio.load_tokenizer(base)
    assert index["seq_len"] == SEQ and index["dtype"] == "uint16"
    assert index["vocab_size"] == len(tok) and index["eos_token_id"] == tok.eos_token_id
    assert index["tokenizer_digest"] == modelio.tokenizer_fingerprint(str(base)) == packed["tokenizer_digest"]
    assert {k: index[k] for k in packed["counts"]} == packed["counts"]
    assert [s["file"] for s in index["shards"]] == [f"shard-{i:05d}.npy" for i in range(5)]
    for entry, arr in zip(index["shards"], _shards(packed["uri"]), strict=True):
        assert entry["sha256"] == storage.sha256_file(folder / entry["file"])
        assert entry["blocks"] == len(arr) and entry["max_token_id"] == int(arr.max())
    assert sum(s["blocks"] for s in index["shards"]) == packed["counts"]["blocks"]


def test_rows_gather_across_shard_boundaries(packed, expected, tmp_path):
    blocks, _ = expected
    data = load_blocks(packed["uri"], str(tmp_path))
    assert len(data) == len(blocks) and data.shape == blocks.shape and data.seq_len == SEQ
    assert data.max_token_id == int(blocks.max())
    idx = [len(blocks) - 1, 49, 50, 0, 150, 49, 101]  # unordered, repeated, either side of shard edges
    rows = data.rows(idx)
    assert rows.dtype == np.int64 and np.array_equal(rows, blocks[idx].astype(np.int64))
    assert data.rows([]).shape == (0, SEQ)
    assert np.array_equal(np.asarray(data, dtype=np.int64), blocks) and np.array_equal(
        data.to_numpy(), blocks
    )
    with pytest.raises(IndexError):
        data.rows([len(blocks)])


def test_packing_efficiency_on_a_few_hundred_blocks(packed):
    assert packed["counts"]["blocks"] > 200
    assert packed["metrics"]["tokenize/packing_efficiency"] > 0.99
    assert packed["counts"]["tokens_dropped_tail"] < SEQ


def test_bad_corpus_line_is_reported_with_file_and_line(base, tmp_path):
    folder = tmp_path / "bad"
    with storage.output_folder(str(folder), str(tmp_path)) as out:
        (out.path / "docs.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl: line 2"):
        tokenize_corpus(str(folder), str(base), str(tmp_path / "o"), CFG, str(tmp_path))
    assert storage.read_manifest(str(tmp_path / "o")) is None


def test_corpus_shorter_than_one_block_is_an_error(base, tmp_path):
    corpus = write_corpus(tmp_path / "short", ["短い。"])
    cfg = TokenizeConfig(seq_len=4096)
    with pytest.raises(ValueError, match=r"short: corpus has \d+ tokens, fewer than one block of 4096"):
        tokenize_corpus(corpus, str(base), str(tmp_path / "o"), cfg, str(tmp_path))
    assert storage.read_manifest(str(tmp_path / "o")) is None


def test_tokenizer_without_eos_is_refused(base, corpus, tmp_path):
    folder = tmp_path / "no-eos"
    shutil.copytree(base, folder)
    conf = json.loads((folder / "tokenizer_config.json").read_text())
    conf.pop("eos_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_corpus(corpus, str(folder), str(tmp_path / "o"), CFG, str(tmp_path))
    with pytest.raises(ValueError, match="no eos_token"):
        pack_documents(iter(TEXTS), modelio.load_tokenizer(folder), SEQ)


def test_missing_or_misshapen_shard_is_named(packed, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(packed["uri"], folder)
    (folder / "shard-00001.npy").unlink()
    with pytest.raises(
        storage.StorageError, match=r"shard-00001\.npy: shard listed in index.json is missing"
    ):
        load_blocks(str(folder), str(tmp_path))
    shutil.copy(Path(packed["uri"]) / "shard-00001.npy", folder)
    np.save(folder / "shard-00002.npy", np.zeros((3, SEQ), dtype=np.uint16))
    with pytest.raises(storage.StorageError, match=r"shard-00002\.npy: shape \(3, 16\)"):
        load_blocks(str(folder), str(tmp_path))


def test_tokenizer_fingerprint_follows_the_tokenizer_not_the_weights(base, tmp_path):
    other = tiny_model(tmp_path / "other", seed=1)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, other / name)
    assert modelio.fingerprint(str(other)) != modelio.fingerprint(str(base))
    assert modelio.tokenizer_fingerprint(str(other)) == modelio.tokenizer_fingerprint(str(base))
    train_tokenizer(iter(TEXTS), 300, tmp_path / "small-vocab")
    assert modelio.tokenizer_fingerprint(str(tmp_path / "small-vocab")) != modelio.tokenizer_fingerprint(
        str(base)
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(modelio.ModelFormatError, match="no tokenizer files"):
        modelio.tokenizer_fingerprint(str(tmp_path / "empty"))


def _upload(local: Path, uri: str) -> str:
    fs, root = storage.filesystem(uri)
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")
    fs.invalidate_cache()
    return uri


def test_round_trip_through_s3(s3_bucket, base, corpus, expected, tmp_path):
    model_uri = _upload(base, f"s3://{s3_bucket}/models/base")
    corpus_uri = _upload(Path(corpus), f"s3://{s3_bucket}/corpus")
    assert modelio.tokenizer_fingerprint(model_uri) == modelio.tokenizer_fingerprint(str(base))
    res = tokenize_corpus(corpus_uri, model_uri, f"s3://{s3_bucket}/tok", CFG, str(tmp_path / "st"))
    assert res["uri"] == f"s3://{s3_bucket}/tok" and res["counts"] == expected[1]
    data = load_blocks(res["uri"], str(tmp_path / "fresh"))  # a fresh staging area: downloaded and verified
    assert str(data.folder).startswith(str(tmp_path / "fresh"))
    assert np.array_equal(data.to_numpy(), expected[0])
    assert np.array_equal(data.rows([199, 200]), expected[0][[199, 200]].astype(np.int64))
