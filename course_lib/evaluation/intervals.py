"""Confidence intervals: the percentile bootstrap for any per-example score, the paired bootstrap for two models
on the same examples, and Wilson's closed form for a proportion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval (bootstrap percentile, or Wilson for a proportion)."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def percent(self) -> str:
        """The interval as percentages, for 0-1 metrics."""
        return f"{100 * self.estimate:.0f}% [{100 * self.low:.0f}, {100 * self.high:.0f}]"


def _indices(n: int, n_resamples: int, seed: int):

    if n == 0:
        raise ValueError("cannot bootstrap zero examples")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of per-example scores (resampling examples with replacement)."""

    data = np.asarray(values, dtype=float)
    means = data[_indices(len(data), n_resamples, seed)].mean(axis=1)
    tail = (1 - confidence) / 2
    return Interval(float(data.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)), confidence)


def bootstrap_metric(metric: Callable[..., float], *columns: Sequence, n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap interval of a corpus-level metric (e.g. `bleu`) called on resampled, aligned columns."""

    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"columns have different lengths: {[len(c) for c in columns]}")
    stats = [metric(*[[c[i] for i in row] for c in columns]) for row in _indices(len(columns[0]), n_resamples, seed)]
    tail = (1 - confidence) / 2
    return Interval(float(metric(*columns)), float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail)), confidence)


@dataclass(frozen=True)
class PairedComparison:
    """Model B minus model A on the same examples, with a paired bootstrap interval of the difference."""

    mean_a: float
    mean_b: float
    difference: Interval
    p_value: float  # two-sided: how often the resampled difference falls on the other side of zero, doubled

    def __str__(self) -> str:
        return (f"A {self.mean_a:.3f}, B {self.mean_b:.3f}, B - A = {self.difference} "
                f"(p ≈ {self.p_value:.3f}): {verdict(self)}")


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare two models scored on the same examples: resample examples, keep each example's pair together."""

    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same examples: {len(a)} vs {len(b)} scores")
    diff = b - a
    boot = diff[_indices(len(diff), n_resamples, seed)].mean(axis=1)
    tail = (1 - confidence) / 2
    interval = Interval(float(diff.mean()), float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail)), confidence)
    if diff.mean() > 0:
        p = 2 * float((boot <= 0).mean())
    elif diff.mean() < 0:
        p = 2 * float((boot >= 0).mean())
    else:
        p = 1.0
    return PairedComparison(float(a.mean()), float(b.mean()), interval, min(1.0, p))


def verdict(comparison: PairedComparison) -> str:
    """'B is better', 'A is better' or 'no clear difference': the interval of B - A decides, not the two means."""
    if comparison.difference.low > 0:
        return "B is better"
    if comparison.difference.high < 0:
        return "A is better"
    return "no clear difference"


def wilson_interval(correct: int, n: int, z: float = 1.96) -> Interval:
    """The Wilson score interval of a proportion (95% by default): closed form, honest at 0% and 100% on small n."""
    if n <= 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got correct={correct}, n={n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    confidence = round(math.erf(z / math.sqrt(2)), 4)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), confidence)
