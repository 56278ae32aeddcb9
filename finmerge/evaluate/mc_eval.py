"""Harness multiple choice for one model: requests, log-likelihoods, predictions and task metrics.

Plain model code (no Prefect, no MLflow): the evaluation stage (``finmerge/evaluate/run.py``) and
``bench/evaluate.py`` both call :func:`score_task`. Scoring reproduces lm-eval's HF backend
(fin-harness.md §4-5): request = (context, delimiter + choice) with the context's trailing whitespace
moved to the continuation, joint encoding split at ``len(encode(context))`` with no special tokens,
left truncation to the model's length, float32 ``log_softmax`` and the summed continuation log-probs.
The KV path (:func:`finmerge.evaluate.loglik.score_items`) computes the same numbers with far fewer tokens.
"""

from __future__ import annotations

import math
import re

import numpy as np

from finmerge.evaluate import harness as fin_harness
from finmerge.evaluate.loglik import (
    ItemRequest,
    encode_many,
    min_tokens,
    score_items,
    score_loglikelihoods,
    split_pair,
)


def prompt_versions(spec: str) -> list[str]:
    """``all``, one version or a comma list (``default``, ``0.2.1`` and ``1.0-0.2.1`` all accepted)."""
    spec = str(spec).strip()
    if spec == "all":
        return list(fin_harness.VERSIONS)
    out = []
    for part in spec.split(","):
        v = fin_harness.normalize_version(part)
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError("no prompt version given")
    return out


def split_task_spec(spec: str) -> tuple[str, list[str] | None]:
    """``[fin-harness:]DATA[:task1,task2]`` -> (DATA, tasks or None). DATA may be a URL (s3://…)."""
    spec = spec.removeprefix("fin-harness:")
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and "/" not in tail and re.fullmatch(r"[\w.,-]+", tail):
        return head, [t for t in tail.split(",") if t]
    return spec, None


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


class TaskRenderError(ValueError):
    """A task whose prompts cannot be rendered or encoded (reported as skipped, never a crash)."""


def encode_items(tokenizer, prompts: list[fin_harness.Prompt]) -> tuple[list[ItemRequest], int, int]:
    """Every item's requests as token ids: (item requests, empty continuations, boundary merges).

    Every choice of an item has the same context string after the whitespace move, hence the same
    ``ctx_ids`` (fin-harness.md §4 step 6), so each context is encoded once. All strings of a task go
    through the tokenizer in a few batched calls; the ids are the same as one call per string.
    """
    texts: list[str] = []
    shapes = []
    for prompt in prompts:
        reqs = fin_harness.requests_for(prompt)
        if len({ctx for ctx, _ in reqs}) != 1:
            raise ValueError("choices of one item do not share a context")
        shapes.append((len(texts), len(reqs)))
        texts += [reqs[0][0]] + [ctx + cont for ctx, cont in reqs]
    ids = encode_many(tokenizer, texts)
    requests, empty, merges = [], 0, 0
    for start, n in shapes:
        ctx_ids = ids[start]
        encoded = [split_pair(tokenizer, ctx_ids, whole) for whole in ids[start + 1 : start + 1 + n]]
        requests.append(
            ItemRequest(ctx_ids=tuple(encoded[0].ctx_ids), conts=tuple(tuple(e.cont_ids) for e in encoded))
        )
        empty += sum(e.empty for e in encoded)
        merges += sum(e.boundary_merge for e in encoded)
    return requests, empty, merges


def score_requests(
    model, requests: list[ItemRequest], *, kv_reuse: bool, **kw
) -> tuple[list[list[float]], dict[str, int]]:
    """Per-item choice log-likelihoods by the KV path, or by lm-eval's row path when ``kv_reuse`` is off."""
    if kv_reuse:
        return score_items(model, requests, **kw)
    pairs = [(list(r.ctx_ids), list(c)) for r in requests for c in r.conts]
    flat, stats = score_loglikelihoods(model, pairs, **kw)
    stats["min_tokens"] = min_tokens(requests)
    out, n = [], 0
    for r in requests:
        out.append(flat[n : n + len(r.conts)])
        n += len(r.conts)
    return out, stats


def task_metrics(layout: str, golds: list[int], preds: list[int], preds_norm: list[int]) -> dict:
    """The harness metrics of one task: acc / acc_norm (mean, stderr), plus f1 / f1_norm for chabsa."""
    accs = [float(p == g) for p, g in zip(preds, golds, strict=True)]
    norms = [float(p == g) for p, g in zip(preds_norm, golds, strict=True)]
    out = {
        "acc": float(np.mean(accs)),
        "acc_stderr": _stderr(accs),
        "acc_norm": float(np.mean(norms)),
        "acc_norm_stderr": _stderr(norms),
    }
    if "f1" in fin_harness.metric_names(layout):
        out["f1"] = fin_harness.chabsa_f1(golds, preds)
        out["f1_norm"] = fin_harness.chabsa_f1(golds, preds_norm)
    return out


def score_task(
    model,
    tokenizer,
    task: fin_harness.Task,
    version: str,
    *,
    batch_size: int,
    max_length: int,
    device,
    kv_reuse: bool = True,
    max_batch_tokens: int = 65_536,
    progress: bool = True,
) -> dict:
    """Score one harness task at one prompt version: metrics, per-item samples and request statistics."""
    prompts = []
    for item in task.items:
        try:
            prompts.append(fin_harness.render(item, task.layout, version))
        except Exception as exc:
            raise TaskRenderError(f"item {item.id}: {type(exc).__name__}: {exc}") from exc
    try:
        requests, empty, merges = encode_items(tokenizer, prompts)
    except Exception as exc:
        raise TaskRenderError(f"cannot encode the requests: {type(exc).__name__}: {exc}") from exc
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_item, stats = score_requests(
        model,
        requests,
        kv_reuse=kv_reuse,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        pad_id=pad_id,
        max_batch_tokens=max_batch_tokens,
        desc=f"{task.name} [{version}]",
        progress=progress,
    )
    samples, golds, preds, preds_norm = [], [], [], []
    for k, (item, prompt, request) in enumerate(zip(task.items, prompts, requests, strict=True)):
        res = mc_prediction(per_item[k], prompt.choices, item.gold)
        golds.append(item.gold)
        preds.append(res["pred"])
        preds_norm.append(res["pred_norm"])
        samples.append(
            {
                "doc_id": k,
                "id": item.id,
                "gold": item.gold,
                "choices": list(prompt.choices),
                "ll": per_item[k],
                "cont_tokens": [len(c) for c in request.conts],
                "ctx_tokens": len(request.ctx_ids),
                **res,
            }
        )
    stats.update({"items": len(task.items), "empty_continuations": empty, "boundary_merges": merges})
    return {**task_metrics(task.layout, golds, preds, preds_norm), "samples": samples, "stats": stats}
