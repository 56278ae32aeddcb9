"""Shared flow plumbing: result storage for the Prefect cache, and a runner that keys and runs stages."""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any

from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from finmerge import storage
from finmerge.orchestration import RunContext, code_version, stage_key


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


def sources_fingerprint(sources: list[str]) -> str:
    """Identity of raw inputs: every matched file's path, size and mtime/ETag."""
    h = hashlib.sha256()
    for src in sources:
        fs, path = storage.filesystem(src)
        paths = fs.find(path) if fs.isdir(path) else fs.glob(path)
        for p in sorted(paths):
            info = fs.info(p)
            h.update(f"{p}\t{info.get('size')}\t{info.get('ETag') or info.get('mtime', '')}\n".encode())
    return h.hexdigest()


class StageRunner:
    """Runs stage tasks with content-derived output folders and records how each ended (Completed/Cached)."""

    def __init__(self, ctx: RunContext, submit: bool = False):
        self.ctx = ctx
        self.submit = submit  # through the flow's task runner (e.g. Dask) instead of in this process
        self.block = result_storage(ctx)
        self.states: dict[str, str] = {}

    def run(
        self,
        task,
        label: str,
        *,
        code: tuple[ModuleType, ...],
        key: tuple[Any, ...],
        params: dict,
        log_params: dict | None = None,
    ) -> dict:
        stage = task.name
        out_uri = self.ctx.out_uri(stage, stage_key(stage, code_version(*code), *key))
        missing = storage.read_manifest(out_uri) is None
        runnable = task.with_options(result_storage=self.block, refresh_cache=missing, task_run_name=label)
        kwargs = {"out_uri": out_uri, "ctx": self.ctx, "params": params, "log_params": log_params}
        if self.submit:
            future = runnable.submit(**kwargs)
            future.wait()
            state = future.state
        else:
            state = runnable(**kwargs, return_state=True)
        return self._finish(label, state)

    def call(self, task, label: str, *args, **kwargs):
        """Run a task that writes no stage folder (e.g. registration) with the same cache storage."""
        runnable = task.with_options(result_storage=self.block, task_run_name=label)
        return self._finish(label, runnable(*args, **kwargs, return_state=True))

    def _finish(self, label: str, state):
        self.states[label] = state.name
        return state.result()
