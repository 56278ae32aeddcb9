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
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(tmp_path / "art").as_uri())
    return tracking.ensure_experiment(cfg)


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
    assert v1.tags["metric.eval.ppl"] == "12.5" and "aws_secret_access_key" not in v1.tags
    assert v1.tags["finmerge.digest"] == storage.read_manifest(str(m1))["digest"]
    assert "LEAK" not in repr(v1.tags)

    # a stock MLflow client resolves the alias to a folder transformers loads, with the same weights
    mlflow.set_tracking_uri(uri)
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
