"""The seeded percentile bootstrap behind every evaluation score's confidence interval: coverage, width,
determinism, the edge cases, the grouped (harness average) and the ratio (perplexity) forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from finmerge.evaluate import bootstrap as B
from finmerge.evaluate.harness_metrics import chabsa_f1


def _bernoulli(n: int, ones: int, seed: int) -> np.ndarray:
    values = np.zeros(n)
    values[:ones] = 1.0
    np.random.default_rng(seed).shuffle(values)
    return values


def test_bernoulli_interval_contains_p_and_has_the_normal_width():
    values = _bernoulli(400, 120, seed=1)  # mean exactly 0.3
    low, high = B.mean_ci(values, 2000, seed=0)
    assert low < 0.3 < high
    expected = 2 * 1.96 * math.sqrt(0.3 * 0.7 / 400)  # 0.0898
    assert abs((high - low) - expected) < 0.2 * expected, (low, high)
    # a wider level gives a wider interval around the same centre
    low99, high99 = B.mean_ci(values, 2000, seed=0, level=0.99)
    assert low99 < low and high < high99


def test_coverage_over_repeated_samples():
    """Over many samples drawn from Bernoulli(0.3), the 95% interval covers 0.3 about 95% of the time."""
    rng = np.random.default_rng(7)
    trials, covered = 200, 0
    for t in range(trials):
        values = (rng.random(100) < 0.3).astype(float)
        low, high = B.mean_ci(values, 500, seed=t)
        covered += low <= 0.3 <= high
    assert 0.88 <= covered / trials <= 0.99, covered


def test_fixed_seed_is_deterministic_and_seeds_differ():
    values = _bernoulli(200, 70, seed=2)
    assert B.mean_ci(values, 1000, 5) == B.mean_ci(values, 1000, 5)
    assert B.mean_ci(values, 1000, (5, 9)) == B.mean_ci(values, 1000, (5, 9))
    assert B.mean_ci(values, 1000, 5) != B.mean_ci(values, 1000, 6)


def test_same_draws_as_a_plain_loop_and_chunking_does_not_change_them(monkeypatch):
    values = np.random.default_rng(3).normal(size=37)
    idx = np.random.default_rng(11).integers(0, 37, size=(300, 37))
    reference = np.quantile(values[idx].mean(axis=1), [0.025, 0.975])
    assert B.mean_ci(values, 300, 11) == pytest.approx(tuple(reference), abs=0, rel=1e-12)
    whole = B.mean_ci(values, 300, 11)
    monkeypatch.setattr(B, "CHUNK_CELLS", 37 * 7)  # 7 rows per chunk: 43 chunks
    assert B.mean_ci(values, 300, 11) == whole


def test_edge_cases():
    nan = B.mean_ci([], 100, 0)
    assert math.isnan(nan[0]) and math.isnan(nan[1])
    assert B.mean_ci([0.7], 100, 0) == (0.7, 0.7)
    assert B.mean_ci([1.0] * 50, 100, 0) == (1.0, 1.0)
    assert B.mean_ci([0.1] * 30, 100, 0) == (0.1, 0.1)  # no float blur on equal real values
    assert all(math.isnan(x) for x in B.mean_ci([0.0, 1.0], 0, 0))  # 0 resamples: no interval
    assert all(math.isnan(x) for x in B.grouped_mean_ci([], 100, 0))
    assert all(math.isnan(x) for x in B.ratio_ci([], [], 100, 0))
    with pytest.raises(ValueError, match="level"):
        B.mean_ci([0.0, 1.0], 10, 0, level=1.0)


def test_grouped_averages_task_means_not_items():
    big, small = np.ones(1000), np.zeros(10)
    # pooled over items this would be ~0.99; the average of the two task means is 0.5, and cannot vary
    assert B.grouped_mean_ci([big, small], 500, 0) == (0.5, 0.5)
    a, b = _bernoulli(300, 90, 4), _bernoulli(100, 60, 5)  # 0.3 and 0.6
    low, high = B.grouped_mean_ci([a, b], 2000, 0)
    assert low < 0.45 < high
    # the average's spread: sqrt(var_a/na + var_b/nb) / 2 (independent tasks)
    sd = math.sqrt(0.21 / 300 + 0.24 / 100) / 2
    assert abs((high - low) - 2 * 1.96 * sd) < 0.2 * 2 * 1.96 * sd
    # one group: its own mean's interval from the group's stream; an empty group does not count
    seed = B.group_seeds(3, 1)[0]
    assert B.grouped_mean_ci([a], 400, 3) == B.mean_ci(a, 400, seed)
    assert B.grouped_mean_ci([a, []], 400, 3) == B.grouped_mean_ci([a], 400, 3)


def test_ratio_interval_for_perplexity():
    rng = np.random.default_rng(0)
    tokens = np.array([511] * 40 + [187])
    nll = tokens * rng.normal(2.5, 0.3, size=tokens.size)  # per-window mean NLL around 2.5
    ppl = math.exp(nll.sum() / tokens.sum())
    low, high = B.ratio_ci(nll, tokens, 1000, 0)
    assert low < ppl < high and high / low < 1.3
    # the same draws as a plain loop over resampled windows
    idx = np.random.default_rng(0).integers(0, tokens.size, size=(1000, tokens.size))
    reps = np.exp(nll[idx].sum(axis=1) / tokens[idx].sum(axis=1))
    assert (low, high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])), rel=1e-12)
    # every window equally hard: the interval collapses onto the perplexity
    flat_low, flat_high = B.ratio_ci(tokens * 2.0, tokens, 500, 0)
    assert flat_low == pytest.approx(math.exp(2.0)) and flat_high == pytest.approx(math.exp(2.0))
    # one window: exactly the caller's exp(nll / tokens)
    assert B.ratio_ci([1234.5], [511], 100, 0) == (math.exp(1234.5 / 511),) * 2
    assert B.ratio_ci([10.0, 20.0], [5, 5], 100, 0, exponentiate=False)[0] >= 2.0


def test_macro_f1_replicates_match_chabsa_f1_on_each_resample():
    rng = np.random.default_rng(1)
    golds = rng.choice([-100, 0, 1], size=60)
    preds = rng.choice([0, 1], size=60)
    reps = B.macro_f1_replicates(golds, preds, 50, 9, scale=1.5)
    idx = np.random.default_rng(9).integers(0, 60, size=(50, 60))
    expected = [chabsa_f1(golds[i], preds[i]) for i in idx]
    np.testing.assert_allclose(reps, expected, rtol=0, atol=1e-12)
    # a resample where a label vanishes (all golds one label, all predictions right): perfect F1 ×1.5
    assert B.macro_f1_replicates([1, 1, 1], [1, 1, 1], 5, 0, scale=1.5).tolist() == [1.5] * 5
