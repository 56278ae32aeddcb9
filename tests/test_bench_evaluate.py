"""bench/evaluate.py stays runnable, and on a tiny model our evaluator agrees with lm-eval 0.4.13's HF
backend on every item of every task (the five harness layouts) at all nine prompt versions: same
predicted choice, per-choice log-likelihoods within 1e-4, same acc / acc_norm / chabsa F1. No speed
assertions (speed is reported by the benchmark, not tested)."""

import pytest

from tests.helpers import run_bench

TINY = ["--scale", "0.05", "--hidden", "32", "--layers", "2", "--vocab", "600", "--repeats", "1"]


@pytest.mark.slow
def test_bench_evaluate_matches_lm_eval_on_all_versions():
    res = run_bench("evaluate.py", *TINY, "--versions", "all")
    assert res["bench"] == "evaluate" and res["lm_eval"] == "0.4.13"
    assert set(res["tasks"]) == {"chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1"}
    assert len(res["versions"]) == 9
    assert res["items_scored"] == 9 * sum(res["tasks"].values()) == res["items"]
    assert res["identical_predictions"] and res["same_prediction"] == res["items"]
    assert res["max_abs_ll_diff"] < 1e-4
    assert res["max_metric_diff"] < 1e-9
    for row in res["versions"].values():
        assert row["ours_items_per_s"] > 0 and row["lmeval_items_per_s"] > 0
