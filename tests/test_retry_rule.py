"""The one retry rule of every stage (``finmerge.runner.stage.retryable``), in real Prefect tasks and in the
CLI's driver.

I/O errors (OSError, connection errors, botocore errors) are retried; logic errors are not; a full disk is
not either, because waiting does not free space, nor a missing file or a refused output (they do not fix
themselves), nor a StorageError (remote storage calls are retried under their own budget, so one that
reaches the stage is a spent budget or a wrong input). The stage is declared as ``tasks/`` declare
theirs and run by the project's own drivers: the Prefect task the flows run (``prefect_task``) and
``run_stage`` (the CLI), with only the retry delay set to 0. Each attempt appends a line to a file, so the
tests count the attempts the stage really made.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from finmerge.config import PipelineConfig, TrackingConfig
from finmerge.core import storage, tracking
from finmerge.runner import stage as stages
from finmerge.runner.flow_runner import prefect_task
from finmerge.runner.stage import RunContext, Stage, StageCall
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
    if name == "missing":
        return FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/corpus.jsonl")
    if name == "refused":
        return storage.OutputRefused("/data/out: it holds 1 entry (notes.txt) that finmerge did not write")
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


def flaky_work(c: StageCall) -> dict:
    """A stage's work (as ``tasks/`` declare them): fails as told, else returns a result."""
    attempts = _attempt(c.inputs["counter"], c.inputs["fail"])
    return {"uri": c.out_uri, "digest": f"done-after-{attempts}"}


def _stage(retry_on=()) -> Stage:
    return Stage(
        name="retry-probe",
        section="storage",
        inputs={"counter": "value", "fail": "value"},
        code=(__name__,),
        work=flaky_work,
        retry_on=retry_on,
    )


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


def _run_stage(ctx: RunContext, tmp_path: Path, fail: list[str], retry_on=(), driver="prefect"):
    """The stage as a flow runs it (its Prefect task, retries=2) or as the CLI does, with no retry delay."""
    stage, cfg = _stage(retry_on), PipelineConfig()
    counter = tmp_path / "attempts.txt"
    inputs = {"counter": str(counter), "fail": fail}
    # a fresh folder per test (the key covers the inputs: the counter path is per test)
    p = stages.plan(stage, cfg, inputs, ctx)
    if driver == "prefect":
        task = prefect_task(stage).with_options(retry_delay_seconds=0, retry_jitter_factor=None)
        state = task(planned=p, ctx=ctx, return_state=True)
    else:
        try:
            result = stages.run_stage(stage, cfg, inputs, ctx=ctx, delays_s=(0.0,))
            state = ("completed", result)
        except Exception as exc:  # noqa: BLE001 - the test inspects what the driver raised
            state = ("failed", exc)
    return state, len(counter.read_text().splitlines()), p.out_uri


def _outcome(state):
    """(completed?, result or exception) for both drivers."""
    if isinstance(state, tuple):
        return state[0] == "completed", state[1]
    return state.is_completed(), state.result(raise_on_failure=False)


DRIVERS = pytest.mark.parametrize("driver", ["prefect", "cli"])


@DRIVERS
@pytest.mark.parametrize("error", ["oserror", "connection", "botocore"])
def test_io_errors_are_retried_until_the_retries_run_out(error, driver, ctx, tmp_path, prefect_harness):
    state, attempts, _ = _run_stage(ctx, tmp_path, [error] * 5, driver=driver)
    done, result = _outcome(state)
    assert not done
    assert attempts == 3  # the first attempt and its 2 retries
    assert type(result) is type(_error(error))


@DRIVERS
@pytest.mark.parametrize("error", ["value", "nospace", "interrupted", "missing", "refused", "storage"])
def test_logic_errors_a_full_disk_and_user_mistakes_are_not_retried(
    error, driver, ctx, tmp_path, prefect_harness
):
    """FileNotFoundError is an OSError, and is still not retried: a missing file stays missing; nor are
    StorageErrors (NoSpaceError, OutputRefused, a spent storage retry budget). A dead training job is
    not retried by a stage that did not ask for it (``retry_on``)."""
    state, attempts, _ = _run_stage(ctx, tmp_path, [error] * 5, driver=driver)
    done, result = _outcome(state)
    assert not done
    assert attempts == 1
    assert type(result) is type(_error(error))


@DRIVERS
def test_retry_on_adds_an_error_to_retry(driver, ctx, tmp_path, prefect_harness):
    state, attempts, _ = _run_stage(ctx, tmp_path, ["interrupted"] * 5, (TrainingInterrupted,), driver)
    assert not _outcome(state)[0] and attempts == 3
    (tmp_path / "nospace").mkdir()
    state, attempts, _ = _run_stage(
        ctx, tmp_path / "nospace", ["nospace"] * 5, (TrainingInterrupted,), driver
    )
    assert not _outcome(state)[0] and attempts == 1


@DRIVERS
def test_a_retried_io_error_then_success_completes_in_one_mlflow_run(driver, ctx, tmp_path, prefect_harness):
    """Two I/O errors, then success: 3 attempts, the stage completed with the third attempt's result, and the
    retries re-attached to the MLflow run the failed attempts left, which ends FINISHED."""
    state, attempts, out_uri = _run_stage(ctx, tmp_path, ["oserror", "botocore"], driver=driver)
    done, result = _outcome(state)
    assert done and attempts == 3
    assert result["digest"] == "done-after-3"
    runs = tracking.client(ctx.tracking_uri).search_runs(
        [ctx.experiment_id], filter_string=f"tags.`finmerge.output` = '{out_uri}'"
    )
    assert [r.info.status for r in runs] == ["FINISHED"]


@pytest.mark.parametrize(
    ("fail", "attempts"),
    [(["interrupted"] * 5, 3), (["oserror"] * 5, 3), (["interrupted", "oserror"], 3), (["nospace"] * 5, 1),
     (["value"] * 5, 1), (["interrupted", "nospace"], 2)],
)  # fmt: skip
def test_the_pretrain_declaration_retries_a_dead_job_and_io_errors_not_a_full_disk(
    fail, attempts, ctx, tmp_path, prefect_harness
):
    """``tasks/pretrain.py`` declares ``retry_on=(TrainingInterrupted,)`` on top of the I/O errors."""
    from tasks.pretrain import PRETRAIN

    state, n, _ = _run_stage(ctx, tmp_path, fail, retry_on=PRETRAIN.retry_on)
    assert n == attempts and PRETRAIN.retries == 2
    done, result = _outcome(state)
    if len(fail) < attempts:  # the last attempt raised nothing
        assert done and result["digest"] == f"done-after-{attempts}"
    else:
        assert not done and type(result) is type(_error(fail[attempts - 1]))
