"""bench/merge.py stays runnable: tiny models give one JSON line, and on them our outputs equal mergekit's
(task_arithmetic bit for bit; ties except at top-k ties). No speed assertions."""

from tests.helpers import run_bench

TINY = ["--hidden", "64", "--intermediate", "176", "--layers", "2", "--heads", "4", "--vocab", "500"]


def test_bench_merge_prints_one_json_line_and_outputs_agree():
    res = run_bench("merge.py", *TINY)
    assert res["bench"] == "merge" and res["params_per_model"] > 0 and res["read_gb_per_s"] > 0
    assert set(res["methods"]) == {"task_arithmetic", "ties", "dare_ties"}
    for method, row in res["methods"].items():
        for tool in ("ours", "mergekit"):
            assert (
                row[tool]["s"] > 0
                and row[tool]["anon_rss_mb"] > 0
                and 0 < row[tool]["share_of_read_bandwidth"] <= 1
            )
        if method != "dare_ties":
            assert row["equality"]["missing"] == []
    assert res["methods"]["task_arithmetic"]["equality"]["identical_share"] == 1.0
    assert res["methods"]["ties"]["equality"]["identical_share"] > 0.99
    dare = res["methods"]["dare_ties"]
    # both drop about half of each vector: the merge moves the same share of entries away from the base
    assert abs(dare["ours"]["changed_share"] - dare["mergekit"]["changed_share"]) < 0.02
