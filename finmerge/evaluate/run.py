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

import json
import math
import re
import time
import unicodedata
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from finmerge.config import EvaluateConfig
from finmerge.core import storage
from finmerge.evaluate import harness as fin_harness
from finmerge.evaluate.loglik import (  # noqa: F401  (re-exported: the stage's public scoring API)
    EncodedPair,
    ItemRequest,
    encode,
    encode_pair,
    eos_ids,
    model_max_length,
    score_items,
    score_loglikelihoods,
)
from finmerge.evaluate.mc_eval import (  # noqa: F401  (re-exported)
    TaskRenderError,
    mc_prediction,
    prompt_versions,
    score_task,
    split_task_spec,
)
from finmerge.models import loading as modelio

PPL_WINDOW_CAP = 1024
_ACC_ORDER = ("base", "instruct", "cpt", "merged")


# ---------------------------------------------------------------------------------------------------------
# Multiple choice: finmerge/evaluate/mc_eval.py (importable without Prefect, e.g. by bench/evaluate.py)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


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
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or mps") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NothingToEvaluate(ValueError):
    """An evaluation asked for data that is not there: a user mistake, reported before the model loads."""


def preflight(
    harness_dirs: list[str],
    only: list[str] | None,
    heldout_uri: str | None,
    chat_uri: str | None,
    cfg: EvaluateConfig,
) -> fin_harness.Discovery:
    """Discover the harness tasks and check every input exists before the model is loaded: a harness
    folder that is missing or holds no task, a task asked for by name that no folder has, a missing
    held-out or chat file, or nothing at all to evaluate is an error naming what and where."""
    found = _discover(list(harness_dirs), only, cfg.cpa_nan_choice)
    problems = []
    for spec in harness_dirs:
        folder, picked = split_task_spec(str(spec))
        folder = folder.rstrip("/")
        if found.skipped.get(folder, "").startswith(("harness folder not found", "cannot list")):
            problems.append(f"harness folder {folder}: {found.skipped[folder]}")
        elif picked is None and only is None and not any(t.source.startswith(folder) for t in found.tasks):
            why = "; ".join(f"{k}: {v}" for k, v in found.skipped.items()) or "it is empty"
            problems.append(f"harness folder {folder} holds no task ({why})")
    wanted = [t for spec in harness_dirs for t in (split_task_spec(str(spec))[1] or [])] + list(only or [])
    loaded = {t.name for t in found.tasks}
    aliases = {"cpa": "cpa_audit"}  # the folder name cpa selects the task cpa_audit
    missing = [t for t in dict.fromkeys(wanted) if aliases.get(t, t) not in loaded]
    for name in missing:
        why = found.skipped.get(name, "task folder not found in harness_dirs")
        problems.append(f"task {name!r}: {why}")
    for what, uri in (("held-out text", heldout_uri), ("chat questions", chat_uri)):
        if uri and not storage.exists(uri):
            problems.append(f"{what} {uri}: not found")
    if not problems and not (found.tasks or heldout_uri or chat_uri or cfg.judge.questions):
        problems.append("nothing to evaluate: no harness task, no held-out text, no chat questions, no judge")
    if problems:
        raise NothingToEvaluate("evaluate: " + "; ".join(problems))
    return found


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _discover(harness_dirs: list[str], only: list[str] | None, cpa_nan_choice: bool) -> fin_harness.Discovery:
    """Tasks from every ``DATA[:tasks]`` spec; a task name found twice keeps its first folder."""
    found = fin_harness.Discovery()
    names: set[str] = set()
    for spec in harness_dirs:
        folder, picked = split_task_spec(str(spec))
        if only is not None:
            picked = [t for t in (picked or only) if t in only]
        part = fin_harness.discover_tasks([folder], only=picked, cpa_nan_choice=cpa_nan_choice)
        for task in part.tasks:
            if task.name in names:
                found.skipped[f"{task.name}@{folder}"] = "duplicate task name (loaded from an earlier folder)"
                continue
            names.add(task.name)
            found.tasks.append(task)
        found.skipped.update({k: v for k, v in part.skipped.items() if k not in names})
        found.notes.update(part.notes)
    return found


def _task_config(task: fin_harness.Task, version: str) -> dict:
    effective = fin_harness.effective_version(task.layout, version)
    return {
        "task": fin_harness.harness_task_name(task.name, version, task.layout),
        "dataset_path": task.source,
        "output_type": "multiple_choice",
        "test_split": "test",
        "num_fewshot": 0,
        "target_delimiter": fin_harness.render(task.items[0], task.layout, version).target_delimiter,
        "description": fin_harness.description(task.layout, effective),
        "metric_list": [{"metric": m} for m in fin_harness.metric_names(task.layout)],
        "metadata": {
            "layout": task.layout,
            "prompt_version": effective,
            "variant": task.variant,
            "skipped_rows": task.skipped_rows,
        },
    }


def _result_entry(name: str, layout: str, res: dict) -> dict:
    entry = {"alias": name}
    for metric in fin_harness.metric_names(layout):
        entry[f"{metric},none"] = res[metric]
        # chabsa's F1 aggregation cannot be bootstrapped: lm-eval reports its stderr as N/A
        entry[f"{metric}_stderr,none"] = res.get(f"{metric}_stderr", "N/A")
    return entry


def run_harness(
    model,
    tokenizer,
    harness_dirs: list[str],
    versions: list[str],
    out_dir: Path,
    *,
    cfg: EvaluateConfig,
    only: list[str] | None,
    max_length: int,
    device,
    progress: bool = True,
    found: fin_harness.Discovery | None = None,
) -> dict:
    """Every discovered task at every prompt version, into lm-eval's results layout plus sample files.

    The leaderboard score of a version is the mean over tasks with a non-zero score of f1 (chabsa) or
    acc; the best version's figures become the stage's ``harness/*`` metrics.
    """
    if found is None:
        found = _discover(list(harness_dirs), only, cfg.cpa_nan_choice)
    skipped = dict(found.skipped)
    results: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    n_samples: dict[str, dict] = {}
    counts: dict[str, int] = {}
    per_version: dict[str, dict[str, float]] = {v: {} for v in versions}
    task_metrics_at: dict[tuple[str, str], dict] = {}
    by_name: dict[str, dict] = {}  # harness task name -> scores (several versions can share one name)
    failed: set[str] = set()
    for version in versions:
        for task in found.tasks:
            if task.name in failed:
                continue
            name = fin_harness.harness_task_name(task.name, version, task.layout)
            if name not in results:  # chabsa 0.1.2 / 0.2.1 are its 0.1 / 0.2: scored once
                try:
                    res = score_task(
                        model,
                        tokenizer,
                        task,
                        version,
                        batch_size=cfg.batch_size,
                        max_length=max_length,
                        device=device,
                        kv_reuse=cfg.kv_reuse,
                        max_batch_tokens=cfg.max_batch_tokens,
                        progress=progress,
                    )
                except TaskRenderError as exc:  # report, do not crash the stage
                    skipped[task.name] = f"cannot render prompts: {exc}"
                    failed.add(task.name)
                    continue
                results[name] = _result_entry(name, task.layout, res)
                configs[name] = _task_config(task, version)
                n_samples[name] = {"original": len(task.items), "effective": len(task.items)}
                _write_jsonl(out_dir / f"samples_{_safe_name(name)}.jsonl", res["samples"])
                for key, value in res["stats"].items():
                    counts[f"harness/{task.name}/{key}"] = counts.get(f"harness/{task.name}/{key}", 0) + int(
                        value
                    )
                by_name[name] = res
            task_metrics_at[(task.name, version)] = by_name[name]
            metric = fin_harness.leaderboard_metric(task.layout)
            per_version[version][task.name] = float(task_metrics_at[(task.name, version)][metric])
    scored = {v: fin_harness.leaderboard_average(t) for v, t in per_version.items() if t}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    leaderboard = {"versions": {v: {"avg": scored.get(v), "tasks": per_version[v]} for v in versions}}
    if scored:
        best = fin_harness.best_version(scored)
        leaderboard["best_version"] = best
        tags["harness/best_version"] = best
        metrics["harness/avg"] = scored[best]
        for task in found.tasks:
            res = task_metrics_at.get((task.name, best))
            for metric in fin_harness.metric_names(task.layout) if res else ():
                metrics[f"harness/{task.name}/{metric}"] = float(res[metric])
        if len(scored) > 1:
            for v, avg in scored.items():
                metrics[f"harness/version/{v}/avg"] = avg
    counts["harness/tasks"] = len({t for t, _ in task_metrics_at})
    counts["harness/items"] = sum(len(t.items) for t in found.tasks if t.name not in failed)
    counts["harness/skipped"] = len(skipped)
    counts["harness/empty_continuations"] = sum(
        v for k, v in counts.items() if k.endswith("/empty_continuations")
    )
    return {
        "results": results,
        "configs": configs,
        "n_samples": n_samples,
        "leaderboard": leaderboard,
        "skipped": skipped,
        "notes": found.notes,
        "metrics": metrics,
        "counts": counts,
        "tags": tags,
    }


def leaderboard_summary(report: dict) -> dict:
    """The leaderboard view of a results.json: scores x 100, best version first (for people and the CLI)."""
    fm = report.get("finmerge") or {}
    board = fm.get("leaderboard") or {}
    best = board.get("best_version")
    versions = board.get("versions") or {}

    def pct(x):
        return None if x is None else round(100 * float(x), 2)

    out = {
        "best_version": best,
        "avg": pct((versions.get(best) or {}).get("avg")) if best else None,
        "tasks": {t: pct(v) for t, v in ((versions.get(best) or {}).get("tasks") or {}).items()},
    }
    if len(versions) > 1:
        out["versions"] = {v: pct(info.get("avg")) for v, info in versions.items()}
    for key in ("ppl", "chat", "judge"):
        info = fm.get(key)
        if info:
            out[key] = {k: info[k] for k in ("ppl", "adherence", "answer_acc", "overall") if k in info}
    if fm.get("skipped"):
        out["skipped"] = fm["skipped"]
    return out


def _judge(model, tokenizer, cfg: EvaluateConfig, dev, progress: bool) -> tuple[list[dict], dict]:
    from finmerge.evaluate import judge

    return judge.judge_model(
        model,
        tokenizer,
        cfg.judge,
        device=dev,
        api_key=judge.resolve_judge_key(cfg.judge),
        progress=progress,
        max_length=model_max_length(model, tokenizer),
    )


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
    allow_pickle: bool = False,
    tasks: list[str] | None = None,
    dtype: str = "float32",
    device: str | None = None,
    max_length: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Score one model (harness MC, finance perplexity, chat probe) into the folder ``out_uri``.

    Extra knobs (not in EvaluateConfig): ``tasks`` restricts the harness tasks by name; ``dtype`` of the
    weights (log-softmax is always float32); ``device`` (default cuda if available); ``max_length``
    overrides the model's context length for MC truncation; ``overwrite`` lets ``out_uri`` replace
    something that is not a finmerge evaluation (never the model: see ``storage.check_output``).
    """
    import transformers

    inputs = [u for u in (model_uri, heldout_uri, chat_uri) if u]
    storage.check_output(out_uri, "evaluate", inputs, overwrite)
    versions = prompt_versions(cfg.prompt_version)
    found = preflight(harness_dirs, tasks, heldout_uri, chat_uri, cfg)
    if cfg.judge.questions and not cfg.judge.url:  # fail before loading anything
        raise ValueError(
            "evaluate.judge.questions is set but evaluate.judge.url is not (an OpenAI-compatible API)"
        )
    dev = _device(device)
    folder = modelio.stage_model(model_uri, staging_dir, allow_pickle)
    model = modelio.load_causal_lm(folder, trust_remote_code=trust_remote_code, dtype=getattr(torch, dtype))
    model.to(dev)
    tokenizer = modelio.load_tokenizer(folder, trust_remote_code=trust_remote_code)
    mc_len = max_length or model_max_length(model, tokenizer)
    start_meta = {"label": label, "model_uri": model_uri, "prompt_versions": versions}

    with storage.output_folder(
        out_uri, staging_dir, meta=start_meta, stage="evaluate", inputs=inputs, overwrite=overwrite
    ) as out:
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        timing: dict[str, float] = {}
        tags: dict[str, str] = {}
        artifacts = ["results.json"]

        # 1. harness multiple choice
        t0 = time.perf_counter()
        harness = run_harness(
            model,
            tokenizer,
            harness_dirs,
            versions,
            out.path,
            cfg=cfg,
            only=tasks,
            max_length=mc_len,
            device=dev,
            progress=progress,
            found=found,
        )
        timing["harness_s"] = time.perf_counter() - t0
        results, configs, n_samples = harness["results"], harness["configs"], harness["n_samples"]
        skipped = harness["skipped"]
        metrics.update(harness["metrics"])
        counts.update(harness["counts"])
        tags.update(harness["tags"])

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

        # 4. LLM-as-judge on pfmt-bench style questions (optional)
        judge_info = None
        if cfg.judge.questions:
            t0 = time.perf_counter()
            rows, judge_info = _judge(model, tokenizer, cfg, dev, progress)
            _write_jsonl(out.path / "judge_samples.jsonl", rows)
            metrics["judge/overall"] = judge_info["overall"]
            for category, value in judge_info["categories"].items():
                metrics[f"judge/{_safe_name(category)}"] = value
            counts.update({f"judge/{k}": int(v) for k, v in judge_info["counts"].items()})
            tags["judge/model"] = str(judge_info.get("judge_model", cfg.judge.model))
            timing["judge_s"] = time.perf_counter() - t0

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
                "prompt_versions": versions,
                "batch_size": cfg.batch_size,
                "kv_reuse": cfg.kv_reuse,
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
                "judge": judge_info,
                "leaderboard": harness["leaderboard"],
                "skipped": skipped,
                "notes": harness["notes"],
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
