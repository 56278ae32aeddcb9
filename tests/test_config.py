from pathlib import Path

import pytest

from finmerge.config import ConfigError, PipelineConfig, config_hash, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["demo.yaml", "qwen2.5-7b.yaml", "test.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, PipelineConfig)


def test_real_model_example_is_a_real_model_setup():
    cfg = load_config(ROOT / "configs" / "qwen2.5-7b.yaml")
    assert not cfg.demo.enabled
    assert "Qwen2.5-7B" in cfg.models.base and "Instruct" in cfg.models.instruct
    assert cfg.merge.dtype == "bfloat16" and cfg.storage.uri.startswith("s3://")
    assert cfg.corpus.ingest.sources and not cfg.models.trust_remote_code


def test_overrides_are_typed_and_change_the_hash():
    base = load_config(ROOT / "configs" / "demo.yaml")
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        ["merge.alpha=0.5", "pretrain.max_steps=7", "corpus.ingest.sources=[a, b]"],
    )
    assert cfg.merge.alpha == 0.5 and cfg.pretrain.max_steps == 7
    assert cfg.corpus.ingest.sources == ["a", "b"]
    assert config_hash(cfg) != config_hash(base)
    assert config_hash(load_config(ROOT / "configs" / "demo.yaml")) == config_hash(base)
    # only the merge section's digest moves when only merge changes
    only_merge = load_config(ROOT / "configs" / "demo.yaml", ["merge.beta=0.7"])
    assert only_merge.merge.digest() != base.merge.digest()
    assert only_merge.pretrain.digest() == base.pretrain.digest()


def test_a_sub_section_given_in_part_keeps_the_rest_of_its_field_default(tmp_path):
    # demo.instruct_train's default is gentle (lr 3e-4, no decay); its class's defaults are lr 1e-3, decay 0.1
    default = PipelineConfig().demo.instruct_train
    assert (default.lr, default.weight_decay) != (type(default)().lr, type(default)().weight_decay)
    by_set = load_config(None, ["demo.instruct_train.seq_len=144"]).demo.instruct_train
    assert by_set == default.model_copy(update={"seq_len": 144})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("demo:\n  instruct_train: {seq_len: 144, lr: 1.0e-4}\n  model: {hidden_size: 64}\n")
    by_yaml = load_config(cfg).demo
    assert by_yaml.instruct_train == default.model_copy(update={"seq_len": 144, "lr": 1e-4})
    assert by_yaml.base_train == PipelineConfig().demo.base_train  # a sibling not given stays as it was
    assert by_yaml.model.hidden_size == 64 and by_yaml.model.num_hidden_layers == 6
    with pytest.raises(ConfigError, match="demo.instruct_train.lrr"):  # unknown keys are still refused
        load_config(None, ["demo.instruct_train.lrr=1"])


def test_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"merge\.alhpa"):
        load_config(ROOT / "configs" / "demo.yaml", ["merge.alhpa=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["merge.alpha"])
    with pytest.raises(ConfigError, match="models.base and models.instruct"):
        load_config(None, ["models.base=/m"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_demo_disabled_needs_models_and_sources():
    with pytest.raises(ConfigError, match="set models.base"):
        load_config(None, ["demo.enabled=false"])


def test_tracking_uri_honours_environment(monkeypatch):
    from finmerge.core import tracking

    cfg = load_config(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.resolve_uri(cfg.tracking) == "http://127.0.0.1:9"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.resolve_uri(cfg.tracking).startswith("sqlite:///")


def test_a_sqlite_store_keeps_its_artifacts_beside_it_wherever_the_command_runs(tmp_path, monkeypatch):
    from finmerge.config import TrackingConfig
    from finmerge.core import tracking

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri, exp = tracking.ensure_experiment(TrackingConfig(uri=f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"))
    location = tracking.client(uri).get_experiment(exp).artifact_location
    assert location == (tmp_path / "db" / "mlartifacts").as_uri()
    assert not (tmp_path / "elsewhere" / ".finmerge").exists()


def test_storage_endpoint_honours_environment(monkeypatch):
    from finmerge.core import storage

    storage.configure(None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    assert storage.storage_options("s3://b/p") == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1234"}}
    assert storage.storage_options("/local/path") == {}


def test_scrub_removes_secrets():
    from finmerge.core.tracking import flatten, scrub

    out = flatten(
        scrub(
            {
                "a": {"api_key": "s3cr3t", "uri": "s3://AKIA:s3cr3t@bucket/x"},
                "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                "lr": 0.1,
            }
        )
    )
    assert "s3cr3t" not in repr(out)
    assert out["lr"] == "0.1" and out["a.uri"] == "s3://***@bucket/x"
    # "token" is a secret as a key's last word only; token counts and digests are ordinary params
    kept = scrub(
        {"hf_token": "s3cr3t", "judge.token": "s3cr3t", "max_tokens": 5, "finmerge.tokens_digest": "d"}
    )
    assert kept == {"max_tokens": 5, "finmerge.tokens_digest": "d"}


def test_config_reference_is_current():
    from finmerge.config import reference_markdown

    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == reference_markdown(), (
        "docs/config.md is stale: run `finmerge config reference > docs/config.md`"
    )
