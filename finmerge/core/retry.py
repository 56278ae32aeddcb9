"""The one backoff rule: storage commits, MLflow calls, the EDINET API, the LLM judge and stage attempts.

A :class:`Backoff` says how long something is retried: at most ``attempts`` tries, sleeping ``first_delay_s``
doubled after each failure up to ``max_delay_s`` (plus up to ``jitter`` of it at random, so clients that
failed together do not retry together), and never past ``budget_s`` since the first failure. A server's own
hint (``Retry-After``) replaces the computed pause, still capped by ``max_delay_s``. :func:`retry_call` runs an
operation under it; callers that must not block (the MLflow buffer) use :meth:`Backoff.delay` alone.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backoff:
    attempts: int = 30
    first_delay_s: float = 1.0
    max_delay_s: float = 8.0
    budget_s: float = 120.0
    jitter: float = 0.0

    def delay(self, failures: int, hint: float | None = None) -> float:
        """The pause after the ``failures``-th failure (1-based); ``hint`` is the server's Retry-After."""
        if hint is not None:
            return max(0.0, min(hint, self.max_delay_s))
        base = min(self.max_delay_s, self.first_delay_s * 2 ** max(0, failures - 1))
        return base * (1 + random.uniform(0, self.jitter)) if self.jitter else base


def retry_call(
    op: Callable[[], T],
    policy: Backoff,
    *,
    what: str,
    transient: tuple[type[BaseException], ...] | Callable[[BaseException], bool],
    give_up: Callable[[BaseException, int, float], BaseException] | None = None,
    retry_after: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    since: float | None = None,
    logger: logging.Logger | None = log,
) -> T:
    """``op()``, retried while it raises a ``transient`` error, under ``policy``.

    When the attempts or the budget run out, ``give_up(exc, failures, seconds)`` builds the error raised
    (the caller's own type, naming what failed); without it the last error propagates. Other errors
    propagate at once. The budget counts from the first failure, or from ``since`` (a ``time.monotonic()``
    value) when given: a caller whose first attempt may itself take long (HTTP retries inside it) counts that.
    Each retry logs one warning on ``logger`` (None: the caller's ``on_retry`` says it in its own words).
    """
    if isinstance(transient, type):  # one exception class
        transient = (transient,)
    is_transient = None if isinstance(transient, tuple) else transient
    failures, first = 0, since
    while True:
        try:
            return op()
        except BaseException as exc:
            if not (is_transient(exc) if is_transient else isinstance(exc, transient)):  # type: ignore[arg-type]
                raise
            failures += 1
            now = time.monotonic()
            first = first or now
            spent = now - first
            pause = policy.delay(failures, retry_after(exc) if retry_after else None)
            if failures >= policy.attempts or spent + pause > policy.budget_s:
                if give_up is None:
                    raise
                raise give_up(exc, failures, spent) from exc
            if logger is not None:
                logger.warning(
                    "%s: %s: %s; retry %d in %.1fs", what, type(exc).__name__, exc, failures, pause
                )
            if on_retry is not None:
                on_retry(exc, failures, pause)
            sleep(pause)
