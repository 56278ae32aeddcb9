"""Single-stage flows for deployments: merge, sweep, evaluate, promote, rollback (pretrain and corpus have their
own modules). Each takes the one pipeline config, so the Prefect UI shows the same typed form everywhere,
plus the stage's inputs; each runs the declared stage through the same runner as the pipeline (same
output folder and cache, an MLflow run, the same retry rule). ``out`` defaults to the stage's
content-derived folder under ``storage.uri``.
"""

from __future__ import annotations

from prefect import flow

from finmerge.config import PipelineConfig
from finmerge.core import tracking
from finmerge.runner.flow_runner import StageRunner
from finmerge.runner.stage import RunContext


def _runner(config: PipelineConfig) -> StageRunner:
    return StageRunner(RunContext.create(config), config)


@flow(name="finmerge-merge", log_prints=True)
def merge_flow(config: PipelineConfig, base: str, instruct: str, domain: str, out: str | None = None) -> dict:
    """θ = θ_base + α·τ_inst + β·τ_fin (or the configured method)."""
    from tasks.merge import MERGE

    return _runner(config).run(MERGE, {"base": base, "instruct": instruct, "domain": domain}, out=out)


@flow(name="finmerge-sweep", log_prints=True)
def sweep_flow(config: PipelineConfig, base: str, instruct: str, domain: str) -> dict:
    """Merge each ``merge.sweep`` candidate and evaluate it on the validation data (``merge.sweep.*``),
    as mapped task runs; choose by ``merge.sweep.objective``. The Pareto plot and table become artifacts."""
    from flows.sweep import publish_sweep, run_sweep, validation_data

    triplet = {"base": base, "instruct": instruct, "domain": domain}
    res = run_sweep(_runner(config), config, triplet, validation_data(config))
    publish_sweep(res)
    return {k: res[k] for k in ("uri", "digest", "chosen", "reason", "candidates", "cache")}


@flow(name="finmerge-evaluate", log_prints=True)
def evaluate_flow(config: PipelineConfig, model: str, out: str | None = None, label: str = "model") -> dict:
    """The evaluation stage on one model with ``config.evaluate`` (harness, ppl, chat probe, judge)."""
    from tasks.evaluate import EVALUATE

    e = config.evaluate
    inputs = {"model": model, "harness": list(e.harness_data), "heldout": e.heldout, "chat": e.chat_questions,
              "general": e.general_questions}  # fmt: skip
    return _runner(config).run(EVALUATE, inputs, out=out, label=f"evaluate-{label}", options={"label": label})


@flow(name="finmerge-promote", log_prints=True)
def promote_flow(
    config: PipelineConfig, name: str | None = None, version: str | None = None, force: bool = False
) -> dict:
    """Gate a version (default: the challenger) against the champion; see ``finmerge/registry/promote.py``.
    With ``registry.require_approval`` the run pauses for a person's decision (a form in the Prefect UI)."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.promote import gated_promotion

    uri, exp = tracking.ensure_experiment(config.tracking)
    res = gated_promotion(
        name or config.registry.merged_name,
        tracking_uri=uri,
        registry=config.registry,
        version=version,
        experiment_id=exp,
        force=force,
    )
    create_markdown_artifact(
        markdown=res["report"], key="finmerge-promotion", description="promotion decision"
    )
    return {k: v for k, v in res.items() if k != "report"}


@flow(name="finmerge-rollback", log_prints=True)
def rollback_flow(config: PipelineConfig, name: str | None = None) -> dict:
    """Champion back to the previous champion."""
    from tasks.promote import rollback_task

    uri = tracking.resolve_uri(config.tracking)
    return rollback_task(name or config.registry.merged_name, tracking_uri=uri, registry=config.registry)
