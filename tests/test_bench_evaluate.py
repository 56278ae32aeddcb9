"""bench/evaluate.py stays runnable, and on a tiny model our evaluator agrees with lm-eval 0.4.13's HF
backend on every item of every task (the five harness layouts) at all nine prompt versions: same
predicted choice, per-choice log-likelihoods within 1e-4 (1e-6 relative for long continuations), same
acc / acc_norm / chabsa F1; the whole commands (`finmerge evaluate`, `lm_eval run`) agree too, on one
version. The token counts it reports are consistent. No speed assertions (speed is reported by the
benchmark, not tested)."""

import pytest

from tests.helpers import run_bench

TINY = ["--scale", "0.05", "--hidden", "32", "--layers", "2", "--vocab", "600", "--repeats", "1"]
FAST = ["--no-row-path", "--no-warm-up", "--commands", "1.0-0.2.1"]  # timing parts a test does not need


@pytest.mark.slow
def test_bench_evaluate_matches_lm_eval_on_all_versions():
    res = run_bench("evaluate.py", *TINY, *FAST, "--versions", "all")
    assert res["bench"] == "evaluate" and res["lm_eval"] == "0.4.13"
    assert set(res["tasks"]) == {"chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1"}
    assert len(res["versions"]) == 9
    n_items = sum(res["tasks"].values())
    # every item at every version in this process, and once more from the two commands' sample files
    assert res["items_scored"] == 9 * n_items and res["items"] == 10 * n_items
    assert res["identical_predictions"] and res["same_prediction"] == res["items"]
    assert res["ll_diff_vs_tolerance"] <= 1.0 and res["max_abs_ll_diff"] < 1e-3
    assert res["max_metric_diff"] < 1e-9
    for row in res["versions"].values():
        assert row["ours_items_per_s"] > 0 and row["lmeval_items_per_s"] > 0
        _check_tokens(row["tokens"])
    _check_tokens(res["tokens"])
    assert res["tokens"]["forward_tokens"] == sum(
        r["tokens"]["forward_tokens"] for r in res["versions"].values()
    )
    timed = res["versions"]["1.0-0.2.1"]["command"]
    assert timed["ours_s"] > 0 and timed["lmeval_s"] > 0 and res["command"]["versions"] == 1
    # lm-eval's own task index, part of each of its commands, timed alone and taken out of the second ratio
    index_s = res["command"]["lmeval_index_s"]
    assert 0 < index_s < timed["lmeval_s"]
    assert timed["speedup_without_lmeval_index"] == pytest.approx(
        (timed["lmeval_s"] - index_s) / timed["ours_s"], abs=0.02
    )
    assert res["command"]["min_version_speedup_without_lmeval_index"] == timed["speedup_without_lmeval_index"]
    assert all("command" not in row for v, row in res["versions"].items() if v != "1.0-0.2.1")


def _check_tokens(tokens: dict) -> None:
    """Padding is part of what was computed; the shared prompt prefix runs once per task and a choice's last
    token is never an input, so what runs can be below the per-item minimum, but never nothing."""
    assert 0 <= tokens["padding_tokens"] < tokens["forward_tokens"]
    assert 0 <= tokens["padding_share"] < 1
    assert tokens["padding_share"] == pytest.approx(
        tokens["padding_tokens"] / tokens["forward_tokens"], abs=1e-4
    )
    assert tokens["min_tokens"] > 0
    assert tokens["tokens_vs_min"] == pytest.approx(tokens["forward_tokens"] / tokens["min_tokens"], abs=1e-3)
