"""Warm-ups that overlap a stage's work: slow imports and first connections started in a thread, so that
a command's fixed costs run while its inputs are read instead of before.

Only idempotent preparation goes here (importing a module, opening a client, checking a file): the caller
joins the future where it needs the result, and an error is raised there, at the point the synchronous code
would have raised it, before anything is committed.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import threading
from collections.abc import Callable
from typing import Any


def start(fn: Callable[..., Any], *args: Any, name: str = "finmerge-warmup") -> cf.Future:
    """``fn(*args)`` in a daemon thread (never keeps a process alive); its result or error in the future."""
    fut: cf.Future = cf.Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever joins the future
            fut.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


def preimport(*modules: str) -> cf.Future:
    """Import ``modules`` in the background (an ImportError surfaces where the module is really used)."""

    def load() -> None:
        for m in modules:
            try:
                importlib.import_module(m)
            except ImportError:
                pass

    return start(load, name="finmerge-preimport")
