"""The end-to-end pipeline: corpus → continual pretraining → merge → analyze → evaluate → register.

Flows only compose: the work is in ``tasks/``. Every stage is cached on its inputs' content digests, its
config section and its code version, so a re-run with nothing changed finds every stage Cached.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from finmerge import __version__, modelio, storage, tracking
from finmerge.config import PipelineConfig, config_hash
from finmerge.orchestration import RunContext, code_version
from flows.common import StageRunner, sources_fingerprint
from flows.corpus import run_corpus

MODELS = ("base", "instruct", "cpt", "merged")
TABLE_METRICS = [
    ("ppl", "finance ppl ↓"),
    ("harness/avg", "harness acc"),
    ("chat/adherence", "chat format"),
    ("chat/answer_acc", "chat answers"),
]


def _demo_inputs(runner: StageRunner, cfg: PipelineConfig) -> dict:
    import finmerge.demo.build
    import finmerge.demo.chat
    import finmerge.demo.general
    import finmerge.demo.vocab
    import finmerge.demo.world
    import tasks.demo as demo

    d, staging = cfg.demo, runner.ctx.staging_dir
    world = runner.run(
        demo.world_task,
        "demo_world",
        code=(demo, finmerge.demo.world, finmerge.demo.general, finmerge.demo.vocab),
        key=(demo.world_section(d),),
        params={"cfg": d, "staging_dir": staging},
        log_params=demo.world_section(d),
    )
    base = runner.run(
        demo.demo_base_task,
        "demo_base",
        code=(demo, finmerge.demo.build, finmerge.demo.models),
        key=(world["digest"], d.model, d.base_train, d.seed),
        params={"world_uri": world["uri"], "cfg": d, "staging_dir": staging},
        log_params={"model": d.model.model_dump(), "train": d.base_train.model_dump()},
    )
    inst = runner.run(
        demo.demo_instruct_task,
        "demo_instruct",
        code=(demo, finmerge.demo.build, finmerge.demo.chat),
        key=(world["digest"], base["digest"], d.instruct_train),
        params={"world_uri": world["uri"], "base_uri": base["uri"], "cfg": d, "staging_dir": staging},
        log_params={"train": d.instruct_train.model_dump()},
    )
    w, extra = world["uri"], list(cfg.corpus.ingest.sources)
    return {
        "base": base["uri"],
        "instruct": inst["uri"],
        # the demo filings, plus any sources the config adds (new filings land there)
        "sources": [storage.join(w, "filings"), *extra],
        "sources_digest": world["digest"] + (":" + sources_fingerprint(extra) if extra else ""),
        "harness": [storage.join(w, "eval", "harness")],
        "harness_digest": world["digest"],
        "heldout": storage.join(w, "eval", "heldout.jsonl"),
        "chat": storage.join(w, "eval", "chat_finance.jsonl"),
    }


def _user_inputs(cfg: PipelineConfig) -> dict:
    e = cfg.evaluate
    return {
        "base": cfg.models.base,
        "instruct": cfg.models.instruct,
        "sources": cfg.corpus.ingest.sources,
        "sources_digest": sources_fingerprint(cfg.corpus.ingest.sources),
        "harness": e.harness_data,
        "harness_digest": sources_fingerprint(e.harness_data) if e.harness_data else None,
        "heldout": e.heldout,
        "chat": e.chat_questions,
    }


def resolve_inputs(runner: StageRunner, cfg: PipelineConfig) -> dict:
    """Models, sources and evaluation data: the demo world's (built, cached) or the config's."""
    return _demo_inputs(runner, cfg) if cfg.demo.enabled else _user_inputs(cfg)


def _file_digest(uri: str | None) -> str | None:
    return storage.sha256_bytes(storage.read_bytes(uri)) if uri and storage.exists(uri) else None


def format_table(evals: dict[str, dict], cos: float | None) -> str:
    header = "| model | " + " | ".join(title for _, title in TABLE_METRICS) + " |"
    lines = [header, "|---" * (len(TABLE_METRICS) + 1) + "|"]
    for label in MODELS:
        if label not in evals:
            continue
        m = evals[label].get("metrics", {})
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), int | float) else "–" for k, _ in TABLE_METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if cos is not None:
        lines.append(f"\ncos(τ_inst, τ_fin) = {cos:+.4f} (global, all tensors)")
    return "\n".join(lines)


@flow(name="finmerge-pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict:
    """Run the whole method on ``config`` and register the cpt and merged models."""
    import finmerge.fin_harness
    import finmerge.merge_methods
    import finmerge.safetensors_stream
    import finmerge.triplet
    import tasks.analyze as analyze
    import tasks.evaluate as evaluate
    import tasks.merge as merge
    import tasks.pretrain as pretrain
    import tasks.tokenize as tokenize
    from tasks.promote import promote_task
    from tasks.registry import register_task

    cfg, log, t0 = config, get_run_logger(), time.perf_counter()
    storage.configure_from(cfg.storage)
    uri, exp = tracking.ensure_experiment(cfg.tracking)
    parent = tracking.Run.start(
        uri,
        exp,
        f"pipeline-{cfg.name}",
        tags={
            "finmerge.config_hash": config_hash(cfg),
            "finmerge.version": __version__,
            "finmerge.stage": "pipeline",
        },
    )
    try:
        parent.params(cfg.model_dump(mode="json"))
        ctx = RunContext.create(cfg, parent.run_id)
        runner, staging, trc = StageRunner(ctx), ctx.staging_dir, cfg.models.trust_remote_code
        inputs = resolve_inputs(runner, cfg)
        base_uri, inst_uri = inputs["base"], inputs["instruct"]
        base_fp, inst_fp = modelio.fingerprint(base_uri), modelio.fingerprint(inst_uri)
        heldout_digest = _file_digest(inputs["heldout"])

        corpus = run_corpus(cfg, ctx, inputs["sources"], inputs["sources_digest"])
        runner.states.update(corpus.pop("stages"))
        tok = runner.run(
            tokenize.tokenize_task,
            "tokenize",
            code=tokenize.code_modules(),
            key=(cfg.tokenize, corpus["digest"], modelio.tokenizer_fingerprint(base_uri)),
            params={
                "corpus_uri": corpus["uri"],
                "tokenizer_uri": base_uri,
                "cfg": cfg.tokenize,
                "staging_dir": staging,
                "trust_remote_code": trc,
                "allow_pickle": cfg.models.allow_pickle,
            },
            log_params=cfg.tokenize.model_dump(),
        )
        train_cfg = cfg.pretrain.model_copy(update={"seq_len": cfg.tokenize.seq_len})
        pretrain_code = pretrain.code_modules()
        cpt = runner.run(
            pretrain.pretrain_task,
            "pretrain",
            code=pretrain_code,
            key=(train_cfg, tok["digest"], base_fp, heldout_digest),
            params={
                "base_uri": base_uri,
                "tokens_uri": tok["uri"],
                "cfg": train_cfg,
                "staging_dir": staging,
                "heldout_uri": inputs["heldout"],
                "trust_remote_code": trc,
                "allow_pickle": cfg.models.allow_pickle,
            },
            log_params=train_cfg.model_dump(),
        )
        mrg = runner.run(
            merge.merge_task,
            "merge",
            code=(merge, finmerge.merge_methods, finmerge.triplet, finmerge.safetensors_stream),
            key=(cfg.merge, base_fp, inst_fp, cpt["digest"]),
            params={
                "base_uri": base_uri,
                "instruct_uri": inst_uri,
                "domain_uri": cpt["uri"],
                "cfg": cfg.merge,
                "staging_dir": staging,
                "trust_remote_code": trc,
                "allow_pickle": cfg.models.allow_pickle,
            },
            log_params=cfg.merge.model_dump(),
        )
        vec = None
        if cfg.analyze.enabled:
            vec = runner.run(
                analyze.analyze_task,
                "analyze",
                code=(analyze, finmerge.merge_methods, finmerge.triplet, finmerge.safetensors_stream),
                key=(base_fp, inst_fp, cpt["digest"]),
                params={
                    "base_uri": base_uri,
                    "instruct_uri": inst_uri,
                    "domain_uri": cpt["uri"],
                    "staging_dir": staging,
                    "allow_pickle": cfg.models.allow_pickle,
                },
            )

        eval_data = (inputs["harness_digest"], heldout_digest, _file_digest(inputs["chat"]))
        models = {
            "base": (base_uri, base_fp),
            "instruct": (inst_uri, inst_fp),
            "cpt": (cpt["uri"], cpt["digest"]),
            "merged": (mrg["uri"], mrg["digest"]),
        }
        evals = {}
        for label, (model_uri, fp) in models.items():
            evals[label] = runner.run(
                evaluate.evaluate_task,
                f"evaluate-{label}",
                code=evaluate.code_modules(),
                key=(cfg.evaluate, fp, eval_data),
                params={
                    "model_uri": model_uri,
                    "cfg": cfg.evaluate,
                    "label": label,
                    "harness_dirs": list(inputs["harness"]),
                    "heldout_uri": inputs["heldout"],
                    "chat_uri": inputs["chat"],
                    "staging_dir": staging,
                    "trust_remote_code": trc,
                    "allow_pickle": cfg.models.allow_pickle,
                },
                log_params={"label": label, **cfg.evaluate.model_dump()},
            )

        lineage = {
            "finmerge.base": base_uri,
            "finmerge.base_digest": base_fp,
            "finmerge.instruct": inst_uri,
            "finmerge.instruct_digest": inst_fp,
            "finmerge.corpus_digest": corpus["digest"],
            "finmerge.corpus_lineage": corpus["lineage"],
            "finmerge.tokens_digest": tok["digest"],
            "finmerge.config_hash": config_hash(cfg),
            "finmerge.code_version": code_version(*pretrain_code),
            "finmerge.version": __version__,
        }
        reg_common = {
            "tracking_uri": ctx.tracking_uri,
            "experiment_id": ctx.experiment_id,
            "parent_run_id": parent.run_id,
        }
        r = cfg.registry
        cpt_reg = runner.call(
            register_task,
            "register-cpt",
            r.cpt_name,
            cpt["uri"],
            tags={**lineage, "finmerge.role": "cpt"},
            metrics={f"eval.{k}": v for k, v in evals["cpt"]["metrics"].items()},
            description="Continually pretrained finance model (θ_cpt)",
            **reg_common,
        )
        for step, ckpt_uri in cpt.get("marked_checkpoints", {}).items():
            runner.call(
                register_task,
                f"register-cpt-step-{step}",
                r.cpt_name,
                ckpt_uri,
                tags={**lineage, "finmerge.role": "cpt-checkpoint", "finmerge.checkpoint_step": step},
                description=f"θ_cpt checkpoint at step {step}",
                **reg_common,
            )
        merged_metrics = {f"eval.{k}": v for k, v in evals["merged"]["metrics"].items()}
        if vec:
            merged_metrics.update({k: v for k, v in vec["metrics"].items()})
        mrg_reg = runner.call(
            register_task,
            "register-merged",
            r.merged_name,
            mrg["uri"],
            tags={
                **lineage,
                "finmerge.role": "merged",
                "finmerge.cpt_digest": cpt["digest"],
                "finmerge.parent.cpt": f"{r.cpt_name}/{cpt_reg['version']}",
                "finmerge.merge.method": cfg.merge.method,
                "finmerge.merge.alpha": cfg.merge.alpha,
                "finmerge.merge.beta": cfg.merge.beta,
            },
            metrics=merged_metrics,
            aliases=(r.new_alias,),
            bootstrap_alias=r.champion_alias if r.bootstrap_champion else None,
            description="θ_cpt + τ_inst: finance knowledge with instruction following",
            **reg_common,
        )
        # the new version is challenger; it becomes champion only through the gates (not a cached stage:
        # the decision depends on the registry's current champion)
        promotion = promote_task.with_options(task_run_name="promote-merged")(
            r.merged_name,
            tracking_uri=ctx.tracking_uri,
            registry=r,
            version=mrg_reg["version"],
            experiment_id=ctx.experiment_id,
        )
        log.info("promotion of %s v%s: %s", r.merged_name, mrg_reg["version"], promotion["decision"])

        cos = vec["metrics"].get("analyze/cos_global") if vec else None
        table = format_table(evals, cos)
        with tempfile.TemporaryDirectory() as tmp:
            report = evaluate.comparison_report({k: v["metrics"] for k, v in evals.items()}, Path(tmp))
            for f in report["files"]:
                parent.client.log_artifact(parent.run_id, str(Path(tmp) / Path(f).name), "report")
        for label, ev in evals.items():
            parent.metrics({f"{label}.{k}": v for k, v in ev["metrics"].items()})
        if cos is not None:
            parent.metrics({"cos_tau_inst_tau_fin": cos})
        seconds = time.perf_counter() - t0
        parent.metrics({"pipeline_seconds": seconds})
        summary = {
            "config_hash": config_hash(cfg),
            "seconds": round(seconds, 1),
            "stages": runner.states,
            "table": table,
            "cos": cos,
            "tracking_uri": ctx.tracking_uri,
            "mlflow_run_id": parent.run_id,
            "models": {k: v[0] for k, v in models.items()},
            "registered": {"cpt": cpt_reg, "merged": mrg_reg},
            "promotion": {k: v for k, v in promotion.items() if k != "report"},
            "evaluations": {k: v["metrics"] for k, v in evals.items()},
            "vectors": vec["uri"] if vec else None,
        }
        markdown = summary_markdown(summary)
        parent.text(markdown, "summary.md")
        create_markdown_artifact(
            markdown=markdown, key="finmerge-summary", description="finmerge pipeline summary"
        )
        log.info("pipeline finished in %.1fs; stages: %s", seconds, runner.states)
        parent.end()
        return summary
    except BaseException:
        parent.fail()
        raise


def summary_markdown(s: dict) -> str:
    reg = s["registered"]["merged"]
    stages = ", ".join(f"{k}: {v}" for k, v in s["stages"].items())
    return (
        f"# finmerge pipeline ({s['config_hash']})\n\n{s['table']}\n\n"
        f"- merged model: `{reg['name']}` version {reg['version']} aliases {', '.join(reg['aliases']) or '–'}"
        f" → `models:/{reg['name']}@{'champion' if 'champion' in reg['aliases'] else reg['version']}`\n"
        f"- promotion: {s['promotion']['decision']} (champion v{s['promotion']['champion']})\n"
        f"- cpt model: `{s['registered']['cpt']['name']}` version {s['registered']['cpt']['version']}\n"
        f"- folders: " + ", ".join(f"{k} `{v}`" for k, v in s["models"].items()) + "\n"
        f"- MLflow: `{s['tracking_uri']}` run `{s['mlflow_run_id']}`\n- stages: {stages}\n"
        f"- wall time: {s['seconds']} s\n"
    )
