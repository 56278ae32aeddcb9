"""The bridge between plain stage functions and Prefect: cache keys, result storage, MLflow per stage.

A stage's output folder is ``<storage.uri>/<stage>/<key>`` where the key hashes the stage name, its code
version, its config section and the content digests of its inputs. The Prefect cache key is derived from
that folder, so a second run with nothing changed finds every stage ``Cached``; changing one section
changes that stage's key and, through its output digest, the keys of the stages after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from prefect import task
from pydantic import BaseModel

from finmerge import __version__, storage, tracking
from finmerge.config import PipelineConfig, config_hash, sha256_json

try:  # botocore's connection errors (an S3 endpoint down) are not OSErrors
    from botocore.exceptions import BotoCoreError as _BotoError
except ImportError:  # pragma: no cover
    _BotoError = OSError
_IO_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    storage.StorageError,
    _BotoError,
)


def code_version(*modules: ModuleType | str) -> str:
    """Hash of the source files of the given modules (plus the package version)."""
    h = hashlib.sha256(__version__.encode())
    for mod in modules:
        module = sys.modules[mod] if isinstance(mod, str) else mod
        h.update(Path(inspect.getfile(module)).read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, code: str, *parts: Any) -> str:
    return sha256_json(
        [stage, code, [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]]
    )[:20]


class RunContext(BaseModel):
    """What a stage needs to know about the run it belongs to (small and serialisable)."""

    storage_uri: str
    staging_dir: str
    endpoint_url: str | None = None
    retry_attempts: int = storage.UPLOAD_RETRY.attempts
    retry_budget_s: float = storage.UPLOAD_RETRY.budget_s
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None
    config_hash: str

    @classmethod
    def create(cls, cfg: PipelineConfig, parent_run_id: str | None = None) -> RunContext:
        storage.configure_from(cfg.storage)
        uri, exp = tracking.ensure_experiment(cfg.tracking)
        return cls(
            storage_uri=storage.normalize(cfg.storage.uri),
            staging_dir=str(Path(cfg.storage.staging_dir).expanduser().resolve()),
            endpoint_url=cfg.storage.endpoint_url,
            retry_attempts=cfg.storage.retry_attempts,
            retry_budget_s=cfg.storage.retry_budget_s,
            tracking_uri=uri,
            experiment_id=exp,
            parent_run_id=parent_run_id,
            config_hash=config_hash(cfg),
        )

    def out_uri(self, stage: str, key: str) -> str:
        return storage.join(self.storage_uri, stage, key)


def _cache_key(_ctx, parameters: dict) -> str:
    return f"finmerge-{hashlib.sha256(parameters['out_uri'].encode()).hexdigest()[:32]}"


def retry_when(errors: tuple[type[BaseException], ...]):
    """A Prefect ``retry_condition_fn``: retry only when the attempt raised one of ``errors``."""

    def retry(_task, _task_run, state) -> bool:
        try:
            state.result()
        except storage.NoSpaceError:
            return False  # a full disk does not empty itself: fail now, with the message that says so
        except errors as exc:
            return not storage.disk_full(exc)  # a bare ENOSPC raised outside output_folder too
        except BaseException:
            return False
        return False

    return retry


def result_of(out_uri: str) -> dict | None:
    """A stage's return value rebuilt from a complete output folder (None if absent or incomplete)."""
    manifest = storage.read_manifest(out_uri)
    return (
        None
        if manifest is None
        else {"uri": manifest["uri"], "digest": manifest["digest"], **manifest["meta"]}
    )


def run_tracked(
    stage: str,
    fn: Callable[..., dict],
    out_uri: str,
    ctx: RunContext,
    params: dict,
    log_params: dict | None = None,
) -> dict:
    """Run ``fn(out_uri=..., **params)`` inside its own MLflow run (a child of the pipeline run)."""
    storage.configure(
        ctx.endpoint_url,
        dataclasses.replace(storage.UPLOAD_RETRY, attempts=ctx.retry_attempts, budget_s=ctx.retry_budget_s),
    )
    done = None if params.get("overwrite") else result_of(out_uri)
    if done is not None:  # committed by an earlier attempt whose cache record was lost
        return done
    tags = {
        "finmerge.stage": stage,
        "finmerge.config_hash": ctx.config_hash,
        "finmerge.output": out_uri,
        "finmerge.version": __version__,
    }
    # A retry (or a re-run after a crash) re-attaches to the run the failed attempt left unfinished.
    run = tracking.Run.resume(ctx.tracking_uri, ctx.experiment_id, "finmerge.output", out_uri)
    if run is None:
        run = tracking.Run.start(
            ctx.tracking_uri, ctx.experiment_id, stage, parent_id=ctx.parent_run_id, tags=tags
        )
        if log_params:
            run.params(log_params)
    kwargs = dict(params)
    accepted = inspect.signature(fn).parameters
    if "on_log" in accepted:
        kwargs["on_log"] = lambda step, metrics: run.metrics(metrics, step=step)
    if "tracking" in accepted:
        kwargs["tracking"] = {"uri": ctx.tracking_uri, "run_id": run.run_id}
    try:
        result = fn(out_uri=out_uri, **kwargs)
    except BaseException:
        run.fail()
        raise
    run.metrics(result.get("metrics", {}))
    run.artifact_files(out_uri, result.get("artifacts", []))
    publish_tables(stage, result.get("tables") or {})
    run.tags({"finmerge.digest": result["digest"]})
    run.end()
    return {**result, "mlflow_run_id": run.run_id}


def publish_tables(stage: str, tables: dict[str, list[dict]]) -> None:
    """Each ``meta["tables"]`` entry becomes a Prefect table artifact (when running inside Prefect)."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import TaskRunContext

    if not tables or TaskRunContext.get() is None:
        return
    for name, rows in tables.items():
        full = name if name.startswith(stage) else f"{stage}-{name}"
        key = re.sub(r"[^a-z0-9-]+", "-", full.lower()).strip("-")
        create_table_artifact(key=key, table=rows, description=f"{stage}: {name}")


def stage_task(
    stage: str, fn: Callable[..., dict], retries: int = 2, retry_on: tuple[type[BaseException], ...] = ()
):
    """A Prefect task running the plain stage function ``fn``: cached by output folder, retried on I/O
    errors and on ``retry_on`` (e.g. a training job that died and resumes from its checkpoint)."""

    def body(out_uri: str, ctx: RunContext, params: dict, log_params: dict | None = None) -> dict:
        return run_tracked(stage, fn, out_uri, ctx, params, log_params)

    body.__name__ = body.__qualname__ = f"{stage}_stage"
    body.__module__ = fn.__module__
    return task(
        body,
        name=stage,
        cache_key_fn=_cache_key,
        persist_result=True,
        result_serializer="json",
        retries=retries,
        retry_delay_seconds=[2, 10, 30],
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_when(_IO_ERRORS + retry_on),
    )
