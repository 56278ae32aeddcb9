"""bench/corpus.py stays runnable: a tiny corpus gives one JSON line with sane figures (no speed assertions)."""

from __future__ import annotations

from tests.helpers import run_bench

TOOLS = ("ours", "hojichar", "hojichar_default", "datasketch")


def test_bench_corpus_prints_one_json_line():
    res = run_bench("corpus.py", "--mb", "1", "--seed", "7", "--repeat", "1")
    assert {"corpus", "clean", "dedup", "versions", "seed"} <= set(res) and res["seed"] == 7
    c = res["corpus"]
    assert c["docs"] > 50 and 0.5e6 < c["bytes"] < 1.5e6 and c["pairs_j_ge_085"] > 0
    assert set(c["planted_pairs"]) == {"exact", "0.01", "0.03", "0.05", "0.10", "0.20"}
    assert c["jaccard_by_kind"]["exact"]["min"] == 1.0 and c["jaccard_by_kind"]["0.01"]["min"] >= 0.85
    for tool in ("ours", "hojichar_chain"):
        assert res["clean"][tool]["mchars_per_s"] > 0 and 0 < res["clean"][tool]["kept"] <= c["docs"]
    for tool in TOOLS:
        row = res["dedup"][tool]
        assert row["mchars_per_s"] > 0, tool
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall_j085"] <= 1, tool
        assert set(row["detected_by_kind"]) == set(c["planted_pairs"]), tool
    ours = res["dedup"]["ours"]
    assert ours["recall_j085"] >= 0.95 and ours["precision"] >= 0.99  # deterministic at this seed
    assert res["dedup"]["speedup_vs_hojichar"] > 0 and res["clean"]["speedup_vs_hojichar"] > 0
    assert res["versions"]["hojichar"] == "0.18.1"
