"""Per-model-line locks on Prefect global concurrency limits.

Two retrains of one model line must never overlap (they would train on the same corpus and race to register),
and two promotions must not interleave their read-check-set of the registry aliases. Both take a Prefect global
concurrency limit of 1 named after the line, so the lock holds across processes, workers and machines that
share a Prefect API. The slot is held under a lease that the holder renews; a holder that dies frees the line
when its lease runs out. (Without a Prefect server, processes on one host share the ephemeral API's database,
so the lock still holds there; a crashed holder's lease is then only reclaimed by a server.)

The wait is bounded between attempts, never by cancelling one: Prefect's own ``timeout_seconds`` cancels the
request in flight, so on a slow API a slot the server granted could be lost to a cancelled caller (held until
its lease ran out) and every contender would stand down. Each attempt here asks once and gets a real answer.

The library reaches these locks through :func:`finmerge.core.services.line_lock`, never by importing this module.
"""

from __future__ import annotations

import logging
import re
import time
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


def _is_denial(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the API's "no free slot" answer (HTTP 423 Locked)."""
    import httpx

    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 423


class _QuietDenials(logging.Filter):
    """Prefect's acquisition service logs every request it could not complete at ERROR, and with
    ``max_retries=0`` that includes each "line busy" answer, which is this module's normal waiting. Drop
    exactly those records (a 423 in the item's future); any other failure is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) != 2 or args[0] != "ConcurrencySlotAcquisitionWithLeaseService":
            return True
        future = args[1][-1] if isinstance(args[1], tuple) and args[1] else None
        done = getattr(future, "done", lambda: False)()
        return not (done and not future.cancelled() and _is_denial(future.exception()))


_QUIET = _QuietDenials()


def _denied_after(exc: BaseException) -> float | None:
    """Seconds the server asks us to wait when ``exc`` is its "no free slot" answer (HTTP 423); None when
    ``exc`` is any other failure, which is not ours to retry."""
    cause = exc.__cause__
    return float(cause.response.headers.get("Retry-After", 0.5)) if _is_denial(cause) else None


@contextmanager
def line_lock(purpose: str, line: str, wait_s: float | None, lease_s: float = 600.0) -> Iterator[str]:
    """Hold the lock ``purpose`` of model line ``line``; raise :class:`LineBusy` when it is still held after
    ``wait_s`` seconds (None: wait as long as it takes). At least one attempt is always made, and an attempt
    is never cut short. Yields the limit's name."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    name = lock_name(purpose, line)
    ensure_limit(name)
    service_log = logging.getLogger("prefect._internal.concurrency")
    if _QUIET not in service_log.filters:
        service_log.addFilter(_QUIET)
    start = time.monotonic()
    with ExitStack() as held:
        while True:
            try:
                # max_retries=0: one request, answered "granted" or 423; the waiting is this loop's
                held.enter_context(
                    concurrency(
                        name,
                        occupy=1,
                        max_retries=None if wait_s is None else 0,
                        lease_duration=lease_s,
                        strict=True,
                    )
                )
                break
            except ConcurrencySlotAcquisitionError as exc:
                retry_after = _denied_after(exc)
                if retry_after is None or wait_s is None:  # with no bound Prefect retries 423s itself
                    raise
                left = start + wait_s - time.monotonic()
                if left <= 0:
                    raise LineBusy(
                        f"{line}: {purpose} lock {name!r} is held by another run "
                        f"(waited {time.monotonic() - start:.1f}s of {wait_s}s)"
                    ) from exc
                time.sleep(min(retry_after, left))
        log.info("holding %s", name)
        yield name
