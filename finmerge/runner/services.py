"""The Prefect-backed services the library asks :mod:`finmerge.core.services` for.

Imported by ``finmerge/runner/__init__.py``, so every entry point that reaches the runner has them. Prefect is
imported inside each provider, never here: importing the runner stays fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from finmerge.core import services
from finmerge.runner.locks import line_lock


def read_secret_block(name: str) -> Any:
    """The value of the Prefect Secret block ``name``."""
    from prefect.blocks.system import Secret

    return Secret.load(name).get()


@contextlib.contextmanager
def task_runner_dask_client() -> Iterator[Any]:
    """prefect-dask's client inside a task that ``DaskTaskRunner`` placed on a Dask worker; else None."""
    if not _in_dask_task_runner():
        yield None
        return
    from prefect_dask import get_dask_client

    with get_dask_client() as client:
        yield client


def _in_dask_task_runner() -> bool:
    try:
        from distributed import get_worker
        from prefect.context import TaskRunContext

        get_worker()
        return TaskRunContext.get() is not None
    except (ImportError, ValueError):
        return False


services.install("secret_block", read_secret_block)
services.install("line_lock", line_lock)
services.install("dask_client", task_runner_dask_client)
