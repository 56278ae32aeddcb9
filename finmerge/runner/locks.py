"""Per-model-line locks on Prefect global concurrency limits.

Two retrains of one model line must never overlap (they would train on the same corpus and race to register),
and two promotions must not interleave their read-check-set of the registry aliases. Both take a Prefect global
concurrency limit of 1 named after the line, so the lock holds across processes, workers and machines that
share a Prefect API. The slot is held under a lease that the holder renews; a holder that dies frees the line
when its lease runs out. (Without a Prefect server, processes on one host share the ephemeral API's database,
so the lock still holds there; a crashed holder's lease is then only reclaimed by a server.)

The library reaches these locks through :func:`finmerge.core.services.line_lock`, never by importing this module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from finmerge.core.services import LineBusy

__all__ = ["LineBusy", "ensure_limit", "line_lock", "lock_name"]
log = logging.getLogger(__name__)


def lock_name(purpose: str, line: str) -> str:
    """A limit name Prefect accepts (no slashes or spaces)."""
    return f"finmerge-{purpose}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", line)


def ensure_limit(name: str) -> None:
    """Create the global concurrency limit ``name`` with 1 slot unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass  # created by a concurrent caller between our read and create


@contextmanager
def line_lock(purpose: str, line: str, wait_s: float | None, lease_s: float = 600.0) -> Iterator[str]:
    """Hold the lock ``purpose`` of model line ``line``; raise :class:`LineBusy` after ``wait_s`` seconds
    (None: wait as long as it takes). Yields the limit's name."""
    from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    name = lock_name(purpose, line)
    ensure_limit(name)
    with ExitStack() as held:
        try:
            held.enter_context(
                concurrency(name, occupy=1, timeout_seconds=wait_s, lease_duration=lease_s, strict=True)
            )
        except (AcquireConcurrencySlotTimeoutError, TimeoutError) as exc:
            raise LineBusy(
                f"{line}: {purpose} lock {name!r} is held by another run (waited {wait_s}s)"
            ) from exc
        log.info("holding %s", name)
        yield name
