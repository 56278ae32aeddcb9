"""Seeded percentile bootstrap: confidence intervals for the evaluation's scores (numpy only).

Every score is a statistic of independent units (harness items, chat questions, perplexity windows). A
replicate draws n units with replacement and recomputes the statistic; the interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates. The draws come from
``numpy.random.default_rng(seed)`` (``seed`` an int or a tuple of ints), so a fixed seed gives the same
interval on every machine. Index matrices are drawn in chunks of at most :data:`CHUNK_CELLS` cells, so
memory stays bounded whatever ``n_boot × n``.

Edge cases: no unit -> ``(nan, nan)``; one unit or all units equal -> the degenerate ``(v, v)``;
``n_boot == 0`` -> ``(nan, nan)`` (no interval asked for).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

CHUNK_CELLS = 1 << 22  # indices per drawn chunk (32 MiB of int64)
NAN_INTERVAL = (float("nan"), float("nan"))
Seed = int | Sequence[int]


def resample_indices(n: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index matrices (rows × n, uniform over ``range(n)``), ``n_boot`` rows in all, in bounded chunks."""
    rows = max(1, CHUNK_CELLS // max(n, 1))
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def _replicates(n: int, n_boot: int, seed: Seed, statistic: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``statistic`` (index matrix -> one value per row) over ``n_boot`` resamples of ``n`` units."""
    rng = np.random.default_rng(seed)
    parts = [statistic(idx) for idx in resample_indices(n, n_boot, rng)]
    return np.concatenate(parts) if parts else np.empty(0)


def mean_replicates(values: Sequence[float], n_boot: int, seed: Seed) -> np.ndarray:
    """The mean of each of ``n_boot`` resamples of ``values`` (empty when there is no value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.empty(0)
    return _replicates(v.size, n_boot, seed, lambda idx: v[idx].mean(axis=1))


def macro_f1_replicates(
    golds: Sequence[int], preds: Sequence[int], n_boot: int, seed: Seed, scale: float = 1.0
) -> np.ndarray:
    """Macro F1 × ``scale`` of each resample of (gold, prediction) pairs, computed like
    :func:`finmerge.evaluate.harness_metrics.chabsa_f1`: the mean over the labels present in the
    resample's golds or predictions, F1 = 2·tp / (2·tp + fp + fn)."""
    g = np.asarray(golds, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if g.shape != p.shape:
        raise ValueError(f"{g.size} golds but {p.size} predictions")
    if g.size == 0:
        return np.empty(0)
    labels = np.union1d(g, p)

    def statistic(idx: np.ndarray) -> np.ndarray:
        gs, ps = g[idx], p[idx]
        total = np.zeros(idx.shape[0])
        present = np.zeros(idx.shape[0])
        for label in labels:
            tp = np.sum((gs == label) & (ps == label), axis=1)
            wrong = np.sum((gs == label) != (ps == label), axis=1)
            seen = (tp + wrong) > 0
            total += np.where(seen, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
            present += seen
        return total / np.maximum(present, 1) * scale

    return _replicates(g.size, n_boot, seed, statistic)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of the replicates (NaN replicates ignored; none -> NaN)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return NAN_INTERVAL
    tail = (1 - level) / 2
    low, high = np.quantile(r, [tail, 1 - tail])
    return float(low), float(high)


def _degenerate(values: np.ndarray) -> tuple[float, float] | None:
    """(v, v) when every value is v: the bootstrap cannot vary it (and float sums must not blur it)."""
    if values.size and np.all(values == values.flat[0]):
        v = float(values.flat[0])
        return v, v
    return None


def mean_ci(values: Sequence[float], n_boot: int, seed: Seed, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of per-item scores (0/1 correctness or real values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or n_boot <= 0:
        return NAN_INTERVAL
    return _degenerate(v) or percentile_interval(mean_replicates(v, n_boot, seed), level)


def group_seeds(seed: Seed, n_groups: int) -> list[np.random.SeedSequence]:
    """One independent, reproducible stream per group, spawned from ``seed``."""
    root = seed if isinstance(seed, int) else tuple(seed)
    return np.random.SeedSequence(root).spawn(n_groups)


def average_interval(replicate_sets: Sequence[np.ndarray], level: float = 0.95) -> tuple[float, float]:
    """Interval of the average of several statistics, each given by its own replicates (same length):
    replicate b of the average is the mean of every statistic's replicate b."""
    sets = [np.asarray(r, dtype=np.float64) for r in replicate_sets if len(r)]
    if not sets:
        return NAN_INTERVAL
    return percentile_interval(np.mean(np.stack(sets), axis=0), level)


def grouped_mean_ci(
    groups: Sequence[Sequence[float]], n_boot: int, seed: Seed, level: float = 0.95
) -> tuple[float, float]:
    """Interval of the average of per-group means (e.g. the harness average over tasks): every group is
    resampled within itself, with its own stream from ``seed``; empty groups do not count."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    arrays = [a for a in arrays if a.size]
    if not arrays or n_boot <= 0:
        return NAN_INTERVAL
    if all(_degenerate(a) for a in arrays):
        v = float(np.mean([a.flat[0] for a in arrays]))
        return v, v
    seeds = group_seeds(seed, len(arrays))
    return average_interval(
        [mean_replicates(a, n_boot, s) for a, s in zip(arrays, seeds, strict=True)], level
    )


def ratio_ci(
    numerators: Sequence[float],
    denominators: Sequence[float],
    n_boot: int,
    seed: Seed,
    level: float = 0.95,
    *,
    exponentiate: bool = True,
) -> tuple[float, float]:
    """Interval of ``Σ numerator / Σ denominator`` over resampled units, exponentiated by default: with
    per-window summed NLL and predicted-token counts, the interval of the perplexity exp(ΣNLL / Σtokens)."""
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape:
        raise ValueError(f"{num.size} numerators but {den.size} denominators")
    if num.size == 0 or n_boot <= 0 or not den.sum() > 0:
        return NAN_INTERVAL
    if num.size == 1:  # computed as the caller computes its point value: exactly that value
        ratio = float(num[0]) / float(den[0])
        v = math.exp(ratio) if exponentiate else ratio
        return v, v
    transform = np.exp if exponentiate else (lambda x: x)

    def statistic(idx: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return transform(num[idx].sum(axis=1) / den[idx].sum(axis=1))

    return percentile_interval(_replicates(num.size, n_boot, seed, statistic), level)
