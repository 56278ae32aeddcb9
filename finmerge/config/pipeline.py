"""The whole pipeline's config: every section, the input models and the config hash."""

from __future__ import annotations

from pydantic import Field, model_validator

from finmerge.config.base import Section, sha256_json
from finmerge.config.corpus import CorpusConfig
from finmerge.config.demo import DemoConfig
from finmerge.config.evaluate import EvaluateConfig
from finmerge.config.merge import AnalyzeConfig, MergeConfig
from finmerge.config.ops import RegistryConfig, RetrainConfig, StorageConfig, TrackingConfig
from finmerge.config.train import PretrainConfig, TokenizeConfig


class ModelsConfig(Section):
    base: str | None = Field(
        None, description="Base causal LM (local path or s3:// URI). Default: the demo base."
    )
    instruct: str | None = Field(
        None, description="Its instruction-tuned sibling. Default: the demo instruct model."
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model folders.")
    allow_pickle: bool = Field(
        False,
        description="Accept pickle-only (.bin/.pt) input checkpoints. Off: they are refused, never unpickled. "
        "On: they are loaded with torch.load(weights_only=True) and converted to safetensors in staging first.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> ModelsConfig:
        if (self.base is None) != (self.instruct is None):
            raise ValueError(
                "models.base and models.instruct must be given together (or both left to the demo)"
            )
        return self


class PipelineConfig(Section):
    name: str = "demo"
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    demo: DemoConfig = DemoConfig()
    models: ModelsConfig = ModelsConfig()
    corpus: CorpusConfig = CorpusConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    pretrain: PretrainConfig = PretrainConfig()
    merge: MergeConfig = MergeConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _needs_models(self) -> PipelineConfig:
        if not self.demo.enabled and self.models.base is None:
            raise ValueError("demo.enabled is false: set models.base and models.instruct")
        if not self.demo.enabled and not self.corpus.ingest.sources:
            raise ValueError("demo.enabled is false: set corpus.ingest.sources")
        return self


def config_hash(cfg: PipelineConfig) -> str:
    return sha256_json(cfg.model_dump(mode="json"))[:16]
