"""The corpus flow: ingest → clean → dedup, incrementally, extending the corpus lineage.

Only the new batch goes through clean and dedup (dedup checks it against every batch already kept, through
the index the dedup folders carry), then the lineage HEAD moves. With ``corpus.parallel.backend: dask`` the
stages are submitted to prefect-dask's ``DaskTaskRunner`` and their shards fan out on the same cluster.
"""

from __future__ import annotations

import datetime as dt
import json

from prefect import flow

from finmerge import lineage, storage
from finmerge.config import PipelineConfig, sha256_json
from finmerge.orchestration import RunContext, code_version, stage_key
from flows.common import StageRunner, sources_fingerprint


def stage_modules() -> dict[str, tuple]:
    """The source modules each corpus stage runs (their code version goes into its cache key)."""
    import finmerge.filings
    import finmerge.minhash
    import finmerge.sources
    import finmerge.textclean
    import finmerge.textio
    import tasks.clean
    import tasks.dedup
    import tasks.edinet
    import tasks.ingest

    return {
        "ingest": (tasks.ingest, tasks.edinet, finmerge.sources, finmerge.filings, finmerge.textio),
        "clean": (tasks.clean, finmerge.textclean, finmerge.minhash, finmerge.textio, finmerge.sources),
        "dedup": (tasks.dedup, finmerge.minhash, finmerge.textio),
    }


def corpus_modules() -> tuple:
    return tuple(m for mods in stage_modules().values() for m in mods)


def lineage_id(cfg: PipelineConfig) -> str:
    """Same rules (parsing, cleaning, dedup config and code) → same lineage; sources are not part of it."""
    c = cfg.corpus
    rules = c.ingest.model_dump(mode="json", exclude={"sources", "edinet"})
    ng_words = _file_digest(c.clean.ng_words_uri)
    return stage_key("corpus", code_version(*corpus_modules()), rules, c.clean, ng_words, c.dedup)


def corpus_stages(runner: StageRunner, cfg: PipelineConfig, sources: list[str], sources_digest: str) -> dict:
    """Run the corpus stages for what is new in ``sources``; returns the corpus (latest dedup folder)."""
    import tasks.clean as clean
    import tasks.dedup as dedup
    import tasks.ingest as ingest

    ctx, c = runner.ctx, cfg.corpus
    staging, modules = ctx.staging_dir, stage_modules()
    lin = lineage_id(cfg)
    head = lineage.read_head(ctx.storage_uri, lin)
    edinet = c.ingest.edinet
    download = edinet.download_uri or storage.join(ctx.storage_uri, "edinet")
    # EDINET publishes every day: the listing is part of the input, so a new day is a new ingest.
    listing = (dt.date.today().isoformat(), sources_fingerprint([download])) if edinet.enabled else None
    inputs = sha256_json([sources_digest, listing])
    if head.ingest is not None and head.inputs == inputs:
        # Nothing changed since HEAD moved: replay that run's keys, so every stage is a cache hit.
        prev_ingest, prev_dedup, prev_digest = head.prev_ingest, head.prev_dedup, head.prev_dedup_digest
    else:
        prev_ingest, prev_dedup, prev_digest = head.ingest, head.dedup, head.dedup_digest
    moved = {
        "inputs": inputs,
        "prev_ingest": prev_ingest,
        "prev_dedup": prev_dedup,
        "prev_dedup_digest": prev_digest,
    }
    ing = runner.run(
        ingest.ingest_task,
        "ingest",
        code=modules["ingest"],
        key=(c.ingest, sources_digest, prev_ingest, listing),
        params={
            "sources": list(sources),
            "staging_dir": staging,
            "text_field": c.ingest.text_field,
            "prev_uri": prev_ingest,
            "edinet": edinet,
            "edinet_download_uri": download,
            "parallel": c.parallel,
            "max_file_mb": c.ingest.max_file_mb,
            "max_line_mb": c.ingest.max_line_mb,
        },
        log_params=c.ingest.model_dump(),
    )
    counts = ing["counts"]
    if counts["docs"] == 0:
        if prev_dedup is None:
            raise ValueError(
                f"corpus is empty: no documents ingested from {list(sources)} "
                f"({counts['quarantined']} quarantined; see {ing['uri']}/quarantine.jsonl)"
            )
        # The manifest may still have learnt something (quarantined or touched files): HEAD takes it.
        head = lineage.write_head(
            ctx.storage_uri, head, ingest=ing["uri"], dedup=prev_dedup, dedup_digest=prev_digest, **moved
        )
        return _corpus(head, ing, new_docs=0)
    cln = runner.run(
        clean.clean_task,
        "clean",
        code=modules["clean"],
        key=(c.clean, ing["digest"], _file_digest(c.clean.ng_words_uri)),
        params={"in_uri": ing["uri"], "cfg": c.clean, "staging_dir": staging, "parallel": c.parallel},
        log_params=c.clean.model_dump(),
    )
    ddp = runner.run(
        dedup.dedup_task,
        "dedup",
        code=modules["dedup"],
        key=(c.dedup, cln["digest"], prev_digest),
        params={
            "in_uri": cln["uri"],
            "cfg": c.dedup,
            "staging_dir": staging,
            "prev_uri": prev_dedup,
            "parallel": c.parallel,
        },
        log_params=c.dedup.model_dump(),
    )
    batches = len(json.loads(storage.read_text(storage.join(ddp["uri"], "chain.json"))))
    head = lineage.write_head(
        ctx.storage_uri,
        head,
        ingest=ing["uri"],
        dedup=ddp["uri"],
        dedup_digest=ddp["digest"],
        batches=batches,
        **moved,
    )
    return _corpus(head, ing, new_docs=cln["counts"]["kept"])


def _file_digest(uri: str | None) -> str | None:
    """Content of a file the config only names (the NG-word list): edits to it must re-run the stage."""
    return storage.sha256_bytes(storage.read_bytes(uri)) if uri else None


def _corpus(head: lineage.CorpusHead, ing: dict, new_docs: int) -> dict:
    return {
        "uri": head.dedup,
        "digest": head.dedup_digest,
        "lineage": head.lineage,
        "batches": head.batches,
        "ingest_uri": ing["uri"],
        "new_docs": new_docs,
        "ingest_counts": ing["counts"],
    }


def task_runner_for(cfg: PipelineConfig):
    """prefect-dask's DaskTaskRunner for ``backend: dask``; None keeps Prefect's default."""
    p = cfg.corpus.parallel
    if p.backend != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if p.dask_address:
        return DaskTaskRunner(address=p.dask_address)
    workers = p.workers or None
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


@flow(name="finmerge-corpus", log_prints=True)
def corpus_flow(config: PipelineConfig, ctx: RunContext, sources: list[str], sources_digest: str) -> dict:
    """Ingest, clean and deduplicate what is new; returns the corpus and how each stage ended."""
    runner = StageRunner(ctx, submit=config.corpus.parallel.backend == "dask")
    result = corpus_stages(runner, config, sources, sources_digest)
    return {**result, "stages": runner.states}


def run_corpus(cfg: PipelineConfig, ctx: RunContext, sources: list[str], sources_digest: str) -> dict:
    runner = task_runner_for(cfg)
    fl = corpus_flow.with_options(task_runner=runner) if runner is not None else corpus_flow
    return fl(config=cfg, ctx=ctx, sources=list(sources), sources_digest=sources_digest)
