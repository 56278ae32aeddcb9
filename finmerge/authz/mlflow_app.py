"""MLflow's basic-auth app plus one rule: only a model's managers move its protected aliases.

MLflow's basic-auth app grants per registered model READ / EDIT / MANAGE, and lets anyone with EDIT set any
alias (deleting one needs MANAGE). finmerge's pipeline account must have EDIT on a model line (to register
versions and set ``challenger``), so on its own MLflow would let it point ``champion`` anywhere. This app
adds a check after MLflow's: setting or deleting an alias in :data:`PROTECTED` (``champion``, ``previous``;
``FINMERGE_PROTECTED_ALIASES`` overrides, comma-separated) needs MANAGE on the model (or an admin).

Start it with ``mlflow server --app-name finmerge-auth`` (the ``mlflow.app`` entry point in pyproject.toml);
users, passwords and grants stay MLflow's (``MLFLOW_AUTH_CONFIG_PATH``, its REST API). It imports nothing
of finmerge, so the MLflow server image needs finmerge's package only for this module.
"""

from __future__ import annotations

import json
import os

PROTECTED = frozenset({"champion", "previous"})


def protected_aliases() -> frozenset[str]:
    raw = os.environ.get("FINMERGE_PROTECTED_ALIASES")
    if not raw:
        return PROTECTED
    return frozenset(a.strip().lower() for a in raw.split(",") if a.strip())


def alias_routes(validators: dict, alias_validators: tuple) -> frozenset[tuple[str, str]]:
    """The (path, method) pairs MLflow routes to its alias validators: REST and the UI's ajax routes alike,
    read from MLflow's own table so a renamed or prefixed route cannot slip past."""
    return frozenset(key for key, fn in validators.items() if fn in alias_validators)


def _refusal(name: str, alias: str):
    from flask import make_response

    body = {
        "error_code": "PERMISSION_DENIED",
        "message": f"alias '{alias}' of registered model '{name}' may be set or deleted only by a user with "
        "MANAGE permission on that model (the promoter)",
    }
    res = make_response(json.dumps(body), 403)
    res.headers["Content-Type"] = "application/json"
    return res


def create_app(app=None):
    """MLflow's basic-auth app (``mlflow.server.auth.create_app``) with the protected-alias check added."""
    from flask import request
    from mlflow.server import app as mlflow_flask_app
    from mlflow.server import auth

    flask_app = app if app is not None else mlflow_flask_app
    served = auth.create_app(flask_app)  # registers MLflow's authentication and permission checks first
    routes = alias_routes(
        auth.BEFORE_REQUEST_VALIDATORS,
        (
            auth.validate_can_set_model_or_prompt_version_alias,
            auth.validate_can_delete_model_or_prompt_version_alias,
        ),
    )
    if not routes:  # fail closed: an MLflow that renamed its validators must not run without the rule
        raise RuntimeError("finmerge-auth: MLflow's alias routes were not found; refusing to start")

    def check_protected_alias():
        if (request.path, request.method) not in routes:
            return None
        params = auth._request_params()
        name, alias = str(params.get("name") or ""), str(params.get("alias") or "").lower()
        if alias not in protected_aliases() or auth.sender_is_admin():
            return None
        if auth._get_permission_from_registered_model_or_prompt_name().can_manage:
            return None
        return _refusal(name, alias)

    # Flask runs before-request hooks in order: MLflow's (401 without credentials, its own 403) come first.
    flask_app.before_request(check_protected_alias)
    return served
