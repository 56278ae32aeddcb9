"""The no-Docker local stack for development and tests: S3 (moto server), `mlflow server` and
`prefect server`, each a child process on a free loopback port.

``finmerge stack up`` starts the three, waits for their health endpoints, creates the buckets and
writes ``<state>/stack.json`` (pids, ports, URLs, logs); ``finmerge stack env`` prints the variables
that point finmerge at it; ``finmerge stack down`` stops every process group it started and checks
that nothing is left listening. Data lives under the state folder (SQLite for MLflow and Prefect);
moto keeps S3 in memory, so objects go away with the stack. The production stack (MinIO, Postgres,
MLflow, Prefect server and worker) is ``infra/docker-compose.yml``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STATE_FILE = "stack.json"
BUCKETS = ("finmerge", "mlflow")
# throwaway credentials for the local moto server only (never real ones)
LOCAL_KEYS = {"AWS_ACCESS_KEY_ID": "finmerge-local", "AWS_SECRET_ACCESS_KEY": "finmerge-local"}


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
# The stack


def _exe(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def _spawn(name: str, argv: list[str], env: dict, state: Path) -> subprocess.Popen:
    log = open(state / f"{name}.log", "ab")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def up(state_dir: str | Path = ".finmerge/stack", timeout: float = 180.0) -> dict:
    """Start S3, MLflow and Prefect; returns (and saves) what :func:`env` needs. Idempotent while up."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    current = status(state)
    if current and all(s["alive"] for s in current["services"].values()):
        return current
    if current:
        down(state)
    base_env = {**os.environ, **LOCAL_KEYS, "AWS_DEFAULT_REGION": "us-east-1"}
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
        import boto3

        s3 = boto3.client("s3", endpoint_url=urls["s3"], region_name="us-east-1", **_boto_keys())
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        mlflow_env = {
            **base_env,
            "MLFLOW_S3_ENDPOINT_URL": urls["s3"],
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        procs["mlflow"] = _spawn(
            "mlflow",
            [
                _exe("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{state}/mlflow.db",
                "--artifacts-destination",
                "s3://mlflow/artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            mlflow_env,
            state,
        )
        prefect_env = {
            **base_env,
            "PREFECT_HOME": str(state / "prefect-home"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{state}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": urls["prefect"],  # the UI calls this (its default is port 4200)
        }
        procs["prefect"] = _spawn(
            "prefect",
            [_exe("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
            prefect_env,
            state,
        )
        wait_http(f"{urls['mlflow']}/health", timeout, procs["mlflow"])
        wait_http(f"{urls['prefect']}/health", timeout, procs["prefect"])
    except BaseException:
        for p in procs.values():
            stop(p)
        raise
    info = {
        "state_dir": str(state),
        "services": {
            name: {"pid": p.pid, "port": ports[name], "url": urls[name], "log": str(state / f"{name}.log")}
            for name, p in procs.items()
        },
    }
    (state / STATE_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return status(state) or info


def _boto_keys() -> dict:
    return {
        "aws_access_key_id": LOCAL_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": LOCAL_KEYS["AWS_SECRET_ACCESS_KEY"],
    }


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
    """The variables that point finmerge (and stock clients) at the stack."""
    s = info["services"]
    return {
        "AWS_ENDPOINT_URL": s["s3"]["url"],
        "MLFLOW_S3_ENDPOINT_URL": s["s3"]["url"],
        "MLFLOW_TRACKING_URI": s["mlflow"]["url"],
        "PREFECT_API_URL": s["prefect"]["url"],
        **LOCAL_KEYS,
    }


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
    return {"stopped": sorted(info["services"])}
