"""Promotion through the registry's gates, and rollback (tasks: they write no stage folder)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from finmerge.registry.promote import promote, rollback

# never cached: a promotion reads the registry's current state
promote_task = task(promote, name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
rollback_task = task(rollback, name="rollback", cache_policy=NO_CACHE)
