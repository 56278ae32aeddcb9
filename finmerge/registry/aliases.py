"""Moving the protected aliases (``champion``, ``previous``) as the promoter.

On an authenticated MLflow server only a user with MANAGE on a model line may move them (the
``finmerge-auth`` app, docs/security.md); the pipeline's own account has EDIT. A process that may promote
(the pipeline's promote step, ``finmerge promote``) is given the promoter's account in
``FINMERGE_PROMOTER_USERNAME`` / ``FINMERGE_PROMOTER_PASSWORD`` and uses it for these calls only, after the
gates and the integrity check passed; everything else it does runs as ``MLFLOW_TRACKING_USERNAME``. Without
those variables (the embedded SQLite store, or a promoter running with their own ``MLFLOW_TRACKING_*``) the
ambient client is used.
"""

from __future__ import annotations

import os

PROMOTER_USER, PROMOTER_PASSWORD = "FINMERGE_PROMOTER_USERNAME", "FINMERGE_PROMOTER_PASSWORD"


def _promoter_store(tracking_uri: str):
    """A registry REST store authenticated as the promoter, or None when no promoter account is given."""
    user, password = os.environ.get(PROMOTER_USER), os.environ.get(PROMOTER_PASSWORD)
    if not (user and password and tracking_uri.startswith(("http://", "https://"))):
        return None
    from mlflow.store.model_registry.rest_store import RestStore
    from mlflow.utils.rest_utils import MlflowHostCreds

    creds = MlflowHostCreds(tracking_uri, username=user, password=password)
    return RestStore(lambda: creds)


def _refused(exc, name: str, alias: str) -> PermissionError:
    who = os.environ.get(PROMOTER_USER) or os.environ.get("MLFLOW_TRACKING_USERNAME") or "this account"
    return PermissionError(
        f"{name}: {who} may not move alias '{alias}' ({exc.error_code}): only the promoter account (MANAGE on "
        f"the model line) may; set {PROMOTER_USER} / {PROMOTER_PASSWORD} for the promote step, or run "
        "`finmerge promote` as the promoter"
    )


def set_protected(client, tracking_uri: str, name: str, alias: str, version: str) -> None:
    """``client.set_registered_model_alias``, as the promoter when one is configured."""
    from mlflow.exceptions import MlflowException

    store = _promoter_store(tracking_uri)
    try:
        if store is None:
            client.set_registered_model_alias(name, alias, str(version))
        else:
            store.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        if exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            raise _refused(exc, name, alias) from exc
        raise
