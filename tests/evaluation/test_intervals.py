"""Confidence intervals (course_lib.evaluation.intervals): the bootstrap, the paired bootstrap, Wilson's interval."""

import math

import pytest

from course_lib.evaluation import intervals, metrics


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    import numpy as np

    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 40).astype(float)
    big = rng.integers(0, 2, 1000).astype(float)
    a, b = intervals.bootstrap_ci(small), intervals.bootstrap_ci(big)
    assert a.low <= a.estimate <= a.high and a.estimate == pytest.approx(small.mean())
    assert (b.high - b.low) < (a.high - a.low)
    # the width is close to the normal approximation 2 * 1.96 * sd / sqrt(n)
    expected = 2 * 1.96 * big.std() / math.sqrt(len(big))
    assert (b.high - b.low) == pytest.approx(expected, rel=0.15)
    assert intervals.bootstrap_ci([1.0] * 10).low == 1.0
    assert intervals.bootstrap_ci(small, seed=3) == intervals.bootstrap_ci(small, seed=3)  # seeded, so reports repeat


def test_bootstrap_metric_on_corpus_bleu():
    preds, refs = ["a b c d", "a b c e", "x y z w"], ["a b c d", "a b c d", "x y z w"]
    interval = intervals.bootstrap_metric(metrics.bleu, preds, refs, n_resamples=50)
    assert interval.estimate == pytest.approx(metrics.bleu(preds, refs))
    assert interval.low <= interval.high


def test_paired_bootstrap_sees_a_consistent_gain_that_unpaired_intervals_hide():
    import numpy as np

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 60)  # shared per-example difficulty makes the scores correlated
    a = difficulty
    b = difficulty + 0.05
    paired = intervals.paired_bootstrap(a, b)
    assert paired.difference.estimate == pytest.approx(0.05)
    assert paired.difference.low > 0 and paired.p_value < 0.01
    ia, ib = intervals.bootstrap_ci(a), intervals.bootstrap_ci(b)
    assert ia.high > ib.low  # separately the intervals overlap
    same = intervals.paired_bootstrap(a, a)
    assert same.p_value == 1.0 and "no clear difference" in str(same)
    with pytest.raises(ValueError, match="same examples"):
        intervals.paired_bootstrap([1, 0], [1])


def test_wilson_interval():
    perfect = intervals.wilson_interval(10, 10)
    assert perfect.estimate == 1.0 and perfect.high == 1.0 and 0.65 < perfect.low < 0.75  # 10/10 is not certainty
    half = intervals.wilson_interval(50, 100)
    assert half.estimate == 0.5 and half.confidence == pytest.approx(0.95)
    assert half.low == pytest.approx(0.4038, abs=1e-3) and half.high == pytest.approx(0.5962, abs=1e-3)
    with pytest.raises(ValueError):
        intervals.wilson_interval(3, 0)


def test_verdict_claims_a_difference_only_when_the_interval_excludes_zero():
    gain = intervals.paired_bootstrap([0.0] * 8 + [1.0] * 32, [1.0] * 40)
    assert intervals.verdict(gain) == "B is better" and gain.difference.low > 0
    assert intervals.verdict(intervals.paired_bootstrap([1.0] * 40, [0.0] * 8 + [1.0] * 32)) == "A is better"
    assert intervals.verdict(intervals.paired_bootstrap([0.0, 1.0] * 10, [1.0, 0.0] * 10)) == "no clear difference"
    assert "B is better" in str(gain)
