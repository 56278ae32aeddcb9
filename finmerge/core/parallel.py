"""Fan shards of corpus work out over cores or a Dask cluster, results back in input order.

``map_ordered(fn, items, cfg)`` is the only entry point. ``fn`` must be a module-level function (it is
pickled by reference) in a module that does not import Prefect, so spawned workers start fast. At most
``2 × workers`` items are in flight, so memory stays bounded however many shards there are.

Backends (``corpus.parallel.backend``):

* ``serial``: in this process (also used when there is a single item or a single worker).
* ``process``: a ``spawn`` process pool (never ``fork``: the parent holds Prefect / MLflow threads).
* ``dask``: inside a task run by prefect-dask's ``DaskTaskRunner`` its cluster is used (the orchestrator's
  ``dask_client`` service, :mod:`finmerge.core.services`); else the scheduler at ``dask_address``; else a
  local cluster.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from finmerge.config import ParallelConfig
from finmerge.core import services


def worker_count(cfg: ParallelConfig) -> int:
    return cfg.workers or os.cpu_count() or 1


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], cfg: ParallelConfig | None) -> Iterator[Any]:
    """``map(fn, items)`` on the configured backend, yielding results in input order."""
    cfg = cfg or ParallelConfig(backend="serial")
    workers = worker_count(cfg)
    it = iter(items)
    if cfg.backend == "serial" or (workers == 1 and cfg.backend == "process"):
        yield from map(fn, it)
        return
    first = next(it, _END)
    if first is _END:
        return
    second = next(it, _END)
    if second is _END:  # one shard: a pool would only add start-up time
        yield fn(first)
        return
    rest = _chain(first, second, it)
    if cfg.backend == "process":
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            yield from _windowed(pool.submit, fn, rest, 2 * workers)
    else:
        with _dask_client(cfg) as client:
            yield from _windowed(lambda f, x: client.submit(f, x, pure=False), fn, rest, 2 * workers)


_END = object()


def _chain(a, b, rest: Iterator) -> Iterator:
    yield a
    yield b
    yield from rest


def _windowed(submit, fn, items: Iterator, window: int) -> Iterator:
    pending: deque = deque()
    for item in items:
        pending.append(submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def _dask_client(cfg: ParallelConfig):
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - dask is a core dependency
        raise RuntimeError("corpus.parallel.backend=dask needs dask[distributed] and prefect-dask") from exc
    with services.dask_client() as runner_client:
        if runner_client is not None:
            yield runner_client
        elif cfg.dask_address:
            with Client(cfg.dask_address) as client:
                yield client
        else:
            with (
                LocalCluster(n_workers=worker_count(cfg), threads_per_worker=1, processes=True) as cluster,
                Client(cluster) as client,
            ):
                yield client
