"""The embedded demo world and the shape of its tiny models."""

from __future__ import annotations

from pydantic import Field

from finmerge.config.base import Section
from finmerge.config.train import TrainConfig


class DemoTrainConfig(TrainConfig):
    """A demo model's training run; the demo builds its own rows, so it sets their length."""

    seq_len: int = Field(256, description="Tokens per training row of the demo model.")


class TinyModelConfig(Section):
    """Shape of the demo Llama models (and of tiny models in tests)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 6  # depth is cheap at this width (+9% step time for 4 → 6) and helps recall
    num_attention_heads: int = 4
    max_position_embeddings: int = 512


class DemoConfig(Section):
    enabled: bool = Field(True, description="Generate the embedded demo world and build the demo models.")
    seed: int = Field(1234, description="Seed of everything generated: same config, byte-identical world.")
    n_companies: int = Field(
        64,
        description="Listed companies that file annual securities reports: the CPT corpus, and the companies the "
        "finance evaluation asks about.",
    )
    n_background_companies: int = Field(
        80,
        description="Other companies whose clean filings the demo base reads in pretraining (never evaluated), "
        "so the base knows the filing register before CPT.",
    )
    background_years: list[int] = Field(
        [2023], description="Fiscal years of the background companies' filings."
    )
    background_faq: bool = Field(
        True,
        description="Add an IR FAQ page (questions answered with fact sentences) per background company.",
    )
    background_quiz: bool = Field(
        True,
        description="Add a page of multiple-choice quiz questions (with answers) per background company.",
    )
    instruction_company_share: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of the instruction pairs that ask about background companies (never an evaluated one).",
    )
    instruction_context_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the instruction pairs that ask about a short profile of a one-off company given in "
        "the prompt (reading comprehension), so the instruct model copies the asked name and attribute "
        "(configs/demo.yaml: 0.15, with instruct_train.seq_len 144 so that a pair fits; docs/demo.md, run g-G).",
    )
    validation_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of the evaluated companies (and of the probe towns) whose items form the validation "
        "split; the rest are the test split.",
    )
    fact_recaps: int = Field(
        2,
        ge=1,
        description="How often each fact of an evaluated company is restated in the recap lines that close the "
        "narrative sections of each of its filings (besides the sections' own statements): the CPT corpus's "
        "fact density.",
    )
    years: list[int] = Field([2022, 2023], description="Fiscal years with filings in the training corpus.")
    heldout_year: int = Field(2024, description="Year whose filings are held out for finance perplexity.")
    n_towns: int = Field(
        120, description="Towns the general (non-finance) documents and instructions are about."
    )
    n_probe_towns: int = Field(
        40,
        description="Towns of the general corpus that no instruction pair mentions: the general held-out chat "
        "probe asks about them.",
    )
    faq_share: float = Field(
        0.15, ge=0, lt=1, description="Share of the general documents that are a town's FAQ page (Q. … A. …)."
    )
    n_copy_pages: int = Field(
        0,
        ge=0,
        description="Profile pages of one-off companies (each named nowhere else) that the demo base reads once, "
        "half before the rest of its corpus and half mixed into it: where it learns to copy a name it never saw, "
        "as chat answers about a company need (docs/demo.md, run g-G). configs/demo.yaml reads 10000 (+66 % "
        "base steps); 0 here keeps small test worlds small.",
    )
    n_general_docs: int = Field(3000, description="General Japanese documents the demo base is trained on.")
    n_instructions: int = Field(
        2500, description="General instruction pairs the demo instruct model is tuned on."
    )
    exact_dup_rate: float = Field(
        0.10, description="Share of filings saved again as an exact copy (another id and file form)."
    )
    near_dup_rate: float = Field(
        0.08,
        description="Share of filings followed by an amended filing (訂正有価証券報告書): a near duplicate.",
    )
    junk_rate: float = Field(0.05, description="Junk documents added, as a share of the filings.")
    non_japanese_rate: float = Field(0.05, description="English documents added, as a share of the filings.")
    model: TinyModelConfig = TinyModelConfig()
    base_train: DemoTrainConfig = DemoTrainConfig(epochs=6.0, lr=2e-3, warmup_steps=30)
    # Gentle and without weight decay: decay shrinks the same weights in both fine-tunes, which aligns τ_inst
    # with τ_fin (cos 0.096 with it, -0.009 without, in docs/demo.md).
    instruct_train: DemoTrainConfig = DemoTrainConfig(
        epochs=1.0, lr=3e-4, warmup_steps=10, batch_size=16, seq_len=96, weight_decay=0.0
    )
