"""Typical wrong answers of solutions/05_evaluation.ipynb."""

from tests.notebooks.mistakes import Mistake

STEM = "05_evaluation"

# grade_id of each exercise -> what it teaches (one line, for the README's exercise table)
TEACHES = {
}

MISTAKES = [
    Mistake('05-mean-of-batch-means', STEM, 'corpus_perplexity', "typical", "perplexity as the mean of per-batch mean losses: weights a short batch's tokens more",
            old='return math.exp(sum(loss_sums) / sum(token_counts))',
            new='return math.exp(sum(l / n for l, n in zip(loss_sums, token_counts)) / len(loss_sums))'),
    Mistake('05-unparseable-dropped', STEM, 'exact_match_rate', "typical", 'dropping the replies that are not JSON from the denominator',
            old='return correct / len(answers), unparseable',
            new='return correct / max(1, len(answers) - unparseable), unparseable'),
    Mistake('05-interval-of-values', STEM, 'bootstrap_interval', "typical", 'an interval of single values instead of the mean',
            old='return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))',
            new='return float(np.quantile(data, tail)), float(np.quantile(data, 1 - tail))'),
    Mistake('05-accuracy-not-macro', STEM, 'macro_f1', "typical", 'accuracy (micro average) instead of the macro average',
            old='return sum(scores) / num_classes',
            new='return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)'),
    Mistake('05-train-loss-only', STEM, 'diagnose', "typical", 'judging by the training loss alone',
            old='if val_losses[-1] > 1.1 * min(val_losses):',
            new='if False:'),
]
