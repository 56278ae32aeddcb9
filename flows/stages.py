"""Single-stage flows for deployments: merge, evaluate, promote, rollback (pretrain and corpus have their
own modules). Each takes the one pipeline config, so the Prefect UI shows the same typed form everywhere,
plus the stage's inputs; each only composes the plain stage functions as tasks.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from finmerge import storage, tracking
from finmerge.config import PipelineConfig


def _staging(config: PipelineConfig) -> str:
    storage.configure_from(config.storage)
    return str(Path(config.storage.staging_dir).expanduser().resolve())


@flow(name="finmerge-merge", log_prints=True)
def merge_flow(config: PipelineConfig, base: str, instruct: str, domain: str, out: str) -> dict:
    """θ = θ_base + α·τ_inst + β·τ_fin (or the configured method) into the folder ``out``."""
    from tasks.merge import merge_models

    step = task(merge_models, name="merge", retries=2, retry_delay_seconds=[2, 10])
    m = config.models
    return step(
        base,
        instruct,
        domain,
        out,
        config.merge,
        _staging(config),
        trust_remote_code=m.trust_remote_code,
        allow_pickle=m.allow_pickle,
    )


@flow(name="finmerge-evaluate", log_prints=True)
def evaluate_flow(config: PipelineConfig, model: str, out: str, label: str = "model") -> dict:
    """The evaluation stage on one model with ``config.evaluate`` (harness, ppl, chat probe, judge)."""
    from tasks.evaluate import evaluate_model

    e = config.evaluate
    step = task(evaluate_model, name="evaluate", retries=1, retry_delay_seconds=[5])
    return step(
        model,
        out,
        e,
        label=label,
        harness_dirs=list(e.harness_data),
        heldout_uri=e.heldout,
        chat_uri=e.chat_questions,
        staging_dir=_staging(config),
        trust_remote_code=config.models.trust_remote_code,
        allow_pickle=config.models.allow_pickle,
    )


@flow(name="finmerge-promote", log_prints=True)
def promote_flow(
    config: PipelineConfig, name: str | None = None, version: str | None = None, force: bool = False
) -> dict:
    """Gate a version (default: the challenger) against the champion; see ``tasks/promote.py``."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.promote import promote_task

    uri, exp = tracking.ensure_experiment(config.tracking)
    res = promote_task(
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
    from tasks.promote import rollback

    uri = tracking.resolve_uri(config.tracking)
    return task(rollback, name="rollback")(
        name or config.registry.merged_name, tracking_uri=uri, registry=config.registry
    )
