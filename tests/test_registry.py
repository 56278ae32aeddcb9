import os

import mlflow
import pytest
import torch

from finmerge.config import TrackingConfig
from finmerge.core import storage, tracking
from finmerge.models import loading as modelio
from finmerge.registry.register import register_model
from tests.helpers import tiny_model


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


def test_register_is_idempotent_and_bootstraps_champion(tmp_path, sqlite_tracking):
    uri, exp = sqlite_tracking
    m1 = tiny_model(tmp_path / "m1", seed=1)
    m2 = tiny_model(tmp_path / "m2", seed=2)
    kw = {
        "tracking_uri": uri,
        "experiment_id": exp,
        "aliases": ("challenger",),
        "bootstrap_alias": "champion",
    }
    r1 = register_model(
        "fm-test",
        str(m1),
        tags={"finmerge.base": "x", "aws_secret_access_key": "LEAK"},
        metrics={"eval.ppl": 12.5},
        **kw,
    )
    assert r1["created"] and r1["version"] == "1" and r1["aliases"] == ["challenger", "champion"]
    again = register_model("fm-test", str(m1), **kw)
    assert not again["created"] and again["version"] == "1"
    r2 = register_model("fm-test", str(m2), **kw)
    assert r2["version"] == "2" and r2["aliases"] == ["challenger"]  # champion stays on v1

    client = tracking.client(uri)
    v1 = client.get_model_version("fm-test", "1")
    assert "aws_secret_access_key" not in v1.tags
    # the metrics are the version's LoggedModel's metrics (not string tags), which the gates read too
    logged = client.get_logged_model(r1["model_id"])
    assert {m.key: m.value for m in logged.metrics} == {"eval.ppl": 12.5}
    assert v1.tags["finmerge.model_id"] == r1["model_id"] and "LEAK" not in repr(logged.tags)
    assert v1.tags["finmerge.digest"] == storage.read_manifest(str(m1))["digest"]
    assert "LEAK" not in repr(v1.tags)

    # a stock MLflow client resolves the alias to a folder transformers loads, with the same weights
    local = mlflow.artifacts.download_artifacts("models:/fm-test@champion", dst_path=str(tmp_path / "dl"))
    got = modelio.load_causal_lm(local)
    want = modelio.load_causal_lm(m1)
    x = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(got(x).logits, want(x).logits)


def test_incomplete_folder_is_never_registered(tmp_path, sqlite_tracking):
    uri, exp = sqlite_tracking
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(storage.StorageError, match="incomplete"):
        register_model("fm-test", str(tmp_path / "half"), tracking_uri=uri, experiment_id=exp)
    assert tracking.client(uri).search_model_versions("name = 'fm-test'") == []
