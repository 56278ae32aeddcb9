"""MLflow tracking through the client API (thread-safe, no fluent global state).

Everything logged passes through :func:`scrub` first, so secrets never reach params or tags.

A tracking server that goes away (restart, network) must not cost data or stop training: metric values that
cannot be sent are kept in a bounded buffer, in order, and sent before anything newer once the server
answers again (retried with backoff, without blocking the caller in between). Params, tags and the end of a
run are retried in place. Past :data:`TRACKING_RETRY`'s budget, or when the buffer is full, the next call
raises :class:`TrackingUnavailable` naming the server, the run and what is still unsent; nothing is dropped
silently. MLflow's own HTTP retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, about two minutes by default) run
inside each attempt.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from finmerge.config import TrackingConfig
from finmerge.core import redact, storage
from finmerge.core.retry import Backoff, retry_call

LOCAL_HOME = Path(".finmerge")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrackingRetry(Backoff):
    """Backoff between attempts while the server is unreachable, the total outage tolerated (no limit on
    the number of attempts: only the budget ends an outage), and how many metric values may wait in memory
    meanwhile."""

    attempts: int = sys.maxsize
    max_delay_s: float = 30.0
    budget_s: float = 900.0
    max_pending: int = 200_000


TRACKING_RETRY = TrackingRetry()


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable past the retry budget (or the buffer filled up)."""


def _unreachable(exc: BaseException) -> bool:
    """A connection failure or a 5xx/429 answer (worth retrying), as opposed to a refused request."""
    import requests

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return True
        if re.search(r"error code (5\d\d|429)\b|Connection refused|Max retries exceeded", str(cur)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


# "token" only as the last word (hf_token, api_token): tokens_digest, max_tokens, eos_token_id are not secrets.
_SECRET_KEY = re.compile(
    r"(secret|password|passwd|api[_-]?key|access[_-]?key|credential|(^|[._-])token$)", re.I
)


def scrub(obj: Any) -> Any:
    """Drop secret-looking keys; strings are masked by :func:`finmerge.core.redact.mask` (credentials in
    URLs, secret query parameters, known secret values)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return redact.mask(obj)
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


# The tracking store of the stage being planned or run (set by the runner for that span only): what a
# ``models:/`` input resolves against, so `--set tracking.uri=…` reaches the registry lookups too.
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("finmerge_tracking_uri", default=None)


@contextlib.contextmanager
def current_store(uri: str):
    token = _CURRENT.set(uri)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def resolve_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if _CURRENT.get():
        return _CURRENT.get()
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(LOCAL_HOME / 'mlflow.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other store."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    return Path(path) if path not in ("", ":memory:") else None


def _default_artifact_location(uri: str) -> str | None:
    # beside a SQLite store, wherever the command runs (not in the cwd of whichever command came first)
    if db := sqlite_path(uri):
        return (db.parent / "mlartifacts").resolve().as_uri()
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (LOCAL_HOME / "mlartifacts").resolve().as_uri()
    return None  # a tracking server chooses (proxied or its default root)


_OUR_S3_ENDPOINT: str | None = None  # the MLFLOW_S3_ENDPOINT_URL value this module set, if any


def prepare_env() -> None:
    global _OUR_S3_ENDPOINT
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    ep = storage.endpoint_url()
    # MLflow's S3 client reads its own variable (and caches a boto3 client per value): keep it in step with
    # the storage endpoint, also when that changes in this process, so models:/ URIs resolve. A value the
    # user set is theirs and is left alone.
    current = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if current and current != _OUR_S3_ENDPOINT:
        return
    if ep:
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = _OUR_S3_ENDPOINT = ep
    elif current:
        os.environ.pop("MLFLOW_S3_ENDPOINT_URL")
        _OUR_S3_ENDPOINT = None


def client(uri: str):
    prepare_env()
    if db := sqlite_path(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# The command's tracking side process (finmerge/core/tracking_sidecar.py), when the executable started one.
_SIDECAR: Any = None


def use_sidecar(sidecar: Any) -> None:
    global _SIDECAR
    _SIDECAR = sidecar


def prepare(uri: str, experiment: str) -> None:
    """A hint that runs in ``experiment`` at ``uri`` are coming: the side process opens the store meanwhile."""
    if _SIDECAR is not None:
        _SIDECAR.warm(uri, experiment)


def _remote_run(op: str, uri: str, *args: Any) -> tuple[bool, Any]:
    """``Run.start`` / ``Run.resume`` in the side process: (True, its RemoteRun or None), or (False, None)."""
    sidecar = _SIDECAR
    done, run_id = _remote(op, uri, *args)
    if not done or run_id is None:
        return done, None
    from finmerge.core.tracking_sidecar import RemoteRun

    return True, RemoteRun(sidecar, uri, run_id)


def _remote(op: str, *args: Any) -> tuple[bool, Any]:
    """(True, answer) from the side process; (False, None) when there is none or it died."""
    if _SIDECAR is None:
        return False, None
    from finmerge.core.tracking_sidecar import SidecarDied

    try:
        return True, _SIDECAR.call(op, *args)
    except SidecarDied as exc:
        log.warning("%s; tracking in this process instead", exc)
        use_sidecar(None)
        return False, None


def ensure_experiment(cfg: TrackingConfig) -> tuple[str, str]:
    """(tracking uri, experiment id), creating the experiment on first use."""
    uri = resolve_uri(cfg)
    done, answer = _remote("ensure_experiment", cfg.model_copy(update={"uri": uri}))
    if done:
        return answer
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

    def __init__(self, uri: str, run_id: str, retry: TrackingRetry | None = None):
        self.uri, self.run_id = uri, run_id
        self.client = client(uri)
        self.retry = retry or TRACKING_RETRY
        self._lock = threading.Lock()
        self._pending: list = []  # mlflow Metric values not yet accepted by the server, oldest first
        self._down_since: float | None = None
        self._failures = 0
        self._next_try = 0.0
        _LIVE_RUNS.add(self)

    @classmethod
    def start(
        cls,
        uri: str,
        experiment_id: str,
        name: str,
        tags: dict[str, str] | None = None,
        parent_id: str | None = None,
    ) -> Run:
        done, remote = _remote_run("start", uri, experiment_id, name, tags, parent_id)
        if done:
            return remote
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
        done, remote = _remote_run("resume", uri, experiment_id, tag, value)
        if done:
            return remote
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

    # -- retries -------------------------------------------------------------------------------------

    def _call(self, what: str, op):
        """``op()`` retried in place while the server is unreachable, up to the budget (counted from the
        call: one attempt may itself spend minutes in MLflow's HTTP retries)."""
        return retry_call(
            op,
            self.retry,
            what=what,
            transient=_unreachable,
            give_up=lambda exc, _failures, _spent: self._unavailable(f"{what} failed", exc),
            logger=None,
            on_retry=lambda exc, failures, pause: log.warning(
                "%s: %s unreachable (%s); retry %d in %.0fs", what, self.uri, exc, failures, pause
            ),
            since=time.monotonic(),
        )

    def _unavailable(self, what: str, exc: BaseException | None) -> TrackingUnavailable:
        since = f" for {time.monotonic() - self._down_since:.0f}s" if self._down_since else ""
        return TrackingUnavailable(
            f"MLflow at {self.uri} unreachable{since} (budget {self.retry.budget_s:.0f}s): {what}; run "
            f"{self.run_id} has {len(self._pending)} metric values not yet logged (kept in memory, "
            f"call flush() to retry). Last error: {exc}"
        )

    def _send_pending(self) -> None:
        while self._pending:
            chunk = self._pending[:500]
            self.client.log_batch(self.run_id, metrics=chunk)
            del self._pending[: len(chunk)]

    def _try_flush(self) -> None:
        """Send what is buffered; on an unreachable server keep it and schedule the next attempt."""
        try:
            self._send_pending()
        except Exception as exc:
            if not _unreachable(exc):
                raise
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.warning(
                    "MLflow at %s unreachable; buffering metrics of run %s (%s)", self.uri, self.run_id, exc
                )
            self._failures += 1
            self._next_try = now + self.retry.delay(self._failures)
            if now - self._down_since > self.retry.budget_s:
                raise self._unavailable("giving up", exc) from exc
            return
        if self._down_since is not None:
            log.warning(
                "MLflow at %s is back after %.0fs; buffered metrics of run %s sent",
                self.uri, time.monotonic() - self._down_since, self.run_id,
            )  # fmt: skip
        self._down_since, self._failures, self._next_try = None, 0, 0.0

    def flush(self, budget_s: float | None = None) -> None:
        """Block until every buffered metric value is logged; TrackingUnavailable past the budget."""
        deadline = time.monotonic() + (self.retry.budget_s if budget_s is None else budget_s)
        with self._lock:
            while self._pending:
                self._try_flush()
                if not self._pending:
                    return
                if time.monotonic() >= deadline:
                    raise self._unavailable("flush timed out", None)
                time.sleep(max(0.0, min(self._next_try, deadline) - time.monotonic()))

    def unsent(self) -> list[list]:
        """The buffered metric values not yet accepted by the server, as ``[key, value, timestamp_ms, step]``
        (JSON-ready: a training checkpoint keeps them, so a job killed during an outage loses none)."""
        with self._lock:
            return [[m.key, m.value, m.timestamp, m.step] for m in self._pending]

    def resend(self, entries: list[list]) -> None:
        """Queue values from :meth:`unsent` ahead of anything newer. Re-sending a value the server already
        has is harmless: MLflow keeps one row per (key, timestamp, step, value)."""
        from mlflow.entities import Metric

        with self._lock:
            self._pending[:0] = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in entries]
            self._try_flush()

    # -- logging -------------------------------------------------------------------------------------

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(scrub(params))
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            self._call(
                f"log params of run {self.run_id}",
                lambda b=batch: self.client.log_batch(self.run_id, params=b),
            )

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log finite numbers at ``step``; never blocks on an unreachable server (see the module doc)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        with self._lock:
            self._pending.extend(items)
            if len(self._pending) > self.retry.max_pending:
                self._try_flush()
                if len(self._pending) > self.retry.max_pending:
                    raise self._unavailable(f"buffer of {self.retry.max_pending} values full", None)
            elif time.monotonic() >= self._next_try:
                self._try_flush()
            elif self._down_since and time.monotonic() - self._down_since > self.retry.budget_s:
                raise self._unavailable("giving up", None)

    def tags(self, tags: dict[str, str]) -> None:
        for k, v in scrub(tags).items():
            self._call(
                f"set tag {k} on run {self.run_id}",
                lambda k=k, v=v: self.client.set_tag(self.run_id, k, str(v)),
            )

    def artifact_files(self, folder_uri: str, names: list[str], subdir: str | None = None) -> None:
        """Copy small files of a stage folder into the run's artifacts."""
        self.artifact_data(read_files(folder_uri, names), subdir)

    def artifact_data(self, files: list[tuple[str, bytes]], subdir: str | None = None) -> None:
        """Log ``(name, content)`` pairs as artifacts."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files:
                dest = Path(tmp) / Path(name).name
                dest.write_bytes(data)
                self._call(
                    f"log artifact {name} to run {self.run_id}",
                    lambda d=dest: self.client.log_artifact(self.run_id, str(d), subdir),
                )

    def datasets(self, described: list[dict], context: str) -> None:
        """Log datasets as the run's inputs (``mlflow.log_input``): ``described`` are dicts with ``name``,
        ``digest``, ``source`` and, when known, ``mlflow_schema`` and ``num_rows``."""
        if not described:
            return
        import json as _json
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.types import Schema

        inputs = []
        for d in described:
            with (
                warnings.catch_warnings()
            ):  # "resolved in multiple ways" for local paths: any of them will do
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(d["source"])
            schema = Schema.from_json(_json.dumps(d["mlflow_schema"])) if d.get("mlflow_schema") else None
            ds = MetaDataset(source=source, name=d["name"], digest=d["digest"][:36],
                             schema=schema)  # fmt: skip
            tags = [InputTag("mlflow.data.context", context)]
            if d.get("num_rows") is not None:
                tags.append(InputTag("num_rows", str(d["num_rows"])))
            inputs.append(DatasetInput(ds._to_mlflow_entity(), tags))
        self._call(f"log inputs of run {self.run_id}", lambda: self.client.log_inputs(self.run_id, inputs))

    def text(self, text: str, name: str) -> None:
        self._call(f"log {name} to run {self.run_id}", lambda: self.client.log_text(self.run_id, text, name))

    def fail(self, budget_s: float = 60.0) -> None:
        """Mark the run FAILED on the way out of an error. A tracking server that is down too must neither
        hide that error nor hold it up for the whole retry budget: this tries for ``budget_s`` and logs."""
        try:
            self.flush(budget_s)
            self.client.set_terminated(self.run_id, status="FAILED")
        except Exception as exc:
            log.warning("could not mark MLflow run %s FAILED at %s: %s", self.run_id, self.uri, exc)

    def end(self, status: str = "FINISHED") -> None:
        """Send what is buffered, then mark the run ended (a FAILED end still records its metrics)."""
        self.flush()
        self._call(f"end run {self.run_id}", lambda: self.client.set_terminated(self.run_id, status=status))


def read_files(folder_uri: str, names: list[str]) -> list[tuple[str, bytes]]:
    """``(name, content)`` of the named files of a folder that exist."""
    found = []
    for name in names:
        src = storage.join(folder_uri, name)
        if storage.exists(src):
            found.append((name, storage.read_bytes(src)))
    return found


_LIVE_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """A process that logged but never ended its run (a launched training job) still sends its buffer."""
    for run in list(_LIVE_RUNS):
        if run._pending:
            try:
                run.flush()
            except TrackingUnavailable as exc:
                log.error("%s", exc)
