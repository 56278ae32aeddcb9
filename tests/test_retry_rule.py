"""The retry rule of the stage tasks (``finmerge.runner.orchestration.retry_when``), in real Prefect tasks.

I/O errors (OSError, connection errors, botocore errors, StorageError) are retried; logic errors are not;
a full disk (``NoSpaceError``, a StorageError) is not either, because waiting does not free space. The tasks
are the project's own: ``stage_task`` (every pipeline stage) and the pretrain flow's task, built as
``flows/pretrain.py`` builds it, with only the retry delay set to 0. Each attempt appends a line to a file,
so the tests count the attempts the stage function really made.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from finmerge.runner.orchestration import RunContext, retry_when, stage_task
from prefect import task

from finmerge.config import TrackingConfig
from finmerge.core import storage, tracking
from finmerge.train.pretrain import TrainingInterrupted

# the tasks run outside a flow (as a retried task does its work); Prefect warns that those logs stay local
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs")


def _error(name: str) -> BaseException:
    if name == "oserror":
        return OSError(errno.EIO, "Input/output error")
    if name == "connection":
        return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    if name == "botocore":
        from botocore.exceptions import EndpointConnectionError

        return EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket/key")
    if name == "storage":
        return storage.StorageError("upload s3://b/k: failed after 30 attempts over 120s (retry budget 120s)")
    if name == "value":
        return ValueError("no training rows")
    if name == "nospace":
        exc = storage.NoSpaceError("/staging/outputs: No space left on device while writing s3://b/k")
        exc.__cause__ = OSError(errno.ENOSPC, "No space left on device")  # as storage raises it
        return exc
    if name == "interrupted":
        return TrainingInterrupted("the training job died (exit -9); resume from its latest checkpoint")
    raise AssertionError(name)


def _attempt(counter: str, fail: list[str]) -> int:
    """Record one attempt; raise the error named for it (``fail[n]`` for the n-th attempt) if there is one."""
    path = Path(counter)
    n = len(path.read_text().splitlines()) if path.exists() else 0
    with path.open("a") as fh:
        fh.write(f"attempt {n + 1}\n")
    if n < len(fail):
        raise _error(fail[n])
    return n + 1


def flaky_stage(out_uri: str, counter: str, fail: list[str]) -> dict:
    """A plain stage function (as ``run_tracked`` calls them)."""
    attempts = _attempt(counter, fail)
    return {"uri": out_uri, "digest": f"done-after-{attempts}"}


def flaky_pretrain(counter: str, fail: list[str]) -> dict:
    return {"attempts": _attempt(counter, fail)}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retry")
    uri, exp = tracking.ensure_experiment(
        TrackingConfig(uri=f"sqlite:///{tmp}/mlflow.db", experiment="retry")
    )
    try:
        yield RunContext(
            storage_uri=str(tmp / "store"),
            staging_dir=str(tmp / "st"),
            tracking_uri=uri,
            experiment_id=exp,
            config_hash="retry-rule",
        )
    finally:
        storage.configure(None)  # run_tracked sets the process's storage policy from the context


def _run_stage(ctx: RunContext, tmp_path: Path, fail: list[str], retry_on=()):
    """The stage task exactly as the pipeline builds it (retries=2), with the retry delay set to 0."""
    stage = stage_task("retry-probe", flaky_stage, retry_on=retry_on).with_options(
        retry_delay_seconds=0, retry_jitter_factor=None
    )
    counter = tmp_path / "attempts.txt"
    out_uri = ctx.out_uri("retry-probe", tmp_path.name)  # a fresh cache key per test
    state = stage(out_uri, ctx, {"counter": str(counter), "fail": fail}, return_state=True)
    return state, len(counter.read_text().splitlines()), out_uri


@pytest.mark.parametrize("error", ["oserror", "connection", "botocore", "storage"])
def test_stage_task_retries_io_errors_until_its_retries_run_out(error, ctx, tmp_path, prefect_harness):
    state, attempts, _ = _run_stage(ctx, tmp_path, [error] * 5)
    assert state.is_failed()
    assert attempts == 3  # the first attempt and its 2 retries
    assert type(state.result(raise_on_failure=False)) is type(_error(error))


@pytest.mark.parametrize("error", ["value", "nospace", "interrupted"])
def test_stage_task_does_not_retry_logic_errors_or_a_full_disk(error, ctx, tmp_path, prefect_harness):
    """NoSpaceError is a StorageError (an I/O error, retried), and is still not retried: a full disk stays
    full. A dead training job is not retried by a stage that did not ask for it (``retry_on``)."""
    state, attempts, _ = _run_stage(ctx, tmp_path, [error] * 5)
    assert state.is_failed()
    assert attempts == 1
    assert type(state.result(raise_on_failure=False)) is type(_error(error))


def test_stage_task_retry_on_adds_an_error_to_retry(ctx, tmp_path, prefect_harness):
    state, attempts, _ = _run_stage(ctx, tmp_path, ["interrupted"] * 5, retry_on=(TrainingInterrupted,))
    assert state.is_failed() and attempts == 3
    (tmp_path / "nospace").mkdir()
    state, attempts, _ = _run_stage(
        ctx, tmp_path / "nospace", ["nospace"] * 5, retry_on=(TrainingInterrupted,)
    )
    assert state.is_failed() and attempts == 1


def test_a_retried_io_error_then_success_completes_in_one_mlflow_run(ctx, tmp_path, prefect_harness):
    """Two I/O errors, then success: 3 attempts, the task Completed with the third attempt's result, and the
    retries re-attached to the MLflow run the failed attempts left, which ends FINISHED."""
    state, attempts, out_uri = _run_stage(ctx, tmp_path, ["oserror", "botocore"])
    assert state.is_completed() and attempts == 3
    assert state.result()["digest"] == "done-after-3"
    runs = tracking.client(ctx.tracking_uri).search_runs(
        [ctx.experiment_id], filter_string=f"tags.`finmerge.output` = '{out_uri}'"
    )
    assert [r.info.status for r in runs] == ["FINISHED"]


@pytest.mark.parametrize(
    ("fail", "attempts"),
    [(["interrupted"] * 5, 3), (["oserror"] * 5, 3), (["interrupted", "oserror"], 3), (["nospace"] * 5, 1),
     (["value"] * 5, 1), (["interrupted", "nospace"], 2)],
)  # fmt: skip
def test_pretrain_flow_task_retries_a_dead_job_and_io_errors_not_a_full_disk(
    fail, attempts, tmp_path, prefect_harness
):
    """The task of ``flows/pretrain.py`` (retries=2, retry_when((TrainingInterrupted, OSError)))."""
    step = task(
        flaky_pretrain,
        name="pretrain",
        retries=2,
        retry_delay_seconds=0,
        retry_condition_fn=retry_when((TrainingInterrupted, OSError)),
    )
    counter = tmp_path / "attempts.txt"
    state = step(str(counter), fail, return_state=True)
    assert len(counter.read_text().splitlines()) == attempts
    if len(fail) < attempts:  # the last attempt raised nothing
        assert state.is_completed() and state.result() == {"attempts": attempts}
    else:
        assert state.is_failed()
        assert type(state.result(raise_on_failure=False)) is type(_error(fail[attempts - 1]))
