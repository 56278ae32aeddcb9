"""The no-Docker local stack for development and tests: S3 (moto server), `mlflow server` and
`prefect server`, each a child process on a free loopback port.

``finmerge stack up`` starts the three, waits for their health endpoints, creates the buckets and
writes ``<state>/stack.json`` (pids, ports, URLs, logs); ``finmerge stack env`` prints the variables
that point finmerge at it; ``finmerge stack down`` stops every process group it started and checks
that nothing is left listening. Data lives under the state folder (SQLite for MLflow and Prefect);
moto keeps S3 in memory, so objects go away with the stack. The production stack (MinIO, Postgres,
MLflow, Prefect server and worker) is ``infra/docker-compose.yml``.

It runs with the production stack's authentication (docs/security.md): MLflow's basic-auth app with the
protected-alias rule (``--app-name finmerge-auth``) and the accounts admin / pipeline / promoter / viewer,
Prefect's API auth string, and moto with IAM enforced, one S3 user per bucket. Every generated credential
is in ``<state>/credentials.env`` (mode 0600); ``finmerge stack env`` prints the pipeline's.
"""

from __future__ import annotations

import json
import os
import secrets as secrets_lib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from finmerge.authz import provision

STATE_FILE = "stack.json"
SECRETS_FILE = "credentials.env"  # 0600: every generated password and key of this stack, nowhere else
BUCKETS = {"finmerge": "finmerge-worker", "mlflow": "finmerge-mlflow"}  # bucket -> the one S3 user on it
# The client identity a caller may have exported: never handed to the servers themselves.
CLIENT_ONLY = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "INITIAL_NO_AUTH_ACTION_COUNT",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Process helpers (also used by the test fixtures)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------------------------------------
# Credentials: generated once per state folder into a 0600 env file (S3 keys anew at each start: moto keeps
# IAM in memory), never on a command line, in stack.json or in a log


def _write_secrets(state: Path, secrets: dict[str, str]) -> None:
    path = state / SECRETS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# finmerge local stack credentials (generated; keep private)\n")
        fh.writelines(f"{k}={v}\n" for k, v in sorted(secrets.items()))
    os.chmod(path, 0o600)  # also when the file existed with looser bits


def read_secrets(state_dir: str | Path) -> dict[str, str]:
    path = Path(state_dir).resolve() / SECRETS_FILE
    if not path.exists():
        return {}
    pairs = (ln.split("=", 1) for ln in path.read_text(encoding="utf-8").splitlines() if "=" in ln)
    return {k: v for k, v in pairs if not k.startswith("#")}


def _secrets(state: Path) -> dict[str, str]:
    """This stack's passwords (kept across restarts: MLflow's user store is on disk), created on first use."""
    found = read_secrets(state)
    wanted = {f"MLFLOW_{r.upper()}_PASSWORD" for r in (provision.ADMIN, *provision.ROLES)}
    wanted |= {"MLFLOW_FLASK_SERVER_SECRET_KEY", "PREFECT_AUTH_STRING"}
    for key in sorted(wanted - set(found)):
        found[key] = ("finmerge:" if key == "PREFECT_AUTH_STRING" else "") + secrets_lib.token_urlsafe(24)
    _write_secrets(state, found)
    return found


def bucket_policy(bucket: str) -> dict:
    """The IAM policy of a service's S3 user: list, read, write and delete in its own bucket, nothing else
    (infra/policies/*.json are these documents; tests/test_infra.py keeps them equal)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListItsBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
            },
            {
                "Sid": "ReadWriteItsObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": [f"arn:aws:s3:::{bucket}/*"],
            },
        ],
    }


def _bootstrap_s3(url: str) -> dict[str, str]:
    """Buckets, one IAM user per service with its bucket's policy and an access key, then IAM enforcement on
    (moto's ``/moto-api/reset-auth``, the runtime form of ``INITIAL_NO_AUTH_ACTION_COUNT``): from here on every
    S3 request must be signed by a known key and allowed by its policy. Nothing uses a root key afterwards."""
    import boto3

    setup = {
        "endpoint_url": url,
        "region_name": "us-east-1",
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
    }  # fmt: skip  (unchecked until enforcement starts)
    s3, iam = boto3.client("s3", **setup), boto3.client("iam", **setup)
    keys: dict[str, str] = {}
    for bucket, user in BUCKETS.items():
        s3.create_bucket(Bucket=bucket)
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user, PolicyName=f"{user}-s3", PolicyDocument=json.dumps(bucket_policy(bucket))
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        prefix = "S3_WORKER" if bucket == "finmerge" else "S3_MLFLOW"
        keys[f"{prefix}_ACCESS_KEY_ID"], keys[f"{prefix}_SECRET_ACCESS_KEY"] = (
            key["AccessKeyId"],
            key["SecretAccessKey"],
        )
    req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST")
    req.add_header("Content-Type", "text/plain")  # a form body would be parsed away before moto reads it
    with urllib.request.urlopen(req, timeout=10) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: could not turn IAM enforcement on (HTTP {r.status})")
    return keys


def _mlflow_argv(port: int) -> list[str]:
    """No secret here: the backend store and the credentials reach the server through its environment."""
    return [_exe("mlflow"), "server", "--app-name", "finmerge-auth", "--artifacts-destination",
            "s3://mlflow/artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip


def _mlflow_env(base_env: dict, state: Path, urls: dict, secrets: dict) -> dict:
    ini = state / "mlflow-auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{state}/mlflow-auth.db\nadmin_username = {provision.ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # one PBKDF2 check per user and minute, not per request (each takes ~0.2 s of a busy core)
        "auth_cache_ttl_seconds = 60\n",
        encoding="utf-8",
    )
    return {
        **base_env,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{state}/mlflow.db",
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["MLFLOW_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        "MLFLOW_S3_ENDPOINT_URL": urls["s3"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "AWS_ACCESS_KEY_ID": secrets["S3_MLFLOW_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": secrets["S3_MLFLOW_SECRET_ACCESS_KEY"],
    }


def _export_client_auth(state: Path) -> None:
    auth = read_secrets(state).get("PREFECT_AUTH_STRING")
    if auth:
        os.environ["PREFECT_API_AUTH_STRING"] = auth


# ---------------------------------------------------------------------------------------------------------
# The stack


def _exe(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def _spawn(name: str, argv: list[str], env: dict, state: Path) -> subprocess.Popen:
    log = open(state / f"{name}.log", "ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def up(state_dir: str | Path = ".finmerge/stack", timeout: float = 180.0) -> dict:
    """Start S3, MLflow and Prefect with authentication; returns (and saves) what :func:`env` needs.
    Idempotent while up. The calling process becomes a Prefect client of the stack: ``PREFECT_API_AUTH_STRING``
    is exported into its environment (and its children's) until :func:`down`."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    current = status(state)
    if current and all(s["alive"] for s in current["services"].values()):
        _export_client_auth(state)
        return current
    if current:
        down(state)
    secrets = _secrets(state)
    base_env = {k: v for k, v in os.environ.items() if k not in CLIENT_ONLY}
    base_env["AWS_DEFAULT_REGION"] = "us-east-1"
    ports = {"s3": free_port(), "mlflow": free_port(), "prefect": free_port()}
    urls = {
        "s3": f"http://127.0.0.1:{ports['s3']}",
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
        "prefect": f"http://127.0.0.1:{ports['prefect']}/api",
    }
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["s3"] = _spawn(
            "s3", [_exe("moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])], base_env, state
        )
        wait_http(f"{urls['s3']}/moto-api/", timeout, procs["s3"])
        secrets.update(_bootstrap_s3(urls["s3"]))
        _write_secrets(state, secrets)
        procs["mlflow"] = _spawn(
            "mlflow", _mlflow_argv(ports["mlflow"]), _mlflow_env(base_env, state, urls, secrets), state
        )
        prefect_env = {
            **base_env,
            "PREFECT_HOME": str(state / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{state}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": urls["prefect"],  # the UI calls this (its default is port 4200)
            "PREFECT_SERVER_API_AUTH_STRING": secrets["PREFECT_AUTH_STRING"],  # the UI asks for it
        }
        procs["prefect"] = _spawn(
            "prefect",
            [_exe("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
            prefect_env,
            state,
        )
        wait_http(f"{urls['mlflow']}/health", timeout, procs["mlflow"])
        wait_http(f"{urls['prefect']}/health", timeout, procs["prefect"])
        passwords = {role: secrets[f"MLFLOW_{role.upper()}_PASSWORD"] for role in provision.ROLES}
        provision.provision(
            urls["mlflow"], secrets["MLFLOW_ADMIN_PASSWORD"], passwords, provision.default_lines()
        )
    except BaseException:
        for p in procs.values():
            stop(p)
        raise
    info = {
        "state_dir": str(state),
        "secrets_file": str(state / SECRETS_FILE),
        "services": {
            name: {"pid": p.pid, "port": ports[name], "url": urls[name], "log": str(state / f"{name}.log")}
            for name, p in procs.items()
        },
    }
    (state / STATE_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    _export_client_auth(state)
    return status(state) or info


def status(state_dir: str | Path = ".finmerge/stack") -> dict | None:
    """The saved stack with each service's ``alive`` flag, or None when no stack was started here."""
    path = Path(state_dir).resolve() / STATE_FILE
    if not path.exists():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    for svc in info["services"].values():
        svc["alive"] = _alive(svc["pid"]) and _listening(svc["port"])
    return info


def env(info: dict) -> dict[str, str]:
    """The variables that point finmerge (and stock clients) at the stack, as the pipeline: the worker's S3
    key, the ``pipeline`` MLflow account, the Prefect auth string, and the ``promoter`` account that
    :mod:`finmerge.registry.aliases` uses only to move ``champion`` / ``previous`` after the gates pass."""
    s, secret = info["services"], read_secrets(info["state_dir"])
    return {
        "AWS_ENDPOINT_URL": s["s3"]["url"],
        "MLFLOW_S3_ENDPOINT_URL": s["s3"]["url"],
        "MLFLOW_TRACKING_URI": s["mlflow"]["url"],
        "PREFECT_API_URL": s["prefect"]["url"],
        "AWS_ACCESS_KEY_ID": secret["S3_WORKER_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": secret["S3_WORKER_SECRET_ACCESS_KEY"],
        "MLFLOW_TRACKING_USERNAME": "pipeline",
        "MLFLOW_TRACKING_PASSWORD": secret["MLFLOW_PIPELINE_PASSWORD"],
        "FINMERGE_PROMOTER_USERNAME": "promoter",
        "FINMERGE_PROMOTER_PASSWORD": secret["MLFLOW_PROMOTER_PASSWORD"],
        "PREFECT_API_AUTH_STRING": secret["PREFECT_AUTH_STRING"],
    }


def credentials(info: dict) -> dict[str, tuple[str, str]]:
    """Every identity of the stack as (user or key id, password or secret): MLflow's ``admin``,
    ``pipeline``, ``promoter``, ``viewer`` and the S3 keys of ``s3-worker`` and ``s3-mlflow``."""
    secret = read_secrets(info["state_dir"])
    out = {r: (r, secret[f"MLFLOW_{r.upper()}_PASSWORD"]) for r in (provision.ADMIN, *provision.ROLES)}
    for who in ("worker", "mlflow"):
        out[f"s3-{who}"] = (
            secret[f"S3_{who.upper()}_ACCESS_KEY_ID"],
            secret[f"S3_{who.upper()}_SECRET_ACCESS_KEY"],
        )
    return out


def down(state_dir: str | Path = ".finmerge/stack") -> dict:
    """Stop every process group the stack started; raise if anything is still listening."""
    state = Path(state_dir).resolve()
    info = status(state)
    if info is None:
        return {"stopped": []}
    for svc in info["services"].values():
        _kill_group(svc["pid"])
    left = [n for n, s in info["services"].items() if _alive(s["pid"]) or _listening(s["port"])]
    if left:
        raise RuntimeError(f"still running after stack down: {', '.join(left)}")
    (state / STATE_FILE).unlink()
    if os.environ.get("PREFECT_API_AUTH_STRING") == read_secrets(state).get("PREFECT_AUTH_STRING"):
        os.environ.pop("PREFECT_API_AUTH_STRING")  # exported by up() for this stack only
    return {"stopped": sorted(info["services"])}
