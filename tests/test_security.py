"""Issue 21 against real local servers (`finmerge stack`: MLflow's basic auth with the finmerge-auth app,
Prefect's API auth, moto S3 with IAM enforced), plus the integrity check on its own: who may do what in the
registry, which S3 key writes which bucket, and that a weight file changed after registration is refused by
promotion, rollback and `models:/` loading with the registry left as it was. See docs/security.md."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import uuid

import pytest

from finmerge import stack
from finmerge.authz import provision
from finmerge.config import RegistryConfig, TrackingConfig
from finmerge.core import integrity, storage, tracking
from finmerge.models import loading as modelio
from finmerge.registry.promote import promote, rollback
from finmerge.registry.register import register_model
from tests.helpers import tiny_model

GOOD = {"eval.harness/cma_basics/acc": 0.40, "eval.ppl": 20.0, "eval.chat/adherence": 0.9}
BETTER = {**GOOD, "eval.harness/cma_basics/acc": 0.45, "eval.ppl": 19.0}


# --- the integrity check on its own (no server) -----------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tiny_models):
    return tiny_models[1]


def _copy(folder, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(folder, dest)
    return dest, storage.read_manifest(str(dest))


def test_an_intact_folder_verifies(model_folder):
    digest = storage.read_manifest(str(model_folder))["digest"]
    out = integrity.verify_folder(str(model_folder), digest)
    assert out["digest"] == digest and out["files"] >= 3


@pytest.mark.parametrize("change", ["swap", "truncate", "extra", "missing", "manifest"])
def test_a_changed_folder_is_refused_naming_the_file_and_both_digests(model_folder, tmp_path, change):
    folder, manifest = _copy(model_folder, tmp_path)
    weights, recorded = folder / "model.safetensors", manifest["files"]["model.safetensors"]["sha256"]
    if change == "swap":  # same size, other bytes
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif change == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif change == "extra":
        (folder / "modeling_evil.py").write_text("import os\n")
    elif change == "missing":
        weights.unlink()
    else:  # the bucket writer swaps the weights and rewrites the manifest to match
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        forged = {**manifest, "files": {**manifest["files"]}}
        forged["files"]["model.safetensors"] = {"sha256": storage.sha256_file(weights), "size": len(data)}
        (folder / storage.MANIFEST).write_text(json.dumps(forged))
    with pytest.raises(integrity.IntegrityError) as err:
        integrity.verify_folder(str(folder), manifest["digest"])
    msg = str(err.value)
    if change in ("swap", "truncate"):
        assert "model.safetensors" in msg and recorded in msg and storage.sha256_file(weights) in msg
    elif change == "extra":
        assert "modeling_evil.py" in msg
    elif change == "missing":
        assert "model.safetensors" in msg and recorded in msg
    else:
        assert storage.MANIFEST in msg and manifest["digest"] in msg


# --- the authenticated stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("secure") / "stack"
    info = stack.up(state)
    try:
        yield info
    finally:
        stack.down(state)


def _status(url: str, data: bytes | None = None, auth: str | None = None) -> int:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_unauthenticated_requests_are_refused(secure_stack):
    s, creds = secure_stack["services"], stack.credentials(secure_stack)
    search = s["mlflow"]["url"] + "/api/2.0/mlflow/registered-models/search"
    assert _status(search) == 401
    assert _status(search, auth="viewer:wrong-password") == 401
    assert _status(search, auth=":".join(creds["viewer"])) == 200
    flows = s["prefect"]["url"] + "/flows/filter"
    assert _status(flows, b"{}") == 401
    assert _status(flows, b"{}", auth="finmerge:wrong") == 401
    assert _status(flows, b"{}", auth=stack.env(secure_stack)["PREFECT_API_AUTH_STRING"]) == 200
    # health stays open for probes
    assert _status(s["mlflow"]["url"] + "/health") == 200 and _status(s["prefect"]["url"] + "/health") == 200


@pytest.mark.slow
def test_s3_keys_write_only_their_own_bucket(secure_stack):
    import boto3
    from botocore.exceptions import ClientError

    creds, url = stack.credentials(secure_stack), secure_stack["services"]["s3"]["url"]

    def put(key: tuple[str, str], bucket: str) -> str:
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key[0],
                          aws_secret_access_key=key[1])  # fmt: skip
        try:
            s3.put_object(Bucket=bucket, Key="probe", Body=b"x")
            return "ok"
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    assert put(creds["s3-worker"], "finmerge") == "ok" and put(creds["s3-mlflow"], "mlflow") == "ok"
    assert put(creds["s3-worker"], "mlflow") == "AccessDenied"
    assert put(creds["s3-mlflow"], "finmerge") == "AccessDenied"
    assert put(("bootstrap", "bootstrap"), "finmerge") != "ok"  # the set-up identity is gone


def _as(monkeypatch, info, role: str, promoter: bool = False) -> None:
    """This process's MLflow identity (clients read MLFLOW_TRACKING_* at every request)."""
    creds = stack.credentials(info)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", creds[role][0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds[role][1])
    for var, value in (
        ("FINMERGE_PROMOTER_USERNAME", "promoter"),
        ("FINMERGE_PROMOTER_PASSWORD", creds["promoter"][1]),
    ):
        if promoter:
            monkeypatch.setenv(var, value)
        else:
            monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Three tiny model folders, made once (seed -> folder)."""
    work = tmp_path_factory.mktemp("tiny")
    return {seed: tiny_model(work / f"m{seed}", seed=seed) for seed in (1, 2, 3)}


@pytest.fixture()
def line(secure_stack, tiny_models, monkeypatch, tmp_path):
    """A provisioned model line (pipeline EDIT, promoter MANAGE) and a register(seed, metrics) helper that
    writes a tiny model to the finmerge bucket with the worker's key and registers it as the pipeline."""
    env = stack.env(secure_stack)
    names = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "MLFLOW_TRACKING_URI",
        "PREFECT_API_URL",
    )
    for var in names:  # the registry lock is taken on the stack's Prefect server, authenticated
        monkeypatch.setenv(var, env[var])
    storage.configure(env["AWS_ENDPOINT_URL"])
    url, creds = env["MLFLOW_TRACKING_URI"], stack.credentials(secure_stack)
    name = f"fm-sec-{uuid.uuid4().hex[:8]}"
    provision.provision_line(url, creds["admin"], name)
    _as(monkeypatch, secure_stack, "pipeline")
    uri, exp = tracking.ensure_experiment(TrackingConfig(uri=url, experiment=f"sec-{name}"))

    def register(seed: int, metrics: dict, bootstrap: bool = False) -> tuple[str, str]:
        remote = f"s3://finmerge/sec/{name}/m{seed}"
        fs, root = storage.filesystem(remote)
        fs.put(str(tiny_models[seed]) + "/", root, recursive=True)
        res = register_model(name, remote, tracking_uri=uri, experiment_id=exp, metrics=metrics,
                             aliases=("challenger",), bootstrap_alias="champion" if bootstrap else None)  # fmt: skip
        return res["version"], remote

    yield {
        "name": name,
        "uri": uri,
        "exp": exp,
        "register": register,
        "reg": RegistryConfig(merged_name=name),
    }
    storage.configure(None)


def _aliases(uri: str, name: str) -> dict:
    return {k: str(v) for k, v in tracking.client(uri).get_registered_model(name).aliases.items()}


@pytest.mark.slow
def test_roles_viewer_pipeline_promoter(secure_stack, line, monkeypatch, tmp_path):
    from mlflow.exceptions import MlflowException

    name, uri, reg = line["name"], line["uri"], line["reg"]
    _as(monkeypatch, secure_stack, "pipeline", promoter=True)
    v1, _ = line["register"](1, GOOD, bootstrap=True)  # the first champion: set as the promoter
    _as(monkeypatch, secure_stack, "pipeline")
    v2, src2 = line["register"](2, BETTER)  # the pipeline registers and sets challenger itself
    assert _aliases(uri, name) == {"champion": v1, "challenger": v2}
    client = tracking.client(uri)
    # the pipeline cannot move champion, neither directly nor through promote without the promoter account
    with pytest.raises(MlflowException, match="MANAGE"):
        client.set_registered_model_alias(name, "champion", v2)
    with pytest.raises(PermissionError, match="champion|previous"):
        promote(name, tracking_uri=uri, registry=reg)
    assert _aliases(uri, name) == {"champion": v1, "challenger": v2}
    # a viewer reads but cannot register a version or move any alias
    _as(monkeypatch, secure_stack, "viewer")
    assert client.get_registered_model(name).name == name
    for attempt in (
        lambda: client.create_model_version(name, source=src2),
        lambda: client.set_registered_model_alias(name, "challenger", v1),
        lambda: client.set_registered_model_alias(name, "champion", v2),
        lambda: client.delete_registered_model_alias(name, "champion"),
    ):
        with pytest.raises(MlflowException):
            attempt()
    # the promoter can: the pipeline's promote step with the promoter account moves champion, files verified
    _as(monkeypatch, secure_stack, "pipeline", promoter=True)
    res = promote(name, tracking_uri=uri, registry=reg, experiment_id=line["exp"])
    assert res["decision"] == "promoted" and res["verified"]["files"] >= 3
    assert res["digest"] in res["report"]
    assert _aliases(uri, name) == {"champion": v2, "previous": v1, "challenger": v2}
    assert client.get_model_version(name, v2).tags["finmerge.promotion.digest"] == res["digest"]


@pytest.mark.slow
def test_changed_weights_are_refused_by_promote_rollback_and_load(secure_stack, line, monkeypatch, tmp_path):
    name, uri, reg = line["name"], line["uri"], line["reg"]
    _as(monkeypatch, secure_stack, "pipeline", promoter=True)
    v1, src1 = line["register"](1, GOOD, bootstrap=True)
    v2, _ = line["register"](2, BETTER)
    assert promote(name, tracking_uri=uri, registry=reg)["decision"] == "promoted"  # champion v2, previous v1
    v3, src3 = line["register"](3, {**BETTER, "eval.harness/cma_basics/acc": 0.5})
    # a bucket writer (the worker's key) swaps a byte of v1's weights and truncates v3's
    fs, _ = storage.filesystem(src1)
    for src, cut in ((src1, None), (src3, -64)):
        path = storage.join(src, "model.safetensors")[len("s3://") :]
        data = bytearray(fs.cat_file(path))
        data[-1] ^= 0xFF
        fs.pipe_file(path, bytes(data[:cut] if cut else data))
    before = _aliases(uri, name)
    with pytest.raises(
        integrity.IntegrityError, match=r"m3/model.safetensors: sha256 [0-9a-f]{64} .* sha256 [0-9a-f]{64}"
    ):
        promote(name, tracking_uri=uri, registry=reg, version=v3)
    with pytest.raises(integrity.IntegrityError, match=r"m1/model.safetensors: sha256 [0-9a-f]{64}"):
        rollback(name, tracking_uri=uri, registry=reg)
    with pytest.raises(storage.StorageError, match="model.safetensors"):
        modelio.stage_model(f"models:/{name}@previous", str(tmp_path / "staging"))
    assert _aliases(uri, name) == before  # nothing moved
    assert "finmerge.promotion.decision" not in tracking.client(uri).get_model_version(name, v3).tags
    # the intact champion loads through the same path
    folder = modelio.stage_model(f"models:/{name}@champion", str(tmp_path / "staging"))
    assert modelio.load_causal_lm(folder) is not None


def test_evaluate_takes_a_registered_version_and_refuses_changed_weights(tmp_path, capsys):
    """`finmerge evaluate --model models:/…` evaluates exactly the registered content: the version's recorded
    digest is its cache identity, and its files are verified before the model loads."""
    from finmerge.cli import main

    tcfg = TrackingConfig(
        uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(tmp_path / "art").as_uri()
    )
    uri, exp = tracking.ensure_experiment(tcfg)
    folder = tiny_model(tmp_path / "m1", seed=1, chat=True)
    reg = register_model("fm-eval", str(folder), tracking_uri=uri, experiment_id=exp, aliases=("champion",))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"question": "本社はどこですか？", "answers": ["東京"]}, ensure_ascii=False) + "\n"
    )
    common = ["--chat", str(chat), "--set", f"tracking.uri={uri}", "--set", f"storage.uri={tmp_path}/store",
              "--set", f"storage.staging_dir={tmp_path}/staging"]  # fmt: skip
    assert main(["evaluate", "--model", "models:/fm-eval@champion", *common]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads(next((tmp_path / "store" / "evaluate").glob("*/results.json")).read_text())
    assert (
        results["config"]["model_uri"] == "models:/fm-eval@champion" and res["chat"]["adherence"] is not None
    )
    # a byte of the registered weights changes: a new evaluation refuses to load them, naming file and digests
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "again"
    assert main(["evaluate", "--model", "models:/fm-eval@champion", "--out", str(out), *common]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and err.count("sha256") >= 2 and "Traceback" not in err, err
    assert not out.exists() and reg["digest"] == integrity.recorded_digest(
        integrity.resolve_models_uri("models:/fm-eval@champion", uri)
    )
