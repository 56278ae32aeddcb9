"""The pipeline's comparison table (every score with its interval) and the one-line check of the method's
claim, on hand-made evaluation results."""

from __future__ import annotations

from flows.report import MODELS, format_table, method_claim, summary_markdown


def _ev(**scores) -> dict:
    """An evaluate result: ``name=(value, low, high)`` or ``name=value``; '__' in a name stands for '/'."""
    metrics = {}
    for key, v in scores.items():
        name = key.replace("__", "/")
        value, *ci = v if isinstance(v, tuple) else (v,)
        metrics[name] = value
        if ci:
            metrics[f"{name}/ci_low"], metrics[f"{name}/ci_high"] = ci
    return {"uri": f"s3://b/evaluate/{len(metrics)}", "metrics": metrics}


def _evals(**overrides) -> dict:
    evals = {
        "base": _ev(ppl=(218.54, 201.0, 236.2), harness__avg=(0.25, 0.2, 0.3), chat__adherence=0.0),
        "instruct": _ev(ppl=284.7, harness__avg=0.26, chat__adherence=(1.0, 0.9, 1.0)),
        "cpt": _ev(ppl=(12.94, 12.1, 13.8), harness__avg=(0.35, 0.3, 0.4), chat__adherence=0.0),
        "merged": _ev(
            ppl=(14.2, 13.3, 15.1),
            harness__avg=(0.338, 0.291, 0.385),
            chat__adherence=(1.0, 1.0, 1.0),
            chat__answer_acc=(0.5, 0.25, 0.75),
            general__answer_acc=(0.6, 0.35, 0.85),
        ),
    }
    evals.update(overrides)
    return evals


def test_table_rows_cells_and_intervals():
    evals = _evals(swept=_ev(ppl=(9.8765, 9.5, 10.25), harness__avg=0.34), other=_ev(ppl=1.0))
    titles = {"merged": "merged (α=β=1)", "swept": "swept best (α=0.75, β=1)"}
    table = format_table(evals, 0.0471, titles, level=0.95)
    lines = table.splitlines()
    assert lines[0] == (
        "| model | finance ppl ↓ | finance MC acc | chat format | finance chat answers | general chat answers |"
    )
    rows = [ln.split(" | ")[0].removeprefix("| ") for ln in lines[2:7]]
    assert rows == ["base", "instruct", "cpt", "merged (α=β=1)", "swept best (α=0.75, β=1)"]
    assert lines[2] == "| base | 218.5 [201.0, 236.2] | 0.250 [0.200, 0.300] | 0.000 | – | – |"
    assert lines[4] == "| cpt | 12.9 [12.1, 13.8] | 0.350 [0.300, 0.400] | 0.000 | – | – |"
    assert "| 1.000 [1.000, 1.000] | 0.500 [0.250, 0.750] | 0.600 [0.350, 0.850] |" in lines[5]
    assert lines[6].startswith("| swept best (α=0.75, β=1) | 9.877 [9.500, 10.250] | 0.340 | – |")
    assert "other" not in table  # only the labels of MODELS
    assert "95% percentile bootstrap confidence interval" in table and "cos(τ_inst, τ_fin) = +0.0471" in table
    # no intervals anywhere: no note about them
    plain = format_table({"base": _ev(ppl=20.0)}, None, level=0.95)
    assert plain.splitlines()[2] == "| base | 20.0 | – | – | – | – |" and "bootstrap" not in plain
    assert MODELS == ("base", "instruct", "cpt", "merged", "swept")


def test_claim_holds():
    claim = method_claim(_evals())
    assert claim.startswith("Claim holds: merged keeps the domain gain") and "\n" not in claim
    assert "0.338 [0.291, 0.385] vs cpt 0.350" in claim and "ppl 14.2 ≤ 1.5 × cpt 12.9" in claim
    # format below 0.95 but within the instruct model's interval still counts as kept
    merged = _ev(ppl=14.2, harness__avg=(0.338, 0.291, 0.385), chat__adherence=(0.92, 0.8, 1.0))
    assert method_claim(_evals(merged=merged)).startswith("Claim holds")


def test_claim_fails_naming_each_condition():
    merged = _ev(ppl=(25.0, 23.0, 27.0), harness__avg=(0.25, 0.2, 0.3), chat__adherence=(0.5, 0.3, 0.7))
    claim = method_claim(_evals(merged=merged))
    assert claim.startswith("Claim does not hold: ") and "\n" not in claim
    assert "merged finance MC acc 0.250 [0.200, 0.300]: upper bound below cpt's 0.350" in claim
    assert "merged finance ppl 25.0 > 1.5 × cpt's 12.9 = 19.4" in claim
    assert "merged chat format 0.500 < 0.95 and below instruct's [0.900, 1.000]" in claim
    # one condition at a time
    only_ppl = _ev(ppl=20.0, harness__avg=(0.338, 0.291, 0.385), chat__adherence=1.0)
    claim = method_claim(_evals(merged=only_ppl))
    assert "ppl 20.0 > 1.5" in claim and "MC acc" not in claim and "chat format" not in claim
    only_acc = _ev(ppl=14.2, harness__avg=(0.3, 0.28, 0.349), chat__adherence=1.0)
    claim = method_claim(_evals(merged=only_acc))
    assert "upper bound below cpt's 0.350" in claim and "ppl" not in claim
    # without an interval the value itself must reach the cpt model's acc
    assert "upper bound" in method_claim(
        _evals(merged=_ev(ppl=14.2, harness__avg=0.349, chat__adherence=1.0))
    )


def test_claim_not_checked_when_a_score_is_missing():
    evals = _evals()
    del evals["cpt"]
    assert method_claim(evals) == "Claim not checked: missing cpt harness/avg, cpt ppl."
    assert method_claim(_evals(), model="swept") == (
        "Claim not checked: missing swept harness/avg, swept ppl, swept chat/adherence."
    )


def test_summary_puts_the_claim_under_the_table():
    s = {
        "config_hash": "abc",
        "table": format_table(_evals(), None),
        "claim": method_claim(_evals()),
        "registered": {
            "merged": {"name": "finmerge-merged", "version": "3", "aliases": ["champion"]},
            "cpt": {"name": "finmerge-cpt", "version": "2"},
        },
        "promotion": {"decision": "promoted", "champion": "3"},
        "stages": {"merge": "Completed"},
        "models": {"merged": "s3://b/merge/k"},
        "tracking_uri": "http://mlflow",
        "mlflow_run_id": "r1",
        "seconds": 1.0,
    }
    md = summary_markdown(s)
    assert md.index(s["table"]) < md.index("Claim holds") < md.index("- merged model:")
    s.pop("claim")  # a summary made before the claim existed still renders
    assert "Claim" not in summary_markdown(s)
