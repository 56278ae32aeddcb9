"""Confidence intervals for one evaluation's scores, from the per-unit results the stage already has.

Units: harness items at the best prompt version (``samples_<task>.jsonl``), chat questions (the finance
and the general probe), perplexity windows. Every score's interval is a seeded percentile bootstrap
(:mod:`~finmerge.evaluate.bootstrap`) whose stream is derived from ``evaluate.bootstrap_seed`` and the
score's name: the same score of two models is resampled with the same indices when their unit counts
agree, and adding a score never moves another's interval.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from finmerge.config import EvaluateConfig
from finmerge.evaluate import bootstrap
from finmerge.evaluate import harness as fin_harness

CHABSA_F1_SCALE = 1.5  # chabsa_f1's ×1.5 (neutral golds are a label nobody predicts)
CHAT_SCORES = ("adherence", "answer_acc")
CHAT_FIELDS = {"adherence": "adheres", "answer_acc": "correct"}

Interval = tuple[float, float]


def seed_for(seed: int, name: str) -> tuple[int, int]:
    """The bootstrap stream of the score ``name``: stable across runs, machines and the other scores."""
    return seed, zlib.crc32(name.encode("utf-8"))


def _task_replicates(layout: str, metric: str, samples: list[dict], n_boot: int, seed) -> np.ndarray:
    if metric == "f1":
        golds = [int(s["gold"]) for s in samples]
        preds = [int(s["pred"]) for s in samples]
        return bootstrap.macro_f1_replicates(golds, preds, n_boot, seed, scale=CHABSA_F1_SCALE)
    return bootstrap.mean_replicates([float(s[metric]) for s in samples], n_boot, seed)


def harness_intervals(
    best_items: dict[str, dict], board_tasks: dict[str, float], n_boot: int, seed: int, level: float
) -> dict[str, Interval]:
    """``harness/<task>/<metric>`` for every reported metric of every task at the best version, and
    ``harness/avg``: each counted task (a non-zero leaderboard score, as the average counts them) resampled
    within itself with the same stream as its own interval, the task scores averaged per replicate."""
    out: dict[str, Interval] = {}
    board_reps: list[np.ndarray] = []
    for task, info in best_items.items():
        layout, samples = info["layout"], info["samples"]
        for metric in fin_harness.metric_names(layout):
            name = f"harness/{task}/{metric}"
            reps = _task_replicates(layout, metric, samples, n_boot, seed_for(seed, name))
            out[name] = _interval(reps, level)
            score = board_tasks.get(task)
            counted = score and not math.isnan(score)
            if metric == fin_harness.leaderboard_metric(layout) and counted:
                board_reps.append(reps)
    if board_reps:
        out["harness/avg"] = bootstrap.average_interval(board_reps, level)
    elif best_items:  # no task scored: the average is 0.0 by the leaderboard's rule, whatever the resample
        out["harness/avg"] = (0.0, 0.0)
    return out


def _interval(replicates: np.ndarray, level: float) -> Interval:
    if replicates.size and np.all(replicates == replicates[0]):
        return float(replicates[0]), float(replicates[0])
    return bootstrap.percentile_interval(replicates, level)


def chat_intervals(
    prefix: str, rows: list[dict], n_boot: int, seed: int, level: float
) -> dict[str, Interval]:
    """``<prefix>/adherence`` and ``<prefix>/answer_acc`` over the probe's questions."""
    out = {}
    for score in CHAT_SCORES:
        name = f"{prefix}/{score}"
        values = [float(bool(r[CHAT_FIELDS[score]])) for r in rows]
        out[name] = bootstrap.mean_ci(values, n_boot, seed_for(seed, name), level)
    return out


def ppl_interval(ppl_info: dict, n_boot: int, seed: int, level: float) -> Interval:
    """exp(ΣNLL / Σtokens) over resampled perplexity windows."""
    return bootstrap.ratio_ci(
        ppl_info["window_nll"], ppl_info["window_tokens"], n_boot, seed_for(seed, "ppl"), level
    )


def score_intervals(
    cfg: EvaluateConfig,
    harness: dict,
    ppl_info: dict | None,
    probes: dict[str, list[dict]],
) -> dict[str, Interval]:
    """Every score's interval: the harness (``run_harness``'s result), perplexity, and each chat probe's
    rows by metric prefix (``{"chat": rows, "general": rows}``). Empty when ``bootstrap_samples`` is 0."""
    n_boot, seed, level = cfg.bootstrap_samples, cfg.bootstrap_seed, cfg.ci_level
    if n_boot <= 0:
        return {}
    board = harness["leaderboard"]
    board_tasks = (board["versions"].get(board.get("best_version")) or {}).get("tasks") or {}
    out = harness_intervals(harness["best_items"], board_tasks, n_boot, seed, level)
    if ppl_info is not None:
        out["ppl"] = ppl_interval(ppl_info, n_boot, seed, level)
    for prefix, rows in probes.items():
        out.update(chat_intervals(prefix, rows, n_boot, seed, level))
    return out


def interval_metrics(intervals: dict[str, Interval]) -> dict[str, float]:
    """``<score>/ci_low`` and ``<score>/ci_high`` for every finite interval (MLflow metric names)."""
    out = {}
    for name, (low, high) in intervals.items():
        if math.isfinite(low) and math.isfinite(high):
            out[f"{name}/ci_low"] = low
            out[f"{name}/ci_high"] = high
    return out


def intervals_report(cfg: EvaluateConfig, intervals: dict[str, Interval]) -> dict:
    """The results.json record: how the intervals were made, and each score's [low, high]."""
    return {
        "method": "percentile bootstrap",
        "samples": cfg.bootstrap_samples,
        "level": cfg.ci_level,
        "seed": cfg.bootstrap_seed,
        "units": {"harness": "items", "chat": "questions", "general": "questions", "ppl": "windows"},
        "scores": {name: [low, high] for name, (low, high) in intervals.items()},
    }
