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
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 512


class DemoConfig(Section):
    enabled: bool = Field(True, description="Generate the embedded demo world and build the demo models.")
    seed: int = Field(1234, description="Seed of everything generated: same config, byte-identical world.")
    n_companies: int = Field(40, description="Listed companies that file annual securities reports.")
    years: list[int] = Field([2022, 2023], description="Fiscal years with filings in the training corpus.")
    heldout_year: int = Field(2024, description="Year whose filings are held out for finance perplexity.")
    n_towns: int = Field(
        120, description="Towns the general (non-finance) documents and instructions are about."
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
    base_train: DemoTrainConfig = DemoTrainConfig(epochs=8.0, lr=2e-3, warmup_steps=30)
    instruct_train: DemoTrainConfig = DemoTrainConfig(
        epochs=2.0, lr=5e-4, warmup_steps=10, batch_size=16, seq_len=96
    )
