"""Register model folders in the MLflow model registry, each version an MLflow 3 LoggedModel.

A version's ``source`` is the folder finmerge wrote (local path or ``s3://`` prefix): weights are never
streamed through the MLflow server nor copied into its artifact store. Folders written by the merge and
pretrain stages are MLflow models in place (:mod:`finmerge.models.mlflow_model`: ``MLmodel`` at the folder
root, the transformers flavor reading the weights from ``.``), so ``mlflow.transformers.load_model``,
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work on ``models:/<name>@<alias>``; a folder without
``MLmodel`` (an older or foreign folder) is still registered, tagged ``finmerge.mlflow_model=false``.

Each new version gets a LoggedModel (:func:`record_logged_model`): the folder's parameters, its evaluation
metrics logged as metrics (on the register run, linked to the evaluation dataset when one is given) and its
lineage as tags; the version points at it (``model_id``), so the registry UI shows and compares the metrics,
and :func:`finmerge.registry.promote.version_metrics` gates on them (the version also carries the id as the tag
``finmerge.model_id``: MLflow's open-source registry store drops ``model_id``; the LoggedModel lists its
versions in ``mlflow.modelVersions``, which the UI reads). Registration is idempotent: a folder whose
digest is already a version of the model line is not registered twice. Aliases are lowercase (MLflow treats
them case-insensitively).
"""

from __future__ import annotations

import json
import math
import time

from finmerge.config import sha256_json
from finmerge.core import storage, tracking
from finmerge.models.mlflow_model import is_mlflow_model
from finmerge.registry import aliases as aliases_mod

MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # what MLflow's server sets on a LoggedModel; the UI reads it
# The version's LoggedModel. MLflow's open-source registry store accepts ``model_id`` but does not keep it
# (its model_versions table has no such column), so the link is also a version tag.
MODEL_ID_TAG = "finmerge.model_id"
PARAMS_PER_CALL = 100


def _find_version(client, name: str, digest: str):
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("finmerge.digest") == digest:
            return mv
    return None


def _wait_ready(client, name: str, version: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY":
            return mv
        if mv.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"model {name} version {version}: registration {mv.status}")
        time.sleep(0.5)


def version_model_id(mv) -> str | None:
    """The LoggedModel of a model version: MLflow's own field where the store keeps it, else finmerge's tag."""
    return getattr(mv, "model_id", None) or (mv.tags or {}).get(MODEL_ID_TAG)


def _metric_entities(metrics: dict[str, float], model_id: str, dataset: dict | None) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    link = {"dataset_name": dataset["name"], "dataset_digest": dataset["digest"]} if dataset else {}
    return [
        Metric(k, float(v), now, 0, model_id=model_id, **link)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    ]


def record_logged_model(
    client,
    *,
    experiment_id: str,
    name: str,
    run: tracking.Run,
    model_uri: str,
    digest: str,
    model_type: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict | None = None,
    metrics: dict[str, float] | None = None,
    eval_dataset: dict | None = None,
) -> str:
    """A READY LoggedModel for the folder at ``model_uri`` (its weights stay there: nothing is uploaded),
    produced by ``run``; returns its ``model_id``.

    ``params`` (nested dicts are flattened, secrets scrubbed) become the model's parameters; ``metrics`` are
    logged on ``run`` *and* as the model's metrics, linked to ``eval_dataset`` (``{"name", "digest",
    "source"}``, logged as the run's ``evaluation`` input) when given. The sweep's candidates can be recorded
    with this too, without registering them."""
    dataset = None
    if eval_dataset:
        dataset = {**eval_dataset, "digest": str(eval_dataset["digest"])[:36]}  # MLflow's digest length
        run.datasets([dataset], "evaluation")
    model_tags = {
        **{k: str(v) for k, v in tracking.scrub(tags or {}).items()},
        "finmerge.digest": digest,
        "finmerge.source": storage.normalize(model_uri),
    }
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run.run_id, tags=model_tags, model_type=model_type
    )
    flat = tracking.flatten(tracking.scrub(params or {}))
    items = sorted(flat.items())
    for i in range(0, len(items), PARAMS_PER_CALL):
        client.log_model_params(logged.model_id, dict(items[i : i + PARAMS_PER_CALL]))
    entities = _metric_entities(metrics or {}, logged.model_id, dataset)
    if entities:
        client.log_batch(run.run_id, metrics=entities)
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


def _link_version(client, model_id: str, name: str, version: str) -> None:
    """The LoggedModel's list of registered versions (the tag MLflow's server also sets; set here for
    SQLite and file stores, idempotently)."""
    current = client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG)
    versions = json.loads(current) if current else []
    entry = {"name": name, "version": str(version)}
    if entry not in versions:
        client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps([*versions, entry])})


def _create_version(
    client, name: str, model_uri: str, manifest: dict, *, tracking_uri: str, experiment_id: str,
    parent_run_id: str | None,
    tags: dict[str, str], params: dict | None, metrics: dict[str, float], eval_dataset: dict | None,
    description: str,
):  # fmt: skip
    digest = manifest["digest"]
    run = tracking.Run.start(
        tracking_uri,
        experiment_id,
        f"register-{name}",
        parent_id=parent_run_id,
        tags={"finmerge.stage": "register", "finmerge.digest": digest},
    )
    mlflow_model = is_mlflow_model(manifest.get("files", {}))
    version_tags = {
        **tracking.scrub(tags),
        "finmerge.digest": digest,
        "finmerge.mlflow_model": str(mlflow_model).lower(),
    }
    try:
        model_id = record_logged_model(
            client, experiment_id=experiment_id, name=name, run=run, model_uri=model_uri, digest=digest,
            model_type=tags.get("finmerge.role"), tags=version_tags, params=params, metrics=metrics,
            eval_dataset=eval_dataset,
        )  # fmt: skip
    except BaseException:
        run.fail()
        raise
    run.end()
    mv = client.create_model_version(
        name,
        source=storage.normalize(model_uri),
        run_id=run.run_id,
        tags={k: str(v) for k, v in {**version_tags, MODEL_ID_TAG: model_id}.items()},
        description=description or None,
        model_id=model_id,
    )
    mv = _wait_ready(client, name, mv.version)
    _link_version(client, model_id, name, mv.version)
    return mv


def register_model(
    name: str,
    model_uri: str,
    *,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    params: dict | None = None,
    eval_dataset: dict | None = None,
    aliases: tuple[str, ...] = (),
    bootstrap_alias: str | None = None,
    description: str = "",
) -> dict:
    """Register the complete folder at ``model_uri`` as a version of ``name`` (with its LoggedModel: ``params``,
    ``metrics`` linked to ``eval_dataset``) and set aliases."""
    from mlflow.exceptions import MlflowException

    manifest = storage.read_manifest(model_uri)
    if manifest is None:
        raise storage.StorageError(
            f"{model_uri}: no manifest; refusing to register an incomplete model folder"
        )
    digest = manifest["digest"]
    client = tracking.client(tracking_uri)
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    mv = _find_version(client, name, digest)
    created = mv is None
    if created:
        mv = _create_version(
            client, name, model_uri, manifest, tracking_uri=tracking_uri, experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            tags=tags or {}, params=params, metrics=metrics or {}, eval_dataset=eval_dataset,
            description=description,
        )  # fmt: skip
    set_aliases = []
    for alias in aliases:
        client.set_registered_model_alias(name, alias.lower(), mv.version)
        set_aliases.append(alias.lower())
    if bootstrap_alias:
        try:
            client.get_model_version_by_alias(name, bootstrap_alias.lower())
        except MlflowException:
            # the first champion of a line: a protected alias, moved as the promoter where one is configured
            aliases_mod.set_protected(client, tracking_uri, name, bootstrap_alias.lower(), mv.version)
            set_aliases.append(bootstrap_alias.lower())
    current = client.get_registered_model(name).aliases or {}
    return {
        "name": name,
        "version": str(mv.version),
        "created": created,
        "digest": digest,
        "model_id": version_model_id(mv),
        "mlflow_model": (mv.tags or {}).get("finmerge.mlflow_model") == "true",
        "aliases": sorted(a for a, v in current.items() if str(v) == str(mv.version)),
        "source": mv.source,
        "set_aliases": set_aliases,
    }


def register_key(_ctx, p: dict) -> str:
    return "finmerge-register-" + sha256_json(
        [
            p["name"],
            p["model_uri"],
            p["tracking_uri"],
            sorted(p.get("aliases") or []),
            p.get("bootstrap_alias"),
        ]
    )
