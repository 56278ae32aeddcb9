"""Continual pretraining on its own: tokenize a corpus if needed, train, register in the cpt line.

``run_pretrain`` is the plain function behind ``finmerge pretrain``; ``pretrain_flow`` runs the same steps
as Prefect tasks (cached, and retried: a crashed training job resumes from its latest checkpoint).
"""

from __future__ import annotations

from prefect import flow

from finmerge import __version__, modelio, storage
from finmerge.config import PipelineConfig, config_hash
from finmerge.orchestration import RunContext, code_version, result_of, retry_when, run_tracked, stage_key


def is_tokens(uri: str) -> bool:
    return storage.exists(storage.join(uri, "index.json"))


def corpus_digest(uri: str) -> str:
    manifest = storage.read_manifest(uri)
    if manifest is not None:
        return manifest["digest"]
    from flows.common import sources_fingerprint

    return sources_fingerprint([uri])


def lineage_tags(cfg: PipelineConfig, model_uri: str, tokens: dict, code: str) -> dict[str, str]:
    return {
        "finmerge.role": "cpt",
        "finmerge.base": storage.normalize(model_uri),
        "finmerge.base_digest": modelio.fingerprint(model_uri),
        "finmerge.tokens_digest": tokens["digest"],
        "finmerge.corpus_digest": tokens.get("corpus_digest") or tokens["digest"],
        "finmerge.config_hash": config_hash(cfg),
        "finmerge.code_version": code,
        "finmerge.version": __version__,
    }


def run_pretrain(
    cfg: PipelineConfig,
    model_uri: str,
    data_uri: str,
    out_uri: str,
    *,
    heldout_uri: str | None = None,
    register: bool = False,
    overwrite: bool = False,
) -> dict:
    """Tokenize ``data_uri`` when it is a corpus, pretrain into ``out_uri`` (resuming from its checkpoints),
    log to MLflow and optionally register the result (and marked checkpoints) in ``registry.cpt_name``."""
    import tasks.pretrain as pretrain
    import tasks.tokenize as tokenize
    from tasks.registry import register_model

    # Before any work (the MLflow run, tokenizing): missing inputs, and an output location that may not
    # be written, are refused.
    for what, uri in (("model", model_uri), ("data", data_uri), ("held-out text", heldout_uri)):
        if uri and not storage.exists(uri):
            raise storage.StorageError(f"{uri}: no such {what} (file, folder or s3:// object)")
    pretrain.check_targets(model_uri, data_uri, out_uri, heldout_uri, None, overwrite)
    ctx = RunContext.create(cfg)
    staging, trc = ctx.staging_dir, cfg.models.trust_remote_code
    if is_tokens(data_uri):
        tokens = result_of(data_uri) or {"uri": data_uri, "digest": corpus_digest(data_uri)}
    else:
        digest = corpus_digest(data_uri)
        key = stage_key(
            "tokenize",
            code_version(*tokenize.code_modules()),
            cfg.tokenize,
            digest,
            modelio.tokenizer_fingerprint(model_uri),
        )
        tokens = run_tracked(
            "tokenize",
            tokenize.tokenize_corpus,
            ctx.out_uri("tokenize", key),
            ctx,
            {"corpus_uri": data_uri, "tokenizer_uri": model_uri, "cfg": cfg.tokenize, "staging_dir": staging,
             "trust_remote_code": trc, "allow_pickle": cfg.models.allow_pickle},
            log_params=cfg.tokenize.model_dump(),
        )  # fmt: skip
        tokens["corpus_digest"] = digest
    train_cfg = cfg.pretrain.model_copy(update={"seq_len": cfg.tokenize.seq_len})
    result = run_tracked(
        "pretrain",
        pretrain.pretrain,
        storage.normalize(out_uri),
        ctx,
        {"base_uri": model_uri, "tokens_uri": tokens["uri"], "cfg": train_cfg, "staging_dir": staging,
         "heldout_uri": heldout_uri, "trust_remote_code": trc, "allow_pickle": cfg.models.allow_pickle,
         "overwrite": overwrite},
        log_params=train_cfg.model_dump(),
    )  # fmt: skip
    if register:
        code = code_version(*pretrain.code_modules())
        tags = lineage_tags(cfg, model_uri, tokens, code)
        common = {"tracking_uri": ctx.tracking_uri, "experiment_id": ctx.experiment_id}
        result["registered"] = [
            register_model(
                cfg.registry.cpt_name,
                result["uri"],
                tags=tags,
                metrics=result.get("metrics", {}),
                description="Continually pretrained finance model (θ_cpt)",
                **common,
            )
        ]
        for step, uri in result.get("marked_checkpoints", {}).items():
            result["registered"].append(
                register_model(
                    cfg.registry.cpt_name,
                    uri,
                    tags={**tags, "finmerge.role": "cpt-checkpoint", "finmerge.checkpoint_step": step},
                    description=f"θ_cpt checkpoint at step {step}",
                    **common,
                )
            )
    return result


@flow(name="finmerge-pretrain", log_prints=True)
def pretrain_flow(
    config: PipelineConfig,
    model: str,
    data: str,
    out: str,
    heldout: str | None = None,
    register_cpt: bool = True,
) -> dict:
    """Continual pretraining of ``model`` on ``data`` (a corpus or a tokenize output) into ``out``."""
    from prefect import task

    from tasks.pretrain import TrainingInterrupted

    step = task(
        run_pretrain,
        name="pretrain",
        retries=2,
        retry_delay_seconds=[2, 10],
        retry_condition_fn=retry_when((TrainingInterrupted, OSError)),
    )
    return step(config, model, data, out, heldout_uri=heldout, register=register_cpt)
