"""Causal-LM training loop on Hugging Face accelerate: one process, DDP, FSDP or DeepSpeed, same code.

Readable like nanoGPT: AdamW (no decay on norms and biases), linear warm-up then cosine / linear /
constant decay (a torch ``LambdaLR``), gradient accumulation and clipping, a seeded global data order per
epoch. accelerate owns devices, mixed precision, gradient sync and sharding (``accelerate launch`` /
torchrun choose the engine); this loop owns the data order, the schedule and the checkpoints.

Data order is global: at each micro-step the next ``batch_size × processes`` rows of the epoch's
permutation are taken and rank r trains on its slice, so the position is one cursor that a checkpoint
records and any world size can resume.

Resume is exact: a checkpoint restores weights, optimizer, scheduler, every rank's RNG and the cursor, so on
CPU with ``deterministic`` a run killed and resumed ends bitwise equal to one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from finmerge.config import TrainConfig
from finmerge.train import flops

LogFn = Callable[[int, dict[str, float]], None]


class Rows(Protocol):
    """Training rows of one length: the loop takes its block length from the data, never from config."""

    @property
    def seq_len(self) -> int: ...
    def __len__(self) -> int: ...
    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class TrainData:
    """Rows of equal length; ``labels`` -100 marks positions that do not count in the loss."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = self.input_ids[idx].long()
        out = {"input_ids": ids, "labels": ids.clone() if self.labels is None else self.labels[idx].long()}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask[idx].long()
        return out


@dataclass
class BlockData:
    """Packed token blocks read on demand from memory-mapped shards (anything with ``rows(idx)``)."""

    blocks: Any

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def seq_len(self) -> int:
        return int(self.blocks.shape[1])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(np.ascontiguousarray(self.blocks.rows(idx.numpy()), dtype=np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    seq_len: int
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    accelerator: Any = None
    model: Any = None  # the prepared (possibly wrapped / sharded) model

    @property
    def final_loss(self) -> float:
        losses = [h["loss"] for h in self.history if "loss" in h]
        return float(np.mean(losses[-3:])) if losses else float("nan")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The complete weights gathered from every rank (a collective: call it on all ranks)."""
        return self.accelerator.get_state_dict(self.model)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - progress)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(n_rows: int, seq_len: int, cfg: TrainConfig, processes: int = 1) -> int:
    """Optimizer steps: ``max_steps``, else the token budget, else ``epochs`` over ``n_rows`` rows of
    ``seq_len`` tokens."""
    rows_per_step = cfg.batch_size * cfg.grad_accum * processes
    if cfg.max_steps:
        return cfg.max_steps
    if cfg.max_tokens:
        return max(1, math.ceil(cfg.max_tokens / (rows_per_step * seq_len)))
    return max(1, math.ceil(n_rows * cfg.epochs / rows_per_step))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters (CPU and CUDA); the per-parameter loop costs ~3× on CPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def row_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # cpu=True on CPU-only hosts: without it accelerate ignores a torchrun world (MULTI_CPU over gloo).
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.grad_accum,
    )


@torch.no_grad()
def eval_loss(model: torch.nn.Module, data: Rows, batch_size: int, device=None) -> float:
    """Mean token loss over ``data`` (every rank computes the same value; FSDP needs all ranks here)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        b = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        if device is not None:
            b = {k: v.to(device) for k, v in b.items()}
        n = int((b["labels"][:, 1:] != -100).sum())
        total += float(model(**b).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


class _Position:
    """Where the global data order stands: epoch, cursor into that epoch's permutation."""

    def __init__(self, n_rows: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.n, self.seed, self.epoch, self.cursor = n_rows, seed, epoch, cursor
        self.order = row_order(n_rows, seed, epoch)

    def take(self, rows: int) -> torch.Tensor:
        if self.cursor + rows > self.n:  # drop the epoch's ragged end; start a new permutation
            self.epoch, self.cursor = self.epoch + 1, 0
            self.order = row_order(self.n, self.seed, self.epoch)
        idx = self.order[self.cursor : self.cursor + rows]
        self.cursor += rows
        return idx


def train_loop(
    model: torch.nn.Module,
    data: Rows,
    cfg: TrainConfig,
    *,
    eval_data: Rows | None = None,
    on_log: LogFn | None = None,
    desc: str = "train",
    checkpoints=None,
    save_model: Callable | None = None,
    accelerator=None,
) -> TrainResult:
    """Train ``model`` (in place when not sharded). ``checkpoints`` (a ``CheckpointStore``) enables
    checkpoints every ``checkpoints.every`` steps and resuming from the latest complete one; ``save_model(folder, state_dict)``
    writes the HF part of a checkpoint."""
    if len(data) == 0:
        raise ValueError("no training rows")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    acc = accelerator or make_accelerator(cfg)
    world, rank = acc.num_processes, acc.process_index
    if len(data) < cfg.batch_size * world:
        raise ValueError(f"{len(data)} rows cannot fill one batch of {cfg.batch_size} × {world} processes")
    if checkpoints is not None and acc.distributed_type.value == "DEEPSPEED":
        raise ValueError(
            "resumable checkpoints need FSDP or DDP (infra/accelerate/fsdp.yaml); DeepSpeed keeps its own "
            "sharded optimizer format. Unset pretrain.checkpoint_every to train with DeepSpeed."
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.compile and getattr(model, "_compiled_call_impl", None) is None:
        model.compile()  # in place: parameter names and saved state dicts stay unchanged
    with contextlib.suppress(AttributeError):
        model.config.use_cache = False  # a training forward must not build a KV cache
    steps = total_steps(len(data), data.seq_len, cfg, world)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, steps, cfg) / cfg.lr)
    model, opt = acc.prepare(model, opt)
    model.train()

    pos, start, tokens, history, resumed = _Position(len(data), cfg.seed), 0, 0, [], None
    if checkpoints is not None and (latest := checkpoints.latest()) is not None:
        state = checkpoints.load(latest, acc, model, opt)
        sched.load_state_dict(state["scheduler"])
        pos = _Position(len(data), cfg.seed, state["epoch"], state["cursor"])
        start, tokens, history, resumed = state["step"], state["tokens"], state["history"], latest
        acc.print(f"resumed from checkpoint step {latest} ({checkpoints.uri(latest)})")
        if state.get("unsent_metrics") and acc.is_main_process and hasattr(on_log, "resend"):
            on_log.resend(state["unsent_metrics"])  # logged before the checkpoint, never reached the server

    per_token = flops.flops_per_token(acc.unwrap_model(model), data.seq_len)
    peak = flops.peak_tflops(acc.device, cfg.peak_tflops) if acc.is_main_process else None
    t0 = window_t = time.perf_counter()
    window_tokens = 0
    bar = tqdm(
        total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True, leave=False,
        disable=not acc.is_main_process,
    )  # fmt: skip
    for step in range(start, steps):
        loss_sum, step_tokens, grad_norm = torch.zeros((), device=acc.device), 0, float("nan")
        lr = float(sched.get_last_lr()[0])
        for _ in range(cfg.grad_accum):
            idx = pos.take(cfg.batch_size * world)[rank * cfg.batch_size : (rank + 1) * cfg.batch_size]
            batch = {k: v.to(acc.device) for k, v in data.batch(idx).items()}
            with acc.accumulate(model):
                loss = model(**batch).loss
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                opt.step()
                opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach() / cfg.grad_accum
            mask = batch.get("attention_mask")
            step_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        sched.step()
        tokens += step_tokens * world
        window_tokens += step_tokens * world
        last = step == steps - 1
        if step % cfg.log_every == 0 or last:
            rec = _log_record(acc, step, loss_sum, lr, grad_norm, pos, tokens, window_tokens, window_t)
            rec["mfu"] = flops.mfu(rec["tokens_per_s"], per_token, peak, world)
            window_t, window_tokens = time.perf_counter(), 0
            if eval_data is not None and (step % cfg.eval_every == 0 or last):
                rec["eval_loss"] = eval_loss(model, eval_data, cfg.batch_size, acc.device)
                rec["eval_ppl"] = math.exp(min(rec["eval_loss"], 50))
            rec = {k: v for k, v in rec.items() if v is not None}
            history.append(rec)
            if on_log and acc.is_main_process:
                on_log(step, {k: float(v) for k, v in rec.items() if k != "step"})
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}")
        bar.update(1)
        done = step + 1
        if (
            checkpoints is not None
            and checkpoints.every
            and not last
            and (done % checkpoints.every == 0 or done in checkpoints.keep_steps)
        ):
            state = {
                "step": done, "epoch": pos.epoch, "cursor": pos.cursor, "tokens": tokens,
                "scheduler": sched.state_dict(), "history": history, "total_steps": steps,
            }  # fmt: skip
            if acc.is_main_process and hasattr(on_log, "unsent"):
                # metrics the tracking server has not taken yet (it is down): a resume from here sends them
                state["unsent_metrics"] = on_log.unsent()
            checkpoints.save(done, acc, model, opt, state, save_model or _no_model_files)
    bar.close()
    model.eval()
    with contextlib.suppress(AttributeError):
        model.config.use_cache = True
    return TrainResult(
        steps=steps,
        tokens=tokens,
        seconds=time.perf_counter() - t0,
        seq_len=data.seq_len,
        history=history,
        resumed_from=resumed,
        accelerator=acc,
        model=model,
    )


def _log_record(acc, step, loss_sum, lr, grad_norm, pos, tokens, window_tokens, window_t) -> dict:
    loss = acc.reduce(loss_sum, reduction="mean") if acc.num_processes > 1 else loss_sum
    return {
        "step": step,
        "loss": float(loss),
        "lr": lr,
        "grad_norm": grad_norm,
        "epoch": pos.epoch,
        "tokens": tokens,
        "tokens_per_s": window_tokens / max(time.perf_counter() - window_t, 1e-9),
    }


def _no_model_files(folder, state_dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
