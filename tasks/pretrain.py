"""Continual pretraining of a Hugging Face causal LM on packed token blocks.

A readable nanoGPT-style loop: AdamW (no decay on norms/biases), linear warmup then cosine / linear /
constant decay, gradient accumulation and clipping, a seeded data order per epoch. The same loop builds
the demo models (``finmerge.demo.build``) with masked labels for instruction tuning.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from finmerge import __version__, modelio, storage
from finmerge.config import TrainConfig
from finmerge.orchestration import stage_task
from finmerge.plots import plot_curves

LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class TrainData:
    """Rows of equal length; ``labels`` -100 marks positions that do not count in the loss."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = self.input_ids[idx].long()
        out = {"input_ids": ids, "labels": ids.clone() if self.labels is None else self.labels[idx].long()}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask[idx].long()
        return out


@dataclass
class TrainResult:
    steps: int
    tokens: int
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        losses = [h["loss"] for h in self.history if "loss" in h]
        return float(np.mean(losses[-3:])) if losses else float("nan")


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


def total_steps(n_rows: int, cfg: TrainConfig) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(n_rows * cfg.epochs / (cfg.batch_size * cfg.grad_accum)))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def _row_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, data: TrainData, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        b = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        n = int((b["labels"][:, 1:] != -100).sum())
        total += float(model(**b).loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def train_loop(
    model: torch.nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    *,
    eval_data: TrainData | None = None,
    on_log: LogFn | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place. Deterministic for a given seed and thread count on CPU."""
    if len(data) == 0:
        raise ValueError("no training rows")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    steps = total_steps(len(data), cfg)
    opt = _optimizer(model, cfg)
    model.train()
    history: list[dict] = []
    epoch, cursor, order = 0, 0, _row_order(len(data), cfg.seed, 0)
    tokens, t0, window_t, window_tokens = 0, time.perf_counter(), time.perf_counter(), 0
    bar = tqdm(total=steps, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    for step in range(steps):
        lr = lr_at(step, steps, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            if cursor + cfg.batch_size > len(order):
                epoch, cursor, order = epoch + 1, 0, _row_order(len(data), cfg.seed, epoch + 1)
            idx = order[cursor : cursor + cfg.batch_size]
            cursor += cfg.batch_size
            batch = data.batch(idx)
            loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
            n_tok = (
                int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else batch["input_ids"].numel()
            )
            tokens += n_tok
            window_tokens += n_tok
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
        last = step == steps - 1
        if step % cfg.log_every == 0 or last:
            now = time.perf_counter()
            rec = {
                "step": step,
                "loss": loss_sum,
                "lr": lr,
                "grad_norm": grad_norm,
                "epoch": epoch,
                "tokens": tokens,
                "tokens_per_s": window_tokens / max(now - window_t, 1e-9),
            }
            window_t, window_tokens = now, 0
            if eval_data is not None and (step % cfg.eval_every == 0 or last):
                rec["eval_loss"] = eval_loss(model, eval_data, cfg.batch_size)
                rec["eval_ppl"] = math.exp(min(rec["eval_loss"], 50))
            history.append(rec)
            if on_log:
                on_log(step, {k: float(v) for k, v in rec.items() if k != "step"})
    bar.close()
    model.eval()
    return TrainResult(steps=steps, tokens=tokens, seconds=time.perf_counter() - t0, history=history)


def heldout_rows(uri: str, tokenizer, seq_len: int, max_rows: int = 32) -> TrainData | None:
    """Held-out finance text as packed rows, for eval loss / perplexity during training."""
    from tasks.tokenize import pack_documents

    texts = (rec["text"] for rec in storage.iter_jsonl(uri, "text"))
    blocks, _ = pack_documents(texts, tokenizer, seq_len)
    return TrainData(torch.from_numpy(blocks[:max_rows].astype(np.int64))) if len(blocks) else None


def model_card(title: str, lines: dict[str, object], body: str = "") -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in lines.items())
    return f"---\nlibrary_name: transformers\ntags: [finmerge]\n---\n# {title}\n\n| | |\n|---|---|\n{rows}\n\n{body}\n"


def pretrain(
    base_uri: str,
    tokens_uri: str,
    out_uri: str,
    cfg: TrainConfig,
    staging_dir: str,
    *,
    heldout_uri: str | None = None,
    trust_remote_code: bool = False,
    on_log: LogFn | None = None,
) -> dict:
    """Continually pretrain the model at ``base_uri`` on the packed blocks at ``tokens_uri``."""
    from tasks.tokenize import load_blocks

    base_dir = modelio.stage_model(base_uri, staging_dir)
    tokenizer = modelio.load_tokenizer(base_dir, trust_remote_code)
    model = modelio.load_causal_lm(base_dir, trust_remote_code)
    blocks = np.asarray(load_blocks(tokens_uri, staging_dir), dtype=np.int64)
    if blocks.shape[1] != cfg.seq_len:
        blocks = blocks.reshape(-1)[: (blocks.size // cfg.seq_len) * cfg.seq_len].reshape(-1, cfg.seq_len)
    if int(blocks.max()) >= model.get_input_embeddings().num_embeddings:
        raise ValueError(f"{tokens_uri}: token id {int(blocks.max())} outside the model's vocabulary")
    eval_data = heldout_rows(heldout_uri, tokenizer, cfg.seq_len) if heldout_uri else None
    result = train_loop(
        model,
        TrainData(torch.from_numpy(blocks)),
        cfg,
        eval_data=eval_data,
        on_log=on_log,
        desc="continual pretraining",
    )
    base_digest = (storage.read_manifest(base_uri) or {}).get("digest")
    tokens_digest = (storage.read_manifest(tokens_uri) or {}).get("digest")
    metrics = {
        "pretrain/final_loss": result.final_loss,
        "pretrain/steps": float(result.steps),
        "pretrain/tokens": float(result.tokens),
        "pretrain/tokens_per_s": result.tokens / max(result.seconds, 1e-9),
        "pretrain/seconds": result.seconds,
    }
    evals = [h["eval_ppl"] for h in result.history if "eval_ppl" in h]
    if evals:
        metrics["pretrain/heldout_ppl_start"] = evals[0]
        metrics["pretrain/heldout_ppl_end"] = evals[-1]
    meta = {
        "metrics": metrics,
        "artifacts": ["loss.png", "history.json"],
        "lineage": {
            "base": storage.normalize(base_uri),
            "base_digest": base_digest,
            "tokens": storage.normalize(tokens_uri),
            "tokens_digest": tokens_digest,
        },
    }
    with storage.output_folder(out_uri, staging_dir, meta=meta) as out:
        model.save_pretrained(str(out.path), safe_serialization=True)
        tokenizer.save_pretrained(str(out.path))
        (out.path / "history.json").write_text(json.dumps(result.history, indent=1))
        plot_curves(
            result.history, ["loss", "eval_loss"], out.path / "loss.png", title="Continual pretraining loss"
        )
        (out.path / "README.md").write_text(
            model_card(
                "finmerge continual-pretrained model (θ_cpt)",
                {
                    "base model": storage.normalize(base_uri),
                    "base digest": base_digest,
                    "corpus tokens": storage.normalize(tokens_uri),
                    "tokens digest": tokens_digest,
                    "steps": result.steps,
                    "tokens seen": result.tokens,
                    "final loss": f"{result.final_loss:.4f}",
                    "schedule": f"{cfg.schedule}, lr {cfg.lr}, warmup {cfg.warmup_steps}",
                    "batch": f"{cfg.batch_size} × accum {cfg.grad_accum} × seq {cfg.seq_len}",
                    "finmerge": __version__,
                },
                "Domain vector τ_fin = θ_cpt − θ_base. Weights in safetensors.",
            )
        )
    return out.result()


pretrain_task = stage_task("pretrain", pretrain, retries=1)
