"""API keys: from an environment variable, else a secret block of the orchestrator (Prefect); never logged.

Every value resolved here is registered with :mod:`finmerge.core.redact`, whose log record factory is installed
on first use, so a library that echoes the key (a request URL, a header dump) logs ``***`` instead.
"""

from __future__ import annotations

import os

from finmerge.core import redact, services


class SecretError(RuntimeError):
    pass


def resolve_secret(env_var: str, block: str | None) -> str | None:
    """The value of ``$env_var``, else of the Prefect Secret block ``block``, else None.

    Errors name the block and the exception type only: a message could echo what was loaded.
    """
    redact.install()
    value = os.environ.get(env_var, "").strip()
    if value:
        redact.register(value)
        return value
    if not block:
        return None
    try:
        secret = services.read_secret_block(block)
    except Exception as exc:
        raise SecretError(f"cannot load the Prefect Secret block {block!r}: {type(exc).__name__}") from None
    if secret is not None and not isinstance(secret, str):
        raise SecretError(f"Prefect Secret block {block!r} does not hold a string")
    value = (secret or "").strip()
    redact.register(value)
    return value or None
