"""What the orchestrator provides to the library: secret blocks, per-line locks, the task runner's Dask client.

The library below ``finmerge/runner/`` never imports Prefect. Where it needs something only the orchestrator
has, it asks this module, and ``finmerge/runner/services.py`` installs the Prefect-backed providers (importing
anything in ``finmerge.runner`` installs them). Three services:

* ``secret_block``: ``read(name) -> value`` of a stored secret (a Prefect Secret block);
* ``line_lock``: ``lock(purpose, line, wait_s, lease_s)``, a context manager that holds a lock shared by every
  process of the deployment and raises :class:`LineBusy` after ``wait_s`` seconds;
* ``dask_client``: ``client()``, a context manager yielding the Dask client of the task runner the caller
  runs under, or None outside one.

Library code used on its own (a notebook, a test that calls ``resolve_secret``) has not imported the runner;
on first use of a service that nobody installed, the orchestrator adapter named by :data:`DEFAULT_ADAPTER` is
loaded by name, so such callers behave as under the runner. Tests may :func:`install` their own provider.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

# Loaded by name, never imported: core must not depend on the runner layer at import time.
DEFAULT_ADAPTER = "finmerge.runner.services"
SERVICES = ("secret_block", "line_lock", "dask_client")

_providers: dict[str, Callable[..., Any]] = {}


class LineBusy(RuntimeError):
    """Another holder has the line's lock (e.g. a retrain of the same model line is running)."""


def install(service: str, provider: Callable[..., Any]) -> None:
    """Make ``provider`` the implementation of ``service`` (one of :data:`SERVICES`) in this process."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    _providers[service] = provider


def provider(service: str) -> Callable[..., Any]:
    """The installed implementation of ``service``, loading the default adapter when none is."""
    if service not in _providers:
        importlib.import_module(DEFAULT_ADAPTER)
    try:
        return _providers[service]
    except KeyError:
        raise RuntimeError(
            f"no provider for the {service!r} service ({DEFAULT_ADAPTER} installs none)"
        ) from None


def read_secret_block(name: str) -> Any:
    """The value held by the orchestrator's secret store under ``name`` (errors are the provider's)."""
    return provider("secret_block")(name)


def line_lock(purpose: str, line: str, wait_s: float | None, lease_s: float = 600.0):
    """Hold the lock ``purpose`` of model line ``line`` (a context manager yielding the lock's name);
    :class:`LineBusy` after ``wait_s`` seconds (None: wait as long as it takes)."""
    return provider("line_lock")(purpose, line, wait_s, lease_s)


@contextlib.contextmanager
def dask_client() -> Iterator[Any]:
    """The Dask client of the task runner this code runs under, or None outside one."""
    with provider("dask_client")() as client:
        yield client
