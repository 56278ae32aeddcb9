"""Register the pipeline's cpt model (and its marked checkpoints) and merged model, then gate the merged one.

Each version is an MLflow model (the folder itself) with a LoggedModel holding its parameters (the pretrain or
merge section) and its test-set evaluation metrics, linked to the evaluation dataset (:func:`eval_dataset`)."""

from __future__ import annotations

from finmerge import __version__
from finmerge.config import config_hash, sha256_json
from finmerge.core import storage
from finmerge.models.loading import fingerprint
from finmerge.runner.flow_runner import StageRunner
from finmerge.runner.stage import code_version, input_digest
from tasks.evaluate import EVALUATE
from tasks.pretrain import PRETRAIN
from tasks.promote import gated_promotion
from tasks.registry import register_task


def lineage_tags(runner: StageRunner, inputs: dict, corpus: dict, tok: dict) -> dict:
    return {
        "finmerge.base": inputs["base"],
        "finmerge.base_digest": fingerprint(inputs["base"]),
        "finmerge.instruct": inputs["instruct"],
        "finmerge.instruct_digest": fingerprint(inputs["instruct"]),
        "finmerge.corpus_digest": corpus["digest"],
        "finmerge.corpus_lineage": corpus["lineage"],
        "finmerge.tokens_digest": tok["digest"],
        "finmerge.config_hash": config_hash(runner.cfg),
        "finmerge.code_version": code_version(*PRETRAIN.code),
        "finmerge.version": __version__,
    }


def eval_dataset(test: dict) -> dict | None:
    """The evaluation data the registered metrics were measured on, as one MLflow dataset: its digest covers
    every evaluate input (harness, held-out text, chat and general questions) by content."""
    given = {k: v for k, v in sorted(test.items()) if v}
    if not given:
        return None
    digests = {k: input_digest(EVALUATE.inputs[k], v) for k, v in given.items() if k in EVALUATE.inputs}
    source = given.get("heldout") or next(v for v in given.values() if isinstance(v, str))
    return {"name": "evaluation-test", "digest": sha256_json(digests), "source": storage.normalize(source)}


def register_cpt(
    register, name: str, cpt: dict, tags: dict, metrics: dict, common: dict, *, params: dict | None = None,
    eval_dataset: dict | None = None,
) -> list[dict]:  # fmt: skip
    """The cpt folder, then each checkpoint marked to keep, as versions of the model line ``name``;
    ``register(label, name, uri, **kwargs)`` registers one (a Prefect task in a flow, else directly).
    ``params`` are the LoggedModels' parameters; ``metrics`` (linked to ``eval_dataset``) the cpt's only."""
    out = [
        register("register-cpt", name, cpt["uri"], tags={**tags, "finmerge.role": "cpt"}, metrics=metrics,
                 params=params, eval_dataset=eval_dataset,
                 description="Continually pretrained finance model (θ_cpt)", **common)
    ]  # fmt: skip
    for step, uri in cpt.get("marked_checkpoints", {}).items():
        ckpt_tags = {**tags, "finmerge.role": "cpt-checkpoint", "finmerge.checkpoint_step": step}
        out.append(register(f"register-cpt-step-{step}", name, uri, tags=ckpt_tags,
                            params={**(params or {}), "checkpoint_step": step},
                            description=f"θ_cpt checkpoint at step {step}", **common))  # fmt: skip
    return out


def register_models(
    runner: StageRunner, parent_id: str, inputs, corpus, tok, cpt, mrg, evals, vec, chosen=None
):
    """cpt → ``registry.cpt_name``; merged → ``registry.merged_name`` as challenger, then the gates.

    With a sweep's ``chosen`` candidate the registered merge is that one, with its test evaluation
    (``evals["swept"]``); otherwise the configured merge (``evals["merged"]``)."""
    ctx, r, cfg = runner.ctx, runner.cfg.registry, runner.cfg
    lineage = lineage_tags(runner, inputs, corpus, tok)
    common = {
        "tracking_uri": ctx.tracking_uri,
        "experiment_id": ctx.experiment_id,
        "parent_run_id": parent_id,
    }
    cpt_metrics = {f"eval.{k}": v for k, v in evals["cpt"]["metrics"].items()}
    test_set = eval_dataset(inputs.get("test") or {})
    task = lambda label, *args, **kwargs: runner.call(register_task, label, *args, **kwargs)  # noqa: E731
    cpt_params = {"pretrain": cfg.pretrain.model_dump(mode="json")}
    cpt_reg = register_cpt(task, r.cpt_name, cpt, lineage, cpt_metrics, common, params=cpt_params,
                           eval_dataset=test_set)[0]  # fmt: skip
    merged_metrics = {f"eval.{k}": v for k, v in evals["swept" if chosen else "merged"]["metrics"].items()}
    if vec:
        merged_metrics.update(vec["metrics"])
    m = cfg.merge
    how = {"method": m.method, "alpha": m.alpha, "beta": m.beta}
    if chosen:
        how = {k: chosen["candidate"][k] for k in ("method", "alpha", "beta")}
    mrg_reg = runner.call(
        register_task,
        "register-merged",
        r.merged_name,
        chosen["merge"] if chosen else mrg["uri"],
        tags={
            **lineage,
            "finmerge.role": "merged",
            "finmerge.cpt_digest": cpt["digest"],
            "finmerge.parent.cpt": f"{r.cpt_name}/{cpt_reg['version']}",
            "finmerge.merge.method": how["method"],
            "finmerge.merge.alpha": how["alpha"],
            "finmerge.merge.beta": how["beta"],
            **({"finmerge.merge.chosen_by": "sweep (validation split)"} if chosen else {}),
        },
        metrics=merged_metrics,
        params={"merge": {**m.model_dump(mode="json"), **how}},
        eval_dataset=test_set,
        aliases=(r.new_alias,),
        bootstrap_alias=r.champion_alias if r.bootstrap_champion else None,
        description="θ_cpt + τ_inst: finance knowledge with instruction following",
        **common,
    )
    # the new version is challenger; it becomes champion only through the gates (not a cached stage:
    # the decision depends on the registry's current champion)
    promotion = gated_promotion(  # with registry.require_approval: paused until a person answers
        r.merged_name,
        tracking_uri=ctx.tracking_uri,
        registry=r,
        version=mrg_reg["version"],
        experiment_id=ctx.experiment_id,
        label="promote-merged",
    )
    return {"cpt": cpt_reg, "merged": mrg_reg}, promotion
