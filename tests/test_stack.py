"""`finmerge stack up|env|down`: the no-Docker local stack comes up healthy, finmerge's clients work
against it, and `down` leaves nothing running or listening."""

from __future__ import annotations

import os
import urllib.request

import pytest

from finmerge import stack
from finmerge.cli import main


@pytest.mark.slow
def test_stack_up_env_down(tmp_path, capsys):
    state = tmp_path / "stack"
    assert main(["stack", "up", "--state", str(state)]) == 0
    info = stack.status(state)
    try:
        assert info and set(info["services"]) == {"s3", "mlflow", "prefect"}
        assert all(s["alive"] for s in info["services"].values())
        assert stack.up(state)["services"] == info["services"]  # idempotent while up
        capsys.readouterr()
        assert main(["stack", "env", "--state", str(state)]) == 0
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines()
        )
        assert exports["MLFLOW_TRACKING_URI"] == info["services"]["mlflow"]["url"]
        assert exports["PREFECT_API_URL"].endswith("/api")
        # the services answer: S3 buckets exist, MLflow and Prefect report healthy
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=exports["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
        )
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} >= {"finmerge", "mlflow"}
        for url in (exports["MLFLOW_TRACKING_URI"] + "/health", exports["PREFECT_API_URL"] + "/health"):
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.status == 200
    finally:
        assert main(["stack", "down", "--state", str(state)]) == 0
    for svc in info["services"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(svc["pid"], 0)
        assert not stack._listening(svc["port"])
    assert stack.status(state) is None and main(["stack", "down", "--state", str(state)]) == 0
