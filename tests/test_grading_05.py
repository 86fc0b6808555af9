"""Notebook 05: a typical wrong answer loses that exercise's marks, and only those."""

import pytest

from conftest import edited_solution

STEM = "05_evaluation"
EXERCISES = ["test_corpus_perplexity", "test_exact_match_rate", "test_bootstrap_interval", "test_macro_f1", "test_diagnose"]

MISTAKES = {
    # perplexity as the mean of per-batch mean losses: weights a short batch's tokens more
    "test_corpus_perplexity": ("corpus_perplexity", "return math.exp(sum(loss_sums) / sum(token_counts))",
                               "return math.exp(sum(l / n for l, n in zip(loss_sums, token_counts)) / len(loss_sums))"),
    # dropping the replies that are not JSON from the denominator
    "test_exact_match_rate": ("exact_match_rate", "return correct / len(answers), unparseable",
                              "return correct / max(1, len(answers) - unparseable), unparseable"),
    # an interval of single values instead of the mean
    "test_bootstrap_interval": ("bootstrap_interval", "return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))",
                                "return float(np.quantile(data, tail)), float(np.quantile(data, 1 - tail))"),
    # accuracy (micro average) instead of the macro average
    "test_macro_f1": ("macro_f1", "return sum(scores) / num_classes",
                      "return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)"),
    # judging by the training loss alone
    "test_diagnose": ("diagnose", "if val_losses[-1] > 1.1 * min(val_losses):", "if False:"),
}


@pytest.mark.grading
@pytest.mark.parametrize("test_cell", ["test_corpus_perplexity", "test_exact_match_rate"])
def test_a_typical_wrong_answer_loses_only_its_marks(course, tmp_path, test_cell):
    grade_id, old, new = MISTAKES[test_cell]
    wrong = edited_solution(STEM, grade_id, old, new, tmp_path)
    scores = course.autograde(STEM, f"wrong-{grade_id}", wrong).by_cell()
    assert scores[test_cell] == 0, scores
    for other in EXERCISES:
        if other != test_cell:
            assert scores[other] == 2, (other, scores)


@pytest.mark.parametrize("test_cell", EXERCISES)
def test_each_mistake_fails_its_visible_or_hidden_tests(test_cell):
    """Fast check without nbgrader: run the wrong function against its test cell's code."""
    import json
    import math

    import numpy as np

    from conftest import REPO
    from course_lib import classify
    from course_lib import evaluation as ev

    cells = json.loads((REPO / "solutions" / f"{STEM}.ipynb").read_text())["cells"]
    by_id = {c["metadata"].get("nbgrader", {}).get("grade_id"): "".join(c["source"]) for c in cells}
    grade_id, old, new = MISTAKES[test_cell]
    namespace = {"math": math, "np": np, "json": json, "ev": ev, "classify": classify}
    exec(by_id[grade_id], namespace)
    exec(by_id[test_cell], namespace)  # the reference passes
    exec(by_id[grade_id].replace(old, new), namespace)
    with pytest.raises(AssertionError):
        exec(by_id[test_cell], namespace)
