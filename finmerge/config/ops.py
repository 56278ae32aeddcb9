"""Sections of the platform around the stages: storage, tracking, the model registry and retraining."""

from __future__ import annotations

from pydantic import Field, field_validator

from finmerge.config.base import Section


class StorageConfig(Section):
    uri: str = Field(
        ".finmerge/store", description="Where every artifact goes: a local folder or s3://bucket/prefix."
    )
    staging_dir: str = Field(
        ".finmerge/staging",
        description="Local scratch for remote inputs/outputs (a plain folder, never a URL).",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, moto). Default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.",
    )
    retry_attempts: int = Field(
        30,
        ge=1,
        description="Attempts of each S3 upload of a commit (files, manifest) while the endpoint fails.",
    )
    retry_budget_s: float = Field(
        120.0,
        gt=0,
        description="Longest outage (seconds since the first failure) an S3 upload rides out before the "
        "stage fails with a clear error; the folder is then never committed or registered.",
    )


class TrackingConfig(Section):
    uri: str | None = Field(
        None,
        description="MLflow tracking URI. Default: MLFLOW_TRACKING_URI, else sqlite:///.finmerge/mlflow.db.",
    )
    artifact_location: str | None = Field(
        None,
        description="Artifact root for a new experiment (default for a SQLite store: mlartifacts/ beside its file).",
    )
    experiment: str = "finmerge"


class PromotionGates(Section):
    """What a challenger must show against the champion to be promoted (the eval.* metrics of each version)."""

    max_task_drop: float = Field(
        0.02,
        ge=0,
        description="No harness task's leaderboard score (f1 for chabsa, else acc; 0-1) may fall more than "
        "this below the champion's (0.02 = 2 points). A task the champion has and the challenger lacks fails.",
    )
    max_ppl_ratio: float | None = Field(
        1.0,
        ge=1.0,
        description="Finance perplexity at most champion x this (1.0: not worse). None: no check.",
    )
    min_chat_adherence: float | None = Field(
        0.8, ge=0, le=1, description="Absolute floor on chat-format adherence. None: no check."
    )
    min_judge_overall: float | None = Field(
        None, ge=0, le=10, description="Absolute floor on the LLM-judge overall score. None: no check."
    )


_NOT_IN_MODEL_NAMES = "/:.%\"'"  # mlflow.utils.validation: characters a registered-model name may not hold


class RegistryConfig(Section):
    cpt_name: str = Field("finmerge-cpt", description="Registered model of the CPT checkpoints.")
    merged_name: str = Field("finmerge-merged", description="Registered model of the merged models.")
    new_alias: str = Field("challenger", description="Alias set on every new merged version.")
    champion_alias: str = "champion"
    previous_alias: str = Field(
        "previous",
        description="Alias kept on the champion a promotion replaced (finmerge rollback returns to it).",
    )
    bootstrap_champion: bool = Field(True, description="Make the first merged version champion.")
    gates: PromotionGates = PromotionGates()
    require_approval: bool = Field(
        False,
        description="A version that passes the gates waits for a person: the promote step publishes the gate "
        "report and pauses its flow run for typed input (approve / reject, reviewer, comment) in the Prefect UI.",
    )
    approval_timeout_s: int = Field(
        86_400, ge=1, description="Seconds the paused promotion waits for an answer; then it is rejected."
    )

    @field_validator("new_alias", "champion_alias", "previous_alias")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()  # MLflow alias names are case-insensitive

    @field_validator("cpt_name", "merged_name")
    @classmethod
    def _registrable(cls, name: str) -> str:
        # MLflow refuses these only at registration, after the whole pipeline has run
        bad = sorted(set(name) & set(_NOT_IN_MODEL_NAMES))
        if bad:
            raise ValueError(f"{name!r}: MLflow refuses {' '.join(bad)} in a registered-model name")
        if not name.strip():
            raise ValueError("a registered-model name cannot be empty")
        return name


class RetrainConfig(Section):
    """Retraining on new filings: a scheduled check and an event-driven variant (flows/retrain.py)."""

    cron: str | None = Field(
        "0 19 * * 1-5",
        description="When the scheduled retrain deployment checks for new filings (cron, in `timezone`). "
        "Default: weekdays 19:00, after EDINET's business day. None: no schedule.",
    )
    timezone: str = Field("Asia/Tokyo", description="Timezone of `cron` and `watch_cron`.")
    min_new_tokens: int = Field(
        1_000_000,
        ge=0,
        description="Retrain once the corpus holds at least this many tokens (base tokenizer, EOS included) "
        "that the latest cpt version was not trained on.",
    )
    watch_uris: list[str] = Field(
        default_factory=list,
        description="Prefixes the watcher lists for new objects (e.g. s3://filings/edinet/). Empty: "
        "corpus.ingest.sources. New objects emit a `finmerge.filings.arrived` event that triggers the "
        "retrain-on-event deployment.",
    )
    watch_cron: str = Field(
        "*/10 * * * *", description="How often the watcher deployment lists the prefixes."
    )
    lock_wait_s: float = Field(
        2.0,
        ge=0,
        description="How long a retrain waits for the model line's lock (a Prefect global concurrency limit "
        "of 1) before it stands down because another retrain of the line is running.",
    )
    lock_lease_s: float = Field(
        600.0, ge=60, description="Lease of the lock: a crashed retrain frees the line after this long."
    )

    @field_validator("cron", "watch_cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5:
            raise ValueError(f"{v!r}: a cron expression has 5 fields (minute hour day month weekday)")
        return v
