"""MLflow tracking through the client API (thread-safe, no fluent global state).

Everything logged passes through :func:`scrub` first, so secrets never reach params or tags.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from finmerge import storage
from finmerge.config import TrackingConfig

LOCAL_HOME = Path(".finmerge")
# "token" only as the last word (hf_token, api_token): tokens_digest, max_tokens, eos_token_id are not secrets.
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|api[_-]?key|access[_-]?key|credential|(^|[._-])token$)", re.I
)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def scrub(obj: Any) -> Any:
    """Drop secret-looking keys and strip credentials embedded in URLs."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return _URL_USERINFO.sub(r"\g<scheme>***@", obj)
    return obj


def flatten(obj: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def resolve_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(LOCAL_HOME / 'mlflow.db').resolve()}"


def _default_artifact_location(uri: str) -> str | None:
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (LOCAL_HOME / "mlartifacts").resolve().as_uri()
    return None  # a tracking server chooses (proxied or its default root)


def prepare_env() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    ep = storage.endpoint_url()
    # MLflow's S3 client reads its own variable; keep it in step with ours so models:/ URIs resolve.
    if ep and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = ep


def client(uri: str):
    prepare_env()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(cfg: TrackingConfig) -> tuple[str, str]:
    """(tracking uri, experiment id), creating the experiment on first use."""
    uri = resolve_uri(cfg)
    c = client(uri)
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return uri, exp.experiment_id
    location = cfg.artifact_location or _default_artifact_location(uri)
    try:
        return uri, c.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # another process created it first
        exp = c.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return uri, exp.experiment_id


class Run:
    """One MLflow run, addressed by id; safe to use from any thread or process."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = client(uri)

    @classmethod
    def start(
        cls,
        uri: str,
        experiment_id: str,
        name: str,
        tags: dict[str, str] | None = None,
        parent_id: str | None = None,
    ) -> Run:
        c = client(uri)
        all_tags = dict(scrub(tags or {}))
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = c.create_run(experiment_id, run_name=name, tags=all_tags)
        return cls(uri, run.info.run_id)

    @classmethod
    def resume(cls, uri: str, experiment_id: str, tag: str, value: str) -> Run | None:
        """The newest unfinished (failed, killed or still marked running) run tagged ``tag=value``, set
        running again; None when there is none."""
        c = client(uri)
        escaped = value.replace("'", "\\'")
        runs = c.search_runs(
            [experiment_id],
            filter_string=f"tags.`{tag}` = '{escaped}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            return None
        c.update_run(runs[0].info.run_id, status="RUNNING")
        return cls(uri, runs[0].info.run_id)

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(scrub(params))
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def tags(self, tags: dict[str, str]) -> None:
        for k, v in scrub(tags).items():
            self.client.set_tag(self.run_id, k, str(v))

    def artifact_files(self, folder_uri: str, names: list[str], subdir: str | None = None) -> None:
        """Copy small files of a stage folder into the run's artifacts."""
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                src = storage.join(folder_uri, name)
                if not storage.exists(src):
                    continue
                dest = Path(tmp) / Path(name).name
                dest.write_bytes(storage.read_bytes(src))
                self.client.log_artifact(self.run_id, str(dest), subdir)

    def text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
