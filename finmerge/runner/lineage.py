"""Lineage: a stage's dataset inputs logged as its MLflow run's inputs (``mlflow.log_input``)."""

from __future__ import annotations

import logging

from finmerge.config import sha256_json
from finmerge.core import storage, tracking

log = logging.getLogger(__name__)


def uris(value) -> list[str]:
    """The locations an input names: none, one, or a list."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def log_datasets(p, run: tracking.Run) -> None:
    """The stage's dataset inputs as the run's MLflow inputs (name, digest, source, schema), so a model's
    lineage reaches its data in the MLflow UI. Lineage is a record, not the work: a dataset that cannot be
    described is logged by name, digest and source only, and a failure to log is a warning."""
    if not p.stage.datasets:
        return  # a stage without dataset inputs (merge): pyarrow, which describes them, stays unloaded
    from finmerge.corpus.dataset_info import dataset_description

    by_context: dict[str, list[dict]] = {}
    for name, context in p.stage.datasets.items():
        for uri in uris(p.call.inputs.get(name)):
            digest = p.digests.get(name)
            digest = digest if isinstance(digest, str) else sha256_json(digest)
            try:
                d = dataset_description(uri, digest, name)
            except Exception:  # e.g. a harness folder (JSON and Excel files): no one schema to show
                d = {"name": name, "digest": digest, "source": storage.normalize(uri)}
            by_context.setdefault(context, []).append(d)
    try:
        for context, described in by_context.items():
            run.datasets(described, context)
    except Exception as exc:
        log.warning(
            "stage %s: could not log its datasets to MLflow run %s: %s", p.stage.name, run.run_id, exc
        )
