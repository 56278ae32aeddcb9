"""Accounts and per-model grants on an MLflow basic-auth server, through its REST API as the admin.

The roles (docs/security.md): ``pipeline`` runs the pipeline (creates runs, registers versions, sets
``challenger``): EDIT on each model line; ``promoter`` alone moves ``champion`` / ``previous``: MANAGE on
each model line (the ``finmerge-auth`` app enforces that only MANAGE moves them); ``viewer`` reads
(MLflow's ``default_permission = READ``). A model line is created here, by the admin: MLflow gives the
creator of a registered model MANAGE on it, so a line the pipeline created itself would be its own to promote.

``python -m finmerge.authz.provision`` does it from the environment (the compose bootstrap job):
``MLFLOW_TRACKING_URI``, ``MLFLOW_ADMIN_PASSWORD`` and ``MLFLOW_<ROLE>_PASSWORD`` for each role, and
``FINMERGE_MODEL_LINES`` (comma-separated; default: the registry config's cpt and merged names).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

ADMIN = "admin"
ROLES = ("pipeline", "promoter", "viewer")
LINE_GRANTS = {"pipeline": "EDIT", "promoter": "MANAGE"}


class ProvisionError(RuntimeError):
    pass


def call(url: str, auth: tuple[str, str], method: str, path: str, payload: dict | None = None) -> tuple:
    """(HTTP status, decoded JSON body) of one REST call authenticated as ``auth`` (user, password)."""
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body or b"{}")
    except json.JSONDecodeError:
        return status, {"message": body.decode(errors="replace")[:300]}


def _expect(what: str, result: tuple, also_ok: str | None = None) -> None:
    status, body = result
    if status < 300 or (also_ok and also_ok in str(body.get("error_code", ""))):
        return
    raise ProvisionError(f"{what}: HTTP {status} {body.get('error_code', '')} {body.get('message', '')}")


def ensure_user(url: str, admin: tuple[str, str], username: str, password: str) -> None:
    res = call(
        url, admin, "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password}
    )
    if res[0] >= 300:  # already there (a restarted stack): set the password it has now
        payload = {"username": username, "password": password}
        _expect(
            f"user {username}", call(url, admin, "PATCH", "/api/2.0/mlflow/users/update-password", payload)
        )


def grant(url: str, admin: tuple[str, str], username: str, model: str, permission: str) -> None:
    payload = {"username": username, "resource_type": "registered_model", "resource_id": model,
               "permission": permission}  # fmt: skip
    _expect(f"grant {permission} on {model} to {username}",
            call(url, admin, "POST", "/api/3.0/mlflow/users/permissions/grant", payload))  # fmt: skip


def provision_line(url: str, admin: tuple[str, str], name: str, grants: dict[str, str] | None = None) -> None:
    """Create model line ``name`` as the admin (if absent) and grant each role its permission on it."""
    created = call(url, admin, "POST", "/api/2.0/mlflow/registered-models/create", {"name": name})
    _expect(f"model {name}", created, also_ok="RESOURCE_ALREADY_EXISTS")
    for username, permission in (grants or LINE_GRANTS).items():
        grant(url, admin, username, name, permission)


def provision(url: str, admin_password: str, passwords: dict[str, str], lines: list[str]) -> None:
    """Every role's account (``passwords``: role → password) and every model line with its grants."""
    admin = (ADMIN, admin_password)
    for role, password in passwords.items():
        ensure_user(url, admin, role, password)
    for name in lines:
        provision_line(url, admin, name)


def default_lines() -> list[str]:
    from finmerge.config import RegistryConfig

    reg = RegistryConfig()
    return [reg.cpt_name, reg.merged_name]


def main() -> int:
    env = os.environ
    lines = [
        x.strip() for x in env.get("FINMERGE_MODEL_LINES", "").split(",") if x.strip()
    ] or default_lines()
    passwords = {role: env[f"MLFLOW_{role.upper()}_PASSWORD"] for role in ROLES}
    provision(env["MLFLOW_TRACKING_URI"], env["MLFLOW_ADMIN_PASSWORD"], passwords, lines)
    print(f"provisioned accounts {', '.join(ROLES)} and model lines {', '.join(lines)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
