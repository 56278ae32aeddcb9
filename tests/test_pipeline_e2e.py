"""The whole flow against real local services: moto S3, a real `mlflow server`, the Prefect harness."""

from pathlib import Path

import mlflow
import pytest
import torch

from finmerge import modelio, storage
from finmerge.config import load_config

ROOT = Path(__file__).resolve().parents[1]
EXPENSIVE = {
    "demo_world",
    "demo_base",
    "demo_instruct",
    "ingest",
    "clean",
    "dedup",
    "tokenize",
    "pretrain",
    "merge",
    "analyze",
    "evaluate-base",
    "evaluate-instruct",
    "evaluate-cpt",
    "evaluate-merged",
}


@pytest.mark.slow
def test_pipeline_on_s3_and_mlflow_server(s3_bucket, mlflow_server, prefect_harness, tmp_path, monkeypatch):
    from flows.pipeline import pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    overrides = [f"storage.uri=s3://{s3_bucket}/e2e", f"storage.staging_dir={tmp_path / 'staging'}"]
    cfg = load_config(ROOT / "configs" / "test.yaml", overrides)

    first = pipeline(cfg)
    assert EXPENSIVE <= set(first["stages"]) and all(s == "Completed" for s in first["stages"].values())
    reg = first["registered"]["merged"]
    assert reg["name"] == "finmerge-merged" and {"challenger", "champion"} <= set(reg["aliases"])
    assert reg["source"].startswith(f"s3://{s3_bucket}/e2e/merge/")
    for label in ("base", "instruct", "cpt", "merged"):
        m = first["evaluations"][label]
        assert m["ppl"] > 1 and 0 <= m["chat/adherence"] <= 1 and "harness/demo_fin/acc" in m
    assert -1 <= first["cos"] <= 1

    # A stock MLflow client resolves the alias to a folder that transformers loads, with the same logits.
    mlflow.set_tracking_uri(mlflow_server)
    fetched = mlflow.artifacts.download_artifacts(
        "models:/finmerge-merged@champion", dst_path=str(tmp_path / "dl")
    )
    merged_local = storage.stage_folder(first["models"]["merged"], str(tmp_path / "staging"))
    got, want = modelio.load_causal_lm(Path(fetched)), modelio.load_causal_lm(merged_local)
    ids = modelio.load_tokenizer(Path(fetched))("株式会社の主な事業は", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(got(ids).logits, want(ids).logits)
    assert (Path(fetched) / "README.md").exists() and (Path(fetched) / "generation_config.json").exists()

    # Nothing changed: every stage is served from the cache, and no new model version appears.
    second = pipeline(cfg)
    assert all(state == "Cached" for state in second["stages"].values()), second["stages"]
    assert second["registered"]["merged"]["version"] == reg["version"]
    assert second["evaluations"] == first["evaluations"]

    # Only the merge section changed: merge and what follows it re-run, everything before stays cached.
    third = pipeline(load_config(ROOT / "configs" / "test.yaml", [*overrides, "merge.alpha=0.5"]))
    rerun = {k for k, v in third["stages"].items() if v != "Cached"}
    assert rerun == {"merge", "evaluate-merged", "register-merged"}, third["stages"]
    assert int(third["registered"]["merged"]["version"]) == int(reg["version"]) + 1
