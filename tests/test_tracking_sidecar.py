"""The stage commands' MLflow side process (finmerge/core/tracking_sidecar.py): the executable tracks a
merge exactly as in-process tracking does, without loading MLflow itself; a side process that dies hands
its run back to the command; its errors arrive with their type and message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from finmerge.cli import main
from finmerge.config import TrackingConfig
from finmerge.core import tracking, tracking_sidecar
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("sidecar-models")
    return [tiny_model(root / n, seed=s) for n, s in (("base", 1), ("instruct", 2), ("domain", 3))]


def _merge_args(models: list[Path], out: Path) -> list[str]:
    return ["merge", "--base", str(models[0]), "--instruct", str(models[1]), "--domain", str(models[2]),
            "--out", str(out), "--set", f"storage.staging_dir={out.parent / 'staging'}"]  # fmt: skip


def _merge_in_a_process(models: list[Path], out: Path, uri: str) -> str:
    """``finmerge merge`` as the executable runs it (its side process on); stderr with ``-X importtime``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("FINMERGE_TRACKING_SIDECAR", None)
    cmd = [sys.executable, "-X", "importtime", "-m", "finmerge.cli", *_merge_args(models, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def _recorded(client: MlflowClient, out: Path) -> dict:
    (run,) = client.search_runs(
        [client.get_experiment_by_name("finmerge").experiment_id],
        filter_string=f"tags.`finmerge.output` = '{out}'",
    )
    return {
        "status": run.info.status,
        "params": {k: v for k, v in run.data.params.items() if "out" not in k},
        "metrics": sorted(k for k in run.data.metrics if k not in ("merge/seconds", "merge/pass_seconds")),
        "tags": sorted(run.data.tags),
        "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id)),
        "inputs": sorted(d.dataset.name for d in run.inputs.dataset_inputs),
    }


def test_the_executable_tracks_a_merge_in_the_side_process_as_it_would_itself(
    models, mlflow_server, tmp_path, monkeypatch
):
    side = _merge_in_a_process(models, tmp_path / "side", mlflow_server)
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in side.splitlines() if line.startswith("import time:")
    }
    assert "torch" in imported and "mlflow" not in imported, "the command loaded MLflow itself"
    # tiny models take the torch path: the numba kernels (and numba, ~0.2 s) load only on first use
    assert "numba" not in imported, "a merge without the kernels loaded numba"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert main(_merge_args(models, tmp_path / "own")) == 0  # in-process: MLflow loaded here, no side process
    client = MlflowClient(mlflow_server)
    a, b = _recorded(client, tmp_path / "side"), _recorded(client, tmp_path / "own")
    assert a == b
    assert a["status"] == "FINISHED" and a["params"] and "merge/max_abs_delta_vs_cpt" in a["metrics"]
    assert "merge_report.json" in a["artifacts"]


def test_a_side_process_that_dies_hands_the_run_back(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sidecar = tracking_sidecar.start(force=True)
    assert sidecar is not None
    try:
        _, exp = tracking.ensure_experiment(TrackingConfig(uri=uri))
        run = tracking.Run.start(uri, exp, "dies", tags={"who": "test"})
        assert isinstance(run, tracking_sidecar.RemoteRun)
        run.params({"alpha": 1.0})
        sidecar.proc.kill()
        sidecar.proc.wait()
        run.metrics({"loss": 0.5}, step=3)  # the side process is gone: tracked here from now on
        run.end()
        assert tracking._SIDECAR is None
    finally:
        tracking.use_sidecar(None)
    got = MlflowClient(uri).get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"alpha": "1.0"}
    assert got.data.metrics == {"loss": 0.5} and got.data.tags["who"] == "test"


def test_errors_in_the_side_process_arrive_with_their_type_and_message():
    sidecar = tracking_sidecar.start(force=True)
    try:
        with pytest.raises(ValueError, match="unknown tracking request 'nope'"):
            sidecar.call("nope")
        with pytest.raises(KeyError, match="no-such-run"):  # a run this command never started
            sidecar.call("run", "no-such-run", "end", ())
    finally:
        tracking.use_sidecar(None)
        sidecar.close()
    assert sidecar.proc.returncode == 0


def test_the_side_process_runs_numpys_blas_on_one_thread(monkeypatch):
    """It only makes tracking calls: a BLAS thread per core, spinning after numpy's import, would take CPU
    from the command's work on the other cores."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")  # whatever the command's own setting
    sidecar = tracking_sidecar.start(force=True)
    try:
        # an answer means the process runs (its environ is empty until it has exec'd)
        with pytest.raises(ValueError):
            sidecar.call("nope")
        env = Path(f"/proc/{sidecar.proc.pid}/environ").read_bytes().split(b"\0")
    finally:
        tracking.use_sidecar(None)
        sidecar.close()
    assert b"OPENBLAS_NUM_THREADS=1" in env and b"OPENBLAS_NUM_THREADS=4" not in env


def test_a_refused_command_leaves_no_tracking_store(models, tmp_path):
    """The side process opens the store early, but never creates one: a command refused at its preflight
    leaves the working directory as it was."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the default store, in the cwd
    cmd = [sys.executable, "-m", "finmerge.cli", "merge", "--base", str(models[0]), "--instruct",
           str(models[1]), "--domain", str(tmp_path / "missing"), "--out", "out"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "missing" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_an_interrupted_request_hands_tracking_back_to_the_command(tmp_path):
    """Ctrl-C between a request and its answer leaves the pipe out of step: the side process is stopped and
    the command tracks on its own from then on."""
    import signal

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sidecar = tracking_sidecar.start(force=True)

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # the side process is still loading MLflow by then
        with pytest.raises(KeyboardInterrupt):
            tracking.ensure_experiment(TrackingConfig(uri=uri))
        assert sidecar.proc.wait(timeout=10) != 0  # stopped
        _, exp = tracking.ensure_experiment(TrackingConfig(uri=uri))  # here, in this process
        assert tracking._SIDECAR is None and MlflowClient(uri).get_experiment(exp).name == "finmerge"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        tracking.use_sidecar(None)
