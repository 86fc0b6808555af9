"""Typical wrong answers of solutions/05_evaluation.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "05_evaluation"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
    "token_nll": "score a real batch from its logits: position t predicts t + 1, -100 (prompt, padding) never counts, sums not means",
    "bootstrap_interval": "put a percentile bootstrap interval on the mean of per-example scores",
    "compare_models": "decide whether model B beats model A on the same examples: paired bootstrap, a verdict only where the interval excludes 0",
    "macro_f1": "macro-F1: every class counts the same, so ignoring a rare class costs",
    "diagnose": "diagnose over- and underfitting against chance (ln K), not against the run's own first loss",
}

MISTAKES = [
    Mistake('05-nll-from-course', STEM, 'token_nll', "library",
            "hands the batch to course_lib.evaluation.metrics.logits_nll",
            new='    return metrics.logits_nll(logits, labels)\n'),
    Mistake('05-nll-no-shift', STEM, 'token_nll', "typical",
            'scores the logits at t against the label at t: the shift to the next token is forgotten',
            old='    logits = logits[:, :-1, :].float()  # the prediction made at position t ...\n'
                '    targets = labels[:, 1:]  # ... is scored against the token at t + 1\n',
            new='    logits = logits.float()\n'
                '    targets = labels\n'),
    Mistake('05-interval-from-course', STEM, 'bootstrap_interval', "library",
            "calls course_lib.evaluation.intervals.bootstrap_ci",
            new='    ci = intervals.bootstrap_ci(values, n_resamples, confidence, seed)\n'
                '    return ci.low, ci.high\n'),
    Mistake('05-interval-of-values', STEM, 'bootstrap_interval', "typical", 'an interval of single values instead of the mean',
            old='return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))',
            new='return float(np.quantile(data, tail)), float(np.quantile(data, 1 - tail))'),
    Mistake('05-compare-from-course', STEM, 'compare_models', "library",
            "calls course_lib.evaluation.intervals.paired_bootstrap and its verdict",
            new='    paired = intervals.paired_bootstrap(scores_a, scores_b, n_resamples, confidence, seed)\n'
                '    return {"difference": paired.difference.estimate, "low": paired.difference.low,\n'
                '            "high": paired.difference.high, "verdict": intervals.verdict(paired)}\n'),
    Mistake('05-compare-unpaired', STEM, 'compare_models', "typical",
            "resamples each model's scores on its own: the shared easy/hard examples widen the interval and hide a real gain",
            old='differences = b[rows].mean(axis=1) - a[rows].mean(axis=1)',
            new='differences = b[rows].mean(axis=1) - a[rng.integers(0, len(a), size=(n_resamples, len(a)))].mean(axis=1)'),
    Mistake('05-f1-from-course', STEM, 'macro_f1', "library",
            "calls course_lib.evaluation.classify.macro_f1",
            new='    return classify.macro_f1(y_true, y_pred, num_classes)\n'),
    Mistake('05-accuracy-not-macro', STEM, 'macro_f1', "typical", 'accuracy (micro average) instead of the macro average',
            old='return sum(scores) / num_classes',
            new='return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)'),
    Mistake('05-diagnose-from-course', STEM, 'diagnose', "library",
            "calls course_lib.evaluation.classify.diagnose_run",
            new='    return classify.diagnose_run(train_losses, val_losses, num_classes)\n'),
    Mistake('05-underfit-by-halving', STEM, 'diagnose', "typical",
            'judges underfitting by whether the training loss halved, not against chance',
            old='    uniform_guess = math.log(num_classes)  # cross-entropy when every class gets probability 1 / num_classes\n'
                '    if train_losses[-1] > 0.9 * uniform_guess:\n',
            new='    if train_losses[-1] > 0.5 * train_losses[0]:\n'),
]
