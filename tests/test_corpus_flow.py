"""The corpus flow extends one lineage incrementally: no work on re-runs, only new filings cleaned and
deduplicated, and the corpus it ends with equals a one-shot run over all the files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from finmerge.config import DemoConfig, PipelineConfig
from finmerge.corpus import lineage
from finmerge.demo import world as W
from finmerge.runner.flow_runner import sources_fingerprint
from finmerge.runner.stage import RunContext
from finmerge.train.tokenize import corpus_records
from flows.corpus import run_corpus

pytestmark = pytest.mark.slow


def _cfg(root: Path, **parallel) -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.storage.uri = str(root / "store")
    cfg.storage.staging_dir = str(root / "staging")
    cfg.tracking.uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg.tracking.artifact_location = str(root / "mlartifacts")
    cfg.corpus.parallel = cfg.corpus.parallel.model_copy(update={"backend": "serial", **parallel})
    return cfg


def _run(cfg: PipelineConfig, src: Path) -> dict:
    ctx = RunContext.create(cfg)
    return run_corpus(cfg, ctx, [str(src)], sources_fingerprint([str(src)]))


def _ids(cfg: PipelineConfig, corpus: dict) -> list[str]:
    return [r["id"] for r in corpus_records(corpus["uri"], cfg.storage.staging_dir)]


@pytest.fixture(scope="module")
def filings(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("world")
    W.generate_world(DemoConfig(n_companies=10), root)
    return sorted(p for p in (root / "filings").rglob("*") if p.is_file())


def test_incremental_corpus_equals_one_shot(filings, tmp_path, prefect_harness):
    full = tmp_path / "full"
    full.mkdir()
    for p in filings:
        shutil.copy(p, full / p.name)
    one_cfg = _cfg(tmp_path / "one")
    one_shot = _run(one_cfg, full)

    cfg = _cfg(tmp_path / "inc")
    src = tmp_path / "src"
    src.mkdir()
    half = len(filings) // 2
    for p in filings[:half]:
        shutil.copy(p, src / p.name)
    first = _run(cfg, src)
    assert first["stages"] == {"ingest": "Completed", "clean": "Completed", "dedup": "Completed"}
    assert first["batches"] == 1

    again = _run(cfg, src)  # same files: every stage a cache hit, the corpus unchanged
    assert again["stages"] == {"ingest": "Cached", "clean": "Cached", "dedup": "Cached"}
    assert again["digest"] == first["digest"] and again["batches"] == 1

    os.utime(src / filings[0].name)  # touched, same bytes: read and hashed once, nothing cleaned
    touched = _run(cfg, src)
    assert touched["ingest_counts"]["docs"] == 0 and touched["ingest_counts"]["unchanged_files"] == half
    assert touched["stages"] == {"ingest": "Completed"} and touched["digest"] == first["digest"]
    assert _run(cfg, src)["stages"] == {"ingest": "Cached"}

    for p in filings[half:]:
        shutil.copy(p, src / p.name)
    second = _run(cfg, src)
    assert second["stages"] == {"ingest": "Completed", "clean": "Completed", "dedup": "Completed"}
    assert second["batches"] == 2 and second["ingest_counts"]["new_files"] == len(filings) - half
    new_sources = {
        Path(r["source"]).name for r in corpus_records(second["ingest_uri"], cfg.storage.staging_dir)
    }
    assert new_sources == {p.name for p in filings[half:]}  # only the new filings went through clean + dedup
    head = lineage.read_head(cfg.storage.uri, second["lineage"])
    assert head.dedup == second["uri"] and head.ingest == second["ingest_uri"]

    assert sorted(_ids(cfg, second)) == sorted(_ids(one_cfg, one_shot))

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        tables = {a.key: a for a in client.read_artifacts() if a.type == "table"}
    assert {"ingest-quarantine", "clean-filters", "dedup"} <= set(tables)
    filters = (
        json.loads(tables["clean-filters"].data)
        if isinstance(tables["clean-filters"].data, str)
        else tables["clean-filters"].data
    )
    assert {row["filter"] for row in filters} >= {"length", "ng_words", "hiragana_ratio"}


def test_dask_backend_matches_serial(filings, tmp_path, prefect_harness):
    src = tmp_path / "src"
    src.mkdir()
    for p in filings[:20]:
        shutil.copy(p, src / p.name)
    serial_cfg = _cfg(tmp_path / "serial")
    dask_cfg = _cfg(tmp_path / "dask", backend="dask", workers=2, shard_docs=20)
    serial, on_dask = _run(serial_cfg, src), _run(dask_cfg, src)
    assert on_dask["stages"] == {"ingest": "Completed", "clean": "Completed", "dedup": "Completed"}
    assert _ids(dask_cfg, on_dask) == _ids(serial_cfg, serial)


def test_another_demo_world_starts_its_own_corpus_and_new_filings_extend_it(
    filings, tmp_path, prefect_harness
):
    """The pipeline names a generated world's filings (``world``): a world generated with another config or
    seed in the same store is another corpus (it used to be deduplicated against the old world's filings and
    trained on both), while new filings next to the same world still extend its lineage."""
    cfg = _cfg(tmp_path)
    half = len(filings) // 2
    srcs = [tmp_path / "a", tmp_path / "b"]
    for src, part in zip(srcs, (filings[:half], filings[half:]), strict=True):
        src.mkdir()
        for p in part:
            shutil.copy(p, src / p.name)

    def run(src: Path, world: str) -> dict:
        return run_corpus(cfg, RunContext.create(cfg), [str(src)], sources_fingerprint([str(src)]), world)

    first = run(srcs[0], "world-1")
    other = run(srcs[1], "world-2")
    assert other["lineage"] != first["lineage"] and other["batches"] == 1
    assert set(_ids(cfg, other)).isdisjoint(_ids(cfg, first))
    for p in filings[half:]:  # new filings land beside world 1's
        shutil.copy(p, srcs[0] / p.name)
    extended = run(srcs[0], "world-1")
    assert extended["lineage"] == first["lineage"] and extended["batches"] == 2
    assert len(_ids(cfg, extended)) > len(_ids(cfg, first))
