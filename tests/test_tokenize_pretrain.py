import json

import numpy as np
import pytest
import torch

from finmerge import modelio, storage
from finmerge.config import TokenizeConfig, TrainConfig
from tasks.pretrain import TrainData, lr_at, pretrain, total_steps, train_loop
from tasks.tokenize import load_blocks, pack_documents, tokenize_corpus
from tests.helpers import TEXTS, tiny_model, write_corpus


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "base")


def test_packing_has_no_padding_and_keeps_document_boundaries(base, tmp_path):
    tok = modelio.load_tokenizer(base)
    docs = ["株式会社青葉精機の主な事業は精密機械の製造です。", "今日は晴れです。"] * 20
    blocks, counts = pack_documents(iter(docs), tok, 16)
    expected = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert counts["tokens"] == expected and counts["documents"] == 40
    assert blocks.shape == (expected // 16, 16)
    assert counts["tokens_dropped_tail"] == expected % 16 < 16
    assert tok.pad_token_id not in blocks  # no padding anywhere
    assert (blocks == tok.eos_token_id).sum() >= len(docs) - 1 - (expected % 16 > 0)


def test_tokenize_stage_writes_manifest_and_blocks(base, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", TEXTS)
    res = tokenize_corpus(
        corpus, str(base), str(tmp_path / "tok"), TokenizeConfig(seq_len=32), str(tmp_path / "st")
    )
    blocks = load_blocks(res["uri"], str(tmp_path / "st"))
    assert blocks.shape[1] == 32 and blocks.shape[0] == res["counts"]["blocks"] > 0
    assert res["metrics"]["tokenize/packing_efficiency"] > 0.97
    assert storage.read_manifest(res["uri"])["digest"] == res["digest"]


def test_tokenize_rejects_bad_corpus_with_line_number(base, tmp_path):
    folder = tmp_path / "bad"
    with storage.output_folder(str(folder), str(tmp_path)) as out:
        (out.path / "docs.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"docs.jsonl: line 2"):
        tokenize_corpus(str(folder), str(base), str(tmp_path / "o"), TokenizeConfig(seq_len=8), str(tmp_path))


def test_lr_schedule_warmup_and_decay():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(99, 100, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(55, 100, cfg) < lr_at(20, 100, cfg)
    assert lr_at(50, 100, cfg.model_copy(update={"schedule": "constant"})) == 1.0
    assert total_steps(100, TrainConfig(batch_size=10, grad_accum=2, epochs=2)) == 10
    assert total_steps(100, TrainConfig(batch_size=10, epochs=2, max_steps=3)) == 3


def _rows(base, n=24, seq=16):
    tok = modelio.load_tokenizer(base)
    blocks, _ = pack_documents(iter(TEXTS), tok, seq)
    return TrainData(torch.from_numpy(blocks[:n].astype(np.int64)))


def test_training_lowers_loss_and_is_deterministic(base):
    cfg = TrainConfig(lr=5e-3, warmup_steps=2, max_steps=25, batch_size=8, seq_len=16, log_every=1, threads=1)
    data = _rows(base)
    m1 = modelio.load_causal_lm(base)
    r1 = train_loop(m1, data, cfg)
    assert r1.history[-1]["loss"] < r1.history[0]["loss"] * 0.8
    m2 = modelio.load_causal_lm(base)
    train_loop(m2, data, cfg)
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_masked_labels_are_ignored(base):
    data = _rows(base, n=8)
    labels = torch.full_like(data.input_ids, -100)
    labels[:, 8:] = data.input_ids[:, 8:]
    masked = TrainData(data.input_ids, labels)
    m = modelio.load_causal_lm(base)
    batch = masked.batch(torch.arange(8))
    full = m(**data.batch(torch.arange(8))).loss
    part = m(**batch).loss
    # loss over the masked half differs from the full loss, and changing masked labels changes nothing
    batch2 = dict(batch)
    batch2["labels"] = batch["labels"].clone()
    assert not torch.isclose(full, part)
    assert torch.equal(m(**batch2).loss, part)


def test_pretrain_stage_commits_a_loadable_model(base, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", TEXTS)
    st = str(tmp_path / "st")
    tok = tokenize_corpus(corpus, str(base), str(tmp_path / "tok"), TokenizeConfig(seq_len=16), st)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in TEXTS[:8]))
    logged = []
    cfg = TrainConfig(
        lr=5e-3, warmup_steps=2, max_steps=12, batch_size=8, seq_len=16, log_every=3, eval_every=3
    )
    res = pretrain(
        str(base),
        tok["uri"],
        str(tmp_path / "cpt"),
        cfg,
        st,
        heldout_uri=str(heldout),
        on_log=lambda step, m: logged.append((step, m)),
    )
    assert res["metrics"]["pretrain/steps"] == 12
    assert res["metrics"]["pretrain/heldout_ppl_end"] < res["metrics"]["pretrain/heldout_ppl_start"]
    assert [s for s, _ in logged] == [0, 3, 6, 9, 11] and "tokens_per_s" in logged[0][1]
    folder = storage.local_path(res["uri"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "loss.png"} <= {
        p.name for p in folder.iterdir()
    }
    cpt = modelio.load_causal_lm(folder)
    orig = modelio.load_causal_lm(base)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(cpt.state_dict().values(), orig.state_dict().values(), strict=True)
    )
    assert res["lineage"]["base_digest"] == storage.read_manifest(str(base))["digest"]
