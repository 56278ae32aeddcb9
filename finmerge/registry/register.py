"""Register model folders in the MLflow model registry.

A version's ``source`` is the folder finmerge wrote (local path or ``s3://`` prefix): weights are never
streamed through the MLflow server. Registration is idempotent: a folder whose digest is already a version
of the model line is not registered twice. Aliases are lowercase (MLflow treats them case-insensitively).
"""

from __future__ import annotations

import time

from finmerge.config import sha256_json
from finmerge.core import storage, tracking
from finmerge.registry import aliases as aliases_mod


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


def register_model(
    name: str,
    model_uri: str,
    *,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    aliases: tuple[str, ...] = (),
    bootstrap_alias: str | None = None,
    description: str = "",
) -> dict:
    """Register the complete folder at ``model_uri`` as a version of ``name`` and set aliases."""
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
        run = tracking.Run.start(
            tracking_uri,
            experiment_id,
            f"register-{name}",
            parent_id=parent_run_id,
            tags={"finmerge.stage": "register", "finmerge.digest": digest},
        )
        run.metrics(metrics or {})
        run.end()
        version_tags = {**tracking.scrub(tags or {}), "finmerge.digest": digest}
        mv = client.create_model_version(
            name,
            source=storage.normalize(model_uri),
            run_id=run.run_id,
            tags={k: str(v) for k, v in version_tags.items()},
            description=description or None,
        )
        mv = _wait_ready(client, name, mv.version)
        for key, value in (metrics or {}).items():
            client.set_model_version_tag(name, mv.version, f"metric.{key}", f"{value:.6g}")
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
