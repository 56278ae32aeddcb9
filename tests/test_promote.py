"""Promotion gates and rollback through a real `mlflow server` (artifacts on moto S3), plus the gate logic
on its own. Versions carry their eval.* metrics as the pipeline registers them."""

from __future__ import annotations

import json

import mlflow
import pytest

from finmerge.cli import main
from finmerge.config import PromotionGates, RegistryConfig, TrackingConfig
from finmerge.core import storage, tracking
from finmerge.models import loading as modelio
from finmerge.registry.promote import check_gates, promote, rollback, task_scores
from finmerge.registry.register import register_model
from tests.helpers import tiny_model

GOOD = {
    "harness/avg": 0.40,
    "harness/cma_basics/acc": 0.40,
    "harness/chabsa/acc": 0.6,
    "harness/chabsa/f1": 0.50,
    "ppl": 20.0,
    "chat/adherence": 0.9,
}


def test_task_scores_prefer_f1_and_gates():
    assert task_scores(GOOD) == {"cma_basics": 0.40, "chabsa": 0.50}
    gates = PromotionGates(max_task_drop=0.02, max_ppl_ratio=1.0, min_chat_adherence=0.8)
    ok = check_gates({**GOOD, "harness/cma_basics/acc": 0.385}, GOOD, gates)
    assert all(c.passed for c in ok) and {c.name for c in ok} == {
        "harness/cma_basics",
        "harness/chabsa",
        "ppl",
        "chat/adherence",
    }
    bad = {c.name: c for c in check_gates({**GOOD, "harness/chabsa/f1": 0.47, "ppl": 20.5}, GOOD, gates)}
    assert not bad["harness/chabsa"].passed and not bad["ppl"].passed and bad["chat/adherence"].passed
    missing = {c.name: c for c in check_gates({"ppl": 1.0, "chat/adherence": 1.0}, GOOD, gates)}
    assert missing["harness/cma_basics"].reason == "missing on the candidate"
    # no champion: only the absolute floors apply
    first = check_gates({"chat/adherence": 0.5}, None, gates)
    assert [(c.name, c.passed) for c in first] == [("chat/adherence", False)]


@pytest.fixture()
def server_registry(mlflow_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = TrackingConfig(uri=mlflow_server, experiment=f"promote-{tmp_path.name}")
    uri, exp = tracking.ensure_experiment(cfg)
    name = f"fm-promote-{tmp_path.name}".replace("_", "-")
    reg = RegistryConfig(merged_name=name)

    def register(seed: int, metrics: dict) -> str:
        folder = tiny_model(tmp_path / f"m{seed}", seed=seed)
        remote = f"s3://{s3_bucket}/models/{tmp_path.name}/m{seed}"  # a remote server needs remote sources
        fs, root = storage.filesystem(remote)
        fs.put(str(folder) + "/", root, recursive=True)
        res = register_model(
            name,
            remote,
            tracking_uri=uri,
            experiment_id=exp,
            tags={"finmerge.role": "merged"},
            metrics={f"eval.{k}": v for k, v in metrics.items()},
            aliases=("challenger",),
            bootstrap_alias="champion",
        )
        return res["version"]

    return {"uri": uri, "exp": exp, "name": name, "reg": reg, "register": register, "tmp": tmp_path}


@pytest.mark.slow
def test_promote_reject_force_and_rollback_on_a_real_server(server_registry):
    s = server_registry
    uri, name, reg = s["uri"], s["name"], s["reg"]
    client = tracking.client(uri)
    v1 = s["register"](1, GOOD)  # the first version is bootstrapped to champion
    assert promote(name, tracking_uri=uri, registry=reg)["decision"] == "already champion"

    # a challenger that loses 5 points on chabsa is rejected; champion stays, the decision is recorded
    v2 = s["register"](2, {**GOOD, "harness/chabsa/f1": 0.45})
    res = promote(name, tracking_uri=uri, registry=reg, experiment_id=s["exp"])
    assert res["decision"] == "rejected" and res["champion"] == v1 and res["version"] == v2
    assert "harness/chabsa" in res["report"] and "**fail**" in res["report"]
    tags = client.get_model_version(name, v2).tags
    assert tags["finmerge.promotion.decision"] == "rejected"
    assert tags["finmerge.promotion.failed"] == "harness/chabsa"
    runs = mlflow.search_runs(
        [s["exp"]], filter_string="tags.`finmerge.stage` = 'promote'", output_format="list"
    )
    assert runs and "promotion.md" in [a.path for a in client.list_artifacts(runs[0].info.run_id)]

    # a better challenger passes every gate: champion moves, the old one keeps `previous`
    v3 = s["register"](3, {**GOOD, "harness/cma_basics/acc": 0.45, "ppl": 19.0})
    res = promote(name, tracking_uri=uri, registry=reg)
    assert res["decision"] == "promoted" and res["champion"] == v3 and res["champion_before"] == v1
    aliases = client.get_registered_model(name).aliases
    assert aliases["champion"] == v3 and aliases["previous"] == v1 and aliases["challenger"] == v3

    # models:/<name>@champion resolves with a stock client to a folder transformers loads
    local = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(s["tmp"] / "dl"))
    assert modelio.load_causal_lm(local) is not None

    # rollback swaps champion and previous
    back = rollback(name, tracking_uri=uri, registry=reg)
    v1_digest = client.get_model_version(name, v1).tags["finmerge.digest"]
    assert back == {"name": name, "champion": v1, "previous": v3, "digest": v1_digest}  # v1's files verified
    assert client.get_model_version(name, v3).tags["finmerge.promotion.decision"] == "rolled back"

    # the CLI: a rejected promotion exits 3, --force promotes and says so
    common = ["--set", f"tracking.uri={uri}", "--set", f"registry.merged_name={name}"]
    assert main(["promote", "--version", v2, *common]) == 3
    assert main(["promote", "--version", v2, "--force", *common]) == 0
    assert client.get_registered_model(name).aliases["champion"] == v2
    assert client.get_model_version(name, v2).tags["finmerge.promotion.decision"] == "forced"
    assert main(["rollback", *common]) == 0
    assert client.get_registered_model(name).aliases["champion"] == v1
    json.dumps(res)  # decisions are JSON-serialisable for the Prefect artifact / CLI


@pytest.mark.slow
def test_racing_promotions_leave_one_champion_and_a_consistent_chain(server_registry, prefect_harness):
    """Two promotions started at the same instant (each passes against v1): the line's registry lock runs
    them one after the other, so the second is gated against the first's result, never against v1."""
    import contextvars
    import threading

    s = server_registry
    uri, name, reg = s["uri"], s["name"], s["reg"]
    v1 = s["register"](1, GOOD)
    v2 = s["register"](2, {**GOOD, "harness/cma_basics/acc": 0.45, "ppl": 19.0})
    v3 = s["register"](3, {**GOOD, "harness/cma_basics/acc": 0.50, "ppl": 18.0})  # better than both
    start, results = threading.Barrier(2), {}

    def race(version: str) -> None:
        start.wait()
        results[version] = promote(name, tracking_uri=uri, registry=reg, version=version)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(race, v)) for v in (v2, v3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {v2, v3}
    first, second = sorted(results.values(), key=lambda r: r["champion_before"] != v1)
    assert first["champion_before"] == v1 and first["decision"] == "promoted"
    # serialised: the second saw the first's outcome as the champion
    assert second["champion_before"] == first["champion"]
    client = tracking.client(uri)
    aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert aliases["champion"] == v3  # v3 wins in either order (v2 first: v3 beats it; v3 first: v2 fails)
    promoted = [r for r in (first, second) if r["decision"] == "promoted"]
    assert aliases["previous"] == promoted[-1]["champion_before"]
    # the replacement chain recorded in the tags ends at the champion
    chain, v = [v1], v1
    while (nxt := client.get_model_version(name, v).tags.get("finmerge.promotion.replaced_by")) is not None:
        chain.append(nxt)
        v = nxt
    assert chain[-1] == aliases["champion"] and len(chain) == 1 + len(promoted)


def test_cli_promote_refuses_when_a_person_must_approve(capsys):
    from finmerge.cli import main

    # the CLI cannot wait for a reviewer: it says where approval happens instead of promoting silently
    assert main(["promote", "--set", "registry.require_approval=true"]) == 2
    err = capsys.readouterr().err
    assert "require_approval is on" in err and "Prefect UI" in err and "Traceback" not in err
