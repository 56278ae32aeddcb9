"""Build the demo models from the demo world: tokenizer, base (general + background finance text) and instruct.

The base is a tiny Llama pretrained on the general Japanese corpus and the background companies' filings
(so, like a real base LLM, it already reads financial Japanese); the instruct sibling is fine-tuned
from that base on the instruction pairs rendered with the chat template (loss on the replies only), as
public base/instruct pairs are made. Both are saved as complete Hugging Face folders with a model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from finmerge import __version__
from finmerge.config import DemoConfig
from finmerge.core import storage
from finmerge.core.plots import plot_curves
from finmerge.demo.chat import CHAT_TEMPLATE
from finmerge.demo.models import init_llama, train_tokenizer
from finmerge.models.card import model_card
from finmerge.train.pretrain import LogFn, TrainData, train_loop
from finmerge.train.tokenize import pack_documents

# The parts of the world each demo model reads (its stage keys on them, its card names them): never the
# evaluated companies' filings or the evaluation sets.
BASE_READS = ("general/", "background/", "instructions/")  # the tokenizer also sees the chat pairs
INSTRUCT_READS = ("instructions/",)


def general_texts(world: Path) -> list[str]:
    return [r["text"] for r in storage.iter_jsonl(world / "general" / "corpus.jsonl", "text")]


def copy_page_texts(world: Path) -> list[str]:
    path = world / "general" / "copy_pages.jsonl"
    return [r["text"] for r in storage.iter_jsonl(path, "text")] if path.exists() else []


def background_texts(world: Path) -> list[str]:
    return [r["text"] for r in storage.iter_jsonl(world / "background" / "corpus.jsonl", "text")]


def instruction_pairs(world: Path) -> list[list[dict]]:
    return [r["messages"] for r in storage.iter_jsonl(world / "instructions" / "train.jsonl")]


def sft_rows(pairs: list[list[dict]], tokenizer, seq_len: int, cut: list[int] | None = None) -> TrainData:
    """Chat-formatted rows, right-padded; labels only on the reply and its EOS. The indices of pairs whose
    reply does not fit in ``seq_len`` (cut short, or nothing left to learn) are appended to ``cut``."""
    ids = np.full((len(pairs), seq_len), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full((len(pairs), seq_len), -100, dtype=np.int64)
    mask = np.zeros((len(pairs), seq_len), dtype=np.int64)
    for i, messages in enumerate(pairs):
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(f"instruction pair {i}: chat template does not extend the generation prompt")
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        end = f_ids.index(tokenizer.eos_token_id, len(p_ids)) + 1  # nothing after EOS is learned
        if end > seq_len and cut is not None:
            cut.append(i)
        f_ids = f_ids[: min(end, seq_len)]
        ids[i, : len(f_ids)] = f_ids
        mask[i, : len(f_ids)] = 1
        labels[i, len(p_ids) : len(f_ids)] = f_ids[len(p_ids) :]
    return TrainData(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(mask))


def _save(model, tokenizer, folder: Path, history: list[dict], card: str, title: str) -> None:
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "history.json").write_text(json.dumps(history, indent=1))
    plot_curves(history, ["loss"], folder / "loss.png", title=title)
    (folder / "README.md").write_text(card, encoding="utf-8")


def _card_common(model, tokenizer, world_digest: str) -> dict:
    return {
        "architecture": "LlamaForCausalLM",
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "vocab": len(tokenizer),
        "world files read (digest)": world_digest[:16],
        "finmerge": __version__,
    }


def _prefixed(on_log: LogFn | None, prefix: str) -> LogFn | None:
    return (lambda step, m: on_log(step, {f"{prefix}/{k}": v for k, v in m.items()})) if on_log else None


def build_demo_base(
    world_uri: str, out_uri: str, cfg: DemoConfig, staging_dir: str, on_log: LogFn | None = None
) -> dict:
    """Train the demo tokenizer and pretrain the tiny base on the general corpus; commit to ``out_uri``."""
    world = storage.stage_folder(world_uri, staging_dir)
    world_digest = storage.manifest_parts_digest(world_uri, BASE_READS) or ""
    general, background = general_texts(world), background_texts(world)
    texts = general + background
    chat_text = [m["content"] for pair in instruction_pairs(world) for m in pair]
    # The tokenizer sees what the base reads and the chat pairs, never an evaluated company's filing.
    tokenizer = train_tokenizer(
        iter(texts + chat_text), cfg.model.vocab_size, Path(staging_dir).expanduser() / "demo-tokenizer"
    )
    model = init_llama(cfg.model, tokenizer, seed=cfg.seed)
    blocks, _ = pack_documents(iter(texts), tokenizer, cfg.base_train.seq_len)
    train_cfg, copy_steps = cfg.base_train, 0
    pages = copy_page_texts(world)
    # copy pages are read once each (docs/demo.md, g-G): half alone first, where copying forms, half mixed in
    if pages:
        first, _ = pack_documents(iter(pages[: len(pages) // 2]), tokenizer, train_cfg.seq_len)
        copy_steps = train_loop(
            model,
            TrainData(torch.from_numpy(first.astype(np.int64))),
            train_cfg.model_copy(update={"epochs": 1.0}),
            on_log=_prefixed(on_log, "demo_base_copy"),
            desc="demo base (copy pages)",
        ).steps
        mixed, _ = pack_documents(iter(pages[len(pages) // 2 :]), tokenizer, train_cfg.seq_len)
        # the corpus `epochs` times plus the mixed pages once, in one shuffled pass
        blocks = np.concatenate([np.tile(blocks, (max(1, round(train_cfg.epochs)), 1)), mixed])
        train_cfg = train_cfg.model_copy(update={"epochs": 1.0})
    run = train_loop(
        model,
        TrainData(torch.from_numpy(blocks.astype(np.int64))),
        train_cfg,
        on_log=_prefixed(on_log, "demo_base"),
        desc="demo base",
    )
    meta = {
        "metrics": {
            "demo_base/final_loss": run.final_loss,
            "demo_base/tokens": float(run.tokens),
            "demo_base/seconds": run.seconds,
            "demo_base/copy_steps": float(copy_steps),
        },
        "artifacts": ["loss.png"],
        "role": "base",
    }
    with storage.output_folder(out_uri, staging_dir, meta=meta, stage="demo_base") as out:
        _save(
            model,
            tokenizer,
            out.path,
            run.history,
            model_card(
                "finmerge demo base model (θ_base)",
                {
                    **_card_common(model, tokenizer, world_digest),
                    "training": f"{run.tokens:,} tokens of the general Japanese demo corpus and background "
                    f"filings ({len(general)} + {len(background)} docs), {run.steps} steps"
                    + (
                        f"; first {copy_steps} steps on one-off company pages ({len(pages)}, each read once)"
                        if pages
                        else ""
                    ),
                    "final loss": f"{run.final_loss:.4f}",
                },
                "A tiny Japanese LM (general text and other companies' filings) generated by finmerge for the demo. "
                "Not for real use.",
            ),
            "Demo base pretraining",
        )
    return out.result()


def build_demo_instruct(
    world_uri: str,
    base_uri: str,
    out_uri: str,
    cfg: DemoConfig,
    staging_dir: str,
    on_log: LogFn | None = None,
) -> dict:
    """Instruction-tune the demo base on the chat pairs (replies only in the loss); commit to ``out_uri``."""
    from finmerge.models import loading as modelio

    world = storage.stage_folder(world_uri, staging_dir)
    world_digest = storage.manifest_parts_digest(world_uri, INSTRUCT_READS) or ""
    base_dir = modelio.stage_model(base_uri, staging_dir)
    base_digest = storage.read_manifest(base_uri)["digest"]
    tokenizer = modelio.load_tokenizer(base_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = modelio.load_causal_lm(base_dir)
    pairs = instruction_pairs(world)
    cut: list[int] = []
    rows = sft_rows(pairs, tokenizer, cfg.instruct_train.seq_len, cut)
    # reported as demo_instruct/cut_pairs: a reading pair is ~100–145 tokens, so seq_len 96 cuts it (g-A)
    run = train_loop(
        model, rows, cfg.instruct_train, on_log=_prefixed(on_log, "demo_instruct"), desc="demo instruct"
    )
    meta = {
        "metrics": {
            "demo_instruct/final_loss": run.final_loss,
            "demo_instruct/seconds": run.seconds,
            "demo_instruct/cut_pairs": float(len(cut)),
        },
        "artifacts": ["loss.png"],
        "role": "instruct",
        "parent_digest": base_digest,
    }
    with storage.output_folder(out_uri, staging_dir, meta=meta, stage="demo_instruct") as out:
        _save(
            model,
            tokenizer,
            out.path,
            run.history,
            model_card(
                "finmerge demo instruct model (θ_inst)",
                {
                    **_card_common(model, tokenizer, world_digest),
                    "parent": f"demo base {base_digest[:16]}",
                    "training": f"{len(pairs)} general instruction pairs in the chat template, {run.steps} steps",
                    "final loss": f"{run.final_loss:.4f}",
                },
                "Instruction-tuned sibling of the demo base. Replies start with `回答：` and end with EOS.",
            ),
            "Demo instruction tuning",
        )
    return out.result()


def make_world(out_uri: str, cfg: DemoConfig, staging_dir: str) -> dict:
    """The demo world (filings, general corpus, chat pairs, evaluation sets) as one output folder."""
    from finmerge.demo.world import generate_world

    with storage.output_folder(out_uri, staging_dir, meta={}, stage="demo_world") as out:
        summary = generate_world(cfg, out.path)
        out.meta["counts"] = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    return out.result()
