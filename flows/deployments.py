"""The deployments: one per flow, each parameterised by the pipeline config (a typed form in the UI).

``prefect.yaml`` at the repository root declares the same set for `prefect deploy` onto a work pool;
:func:`serve` (``finmerge serve``) serves them from this process for development, no work pool needed.
"""

from __future__ import annotations

from finmerge.config import PipelineConfig, load_config


def flows() -> dict:
    """deployment name -> flow object (imported lazily: each pulls in its stage code)."""
    from flows.pipeline import pipeline
    from flows.pretrain import pretrain_flow
    from flows.retrain import retrain, watch_filings
    from flows.stages import evaluate_flow, merge_flow, promote_flow, rollback_flow, sweep_flow

    return {
        "pipeline": pipeline,
        "pretrain": pretrain_flow,
        "merge": merge_flow,
        "sweep": sweep_flow,
        "evaluate": evaluate_flow,
        "promote": promote_flow,
        "rollback": rollback_flow,
        "retrain": retrain,
        "retrain-on-event": retrain,
        "watch-filings": watch_filings,
    }


def _extras(name: str, config: PipelineConfig) -> dict:
    """Schedules, triggers and concurrency of the retraining deployments (see flows/retrain.py)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from finmerge.registry.retrain import ARRIVED_EVENT, line_resource

    r = config.retrain
    # a second run of the same deployment is cancelled at once; across deployments the line lock decides
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    if name == "retrain":
        schedules = [Cron(r.cron, timezone=r.timezone)] if r.cron else []
        return {
            "schedules": schedules,
            "concurrency_limit": one_at_a_time,
            "parameters": {"trigger": "schedule"},
        }
    if name == "retrain-on-event":
        trigger = DeploymentEventTrigger(
            name=f"new filings for {config.registry.merged_name}",
            expect={ARRIVED_EVENT},
            match={"prefect.resource.id": line_resource(config.registry.merged_name)},
            parameters={"trigger": "event"},
        )
        return {"triggers": [trigger], "concurrency_limit": one_at_a_time, "parameters": {"trigger": "event"}}
    if name == "watch-filings":
        return {"schedules": [Cron(r.watch_cron, timezone=r.timezone)], "concurrency_limit": one_at_a_time}
    return {}


def deployments(config: PipelineConfig | None = None) -> list:
    config = config or load_config(None, [])
    default = {"config": config.model_dump(mode="json")}
    out = []
    for name, fl in flows().items():
        extras = _extras(name, config)
        params = {**default, **extras.pop("parameters", {})}
        out.append(
            fl.to_deployment(
                name=name,
                parameters=params,
                description=(fl.description or "").strip().splitlines()[0] if fl.description else None,
                tags=["finmerge"],
                **extras,
            )
        )
    return out


def serve(config: PipelineConfig | None = None, limit: int | None = None) -> None:
    """Serve every deployment from this process until interrupted (development)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(config), limit=limit)
