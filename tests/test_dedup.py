"""Dedup: exact + MinHash-LSH near duplicates on the demo world, keep policies, incremental batches through the
persisted index (retractions, S3), and backend independence."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finmerge.config import CleanConfig, DedupConfig, DemoConfig, ParallelConfig
from finmerge.core import storage
from finmerge.corpus import minhash
from finmerge.corpus.clean import clean
from finmerge.corpus.dedup import dedup, iter_kept
from finmerge.corpus.ingest import ingest
from finmerge.demo import world as W


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, records: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """world → ingest → clean, plus the stage results."""
    root = tmp_path_factory.mktemp("dedup")
    st = str(root / "staging")
    W.generate_world(DemoConfig(), root / "world")
    ing = ingest([str(root / "world" / "filings")], str(root / "ingest"), st)
    cln = clean(str(root / "ingest"), str(root / "clean"), CleanConfig(), st)
    truth = json.loads((root / "world" / "truth.json").read_text())
    return root, truth, ing, cln


def _section_ids(records: list[dict]) -> dict[tuple[str, str], str]:
    return {(r["doc_id"], r["section"]): r["id"] for r in records}


def _expected_drops(records: list[dict], truth: dict) -> dict[str, tuple[str, str, dict]]:
    sid = _section_ids(records)
    expected = {}
    for kind, rows in (("exact", truth["exact_duplicates"]), ("near", truth["near_duplicates"])):
        for e in rows:
            for section in W.NARRATIVE_SECTIONS:
                expected[sid[(e["doc_id"], section)]] = (kind, sid[(e["original"], section)], e)
    return expected


def test_truth_duplicates_found_no_false_positives(corpus, tmp_path):
    root, truth, _, _ = corpus
    result = dedup(str(root / "clean"), str(tmp_path / "dedup"), DedupConfig(), str(root / "staging"))
    records = _jsonl(root / "clean" / "docs.jsonl")
    by_id = {r["id"]: r for r in records}
    sid = _section_ids(records)
    dropped = {d["id"]: d for d in _jsonl(tmp_path / "dedup" / "dropped.jsonl")}
    expected = _expected_drops(records, truth)
    assert set(dropped) == set(expected)  # every truth duplicate found, nothing else (no false positive)
    for i, (kind, original, e) in expected.items():
        d = dropped[i]
        assert d["duplicate_of"] == original and d["kind"] == kind, (d, e)
        assert d["text"] == by_id[i]["text"] and d["section"] == by_id[i]["section"]  # the record in full
        if kind == "near":
            section = next(s for s in W.NARRATIVE_SECTIONS if sid[(e["doc_id"], s)] == i)
            assert d["jaccard"] == pytest.approx(e["jaccard"][section], abs=0.02)
        else:
            assert d["jaccard"] == 1.0
    kept = _jsonl(tmp_path / "dedup" / "docs.jsonl")
    counts = truth["counts"]
    assert len(kept) == counts["filings"] * len(W.NARRATIVE_SECTIONS)
    assert Counter((r["company"], r["filing_date"][:4]) for r in kept) == Counter(
        {
            (c, str(y)): len(W.NARRATIVE_SECTIONS)
            for c in {r["company"] for r in kept}
            for y in DemoConfig().years
        }
    )
    assert kept == [r for r in records if r["id"] not in dropped]  # input order, records unchanged
    n_sec = len(W.NARRATIVE_SECTIONS)
    c = result["counts"]
    assert (c["in"], c["kept"], c["retracted"], c["index_docs"], c["batches"]) == (
        len(records),
        len(kept),
        0,
        0,
        1,
    )
    assert (c["exact_dups"], c["near_dups"]) == (
        counts["exact_duplicates"] * n_sec,
        counts["near_duplicates"] * n_sec,
    )
    assert c["unique_texts"] == len(records) - counts["exact_duplicates"] * n_sec
    assert c["confirmed_pairs"] == counts["near_duplicates"] * n_sec <= c["candidate_pairs"]
    assert result["metrics"]["dedup/kept_ratio"] == pytest.approx(len(kept) / len(records))
    table = {row["measure"]: row["value"] for row in result["tables"]["dedup"]}
    assert table["kept"] == len(kept) and table["near duplicates dropped"] == c["near_dups"]
    stats = json.loads((tmp_path / "dedup" / "stats.json").read_text())
    assert stats["near_jaccard"]["min"] >= W.NEAR_JACCARD[0] - 0.02
    assert stats["detection_probability"]["0.85"] >= 0.99
    assert storage.read_manifest(str(tmp_path / "dedup"))["meta"]["counts"] == c
    assert (tmp_path / "dedup" / "retracted.jsonl").read_text() == ""
    chain = json.loads((tmp_path / "dedup" / "chain.json").read_text())
    assert chain == [{"uri": storage.normalize(str(tmp_path / "dedup")), "digest": None}]
    seg = minhash.Segment.load(tmp_path / "dedup" / "index")
    assert seg.ids == [r["id"] for r in kept] and seg.lsh_keys.size == len(kept) * DedupConfig().bands
    raw = (tmp_path / "dedup" / "docs.jsonl").read_bytes()
    assert all(
        json.loads(raw[o : raw.index(b"\n", o)])["id"] == i for o, i in zip(seg.offset, seg.ids, strict=True)
    )


def test_keep_longest(corpus, tmp_path):
    root, truth, _, _ = corpus
    cfg = DedupConfig(keep="longest")
    dedup(str(root / "clean"), str(tmp_path / "d"), cfg, str(root / "staging"))
    records = {r["id"]: r for r in _jsonl(root / "clean" / "docs.jsonl")}
    kept = {r["id"] for r in _jsonl(tmp_path / "d" / "docs.jsonl")}
    dups = _jsonl(tmp_path / "d" / "dropped.jsonl")
    assert len(dups) == (len(truth["exact_duplicates"]) + len(truth["near_duplicates"])) * len(
        W.NARRATIVE_SECTIONS
    )
    order = list(records)
    for d in dups:
        a, k = records[d["id"]], records[d["duplicate_of"]]
        assert d["duplicate_of"] in kept
        assert len(k["text"]) > len(a["text"]) or (
            len(k["text"]) == len(a["text"]) and order.index(k["id"]) < order.index(a["id"])
        )
    # Near-dup clusters where the amendment is longer keep the amendment.
    assert any(records[d["duplicate_of"]]["filing_date"] > records[d["id"]]["filing_date"] for d in dups)


BASE = (
    "株式会社テストの主な事業は精密機械の製造です。当事業年度の売上高は12,345百万円となりました。"
    "工作機械の販売が堅調に推移しました。本社所在地は愛知県名古屋市です。"
    "従業員数は1,234名であります。今後も品質の向上に努めてまいります。"
)
OTHER = "まったく別の文書です。町の名物はそばで、毎年夏には祭りが開かれます。人口は約一万人です。"


def _small() -> list[dict]:
    return [
        {"id": "a", "text": BASE.replace("12,345", "12,346"), "filing_date": "2023-09-01"},
        {"id": "b", "text": BASE, "filing_date": "2023-06-28"},
        {"id": "c", "text": BASE + "なお、記載内容の一部を訂正しております。", "filing_date": None},
        {"id": "d", "text": OTHER, "filing_date": "2020-01-01"},
        {"id": "f", "text": BASE.replace("。", "。\n  ", 2), "filing_date": "2023-06-28"},
    ]


def _drops(folder: Path) -> dict[str, tuple[str, str]]:
    return {d["id"]: (d["duplicate_of"], d["kind"]) for d in _jsonl(folder / "dropped.jsonl")}


def test_keep_policy_and_clusters_small(tmp_path):
    src, st = _write(tmp_path / "in.jsonl", _small()), str(tmp_path / "st")
    res = dedup(src, str(tmp_path / "e"), DedupConfig(), st)
    # earliest filing_date wins (undated last; a tie goes to input order); f equals b up to whitespace
    assert _drops(tmp_path / "e") == {"a": ("b", "near"), "c": ("b", "near"), "f": ("b", "exact")}
    assert res["counts"]["exact_dups"] == 1 and res["counts"]["near_dups"] == 2
    assert json.loads((tmp_path / "e" / "stats.json").read_text())["duplicate_clusters"] == 1
    dedup(src, str(tmp_path / "l"), DedupConfig(keep="longest"), st)
    assert _drops(tmp_path / "l") == {"a": ("c", "near"), "b": ("c", "near"), "f": ("c", "near")}
    assert all(0.6 <= d["jaccard"] < 1 for d in _jsonl(tmp_path / "l" / "dropped.jsonl"))


def test_minhash_estimates_jaccard_and_is_seeded():
    rng = np.random.default_rng(0)
    words = ["売上", "営業", "利益", "製品", "工場", "地域", "計画", "投資", "社員", "海外"]
    a = "".join(rng.choice(words, 600))
    b = a[:900] + "".join(rng.choice(words, 150))
    sa, sb = minhash.shingle_set(a, 5, 1), minhash.shingle_set(b, 5, 1)
    assert np.array_equal(sa, minhash.shingle_set(a, 5, 1)) and np.all(np.diff(sa.astype(np.float64)) > 0)
    true_j = minhash.jaccard(sa, sb)
    assert true_j == pytest.approx(len(_grams(a) & _grams(b)) / len(_grams(a) | _grams(b)), abs=1e-9)
    estimates = []
    for seed in range(20):
        p = minhash.SignatureParams(ngram=5, bands=20, rows=10, seed=seed)
        _, sig = minhash.signatures([a, b], p)
        estimates.append(float(np.mean(sig[0] == sig[1])))
    assert np.mean(estimates) == pytest.approx(true_j, abs=0.03)  # OPH + densification: unbiased
    p = minhash.SignatureParams(ngram=5, bands=4, rows=8, seed=42)
    _, s1 = minhash.signatures([a, "短い", ""], p)
    _, s2 = minhash.signatures([a, "短い", ""], p)
    _, s3 = minhash.signatures([a], minhash.SignatureParams(ngram=5, bands=4, rows=8, seed=7))
    assert np.array_equal(s1, s2) and not np.array_equal(s1[0], s3[0])
    assert minhash.shingle_set("短い", 5, 42).size == 1 and minhash.shingle_set("", 5, 42).size == 1
    assert minhash.normalize_key(" 売上 \n 高は\tAI  model。 ") == "売上高はAI model。"


def _grams(text: str) -> set[str]:
    return {text[i : i + 5] for i in range(len(text) - 4)}


def test_lsh_pairs_helpers():
    keys = np.array([[1, 2], [3, 2], [5, 6], [7, 6], [9, 6]], dtype=np.uint64)
    assert minhash.pairs_within(keys).tolist() == [[0, 1], [2, 3], [2, 4], [3, 4]]
    seg_keys, seg_docs = np.array([2, 6, 6, 8], np.uint64), np.array([10, 11, 12, 13], np.uint32)
    assert minhash.pairs_against(keys[:3], seg_keys, seg_docs).tolist() == [
        [0, 10],
        [1, 10],
        [2, 11],
        [2, 12],
    ]
    assert (
        minhash.detection_probability(0.85, 24, 10) > 0.99 > 0.05 > minhash.detection_probability(0.5, 24, 10)
    )


def test_without_verification_candidates_are_accepted(corpus, tmp_path):
    root, truth, _, _ = corpus
    verified = dedup(str(root / "clean"), str(tmp_path / "v"), DedupConfig(), str(root / "staging"))
    loose = dedup(str(root / "clean"), str(tmp_path / "l"), DedupConfig(verify=False), str(root / "staging"))
    assert (
        loose["counts"]["confirmed_pairs"]
        == loose["counts"]["candidate_pairs"]
        >= verified["counts"]["confirmed_pairs"]
    )
    assert set(_drops(tmp_path / "v")) <= set(_drops(tmp_path / "l"))
    # a strict check threshold rejects the amendments (Jaccard 0.88-0.95) but not the exact copies
    strict = dedup(
        str(root / "clean"), str(tmp_path / "s"), DedupConfig(threshold=0.99), str(root / "staging")
    )
    assert (
        strict["counts"]["near_dups"] == 0
        and strict["counts"]["exact_dups"] == verified["counts"]["exact_dups"]
    )


def test_incremental_batches_equal_one_shot(corpus, tmp_path):
    root, truth, _, _ = corpus
    st = str(root / "staging")
    records = _jsonl(root / "clean" / "docs.jsonl")
    half = len(records) // 2
    b1, b2 = _write(tmp_path / "b1.jsonl", records[:half]), _write(tmp_path / "b2.jsonl", records[half:])
    one = dedup(str(root / "clean"), str(tmp_path / "one"), DedupConfig(), st)
    r1 = dedup(b1, str(tmp_path / "d1"), DedupConfig(), st)
    r2 = dedup(b2, str(tmp_path / "d2"), DedupConfig(), st, prev_uri=str(tmp_path / "d1"))
    assert r2["counts"]["index_docs"] == r1["counts"]["kept"] and r2["counts"]["batches"] == 2
    first_ids = {r["id"] for r in records[:half]}
    cross = [d for d in _jsonl(tmp_path / "d2" / "dropped.jsonl") if d["duplicate_of"] in first_ids]
    assert cross  # duplicates of documents kept by batch 1 are dropped in batch 2
    kept2 = {r["id"] for r in _jsonl(tmp_path / "d2" / "docs.jsonl")}
    assert kept2 and kept2 <= {r["id"] for r in records[half:]}  # new unique documents are kept
    corpus_ids = [r["id"] for r in iter_kept(str(tmp_path / "d2"), st)]
    assert sorted(corpus_ids) == sorted(r["id"] for r in _jsonl(tmp_path / "one" / "docs.jsonl"))
    assert len(corpus_ids) == one["counts"]["kept"] == truth["counts"]["filings"] * len(W.NARRATIVE_SECTIONS)
    retracted = _jsonl(tmp_path / "d2" / "retracted.jsonl")
    assert r2["counts"]["retracted"] == len(retracted)
    assert all(r["folder"] == storage.normalize(str(tmp_path / "d1")) for r in retracted)
    chain = json.loads((tmp_path / "d2" / "chain.json").read_text())
    assert [c["uri"] for c in chain] == [storage.normalize(str(tmp_path / p)) for p in ("d1", "d2")]
    assert chain[0]["digest"] == r1["digest"] and chain[1]["digest"] is None
    with pytest.raises(ValueError, match="already part of the lineage"):
        dedup(b2, str(tmp_path / "d1"), DedupConfig(), st, prev_uri=str(tmp_path / "d2"))


def test_backfilled_filing_retracts_later_one(tmp_path):
    st = str(tmp_path / "st")
    amended = {
        "id": "amend",
        "text": BASE + "なお、記載内容の一部を訂正しております。",
        "filing_date": "2023-09-01",
    }
    original = {"id": "orig", "text": BASE, "filing_date": "2023-06-28"}
    other = {"id": "other", "text": OTHER, "filing_date": "2023-06-01"}
    dedup(_write(tmp_path / "1.jsonl", [amended, other]), str(tmp_path / "d1"), DedupConfig(), st)
    r2 = dedup(
        _write(tmp_path / "2.jsonl", [original]),
        str(tmp_path / "d2"),
        DedupConfig(),
        st,
        str(tmp_path / "d1"),
    )
    assert r2["counts"]["retracted"] == 1 and r2["counts"]["kept"] == 1
    (row,) = _jsonl(tmp_path / "d2" / "retracted.jsonl")
    assert (row["id"], row["duplicate_of"], row["kind"]) == ("amend", "orig", "near")
    assert row["folder_digest"] == storage.read_manifest(str(tmp_path / "d1"))["digest"]
    assert [r["id"] for r in iter_kept(str(tmp_path / "d2"), st)] == ["other", "orig"]
    # batch 3: the retracted document has left the index; its copy is a duplicate of the survivor
    r3 = dedup(
        _write(tmp_path / "3.jsonl", [{**amended, "id": "amend2"}, {**original, "id": "orig2"}]),
        str(tmp_path / "d3"),
        DedupConfig(),
        st,
        str(tmp_path / "d2"),
    )
    assert r3["counts"]["index_docs"] == 2 and r3["counts"]["kept"] == 0
    assert _drops(tmp_path / "d3") == {"amend2": ("orig", "near"), "orig2": ("orig", "exact")}
    assert [r["id"] for r in iter_kept(str(tmp_path / "d3"), st)] == ["other", "orig"]
    # keep=longest: the later, longer amendment stays and the back-filled original is dropped against it
    dedup(
        _write(tmp_path / "1.jsonl", [amended, other]), str(tmp_path / "l1"), DedupConfig(keep="longest"), st
    )
    dedup(
        str(tmp_path / "2.jsonl"), str(tmp_path / "l2"), DedupConfig(keep="longest"), st, str(tmp_path / "l1")
    )
    assert _drops(tmp_path / "l2") == {"orig": ("amend", "near")}


def test_prev_folder_on_s3(s3_bucket, tmp_path):
    st = str(tmp_path / "st")
    d1, d2 = f"s3://{s3_bucket}/dedup/1", f"s3://{s3_bucket}/dedup/2"
    recs = _small()
    dedup(_write(tmp_path / "1.jsonl", [recs[0], recs[3]]), d1, DedupConfig(), st)
    r2 = dedup(_write(tmp_path / "2.jsonl", [recs[1], recs[2]]), d2, DedupConfig(), st, prev_uri=d1)
    # b (earliest) retracts a from the S3 folder; c is dropped against b
    assert r2["counts"]["retracted"] == 1 and r2["counts"]["near_dups"] == 1
    assert sorted(r["id"] for r in iter_kept(d2, st)) == ["b", "d"]
    chain = json.loads(storage.read_text(storage.join(d2, "chain.json")))
    assert [c["uri"] for c in chain] == [d1, d2]
    local = dedup(str(tmp_path / "2.jsonl"), str(tmp_path / "l2"), DedupConfig(), st, prev_uri=d1)
    assert local["counts"] == r2["counts"]


def test_serial_and_process_backends_identical(corpus, tmp_path):
    root, *_ = corpus
    st = str(root / "staging")
    outs = {}
    for name, par in (
        ("serial", ParallelConfig(backend="serial", shard_docs=60)),
        ("process", ParallelConfig(backend="process", workers=2, shard_docs=60)),
    ):
        dedup(str(root / "clean"), str(tmp_path / name), DedupConfig(), st, parallel=par)
        files = storage.read_manifest(str(tmp_path / name))["files"]
        outs[name] = {k: v["sha256"] for k, v in files.items() if k != "chain.json"}  # chain names the folder
    assert outs["serial"] == outs["process"]


def test_index_with_other_signature_params_is_resigned(tmp_path):
    st = str(tmp_path / "st")
    recs = _small()
    dedup(
        _write(tmp_path / "1.jsonl", [recs[1], recs[3]]),
        str(tmp_path / "d1"),
        DedupConfig(bands=8, rows=4),
        st,
    )
    r2 = dedup(
        _write(tmp_path / "2.jsonl", [recs[0]]), str(tmp_path / "d2"), DedupConfig(), st, str(tmp_path / "d1")
    )
    assert _drops(tmp_path / "d2") == {"a": ("b", "near")} and r2["counts"]["index_docs"] == 2


def test_bad_input_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "x", "text": "ok"}\n\n{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl: line 3: .*'id'"):
        dedup(str(p), str(tmp_path / "out"), DedupConfig(), str(tmp_path / "st"))
    assert not (tmp_path / "out").exists()


def test_end_to_end_counts_consistent_with_truth(corpus):
    root, truth, ing, cln = corpus
    c = truth["counts"]
    n_sec = len(W.NARRATIVE_SECTIONS)
    real = c["filings"] + c["exact_duplicates"] + c["near_duplicates"]
    forms = Counter(d["form"] for d in truth["documents"] if d["kind"] not in ("junk", "non_japanese"))
    # ingest: 8 sections per real filing, a preamble per HTML/text filing, one record per junk/English doc
    assert (
        ing["counts"]["docs"]
        == real * len(W.SECTIONS) + forms["html"] + forms["text"] + c["junk"] + c["non_japanese"]
    )
    assert ing["counts"]["quarantined"] == 0
    # clean: the narrative sections of real filings only
    assert cln["counts"]["kept"] == real * n_sec
    assert cln["counts"]["dropped/section"] == real * 2
    ddp = dedup(str(root / "clean"), str(root / "dedup"), DedupConfig(), str(root / "staging"))
    assert ddp["counts"]["kept"] == c["filings"] * n_sec
    assert (
        ddp["counts"]["exact_dups"] + ddp["counts"]["near_dups"]
        == (c["exact_duplicates"] + c["near_duplicates"]) * n_sec
    )
