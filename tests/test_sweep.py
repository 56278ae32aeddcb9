"""The coefficient sweep: candidates, the objective, and the stage chain run from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest

from finmerge.cli import main
from finmerge.config import MergeConfig, SweepConstraint, SweepObjective
from finmerge.core import storage
from finmerge.sweep.candidates import candidates
from finmerge.sweep.select import pareto_front, select
from tests.harness_fixtures import write_harness
from tests.helpers import tiny_model


def _row(alpha, beta, **metrics):
    return {"candidate": {"alpha": alpha, "beta": beta}, "metrics": metrics}


def test_candidates_cover_the_grid_and_always_the_paper_setting():
    m = MergeConfig.model_validate({"sweep": {"alpha": [0.5, 0.75], "beta": [0.5]}})
    got = candidates(m)
    # the grid misses α = β = 1, so it is added (last): every sweep can say how the paper's setting did
    assert [(c.alpha, c.beta) for c in got] == [(0.5, 0.5), (0.75, 0.5), (1.0, 1.0)]
    assert [c.is_default for c in got] == [False, False, True]
    m = MergeConfig.model_validate(
        {
            "sweep": {
                "alpha": [1.0],
                "beta": [1.0],
                "methods": ["task_arithmetic", "ties"],
                "density": [0.3, 0.7],
            }
        }
    )
    got = candidates(m)
    # density multiplies only the methods that read it
    assert [c.label for c in got] == ["task_arithmetic-a1-b1", "ties-a1-b1-d0.3", "ties-a1-b1-d0.7"]
    section = got[1].merge_section(m)
    assert (section.method, section.density, section.alpha) == ("ties", 0.3, 1.0)


def test_objective_constraints_ties_and_fallback():
    obj = SweepObjective(
        metric="harness/avg",
        constraints=[SweepConstraint(metric="chat/adherence", value=0.9)],
        tie_break=["chat/answer_acc"],
    )
    rows = [
        _row(1.5, 1.0, **{"harness/avg": 0.80, "chat/adherence": 0.5, "chat/answer_acc": 0.9}),  # infeasible
        _row(0.5, 1.0, **{"harness/avg": 0.60, "chat/adherence": 0.95, "chat/answer_acc": 0.2}),
        _row(1.0, 0.5, **{"harness/avg": 0.60, "chat/adherence": 0.99, "chat/answer_acc": 0.4}),
        _row(1.0, 1.0, **{"harness/avg": 0.55, "chat/adherence": 1.0, "chat/answer_acc": 0.9}),
    ]
    got = select(rows, obj)
    # best feasible score is 0.60 (rows 1 and 2); the tie-break metric picks row 2
    assert got["index"] == 2 and got["feasible"] and "tied" in got["reason"]
    # with a tolerance the paper setting (0.55, within 0.05) joins the tie and wins on answers
    assert select(rows, obj.model_copy(update={"tolerance": 0.05}))["index"] == 3
    # no tie-break metrics: equal scores go to the candidate closest to α = β = 1 (rows 1, 2: distance 0.5)
    assert select(rows[:3], obj.model_copy(update={"tie_break": []}))["index"] == 1
    # nobody meets the constraint: the least violating wins, and the reason says so
    strict = obj.model_copy(update={"constraints": [SweepConstraint(metric="chat/adherence", value=1.5)]})
    got = select(rows, strict)
    assert got["index"] == 3 and not got["feasible"] and "no candidate meets" in got["reason"]
    # a missing metric never satisfies a constraint; minimising works
    ppl = SweepObjective(metric="ppl", goal="minimize", constraints=[], tie_break=[])
    assert select([_row(1, 1, ppl=20.0), _row(0.5, 1, ppl=12.0), _row(2, 1)], ppl)["index"] == 1


def test_pareto_front():
    pts = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (math.nan, 1.0), (0.5, 0.6)]
    assert pareto_front(pts) == [0, 5, 3]


@pytest.mark.slow
def test_sweep_command_merges_evaluates_and_chooses_on_validation_data(tmp_path, capsys):
    base, inst, dom = (tiny_model(tmp_path / n, seed=s) for n, s in (("b", 1), ("i", 2), ("d", 3)))
    val = tmp_path / "validation"
    write_harness(val / "harness", sizes={"cma_basics": 6, "fp2": 4, "security_sales_1": 4, "cpa_audit": 4,
                                          "chabsa": 4})  # fmt: skip
    (val / "heldout.jsonl").write_text(
        "".join(
            json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ["当社の売上高は増加しました。"] * 8
        )
    )
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "--set", f"storage.uri={tmp_path / 'store'}", "--set", f"storage.staging_dir={tmp_path / 'staging'}",
        "--set", f"tracking.uri={db}", "--set", "merge.sweep.objective.metric=ppl",
        "--set", "merge.sweep.objective.goal=minimize", "--set", "merge.sweep.objective.constraints=[]",
    ]  # fmt: skip
    triplet = ["--base", str(base), "--instruct", str(inst), "--domain", str(dom)]
    argv = ["sweep", *triplet, "--alpha", "0", "0.5", "--beta", "1", *common,
            "--harness", str(val / "harness"), "--heldout", str(val / "heldout.jsonl")]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["candidates"] == 3 and out["cache"] == "miss"  # α ∈ {0, 0.5} × β = 1, plus α = β = 1

    store = tmp_path / "store"
    merges, evals = sorted((store / "merge").iterdir()), sorted((store / "evaluate").iterdir())
    assert len(merges) == 3 and len(evals) == 3
    # the choice is the lowest validation perplexity, recomputed here from the evaluation folders
    ppl = {}
    for e in evals:
        res = json.loads((e / "results.json").read_text())
        ppl[res["config"]["model_uri"]] = res["finmerge"]["ppl"]["ppl"]
    assert out["chosen_merge"] == min(ppl, key=ppl.get)
    sweep_dir = store / "sweep" / out["uri"].rsplit("/", 1)[-1]
    assert (sweep_dir / "pareto.png").stat().st_size > 5000
    table = (sweep_dir / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| task_arithmetic-")]
    assert len(rows) == 3 and sum("**chosen**" in r for r in rows) == 1 and "α = β = 1" in table

    # one MLflow run per candidate stage, plus the sweep's own
    runs = mlflow.MlflowClient(db).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(db).search_experiments()], max_results=100
    )
    stages = sorted(r.data.tags.get("finmerge.stage") for r in runs)
    assert stages == ["evaluate"] * 3 + ["merge"] * 3 + ["merge-pass", "sweep"], stages
    # merge.sweep.shared_pass: the three candidates were merged in one read of the inputs, into the folders
    # their own merge stages planned, which then found them complete
    (pass_dir,) = (store / "merge-pass").iterdir()
    written = json.loads((pass_dir / "pass.json").read_text())["outputs"]
    assert sorted(o["uri"] for o in written) == [str(m) for m in merges]
    for o in written:
        assert json.loads((Path(o["uri"]) / storage.MANIFEST).read_text())["digest"] == o["digest"]
        assert o["metrics"]["merge/candidates_in_pass"] == 3.0
    merge_runs = [r for r in runs if r.data.tags.get("finmerge.stage") == "merge"]
    assert {r.data.tags["finmerge.cache"] for r in merge_runs} == {"hit"}
    assert all(r.data.metrics["merge/candidates_in_pass"] == 3.0 for r in merge_runs)
    # each evaluation logged what it read as MLflow dataset inputs: the validation files, nothing else
    for r in (r for r in runs if r.data.tags.get("finmerge.stage") == "evaluate"):
        read = {d.dataset.name: json.loads(d.dataset.source)["uri"] for d in r.inputs.dataset_inputs}
        assert read == {"harness": str(val / "harness"), "heldout": str(val / "heldout.jsonl")}, read
        ctx = {t.value for d in r.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert ctx == {"evaluation"}
    sweep_run = next(r for r in runs if r.data.tags.get("finmerge.stage") == "sweep")
    assert sweep_run.data.metrics["sweep/candidates"] == 3.0
    # every candidate is a LoggedModel of the sweep's run: its coefficients and validation scores comparable in
    # the MLflow UI like registered models
    exp_ids = [e.experiment_id for e in mlflow.MlflowClient(db).search_experiments()]
    mlflow.set_tracking_uri(db)
    try:
        logged = mlflow.search_logged_models(experiment_ids=exp_ids, output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    names = sorted(f"sweep-task_arithmetic-a{a}-b1" for a in ("0", "0p5", "1"))  # no '.' in MLflow names
    assert sorted(m.name for m in logged) == names
    assert all(m.source_run_id == sweep_run.info.run_id and m.model_type == "sweep-candidate" for m in logged)
    assert {m.name: {x.key: x.value for x in m.metrics}["validation.ppl"] for m in logged}[
        "sweep-" + out["chosen"].replace(".", "p")
    ] == min(ppl.values())

    # α = β = 1 is the plain merge: `finmerge merge` finds the candidate's folder complete
    assert main(["merge", *triplet, *common]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["cache"] == "hit" and plain["uri"] in {str(m) for m in merges}

    # nothing changed: every stage of a second sweep is a cache hit, the same choice
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["cache"] == "hit" and again["chosen_merge"] == out["chosen_merge"]
    assert len(list((store / "merge").iterdir())) == 3


def test_sweep_without_validation_data_is_refused(tmp_path, capsys):
    argv = ["sweep", "--base", str(tmp_path / "b"), "--instruct", str(tmp_path / "i"),
            "--domain", str(tmp_path / "d")]  # fmt: skip
    # no validation data configured: the sweep would have to choose on test items, so it does not run
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "merge.sweep needs validation data" in err and "Traceback" not in err
