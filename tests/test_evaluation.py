"""Evaluation metrics against hand computations and the libraries they wrap."""

import math

import pytest

from course_lib import evaluation as ev
from course_lib.data import tokenize_chat
from course_lib.tasks import generate, to_messages


def _rows(tokenizer, n=5):
    return [tokenize_chat(to_messages(e), tokenizer) for e in generate(n, seed=3)]


def test_perplexity_is_token_weighted_and_matches_a_hand_computation(tiny_llama, tokenizer):
    import torch

    rows = _rows(tokenizer)
    tiny_llama.eval()
    total, count, batch_means = 0.0, 0, []
    for row in rows:  # by hand: log-softmax at every position whose next label is scored
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_llama(input_ids=ids).logits[0].double(), -1)
        nll = [-float(logp[t, row["labels"][t + 1]]) for t in range(len(row["labels"]) - 1) if row["labels"][t + 1] != -100]
        total += sum(nll)
        count += len(nll)
        batch_means.append(sum(nll) / len(nll))
        # and the model's own loss (a mean over this row's scored tokens) agrees
        with torch.no_grad():
            loss = tiny_llama(input_ids=ids, labels=torch.tensor([row["labels"]])).loss
        assert float(loss) == pytest.approx(sum(nll) / len(nll), rel=1e-4)
    for batch_size in (1, 2, 5):  # padding and batching change nothing
        result = ev.perplexity(tiny_llama, rows, batch_size=batch_size, progress=False)
        assert result.n_tokens == count
        assert result.nll_sum == pytest.approx(total, rel=1e-4)
        assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)
    # rows have different answer lengths, so the mean of per-row means is a different (wrong) number
    assert len({sum(l != -100 for l in r["labels"]) for r in rows}) > 1
    assert abs(sum(batch_means) / len(batch_means) - total / count) > 1e-4


def test_perplexity_rejects_rows_without_scored_tokens(tiny_llama):
    with pytest.raises(ValueError, match="no scored token"):
        ev.perplexity(tiny_llama, [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], progress=False)
    with pytest.raises(ValueError, match="row 0"):
        ev.perplexity(tiny_llama, [{"input_ids": [1, 2, 3]}], progress=False)


def test_json_scores_count_parse_failures_as_wrong():
    ref = {"name": "Ana", "age": 30, "city": None, "job": "nurse"}
    preds = ['{"name": "Ana", "age": 30, "city": null, "job": "nurse"}',
             '{"name": "Ana", "age": 31, "city": null, "job": "nurse"}',
             "Sure, here it is"]
    scores = ev.json_scores(preds, [ref] * 3)
    assert scores.exact == [1.0, 0.0, 0.0]
    assert scores.fields == [1.0, 0.75, 0.0]
    assert scores.parse_failures == 1
    assert ev.field_accuracy(preds, [ref] * 3) == {"name": 2 / 3, "age": 1 / 3, "city": 2 / 3, "job": 2 / 3}
    with pytest.raises(ValueError, match="2 predictions for 3"):
        ev.json_scores(preds[:2], [ref] * 3)


def test_text_metrics_match_the_libraries_on_known_cases():
    import sacrebleu

    assert ev.rouge_scores(["the cat sat on the mat"], ["the cat sat on the mat"]) == [1.0]
    assert ev.rouge_scores(["a b c d"], ["w x y z"]) == [0.0]
    # rouge1: 2 of 3 unigrams shared both ways -> P = R = F = 2/3
    assert ev.rouge_scores(["ana is nurse"], ["ana is pilot"], "rouge1")[0] == pytest.approx(2 / 3)
    assert ev.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    preds, refs = ["Ana is a nurse in Lisbon.", "Omar works as a chef."], ["Ana is a nurse from Lisbon.", "Omar is a chef."]
    assert ev.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < ev.text_metrics(preds, refs)["chrf"] < 100
    assert ev.chrf_scores(["abc"], ["abc"]) == [pytest.approx(100.0)]


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    import numpy as np

    rng = np.random.default_rng(1)
    small = rng.integers(0, 2, 40).astype(float)
    big = rng.integers(0, 2, 1000).astype(float)
    a, b = ev.bootstrap_ci(small), ev.bootstrap_ci(big)
    assert a.low <= a.estimate <= a.high and a.estimate == pytest.approx(small.mean())
    assert (b.high - b.low) < (a.high - a.low)
    # the width is close to the normal approximation 2 * 1.96 * sd / sqrt(n)
    expected = 2 * 1.96 * big.std() / math.sqrt(len(big))
    assert (b.high - b.low) == pytest.approx(expected, rel=0.15)
    assert ev.bootstrap_ci([1.0] * 10).low == 1.0
    assert ev.bootstrap_ci(small, seed=3) == ev.bootstrap_ci(small, seed=3)  # seeded, so reports repeat


def test_bootstrap_metric_on_corpus_bleu():
    preds, refs = ["a b c d", "a b c e", "x y z w"], ["a b c d", "a b c d", "x y z w"]
    interval = ev.bootstrap_metric(ev.bleu, preds, refs, n_resamples=50)
    assert interval.estimate == pytest.approx(ev.bleu(preds, refs))
    assert interval.low <= interval.high


def test_paired_bootstrap_sees_a_consistent_gain_that_unpaired_intervals_hide():
    import numpy as np

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 60)  # shared per-example difficulty makes the scores correlated
    a = difficulty
    b = difficulty + 0.05
    paired = ev.paired_bootstrap(a, b)
    assert paired.difference.estimate == pytest.approx(0.05)
    assert paired.difference.low > 0 and paired.p_value < 0.01
    ia, ib = ev.bootstrap_ci(a), ev.bootstrap_ci(b)
    assert ia.high > ib.low  # separately the intervals overlap
    same = ev.paired_bootstrap(a, a)
    assert same.p_value == 1.0 and "no clear difference" in str(same)
    with pytest.raises(ValueError, match="same examples"):
        ev.paired_bootstrap([1, 0], [1])


def test_worst_examples_lists_the_lowest_scores_with_context():
    rows = ev.worst_examples(["i0", "i1", "i2", "i3"], ["r0", "r1", "r2", "r3"], ["o0", "o1", "o2", "o3"],
                             [0.9, 0.1, 0.5, 0.1], k=3)
    assert [r["index"] for r in rows] == [1, 3, 2]
    assert rows[0] == {"index": 1, "input": "i1", "reference": "r1", "output": "o1", "score": 0.1}
    assert "#1 score 0.10" in ev.format_examples(rows)
    with pytest.raises(ValueError, match="lengths differ"):
        ev.worst_examples(["a"], ["b"], [], [1.0])
