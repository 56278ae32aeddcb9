"""Secrets never leave the places they are meant for (issue 9, item 4).

Distinctive values are planted for every credential the pipeline touches: the EDINET key (environment and a
Prefect Secret block), the AWS key id, secret and session token, the judge API key. The real pipeline runs on
moto S3 with a real ``mlflow server``, the Prefect harness, a fake EDINET and a fake judge that both insist
on the planted keys (so the keys did travel); error paths that tend to leak are provoked (EDINET rejecting a
key, S3 errors). Then everything the run left behind is scanned for each value, raw, URL-encoded and
base64-encoded: logs at DEBUG, stdout/stderr, MLflow runs, artifacts and registry, Prefect runs, results,
artifacts, blocks and API logs, the S3 buckets and the local staging folder.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from edinet_fake import FakeEdinet  # tests/ is on sys.path (rootdir conftest)
from openai_fake import FakeOpenAI
from prefect import flow, task  # imported here: Prefect's first import replaces the root log handlers

from finmerge.config import load_config
from finmerge.core import redact, storage
from finmerge.core.secrets import resolve_secret
from finmerge.corpus.edinet import EdinetAuthError
from flows.pipeline import pipeline

ROOT = Path(__file__).resolve().parents[1]
EDINET_KEY = "edinet-PLANTED-5f0c1e2d3b4a59687766f5e4d3c2b1a0"
EDINET_BLOCK_KEY = "edinet-BLOCK-PLANTED-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
JUDGE_KEY = "sk-judge-PLANTED-77c1d2e3f4a5b6c7d8e9/f0+1="
# Planted as the variables of these names; '/', '+' and '=' make URL-encoded forms differ from the raw ones.
AWS_CREDENTIALS = dict(
    AWS_ACCESS_KEY_ID="AKIAPLANTED7XQ2KEYID9",
    AWS_SECRET_ACCESS_KEY="wJalrPLANTED/K7MDENG+bPxRfiCYsEcReT0sEcRet",
    AWS_SESSION_TOKEN="FwoGZXIvYXdzEPLANTED//////////wEaDSessionToken+abc=",
)
PLANTED = {  # what the scanner looks for, by the name a leak report gives it
    "EDINET key ($EDINET_API_KEY)": EDINET_KEY,
    "EDINET key (Prefect Secret block)": EDINET_BLOCK_KEY,
    "judge API key ($FINMERGE_JUDGE_API_KEY)": JUDGE_KEY,
    **AWS_CREDENTIALS,
}
EDINET_DAY = "2024-06-17"
# Loggers that see request details at DEBUG; caplog's handler sits on the root, so none may be filtered above.
NOISY_LOGGERS = (
    "botocore",
    "aiobotocore",
    "s3fs",
    "fsspec",
    "urllib3",
    "httpx",
    "httpcore",
    "mlflow",
    "prefect",
)


# ---------------------------------------------------------------------------------------------------------
# The scanner


def _base64_forms(raw: bytes) -> set[str]:
    """The value's base64 text at each of the three byte alignments it can have inside a larger blob
    (the characters that depend only on the value), standard and URL-safe alphabets."""
    out = set()
    for pad in range(3):
        text = base64.b64encode(b"\0" * pad + raw).decode()
        core = text[4 if pad else 0 :].rstrip("=")[:-4]  # drop groups mixed with the padding or the end
        out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


def encoded_forms(value: str) -> set[str]:
    """The planted value as it could appear: raw, URL-encoded (both ways) and base64 (any alignment)."""
    return {value, quote(value, safe=""), quote_plus(value), *_base64_forms(value.encode())}


class Scanner:
    """Looks for every form of every planted value in whatever it is shown; remembers where it found one."""

    def __init__(self, planted: dict[str, str]):
        self.needles = [
            (name, form.encode()) for name, value in planted.items() for form in encoded_forms(value)
        ]
        self.hits: list[str] = []
        self.places = 0

    def scan(self, where: str, content: str | bytes | None) -> None:
        if content is None:
            return
        data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        self.places += 1
        for name, needle in self.needles:
            if needle in data:
                self.hits.append(f"{name} found in {where}")

    def scan_json(self, where: str, obj) -> None:
        self.scan(where, json.dumps(obj, default=str, ensure_ascii=False))

    def scan_tree(self, where: str, root: Path, skip: Callable[[Path], bool] = lambda p: False) -> int:
        n = 0
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not skip(p)):
            self.scan(f"{where}: {path.relative_to(root)}", path.read_bytes())
            n += 1
        return n

    def report(self) -> str:
        return "planted secrets leaked:\n  " + "\n  ".join(dict.fromkeys(self.hits))


def test_scanner_finds_every_form_of_a_planted_value():
    value = AWS_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    for prefix in (b"", b"a", b"ab", b"abc"):  # base64 of a blob that holds the value at any offset
        scanner = Scanner({"s": value})
        scanner.scan("blob", base64.b64encode(prefix + value.encode() + b"tail"))
        scanner.scan("urlsafe", base64.urlsafe_b64encode(prefix + value.encode()))
        assert len(scanner.hits) == 2, prefix
    for text in (f"x={quote(value, safe='')}&y", f"q={quote_plus(value)}", f"[{value}]"):
        scanner = Scanner({"s": value})
        scanner.scan("text", text)
        assert scanner.hits == ["s found in text"]
    clean = Scanner({"s": value})
    clean.scan("other", "wJalr/K7MDENG+bPxRfiCYsEcReT0sEcRet " + base64.b64encode(b"unrelated").decode())
    assert clean.hits == [] and clean.places == 1


# ---------------------------------------------------------------------------------------------------------
# The log redaction (finmerge/core/redact.py)


@pytest.fixture()
def formatted_logs():
    """A non-propagating logger with its own handler: what it writes, formatted."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("fm-test-redact.child")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def test_redaction_masks_registered_and_environment_secrets(formatted_logs, monkeypatch):
    logger, stream = formatted_logs
    registered, token = f"reg-{uuid.uuid4().hex}/+=", f"tok-{uuid.uuid4().hex}+/"
    redact.install()
    redact.register(registered)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)  # set after install: read when a record is formatted
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "short")  # below MIN_LENGTH: left alone

    logger.debug(
        "GET /x?Subscription-Key=%s headers=%s", quote_plus(registered), {"X-Amz-Security-Token": token}
    )
    logger.info("key %s, encoded %s", registered, quote(token, safe=""))
    try:
        raise RuntimeError(f"boom with {registered}")
    except RuntimeError:
        logger.exception("failed for %s", token)
    logger.warning("where", stack_info=True, extra={"note": registered})
    logger.info("user short")
    text = stream.getvalue()
    assert registered not in text and token not in text
    assert quote_plus(registered) not in text and quote(token, safe="") not in text
    assert text.count("***") >= 6 and "RuntimeError: boom with ***" in text and "user short" in text


def test_redaction_survives_a_restored_factory_and_resolve_secret_registers(formatted_logs, monkeypatch):
    logger, stream = formatted_logs
    redact.install()
    factory = logging.getLogRecordFactory()
    redact.install()
    assert logging.getLogRecordFactory() is factory  # idempotent
    logging.setLogRecordFactory(logging.LogRecord)  # someone restores the stock factory …
    try:
        value = f"env-{uuid.uuid4().hex}"
        monkeypatch.setenv("FM_TEST_REDACT_KEY", f" {value}\n")
        assert resolve_secret("FM_TEST_REDACT_KEY", None) == value  # … resolving a secret puts ours back
        assert redact.installed()
        logger.error("sent %s", value)
        assert value not in stream.getvalue() and "sent ***" in stream.getvalue()
    finally:
        logging.setLogRecordFactory(factory)


# ---------------------------------------------------------------------------------------------------------
# Readers of every store the run wrote to


def _paged(read: Callable[..., list], page: int = 200) -> list:
    out, offset = [], 0
    while True:
        batch = read(limit=page, offset=offset)
        out += batch
        if len(batch) < page:
            return out
        offset += page


def scan_prefect(scanner: Scanner, our_block: str) -> dict[str, int]:
    """Flow and task runs (parameters, states, results), artifacts, non-secret blocks and API logs."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the API log worker sends in batches
    counts = {}
    with get_client(sync_client=True) as client:
        flow_runs = _paged(client.read_flow_runs)
        for fr in flow_runs:
            scanner.scan_json(f"Prefect flow run {fr.name!r}", fr.model_dump(mode="json"))
        task_runs = _paged(client.read_task_runs)
        for tr in task_runs:
            scanner.scan_json(f"Prefect task run {tr.name!r}", tr.model_dump(mode="json"))
            _scan_state_result(scanner, f"Prefect task run {tr.name!r} result", tr.state)
        artifacts = _paged(client.read_artifacts)
        for art in artifacts:
            scanner.scan_json(f"Prefect artifact {art.key!r}", art.model_dump(mode="json"))
        blocks = client.read_block_documents(include_secrets=True)
        for block in blocks:
            if block.name != our_block:  # the Secret block is where that key is meant to be
                scanner.scan_json(f"Prefect block {block.name!r}", block.model_dump(mode="json"))
        logs = _paged(client.read_logs)
        for entry in logs:
            scanner.scan(f"Prefect API log of {entry.name} (flow run {entry.flow_run_id})", entry.message)
    counts.update(
        flow_runs=len(flow_runs), task_runs=len(task_runs), artifacts=len(artifacts), logs=len(logs)
    )
    return counts


def _scan_state_result(scanner: Scanner, where: str, state) -> None:
    if state is None or not (state.is_completed() or state.is_failed()):
        return
    try:
        result = state.result(raise_on_failure=False)
    except Exception as exc:  # a result that was never persisted (e.g. the flow's own return value)
        result = exc
    if isinstance(result, BaseException):
        scanner.scan(where, "".join(traceback.format_exception(result)))
    else:
        scanner.scan_json(where, result)


def scan_mlflow(scanner: Scanner, uri: str, experiment: str, model_names: Iterable[str], dst: Path) -> dict:
    """Every run of the experiment (name, params, tags, metric keys, all artifacts) and the registry."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    scanner.scan_json(f"MLflow experiment {experiment}", {"name": exp.name, "tags": exp.tags})
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    files = 0
    for run in runs:
        where = f"MLflow run {run.info.run_name!r} ({run.info.run_id})"
        scanner.scan(f"{where} name", run.info.run_name)
        scanner.scan_json(f"{where} params", run.data.params)
        scanner.scan_json(f"{where} tags", run.data.tags)
        scanner.scan_json(f"{where} metric keys", sorted(run.data.metrics))
        if client.list_artifacts(run.info.run_id):
            local = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, tracking_uri=uri, dst_path=str(dst / run.info.run_id)
            )
            files += scanner.scan_tree(f"{where} artifact", Path(local))
    versions = 0
    for name in model_names:
        model = client.get_registered_model(name)
        scanner.scan_json(f"MLflow model {name}", {"tags": model.tags, "description": model.description})
        for mv in client.search_model_versions(f"name='{name}'"):
            versions += 1
            scanner.scan_json(
                f"MLflow model {name} v{mv.version}",
                {"tags": mv.tags, "description": mv.description, "source": mv.source, "run": mv.run_id},
            )
    return {"runs": len(runs), "artifact_files": files, "model_versions": versions}


def scan_bucket(scanner: Scanner, endpoint: str, bucket: str, prefix: str = "") -> int:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            scanner.scan(f"s3://{bucket}/{obj['Key']}", body)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------------
# The run


def _plant_environment(monkeypatch) -> None:
    import s3fs

    monkeypatch.setenv("EDINET_API_KEY", EDINET_KEY)
    monkeypatch.setenv("FINMERGE_JUDGE_API_KEY", JUDGE_KEY)
    for var, value in AWS_CREDENTIALS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("FM_SECRETS_TEST_UNSET", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would still hold earlier credentials


def _judge_questions(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "question.jsonl"
    q = {"question_id": 1, "category": "writing", "turns": ["当社の事業の内容を一文で説明してください。"]}
    path.write_text(json.dumps(q, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)


def _overrides(bucket: str, tmp: Path, edinet_url: str, judge_url: str, tag: str) -> list[str]:
    return [
        f"name=secrets-{tag}",
        f"storage.uri=s3://{bucket}/secrets",
        f"storage.staging_dir={tmp / 'staging'}",
        f"tracking.experiment=secrets-{tag}",
        f"registry.cpt_name=secrets-cpt-{tag}",
        f"registry.merged_name=secrets-merged-{tag}",
        "demo.n_general_docs=60",
        "demo.n_instructions=60",
        "demo.base_train.max_steps=4",
        "demo.instruct_train.max_steps=4",
        "pretrain.max_steps=4",
        "evaluate.max_heldout_tokens=500",
        "corpus.parallel.backend=serial",
        "corpus.ingest.edinet.enabled=true",
        f"corpus.ingest.edinet.base_url={edinet_url}",
        f"corpus.ingest.edinet.start='{EDINET_DAY}'",
        f"corpus.ingest.edinet.end='{EDINET_DAY}'",
        "corpus.ingest.edinet.retries=0",
        "corpus.ingest.edinet.max_concurrency=1",
        f"evaluate.judge.questions={_judge_questions(tmp / 'judge')}",
        f"evaluate.judge.url={judge_url}",
        "evaluate.judge.model=judge-fake",
        "evaluate.judge.max_new_tokens=4",
        "evaluate.judge.max_tries=1",
        "evaluate.judge.concurrency=1",
    ]


def _s3_errors(bucket: str) -> list[BaseException]:
    """S3 failures through the storage layer and inside a Prefect task (its traceback goes to the API)."""
    errors: list[BaseException] = []
    for attempt in (
        lambda: storage.read_bytes(f"s3://{bucket}/secrets/no-such-object.json"),
        lambda: storage.write_bytes(f"s3://fm-no-such-bucket-{uuid.uuid4().hex[:8]}/x.bin", b"x"),
        lambda: storage.read_manifest(f"s3://fm-no-such-bucket-{uuid.uuid4().hex[:8]}/stage"),
    ):
        try:
            attempt()
        except Exception as exc:
            errors.append(exc)

    @flow(name="secrets-s3-error")
    def read_missing():
        return task(storage.read_bytes, name="read-missing")(f"s3://{bucket}/secrets/missing/_manifest.json")

    state = read_missing(return_state=True)
    assert state.is_failed()
    errors.append(state.result(raise_on_failure=False))
    return errors


def _save_secret_block(name: str, value: str) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


@pytest.fixture()
def every_log_record():
    """Every LogRecord created while the test runs, whichever logger, level gate aside, and whether or not
    any handler (caplog's included) ever sees it: non-propagating loggers too."""
    records: list[logging.LogRecord] = []
    previous = logging.getLogRecordFactory()

    def capture(*args, **kwargs):
        record = previous(*args, **kwargs)
        records.append(record)
        return record

    logging.setLogRecordFactory(capture)
    yield records
    logging.setLogRecordFactory(previous)


def scan_records(scanner: Scanner, records: list[logging.LogRecord]) -> None:
    """Each record as any handler would write it: message, formatted traceback and stack included."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for rec in records:
        scanner.scan(f"log record {rec.name} ({rec.pathname}:{rec.lineno})", formatter.format(rec))


@pytest.mark.slow
def test_no_planted_secret_reaches_logs_runs_or_storage(
    s3_endpoint,
    s3_bucket,
    mlflow_server,
    prefect_harness,
    tmp_path,
    monkeypatch,
    caplog,
    capfd,
    every_log_record,
):
    _plant_environment(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    caplog.set_level(logging.DEBUG)
    for name in NOISY_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    tag, block = uuid.uuid4().hex[:8], f"fm-edinet-key-{uuid.uuid4().hex[:8]}"
    _save_secret_block(block, EDINET_BLOCK_KEY)

    edinet = FakeEdinet(EDINET_KEY)
    edinet.add("S100SEC1", EDINET_DAY)
    edinet.start()
    try:
        with FakeOpenAI(require_key=JUDGE_KEY) as judge:
            overrides = _overrides(s3_bucket, tmp_path, edinet.base_url, judge.url, tag)
            summary = pipeline(load_config(ROOT / "configs" / "test.yaml", overrides))
            judged = [r for r in judge.requests if r["status"] == 200]
        # The key held by the Secret block is the wrong one: EDINET answers 401 and the run fails.
        rejected = load_config(
            ROOT / "configs" / "test.yaml",
            [
                *overrides,
                "corpus.ingest.edinet.api_key_env=FM_SECRETS_TEST_UNSET",
                f"corpus.ingest.edinet.api_key_block={block}",
            ],
        )
        with pytest.raises(EdinetAuthError, match="rejected the API key") as auth_error:
            pipeline(rejected)
        edinet_requests = list(edinet.requests)
    finally:
        edinet.close()
    s3_errors = _s3_errors(s3_bucket)

    # The keys did travel, and only where they belong.
    assert summary["stages"]["ingest"] == "Completed" and "judge/overall" in summary["evaluations"]["merged"]
    assert len(judged) >= 4  # one judged answer per evaluated model, each with the planted bearer key
    assert any(EDINET_KEY in r for r in edinet_requests) and any(
        EDINET_BLOCK_KEY in r for r in edinet_requests
    )
    fs, _ = storage.filesystem(f"s3://{s3_bucket}")
    assert fs.s3._request_signer._credentials.access_key == AWS_CREDENTIALS["AWS_ACCESS_KEY_ID"]

    scanner = Scanner(PLANTED)
    for exc in [auth_error.value, *s3_errors]:
        scanner.scan(f"traceback of {type(exc).__name__}", "".join(traceback.format_exception(exc)))
    scanner.scan_json("pipeline summary", summary)
    prefect_counts = scan_prefect(scanner, block)
    mlflow_counts = scan_mlflow(
        scanner,
        mlflow_server,
        f"secrets-{tag}",
        [f"secrets-cpt-{tag}", f"secrets-merged-{tag}"],
        tmp_path / "mlflow-download",
    )
    objects = scan_bucket(scanner, s3_endpoint, s3_bucket)
    objects += scan_bucket(scanner, s3_endpoint, "mlflow")
    local = scanner.scan_tree("staging", tmp_path / "staging")
    prefect_home = Path(os.environ["PREFECT_HOME"])
    if prefect_home.exists():  # its databases hold the Secret block itself
        local += scanner.scan_tree("PREFECT_HOME", prefect_home, skip=lambda p: ".db" in p.name)
    records = list(every_log_record)
    scan_records(scanner, records)
    scanner.scan("caplog text (formatted, with tracebacks)", caplog.text)
    out = capfd.readouterr()
    scanner.scan("stdout", out.out)
    scanner.scan("stderr", out.err)

    print(  # the counts of what was scanned, for the report (visible with -s)
        json.dumps(
            {
                "log_records": len(records),
                "caplog_records": len(caplog.records),
                "prefect": prefect_counts,
                "mlflow": mlflow_counts,
                "s3_objects": objects,
                "local_files": local,
                "places_scanned": scanner.places,
            }
        )
    )
    assert not scanner.hits, scanner.report()
    assert len(caplog.records) > 1000 and any(r.name.startswith("botocore") for r in caplog.records)
    assert prefect_counts["logs"] > 0 and mlflow_counts["artifact_files"] > 0 and objects > 0


def test_url_credentials_and_key_parameters_are_masked_whatever_their_value():
    """Values never registered (a proxy's URL, a key a caller put in a query) are masked by their place."""
    text = "GET https://api.example/v2/documents.json?type=2&Subscription-Key=k-77aa&x=1 via s3://AKIA:pw@b/k"
    assert redact.mask(text) == (
        "GET https://api.example/v2/documents.json?type=2&Subscription-Key=***&x=1 via s3://***@b/k"
    )
    assert redact.mask("no url here: a=b, user@example.com") == "no url here: a=b, user@example.com"


def test_a_changed_credential_is_masked_at_once_and_parameter_names_in_any_case(monkeypatch):
    """The encoded forms are cached by the values themselves: a credential rotated mid-run is masked in the
    next record (and every URL-encoding of it); a parameter name in another case is still found."""
    first, second = f"first-{uuid.uuid4().hex}/+", f"second-{uuid.uuid4().hex}/+"
    monkeypatch.setenv("HF_TOKEN", first)
    assert redact.mask(f"a {first} b") == "a *** b"
    monkeypatch.setenv("HF_TOKEN", second)
    assert redact.mask(f"a {second} {quote(second, safe='')} {quote_plus(second)}") == "a *** *** ***"
    assert (
        redact.mask("GET /v2?API_KEY=abc&SUBSCRIPTION-key=def&x=1")
        == "GET /v2?API_KEY=***&SUBSCRIPTION-key=***&x=1"
    )
