"""Retraining on new filings: the ``retrain`` flow and the ``watch_filings`` flow that triggers it by event.

``retrain`` (scheduled by ``retrain.cron``, or fired by the event) holds the model line's lock, runs the
incremental corpus stages (only new documents are cleaned and deduplicated), counts the tokens the latest cpt
version has not seen, and once there are ``retrain.min_new_tokens`` of them runs the pipeline: continual
pretraining → merge → evaluate → register → promote. A second retrain of the same line stands down while one
runs. ``watch_filings`` lists ``retrain.watch_uris`` and emits ``finmerge.filings.arrived`` for new objects;
the ``retrain-on-event`` deployment's trigger turns that event into a retrain run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from finmerge.config import PipelineConfig, config_hash
from finmerge.core import storage, tracking
from finmerge.runner.flow_runner import StageRunner
from finmerge.runner.locks import LineBusy, line_lock
from finmerge.runner.stage import RunContext
from flows.corpus import run_corpus


@flow(name="finmerge-retrain", log_prints=True)
def retrain(config: PipelineConfig, trigger: str = "manual", force: bool = False) -> dict:
    """Ingest new filings; retrain, merge, evaluate and promote once enough new tokens have arrived."""
    log, line = get_run_logger(), config.registry.merged_name
    r = config.retrain
    try:
        with line_lock("retrain", line, wait_s=r.lock_wait_s, lease_s=r.lock_lease_s):
            result = _retrain_locked(config, trigger, force)
    except LineBusy as exc:
        log.warning("standing down: %s", exc)
        result = {"decision": "skipped", "reason": str(exc), "trigger": trigger, "line": line}
    create_markdown_artifact(
        markdown=retrain_markdown(result), key="finmerge-retrain", description="retrain decision"
    )
    return result


def _retrain_locked(cfg: PipelineConfig, trigger: str, force: bool) -> dict:
    from finmerge.registry.retrain import decide, pending_tokens
    from flows.pipeline import pipeline, resolve_inputs

    log = get_run_logger()
    storage.configure_from(cfg.storage)
    uri, exp = tracking.ensure_experiment(cfg.tracking)
    run = tracking.Run.start(
        uri,
        exp,
        f"retrain-{cfg.name}",
        tags={
            "finmerge.stage": "retrain",
            "finmerge.trigger": trigger,
            "finmerge.config_hash": config_hash(cfg),
        },
    )
    try:
        ctx = RunContext.create(cfg, run.run_id)
        runner = StageRunner(ctx, cfg)
        inputs = resolve_inputs(runner, cfg)
        corpus = run_corpus(cfg, ctx, inputs["sources"], inputs["sources_digest"], inputs["world"])
        count = task(pending_tokens, name="pending-tokens", retries=2, retry_delay_seconds=[5, 30])
        pending = count(
            {"uri": corpus["uri"], "digest": corpus["digest"]},
            tokenizer_uri=inputs["base"],
            tracking_uri=uri,
            cpt_name=cfg.registry.cpt_name,
            staging_dir=ctx.staging_dir,
            trust_remote_code=cfg.models.trust_remote_code,
            allow_pickle=cfg.models.allow_pickle,
        )
        go, reason = decide(pending, cfg.retrain.min_new_tokens, force)
        log.info("retrain %s: %s", cfg.registry.merged_name, reason)
        run.metrics({k: v for k, v in pending.items() if isinstance(v, int)})
        run.tags(
            {"finmerge.retrain.decision": "retrain" if go else "wait", "finmerge.retrain.reason": reason}
        )
        result = {
            "decision": "retrained" if go else "waiting",
            "reason": reason,
            "trigger": trigger,
            "line": cfg.registry.merged_name,
            "new_ingested_docs": corpus["new_docs"],
            "corpus_stages": corpus["stages"],
            "pending": pending,
            "mlflow_run_id": run.run_id,
        }
        if go:
            summary = pipeline(cfg)
            result.update(
                registered=summary["registered"],
                promotion=summary["promotion"],
                table=summary["table"],
                pipeline_run_id=summary["mlflow_run_id"],
            )
        run.end()
        return result
    except BaseException:
        run.fail()
        raise


def retrain_markdown(res: dict) -> str:
    lines = [f"# finmerge retrain of {res['line']}: {res['decision']}", "", f"- trigger: {res['trigger']}"]
    lines.append(f"- reason: {res['reason']}")
    if "pending" in res:
        p = res["pending"]
        lines.append(
            f"- new since cpt v{p['trained_version'] or '–'}: {p['new_batches']} batch(es), "
            f"{p['new_docs']:,} documents, {p['new_tokens']:,} tokens"
        )
    if "promotion" in res:
        m, pr = res["registered"]["merged"], res["promotion"]
        lines += [
            f"- merged: `{m['name']}` v{m['version']}; promotion: {pr['decision']} (champion v{pr['champion']})",
            "",
            res["table"],
        ]
    return "\n".join(lines) + "\n"


@flow(name="finmerge-watch-filings", log_prints=True)
def watch_filings(config: PipelineConfig) -> dict:
    """List the watched prefixes; emit ``finmerge.filings.arrived`` for the model line when objects are new."""
    from prefect.events import emit_event

    from finmerge.registry.retrain import (
        ARRIVED_EVENT,
        commit_scan,
        line_resource,
        scan_new_objects,
        watch_state_uri,
    )

    log = get_run_logger()
    storage.configure_from(config.storage)
    uris = list(config.retrain.watch_uris or config.corpus.ingest.sources)
    if not uris:
        raise ValueError("retrain.watch_uris and corpus.ingest.sources are both empty: nothing to watch")
    state = watch_state_uri(storage.normalize(config.storage.uri), uris)
    scan = task(scan_new_objects, name="scan", retries=2, retry_delay_seconds=[5, 30])(uris, state)
    line = config.registry.merged_name
    if scan["new"]:
        emit_event(
            ARRIVED_EVENT,
            resource={"prefect.resource.id": line_resource(line), "prefect.resource.name": line},
            payload={"count": len(scan["new"]), "examples": scan["new"][:20], "prefixes": uris},
        )
        log.info("%d new object(s) under %s: emitted %s", len(scan["new"]), uris, ARRIVED_EVENT)
    # saved after the event went out: a crash before this re-announces the same objects (at least once)
    commit_scan(state, scan["listing"])
    return {"new": len(scan["new"]), "objects": len(scan["listing"]), "event": bool(scan["new"])}
