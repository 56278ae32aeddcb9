"""Dedup: exact + MinHash-LSH near duplicates on the demo world, keep policies, and the whole corpus chain."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finmerge import storage
from finmerge.config import CleanConfig, DedupConfig, DemoConfig
from finmerge.demo import world as W
from tasks.clean import clean
from tasks.dedup import MinHasher, dedup, find_duplicates, jaccard, shingle_hashes
from tasks.ingest import ingest


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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


def test_truth_duplicates_found_no_false_positives(corpus, tmp_path):
    root, truth, _, _ = corpus
    t0 = time.perf_counter()
    result = dedup(str(root / "clean"), str(tmp_path / "dedup"), DedupConfig(), str(root / "staging"))
    elapsed = time.perf_counter() - t0
    assert elapsed < 5  # "a few seconds" on 2 cores; it is ~0.2 s
    records = _jsonl(root / "clean" / "docs.jsonl")
    sid = _section_ids(records)
    dups = {d["id"]: d for d in _jsonl(tmp_path / "dedup" / "duplicates.jsonl")}
    expected = {}
    for kind, rows in (("exact", truth["exact_duplicates"]), ("near", truth["near_duplicates"])):
        for e in rows:
            for section in W.NARRATIVE_SECTIONS:
                expected[sid[(e["doc_id"], section)]] = (kind, sid[(e["original"], section)], e)
    assert set(dups) == set(expected)  # every truth duplicate found, nothing else (no false positive)
    for i, (kind, original, e) in expected.items():
        d = dups[i]
        assert d["duplicate_of"] == original and d["kind"] == kind, (d, e)
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
    assert [r["id"] for r in kept] == [r["id"] for r in records if r["id"] not in dups]  # input order
    n_sec = len(W.NARRATIVE_SECTIONS)
    assert result["counts"] == {
        "in": len(records),
        "kept": len(kept),
        "exact_dups": counts["exact_duplicates"] * n_sec,
        "near_dups": counts["near_duplicates"] * n_sec,
        "unique_texts": len(records) - counts["exact_duplicates"] * n_sec,
        "candidate_pairs": result["counts"]["candidate_pairs"],
        "confirmed_pairs": counts["near_duplicates"] * n_sec,
    }
    assert result["metrics"]["dedup/kept_ratio"] == pytest.approx(len(kept) / len(records))
    stats = json.loads((tmp_path / "dedup" / "stats.json").read_text())
    assert stats["near_jaccard"]["min"] >= W.NEAR_JACCARD[0] - 0.02
    assert storage.read_manifest(str(tmp_path / "dedup"))["meta"]["counts"] == result["counts"]


def test_keep_longest(corpus, tmp_path):
    root, truth, _, _ = corpus
    cfg = DedupConfig(keep="longest")
    dedup(str(root / "clean"), str(tmp_path / "d"), cfg, str(root / "staging"))
    records = {r["id"]: r for r in _jsonl(root / "clean" / "docs.jsonl")}
    kept = {r["id"] for r in _jsonl(tmp_path / "d" / "docs.jsonl")}
    dups = _jsonl(tmp_path / "d" / "duplicates.jsonl")
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


def test_keep_policy_and_clusters_small():
    base = (
        "株式会社テストの主な事業は精密機械の製造です。当事業年度の売上高は12,345百万円となりました。"
        "工作機械の販売が堅調に推移しました。本社所在地は愛知県名古屋市です。"
        "従業員数は1,234名であります。今後も品質の向上に努めてまいります。"
    )
    other = "まったく別の文書です。町の名物はそばで、毎年夏には祭りが開かれます。人口は約一万人です。"
    recs = [
        {"id": "a", "text": base.replace("12,345", "12,346"), "filing_date": "2023-09-01"},
        {"id": "b", "text": base, "filing_date": "2023-06-28"},
        {"id": "c", "text": base + "なお、記載内容の一部を訂正しております。", "filing_date": None},
        {"id": "d", "text": other, "filing_date": "2020-01-01"},
        {"id": "f", "text": base.replace("。", "。\n  ", 2), "filing_date": "2023-06-28"},
    ]
    dups, stats = find_duplicates(recs, DedupConfig())
    got = {d["id"]: (d["duplicate_of"], d["kind"]) for d in dups}
    # earliest filing_date wins (undated last; a tie goes to input order); f equals b up to whitespace
    assert got == {"a": ("b", "near"), "c": ("b", "near"), "f": ("b", "exact")}
    assert stats["exact_dups"] == 1 and stats["near_dups"] == 2 and stats["duplicate_clusters"] == 1
    dups, _ = find_duplicates(recs, DedupConfig(keep="longest"))
    assert {d["id"]: (d["duplicate_of"], d["kind"]) for d in dups} == {
        "a": ("c", "near"),
        "b": ("c", "near"),
        "f": ("c", "near"),
    }
    assert all(0.6 <= d["jaccard"] < 1 for d in dups)  # to the kept document, possibly via another member


def test_minhash_estimates_jaccard_and_is_seeded():
    rng = np.random.default_rng(0)
    words = ["売上", "営業", "利益", "製品", "工場", "地域", "計画", "投資", "社員", "海外"]
    a = "".join(rng.choice(words, 400))
    b = a[:600] + "".join(rng.choice(words, 100))
    ha, hb = shingle_hashes(a, 5), shingle_hashes(b, 5)
    assert np.array_equal(ha, shingle_hashes(a, 5)) and np.all(np.diff(ha.astype(np.float64)) > 0)
    true_j = jaccard(ha, hb)
    m = MinHasher(256, seed=42)
    est = float(np.mean(m.signature(ha) == m.signature(hb)))
    assert est == pytest.approx(true_j, abs=0.1)
    assert np.array_equal(m.signature(ha), MinHasher(256, seed=42).signature(ha))
    assert not np.array_equal(m.signature(ha), MinHasher(256, seed=7).signature(ha))
    assert shingle_hashes("短い", 5).size == 1 and shingle_hashes("", 5).size == 1


def test_without_verification_candidates_are_accepted(corpus, tmp_path):
    root, truth, _, _ = corpus
    verified = dedup(str(root / "clean"), str(tmp_path / "v"), DedupConfig(), str(root / "staging"))
    loose = dedup(str(root / "clean"), str(tmp_path / "l"), DedupConfig(verify=False), str(root / "staging"))
    assert (
        loose["counts"]["confirmed_pairs"]
        == loose["counts"]["candidate_pairs"]
        >= verified["counts"]["confirmed_pairs"]
    )
    v = {d["id"] for d in _jsonl(tmp_path / "v" / "duplicates.jsonl")}
    lo = {d["id"] for d in _jsonl(tmp_path / "l" / "duplicates.jsonl")}
    assert v <= lo


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
