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
    from flows.stages import evaluate_flow, merge_flow, promote_flow, rollback_flow

    return {
        "pipeline": pipeline,
        "pretrain": pretrain_flow,
        "merge": merge_flow,
        "evaluate": evaluate_flow,
        "promote": promote_flow,
        "rollback": rollback_flow,
    }


def deployments(config: PipelineConfig | None = None) -> list:
    config = config or load_config(None, [])
    default = {"config": config.model_dump(mode="json")}
    out = []
    for name, fl in flows().items():
        out.append(
            fl.to_deployment(
                name=name,
                parameters=default,
                description=(fl.description or "").strip().splitlines()[0] if fl.description else None,
                tags=["finmerge"],
            )
        )
    return out


def serve(config: PipelineConfig | None = None, limit: int | None = None) -> None:
    """Serve every deployment from this process until interrupted (development)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(config), limit=limit)
