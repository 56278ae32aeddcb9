"""Registration in the MLflow model registry (a task: it writes no stage folder)."""

from prefect import task

from finmerge.registry.register import register_key, register_model

register_task = task(
    register_model,
    name="register",
    cache_key_fn=register_key,
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=[2, 10],
)
