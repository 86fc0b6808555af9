"""Evaluation metrics (course_lib.evaluation.metrics) against hand computations and the libraries they wrap."""

import math

import pytest

from course_lib.core.tasks import make_examples, to_messages
from course_lib.data.tokenize import tokenize_chat
from course_lib.evaluation import metrics


def _rows(tokenizer, n=5):
    return [tokenize_chat(to_messages(e), tokenizer) for e in make_examples(n, seed=3)]


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
        result = metrics.perplexity(tiny_llama, rows, batch_size=batch_size, progress=False)
        assert result.n_tokens == count
        assert result.nll_sum == pytest.approx(total, rel=1e-4)
        assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)
    # rows have different answer lengths, so the mean of per-row means is a different (wrong) number
    assert len({sum(l != -100 for l in r["labels"]) for r in rows}) > 1
    assert abs(sum(batch_means) / len(batch_means) - total / count) > 1e-4


def test_perplexity_rejects_rows_without_scored_tokens(tiny_llama):
    with pytest.raises(ValueError, match="no scored token"):
        metrics.perplexity(tiny_llama, [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], progress=False)
    with pytest.raises(ValueError, match="row 0"):
        metrics.perplexity(tiny_llama, [{"input_ids": [1, 2, 3]}], progress=False)


def test_json_scores_count_parse_failures_as_wrong():
    ref = {"name": "Ana", "age": 30, "city": None, "job": "nurse"}
    preds = ['{"name": "Ana", "age": 30, "city": null, "job": "nurse"}',
             '{"name": "Ana", "age": 31, "city": null, "job": "nurse"}',
             "Sure, here it is"]
    scores = metrics.json_scores(preds, [ref] * 3)
    assert scores.exact == [1.0, 0.0, 0.0]
    assert scores.fields == [1.0, 0.75, 0.0]
    assert scores.parse_failures == 1
    assert metrics.field_accuracy(preds, [ref] * 3) == {"name": 2 / 3, "age": 1 / 3, "city": 2 / 3, "job": 2 / 3}
    with pytest.raises(ValueError, match="2 predictions for 3"):
        metrics.json_scores(preds[:2], [ref] * 3)


def test_text_metrics_match_the_libraries_on_known_cases():
    import sacrebleu

    assert metrics.rouge_scores(["the cat sat on the mat"], ["the cat sat on the mat"]) == [1.0]
    assert metrics.rouge_scores(["a b c d"], ["w x y z"]) == [0.0]
    # rouge1: 2 of 3 unigrams shared both ways -> P = R = F = 2/3
    assert metrics.rouge_scores(["ana is nurse"], ["ana is pilot"], "rouge1")[0] == pytest.approx(2 / 3)
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    preds, refs = ["Ana is a nurse in Lisbon.", "Omar works as a chef."], ["Ana is a nurse from Lisbon.", "Omar is a chef."]
    assert metrics.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < metrics.text_metrics(preds, refs)["chrf"] < 100
    assert metrics.chrf_scores(["abc"], ["abc"]) == [pytest.approx(100.0)]


def test_worst_examples_lists_the_lowest_scores_with_context():
    rows = metrics.worst_examples(["i0", "i1", "i2", "i3"], ["r0", "r1", "r2", "r3"], ["o0", "o1", "o2", "o3"],
                             [0.9, 0.1, 0.5, 0.1], k=3)
    assert [r["index"] for r in rows] == [1, 3, 2]
    assert rows[0] == {"index": 1, "input": "i1", "reference": "r1", "output": "o1", "score": 0.1}
    assert "#1 score 0.10" in metrics.format_examples(rows)
    with pytest.raises(ValueError, match="lengths differ"):
        metrics.worst_examples(["a"], ["b"], [], [1.0])


# --- exact match on the course task's JSON answers ----------------------------------------------------------

REF = {"name": "Ana", "age": 34, "city": None, "job": "nurse"}


def test_exact_match():
    assert metrics.json_exact_match('{"name": "Ana", "age": 34, "city": null, "job": "nurse"}', REF)
    assert metrics.json_exact_match(' {"job": "nurse", "city": null, "age": 34, "name": "Ana"}\n', REF)
    assert not metrics.json_exact_match('{"name": "Ana", "age": "34", "city": null, "job": "nurse"}', REF)
    assert not metrics.json_exact_match('{"name": "Ana"}', REF)
    assert metrics.parse_json("[1]") is None and metrics.parse_json("not json") is None


def test_report_counts_parse_failures_as_wrong():
    report = metrics.exact_match_report(['{"name": "Ana", "age": 34, "city": null, "job": "nurse"}', "oops", "{}"], [REF] * 3)
    assert (report.n, report.correct, report.parse_failures) == (3, 1, 1)
    assert report.accuracy == pytest.approx(1 / 3)
    assert "1/3" in str(report)


def test_report_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        metrics.exact_match_report(["a", "b"], [REF])


def test_logits_nll_shifts_masks_and_sums():
    import torch

    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, math.log(2.0)])  # position 1 predicts position 2: p(2) = 1/2
    total, n = metrics.logits_nll(logits, torch.tensor([[5, -100, 2, -100]]))  # label 5 at position 0 is never scored
    assert n == 1 and total == pytest.approx(math.log(2.0))
    total, n = metrics.logits_nll(torch.zeros(2, 3, 4), torch.tensor([[-100, 1, 2], [-100, 3, -100]]))
    assert n == 3 and total == pytest.approx(3 * math.log(4.0))
