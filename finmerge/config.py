"""One typed config for the whole pipeline.

Loaded from YAML (``configs/*.yaml``) with ``--set section.key=value`` overrides, validated by pydantic
(unknown keys are errors, so a typo never silently falls back to a default). The same model is the
parameter schema of the Prefect deployments, so the UI shows a real form.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Dtype = Literal["float32", "bfloat16", "float16"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """Content hash of this section (goes into the cache key of the stages that read it)."""
        return sha256_json(self.model_dump(mode="json"))


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
        None, description="Artifact root for a new experiment (local store default: .finmerge/mlartifacts)."
    )
    experiment: str = "finmerge"


class TinyModelConfig(Section):
    """Shape of the demo Llama models (and of tiny models in tests)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 512


class TrainConfig(Section):
    """Hyper-parameters of one causal-LM training run (nanoGPT-style loop, see finmerge/train/pretrain.py)."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 20
    epochs: float = 1.0
    max_steps: int | None = Field(
        None, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = 16
    grad_accum: int = 1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seq_len: int = 256
    seed: int = 0
    max_tokens: int | None = Field(
        None, description="Token budget: stop after this many training tokens (overrides epochs)."
    )
    precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="Mixed precision through accelerate; auto = bf16 on GPUs that support it, else fp32.",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    compile: bool = Field(
        False,
        description="torch.compile the model in place (GPU: ~1.4x tokens/s on a 1B Llama; the first steps "
        "compile).",
    )
    log_every: int = 10
    eval_every: int = 50
    threads: int | None = Field(None, description="torch CPU threads (default: all cores).")
    deterministic: bool = Field(
        False, description="torch.use_deterministic_algorithms: bitwise-reproducible runs, somewhat slower."
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="Save a resumable checkpoint (weights, optimizer, scheduler, RNG, data "
        "position) every N optimizer steps; none = no checkpoints.",
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted (keep-last-K).")
    keep_steps: list[int] = Field(
        [], description="Checkpoint steps never pruned; the pipeline also registers them in the cpt line."
    )
    peak_tflops: float | None = Field(
        None,
        description="Peak dense TFLOP/s per device for the MFU estimate; default: a table of known "
        "GPUs (bf16), or a matmul measured at start on CPU.",
    )


class DemoConfig(Section):
    enabled: bool = Field(True, description="Generate the embedded demo world and build the demo models.")
    seed: int = 1234
    n_companies: int = 40
    years: list[int] = [2022, 2023]
    heldout_year: int = 2024
    n_towns: int = 120
    n_general_docs: int = 3000
    n_instructions: int = 2500
    exact_dup_rate: float = 0.10
    near_dup_rate: float = 0.08
    junk_rate: float = 0.05
    non_japanese_rate: float = 0.05
    model: TinyModelConfig = TinyModelConfig()
    base_train: TrainConfig = TrainConfig(epochs=8.0, lr=2e-3, warmup_steps=30)
    instruct_train: TrainConfig = TrainConfig(epochs=2.0, lr=5e-4, warmup_steps=10, batch_size=16, seq_len=96)


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


class EdinetConfig(Section):
    """EDINET API v2 connector: lists filings by file date and downloads new ones before ingest."""

    enabled: bool = Field(False, description="Fetch new filings from EDINET before ingesting.")
    base_url: str = "https://api.edinet-fsa.go.jp/api/v2"
    start: str | None = Field(None, description="First file date to list (YYYY-MM-DD).")
    end: str | None = Field(None, description="Last file date to list (YYYY-MM-DD). Default: today.")
    doc_types: list[str] = Field(
        default_factory=lambda: ["120"], description="docTypeCode values to fetch (120 = 有価証券報告書)."
    )
    package: Literal["xbrl", "csv"] = Field(
        "xbrl", description="Which package to download: xbrl (type=1 ZIP) or csv (type=5 ZIP, UTF-16 TSV)."
    )
    download_uri: str | None = Field(
        None, description="Where raw packages are kept (fsspec URI). Default: <storage.uri>/edinet."
    )
    max_concurrency: int = Field(8, ge=1, le=32, description="Parallel downloads (EDINET plateaus at ~8).")
    retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles each try, with jitter.")
    timeout_s: float = Field(60.0, gt=0)
    relist_days: int = Field(
        7, ge=0, description="Re-list this many days before the last listed date (withdrawals, edits)."
    )
    api_key_env: str = Field("EDINET_API_KEY", description="Environment variable holding the API key.")
    api_key_block: str | None = Field(
        None, description="Prefect Secret block holding the API key (used when the variable is unset)."
    )

    @field_validator("start", "end")
    @classmethod
    def _iso_date(cls, v: str | None) -> str | None:
        from datetime import date  # local: only this section needs it

        if v is not None:
            date.fromisoformat(str(v))  # ValueError names the bad value
        return v

    @field_validator("doc_types", mode="before")
    @classmethod
    def _doc_type_codes(cls, v: Any) -> Any:
        # YAML reads 120 as an int and 030 as 30: codes are three-digit strings.
        if isinstance(v, list):
            return [f"{x:03d}" if isinstance(x, int) else x for x in v]
        return v

    @model_validator(mode="after")
    def _ordered(self) -> EdinetConfig:
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class IngestConfig(Section):
    sources: list[str] = Field(
        default_factory=list,
        description="fsspec URIs or globs of raw documents (.jsonl, .txt, .html, EDINET .zip). With the "
        "demo on, these are read in addition to the demo filings.",
    )
    text_field: str = "text"
    max_file_mb: int = Field(256, ge=1, description="Larger files (other than JSONL) are quarantined unread.")
    max_line_mb: int = Field(16, ge=1, description="Longer JSONL lines are quarantined; the rest is kept.")
    edinet: EdinetConfig = EdinetConfig()


class ParallelConfig(Section):
    """How the corpus stages spread shards over cores or a cluster."""

    backend: Literal["serial", "process", "dask"] = Field(
        "process",
        description="serial; process = a local process pool; dask = a Dask cluster (prefect-dask's, or "
        "dask_address, else a local one).",
    )
    workers: int = Field(0, ge=0, description="Processes / Dask workers. 0 = all cores.")
    dask_address: str | None = Field(None, description="Dask scheduler, e.g. tcp://scheduler:8786.")
    shard_docs: int = Field(500, ge=1, description="Documents per shard sent to a worker.")


class CleanConfig(Section):
    """Quality filters and text modification for Japanese filings (see ``finmerge/corpus/textclean.py``).

    Defaults start from Swallow corpus v1 (Okazaki et al. 2024) and llm-jp / HojiChar, adapted to filing
    sections: shorter units than web pages, kanji- and number-heavy, long legal sentences, formulaic phrasing.
    Ratios are over non-whitespace characters of the cleaned text.
    """

    min_chars: int = Field(
        80,
        ge=0,
        description="Minimum characters after cleaning. Swallow: 400; a filing section is a shorter unit.",
    )
    max_chars: int = Field(100_000, ge=1, description="Maximum characters after cleaning.")
    max_ng_word_ratio: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Maximum share of characters inside NG words (Swallow: < 0.05). A share, not a hit count, "
        "so one accidental match (アスパラガス contains アス) never drops a filing.",
    )
    ng_words: list[str] = Field(
        default_factory=lambda: ["アダルト", "出会い系", "カジノ無料", "今すぐクリック"],
        description="NG words, matched with an Aho-Corasick automaton after NFKC.",
    )
    ng_words_uri: str | None = Field(
        None, description="Extra NG-word list: a text file at any fsspec URI, one word per line, # comments."
    )
    min_japanese_ratio: float = Field(
        0.5, ge=0, le=1, description="Minimum share of kana and kanji (Swallow: 0.5)."
    )
    min_hiragana_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Minimum hiragana share. Swallow: 0.2; filing prose is kanji- and number-heavy "
        "(当連結会計年度の売上高は…).",
    )
    max_katakana_ratio: float = Field(0.5, ge=0, le=1, description="Maximum katakana share (Swallow: 0.5).")
    max_symbol_ratio: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Maximum share of symbols (Unicode S*/P*), not counting the punctuation of ordinary prose "
        "and figures (、。「」()%…).",
    )
    max_digit_ratio: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Maximum digit share. Web recipes drop number-heavy pages; filings are number-heavy by nature, "
        "so this only catches figure dumps that the table policy missed.",
    )
    min_mean_sentence_chars: float = Field(
        10,
        ge=0,
        description="Minimum mean sentence length (non-space characters per sentence ending in 。!?). Swallow: "
        "20; filings have short numbered headings such as (1) 経営方針.",
    )
    max_mean_sentence_chars: float = Field(
        250,
        ge=1,
        description="Maximum mean sentence length. Swallow: 90, HojiChar: 100, llm-jp: 250; legal sentences in "
        "filings are long, so llm-jp's bound: it still drops text without 。 (lists, navigation, tables).",
    )
    max_dup_line_ratio: float = Field(
        0.3, ge=0, le=1, description="Maximum share of lines that repeat an earlier line (Swallow: 0.30)."
    )
    max_top_ngram_share: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="Per n: maximum share of characters covered by the most frequent character n-gram "
        "(Swallow / Gopher: 0.20 / 0.18 / 0.16).",
    )
    max_dup_ngram_share: dict[int, float] = Field(
        default_factory=lambda: {5: 0.8, 6: 0.77, 7: 0.74, 8: 0.71, 9: 0.68, 10: 0.65},
        description="Per n: maximum share of characters covered by character n-grams that occur more than once. "
        "Swallow: 0.15 … 0.10 for n = 5 … 10, which drops almost every filing section (company names, "
        "当社グループ, 影響を及ぼす可能性があります recur by design); here it only catches text repeated wholesale.",
    )
    drop_sections: list[str] = Field(
        default_factory=lambda: ["表紙", "証券情報", "主要な経営指標等の推移"],
        description="Sections dropped whole: cover page, securities information, the financial-highlights table.",
    )
    mask_pii: bool = Field(
        True, description="Mask e-mail addresses (`<EMAIL>`) and phone numbers (`<PHONE>`)."
    )
    mask_names: bool = Field(
        False,
        description="Mask personal names that follow an officer's title and a space (`代表取締役社長 山田 太郎` → "
        "`代表取締役社長 <NAME>`); names in running text without a title are not caught.",
    )


class DedupConfig(Section):
    """Exact + MinHash-LSH near-duplicate removal (see ``finmerge/corpus/dedup.py``, ``finmerge/corpus/minhash.py``).

    Two texts of character-n-gram Jaccard J share a band with probability P(J) = 1 - (1 - J^rows)^bands; the
    curve's midpoint is about (1/bands)^(1/rows). Defaults 24 × 10: P(0.85) = 0.995, P(0.8) = 0.93,
    P(0.7) = 0.50, P(0.5) = 0.02, midpoint 0.73; candidates are then confirmed at ``threshold``.
    """

    ngram: int = Field(
        5, ge=1, description="Character n-gram length of the shingles (Swallow, HojiChar, Doubri: 5)."
    )
    bands: int = Field(
        24,
        ge=1,
        description="LSH bands b. More bands catch lower Jaccard: P(J) = 1 - (1 - J^r)^b. The index holds "
        "b band keys (12 bytes each) per kept document.",
    )
    rows: int = Field(
        10,
        ge=1,
        description="Signature values per band r (b × r values per document, one-permutation hashing, so "
        "the cost barely grows with them). More rows make the curve steeper; midpoint ≈ (1/b)^(1/r).",
    )
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A candidate pair is a duplicate when the exact Jaccard of its n-gram sets is at least this "
        "(only with verify). Below the 0.85 target so pairs just above it are never lost to the check.",
    )
    verify: bool = Field(
        True,
        description="Confirm LSH candidates by exact Jaccard on the n-gram sets (texts are read back by byte "
        "offset). Off: every candidate pair is a duplicate, as in Swallow / datatrove (faster, false positives "
        "around the curve midpoint).",
    )
    keep: Literal["earliest", "longest"] = Field(
        "earliest",
        description="Which member of a duplicate cluster survives: earliest = earliest filing_date (undated "
        "last), then input order (earlier batches first); longest = most characters, then input order. A new "
        "document that wins over one kept by an earlier batch retracts it.",
    )
    seed: int = Field(
        42,
        description="Seed of the n-gram hash (changing it, or ngram/bands/rows, re-signs the lineage's index).",
    )


class CorpusConfig(Section):
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    parallel: ParallelConfig = ParallelConfig()


class TokenizeConfig(Section):
    """Tokenise the clean corpus with the base tokenizer, EOS after each document, pack without padding."""

    seq_len: int = 256
    shard_blocks: int = Field(8192, ge=1, description="Packed blocks per shard file (memory-mapped .npy).")
    batch_docs: int = Field(512, ge=1, description="Documents encoded per worker call.")
    parallel: ParallelConfig = Field(
        ParallelConfig(backend="serial"),
        description="Where encoding runs (same options as corpus.parallel); packing stays in order.",
    )


class LaunchConfig(Section):
    """How the pretrain stage runs: in the flow's process, or as `accelerate launch` / torchrun children."""

    processes: int = Field(
        1, ge=1, description="Processes on this node (one per GPU); > 1 launches a child job."
    )
    accelerate_config: str | None = Field(
        None,
        description="accelerate config file (e.g. infra/accelerate/fsdp.yaml); given = launch a child job.",
    )
    extra_args: list[str] = Field(
        [], description="More `accelerate launch` arguments (multi-node: --num_machines, --main_process_ip…)."
    )


class PretrainConfig(TrainConfig):
    epochs: float = 4.0
    lr: float = 5e-4
    warmup_steps: int = 20
    checkpoint_every: int | None = Field(
        100, ge=1, description="Save a resumable checkpoint every N optimizer steps; none = no checkpoints."
    )
    launch: LaunchConfig = LaunchConfig()


MergeMethod = Literal["task_arithmetic", "linear", "ties", "dare_ties", "dare_linear", "slerp"]


class TensorRule(Section):
    """Per-tensor override, matched by ``re.search`` on the tensor name; the first matching rule wins."""

    pattern: str = Field(description="Regex on the tensor name, e.g. 'embed_tokens|lm_head' or 'norm'.")
    source: Literal["merge", "base", "instruct", "domain"] = Field(
        "merge", description="merge = merge this tensor; a model name = copy it from that model unchanged."
    )
    method: MergeMethod | None = Field(None, description="Another method for these tensors.")
    alpha: float | None = Field(None, description="Instruction-vector weight for these tensors.")
    beta: float | None = Field(None, description="Domain-vector weight for these tensors.")
    density: float | None = Field(None, gt=0, le=1, description="ties / dare density for these tensors.")
    t: float | None = Field(None, description="slerp t for these tensors.")


class MergeConfig(Section):
    """How θ_base, θ_inst and θ_cpt become one model (finmerge/merge/execute.py, finmerge/merge/methods.py).

    Methods follow mergekit 0.1.5 semantics (a mergekit YAML can be given instead of this section):
    task_arithmetic = base + α·τ_inst + β·τ_fin; linear = (α·θ_inst + β·θ_cpt)/(α+β); ties = magnitude
    top-k per vector (density), sign consensus by weighted sum, mean over agreeing vectors (normalize);
    dare_ties / dare_linear = random drop (density, seeded per tensor) with L1 rescale, with / without the
    sign consensus; slerp = spherical interpolation row by row from θ_inst (t=0) to θ_cpt (t=1).
    """

    method: MergeMethod = "task_arithmetic"
    alpha: float = Field(1.0, description="Weight of the instruction vector (instruct - base).")
    beta: float = Field(1.0, description="Weight of the domain vector (cpt - base).")
    density: float = Field(
        0.5, gt=0, le=1, description="ties / dare: fraction of each task vector kept (per tensor)."
    )
    density_instruct: float | None = Field(
        None, gt=0, le=1, description="Density of τ_inst (default: density)."
    )
    density_domain: float | None = Field(None, gt=0, le=1, description="Density of τ_fin (default: density).")
    normalize: bool | None = Field(
        None, description="Divide by the summed weights (of agreeing vectors); default: ties yes, others no."
    )
    rescale: bool | None = Field(None, description="dare: rescale kept values to the L1 norm; default yes.")
    lambda_scale: float = Field(1.0, description="Scale of the combined task vector (mergekit's lambda).")
    t: float = Field(0.5, description="slerp: 0 = θ_inst, 1 = θ_cpt.")
    seed: int = Field(0, description="dare: random seed (each tensor draws from seed + a hash of its name).")
    rules: list[TensorRule] = Field(
        default_factory=list, description="Per-tensor overrides, first match wins."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Output dtype; auto = the instruct model's torch_dtype."
    )
    shard_size_mb: int = 1000
    exclude: list[str] = Field(
        default_factory=list, description="Regexes of tensor names taken from the domain model unmerged."
    )


class AnalyzeConfig(Section):
    enabled: bool = True


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
        65_536, ge=256, description="Upper bound on padded tokens per forward batch (bounds memory)."
    )
    heldout: str | None = Field(
        None, description="JSONL of held-out finance text for perplexity. Default: demo."
    )
    chat_questions: str | None = Field(None, description="JSONL of chat finance questions. Default: demo.")
    adherence_regex: str = Field(
        r"^回答[：:][^\n]{2,}$",
        description="A chat reply adheres when it fully matches this and ends with EOS (the colon may come back "
        "half-width from an NFKC tokenizer).",
    )
    batch_size: int = 16
    max_new_tokens: int = 48
    max_heldout_tokens: int = 60_000
    judge: JudgeConfig = JudgeConfig()


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


class RegistryConfig(Section):
    cpt_name: str = "finmerge-cpt"
    merged_name: str = "finmerge-merged"
    new_alias: str = Field("challenger", description="Alias set on every new merged version.")
    champion_alias: str = "champion"
    previous_alias: str = Field(
        "previous",
        description="Alias kept on the champion a promotion replaced (finmerge rollback returns to it).",
    )
    bootstrap_champion: bool = Field(True, description="Make the first merged version champion.")
    gates: PromotionGates = PromotionGates()

    @field_validator("new_alias", "champion_alias", "previous_alias")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()  # MLflow alias names are case-insensitive


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


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def config_hash(cfg: PipelineConfig) -> str:
    return sha256_json(cfg.model_dump(mode="json"))[:16]


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mapping constructor refuses a key repeated in one mapping (PyYAML keeps the
    last silently). Keys brought in by a ``<<`` merge may be overridden, as YAML intends; only the keys
    written in the mapping itself are checked.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._strict_root = node  # to name the dotted path of a duplicate (looked up only on error)
        return super().construct_document(node)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Called first by construct_mapping (and for each merged mapping) before the node is rewritten,
        # so the check sees the keys as written.
        checked = self.__dict__.setdefault("_strict_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            self._check_duplicates(node)
        super().flatten_mapping(node)

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if first is not None:
                where = _node_path(getattr(self, "_strict_root", None), node)
                dotted = f"{where}.{key}" if where else str(key)
                raise DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {dotted!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


def _node_path(root: yaml.Node | None, target: yaml.Node) -> str:
    """Dotted path (``a.b[2].c``) of ``target`` under ``root``; '' for the root or when not found."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:  # anchors / aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                label = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack.append((v, f"{path}.{label}" if path else str(label)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node.value))
    return ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: 'line N, column M: problem' for a marked error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return " ".join(f"{where}{problem}".split())
    return " ".join(str(exc).split())


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with :class:`StrictLoader`; errors are one-line ``ConfigError`` naming source and line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML at {_yaml_problem(exc)}") from exc


def read_yaml(path: str | os.PathLike) -> Any:
    """Read one YAML file strictly: a repeated key or a syntax error is a ``ConfigError`` naming the file,
    the line and (for duplicates) the key's dotted path. An empty file reads as None."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read config (not UTF-8: {exc.reason})") from exc
    return parse_yaml(text, source)


def _unwrap(ann: Any) -> tuple[list[Any], bool]:
    """Members of a (possibly Optional / Annotated) annotation, and whether None is allowed."""
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    if get_origin(ann) in (Union, types.UnionType):
        members = [a for a in get_args(ann) if a is not type(None)]
        return members, len(members) != len(get_args(ann))
    return [ann], ann is None or ann is type(None)


def field_annotation(path: list[str], model: type[BaseModel] | None = None) -> Any:
    """Annotation of the field a dotted ``--set`` path names in :class:`PipelineConfig` (None: no such field)."""
    ann: Any = model or PipelineConfig
    for part in path:
        members, _ = _unwrap(ann)
        if len(members) != 1:
            return None
        ann = members[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
        elif get_origin(ann) is dict:
            ann = get_args(ann)[1]
        else:
            return None
    return ann


def _is_text(ann: Any) -> tuple[bool, bool]:
    """(every non-None member is str or a Literal of strings, None allowed)."""
    if ann is None:
        return False, False
    members, nullable = _unwrap(ann)
    for m in members:
        while get_origin(m) is Annotated:
            m = get_args(m)[0]
        if m is str:
            continue
        if get_origin(m) is Literal and all(isinstance(a, str) for a in get_args(m)):
            continue
        return False, nullable
    return bool(members), nullable


YAML_NULLS = ("null", "Null", "NULL", "~")


class _TextLoader(StrictLoader):
    """Every plain scalar stays a string (no dates, booleans, octal numbers): for lists / maps of strings."""

    yaml_implicit_resolvers: dict = {}


def _holds_text(ann: Any) -> bool:
    """A list / set / tuple of strings, or a dict whose values are strings."""
    members, _ = _unwrap(ann)
    if len(members) != 1 or get_origin(members[0]) not in (list, set, tuple, dict):
        return False
    args = [a for a in get_args(members[0]) if a is not Ellipsis]
    return bool(args) and _is_text(args[-1])[0]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value``, typed by the field it sets: a string field (str, str | None, Literal of
    strings) takes the raw text, so ``start=2024-06-17`` or ``name=no`` stay strings (``null`` / ``~``
    still unset an optional string); a list of strings is parsed as YAML with every item kept a string
    (``doc_types=[030, 120]``); other fields take the value parsed as YAML (numbers, booleans, lists, maps).
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r}: empty key")
    ann = field_annotation(path)
    text, nullable = _is_text(ann)
    if text:
        if nullable and raw.strip() in YAML_NULLS:
            return path, None
        return path, _unquoted(raw)
    loader = _TextLoader if _holds_text(ann) else StrictLoader
    try:
        value = yaml.load(raw, Loader=loader) if raw.strip() else ""  # noqa: S506
    except yaml.YAMLError as exc:
        if isinstance(exc, DuplicateKeyError):
            raise ConfigError(f"override {item!r}: {_yaml_problem(exc)}") from exc
        value = raw
    if isinstance(value, bool) and _is_number(ann):  # pydantic would read no / off / false as 0
        raise ConfigError(f"override {item!r}: {'.'.join(path)}: expected a number, got {raw.strip()!r}")
    return path, value


def _unquoted(raw: str) -> str:
    """A YAML-quoted scalar ('…' or "…", as shells and earlier docs pass them) loses its quotes; any
    other text is kept exactly."""
    stripped = raw.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        try:
            value = yaml.safe_load(stripped)
        except yaml.YAMLError:
            return raw
        if isinstance(value, str):
            return value
    return raw


def _is_number(ann: Any) -> bool:
    members, _ = _unwrap(ann)
    return bool(members) and all(m in (int, float) for m in members)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def validation_problems(exc: ValidationError, prefix: str = "") -> str:
    """pydantic errors as ``dotted.key: reason; …`` on one line."""
    out = []
    for err in exc.errors():
        key = ".".join(([prefix] if prefix else []) + [str(p) for p in err["loc"]]) or "<root>"
        out.append(f"{key}: {' '.join(err['msg'].split())}")
    return "; ".join(out)


def config_from_data(
    data: Any, overrides: list[str] | None = None, source: str = "<defaults>"
) -> PipelineConfig:
    """Validate an already-read YAML document (None = empty) with ``--set`` overrides on top."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    data = apply_overrides(data, list(overrides or []))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_problems(exc)}") from exc


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML strictly, apply ``section.key=value`` overrides, validate. Errors name the file and the key."""
    if path is None:
        return config_from_data({}, overrides)
    return config_from_data(read_yaml(path), overrides, str(path))


def reference_markdown() -> str:
    """The config reference (docs/config.md): every field with its type, default and description."""
    rows: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, path + ".")
                continue
            default = field.get_default(call_default_factory=True)
            kind = str(ann).replace("typing.", "") if get_args(ann) else getattr(ann, "__name__", str(ann))
            kind = kind.replace("|", "\\|")
            desc = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{path}` | {kind} | `{json.dumps(default, ensure_ascii=False)}` | {desc} |")

    walk(PipelineConfig, "")
    return (
        "# Configuration reference\n\nGenerated by `finmerge config reference` from `finmerge/config.py`; "
        "a test keeps it in step. Set any field in YAML or with `--set path=value`.\n\n"
        "| field | type | default | description |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
