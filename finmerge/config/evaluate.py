"""Sections of the evaluation: the fin-harness tasks, perplexity, the chat probes, the LLM judge and the
confidence intervals."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finmerge.config.base import Section


class JudgeConfig(Section):
    """LLM-as-judge on pfmt-bench-fin-ja style questions through an OpenAI-compatible endpoint."""

    questions: str | None = Field(
        None,
        description="question.jsonl in the pfmt-bench-fin-ja format ({question_id, category, turns: [t1, t2]}). "
        "None: no judged evaluation.",
    )
    reference_answers: str | None = Field(
        None, description="JSONL of reference answers (FastChat answer format), shown to the judge for math."
    )
    url: str | None = Field(None, description="Base URL of the OpenAI-compatible API, e.g. https://host/v1.")
    model: str = Field("gpt-4o-mini", description="Judge model name sent to the endpoint.")
    api_key_env: str = Field(
        "FINMERGE_JUDGE_API_KEY", description="Environment variable holding the judge API key (never logged)."
    )
    api_key_block: str | None = Field(
        None, description="Prefect Secret block holding the key (used when the variable is unset)."
    )
    template: Literal["model", "one_shot"] = Field(
        "model",
        description="How answers are generated: the model's own chat template, or FastChat's one_shot text template.",
    )
    max_new_tokens: int = Field(512, ge=1, description="Answer length cap per turn.")
    judge_max_tokens: int = Field(2048, ge=1)
    max_tries: int = Field(5, ge=1, description="Judge calls per answer until a [[rating]] parses.")
    timeout_s: float = Field(120.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64, description="Judge requests in flight.")
    limit: int | None = Field(None, ge=1, description="Judge only the first N questions (smoke runs).")
    seed: int = 0


class EvaluateConfig(Section):
    harness_data: list[str] = Field(
        default_factory=list,
        description="Folders laid out like japanese-lm-fin-harness datasets (cma_basics/data.json, fp2/data.json, "
        "security_sales_1/data.json, cpa/CPA_AUDIT.xlsx, chabsa/e*_ann.json). Empty: the demo set.",
    )
    prompt_version: str = Field(
        "1.0-0.2.1",
        description="One harness prompt version, a comma list, or 'all' (the nine; the best version's average "
        "is reported as the leaderboard does).",
    )
    kv_reuse: bool = Field(
        True,
        description="Score every choice from its item's KV cache and share the task's common prompt prefix "
        "(exact; off = one full forward row per distinct request, as lm-eval).",
    )
    cpa_nan_choice: bool = Field(
        True,
        description="Keep cpa_audit's literal 'nan' sixth choice where the cell is empty, as the harness "
        "(and its leaderboard) does.",
    )
    max_batch_tokens: int = Field(
        65_536,
        ge=256,
        description="Upper bound on padded tokens per forward batch (bounds memory), on the packed KV path "
        "and the row path.",
    )
    heldout: str | None = Field(
        None, description="JSONL of held-out finance text for perplexity. Default: demo."
    )
    chat_questions: str | None = Field(None, description="JSONL of chat finance questions. Default: demo.")
    general_questions: str | None = Field(
        None,
        description="JSONL of general chat questions ({id, question, answers}) on facts the base model learned "
        "in pretraining and the instruction data never shows; scored like the finance chat probe "
        "(general/adherence, general/answer_acc): does the merge keep what the base knew? Default: demo.",
    )
    adherence_regex: str = Field(
        r"^回答[：:][^\n]{2,}$",
        description="A chat reply adheres when it fully matches this and ends with EOS (the colon may come back "
        "half-width from an NFKC tokenizer).",
    )
    bootstrap_samples: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples behind the confidence interval of every score (harness items, chat "
        "questions and perplexity windows resampled; <score>/ci_low and <score>/ci_high). 0: no intervals.",
    )
    ci_level: float = Field(
        0.95, gt=0, lt=1, description="Coverage of the percentile bootstrap intervals (0.95: 2.5% to 97.5%)."
    )
    bootstrap_seed: int = Field(
        0,
        ge=0,
        description="Seed of the bootstrap; each score's stream is derived from it and the score's name, so "
        "the same config gives the same intervals.",
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Rows per batch on the row path and in generation (the packed path is bounded by "
        "max_batch_tokens only).",
    )
    max_new_tokens: int = 48
    max_heldout_tokens: int = 60_000
    judge: JudgeConfig = JudgeConfig()
