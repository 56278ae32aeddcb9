"""Harness multiple choice for one model: every task at every prompt version, in lm-eval's results layout
(``results``, ``configs``, ``n-samples``), plus one ``samples_<task>.jsonl`` per scored task and the
leaderboard (best prompt version by the mean score)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from finmerge.config import EvaluateConfig
from finmerge.evaluate import harness as fin_harness
from finmerge.evaluate.mc_eval import TaskRenderError, score_task


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


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
    found: fin_harness.Discovery,
    versions: list[str],
    out_dir: Path,
    cfg: EvaluateConfig,
    *,
    max_length: int,
    device,
    progress: bool = True,
) -> dict:
    """Every task ``found`` (:func:`~finmerge.evaluate.preflight.preflight`) at every prompt version, into
    lm-eval's results layout plus sample files.

    The leaderboard score of a version is the mean over tasks with a non-zero score of f1 (chabsa) or
    acc; the best version's figures become the stage's ``harness/*`` metrics.
    """
    scoring = {
        "batch_size": cfg.batch_size,
        "max_length": max_length,
        "device": device,
        "kv_reuse": cfg.kv_reuse,
        "max_batch_tokens": cfg.max_batch_tokens,
        "progress": progress,
    }
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
                    res = score_task(model, tokenizer, task, version, **scoring)
                except TaskRenderError as exc:  # report, do not crash the stage
                    skipped[task.name] = f"cannot render prompts: {exc}"
                    failed.add(task.name)
                    continue
                results[name] = _result_entry(name, task.layout, res)
                configs[name] = _task_config(task, version)
                n_samples[name] = {"original": len(task.items), "effective": len(task.items)}
                write_jsonl(out_dir / f"samples_{safe_name(name)}.jsonl", res["samples"])
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
    best_items: dict[str, dict] = {}  # the best version's per-item samples, for the confidence intervals
    if scored:
        best = fin_harness.best_version(scored)
        leaderboard["best_version"] = best
        tags["harness/best_version"] = best
        metrics["harness/avg"] = scored[best]
        for task in found.tasks:
            res = task_metrics_at.get((task.name, best))
            for metric in fin_harness.metric_names(task.layout) if res else ():
                metrics[f"harness/{task.name}/{metric}"] = float(res[metric])
            if res:
                best_items[task.name] = {"layout": task.layout, "samples": res["samples"]}
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
        "best_items": best_items,
    }
