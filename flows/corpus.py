"""The corpus flow: ingest → clean → dedup, incrementally, extending the corpus lineage.

Only the new batch goes through clean and dedup (dedup checks it against every batch already kept, through
the index the dedup folders carry), then the lineage HEAD moves. With ``corpus.parallel.backend: dask`` the
stages are submitted to prefect-dask's ``DaskTaskRunner`` and their shards fan out on the same cluster.
"""

from __future__ import annotations

import json

from prefect import flow

from finmerge.config import PipelineConfig, sha256_json
from finmerge.core import storage
from finmerge.corpus import lineage
from finmerge.runner.flow_runner import StageRunner
from finmerge.runner.stage import RunContext, code_version, file_digest, stage_key
from tasks.clean import CLEAN
from tasks.dedup import DEDUP
from tasks.ingest import INGEST, source_listing


def lineage_id(cfg: PipelineConfig, world: str | None = None) -> str:
    """Same rules (parsing, cleaning, dedup config and code) → same lineage; sources are not part of it, so
    new filings extend it. ``world`` names a generated world's filings: another demo world (another seed or
    config) is another corpus, not new filings of this one."""
    c = cfg.corpus
    rules = c.ingest.model_dump(mode="json", exclude={"sources", "edinet"})
    code = code_version(*dict.fromkeys(INGEST.code + CLEAN.code + DEDUP.code))
    parts = (rules, c.clean, file_digest(c.clean.ng_words_uri), c.dedup) + ((world,) if world else ())
    return stage_key("corpus", code, *parts)


def corpus_stages(
    runner: StageRunner,
    cfg: PipelineConfig,
    sources: list[str],
    sources_digest: str,
    world: str | None = None,
) -> dict:
    """Run the corpus stages for what is new in ``sources``; returns the corpus (latest dedup folder)."""
    ctx = runner.ctx
    lin = lineage_id(cfg, world)
    head = lineage.read_head(ctx.storage_uri, lin)
    listing = source_listing(cfg, sources_digest)
    inputs = sha256_json(listing)
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
    ing = runner.run(INGEST, {"sources": list(sources), "prev": prev_ingest, "listing": listing})
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
    cln = runner.run(CLEAN, {"corpus": ing["uri"]})
    ddp = runner.run(DEDUP, {"corpus": cln["uri"], "prev": prev_dedup})
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
def corpus_flow(
    config: PipelineConfig, ctx: RunContext, sources: list[str], sources_digest: str, world: str | None = None
) -> dict:
    """Ingest, clean and deduplicate what is new; returns the corpus and how each stage ended."""
    runner = StageRunner(ctx, config, submit=config.corpus.parallel.backend == "dask")
    result = corpus_stages(runner, config, sources, sources_digest, world)
    return {**result, "stages": runner.states}


def run_corpus(
    cfg: PipelineConfig, ctx: RunContext, sources: list[str], sources_digest: str, world: str | None = None
) -> dict:
    runner = task_runner_for(cfg)
    fl = corpus_flow.with_options(task_runner=runner) if runner is not None else corpus_flow
    return fl(config=cfg, ctx=ctx, sources=list(sources), sources_digest=sources_digest, world=world)
