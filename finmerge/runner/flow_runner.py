"""The Prefect side of the one runner: a stage runs as a Prefect task around :func:`stage.execute`.

The task is cached by its output folder (so a second run with nothing changed shows every stage ``Cached``
in the UI), retried by :func:`stage.retryable`, and its tables become Prefect artifacts. A cached task still
gets its MLflow run (``finmerge.cache=hit``), as from the CLI. This and ``finmerge/runner/locks.py`` are the
only modules under ``finmerge/`` that import Prefect.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from prefect import task
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from finmerge.config import PipelineConfig
from finmerge.core import storage
from finmerge.runner import stage as stages
from finmerge.runner.stage import Planned, RunContext, Stage, sources_fingerprint  # noqa: F401 (re-export)


def result_storage(ctx: RunContext):
    """Prefect result storage under the pipeline's storage URI (a saved block: Prefect requires it)."""
    base = storage.join(ctx.storage_uri, "prefect-results")
    name = "finmerge-results-" + hashlib.sha256(base.encode()).hexdigest()[:12]
    if storage.is_remote(base):
        ep = storage.endpoint_url()
        # Only the endpoint goes into the block: credentials stay in the AWS environment chain.
        block = RemoteFileSystem(
            basepath=base, settings={"client_kwargs": {"endpoint_url": ep}} if ep else {}
        )
    else:
        storage.local_path(base).mkdir(parents=True, exist_ok=True)
        block = LocalFileSystem(basepath=base)
    block.save(name, overwrite=True)
    return block


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


def retry_when(extra: tuple[type[BaseException], ...] = ()):
    """A Prefect ``retry_condition_fn`` applying :func:`stage.retryable` to the attempt's exception."""

    def retry(_task, _task_run, state) -> bool:
        try:
            state.result()
        except BaseException as exc:
            return stages.retryable(exc, extra)
        return False

    return retry


def _cache_key(_ctx, parameters: dict) -> str:
    return f"finmerge-{hashlib.sha256(parameters['planned'].out_uri.encode()).hexdigest()[:32]}"


@functools.cache
def prefect_task(stage: Stage):
    """The Prefect task of a stage (one per declaration)."""

    def body(planned: Planned, ctx: RunContext) -> dict:
        return stages.execute(planned, ctx, on_tables=publish_tables)

    body.__name__ = body.__qualname__ = f"{stage.name}_stage"
    return task(
        body,
        name=stage.name,
        cache_key_fn=_cache_key,
        persist_result=True,
        result_serializer="json",
        retries=stage.retries,
        retry_delay_seconds=list(stages.RETRY_DELAYS_S),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_when(stage.retry_on),
    )


class StageRunner:
    """Runs declared stages as Prefect tasks in a flow and records how each ended (Completed/Cached)."""

    def __init__(self, ctx: RunContext, cfg: PipelineConfig, submit: bool = False):
        self.ctx, self.cfg = ctx, cfg
        self.submit = submit  # through the flow's task runner (e.g. Dask) instead of in this process
        self.block = result_storage(ctx)
        self.states: dict[str, str] = {}

    def run(
        self,
        stage: Stage,
        inputs: dict[str, Any],
        *,
        label: str | None = None,
        out: str | None = None,
        overwrite: bool = False,
        options: dict[str, Any] | None = None,
        cfg: PipelineConfig | None = None,
    ) -> dict:
        """One stage; ``cfg`` replaces the runner's config for this call (a sweep candidate's merge section)."""
        p = self._plan(stage, inputs, label, out, overwrite, options, cfg)
        return self._settle(p, self._submit(p) if self.submit else None)

    def run_many(self, stage: Stage, calls: list[dict[str, Any]], max_parallel: int = 1) -> list[dict]:
        """Mapped: the calls (``run``'s keyword arguments plus ``inputs``) submitted to the flow's task runner
        ``max_parallel`` at a time (each may hold a whole model in memory); each is its own task run,
        cached folder and MLflow run. Results in call order."""
        planned = [
            self._plan(stage, c["inputs"], c.get("label"), c.get("out"), c.get("overwrite", False),
                       c.get("options"), c.get("cfg"))
            for c in calls
        ]  # fmt: skip
        results: list[dict] = []
        for i in range(0, len(planned), max_parallel):
            window = planned[i : i + max_parallel]
            futures = [self._submit(p) for p in window]
            results += [self._settle(p, f) for p, f in zip(window, futures, strict=True)]
        return results

    def _plan(self, stage, inputs, label, out, overwrite, options, cfg) -> Planned:
        return stages.plan(stage, cfg or self.cfg, inputs, self.ctx, out=out, overwrite=overwrite,
                           label=label, options=options)  # fmt: skip

    def _runnable(self, p: Planned):
        complete = stages.cached(p) is not None
        return prefect_task(p.stage).with_options(
            result_storage=self.block, refresh_cache=not complete, task_run_name=p.label
        )

    def _submit(self, p: Planned):
        return self._runnable(p).submit(planned=p, ctx=self.ctx)

    def _settle(self, p: Planned, future) -> dict:
        if future is None:
            state = self._runnable(p)(planned=p, ctx=self.ctx, return_state=True)
        else:
            future.wait()
            state = future.state
        result = self._finish(p.label, state)
        if state.name == "Cached":  # Prefect skipped the body: the hit still gets its MLflow run
            result = stages.record_cache_hit(p, self.ctx, storage.result_of(p.out_uri) or result)
        return result

    def call(self, fn, label: str, *args, **kwargs):
        """Run a task that writes no stage folder (registration, promotion) with the same result storage."""
        runnable = fn.with_options(result_storage=self.block, task_run_name=label)
        return self._finish(label, runnable(*args, **kwargs, return_state=True))

    def _finish(self, label: str, state):
        self.states[label] = state.name
        return state.result()
