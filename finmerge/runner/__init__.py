"""The orchestrator layer: stage runner, Prefect adapter, line locks.

Importing it installs the Prefect-backed services the library asks :mod:`finmerge.core.services` for.
"""

from finmerge.runner import services as _services  # noqa: F401 (installs the Prefect-backed hooks)
