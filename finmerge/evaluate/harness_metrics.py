"""Harness metrics (fin-harness.md §2): which metrics a task reports, chabsa's F1, the leaderboard average
and the best prompt version."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from finmerge.evaluate.harness_tasks import VERSIONS


def metric_names(layout: str) -> tuple[str, ...]:
    """The metrics reported for a task; the first is the leaderboard's."""
    return ("f1", "acc", "acc_norm") if layout == "chabsa" else ("acc", "acc_norm")


def leaderboard_metric(layout: str) -> str:
    return metric_names(layout)[0]


def chabsa_f1(golds: Sequence[int], preds: Sequence[int]) -> float:
    """The harness's chabsa aggregation: ``f1_score(golds, preds, average="macro") * 1.5``.

    Macro F1 over every label present in golds or preds. Neutral gold (-100) is a label nobody predicts,
    so its F1 is 0 and the ×1.5 turns the 3-label mean back into (F1_pos + F1_neg) / 2.
    A fraction (0-1.5 in principle, ≤ 1 in practice), like acc.
    """
    g = np.asarray(list(golds), dtype=np.int64)
    p = np.asarray(list(preds), dtype=np.int64)
    if g.shape != p.shape:
        raise ValueError(f"{len(g)} golds but {len(p)} predictions")
    if g.size == 0:
        return 0.0
    f1s = []
    for label in np.union1d(g, p):
        tp = int(np.sum((g == label) & (p == label)))
        wrong = int(np.sum((g == label) != (p == label)))  # false positives + false negatives
        f1s.append(2 * tp / (2 * tp + wrong) if tp or wrong else 0.0)
    return float(np.mean(f1s) * 1.5)


def leaderboard_average(scores: dict[str, float]) -> float:
    """make_leaderboard.py's Ave.: the mean over tasks with a non-zero score (NaN counts as no score).

    Same unit as the inputs (finmerge passes fractions; the leaderboard shows ×100); 0.0 if none scored.
    """
    vals = [float(v) for v in scores.values() if v and not math.isnan(v)]
    return float(np.mean(vals)) if vals else 0.0


def best_version(avgs: dict[str, float]) -> str:
    """The version with the best average; a tie goes to the earlier one in :data:`VERSIONS` order."""
    if not avgs:
        raise ValueError("no version averages to choose from")
    order = {v: i for i, v in enumerate(VERSIONS)}
    return min(avgs, key=lambda v: (-avgs[v], order.get(v, len(order))))
