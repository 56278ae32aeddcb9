"""`finmerge stack up|env|down`: the no-Docker local stack comes up healthy, finmerge's clients work
against it, and `down` leaves nothing running or listening."""

from __future__ import annotations

import os
import stat
import urllib.request
from pathlib import Path

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
        s3.put_object(Bucket="finmerge", Key="hello", Body=b"x")  # the pipeline's key writes its bucket
        assert s3.list_objects_v2(Bucket="finmerge")["KeyCount"] == 1
        for url in (exports["MLFLOW_TRACKING_URI"] + "/health", exports["PREFECT_API_URL"] + "/health"):
            with urllib.request.urlopen(url, timeout=5) as r:
                assert r.status == 200
        # authenticated: the credentials are generated into a 0600 file and `stack env` prints the pipeline's
        secrets_file = state / stack.SECRETS_FILE
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        assert exports["MLFLOW_TRACKING_USERNAME"] == "pipeline" and exports["PREFECT_API_AUTH_STRING"]
        assert (
            os.environ["PREFECT_API_AUTH_STRING"] == exports["PREFECT_API_AUTH_STRING"]
        )  # up() made us a client
        # ... and no secret is on any command line, in stack.json or in a log
        secrets = [v for v in stack.read_secrets(state).values() if len(v) >= 16]
        assert len(secrets) >= 10
        cmdlines = _cmdlines_of_groups([s["pid"] for s in info["services"].values()])
        assert len(cmdlines) >= 3
        texts = [
            *cmdlines,
            (state / "stack.json").read_text(),
            *(p.read_text(errors="replace") for p in state.glob("*.log")),
        ]
        leaked = [s[:4] + "…" for s in secrets if any(s in t for t in texts)]
        assert not leaked, leaked
    finally:
        assert main(["stack", "down", "--state", str(state)]) == 0
    for svc in info["services"].values():
        with pytest.raises(ProcessLookupError):
            os.kill(svc["pid"], 0)
        assert not stack._listening(svc["port"])
    assert stack.status(state) is None and main(["stack", "down", "--state", str(state)]) == 0
    assert "PREFECT_API_AUTH_STRING" not in os.environ


def _cmdlines_of_groups(pgids: list[int]) -> list[str]:
    """The command lines of every process in the given process groups (the servers and their workers)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) in pgids:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return out
