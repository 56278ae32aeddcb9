"""The end-to-end pipeline: corpus → continual pretraining → merge → analyze → evaluate → register.

Flows only compose: each stage is declared in ``tasks/`` and run by the one runner, which caches it on its
inputs' content digests, its config section and its code version, so a re-run with nothing changed finds
every stage Cached.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger

from finmerge import __version__
from finmerge.config import PipelineConfig, config_hash
from finmerge.core import storage, tracking
from finmerge.runner.fingerprints import parts_digest, sources_fingerprint
from finmerge.runner.flow_runner import StageRunner
from finmerge.runner.stage import RunContext
from flows.corpus import run_corpus
from flows.registration import register_models
from flows.report import MODELS, format_table, publish_summary, summary_markdown  # noqa: F401 (re-export)
from flows.sweep import demo_split, publish_sweep, run_sweep, validation_data
from tasks.analyze import ANALYZE
from tasks.demo import DEMO_BASE, DEMO_INSTRUCT, DEMO_WORLD
from tasks.evaluate import EVALUATE
from tasks.merge import MERGE
from tasks.pretrain import PRETRAIN
from tasks.tokenize import TOKENIZE


def _demo_inputs(runner: StageRunner, cfg: PipelineConfig) -> dict:
    world = runner.run(DEMO_WORLD, {})
    base = runner.run(DEMO_BASE, {"world": world["uri"]})
    inst = runner.run(DEMO_INSTRUCT, {"world": world["uri"], "base": base["uri"]})
    w, extra = world["uri"], list(cfg.corpus.ingest.sources)
    return {
        "base": base["uri"],
        "instruct": inst["uri"],
        # the demo filings, plus any sources the config adds (new filings land there)
        "sources": [storage.join(w, "filings"), *extra],
        "sources_digest": world["digest"] + (":" + sources_fingerprint(extra) if extra else ""),
        # the corpus lineage of this world's filings: a world generated otherwise is another corpus
        "world": parts_digest(w, ("filings/",)),
        "test": demo_split(w, "test"),
        "validation": demo_split(w, "validation"),
    }


def _user_inputs(cfg: PipelineConfig) -> dict:
    e = cfg.evaluate
    return {
        "base": cfg.models.base,
        "instruct": cfg.models.instruct,
        "sources": cfg.corpus.ingest.sources,
        "sources_digest": sources_fingerprint(cfg.corpus.ingest.sources),
        "world": None,
        "test": {"harness": e.harness_data, "heldout": e.heldout, "chat": e.chat_questions,
                 "general": e.general_questions},
        "validation": validation_data(cfg) if cfg.merge.sweep.enabled else None,
    }  # fmt: skip


def resolve_inputs(runner: StageRunner, cfg: PipelineConfig) -> dict:
    """Models, sources and evaluation data: the demo world's (built, cached) or the config's."""
    return _demo_inputs(runner, cfg) if cfg.demo.enabled else _user_inputs(cfg)


def row_titles(cfg: PipelineConfig, chosen: dict | None) -> dict[str, str]:
    """Table row names that say which coefficients each merged row used."""
    m = cfg.merge
    titles = {"merged": f"merged (α={m.alpha:g}, β={m.beta:g})"}
    if chosen:
        c = chosen["candidate"]
        titles["swept"] = f"swept best (α={c['alpha']:g}, β={c['beta']:g})"
    return titles


@flow(name="finmerge-pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict:
    """Run the whole method on ``config`` and register the cpt and merged models."""
    cfg, log, t0 = config, get_run_logger(), time.perf_counter()
    storage.configure_from(cfg.storage)
    uri, exp = tracking.ensure_experiment(cfg.tracking)
    tags = {
        "finmerge.config_hash": config_hash(cfg),
        "finmerge.version": __version__,
        "finmerge.stage": "pipeline",
    }
    parent = tracking.Run.start(uri, exp, f"pipeline-{cfg.name}", tags=tags)
    try:
        parent.params(cfg.model_dump(mode="json"))
        runner = StageRunner(RunContext.create(cfg, parent.run_id), cfg)
        inputs = resolve_inputs(runner, cfg)
        base, inst = inputs["base"], inputs["instruct"]

        corpus = run_corpus(cfg, runner.ctx, inputs["sources"], inputs["sources_digest"], inputs["world"])
        runner.states.update(corpus.pop("stages"))
        tok = runner.run(TOKENIZE, {"corpus": corpus["uri"], "tokenizer": base})
        monitor = (inputs["validation"] or inputs["test"])["heldout"]  # CPT's loss curve on held-out text
        cpt = runner.run(PRETRAIN, {"base": base, "tokens": tok["uri"], "heldout": monitor})
        triplet = {"base": base, "instruct": inst, "domain": cpt["uri"]}
        mrg = runner.run(MERGE, triplet)
        vec = runner.run(ANALYZE, triplet) if cfg.analyze.enabled else None

        models = {"base": base, "instruct": inst, "cpt": cpt["uri"], "merged": mrg["uri"]}
        test = inputs["test"]
        evals = {
            label: runner.run(EVALUATE, {"model": model, **test}, label=f"evaluate-{label}", options={"label": label})
            for label, model in models.items()
        }  # fmt: skip
        chosen, sweep = None, None
        if cfg.merge.sweep.enabled:  # candidates scored on validation only; the choice then meets the test
            sweep = run_sweep(runner, cfg, triplet, inputs["validation"])
            publish_sweep(sweep, parent)
            chosen = sweep["chosen"]
            models["swept"] = chosen["merge"]
            evals["swept"] = runner.run(
                EVALUATE,
                {"model": chosen["merge"], **test},
                label="evaluate-swept",
                options={"label": "swept"},
            )
        registered, promotion = register_models(
            runner, parent.run_id, inputs, corpus, tok, cpt, mrg, evals, vec, chosen=chosen
        )
        log.info("promotion of %s: %s", cfg.registry.merged_name, promotion["decision"])

        titles = row_titles(cfg, chosen)
        summary = publish_summary(
            parent, runner, cfg, models, evals, vec, registered, promotion, t0, titles=titles
        )
        if sweep:
            summary["sweep"] = {k: sweep[k] for k in ("uri", "chosen", "reason", "candidates")}
        log.info("pipeline finished in %.1fs; stages: %s", summary["seconds"], runner.states)
        parent.end()
        return summary
    except BaseException:
        parent.fail()
        raise
