"""Benchmark: our training loop vs a plain Hugging Face ``Trainer``, and the packing efficiency of the corpus.

Everything is built locally, in one process, from a seed (nothing downloaded):

* **corpus**: Japanese documents from the demo world's generators: half filing sections of fictional
  companies (``finmerge.demo.world``), half general-Japanese documents (``finmerge.demo.general``: towns,
  everyday topics), shuffled.
* **tokenizer**: a byte-level BPE (``finmerge.demo.models.train_tokenizer``) trained on that corpus.
* **packing**: ``finmerge.train.tokenize.pack_documents`` (EOS after each document, the stream cut into ``seq_len``
  blocks). ``packing_efficiency`` = tokens in blocks / tokens (the rest is the dropped partial tail: packed
  blocks have no padding); ``naive_padding_efficiency`` is what padding each document on its own to a
  multiple of ``seq_len`` (nothing truncated) would keep as real tokens. The last ``--eval-blocks`` blocks
  are held out of training.
* **training**: the same tiny Llama (``LlamaForCausalLM``, random init from ``--seed``), the same packed
  blocks, the same hyper-parameters (AdamW β = (0.9, 0.95), ε 1e-8, weight decay on ≥2-D non-norm
  weights, linear warm-up then cosine to ``lr × min_lr_ratio``, clipping, fp32 on CPU, ``--threads``
  threads) through

  - **ours**: ``finmerge.train.pretrain.train_loop`` with a ``TrainConfig``;
  - **trainer**: ``transformers.Trainer`` + ``TrainingArguments`` configured the same (``use_cpu``, no
    saving, no eval, no reporting, no tqdm, ``dataloader_num_workers=0``) on a ``torch.utils.data.Dataset``
    of the blocks with labels = input_ids; everything else left at its defaults (e.g. its optimizer,
    ``adamw_torch_fused`` in transformers 5).

  Each is timed end to end as a user calls it (ours: ``train_loop(...)``; trainer: ``Trainer(...)`` then
  ``.train()``), model construction excluded (each run trains a fresh copy of the same initial weights).
  One short untimed warm-up run each first (first-call costs), then ``--repeats`` timed runs alternating
  ours, trainer, ours, trainer, … (to spread machine noise); tokens/s is steps × batch × grad_accum ×
  seq_len / seconds, the best run's (the median's too). ``ratio`` = ours / trainer (≥ 1 means ours is at
  least as fast). The steady state is reported too, from hooks (``StepClock``: forward hooks on the model,
  global optimizer-step hooks; neither loop is touched): the lower quartile and the median optimizer step
  over every timed run, without either side's fixed start-up costs (``ratio_steady_state`` = trainer /
  ours lower-quartile step; the lower quartile resists a busy neighbour), and the median time of each
  part of a step (forward, backward + clipping, optimizer step, other). Both trained models are then scored on the same held-out blocks (``*_final_loss``):
  same model, data and optimizer, so the two should be close. They differ in the warm-up (HF's starts at
  lr 0, ours at lr / warmup) and, for a seed other than 0, in the row order; with ``--warmup 0`` and
  ``--seed 0`` both draw the same order (``randperm`` seeded 0) and the final losses agree to 5 decimals.

Usage: ``.venv/bin/python bench/pretrain.py [--hidden 256] [--layers 4] [--seq-len 256] [--batch 8]
[--steps 20] [--repeats 3] [--threads 2] [--docs 3000] ...`` (``--help``). Prints one JSON line on stdout;
progress goes to stderr. Speed is reported, never asserted; the script only checks that losses are finite.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU benchmark: ours would otherwise pick a GPU, Trainer not

import numpy as np  # noqa: E402
import torch  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench/pretrain] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Corpus, tokenizer, packing


def corpus_texts(n_docs: int, seed: int) -> list[str]:
    """``n_docs`` Japanese documents: filing sections and general documents, shuffled (deterministic)."""
    from finmerge.config import DemoConfig
    from finmerge.demo import general
    from finmerge.demo.world import filing_content, make_companies, section_text

    n_fin = n_docs // 2
    demo = DemoConfig(seed=seed, n_companies=40)
    companies = make_companies(demo)
    finance: list[str] = []
    variant = 0  # the world has financials for its years only: more text = other sentence draws
    while len(finance) < n_fin:
        for year in (*demo.years, demo.heldout_year):
            for c in companies:
                for sec in filing_content(c, year, f"{year}-06-25", seed * 1000 + variant):
                    if sec["kind"] == "text":
                        finance.append(section_text(sec))
        variant += 1
    rng = random.Random(seed)
    towns = general.make_towns(120, rng, set())
    rest = general.general_corpus(n_docs - n_fin, towns, rng)
    docs = finance[:n_fin] + rest
    random.Random(seed + 1).shuffle(docs)
    return docs


def packing_figures(texts: list[str], tokenizer, seq_len: int) -> tuple[np.ndarray, dict]:
    """Packed blocks, and packing vs naive per-document padding figures."""
    from finmerge.train.tokenize import pack_documents

    t = time.perf_counter()
    blocks, counts = pack_documents(iter(texts), tokenizer, seq_len)
    seconds = time.perf_counter() - t
    # The naive alternative: each document (+ EOS) alone in rows of seq_len, padded, nothing truncated.
    lengths = np.array([len(x) + 1 for x in tokenizer(texts, add_special_tokens=False)["input_ids"]])
    rows = np.ceil(lengths / seq_len).astype(np.int64)
    if int(lengths.sum()) != counts["tokens"]:
        raise RuntimeError(f"token counts disagree: {int(lengths.sum())} vs {counts['tokens']}")
    return blocks, {
        "docs": counts["documents"],
        "tokens": counts["tokens"],
        "blocks": counts["blocks"],
        "tokens_in_blocks": counts["tokens_in_blocks"],
        "packing_efficiency": round(counts["tokens_in_blocks"] / counts["tokens"], 5),
        "naive_padding_efficiency": round(float(lengths.sum() / (rows.sum() * seq_len)), 5),
        "naive_rows": int(rows.sum()),
        "doc_tokens_mean": round(float(lengths.mean()), 1),
        "doc_tokens_max": int(lengths.max()),
        "pack_tokens_per_s": round(counts["tokens"] / seconds) if seconds > 0 else None,
    }


# ----------------------------------------------------------------------------------------------------------
# Model and the two training paths


def make_model(args, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, args.hidden // 64)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or int(8 * args.hidden / 3 + 63) // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=args.seq_len,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(cfg)


class BlockDataset(torch.utils.data.Dataset):
    """The packed blocks for ``Trainer``: input_ids and labels (the model shifts them)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids.clone()}


def train_cfg(args, steps: int):
    from finmerge.config import TrainConfig

    return TrainConfig(
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        schedule="cosine",
        warmup_steps=min(args.warmup, steps - 1) if steps > 1 else 0,
        max_steps=steps,
        batch_size=args.batch,
        grad_accum=args.grad_accum,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        seed=args.seed,
        log_every=steps,  # the first and the last step: as little logging as the trainer's
        eval_every=10**9,
        threads=args.threads,
    )


class StepClock:
    """Per-step timings of a training run, from hooks only (neither loop is changed).

    A forward pre-/post-hook on the model and global optimizer-step hooks (while the clock is entered) give,
    for each optimizer step: ``step`` (its first forward to the next step's first forward), ``forward``
    (its forward passes), ``optimizer`` (``optimizer.step()``), ``other`` (from the optimizer step to the
    next forward: zero_grad, scheduler, logging, the next batch) and ``backward`` (the rest: backward
    passes and gradient clipping). The last step has no successor and is not counted.
    """

    def __init__(self, model: torch.nn.Module):
        self.events: list[tuple[str, float]] = []
        self._handles = [
            model.register_forward_pre_hook(lambda *_: self._mark("f0")),
            model.register_forward_hook(lambda *_: self._mark("f1")),
        ]

    def _mark(self, what: str) -> None:
        self.events.append((what, time.perf_counter()))

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles += [
            register_optimizer_step_pre_hook(lambda *_: self._mark("o0")),
            register_optimizer_step_post_hook(lambda *_: self._mark("o1")),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def steps(self) -> list[dict[str, float]]:
        marks: list[dict] = []  # per step: first forward start, forward total, first o0, last o1
        for what, t in self.events:
            if what == "f0" and (not marks or "o1" in marks[-1]):
                marks.append({"f0": t, "forward": 0.0})
            if not marks:
                continue
            m = marks[-1]
            if what == "f0":
                m["last_f0"] = t
            elif what == "f1":
                m["forward"] += t - m["last_f0"]
            elif what == "o0":
                m.setdefault("o0", t)
            elif what == "o1":
                m["o1"] = t  # the last one, should a wrapper's step fire the hooks too
        out = []
        for m, nxt in zip(marks, marks[1:], strict=False):
            if "o0" in m and "o1" in m:
                row = {
                    "step": nxt["f0"] - m["f0"],
                    "forward": m["forward"],
                    "optimizer": m["o1"] - m["o0"],
                    "other": nxt["f0"] - m["o1"],
                }
                row["backward"] = row["step"] - row["forward"] - row["optimizer"] - row["other"]
                out.append(row)
        return out


def step_summary(runs: list[dict]) -> dict:
    """Lower quartile and median step (ms) over every timed run, and the median of each part of a step."""
    rows = [row for r in runs for row in r["step_times"]]
    if not rows:
        return {"step_ms_p25": None, "step_ms_median": None, "breakdown_ms_median": {}}
    steps = sorted(row["step"] for row in rows)
    return {
        "step_ms_p25": round(steps[(len(steps) - 1) // 4] * 1e3, 2),
        "step_ms_median": round(statistics.median(steps) * 1e3, 2),
        "breakdown_ms_median": {
            k: round(statistics.median(row[k] for row in rows) * 1e3, 2)
            for k in ("forward", "backward", "optimizer", "other")
        },
    }


def run_ours(template, blocks: torch.Tensor, args, steps: int) -> dict:
    from finmerge.train.pretrain import TrainData, train_loop

    model, cfg = copy.deepcopy(template), train_cfg(args, steps)
    with StepClock(model) as clock:
        t = time.perf_counter()
        res = train_loop(model, TrainData(blocks), cfg, desc="bench ours")
        seconds = time.perf_counter() - t
    losses = [h["loss"] for h in res.history if "loss" in h]
    return {
        "seconds": seconds,
        "inner_seconds": res.seconds,
        "steps": res.steps,
        "tokens": res.tokens,
        "last_train_loss": losses[-1],
        "step_times": clock.steps(),
        "model": model,
    }


def run_trainer(template, dataset: BlockDataset, args, steps: int, out_dir: str) -> dict:
    from transformers import Trainer, TrainingArguments

    model, cfg = copy.deepcopy(template), train_cfg(args, steps)
    clock = StepClock(model)
    t = time.perf_counter()
    targs = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_steps=steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=cfg.grad_clip,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**9,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_drop_last=True,
        seed=cfg.seed,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=dataset)
    with clock:
        out = trainer.train()
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "inner_seconds": out.metrics.get("train_runtime"),
        "steps": out.global_step,
        "tokens": out.global_step * cfg.batch_size * cfg.grad_accum * args.seq_len,
        "mean_train_loss": out.training_loss,
        "step_times": clock.steps(),
        "optim": getattr(targs.optim, "value", str(targs.optim)),
        "model": model,
    }


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, batch: int) -> float:
    """Mean next-token loss over ``blocks`` (every block is full: no padding, no ignored labels)."""
    model.eval()
    total = 0.0
    for i in range(0, len(blocks), batch):
        b = blocks[i : i + batch]
        total += float(model(input_ids=b, labels=b).loss) * len(b)
    return total / len(blocks)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise RuntimeError(f"{name} is not finite: {value}")
    return value


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=None, help="MLP width (default ≈ 8/3 × hidden)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size to train")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of each timed run")
    ap.add_argument("--warmup-run-steps", type=int, default=3, help="steps of the untimed warm-up runs")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", type=int, default=3000, help="corpus documents (tokenizer, packing, training)")
    ap.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks for the final losses")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=5, help="lr warm-up steps")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    # Trainer's PrinterCallback prints its logs on stdout: keep stdout for the one JSON line.
    real_stdout = sys.stdout
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp, contextlib.redirect_stdout(sys.stderr):
        from finmerge.demo.models import train_tokenizer

        log(f"corpus: {args.docs} documents")
        texts = corpus_texts(args.docs, args.seed)
        tokenizer = train_tokenizer(iter(texts), args.vocab, Path(tmp) / "tokenizer")
        blocks_np, packing = packing_figures(texts, tokenizer, args.seq_len)
        log(
            f"packed {packing['tokens']} tokens into {packing['blocks']} blocks of {args.seq_len}: "
            f"efficiency {packing['packing_efficiency']} (naive padding {packing['naive_padding_efficiency']})"
        )
        blocks = torch.from_numpy(blocks_np.astype(np.int64))
        n_eval = min(args.eval_blocks, max(1, len(blocks) // 5))
        train_blocks, eval_blocks = blocks[:-n_eval], blocks[-n_eval:]
        if len(train_blocks) < args.batch * args.grad_accum:
            raise SystemExit(f"{len(train_blocks)} training blocks cannot fill one step: use more --docs")
        dataset = BlockDataset(train_blocks)
        template = make_model(args, len(tokenizer))
        n_params = sum(p.numel() for p in template.parameters())
        init_loss = heldout_loss(copy.deepcopy(template), eval_blocks, args.batch)
        log(f"model: {n_params / 1e6:.2f} M parameters, held-out loss at init {init_loss:.3f}")

        out_dir = str(Path(tmp) / "trainer")
        log(f"warm-up runs ({args.warmup_run_steps} steps each)")
        run_ours(template, train_blocks, args, args.warmup_run_steps)
        run_trainer(template, dataset, args, args.warmup_run_steps, out_dir)

        ours_runs: list[dict] = []
        trainer_runs: list[dict] = []
        for r in range(args.repeats):
            for name, runs, fn in (
                ("ours", ours_runs, lambda: run_ours(template, train_blocks, args, args.steps)),
                ("trainer", trainer_runs, lambda: run_trainer(template, dataset, args, args.steps, out_dir)),
            ):
                res = fn()
                res["tokens_per_s"] = res["tokens"] / res["seconds"]
                res["heldout_loss"] = heldout_loss(res.pop("model"), eval_blocks, args.batch)
                runs.append(res)
                log(
                    f"run {r + 1}/{args.repeats} {name}: {res['seconds']:.2f} s, "
                    f"{res['tokens_per_s']:.0f} tokens/s, held-out loss {res['heldout_loss']:.4f}"
                )

    tokens_per_step = args.batch * args.grad_accum * args.seq_len
    for runs, name in ((ours_runs, "ours"), (trainer_runs, "trainer")):
        for res in runs:
            if res["steps"] != args.steps or res["tokens"] != args.steps * tokens_per_step:
                raise RuntimeError(f"{name}: ran {res['steps']} steps / {res['tokens']} tokens")
    best_ours = max(r["tokens_per_s"] for r in ours_runs)
    best_trainer = max(r["tokens_per_s"] for r in trainer_runs)
    med_ours = statistics.median(r["tokens_per_s"] for r in ours_runs)
    med_trainer = statistics.median(r["tokens_per_s"] for r in trainer_runs)
    # Steady state: the steps of every timed run, without fixed costs; the lower quartile resists a busy
    # neighbour (a shared machine only ever makes steps slower).
    ours_steps, trainer_steps = step_summary(ours_runs), step_summary(trainer_runs)
    # Every run starts from the same weights with the same seed: the losses are the same from run to run.
    ours_loss = _finite("ours final loss", ours_runs[-1]["heldout_loss"])
    trainer_loss = _finite("trainer final loss", trainer_runs[-1]["heldout_loss"])
    _finite("initial loss", init_loss)

    result = {
        "bench": "pretrain",
        "model_params": n_params,
        "hidden": args.hidden,
        "layers": args.layers,
        "vocab": len(tokenizer),
        "seq_len": args.seq_len,
        "batch": args.batch,
        "grad_accum": args.grad_accum,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "train_blocks": len(train_blocks),
        "ours_tokens_per_s": round(best_ours, 1),
        "trainer_tokens_per_s": round(best_trainer, 1),
        "ratio": round(best_ours / best_trainer, 4),
        "ours_tokens_per_s_median": round(med_ours, 1),
        "trainer_tokens_per_s_median": round(med_trainer, 1),
        "ratio_median": round(med_ours / med_trainer, 4),
        "ours_step_ms_p25": ours_steps["step_ms_p25"],
        "trainer_step_ms_p25": trainer_steps["step_ms_p25"],
        "ratio_steady_state": round(trainer_steps["step_ms_p25"] / ours_steps["step_ms_p25"], 4)
        if ours_steps["step_ms_p25"] and trainer_steps["step_ms_p25"]
        else None,
        "ours_step_ms_median": ours_steps["step_ms_median"],
        "trainer_step_ms_median": trainer_steps["step_ms_median"],
        "ours_step_breakdown_ms": ours_steps["breakdown_ms_median"],
        "trainer_step_breakdown_ms": trainer_steps["breakdown_ms_median"],
        "ours_seconds": [round(r["seconds"], 3) for r in ours_runs],
        "trainer_seconds": [round(r["seconds"], 3) for r in trainer_runs],
        "ours_inner_seconds": [round(r["inner_seconds"], 3) for r in ours_runs],
        "trainer_inner_seconds": [round(r["inner_seconds"], 3) for r in trainer_runs if r["inner_seconds"]],
        "trainer_optimizer": trainer_runs[-1]["optim"],
        "initial_loss": round(init_loss, 5),
        "ours_final_loss": round(ours_loss, 5),
        "trainer_final_loss": round(trainer_loss, 5),
        "final_loss_abs_diff": round(abs(ours_loss - trainer_loss), 5),
        "final_loss_rel_diff": round(abs(ours_loss - trainer_loss) / trainer_loss, 5),
        "ours_last_train_loss": round(ours_runs[-1]["last_train_loss"], 5),
        "trainer_mean_train_loss": round(trainer_runs[-1]["mean_train_loss"], 5),
        **packing,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, ensure_ascii=False), file=real_stdout, flush=True)
    return result


if __name__ == "__main__":
    main()
