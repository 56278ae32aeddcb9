"""Shared fixtures: isolated homes, a moto S3 server, a real `mlflow server`, the Prefect test harness."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Keep tests off ~/.prefect, ~/.cache/huggingface and any real cloud credentials."""
    home = tmp_path_factory.mktemp("homes")
    saved = dict(os.environ)
    os.environ.update(
        {
            "PREFECT_HOME": str(home / "prefect"),
            "HF_HOME": str(home / "hf"),
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    for var in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "PREFECT_API_URL",
    ):
        os.environ.pop(var, None)
    # Commands with no tracking URI write their MLflow store to ./.finmerge: run from a scratch folder, so a
    # test never writes into the checkout (nor, with two workers, into one SQLite file from two processes).
    had_store = (ROOT / ".finmerge").exists()  # a fresh clone (CI) has none: a leak would create it
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(saved)
    assert had_store or not (ROOT / ".finmerge").exists(), "a test wrote into the checkout's .finmerge/"


from finmerge.stack import free_port, stop, wait_http  # noqa: E402,F401  (shared with the local stack)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on a free loopback port (a child process, so subprocesses can reach it too)."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", 30, proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh bucket; the storage layer is pointed at the moto endpoint for the test's duration."""
    import uuid

    import boto3

    from finmerge.core import storage

    name = f"fm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    os.environ["AWS_ENDPOINT_URL"] = s3_endpoint
    storage.configure(s3_endpoint)
    yield name
    os.environ.pop("AWS_ENDPOINT_URL", None)
    storage.configure(None)


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """A real `mlflow server` child process: SQLite backend, artifacts proxied to a moto bucket."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="mlflow")
    work = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    exe = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--backend-store-uri",
            f"sqlite:///{work}/mlflow.db",
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=open(work / "server.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
