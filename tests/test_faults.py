"""Faults against real components: training SIGKILLed again and again, the S3 endpoint down mid-upload,
the MLflow server restarted mid-run, the flow process killed, the staging disk full.

Servers are real child processes on fixed ports (moto for S3, ``mlflow server``), stopped and restarted on
the same port; the staging disk is a real 256 KiB tmpfs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load_file

from finmerge.config import PretrainConfig, TrackingConfig
from finmerge.core import storage, tracking
from finmerge.demo.models import init_llama, train_tokenizer
from finmerge.models import loading as modelio
from finmerge.registry.register import register_model
from finmerge.stack import free_port, stop, wait_http
from finmerge.train.checkpoint import CheckpointStore
from finmerge.train.pretrain import checkpoint_root, pretrain
from tests.helpers import TEXTS, TINY, tiny_model, tiny_tokens

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXACT = {"lr": 5e-3, "warmup_steps": 2, "batch_size": 4, "threads": 1, "deterministic": True}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "base")


@pytest.fixture(scope="module")
def tokens(base, tmp_path_factory):
    return tiny_tokens(base, tmp_path_factory.mktemp("tok"), TEXTS * 2)


@pytest.fixture()
def sqlite_tracking(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(tmp_path / "art").as_uri())
    return tracking.ensure_experiment(cfg)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process (as a lost node would), then whatever it had started (its session)."""
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------------------
# (a) training SIGKILLed at three random steps, resumed each time


def _job(tmp_path: Path, base, tokens, name: str, cfg: PretrainConfig) -> tuple[Path, str]:
    out = str(tmp_path / name)
    spec = tmp_path / f"{name}.json"
    job = {
        "base_uri": str(base),
        "tokens_uri": tokens["uri"],
        "out_uri": out,
        "cfg": cfg.model_dump(mode="json"),
        "staging_dir": str(tmp_path / "st"),
        "checkpoint_uri": checkpoint_root(out),
    }
    spec.write_text(json.dumps(job))
    return spec, out


def _pretrain_job(spec: Path) -> subprocess.Popen:
    """The entry point a launched training job runs (``finmerge pretrain-job SPEC``), as its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "finmerge.cli", "pretrain-job", str(spec)]
    log = open(spec.with_suffix(".log"), "ab")
    return subprocess.Popen(cmd, cwd=spec.parent, env=env, stdout=log, stderr=log, start_new_session=True)


def _finish(proc: subprocess.Popen, spec: Path) -> None:
    assert proc.wait(300) == 0, spec.with_suffix(".log").read_text()[-3000:]


def _kill_steps(seed: int, steps: int, min_gap: int = 5) -> list[int]:
    """Three distinct random steps, far enough apart that each kill lands in a run of its own."""
    rng = random.Random(seed)
    while True:
        ks = sorted(rng.sample(range(3, steps - 3), 3))
        if min(b - a for a, b in zip([0, *ks], ks, strict=False)) >= min_gap:
            return ks


@pytest.mark.slow
def test_three_sigkills_at_random_steps_resume_to_the_uninterrupted_result(base, tokens, tmp_path):
    """One training run is SIGKILLed at three seeded-random steps (checkpoint every step, so kills land
    mid-step, mid-save and mid-prune); each re-run resumes, and the last one ends with weights bitwise equal
    to an uninterrupted run and the same loss history."""
    steps = 40
    cfg = PretrainConfig(**EXACT, max_steps=steps, log_every=1, checkpoint_every=1, keep_last=2)
    ref_spec, ref_out = _job(tmp_path, base, tokens, "ref", cfg)
    _finish(_pretrain_job(ref_spec), ref_spec)

    spec, out = _job(tmp_path, base, tokens, "cpt", cfg)
    store = CheckpointStore(checkpoint_root(out), str(tmp_path / "st"))
    kill_steps = _kill_steps(20240919, steps)
    resumed_at = []
    for kill_step in kill_steps:
        proc = _pretrain_job(spec)
        try:
            _wait_for(lambda k=kill_step: (store.latest() or 0) >= k, proc, f"checkpoint {kill_step}")
        finally:
            _kill(proc)
        assert storage.read_manifest(out) is None  # killed before the end: no output
        resumed_at.append(store.latest())
    assert resumed_at == sorted(set(resumed_at)) and resumed_at[0] >= kill_steps[0]

    _finish(_pretrain_job(spec), spec)
    done = storage.read_manifest(out)
    assert done["meta"]["resumed_from"] == resumed_at[-1] < steps
    want = load_file(Path(ref_out) / "model.safetensors")
    got = load_file(Path(out) / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    def curve(folder):
        hist = json.loads((Path(folder) / "history.json").read_text())
        return [(h["step"], h["loss"], h["lr"], h["grad_norm"], h["tokens"]) for h in hist]

    assert curve(out) == curve(ref_out) and [s for s, *_ in curve(out)] == list(range(steps))


# ---------------------------------------------------------------------------------------------------------
# (b) the S3 endpoint down mid-upload


class Moto:
    """A moto S3 server on a fixed port whose requests are recorded to a file, so that a restart replays
    them: the objects written before a kill come back, as they would on a real S3 after an outage."""

    def __init__(self, port: int, recording: Path):
        self.port, self.recording, self.proc = port, recording, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_http(f"{self.url}/moto-api/", 30, self.proc)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self._drop_torn_record()
        self.start()
        req = urllib.request.Request(f"{self.url}/moto-api/recorder/replay-recording", method="POST")
        urllib.request.urlopen(req, timeout=60).close()

    def _drop_torn_record(self) -> None:
        """moto appends each request to the recording before handling it; a SIGKILL mid-append leaves a torn
        last line that the replay cannot parse (HTTP 500). That request never got an answer, so a real S3
        would not have it either: drop it."""
        if not self.recording.exists():
            return
        data = self.recording.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]
        if keep != data:
            self.recording.write_bytes(keep)

    def recorded_bytes(self) -> int:
        return self.recording.stat().st_size if self.recording.exists() else 0


@pytest.fixture()
def moto(tmp_path):
    server = Moto(free_port(), tmp_path / "moto-recording.jsonl")
    server.start()
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket="models")
    os.environ["AWS_ENDPOINT_URL"] = server.url
    storage.configure(server.url)
    try:
        yield server
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        storage.configure(None)
        if server.proc is not None:
            stop(server.proc)


def _sharded_model(folder: Path) -> Path:
    """A small Llama saved in ~20 safetensors shards, so that its upload takes many requests."""
    shape = TINY.model_copy(update={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4})
    tok = train_tokenizer(iter(TEXTS), shape.vocab_size, folder.parent / ".tok-sharded")
    model = init_llama(shape, tok, seed=3)
    model.save_pretrained(str(folder), max_shard_size="40KB", safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def _upload(src: Path, uri: str, staging: Path) -> dict:
    """Commit a model folder to S3 the way every stage does (temp folder, verified upload, manifest last)."""
    with storage.output_folder(uri, str(staging), meta={"kind": "model"}) as out:
        shutil.copytree(src, out.path, dirs_exist_ok=True)
    return out.result()


class Outage(threading.Thread):
    """SIGKILLs the server once the upload has sent its first shard, and restarts it ``down_s`` later."""

    def __init__(self, server: Moto, upload_done: threading.Event, down_s: float | None):
        super().__init__(daemon=True)
        self.server, self.upload_done, self.down_s = server, upload_done, down_s
        self.baseline = server.recorded_bytes()
        self.killed = threading.Event()
        self.done_at_kill: bool | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        while self.server.recorded_bytes() < self.baseline + 30_000 and time.monotonic() - t0 < 120:
            time.sleep(0.001)
        self.server.kill()
        self.done_at_kill = self.upload_done.is_set()
        self.killed.set()
        if self.down_s is not None:
            time.sleep(self.down_s)
            self.server.restart()


def _objects(server: Moto, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents", [])]


@pytest.mark.slow
def test_s3_down_30s_mid_upload_retries_and_the_model_is_complete(moto, tmp_path, caplog, sqlite_tracking):
    """The endpoint is killed after the first shard and comes back 30 s later on the same port: the commit
    retries (default policy), completes, verifies, and what gets registered is the complete model."""
    assert storage.UPLOAD_RETRY.budget_s >= 30 and storage.retry_policy() == storage.UPLOAD_RETRY
    src = _sharded_model(tmp_path / "model")
    assert len(list(src.glob("*.safetensors"))) >= 10
    uri = "s3://models/merged/v1"
    done = threading.Event()
    outage = Outage(moto, done, down_s=30)
    outage.start()
    with caplog.at_level(logging.WARNING, logger="finmerge.core.storage"):
        result = _upload(src, uri, tmp_path / "staging")
    done.set()
    outage.join(60)
    assert outage.killed.is_set() and outage.done_at_kill is False  # the kill landed mid-upload
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries and all(m.startswith(f"upload {uri}/") for m in retries), retries

    local = storage.stage_folder(uri, str(tmp_path / "check"))  # every file's sha256 against the manifest
    assert set(storage.read_manifest(uri)["files"]) == {p.name for p in src.iterdir()}
    x = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(modelio.load_causal_lm(local)(x).logits, modelio.load_causal_lm(src)(x).logits)
    tracking_uri, exp = sqlite_tracking
    reg = register_model("fm-faults", uri, tracking_uri=tracking_uri, experiment_id=exp)
    assert reg["created"] and reg["digest"] == result["digest"] and reg["source"] == uri
    assert not list((tmp_path / "staging" / "outputs").iterdir())  # the temp folder is gone


@pytest.mark.slow
def test_s3_outage_past_the_retry_budget_fails_clearly_and_registers_nothing(moto, tmp_path, sqlite_tracking):
    """The endpoint stays down past the (shortened) budget: the commit fails naming the object, the attempts
    and the budget; once S3 is back the half-uploaded folder has no manifest and registration refuses it."""
    storage.configure(moto.url, retry=storage.RetryPolicy(first_delay_s=0.5, max_delay_s=1, budget_s=4))
    src = _sharded_model(tmp_path / "model")
    uri = "s3://models/merged/v2"
    done = threading.Event()
    outage = Outage(moto, done, down_s=None)
    outage.start()
    with pytest.raises(storage.StorageError) as err:
        _upload(src, uri, tmp_path / "staging")
    outage.join(10)
    assert outage.done_at_kill is False
    msg = str(err.value)
    assert msg.startswith(f"upload {uri}/") and "retry budget 4s" in msg and "attempts" in msg, msg
    assert "Could not connect to the endpoint URL" in msg

    moto.restart()  # S3 back, with what was written before the kill
    partial = _objects(moto, "merged/v2/")
    assert (
        partial and f"merged/v2/{storage.MANIFEST}" not in partial and len(partial) < len(list(src.iterdir()))
    )
    tracking_uri, exp = sqlite_tracking
    with pytest.raises(storage.StorageError, match="refusing to register an incomplete model folder"):
        register_model("fm-faults", uri, tracking_uri=tracking_uri, experiment_id=exp)
    assert tracking.client(tracking_uri).search_model_versions("name = 'fm-faults'") == []
    assert not list((tmp_path / "staging" / "outputs").iterdir())


# ---------------------------------------------------------------------------------------------------------
# (c) the MLflow server restarted mid-run


class MlflowServer:
    """``mlflow server`` on a fixed port with a SQLite backend file that outlives restarts."""

    def __init__(self, port: int, work: Path):
        self.port, self.work, self.proc = port, work, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.work}/mlflow.db",
                "--artifacts-destination", str(self.work / "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1",
            ],
            env=env,
            stdout=open(self.work / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_http(f"{self.url}/health", 120, self.proc)

    def stop(self) -> None:
        stop(self.proc)

    def down(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
        except OSError:
            return True
        return False


@pytest.fixture()
def mlflow_restartable(tmp_path, monkeypatch):
    # MLflow's own HTTP retries would hide the outage for ~2 minutes inside one call; with none left the
    # buffer in finmerge.core.tracking has to carry every value across the restart.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    server = MlflowServer(free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _loss(step: int) -> float:
    return 10.0 / (step + 1)


@pytest.mark.slow
def test_mlflow_restart_mid_run_loses_no_metric(mlflow_restartable):
    """Metrics logged while the server is down neither raise nor vanish: they are sent, in order, once the
    server is back on the same port and backend, and the run ends FINISHED with every step."""
    server = mlflow_restartable
    _, exp = tracking.ensure_experiment(TrackingConfig(uri=server.url, experiment="faults"))
    run = tracking.Run.start(server.url, exp, "train")
    run.params({"lr": 0.01})
    for step in range(10):
        run.metrics({"loss": _loss(step), "lr": 0.01}, step=step)
    server.stop()
    assert server.down()
    for step in range(10, 30):  # training goes on while the server is away
        run.metrics({"loss": _loss(step), "lr": 0.01}, step=step)
    server.start()
    for step in range(30, 40):
        run.metrics({"loss": _loss(step), "lr": 0.01}, step=step)
    run.end()

    c = tracking.client(server.url)
    history = c.get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, _loss(s)) for s in range(40)]
    assert len(c.get_metric_history(run.run_id, "lr")) == 40
    assert c.get_run(run.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_mlflow_down_past_the_budget_is_a_clear_error_and_keeps_the_data(mlflow_restartable):
    """Past the budget the next call raises, naming the server, the run and how much is unsent; the values
    are kept, and a later flush delivers them all."""
    server = mlflow_restartable
    _, exp = tracking.ensure_experiment(TrackingConfig(uri=server.url, experiment="faults"))
    retry = tracking.TrackingRetry(first_delay_s=0.2, max_delay_s=0.5, budget_s=3)
    run = tracking.Run(server.url, tracking.Run.start(server.url, exp, "train").run_id, retry=retry)
    run.metrics({"loss": _loss(0)}, step=0)
    server.stop()
    step, t0 = 1, time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        while time.monotonic() - t0 < 60:
            run.metrics({"loss": _loss(step)}, step=step)
            step += 1
            time.sleep(0.05)
    msg = str(err.value)
    assert f"MLflow at {server.url} unreachable" in msg and run.run_id in msg and "budget 3s" in msg
    assert f"{step} metric values not yet logged" in msg, msg  # steps 1..step, all still held
    server.start()
    run.flush()
    history = tracking.client(server.url).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(step + 1))


# ---------------------------------------------------------------------------------------------------------
# (d) the process running the flow killed


@pytest.mark.slow
def test_killed_pipeline_process_reruns_from_cached_stages_and_checkpoints(tmp_path):
    """``finmerge run`` is SIGKILLed once pretraining has committed a checkpoint; the same command then
    finds every earlier stage Cached, resumes training from that checkpoint and finishes the pipeline."""
    store, db = tmp_path / "store", tmp_path / "mlflow.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    cmd = [
        sys.executable, "-m", "finmerge.cli", "run", "--config", str(ROOT / "configs" / "test.yaml"),
        "--set", f"storage.uri={store}", "--set", f"storage.staging_dir={tmp_path / 'st'}",
        "--set", "pretrain.max_steps=60", "--set", "pretrain.checkpoint_every=10",
    ]  # fmt: skip

    def checkpoints() -> list[Path]:
        return sorted(store.glob(f"pretrain/*.checkpoints/step-*/{storage.MANIFEST}"))

    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        _wait_for(lambda: bool(checkpoints()), first, "the first pretraining checkpoint", timeout=240)
    finally:
        _kill(first)
    killed_at = int(checkpoints()[-1].parent.name.split("-")[1])
    assert not list(store.glob(f"merge/*/{storage.MANIFEST}"))  # killed before the end
    client = tracking.client(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("finmerge")

    def pretrain_runs() -> list:
        return client.search_runs([exp.experiment_id], filter_string="tags.`finmerge.stage` = 'pretrain'")

    [killed_run] = pretrain_runs()
    killed_rows = client.get_metric_history(killed_run.info.run_id, "loss")  # what the killed attempt logged

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    line = next(x for x in again.stdout.splitlines() if x.startswith("stages"))
    stages = dict(item.split("=") for item in line.split(":", 1)[1].strip().split(", "))
    before = ["demo_world", "demo_base", "demo_instruct", "ingest", "clean", "dedup", "tokenize"]
    assert all(stages[s] == "Cached" for s in before), stages
    assert all(v == "Completed" for k, v in stages.items() if k not in before), stages
    [cpt] = [p.parent for p in store.glob(f"pretrain/*/{storage.MANIFEST}")]
    meta = storage.read_manifest(str(cpt))["meta"]
    assert meta["resumed_from"] >= killed_at and meta["metrics"]["pretrain/steps"] == 60
    assert "registered : finmerge-merged v1" in again.stdout

    runs = pretrain_runs()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the killed attempt's run, resumed
    assert runs[0].info.run_id == killed_run.info.run_id
    rows = client.get_metric_history(runs[0].info.run_id, "loss")
    logs = [*range(0, 60, 2), 59]  # test.yaml logs every 2nd step and the last
    resumed_from = meta["resumed_from"]

    def key(m) -> tuple:  # a row's identity in MLflow (with the metric's name)
        return m.step, m.value, m.timestamp

    first = sorted(key(m) for m in killed_rows)
    last = first[-1][0]
    assert [s for s, _, _ in first] == [s for s in logs if s <= last]  # the killed attempt: each step once
    resumed = sorted(key(m) for m in rows if key(m) not in first)
    assert [s for s, _, _ in resumed] == [s for s in logs if s >= resumed_from]  # from its checkpoint on
    assert sorted(first + resumed) == sorted(key(m) for m in rows)  # the killed attempt's rows are kept
    # Every step is there. The steps the killed attempt logged after its newest checkpoint are logged again
    # by the resumed one: MLflow keeps one row per (key, timestamp, step, value), so they are there twice.
    twice = [s for s in logs if resumed_from <= s <= last]
    assert sorted(m.step for m in rows) == sorted(logs + twice)
    # every value the resumed attempt logged, and every one the killed attempt logged before the checkpoint
    # it was resumed from, is the loss the final weights were trained through (history.json)
    made = {h["step"]: h["loss"] for h in json.loads((cpt / "history.json").read_text())}
    assert sorted(made) == logs
    kept = [(s, v) for s, v, _ in first if s < resumed_from] + [(s, v) for s, v, _ in resumed]
    assert kept == [(s, made[s]) for s, _ in kept]


# ---------------------------------------------------------------------------------------------------------
# (e) the staging disk full


# Each child process gets a private mount namespace with a fresh 256 KiB tmpfs mounted over the folder, so
# the kernel itself answers ENOSPC there, nothing is mounted for the rest of the machine, and the tmpfs goes
# away with the child. In a user namespace (root only inside it) no privilege is needed; without one, root.
_NAMESPACES = (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"])
_MOUNT_TMPFS = 'mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@"'


class SmallDisk:
    """A folder that is a real 256 KiB tmpfs for the processes started through :meth:`command`."""

    def __init__(self, path: Path, namespace: list[str]):
        self.path, self.namespace = path, namespace

    def command(self, argv: list[str]) -> list[str]:
        return [*self.namespace, "sh", "-c", _MOUNT_TMPFS, "sh", str(self.path), *argv]


@pytest.fixture()
def small_disk(tmp_path):
    """Skipped only where neither namespace can be made; with ``CI`` set that is a failure instead."""
    path = tmp_path / "small-disk"
    path.mkdir()
    refused = []
    for namespace in _NAMESPACES:
        disk = SmallDisk(path, namespace)
        probe = subprocess.run(disk.command(["true"]), capture_output=True, text=True)
        if probe.returncode == 0:
            return disk
        refused.append(f"{' '.join(namespace)}: {(probe.stderr or probe.stdout).strip()}")
    why = "cannot mount a tmpfs in a private mount namespace here: " + "; ".join(refused)
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: this test must run, not skip)")
    pytest.skip(why)


def _fill_the_small_disk(spec: str) -> None:
    """Runs in the child that sees the small disk: pretrain to S3 with its staging area there, then stage an
    input there; records the errors and what each left on the disk."""
    job = json.loads(Path(spec).read_text())
    disk = Path(job["disk"])
    storage.configure(job["endpoint"])
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    report: dict = {
        "fs": next((m[2] for m in mounts if m[1] == str(disk)), None),
        "size": shutil.disk_usage(disk).total,
    }

    def attempt(what: str, call) -> None:
        try:
            call()
            report[what] = None
        except Exception as exc:
            report[what] = [type(exc).__name__, str(exc)]

    attempt("pretrain", lambda: pretrain(job["model"], job["tokens"], job["out"],
                                         PretrainConfig(**job["cfg"]), str(disk)))  # fmt: skip
    report["outputs_left"] = sorted(os.listdir(disk / "outputs"))
    attempt("stage", lambda: storage.stage_folder(job["remote"], str(disk)))
    report["inputs_left"] = sorted(os.listdir(disk / "inputs"))
    Path(job["report"]).write_text(json.dumps(report))


def test_full_staging_disk_is_a_clear_error_and_nothing_is_committed_or_registered(
    base, tokens, s3_bucket, small_disk, sqlite_tracking, tmp_path
):
    """Pretraining to S3 with its staging area on a full disk fails naming the path and the space; nothing
    reaches S3, no temp folder is left, registration refuses the output; staging an input there fails too."""
    disk = small_disk.path
    big = _sharded_model(tmp_path / "big-model")  # ~1 MB: larger than the disk
    out = f"s3://{s3_bucket}/cpt"
    remote = f"s3://{s3_bucket}/models/big"
    with storage.output_folder(remote, str(tmp_path / "roomy")) as pending:
        shutil.copytree(big, pending.path, dirs_exist_ok=True)
    spec = tmp_path / "full-disk.json"
    spec.write_text(json.dumps({
        "disk": str(disk), "endpoint": storage.endpoint_url(), "model": str(big), "tokens": tokens["uri"],
        "out": out, "cfg": {**EXACT, "max_steps": 2}, "remote": remote, "report": str(tmp_path / "report.json"),
    }))  # fmt: skip
    code = "import sys; from tests.test_faults import _fill_the_small_disk as run; run(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(small_disk.command([sys.executable, "-c", code, str(spec)]),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fs"] == "tmpfs" and report["size"] <= 256 * 1024  # a real, small disk
    assert not list(disk.iterdir())  # every byte went to the tmpfs, none to the folder under it

    kind, msg = report["pretrain"]
    assert kind == "NoSpaceError", msg
    assert (
        msg.startswith(f"{disk / 'outputs'}: No space left on device while writing {out}") and "bytes" in msg
    )
    assert storage.read_manifest(out) is None and not storage.filesystem(out)[0].find(
        storage.filesystem(out)[1]
    )
    assert report["outputs_left"] == []  # the partial folder was removed
    tracking_uri, exp = sqlite_tracking
    with pytest.raises(storage.StorageError, match="incomplete"):
        register_model("fm-faults", out, tracking_uri=tracking_uri, experiment_id=exp)
    assert tracking.client(tracking_uri).search_model_versions("name = 'fm-faults'") == []

    kind, msg = report["stage"]
    assert kind == "NoSpaceError" and msg.startswith(f"{disk / 'inputs'}: No space left on device"), msg
    assert report["inputs_left"] == []


@pytest.mark.slow
def test_metrics_unsent_during_an_outage_survive_a_sigkill_in_the_checkpoint(
    base, tokens, tmp_path, mlflow_restartable
):
    """The tracking server is down from the first step and the training job is SIGKILLed after checkpoint 15:
    the values the server never took travel in the checkpoint, and the resumed job (server back) sends them,
    so the run ends with every step's loss exactly once."""
    server = mlflow_restartable
    _, exp = tracking.ensure_experiment(TrackingConfig(uri=server.url, experiment="faults-ckpt"))
    run = tracking.Run.start(server.url, exp, "pretrain")
    steps = 30
    cfg = PretrainConfig(**EXACT, max_steps=steps, log_every=1, checkpoint_every=1, keep_last=2)
    spec, out = _job(tmp_path, base, tokens, "cpt", cfg)
    job = json.loads(spec.read_text())
    spec.write_text(json.dumps({**job, "tracking": {"uri": server.url, "run_id": run.run_id}}))
    store = CheckpointStore(checkpoint_root(out), str(tmp_path / "st"))

    server.stop()
    proc = _pretrain_job(spec)
    try:
        _wait_for(lambda: (store.latest() or 0) >= 15, proc, "checkpoint 15")
    finally:
        _kill(proc)
    state = json.loads((Path(store.uri(store.latest())) / "trainer_state.json").read_text())
    assert len(state["unsent_metrics"]) >= 15 * 2  # loss, lr, … of steps 0-14 at least

    server.start()
    _finish(_pretrain_job(spec), spec)
    history = tracking.client(server.url).get_metric_history(run.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(steps))  # none lost, none doubled
