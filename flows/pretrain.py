"""Continual pretraining on its own: tokenize a corpus if needed, train, register in the cpt line.

``run_pretrain`` is the plain function behind ``finmerge pretrain``; ``pretrain_flow`` runs the same steps
as Prefect tasks (cached, and retried: a crashed training job resumes from its latest checkpoint).
"""

from __future__ import annotations

from prefect import flow

from finmerge import __version__
from finmerge.config import PipelineConfig, config_hash
from finmerge.core import storage
from finmerge.models.loading import fingerprint
from finmerge.runner.stage import LocalRunner, RunContext, code_version
from tasks.pretrain import PRETRAIN
from tasks.tokenize import TOKENIZE


def is_tokens(uri: str) -> bool:
    return storage.exists(storage.join(uri, "index.json"))


def lineage_tags(cfg: PipelineConfig, model_uri: str, tokens: dict, code: str) -> dict[str, str]:
    return {
        "finmerge.role": "cpt",
        "finmerge.base": storage.normalize(model_uri),
        "finmerge.base_digest": fingerprint(model_uri),
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
    out_uri: str | None = None,
    *,
    heldout_uri: str | None = None,
    register: bool = False,
    overwrite: bool = False,
    runner=None,
) -> dict:
    """Tokenize ``data_uri`` when it is a corpus, pretrain (into ``out_uri``, else the stage's folder; a
    stopped run resumes from its checkpoints), and optionally register the result (and marked checkpoints)
    in ``registry.cpt_name``. ``runner``: the flow's StageRunner, else the CLI's LocalRunner."""
    from finmerge.registry.register import register_model
    from finmerge.train.pretrain import check_targets

    # Before any work (the MLflow run, tokenizing): missing inputs, and an output location that may not
    # be written, are refused.
    for what, uri in (("model", model_uri), ("data", data_uri), ("held-out text", heldout_uri)):
        if uri and not storage.exists(uri):
            raise storage.StorageError(f"{uri}: no such {what} (file, folder or s3:// object)")
    if out_uri:
        check_targets(model_uri, data_uri, out_uri, heldout_uri, None, overwrite)
    runner = runner or LocalRunner(RunContext.create(cfg), cfg)
    ctx = runner.ctx
    if is_tokens(data_uri):
        tokens = storage.result_of(data_uri) or {"uri": data_uri, "digest": fingerprint(data_uri)}
    else:
        tokens = runner.run(TOKENIZE, {"corpus": data_uri, "tokenizer": model_uri})
        tokens["corpus_digest"] = fingerprint(data_uri)
    inputs = {"base": model_uri, "tokens": tokens["uri"], "heldout": heldout_uri}
    result = runner.run(PRETRAIN, inputs, out=out_uri, overwrite=overwrite)
    if register:
        from flows.registration import register_cpt

        tags = lineage_tags(cfg, model_uri, tokens, code_version(*PRETRAIN.code))
        common = {"tracking_uri": ctx.tracking_uri, "experiment_id": ctx.experiment_id_()}
        direct = lambda _label, *args, **kwargs: register_model(*args, **kwargs)  # noqa: E731
        result["registered"] = register_cpt(
            direct, cfg.registry.cpt_name, result, tags, result.get("metrics", {}), common,
            params={"pretrain": cfg.pretrain.model_dump(mode="json")},
        )  # fmt: skip
    return result


@flow(name="finmerge-pretrain", log_prints=True)
def pretrain_flow(
    config: PipelineConfig,
    model: str,
    data: str,
    out: str | None = None,
    heldout: str | None = None,
    register_cpt: bool = True,
) -> dict:
    """Continual pretraining of ``model`` on ``data`` (a corpus or a tokenize output); ``out`` defaults to
    the stage's content-derived folder under ``storage.uri``."""
    from finmerge.runner.flow_runner import StageRunner

    runner = StageRunner(RunContext.create(config), config)
    return run_pretrain(config, model, data, out, heldout_uri=heldout, register=register_cpt, runner=runner)
