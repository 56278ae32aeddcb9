"""One stage, one runner: what a stage is, where its output goes, and how a run of it is tracked.

A :class:`Stage` is declared once in ``tasks/<stage>.py``: its name, its config section, its inputs (each
fingerprinted into the cache key), the modules whose source code is part of that key, and ``work``, the
adapter that calls the library function in ``finmerge/<domain>/``. Every entry point runs it the same way:

* the CLI through :func:`run_stage` (this module: no Prefect, so a stage command starts fast);
* flows and deployments through :class:`finmerge.runner.flow_runner.StageRunner`, which wraps the same
  :func:`execute` in a Prefect task (cache by output folder, the same retry rule).

Either way a run gets the same content-derived folder ``<storage.uri>/<stage>/<key>``, a cache hit when that
folder is complete, and one MLflow run (a child of the pipeline run inside the pipeline, top level otherwise;
a cache hit is recorded as a finished run tagged ``finmerge.cache=hit``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import inspect
import logging
import random
import sys
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from finmerge import __version__
from finmerge.config import PipelineConfig, config_hash, sha256_json
from finmerge.core import storage, tracking
from finmerge.runner import lineage
from finmerge.runner.fingerprints import (  # noqa: F401 (re-exported for the flows and tasks)
    InputKind,
    file_digest,
    input_digest,
    sources_fingerprint,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StageCall:
    """Everything a stage's ``work`` receives: the config, its section, the inputs and where to write."""

    cfg: PipelineConfig
    section: Any
    inputs: dict[str, Any]
    out_uri: str
    staging_dir: str
    overwrite: bool = False
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    on_log: Callable[[int, dict], None] | None = None
    # {"uri", "run_id"} of the stage's MLflow run, for work that logs from another process (training);
    # calling it starts the run (otherwise it starts when the work first logs, or when it returns)
    tracking: Callable[[], dict] | None = None

    def args(self, *names: str) -> list:
        """The inputs ``names``, in order (None for an optional input not given)."""
        return [self.inputs.get(n) for n in names]

    def kw(self, *names: str) -> dict[str, Any]:
        """The shared keyword arguments ``names`` of library stage functions, from the config and the call."""
        m = self.cfg.models
        known = {
            "trust_remote_code": lambda: m.trust_remote_code,
            "allow_pickle": lambda: m.allow_pickle,
            "overwrite": lambda: self.overwrite,
            "parallel": lambda: self.cfg.corpus.parallel,
            "on_log": lambda: self.on_log,
        }
        return {n: known[n]() for n in names}


@dataclasses.dataclass(frozen=True, eq=False)  # identity: one Prefect task per declaration
class Stage:
    """A pipeline stage, declared once (see ``tasks/``)."""

    name: str
    section: str  # dotted path into PipelineConfig, e.g. "merge" or "corpus.clean"
    inputs: dict[str, InputKind]
    code: tuple[str, ...]  # modules whose source is part of the cache key
    work: Callable[[StageCall], dict]
    # files the config names whose content shapes the output (e.g. the NG-word list)
    config_files: tuple[str, ...] = ()
    retries: int = 2
    retry_on: tuple[type[BaseException], ...] = ()  # retried besides I/O errors
    unkeyed: tuple[str, ...] = ("label",)  # options that do not change the output
    # the part of the section that shapes the output (default: all of it)
    key_fields: tuple[str, ...] | None = None
    key_exclude: tuple[str, ...] = ()
    # inputs that are datasets, logged as the run's MLflow inputs with this context ("training", "evaluation")
    datasets: dict[str, str] = dataclasses.field(default_factory=dict)
    # folder inputs of which the work reads only some files (path prefixes): the key covers those files'
    # content, so a change elsewhere in the folder does not redo the stage (the demo base reads the world's
    # general and background corpora, not the evaluated companies' filings)
    input_parts: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def section_of(self, cfg: PipelineConfig) -> BaseModel:
        return _field(cfg, self.section)

    def section_key(self, cfg: PipelineConfig) -> dict:
        dump = self.section_of(cfg).model_dump(mode="json")
        keep = self.key_fields or tuple(dump)
        return {k: v for k, v in dump.items() if k in keep and k not in self.key_exclude}

    def code_version(self) -> str:
        return code_version(*self.code)


def code_version(*modules: Any) -> str:
    """Hash of the source files of the given modules (plus the package version). A package counts with
    every module in it, so a declaration naming its domain package never misses a module split off later."""
    h = hashlib.sha256(__version__.encode())
    for mod in modules:
        module = import_module(mod) if isinstance(mod, str) else mod
        if hasattr(module, "__path__"):
            files = sorted(f for d in module.__path__ for f in Path(d).rglob("*.py"))
        else:
            files = [Path(inspect.getfile(module))]
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: str, code: str, *parts: Any) -> str:
    return sha256_json(
        [stage, code, [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]]
    )[:20]


class RunContext(BaseModel):
    """What a stage needs to know about the run it belongs to (small and serialisable)."""

    storage_uri: str
    staging_dir: str
    endpoint_url: str | None = None
    retry_attempts: int = storage.UPLOAD_RETRY.attempts
    retry_budget_s: float = storage.UPLOAD_RETRY.budget_s
    tracking_uri: str
    experiment: str = "finmerge"
    artifact_location: str | None = None
    experiment_id: str | None = None  # resolved (the experiment created) on first use
    parent_run_id: str | None = None
    config_hash: str

    @classmethod
    def create(cls, cfg: PipelineConfig, parent_run_id: str | None = None, lazy: bool = False) -> RunContext:
        """``lazy``: touch the tracking store only when a run is recorded (a command refused at its
        preflight leaves no trace there)."""
        storage.configure_from(cfg.storage)
        t = cfg.tracking
        ctx = cls(
            storage_uri=storage.normalize(cfg.storage.uri),
            staging_dir=str(Path(cfg.storage.staging_dir).expanduser().resolve()),
            endpoint_url=cfg.storage.endpoint_url,
            retry_attempts=cfg.storage.retry_attempts,
            retry_budget_s=cfg.storage.retry_budget_s,
            tracking_uri=tracking.resolve_uri(t),
            experiment=t.experiment,
            artifact_location=t.artifact_location,
            parent_run_id=parent_run_id,
            config_hash=config_hash(cfg),
        )
        if not lazy:
            ctx.experiment_id_()
        else:
            tracking.prepare(ctx.tracking_uri, ctx.experiment)
        return ctx

    def experiment_id_(self) -> str:
        if self.experiment_id is None:
            from finmerge.config import TrackingConfig

            t = TrackingConfig(
                uri=self.tracking_uri, experiment=self.experiment, artifact_location=self.artifact_location
            )
            self.tracking_uri, self.experiment_id = tracking.ensure_experiment(t)
        return self.experiment_id

    def out_uri(self, stage: str, key: str) -> str:
        return storage.join(self.storage_uri, stage, key)

    def apply(self) -> None:
        """Configure storage in this process (a Prefect task may run in another one)."""
        storage.configure(
            self.endpoint_url,
            dataclasses.replace(
                storage.UPLOAD_RETRY, attempts=self.retry_attempts, budget_s=self.retry_budget_s
            ),
        )


@dataclasses.dataclass
class Planned:
    """A stage run resolved: the call its ``work`` gets, and the cache key that names its folder."""

    stage: Stage
    call: StageCall
    key: str
    label: str
    explicit_out: bool = False  # the caller chose the folder: it is written, never taken as a cache hit
    digests: dict[str, Any] = dataclasses.field(default_factory=dict)  # the inputs' fingerprints

    @property
    def out_uri(self) -> str:
        return self.call.out_uri


def plan(
    stage: Stage,
    cfg: PipelineConfig,
    inputs: dict[str, Any],
    ctx: RunContext,
    *,
    out: str | None = None,
    overwrite: bool = False,
    label: str | None = None,
    options: dict[str, Any] | None = None,
) -> Planned:
    """The cache key (stage, code, config section, input fingerprints, options) and the output folder:
    ``out`` when given, else the content-derived ``<storage.uri>/<stage>/<key>``."""
    unknown = set(inputs) - set(stage.inputs)
    if unknown:
        raise TypeError(f"stage {stage.name}: unknown inputs {sorted(unknown)}")
    options = dict(options or {})
    section = stage.section_of(cfg)
    with tracking.current_store(ctx.tracking_uri):  # a models:/ input is looked up in the run's registry
        digests = {name: input_digest(kind, inputs.get(name)) for name, kind in stage.inputs.items()}
        # the lineage records whole inputs; the key only the parts the work reads
        keyed_digests = digests | {
            name: input_digest(stage.inputs[name], inputs.get(name), parts)
            for name, parts in stage.input_parts.items()
        }
    files = {path: file_digest(_field(cfg, path)) for path in stage.config_files}
    keyed = {k: v for k, v in sorted(options.items()) if k not in stage.unkeyed}
    key = stage_key(stage.name, stage.code_version(), stage.section_key(cfg), keyed_digests, files, keyed)
    out_uri = storage.normalize(out) if out else ctx.out_uri(stage.name, key)
    call = StageCall(
        cfg=cfg,
        section=section,
        inputs=dict(inputs),
        out_uri=out_uri,
        staging_dir=ctx.staging_dir,
        overwrite=overwrite,
        options=options,
    )
    return Planned(stage, call, key, label or stage.name, explicit_out=bool(out), digests=digests)


def _field(cfg: PipelineConfig, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _params(p: Planned) -> dict:
    section = p.call.section
    params = section.model_dump(mode="json") if isinstance(section, BaseModel) else {}
    params.update({f"input.{k}": v for k, v in p.call.inputs.items() if v is not None})
    params.update({f"option.{k}": v for k, v in p.call.options.items() if v is not None})
    return params


def _tags(p: Planned, ctx: RunContext) -> dict:
    return {
        "finmerge.stage": p.stage.name,
        "finmerge.config_hash": ctx.config_hash,
        "finmerge.output": p.out_uri,
        "finmerge.cache_key": p.key,
        "finmerge.version": __version__,
    }


def cached(p: Planned) -> dict | None:
    """The stage's earlier result when its content-derived folder is complete (never with ``overwrite``
    or a folder the caller chose: that one is written, under the output rules)."""
    if p.call.overwrite or p.explicit_out:
        return None
    manifest = storage.read_manifest(p.out_uri)
    if manifest is None or storage.stage_of(manifest) not in (p.stage.name, None):
        return None
    return storage.result_of(p.out_uri)


def preflight(p: Planned) -> None:
    """Before any tracking or work: the inputs exist, and the output location may be written."""
    for name, kind in p.stage.inputs.items():
        value = p.call.inputs.get(name)
        if kind == "model" and str(value).startswith("models:/"):
            continue  # a registered version: resolved when fingerprinted, verified file by file when loaded
        if kind in ("model", "tokenizer", "file") and value is not None and not storage.exists(value):
            raise FileNotFoundError(
                f"{value}: no such {name} for stage {p.stage.name} (file, folder or s3:// object)"
            )
    uris = [v for n, k in p.stage.inputs.items() if k != "value" for v in lineage.uris(p.call.inputs.get(n))]
    storage.check_output(p.out_uri, p.stage.name, uris, p.call.overwrite)


def record_cache_hit(p: Planned, ctx: RunContext, result: dict) -> dict:
    """A cache hit is still a run of the stage: one finished MLflow run with the same params and metrics."""
    run = tracking.Run.start(
        ctx.tracking_uri,
        ctx.experiment_id_(),
        p.label,
        parent_id=ctx.parent_run_id,
        tags={**_tags(p, ctx), "finmerge.cache": "hit", "finmerge.digest": result["digest"]},
    )
    run.params(_params(p))
    run.metrics(result.get("metrics", {}))
    lineage.log_datasets(p, run)
    run.end()
    return {**result, "mlflow_run_id": run.run_id, "cache": "hit"}


class _StageRun:
    """The stage's MLflow run, started on first use: a retry re-attaches to the run a failed attempt left."""

    def __init__(self, p: Planned, ctx: RunContext):
        self.p, self.ctx, self.run = p, ctx, None

    def get(self) -> tracking.Run:
        if self.run is None:
            ctx, exp = self.ctx, self.ctx.experiment_id_()
            self.run = tracking.Run.resume(ctx.tracking_uri, exp, "finmerge.output", self.p.out_uri)
            if self.run is None:
                tags = {**_tags(self.p, ctx), "finmerge.cache": "miss"}
                self.run = tracking.Run.start(
                    ctx.tracking_uri, exp, self.p.label, parent_id=ctx.parent_run_id, tags=tags
                )
                self.run.params(_params(self.p))
        return self.run

    def info(self) -> dict:
        return {"uri": self.ctx.tracking_uri, "run_id": self.get().run_id}


def execute(p: Planned, ctx: RunContext, on_tables: Callable[[str, dict], None] | None = None) -> dict:
    """Run the stage's work inside its own MLflow run; a complete folder is a cache hit instead."""
    ctx.apply()
    done = cached(p)
    if (
        done is not None
    ):  # committed earlier (by any entry point), or by an attempt whose cache record was lost
        return record_cache_hit(p, ctx, done)
    preflight(p)
    stage_run = _StageRun(p, ctx)
    call = dataclasses.replace(
        p.call,
        on_log=lambda step, metrics: stage_run.get().metrics(metrics, step=step),
        tracking=stage_run.info,
    )
    try:
        with tracking.current_store(ctx.tracking_uri):
            result = p.stage.work(call)
    except BaseException:
        if stage_run.run is not None:
            stage_run.run.fail()
        raise
    run = stage_run.get()
    run.metrics(result.get("metrics", {}))
    run.artifact_files(p.out_uri, result.get("artifacts", []))
    lineage.log_datasets(p, run)
    if on_tables is not None:
        on_tables(p.stage.name, result.get("tables") or {})
    run.tags({"finmerge.digest": result["digest"]})
    run.end()
    return {**result, "mlflow_run_id": run.run_id, "cache": "miss"}


# Errors worth another attempt: the storage or a server was briefly unreachable. A missing file, a refused
# output, a permission or a full disk does not fix itself, and a logic error would only fail again. A
# StorageError is not retried either: remote storage calls are retried under their own budget
# (storage.with_retries), so one that reaches the stage is a spent budget or a wrong input.
TRANSIENT: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
try:  # botocore's connection errors (an S3 endpoint down) are not OSErrors
    from botocore.exceptions import BotoCoreError

    TRANSIENT += (BotoCoreError,)
except ImportError:  # pragma: no cover
    pass
PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    storage.StorageError,
)
RETRY_DELAYS_S = (2.0, 10.0, 30.0)


def retryable(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """The one retry rule of every stage, wherever it runs (Prefect's retry condition uses it too)."""
    if isinstance(exc, extra):
        return True
    if isinstance(exc, PERMANENT) or storage.disk_full(exc):
        return False
    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC):
        return False
    return isinstance(exc, TRANSIENT)


def run_stage(
    stage: Stage,
    cfg: PipelineConfig,
    inputs: dict[str, Any],
    *,
    ctx: RunContext | None = None,
    out: str | None = None,
    overwrite: bool = False,
    label: str | None = None,
    options: dict[str, Any] | None = None,
    delays_s: tuple[float, ...] = RETRY_DELAYS_S,
) -> dict:
    """Run one stage outside Prefect (the CLI): same folder, cache, MLflow run and retry rule as in a flow."""
    ctx = ctx or RunContext.create(cfg, lazy=True)
    p = plan(stage, cfg, inputs, ctx, out=out, overwrite=overwrite, label=label, options=options)
    attempt = 0
    while True:
        try:
            return execute(p, ctx)
        except Exception as exc:
            if attempt >= stage.retries or not retryable(exc, stage.retry_on):
                raise
            delay = delays_s[min(attempt, len(delays_s) - 1)] * (1 + random.uniform(-0.5, 0.5))
            print(f"{stage.name}: {type(exc).__name__}: {exc}; retrying in {delay:.0f}s", file=sys.stderr)
            attempt += 1
            time.sleep(delay)


class LocalRunner:
    """The CLI's driver: the same interface as the flows' ``StageRunner``, without Prefect."""

    def __init__(self, ctx: RunContext, cfg: PipelineConfig):
        self.ctx, self.cfg = ctx, cfg
        self.states: dict[str, str] = {}

    def run(
        self,
        stage: Stage,
        inputs: dict[str, Any],
        *,
        label: str | None = None,
        cfg: PipelineConfig | None = None,
        **kw: Any,
    ) -> dict:
        result = run_stage(stage, cfg or self.cfg, inputs, ctx=self.ctx, label=label, **kw)
        self.states[label or stage.name] = "Cached" if result.get("cache") == "hit" else "Completed"
        return result

    def run_many(self, stage: Stage, calls: list[dict[str, Any]], max_parallel: int = 1) -> list[dict]:
        """The calls one after another (the flows' driver maps them onto its task runner)."""
        return [self.run(stage, c["inputs"], **{k: v for k, v in c.items() if k != "inputs"}) for c in calls]
