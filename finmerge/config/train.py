"""Sections of tokenisation and training: the training loop's hyper-parameters, the pretrain stage and its launch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finmerge.config.base import Section
from finmerge.config.corpus import WorkersConfig


class TrainConfig(Section):
    """Hyper-parameters of one causal-LM training run (nanoGPT-style loop, see finmerge/train/loop.py).

    No block length here: the loop trains on rows of the length its data has (for the pretrain stage,
    the ``tokenize.seq_len`` its tokens folder was packed with).
    """

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
    peak_tflops: float | None = Field(
        None,
        description="Peak dense TFLOP/s per device for the MFU estimate; default: a table of known "
        "GPUs (bf16), or a matmul measured at start on CPU.",
    )


class TokenizeConfig(Section):
    """Tokenise the clean corpus with the base tokenizer, EOS after each document, pack without padding."""

    seq_len: int = Field(
        256, description="Tokens per packed block: the block length the pretrain stage trains on."
    )
    shard_blocks: int = Field(8192, ge=1, description="Packed blocks per shard file (memory-mapped .npy).")
    batch_docs: int = Field(512, ge=1, description="Documents encoded per worker call.")
    parallel: WorkersConfig = Field(
        WorkersConfig(backend="serial"),
        description="Where encoding runs (backend, workers, dask_address as in corpus.parallel; chunks of "
        "batch_docs documents); packing stays in order.",
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
    # Checkpoints belong to the pretrain stage: the demo's training runs keep none.
    checkpoint_every: int | None = Field(
        100,
        ge=1,
        description="Save a resumable checkpoint (weights, optimizer, scheduler, RNG, data "
        "position) every N optimizer steps; none = no checkpoints.",
    )
    keep_last: int = Field(2, ge=1, description="Checkpoints kept; older ones are deleted (keep-last-K).")
    keep_steps: list[int] = Field(
        [], description="Checkpoint steps never pruned; the pipeline also registers them in the cpt line."
    )
    launch: LaunchConfig = LaunchConfig()
