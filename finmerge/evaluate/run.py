"""Evaluation stage: harness multiple choice, finance perplexity, two chat probes and the judge for one model,
every score with a bootstrap confidence interval.

:func:`evaluate_model` scores one model and commits an output folder with ``results.json`` (lm-eval's layout
plus a ``finmerge`` section), ``samples_<harness task>.jsonl``, ``chat_samples.jsonl`` (finance questions),
``general_samples.jsonl`` (general questions) and ``judge_samples.jsonl``. The parts:
:mod:`~finmerge.evaluate.preflight` (inputs checked before the model loads),
:mod:`~finmerge.evaluate.harness_run` (multiple choice, scored by :mod:`~finmerge.evaluate.mc_eval`),
:mod:`~finmerge.evaluate.perplexity`, :mod:`~finmerge.evaluate.chat_probe`, :mod:`~finmerge.evaluate.judge`,
:mod:`~finmerge.evaluate.intervals` (``<score>/ci_low``, ``<score>/ci_high``) and
:mod:`~finmerge.evaluate.report` (leaderboard view, comparison across models). This module re-exports the
names the stage's callers use.

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
import time

import torch

from finmerge.config import EvaluateConfig
from finmerge.core import storage
from finmerge.evaluate.chat_probe import (  # noqa: F401  (re-exported)
    chat_probe,
    chat_prompt_ids,
    greedy_generate,
    reply_adheres,
    reply_correct,
)
from finmerge.evaluate.harness_run import run_harness, safe_name, write_jsonl
from finmerge.evaluate.intervals import interval_metrics, intervals_report, score_intervals
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
from finmerge.evaluate.perplexity import PPL_WINDOW_CAP, heldout_stream, stream_perplexity
from finmerge.evaluate.preflight import NothingToEvaluate, preflight, resolve_device  # noqa: F401
from finmerge.evaluate.report import comparison_report, leaderboard_summary  # noqa: F401  (re-exported)
from finmerge.models import loading as modelio


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


def _probe(model, tokenizer, uri: str, cfg: EvaluateConfig, dev, progress: bool) -> tuple[list[dict], dict]:
    """The chat probe on the questions in ``uri`` (each row needs a 'question')."""
    questions = list(storage.iter_jsonl(uri))
    for n, q in enumerate(questions):
        if "question" not in q:
            raise ValueError(f"{uri}: row {n + 1} has no 'question'")
    max_len = model_max_length(model, tokenizer)
    return chat_probe(model, tokenizer, questions, cfg, device=dev, max_length=max_len, progress=progress)


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
    general_uri: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    tasks: list[str] | None = None,
    dtype: str = "float32",
    device: str | None = None,
    max_length: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Score one model (harness MC, finance perplexity, the finance chat probe on ``chat_uri``, the general
    chat probe on ``general_uri``) into the folder ``out_uri``, each score with its bootstrap interval
    (``cfg.bootstrap_samples``; metrics ``<score>/ci_low`` and ``<score>/ci_high``).

    Extra knobs (not in EvaluateConfig): ``tasks`` restricts the harness tasks by name; ``dtype`` of the
    weights (log-softmax is always float32); ``device`` (default cuda if available); ``max_length``
    overrides the model's context length for MC truncation; ``overwrite`` lets ``out_uri`` replace
    something that is not a finmerge evaluation (never the model: see ``storage.check_output``).
    """
    import transformers

    inputs = [u for u in (model_uri, heldout_uri, chat_uri, general_uri) if u]
    storage.check_output(out_uri, "evaluate", inputs, overwrite)
    versions = prompt_versions(cfg.prompt_version)
    found = preflight(harness_dirs, tasks, heldout_uri, chat_uri, cfg, general_uri=general_uri)
    if cfg.judge.questions and not cfg.judge.url:  # fail before loading anything
        raise ValueError(
            "evaluate.judge.questions is set but evaluate.judge.url is not (an OpenAI-compatible API)"
        )
    dev = resolve_device(device)
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
            model, tokenizer, found, versions, out.path, cfg, max_length=mc_len, device=dev, progress=progress
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

        # 3. chat probes: finance questions (chat/*), general questions the base knew (general/*)
        probe_info: dict[str, dict | None] = {"chat": None, "general": None}
        probe_rows: dict[str, list[dict]] = {}
        for prefix, uri in (("chat", chat_uri), ("general", general_uri)):
            if not uri:
                continue
            t0 = time.perf_counter()
            rows, info = _probe(model, tokenizer, uri, cfg, dev, progress)
            write_jsonl(out.path / f"{prefix}_samples.jsonl", rows)
            probe_rows[prefix], probe_info[prefix] = rows, info
            metrics[f"{prefix}/adherence"] = info["adherence"]
            metrics[f"{prefix}/answer_acc"] = info["answer_acc"]
            counts[f"{prefix}/questions"] = info["n"]
            tags.setdefault("chat/template", info["template"])
            timing[f"{prefix}_s"] = time.perf_counter() - t0

        # 4. LLM-as-judge on pfmt-bench style questions (optional)
        judge_info = None
        if cfg.judge.questions:
            t0 = time.perf_counter()
            rows, judge_info = _judge(model, tokenizer, cfg, dev, progress)
            write_jsonl(out.path / "judge_samples.jsonl", rows)
            metrics["judge/overall"] = judge_info["overall"]
            for category, value in judge_info["categories"].items():
                metrics[f"judge/{safe_name(category)}"] = value
            counts.update({f"judge/{k}": int(v) for k, v in judge_info["counts"].items()})
            tags["judge/model"] = str(judge_info.get("judge_model", cfg.judge.model))
            timing["judge_s"] = time.perf_counter() - t0

        # 5. a confidence interval for every score (resampling what was scored above: no model call)
        t0 = time.perf_counter()
        intervals = score_intervals(cfg, harness, ppl_info, probe_rows)
        metrics.update(interval_metrics(intervals))
        timing["bootstrap_s"] = time.perf_counter() - t0

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
                "chat": probe_info["chat"],
                "general": probe_info["general"],
                "judge": judge_info,
                "intervals": intervals_report(cfg, intervals),
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
