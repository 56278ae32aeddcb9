"""One typed config for the whole pipeline.

Loaded from YAML (``configs/*.yaml``) with ``--set section.key=value`` overrides, validated by pydantic
(unknown keys are errors, so a typo never silently falls back to a default). The same model is the
parameter schema of the Prefect deployments, so the UI shows a real form.

The sections live beside the stages that read them (``corpus``, ``train``, ``merge``, ``evaluate``,
``ops``, ``demo``); ``pipeline`` puts them together, ``loader`` reads YAML and overrides into it.
Import any name from ``finmerge.config``.
"""

from finmerge.config.base import ConfigError, Section, sha256_json
from finmerge.config.corpus import (
    CleanConfig,
    CorpusConfig,
    DedupConfig,
    EdinetConfig,
    IngestConfig,
    ParallelConfig,
    WorkersConfig,
)
from finmerge.config.demo import DemoConfig, DemoTrainConfig, TinyModelConfig
from finmerge.config.evaluate import EvaluateConfig, JudgeConfig
from finmerge.config.loader import (
    YAML_NULLS,
    apply_overrides,
    config_from_data,
    field_annotation,
    load_config,
    parse_override,
    validation_problems,
)
from finmerge.config.merge import (
    AnalyzeConfig,
    MergeConfig,
    MergeMethod,
    SweepConfig,
    SweepConstraint,
    SweepObjective,
    TensorRule,
)
from finmerge.config.ops import (
    PromotionGates,
    RegistryConfig,
    RetrainConfig,
    StorageConfig,
    TrackingConfig,
)
from finmerge.config.pipeline import ModelsConfig, PipelineConfig, config_hash
from finmerge.config.reference import reference_markdown
from finmerge.config.strict_yaml import DuplicateKeyError, StrictLoader, parse_yaml, read_yaml
from finmerge.config.train import LaunchConfig, PretrainConfig, TokenizeConfig, TrainConfig

__all__ = [
    "YAML_NULLS",
    "AnalyzeConfig",
    "CleanConfig",
    "ConfigError",
    "CorpusConfig",
    "DedupConfig",
    "DemoConfig",
    "DemoTrainConfig",
    "DuplicateKeyError",
    "EdinetConfig",
    "EvaluateConfig",
    "IngestConfig",
    "JudgeConfig",
    "LaunchConfig",
    "MergeConfig",
    "MergeMethod",
    "ModelsConfig",
    "ParallelConfig",
    "PipelineConfig",
    "PretrainConfig",
    "PromotionGates",
    "RegistryConfig",
    "RetrainConfig",
    "Section",
    "StorageConfig",
    "SweepConfig",
    "SweepConstraint",
    "SweepObjective",
    "StrictLoader",
    "TensorRule",
    "TinyModelConfig",
    "TokenizeConfig",
    "TrackingConfig",
    "TrainConfig",
    "WorkersConfig",
    "apply_overrides",
    "config_from_data",
    "config_hash",
    "field_annotation",
    "load_config",
    "parse_override",
    "parse_yaml",
    "read_yaml",
    "reference_markdown",
    "sha256_json",
    "validation_problems",
]
