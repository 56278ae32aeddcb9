"""Deployments on a real `prefect server`: `finmerge serve` serves them, a run is started through the
Prefect API (as the UI's "Run" button does) with the pipeline config as its typed parameter, and the
promote deployment moves the champion in a real MLflow registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finmerge import stack
from finmerge.config import PipelineConfig, TrackingConfig
from finmerge.core import tracking
from finmerge.demo.edinet import write_fixture_filings
from finmerge.registry.register import register_model
from finmerge.stack import stop
from tests.helpers import tiny_model

ROOT = Path(__file__).resolve().parents[1]

# deployment name -> flow name suffix (finmerge-<flow>/<deployment>)
DEPLOYMENTS = {
    "pipeline": "pipeline",
    "pretrain": "pretrain",
    "merge": "merge",
    "sweep": "sweep",
    "evaluate": "evaluate",
    "promote": "promote",
    "rollback": "rollback",
    "retrain": "retrain",
    "retrain-on-event": "retrain",
    "watch-filings": "watch-filings",
}
GOOD = {"eval.harness/avg": 0.4, "eval.harness/fp2/acc": 0.4, "eval.ppl": 20.0, "eval.chat/adherence": 1.0}


@pytest.fixture()
def prefect_server(tmp_path):
    """The real `prefect server` of `finmerge stack` (S3 and MLflow come up beside it, unused here)."""
    info = stack.up(tmp_path / "stack")
    try:
        yield info["services"]["prefect"]["url"]
    finally:
        stack.down(tmp_path / "stack")


@pytest.mark.slow
# generous: the event-triggered retrain runs the whole (test-sized) pipeline, on a machine that may be busy
@pytest.mark.timeout(1800)
def test_served_deployment_run_through_the_api_promotes(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # a registry with a champion (v1) and a better challenger (v2)
    tcfg = TrackingConfig(
        uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(tmp_path / "art").as_uri()
    )
    uri, exp = tracking.ensure_experiment(tcfg)
    for seed, metrics in ((1, GOOD), (2, {**GOOD, "eval.harness/fp2/acc": 0.45, "eval.ppl": 19.0})):
        register_model(
            "fm-deploy",
            str(tiny_model(tmp_path / f"m{seed}", seed=seed)),
            tracking_uri=uri,
            experiment_id=exp,
            metrics=metrics,
            aliases=("challenger",),
            bootstrap_alias="champion",
        )
    cfg = PipelineConfig.model_validate(
        {
            "tracking": {"uri": tcfg.uri, "artifact_location": tcfg.artifact_location},
            "registry": {"merged_name": "fm-deploy"},
        }
    )

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "serve-home")}
    exe = str(Path(sys.executable).parent / "finmerge")
    landing = tmp_path / "landing"
    landing.mkdir()
    # The served deployments' default config (what a triggered run gets): the test-sized pipeline, new filings
    # ingested from `landing`, everything written under tmp_path, a model line of its own.
    line = ["--set", "registry.merged_name=fm-event-merged"]
    store = ["--set", f"storage.uri={tmp_path / 'store'}"]
    serve_cfg = ["--config", str(ROOT / "configs" / "test.yaml"), *line, *store]
    for kv in (
        f"storage.staging_dir={tmp_path / 'staging'}",
        f"tracking.uri={tcfg.uri}",
        f"tracking.artifact_location={tcfg.artifact_location}",
        f"corpus.ingest.sources=['{landing}']",
        "registry.cpt_name=fm-event-cpt",
        "retrain.watch_cron='0 0 1 1 *'",  # the served watcher stays out of the way; the test runs its own
    ):
        serve_cfg += ["--set", kv]
    triggered = None
    serve = subprocess.Popen(
        [exe, "serve", *serve_cfg],
        env=env,
        cwd=ROOT,
        stdout=open(tmp_path / "serve.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            import anyio

            async def deployed() -> dict:
                async with get_client() as client:
                    out = {}
                    for name, fl in DEPLOYMENTS.items():
                        try:
                            d = await client.read_deployment_by_name(f"finmerge-{fl}/{name}")
                        except Exception:
                            continue
                        out[name] = d
                    return out

            deadline = time.monotonic() + 240
            found = {}
            while time.monotonic() < deadline and len(found) < len(DEPLOYMENTS):
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                found = anyio.run(deployed)
                time.sleep(2)
            assert set(found) == set(DEPLOYMENTS), (tmp_path / "serve.log").read_text()[-3000:]
            # the UI form: `config` is the pydantic model's schema, with the defaults from the config
            schema = found["promote"].parameter_openapi_schema
            assert "config" in schema["properties"] and "version" in schema["properties"]
            assert "registry" in str(schema) and "max_task_drop" in str(schema)

            run = run_deployment(
                "finmerge-promote/promote",
                parameters={"config": cfg.model_dump(mode="json"), "version": "2"},
                timeout=300,
            )
            assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])

            # with registry.require_approval a passing challenger waits for a person: the run pauses with a
            # typed form; approving moves the alias, rejecting or not answering in time leaves it
            asked = cfg.model_copy(
                update={"registry": cfg.registry.model_copy(update={"require_approval": True})}
            )
            for answer in ({"approve": True, "reviewer": "alice", "comment": "looks right"},
                           {"approve": False, "reviewer": "bob", "comment": "wait for Q3"}, None):  # fmt: skip
                version = _register_better(tmp_path, uri, exp)
                reg = (
                    asked.registry.model_copy(update={"approval_timeout_s": 3})
                    if answer is None
                    else asked.registry
                )
                params = {"config": asked.model_copy(update={"registry": reg}).model_dump(mode="json")}
                paused = run_deployment("finmerge-promote/promote", parameters=params, timeout=0)
                if answer is not None:
                    # the wait is the promote run's `finmerge-approval` subflow run: the one a reviewer resumes
                    waiting = anyio.run(_paused_run, 120)
                    assert waiting is not None, (tmp_path / "serve.log").read_text()[-3000:]
                    champion = str(tracking.client(uri).get_registered_model("fm-deploy").aliases["champion"])
                    assert champion == str(int(version) - 1)  # gates passed, but nothing moved yet
                    gates = anyio.run(_artifact_markdown, paused.id, "promote-fm-deploy-gates")
                    assert f"fm-deploy v{version}: **awaiting approval**" in gates, gates
                    anyio.run(_resume, waiting.id, answer)
                final = anyio.run(_wait_until_final, paused.id, 120)
                assert final.state.is_completed(), (final.state, (tmp_path / "serve.log").read_text()[-3000:])
                tags = tracking.client(uri).get_model_version("fm-deploy", version).tags
                aliases = tracking.client(uri).get_registered_model("fm-deploy").aliases
                if answer and answer["approve"]:
                    assert (
                        str(aliases["champion"]) == version
                        and tags["finmerge.promotion.decision"] == "promoted"
                    )
                    assert (tags["finmerge.approval.reviewer"], tags["finmerge.approval.comment"]) == (
                        "alice",
                        "looks right",
                    )
                else:
                    assert str(aliases["champion"]) == str(int(version) - 1 if answer else int(version) - 2)
                    want = "rejected by reviewer" if answer else "approval timed out"
                    assert tags["finmerge.promotion.decision"] == want
                    assert tags["finmerge.approval.reviewer"] == (answer["reviewer"] if answer else "timeout")

            # retraining: a weekday-evening schedule (Tokyo), one run at a time per deployment
            sched = found["retrain"].schedules[0].schedule
            assert (sched.cron, sched.timezone) == ("0 19 * * 1-5", "Asia/Tokyo")
            assert found["retrain"].global_concurrency_limit.limit == 1
            assert found["retrain"].concurrency_options.collision_strategy.value == "CANCEL_NEW"
            assert found["retrain"].parameters["trigger"] == "schedule"

            # new objects under the watched prefix → the watcher's event → the trigger starts retrain-on-event
            write_fixture_filings(str(landing), 0, 1)  # one real EDINET package
            # the watcher runs as its own process (`finmerge watch`), as the watch-filings deployment would
            watch = [exe, "watch", *store, *line, "--set", f"retrain.watch_uris=['{landing}']"]

            def run_watch() -> dict:
                done = subprocess.run(watch, env=env, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stderr[-3000:]
                return json.loads(done.stdout.strip().splitlines()[-1])

            assert run_watch() == {"new": 1, "objects": 1, "event": True}
            assert run_watch()["event"] is False  # nothing new: no second event
            triggered = anyio.run(_wait_for_run, found["retrain-on-event"].id, 120)
            assert triggered is not None, (tmp_path / "serve.log").read_text()[-3000:]
            assert triggered.parameters["trigger"] == "event" and "config" in triggered.parameters
            # ... and the served process runs it to the end: a new line retrains at once (no threshold)
            final = anyio.run(_wait_until_final, triggered.id, 1200)
            assert final.state.is_completed(), (final.state, (tmp_path / "serve.log").read_text()[-5000:])
            report = anyio.run(_artifact_markdown, triggered.id, "finmerge-retrain")
            assert report.startswith("# finmerge retrain of fm-event-merged: retrained\n"), report
            assert "- trigger: event\n" in report and "- merged: `fm-event-merged` v1;" in report, report

            # One stage, one runner: `merge` on the pipeline's inputs, from the CLI and from the served merge
            # deployment, finds the pipeline's merge folder (a cache hit) and still leaves an MLflow run each.
            (pipe_run,) = tracking.client(uri).search_runs(
                [exp], "tags.`finmerge.stage` = 'merge' and tags.`finmerge.cache` = 'miss'"
            )
            inputs = {r: pipe_run.data.params[f"input.{r}"] for r in ("base", "instruct", "domain")}
            folder = pipe_run.data.tags["finmerge.output"]
            cli = subprocess.run(
                [exe, "merge", *serve_cfg, *(f"--{r}={u}" for r, u in inputs.items())],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr[-3000:]
            by_cli = json.loads(cli.stdout.strip().splitlines()[-1])
            assert (by_cli["uri"], by_cli["cache"]) == (folder, "hit"), by_cli
            served = run_deployment("finmerge-merge/merge", parameters=inputs, timeout=300)
            assert served.state.is_completed(), (served.state, (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        if triggered is not None:  # a failed assertion leaves no flow process running
            with temporary_settings({PREFECT_API_URL: prefect_server}):
                if not anyio.run(_is_final, triggered.id):
                    anyio.run(_cancel, triggered.id)
        stop(serve)
    # the triggered run's effects in MLflow: its retrain run, finished, tagged with the event trigger, and
    # version 1 of the new line registered (cpt and merged, with lineage) and bootstrapped champion
    client = tracking.client(uri)
    (rt,) = client.search_runs(
        [exp], "tags.`finmerge.stage` = 'retrain' and tags.`finmerge.trigger` = 'event'"
    )
    assert rt.info.status == "FINISHED" and rt.data.tags["finmerge.retrain.decision"] == "retrain"
    assert rt.data.metrics["new_docs"] > 0 and rt.data.metrics["new_tokens"] > 0
    merged = client.get_model_version("fm-event-merged", "1")
    assert str(client.get_registered_model("fm-event-merged").aliases["champion"]) == "1"
    cpt = client.get_model_version("fm-event-cpt", "1")
    assert merged.tags["finmerge.parent.cpt"] == "fm-event-cpt/1" and cpt.tags["finmerge.corpus_digest"]
    aliases = client.get_registered_model("fm-deploy").aliases
    # v2 promoted by the gates; v3 approved by a person; v4 rejected by one; v5 not answered in time
    assert str(aliases["champion"]) == "3" and str(aliases["previous"]) == "2"
    assert client.get_model_version("fm-deploy", "2").tags["finmerge.promotion.decision"] == "promoted"
    # the merge stage's MLflow runs: the pipeline's (a child of its pipeline run), then a cache hit each from
    # the CLI and from the deployment (top-level runs), all on one folder, which is the only merge folder
    runs = client.search_runs(
        [exp], "tags.`finmerge.stage` = 'merge'", order_by=["attributes.start_time ASC"]
    )
    assert [r.data.tags["finmerge.cache"] for r in runs] == ["miss", "hit", "hit"]
    assert {r.data.tags["finmerge.output"] for r in runs} == {folder}
    assert {r.data.tags["finmerge.cache_key"] for r in runs} == {Path(folder).name}
    assert "mlflow.parentRunId" in runs[0].data.tags and all(
        "mlflow.parentRunId" not in r.data.tags for r in runs[1:]
    )
    assert all(
        r.info.status == "FINISHED" and r.data.params["alpha"] == runs[0].data.params["alpha"] for r in runs
    )
    assert [p.name for p in (tmp_path / "store" / "merge").iterdir()] == [Path(folder).name]


def _register_better(tmp_path, uri: str, exp: str) -> str:
    """A new challenger of fm-deploy, better than every version before it; returns its version."""
    client = tracking.client(uri)
    n = len(client.search_model_versions("name='fm-deploy'")) + 1
    metrics = {**GOOD, "eval.harness/fp2/acc": 0.4 + 0.05 * n, "eval.ppl": 20.0 - n}
    reg = register_model("fm-deploy", str(tiny_model(tmp_path / f"m{n}", seed=n)), tracking_uri=uri,
                         experiment_id=exp, metrics=metrics, aliases=("challenger",))  # fmt: skip
    return str(reg["version"])


async def _paused_run(timeout: float):
    """The flow run that is paused waiting for input (the Prefect UI lists it with a Resume button)."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    async with get_client() as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=paused)
            if runs:
                return runs[0]
            await anyio.sleep(1)
    return None


async def _resume(flow_run_id, answer: dict) -> None:
    """What the UI's Resume form sends: the typed input."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        result = await client.resume_flow_run(flow_run_id, run_input=answer)
        assert result.status.value == "ACCEPT", result


async def _wait_for_run(deployment_id, timeout: float):
    """The first flow run of a deployment, once the automation has created it."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            if runs:
                return runs[0]
            await anyio.sleep(1)
    return None


async def _wait_until_final(flow_run_id, timeout: float):
    """The flow run once its state is final (COMPLETED, FAILED, CRASHED, CANCELLED), or as it is at the end."""
    import anyio
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deadline = time.monotonic() + timeout
        while True:
            run = await client.read_flow_run(flow_run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            await anyio.sleep(2)


async def _is_final(flow_run_id) -> bool:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return (await client.read_flow_run(flow_run_id)).state.is_final()


async def _artifact_markdown(flow_run_id, key: str) -> str:
    """The markdown artifact ``key`` that the flow run created (Prefect API, as the UI shows it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with get_client() as client:
        (art,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
        return art.data


async def _cancel(flow_run_id, timeout: float = 60) -> None:
    """Cancel a run and wait until it is final, so no flow process outlives the test."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if run.state.is_final():
                return
            await anyio.sleep(1)
