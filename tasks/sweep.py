"""Sweep report: choose the merge coefficients from the candidates' validation evaluations."""

import logging

from finmerge.runner.stage import Stage, StageCall
from finmerge.sweep.report import sweep_report

log = logging.getLogger(__name__)


def _work(c: StageCall) -> dict:
    (evaluations,) = c.args("evaluations")
    result = sweep_report(evaluations, c.section, c.out_uri, c.staging_dir, **c.kw("overwrite"))
    _record_candidates(c, evaluations)
    return result


def _record_candidates(c: StageCall, evaluations: list[dict]) -> None:
    """Each candidate as an MLflow LoggedModel of the sweep's run (params: its merge; metrics: its validation
    scores), so the MLflow UI compares them like registered models. Only when the sweep really ran (a cache
    hit adds none); a failure to record is a warning: the choice is made and committed already."""
    from finmerge.core import storage, tracking
    from finmerge.registry.register import record_logged_model

    try:
        info = c.tracking()
        run, client = tracking.Run(info["uri"], info["run_id"]), tracking.client(info["uri"])
        exp = client.get_run(info["run_id"]).info.experiment_id
        for e in evaluations:
            cand = e["candidate"]
            metrics = (storage.result_of(e["evaluation"]) or {}).get("metrics", {})
            record_logged_model(
                client, experiment_id=exp, name="sweep-" + cand["label"].replace(".", "p"), run=run, model_uri=e["merge"],
                digest=storage.read_manifest(e["merge"])["digest"], model_type="sweep-candidate",
                params={"merge": {k: cand[k] for k in ("method", "alpha", "beta", "density")}},
                metrics={f"validation.{k}": v for k, v in metrics.items()},
            )  # fmt: skip
    except Exception as exc:
        log.warning("sweep: could not record the candidates as MLflow LoggedModels: %s", exc)


# The evaluations enter the key as values: each names its folder, whose digest is in the entry.
SWEEP = Stage("sweep", "merge.sweep", {"evaluations": "value"}, code=("finmerge.sweep",), work=_work,
              key_fields=("objective",))  # fmt: skip
