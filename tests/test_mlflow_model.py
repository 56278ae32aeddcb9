"""Registered versions are MLflow models that stock MLflow loads and serves, with their weights stored once,
and each version is an MLflow 3 LoggedModel carrying its parameters and evaluation metrics."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from finmerge.config import MergeConfig, TrackingConfig
from finmerge.core import integrity, storage, tracking
from finmerge.merge.execute import merge_models
from finmerge.models.mlflow_model import MLMODEL, TOKENIZER_DIR
from finmerge.registry.promote import version_metrics
from finmerge.registry.register import register_model, version_model_id
from finmerge.stack import free_port, stop, wait_http
from tests.helpers import tiny_model

CHAT = [{"role": "user", "content": "株式会社青葉精機の主な事業は?"}]
METRICS = {"eval.ppl": 12.5, "eval.harness/jcqa/acc": 0.41}
DATASET = {"name": "evaluation-test", "digest": "d" * 64, "source": "s3://finmerge/eval/heldout.jsonl"}


def _merge(root: Path, out: Path) -> Path:
    merge_models(str(root / "base"), str(root / "instruct"), str(root / "domain"), str(out),
                 MergeConfig(alpha=0.5, beta=0.5), str(root / "st"))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    """A merged tiny model whose instruct parent has a chat template: the pipeline's own output folder."""
    root = tmp_path_factory.mktemp("mm")
    tiny_model(root / "base", seed=0)
    tiny_model(root / "instruct", seed=1, chat=True)
    tiny_model(root / "domain", seed=2)
    return _merge(root, root / "merged")


def _safetensors(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


def test_merged_folder_is_a_deterministic_mlflow_model_and_a_plain_hf_folder(merged):
    from transformers import AutoModelForCausalLM

    manifest = storage.read_manifest(str(merged))
    assert {MLMODEL, f"{TOKENIZER_DIR}/tokenizer.json", "requirements.txt"} <= set(manifest["files"])
    conf = yaml.safe_load((merged / MLMODEL).read_text())
    flavor = conf["flavors"]["transformers"]
    assert flavor["model_binary"] == "." and flavor["inference_task"] == "llm/v1/chat"
    assert "model_uuid" not in conf and "utc_time_created" not in conf  # nothing per-save in the digest
    assert [p.name for p in _safetensors(merged)] == ["model.safetensors"]  # no second copy of the weights
    assert AutoModelForCausalLM.from_pretrained(str(merged)).config.vocab_size > 0
    # the same merge again writes the same files (the model card names the folder): the MLflow files are
    # content, not a timestamp, so they leave the digest a function of the content
    files = storage.read_manifest(str(_merge(merged.parent, merged.parent / "again")))["files"]
    assert {k: v for k, v in files.items() if k != "README.md"} == {
        k: v for k, v in manifest["files"].items() if k != "README.md"
    }


@pytest.fixture()
def sqlite_tracking(tmp_path):
    """A SQLite tracking store, also the stock ``mlflow`` module's for this test only (its global URI would
    otherwise leak into later tests)."""
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(tmp_path / "art").as_uri())
    uri, exp = tracking.ensure_experiment(cfg)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    yield uri, exp
    mlflow.set_tracking_uri(None)
    if env is not None:
        os.environ["MLFLOW_TRACKING_URI"] = env


def _register(uri: str, exp: str, source: str, name: str) -> dict:
    return register_model(name, source, tracking_uri=uri, experiment_id=exp, metrics=METRICS,
                          params={"merge": {"method": "task_arithmetic", "alpha": 0.5}}, eval_dataset=DATASET,
                          tags={"finmerge.role": "merged"}, aliases=("champion",))  # fmt: skip


def _chat_answer(response) -> str:
    response = response[0] if isinstance(response, list) else response
    assert response["object"] == "chat.completion"
    message = response["choices"][0]["message"]
    assert message["role"] == "assistant"
    return message["content"]


def test_stored_signatures_are_what_the_installed_mlflow_infers():
    """The MLmodel signatures are stored with finmerge (computing them imports mlflow.transformers, seconds on
    every merge); they must equal the installed MLflow's. After an MLflow upgrade, regenerate
    finmerge/models/mlflow_signatures.json (see mlflow_model.llm_signature)."""
    from importlib.metadata import version

    from mlflow.transformers.llm_inference_utils import infer_signature_from_llm_inference_task

    from finmerge.models import mlflow_model

    stored = json.loads(mlflow_model.SIGNATURES_FILE.read_text())
    assert stored["mlflow_version"] == version("mlflow")
    for task in (mlflow_model.CHAT_TASK, mlflow_model.COMPLETIONS_TASK):
        want = infer_signature_from_llm_inference_task(task).to_dict()
        assert mlflow_model.llm_signature(task, version("mlflow")) == want == stored["signatures"][task]
    # another MLflow version computes its own
    assert mlflow_model.llm_signature(mlflow_model.CHAT_TASK, "0.0.0") == stored["signatures"]["llm/v1/chat"]


def test_stock_mlflow_loads_the_registered_version_and_its_logged_model(merged, tmp_path, sqlite_tracking):
    uri, exp = sqlite_tracking
    reg = _register(uri, exp, str(merged), "fm-mm")
    assert reg["mlflow_model"] and reg["model_id"]
    assert integrity.verify_version(tracking.client(uri), "fm-mm", "1")["digest"] == reg["digest"]

    pipe = mlflow.transformers.load_model("models:/fm-mm@champion")
    instruct_template = (merged.parent / "instruct" / "chat_template.jinja").read_text()
    assert pipe.task == "text-generation" and pipe.tokenizer.chat_template == instruct_template
    out = pipe(CHAT, max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"

    model = mlflow.pyfunc.load_model("models:/fm-mm@champion")
    assert isinstance(_chat_answer(model.predict({"messages": CHAT, "max_tokens": 4})), str)

    # the LoggedModel: parameters, metrics linked to the evaluation dataset, the version pointing at it
    found = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
    assert [m.model_id for m in found] == [reg["model_id"]]
    logged = found[0]
    assert logged.params["merge.alpha"] == "0.5" and logged.model_type == "merged"
    assert {m.key: m.value for m in logged.metrics} == METRICS
    assert {m.dataset_name for m in logged.metrics} == {"evaluation-test"}
    version = tracking.client(uri).get_model_version("fm-mm", reg["version"])
    assert version_model_id(version) == reg["model_id"] and version.run_id == logged.source_run_id
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": "fm-mm", "version": "1"}]
    assert version_metrics(tracking.client(uri), "fm-mm", "1") == {"ppl": 12.5, "harness/jcqa/acc": 0.41}

    # weights stored once: nothing of the model went into MLflow's artifact store
    assert _safetensors(tmp_path / "art") == []
    # stock MLflow wrote its registered_model_meta into the local folder when loading it: the version still
    # verifies (promotion, rollback and models:/ loading go on working after a user's own load)
    assert (merged / "registered_model_meta").exists()
    assert integrity.verify_version(tracking.client(uri), "fm-mm", "1")["digest"] == reg["digest"]


def test_promotion_reads_logged_model_metrics_and_old_metric_tags(tmp_path, sqlite_tracking):
    uri, exp = sqlite_tracking
    client = tracking.client(uri)
    old = tiny_model(tmp_path / "old", seed=4)  # an older folder: no MLmodel, registered all the same
    reg = register_model("fm-old", str(old), tracking_uri=uri, experiment_id=exp)
    assert not reg["mlflow_model"]
    client.set_model_version_tag("fm-old", reg["version"], "metric.eval.ppl", "9.5")  # how versions were
    assert version_metrics(client, "fm-old", reg["version"]) == {"ppl": 9.5}


def _s3_objects(bucket: str, endpoint: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_served_champion_answers_a_chat_request_with_weights_stored_once(
    merged, mlflow_server, s3_endpoint, s3_bucket, tmp_path, monkeypatch
):
    """Against a real `mlflow server` with S3 artifacts: register the folder from the finmerge bucket, then
    `mlflow models serve` (a separate process, stock MLflow) answers a chat request over HTTP."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    remote = f"s3://{s3_bucket}/merge/m"
    fs, root = storage.filesystem(remote)
    fs.put(str(merged) + "/", root, recursive=True)
    uri, exp = tracking.ensure_experiment(TrackingConfig(uri=mlflow_server, experiment="mm-serve"))
    before = [k for k in _s3_objects("mlflow", s3_endpoint) if k.endswith(".safetensors")]
    reg = _register(uri, exp, remote, "fm-served")
    after = [k for k in _s3_objects("mlflow", s3_endpoint) if k.endswith(".safetensors")]
    assert before == after == []  # the artifact store holds no copy of the weights
    assert [k for k in _s3_objects(s3_bucket, s3_endpoint) if k.endswith(".safetensors")] == [
        "merge/m/model.safetensors"
    ]
    assert version_model_id(tracking.client(uri).get_model_version("fm-served", "1")) == reg["model_id"]

    port = free_port()
    bindir = str(Path(sys.executable).parent)  # `mlflow models serve` runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}  # fmt: skip
    exe = str(Path(bindir) / "mlflow")
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [exe, "models", "serve", "-m", "models:/fm-served@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 90, proc)
        except RuntimeError as exc:
            raise AssertionError(log.read_text()[-3000:]) from exc
        body = json.dumps({"messages": CHAT, "max_tokens": 4}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
    finally:
        stop(proc)
    assert isinstance(_chat_answer(answer), str), log.read_text()[-2000:]


def test_cpt_folder_and_marked_checkpoint_are_mlflow_models(tmp_path):
    """The pretrain stage's folder and a marked checkpoint are MLflow models too; without a chat template
    the pyfunc task is MLflow's completions schema."""
    from finmerge.config import PretrainConfig
    from finmerge.train.pretrain import pretrain
    from tests.helpers import tiny_tokens

    base = tiny_model(tmp_path / "base", seed=0)
    cfg = PretrainConfig(lr=5e-3, warmup_steps=1, batch_size=4, threads=1, max_steps=2, checkpoint_every=1,
                         keep_last=1, keep_steps=[1])  # fmt: skip
    res = pretrain(
        str(base), tiny_tokens(base, tmp_path)["uri"], str(tmp_path / "cpt"), cfg, str(tmp_path / "st")
    )
    for folder in (res["uri"], res["marked_checkpoints"]["1"]):
        assert MLMODEL in storage.read_manifest(folder)["files"]
        conf = yaml.safe_load((Path(folder) / MLMODEL).read_text())
        assert conf["flavors"]["transformers"]["inference_task"] == "llm/v1/completions"
    answer = mlflow.pyfunc.load_model(res["uri"]).predict({"prompt": "当社の売上高は", "max_tokens": 3})
    answer = answer[0] if isinstance(answer, list) else answer
    assert answer["object"] == "text_completion" and isinstance(answer["choices"][0]["text"], str)
