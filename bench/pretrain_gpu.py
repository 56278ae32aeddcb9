"""Benchmark: GPU training throughput and MFU of our training loop on a ~1B Llama (needs CUDA).

A Llama-style model (default ~1.1B: hidden 2048, 16 layers, 32k vocab; random init, nothing downloaded)
trains on random token blocks of ``--seq-len`` through

- **ours**: ``finmerge.train.loop.train_loop`` (accelerate, bf16 mixed precision, fused AdamW, the same
  code the pretrain stage runs);
- **plain**: a minimal hand-written PyTorch loop on the same model copy and batches (bf16 autocast,
  fused AdamW, clipping) — the reference for the ratio, in the same process.

Each runs ``--steps`` optimizer steps after ``--warmup`` untimed ones; tokens/s from wall time with CUDA
synchronised. MFU = tokens/s × (6·N + 12·L·d·T) / peak bf16 FLOP/s (``finmerge.train.flops``; the peak is
the GPU table's dense figure). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def plain_loop(model, data, args) -> float:
    model = model.cuda().train()
    model.config.use_cache = False
    if args.compile:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    n = data.shape[0]

    def step(i):
        ids = data[(i * args.batch) % n : (i * args.batch) % n + args.batch].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def our_loop(model, data, args) -> tuple[float, list[dict]]:
    from finmerge.config import TrainConfig
    from finmerge.train.loop import TrainData, train_loop

    def run(steps):
        cfg = TrainConfig(
            lr=1e-4,
            warmup_steps=1,
            batch_size=args.batch,
            max_steps=steps,
            precision="bf16",
            log_every=max(1, steps // 4),
            eval_every=10**9,
            compile=args.compile,
        )
        hist: list[dict] = []
        torch.cuda.synchronize()
        t = time.perf_counter()
        train_loop(
            model, TrainData(input_ids=data), cfg, on_log=lambda step, rec: hist.append(rec), desc="ours"
        )
        torch.cuda.synchronize()
        return time.perf_counter() - t, hist

    run(args.warmup)
    return run(args.steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the model in both loops (pretrain.compile)"
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():  # `make bench` on a CPU machine: say so, do not fail
        print(json.dumps({"bench": "pretrain_gpu", "skipped": "no CUDA GPU"}))
        return
    from finmerge.train import flops

    torch.backends.cuda.matmul.allow_tf32 = True
    base = build(args)
    n_params = sum(p.numel() for p in base.parameters())
    per_token = flops.flops_per_token(base, args.seq_len)
    rows = args.batch * (args.steps + args.warmup + 1)
    data = torch.randint(0, args.vocab, (rows, args.seq_len), generator=torch.Generator().manual_seed(0))
    peak = flops.peak_tflops(torch.device("cuda"))
    tokens = args.steps * args.batch * args.seq_len

    plain_s = plain_loop(copy.deepcopy(base), data, args)
    torch.cuda.empty_cache()
    ours_s, hist = our_loop(copy.deepcopy(base), data, args)
    ours_tps, plain_tps = tokens / ours_s, tokens / plain_s
    print(
        json.dumps(
            {
                "bench": "pretrain_gpu",
                "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "params": n_params,
                "seq_len": args.seq_len,
                "batch": args.batch,
                "steps": args.steps,
                "compile": args.compile,
                "peak_tflops": peak,
                "ours_tokens_per_s": round(ours_tps),
                "plain_tokens_per_s": round(plain_tps),
                "ratio": round(ours_tps / plain_tps, 3),
                "ours_mfu": flops.mfu(ours_tps, per_token, peak),
                "plain_mfu": flops.mfu(plain_tps, per_token, peak),
                "logged_mfu": [h.get("mfu") for h in hist if "mfu" in h],
                "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
