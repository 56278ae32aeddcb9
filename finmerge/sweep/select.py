"""The objective: which candidate of a sweep wins on its validation metrics.

Feasible candidates meet every constraint; the winner has the best objective among them, ties (within the
tolerance) broken by the tie-break metrics in order, then by closeness to α = β = 1 (the paper's setting,
so the sweep moves away from it only for a real gain), then by grid order. When no candidate is feasible
the one that violates the constraints least wins, and the choice says so.
"""

from __future__ import annotations

import math

from finmerge.config import SweepConstraint, SweepObjective


def _value(metrics: dict, name: str) -> float:
    v = metrics.get(name)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else math.nan


def shortfall(metrics: dict, c: SweepConstraint) -> float:
    """How far ``metrics`` misses the constraint (0 when met; inf when the metric is missing)."""
    v = _value(metrics, c.metric)
    if math.isnan(v):
        return math.inf
    return max(0.0, c.value - v) if c.op == ">=" else max(0.0, v - c.value)


def _score(metrics: dict, objective: SweepObjective) -> float:
    v = _value(metrics, objective.metric)
    if math.isnan(v):
        return -math.inf
    return v if objective.goal == "maximize" else -v


def _distance(candidate: dict) -> float:
    return abs(candidate["alpha"] - 1.0) + abs(candidate["beta"] - 1.0)


def select(rows: list[dict], objective: SweepObjective) -> dict:
    """``rows``: ``[{"candidate": {alpha, beta, ...}, "metrics": {...}}]`` in grid order.

    Returns ``{"index", "feasible", "reason", "shortfalls"}``: the winning row and why it won."""
    if not rows:
        raise ValueError("the sweep has no candidates")
    shortfalls = [sum(shortfall(r["metrics"], c) for c in objective.constraints) for r in rows]
    feasible = [i for i, s in enumerate(shortfalls) if s == 0]
    if feasible:
        pool, why = feasible, f"{len(feasible)}/{len(rows)} candidates meet the constraints"
    else:
        least = min(shortfalls)
        pool = [i for i, s in enumerate(shortfalls) if s == least]
        why = f"no candidate meets the constraints; the least violating (shortfall {least:.3g}) was taken"
    best = max(_score(rows[i]["metrics"], objective) for i in pool)
    tied = [i for i in pool if _score(rows[i]["metrics"], objective) >= best - objective.tolerance]

    def order(i: int) -> tuple:
        m = rows[i]["metrics"]
        breaks = tuple(-_nan_low(_value(m, name)) for name in objective.tie_break)
        return (*breaks, _distance(rows[i]["candidate"]), i)

    index = min(tied, key=order)
    if len(tied) > 1:
        why += f"; {len(tied)} tied on {objective.metric}, broken by {', '.join(objective.tie_break) or '–'}"
        why += " then closeness to α = β = 1"
    return {"index": index, "feasible": bool(feasible), "reason": why, "shortfalls": shortfalls}


def _nan_low(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (both maximised), by increasing x."""
    front = []
    for i, (x, y) in enumerate(points):
        if math.isnan(x) or math.isnan(y):
            continue
        dominated = any(
            (x2 >= x and y2 >= y) and (x2 > x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i and not (math.isnan(x2) or math.isnan(y2))
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])
