"""The deployment material is consistent: prefect.yaml entrypoints are the flows that `finmerge serve`
serves, and the docker compose stack has every service with a health check, no literal credentials,
and Dockerfiles whose sources exist. (No Docker daemon here: the compose file is checked as data.)"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_matches_served_deployments():
    from flows.deployments import flows

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    served = {name: f.name for name, f in flows().items()}
    declared = {}
    for d in doc["deployments"]:
        module, func = d["entrypoint"].removesuffix(".py").replace("/", ".").split(":")
        flow = getattr(importlib.import_module(module.replace(".py", "")), func)
        declared[d["name"]] = flow.name
        assert d["work_pool"]["name"] == "finmerge-process"
        # the UI form: every deployment takes the pipeline config
        assert "config" in flow.parameters.properties
    assert declared == served


def test_prefect_yaml_retrain_schedules_triggers_and_limits_mirror_the_config():
    """prefect.yaml cannot read the config: its cron, event and concurrency must equal what `finmerge serve`
    builds from the default config, and prefect's own loader must accept them."""
    from prefect.cli.deploy._models import PrefectYamlModel

    from flows.deployments import deployments

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    PrefectYamlModel.model_validate(doc)  # the schema `prefect deploy` reads it with
    declared = {d["name"]: d for d in doc["deployments"]}
    served = {d.name: d for d in deployments()}
    for name in ("retrain", "retrain-on-event", "watch-filings"):
        y, d = declared[name], served[name]
        assert y["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        assert d.concurrency_limit == 1 and d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        crons = [(s.schedule.cron, s.schedule.timezone) for s in d.schedules]
        assert [(s["cron"], s["timezone"]) for s in y.get("schedules", [])] == crons
        assert {k: v for k, v in d.parameters.items() if k != "config"} == y.get("parameters", {})
    assert declared["retrain"]["schedules"], "the scheduled retrain must have a schedule"
    (trig,) = declared["retrain-on-event"]["triggers"]
    (served_trig,) = served["retrain-on-event"].triggers
    assert set(trig["expect"]) == served_trig.expect == {"finmerge.filings.arrived"}
    assert trig["match"] == dict(served_trig.match.root)
    assert trig["parameters"] == served_trig.parameters


def test_compose_stack_is_complete_and_secret_free():
    text = (ROOT / "infra" / "docker-compose.yml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    services = doc["services"]
    assert {"minio", "postgres", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, svc in services.items():
        if name not in ("buckets", "mlflow-users"):  # one-shot jobs
            assert "healthcheck" in svc, name
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "s3://" in str(services["mlflow"]["command"])
    assert (
        "postgresql+asyncpg://"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    # credentials only ever come from the env file
    for key in re.findall(r"(PASSWORD|SECRET_ACCESS_KEY|API_KEY)\s*:\s*(\S+)", text):
        assert key[1].startswith("${") or key[1].startswith("*"), key
    for svc in services.values():
        build = svc.get("build")
        if build:
            dockerfile = ROOT / build["dockerfile"]
            for line in dockerfile.read_text(encoding="utf-8").splitlines():
                if line.startswith("COPY "):
                    for src in line.split()[1:-1]:
                        assert (ROOT / src).exists(), (dockerfile.name, src)
    example = (ROOT / "infra" / ".env.example").read_text(encoding="utf-8")
    needed = set(re.findall(r"\$\{(\w+)", text))
    assert needed <= {line.split("=")[0] for line in example.splitlines() if "=" in line}


def test_compose_stack_is_authenticated_least_privilege_and_loopback_only():
    """docs/security.md: no secret on a command line, root S3 keys only in MinIO and its bootstrap job, one S3
    user per service, MLflow's auth app, Prefect's auth string, and only the two UIs published, on loopback."""
    import json

    from finmerge import stack

    services = yaml.safe_load((ROOT / "infra" / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    for name, svc in services.items():
        for key in ("command", "entrypoint"):
            assert "${" not in str(svc.get(key, "")), (name, key)  # compose would write the value into it
        root_keys = "MINIO_ROOT" in str(svc.get("environment", {}))
        assert not root_keys or name in ("minio", "buckets"), name
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"mlflow", "prefect-server"}
    assert all(p.startswith("${FINMERGE_BIND:-127.0.0.1}:") for ports in published.values() for p in ports)
    assert "--app-name finmerge-auth" in services["mlflow"]["command"]
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith("${")
    worker, mlflow = services["worker"]["environment"], services["mlflow"]["environment"]
    assert worker["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
    assert worker["MLFLOW_TRACKING_USERNAME"] == "pipeline"
    assert (
        worker["AWS_ACCESS_KEY_ID"] == "${WORKER_S3_ACCESS_KEY}"
        and mlflow["AWS_ACCESS_KEY_ID"] == "${MLFLOW_S3_ACCESS_KEY}"
    )
    # the policies in infra/ are the ones the local stack enforces with moto
    for file, bucket in (("worker-s3.json", "finmerge"), ("mlflow-s3.json", "mlflow")):
        assert json.loads((ROOT / "infra" / "policies" / file).read_text()) == stack.bucket_policy(bucket)
    ini = (ROOT / "infra" / "mlflow-auth.ini").read_text()
    assert "default_permission = READ" in ini and "admin_password" not in ini


def test_the_mlflow_auth_app_is_an_entry_point():
    """`mlflow server --app-name finmerge-auth` finds it through this entry point (the stack tests start it)."""
    import tomllib

    from finmerge.authz import mlflow_app

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = doc["project"]["entry-points"]["mlflow.app"]["finmerge-auth"]
    module, func = target.split(":")
    assert importlib.import_module(module) is mlflow_app and callable(getattr(mlflow_app, func))
