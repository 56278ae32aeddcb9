"""Evaluation stage: harness multiple choice, finance perplexity and a chat probe for one model.

Plain functions (``evaluate_task`` at the bottom is the Prefect/MLflow stage wrapper, as in the other
task modules):

- :func:`evaluate_model` scores one model and commits an output folder with ``results.json`` (lm-eval's
  layout plus a ``finmerge`` section), ``samples_<harness task>.jsonl`` and ``chat_samples.jsonl``;
- :func:`comparison_report` tabulates and plots the metrics of base / instruct / cpt / merged.

Multiple-choice scoring reproduces lm-eval's HF backend (fin-harness.md §4-5): request = (context,
delimiter + choice), the context's trailing whitespace moved to the continuation, joint encoding split
at ``len(encode(context))`` with no special tokens, left truncation to the model's length,
``log_softmax`` in float32 and the summed continuation log-probs. Requests whose model inputs are
identical (choices differing only in their final token, e.g. letters) share one forward row, exactly
like lm-eval's logits cache; rows are length-sorted (longest first), right-padded and batched.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from finmerge import fin_harness, modelio, storage
from finmerge.config import EvaluateConfig
from finmerge.orchestration import stage_task

PPL_WINDOW_CAP = 1024
LENGTH_FALLBACK = 2048  # lm-eval's default max_length when the config names none
_ACC_ORDER = ("base", "instruct", "cpt", "merged")


# ---------------------------------------------------------------------------------------------------------
# Log-likelihood scoring


@dataclass(frozen=True)
class EncodedPair:
    ctx_ids: list[int]
    cont_ids: list[int]
    boundary_merge: bool  # encode(ctx) is not a prefix of encode(ctx + cont): a token spans the join

    @property
    def empty(self) -> bool:
        return not self.cont_ids


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prefix_token_id(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode_pair(tokenizer, context: str, continuation: str, ctx_ids: list[int] | None = None) -> EncodedPair:
    """lm-eval's split: cont_ids = encode(ctx + cont)[len(encode(ctx)):] (the whitespace move is done
    by :func:`finmerge.fin_harness.move_whitespace`). ``ctx_ids`` may be passed in to skip re-encoding."""
    whole = encode(tokenizer, context + continuation)
    if ctx_ids is None:
        ctx_ids = encode(tokenizer, context)
    merged = whole[: len(ctx_ids)] != ctx_ids
    if not ctx_ids:  # nothing to condition the first token on: lm-eval uses a prefix token
        ctx_ids = [prefix_token_id(tokenizer)]
        return EncodedPair(ctx_ids, whole, merged)
    return EncodedPair(list(ctx_ids), whole[len(ctx_ids) :], merged)


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def model_max_length(model, tokenizer=None) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        return tml
    return LENGTH_FALLBACK


@torch.inference_mode()
def score_loglikelihoods(
    model,
    pairs: list[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    max_length: int,
    device: torch.device | str,
    pad_id: int = 0,
    desc: str = "loglikelihood",
    progress: bool = True,
) -> tuple[list[float], dict[str, int]]:
    """Summed log p(cont_ids | ctx_ids) for every (ctx_ids, cont_ids); an empty continuation scores 0.

    Input = (ctx + cont)[-(max_length + 1):][:-1] (left truncation). Identical inputs are run once.
    """
    lls = [0.0] * len(pairs)
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # model input -> [(pair index, n predicted)]
    truncated = 0
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            continue
        full = list(ctx) + list(cont)
        if len(full) > max_length + 1:
            truncated += 1
        window = full[-(max_length + 1) :]
        inp = tuple(window[:-1])
        n = min(len(cont), len(inp))
        groups.setdefault(inp, []).append((i, n))
    order = sorted(groups, key=lambda t: (-len(t), t))
    keep_ok = _supports_logits_to_keep(model)
    batches = [order[b : b + batch_size] for b in range(0, len(order), max(1, batch_size))]
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or not batches, leave=False):
        width = max(len(t) for t in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        spans = []
        for r, inp in enumerate(batch):
            ids[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            mask[r, : len(inp)] = 1
            spans.append(max(n for _, n in groups[inp]))
        keep = max(width - (len(inp) - span) for inp, span in zip(batch, spans, strict=True))
        kwargs = {"logits_to_keep": keep} if keep_ok else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        offset = width - logits.shape[1]
        for r, (inp, span) in enumerate(zip(batch, spans, strict=True)):
            start = len(inp) - span - offset
            logp = torch.log_softmax(logits[r, start : start + span].float(), dim=-1)
            for i, n in groups[inp]:
                target = torch.tensor(pairs[i][1][-n:], dtype=torch.long, device=logp.device)
                lls[i] = float(logp[span - n :].gather(1, target[:, None]).double().sum().item())
    stats = {
        "requests": len(pairs),
        "forward_rows": len(order),
        "batches": len(batches),
        "truncated": truncated,
    }
    return lls, stats


def mc_prediction(lls: list[float], choices: list[str] | tuple[str, ...], gold: int) -> dict:
    """acc: argmax raw ll; acc_norm: argmax ll / len(choice) in Unicode characters (first max wins)."""
    pred = int(np.argmax(np.asarray(lls, dtype=np.float64)))
    norm = np.asarray([ll / max(len(c), 1) for ll, c in zip(lls, choices, strict=True)], dtype=np.float64)
    pred_norm = int(np.argmax(norm))
    return {
        "pred": pred,
        "acc": float(pred == gold),
        "pred_norm": pred_norm,
        "acc_norm": float(pred_norm == gold),
    }


def _stderr(values: list[float]) -> float:
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class TaskRenderError(ValueError):
    """A task whose prompts cannot be rendered or encoded (reported as skipped, never a crash)."""


def score_task(
    model,
    tokenizer,
    task: fin_harness.Task,
    version: str,
    *,
    batch_size: int,
    max_length: int,
    device,
    progress: bool = True,
) -> dict:
    """Score one harness task. Returns metrics, per-item samples and request statistics."""
    pairs: list[tuple[list[int], list[int]]] = []
    owners: list[tuple[int, int]] = []
    prompts = []
    empty = merges = 0
    for k, item in enumerate(task.items):
        try:
            prompt = fin_harness.render(item, task.layout, version)
            reqs = fin_harness.requests_for(prompt)
            ctx_cache: dict[str, list[int]] = {}  # the context is the same for every choice of an item
            encoded = []
            for ctx, cont in reqs:
                if ctx not in ctx_cache:
                    ctx_cache[ctx] = encode(tokenizer, ctx)
                encoded.append(encode_pair(tokenizer, ctx, cont, ctx_ids=ctx_cache[ctx]))
        except Exception as exc:
            raise TaskRenderError(f"item {item.id}: {type(exc).__name__}: {exc}") from exc
        prompts.append(prompt)
        for c, enc in enumerate(encoded):
            empty += enc.empty
            merges += enc.boundary_merge
            pairs.append((enc.ctx_ids, enc.cont_ids))
            owners.append((k, c))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lls, stats = score_loglikelihoods(
        model,
        pairs,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        pad_id=pad_id,
        desc=f"{task.name} [{version}]",
        progress=progress,
    )
    per_item: list[list[float]] = [[0.0] * len(p.choices) for p in prompts]
    cont_len: list[list[int]] = [[0] * len(p.choices) for p in prompts]
    for (k, c), ll, (_, cont) in zip(owners, lls, pairs, strict=True):
        per_item[k][c] = ll
        cont_len[k][c] = len(cont)
    samples, accs, norms = [], [], []
    for k, (item, prompt) in enumerate(zip(task.items, prompts, strict=True)):
        res = mc_prediction(per_item[k], prompt.choices, item.gold)
        accs.append(res["acc"])
        norms.append(res["acc_norm"])
        samples.append(
            {
                "doc_id": k,
                "id": item.id,
                "gold": item.gold,
                "ll": per_item[k],
                "cont_tokens": cont_len[k],
                **res,
            }
        )
    stats.update({"items": len(task.items), "empty_continuations": empty, "boundary_merges": merges})
    return {
        "acc": float(np.mean(accs)),
        "acc_stderr": _stderr(accs),
        "acc_norm": float(np.mean(norms)),
        "acc_norm_stderr": _stderr(norms),
        "samples": samples,
        "stats": stats,
    }


# ---------------------------------------------------------------------------------------------------------
# Perplexity


def heldout_stream(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    """Each document encoded without special tokens, EOS appended, concatenated, cut to ``max_tokens``."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        if len(stream) >= max_tokens:
            break
        stream.extend(encode(tokenizer, text))
        if eos is not None:
            stream.append(int(eos))
    return stream[:max_tokens]


@torch.inference_mode()
def stream_perplexity(
    model, stream: list[int], *, window: int, batch_size: int, device, progress: bool = True
) -> dict:
    """exp(mean NLL) over non-overlapping windows; each window's first token is context only."""
    chunks = [stream[i : i + window] for i in range(0, len(stream), window)]
    chunks = [c for c in chunks if len(c) >= 2]
    nll, count = 0.0, 0
    full = [c for c in chunks if len(c) == window]
    tail = [c for c in chunks if len(c) != window]
    batches = [full[b : b + batch_size] for b in range(0, len(full), max(1, batch_size))] + [
        [c] for c in tail
    ]
    for batch in tqdm(
        batches, desc="perplexity", unit="batch", disable=not progress or not batches, leave=False
    ):
        ids = torch.tensor(batch, dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits
        for r in range(ids.shape[0]):
            nll += float(
                torch.nn.functional.cross_entropy(logits[r, :-1].float(), ids[r, 1:], reduction="sum")
                .double()
                .item()
            )
            count += ids.shape[1] - 1
    ppl = math.exp(nll / count) if count else float("nan")
    return {
        "ppl": ppl,
        "nll_sum": nll,
        "predicted_tokens": count,
        "tokens": len(stream),
        "windows": len(chunks),
    }


# ---------------------------------------------------------------------------------------------------------
# Chat probe


def reply_adheres(reply: str, ended_with_eos: bool, regex: str) -> bool:
    """A reply adheres when generation stopped at EOS within budget and the stripped text fully matches."""
    return bool(ended_with_eos) and re.fullmatch(regex, reply.strip()) is not None


def reply_correct(reply: str, answers: list[str]) -> bool:
    """Any accepted answer (NFKC-normalised too) occurs in the NFKC-normalised reply."""
    text = unicodedata.normalize("NFKC", reply)
    return any(a and unicodedata.normalize("NFKC", a) in text for a in answers)


def chat_prompt_ids(tokenizer, question: str) -> tuple[list[int], str]:
    """The tokenizer's chat template with a generation prompt, or ``question + "\\n"`` when it has none."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return encode(tokenizer, text), "tokenizer"
    return encode(tokenizer, question + "\n"), "none"


def eos_ids(model, tokenizer) -> list[int]:
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = tokenizer.eos_token_id
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


@torch.inference_mode()
def greedy_generate(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos: list[int],
    pad_id: int,
    device,
    max_length: int | None = None,
    progress: bool = True,
) -> list[tuple[list[int], bool]]:
    """Greedy continuations, batched with left padding. Returns (reply ids before EOS, ended with EOS)."""
    from transformers import GenerationConfig

    limit = (max_length or 10**9) - max_new_tokens
    prompts = [p[-limit:] if limit > 0 else p for p in prompts]
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos or None,
        pad_token_id=pad_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    batches = [order[b : b + batch_size] for b in range(0, len(order), max(1, batch_size))]
    eos_set = set(eos)
    for batch in tqdm(
        batches, desc="generate", unit="batch", disable=not progress or not batches, leave=False
    ):
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            p = prompts[i]
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
        )
        for r, i in enumerate(batch):
            new = gen[r, width:].tolist()
            stop = next((j for j, t in enumerate(new) if t in eos_set), None)
            out[i] = (new, False) if stop is None else (new[:stop], True)
    return out


def chat_probe(
    model,
    tokenizer,
    questions: list[dict],
    *,
    max_new_tokens: int,
    batch_size: int,
    regex: str,
    device,
    max_length: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    prompts, templates = [], set()
    for q in questions:
        ids, template = chat_prompt_ids(tokenizer, str(q["question"]))
        prompts.append(ids)
        templates.add(template)
    pad_id = tokenizer.pad_token_id
    eos = eos_ids(model, tokenizer)
    if pad_id is None:
        pad_id = eos[0] if eos else 0
    gens = greedy_generate(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        eos=eos,
        pad_id=pad_id,
        device=device,
        max_length=max_length,
        progress=progress,
    )
    rows = []
    for q, p, (reply_ids, ended) in zip(questions, prompts, gens, strict=True):
        reply = tokenizer.decode(reply_ids, skip_special_tokens=True).strip()
        answers = q.get("answers") or []
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
        rows.append(
            {
                "id": q.get("id"),
                "reply": reply,
                "ended_with_eos": ended,
                "new_tokens": len(reply_ids) + int(ended),
                "prompt_tokens": len(p),
                "adheres": reply_adheres(reply, ended, regex),
                "correct": reply_correct(reply, answers),
                "answers": answers,
            }
        )
    n = len(rows)
    summary = {
        "n": n,
        "adherence": float(np.mean([r["adheres"] for r in rows])) if n else float("nan"),
        "answer_acc": float(np.mean([r["correct"] for r in rows])) if n else float("nan"),
        "ended_with_eos": float(np.mean([r["ended_with_eos"] for r in rows])) if n else float("nan"),
        "template": "none" if "none" in templates else "tokenizer",
        "max_new_tokens": max_new_tokens,
        "regex": regex,
    }
    return rows, summary


# ---------------------------------------------------------------------------------------------------------
# The stage


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate_model(
    model_uri: str,
    out_uri: str,
    cfg: EvaluateConfig,
    *,
    label: str,
    harness_dirs: list[str],
    heldout_uri: str | None,
    chat_uri: str | None,
    staging_dir: str,
    trust_remote_code: bool = False,
    tasks: list[str] | None = None,
    dtype: str = "float32",
    device: str | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> dict:
    """Score one model (harness MC, finance perplexity, chat probe) into the folder ``out_uri``.

    Extra knobs (not in EvaluateConfig): ``tasks`` restricts the harness tasks by name; ``dtype`` of the
    weights (log-softmax is always float32); ``device`` (default cuda if available); ``max_length``
    overrides the model's context length for MC truncation.
    """
    import transformers

    version = fin_harness.normalize_version(cfg.prompt_version)
    dev = _device(device)
    folder = modelio.stage_model(model_uri, staging_dir)
    model = modelio.load_causal_lm(folder, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype))
    model.to(dev)
    tokenizer = modelio.load_tokenizer(folder, trust_remote_code=trust_remote_code)
    mc_len = max_length or model_max_length(model, tokenizer)
    start_meta = {"label": label, "model_uri": model_uri, "prompt_version": version}

    with storage.output_folder(out_uri, staging_dir, meta=start_meta) as out:
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        timing: dict[str, float] = {}
        results: dict[str, dict] = {}
        configs: dict[str, dict] = {}
        n_samples: dict[str, dict] = {}
        artifacts = ["results.json"]

        # 1. harness multiple choice
        found = fin_harness.discover_tasks(list(harness_dirs), only=tasks)
        skipped = dict(found.skipped)
        task_accs = []
        t0 = time.perf_counter()
        n_items = 0
        for task in found.tasks:
            name = fin_harness.harness_task_name(task.name, version)
            try:
                res = score_task(
                    model,
                    tokenizer,
                    task,
                    version,
                    batch_size=cfg.batch_size,
                    max_length=mc_len,
                    device=dev,
                    progress=progress,
                )
            except TaskRenderError as exc:  # report, do not crash the stage
                skipped[task.name] = f"cannot render prompts: {exc}"
                continue
            results[name] = {
                "alias": name,
                "acc,none": res["acc"],
                "acc_stderr,none": res["acc_stderr"],
                "acc_norm,none": res["acc_norm"],
                "acc_norm_stderr,none": res["acc_norm_stderr"],
            }
            configs[name] = {
                "task": name,
                "dataset_path": task.source,
                "output_type": "multiple_choice",
                "test_split": "test",
                "num_fewshot": 0,
                "target_delimiter": fin_harness.render(task.items[0], task.layout, version).target_delimiter,
                "description": fin_harness.description(task.layout, version),
                "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
                "metadata": {"layout": task.layout, "prompt_version": version},
            }
            n_samples[name] = {"original": len(task.items), "effective": len(task.items)}
            sample_file = f"samples_{_safe_name(name)}.jsonl"
            _write_jsonl(out.path / sample_file, res["samples"])
            metrics[f"harness/{task.name}/acc"] = res["acc"]
            metrics[f"harness/{task.name}/acc_norm"] = res["acc_norm"]
            task_accs.append(res["acc"])
            for key, value in res["stats"].items():
                counts[f"harness/{task.name}/{key}"] = int(value)
            n_items += len(task.items)
        timing["harness_s"] = time.perf_counter() - t0
        if task_accs:
            metrics["harness/avg"] = float(np.mean(task_accs))
        counts["harness/tasks"] = len(task_accs)
        counts["harness/items"] = n_items
        counts["harness/skipped"] = len(skipped)
        counts["harness/empty_continuations"] = sum(
            v for k, v in counts.items() if k.endswith("/empty_continuations")
        )

        # 2. finance perplexity
        ppl_info = None
        if heldout_uri:
            t0 = time.perf_counter()
            texts = [str(r["text"]) for r in storage.iter_jsonl(heldout_uri) if r.get("text")]
            window = min(model_max_length(model, tokenizer), PPL_WINDOW_CAP)
            stream = heldout_stream(tokenizer, texts, cfg.max_heldout_tokens)
            ppl_info = stream_perplexity(
                model, stream, window=window, batch_size=cfg.batch_size, device=dev, progress=progress
            )
            ppl_info.update({"window": window, "documents": len(texts)})
            metrics["ppl"] = ppl_info["ppl"]
            counts["heldout/tokens"] = ppl_info["predicted_tokens"]
            timing["ppl_s"] = time.perf_counter() - t0

        # 3. chat probe
        chat_info = None
        tags: dict[str, str] = {}
        if chat_uri:
            t0 = time.perf_counter()
            questions = list(storage.iter_jsonl(chat_uri))
            for n, q in enumerate(questions):
                if "question" not in q:
                    raise ValueError(f"{chat_uri}: row {n + 1} has no 'question'")
            rows, chat_info = chat_probe(
                model,
                tokenizer,
                questions,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.batch_size,
                regex=cfg.adherence_regex,
                device=dev,
                max_length=model_max_length(model, tokenizer),
                progress=progress,
            )
            _write_jsonl(out.path / "chat_samples.jsonl", rows)
            metrics["chat/adherence"] = chat_info["adherence"]
            metrics["chat/answer_acc"] = chat_info["answer_acc"]
            counts["chat/questions"] = chat_info["n"]
            tags["chat/template"] = chat_info["template"]
            timing["chat_s"] = time.perf_counter() - t0

        report = {
            "results": results,
            "configs": configs,
            "versions": {name: 1.0 for name in results},
            "n-shot": {name: 0 for name in results},
            "n-samples": n_samples,
            "config": {
                "model": "hf",
                "model_args": f"pretrained={model_uri},dtype={dtype},softmax_dtype=float32",
                "model_uri": model_uri,
                "label": label,
                "prompt_version": version,
                "batch_size": cfg.batch_size,
                "max_length": mc_len,
                "dtype": dtype,
                "device": str(dev),
                "torch_version": torch.__version__,
                "transformers_version": transformers.__version__,
            },
            "finmerge": {
                "label": label,
                "ppl": ppl_info,
                "chat": chat_info,
                "skipped": skipped,
                "counts": counts,
                "timing_s": timing,
            },
        }
        (out.path / "results.json").write_text(
            json.dumps(report, ensure_ascii=False, indent=2, allow_nan=True), encoding="utf-8"
        )
        out.meta.update(
            {
                "label": label,
                "counts": counts,
                "metrics": {k: float(v) for k, v in metrics.items() if math.isfinite(v)},
                "artifacts": artifacts,
                "tags": tags,
                "skipped": skipped,
                "timing_s": {k: round(v, 3) for k, v in timing.items()},
            }
        )
    return out.result()


# ---------------------------------------------------------------------------------------------------------
# Comparison across models


def _is_ppl(name: str) -> bool:
    return name == "ppl" or name.endswith("/ppl") or name.startswith("ppl")


def _metric_rank(name: str) -> tuple:
    if name == "harness/avg":
        return (0, name)
    if name.startswith("harness/") and name.endswith("/acc"):
        return (1, name)
    if name.startswith("harness/"):
        return (2, name)
    if name.startswith("chat/"):
        return (3, name)
    if _is_ppl(name):
        return (5, name)
    return (4, name)


def _fmt(name: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.2f}" if _is_ppl(name) else f"{value:.4f}"


def comparison_report(results: dict[str, dict], out_dir: Path) -> dict:
    """Markdown table (models × metrics, best per column in bold) and a bar chart of ``{label: metrics}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [m for m in _ACC_ORDER if m in results] + [m for m in results if m not in _ACC_ORDER]
    names = sorted({k for m in results.values() for k in m}, key=_metric_rank)

    best: dict[str, float] = {}
    for name in names:
        vals = [results[m].get(name) for m in labels]
        vals = [v for v in vals if isinstance(v, int | float) and not math.isnan(v)]
        if len(vals) > 1:
            best[name] = min(vals) if _is_ppl(name) else max(vals)
    header = "| model | " + " | ".join(names) + " |"
    sep = "|---|" + "|".join("---:" for _ in names) + "|"
    lines = [header, sep]
    for m in labels:
        cells = []
        for name in names:
            v = results[m].get(name)
            cell = _fmt(name, v)
            if name in best and v == best[name]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    md = out_dir / "eval_comparison.md"
    md.write_text("# Evaluation comparison\n\n" + table, encoding="utf-8")

    acc_names = [n for n in names if not _is_ppl(n)]
    ppl_names = [n for n in names if _is_ppl(n)]
    panels = 1 + bool(ppl_names)
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(max(6.0, 1.1 * len(acc_names) + 2) + 3 * (panels - 1), 4.5),
        dpi=110,
        gridspec_kw={"width_ratios": [max(len(acc_names), 1), 1.2]} if panels == 2 else None,
        squeeze=False,
    )
    ax = axes[0][0]
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(acc_names))
    for j, m in enumerate(labels):
        vals = [results[m].get(n) for n in acc_names]
        vals = [float("nan") if v is None else float(v) for v in vals]
        ax.bar(x + (j - (len(labels) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(acc_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("accuracy-type metrics")
    ax.grid(axis="y", alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    if ppl_names:
        ax2 = axes[0][1]
        name = ppl_names[0]
        vals = [results[m].get(name) for m in labels]
        ax2.bar(
            labels,
            [float("nan") if v is None else float(v) for v in vals],
            color=[f"C{j}" for j in range(len(labels))],
        )
        ax2.set_title(f"{name} (lower is better)")
        ax2.tick_params(axis="x", rotation=30, labelsize=8)
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png = out_dir / "eval_comparison.png"
    fig.savefig(png)
    plt.close(fig)
    return {"markdown": table, "files": [str(md), str(png)]}


evaluate_task = stage_task("evaluate", evaluate_model)
