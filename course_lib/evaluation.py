"""Honest evaluation: perplexity over answer tokens, JSON field scores, ROUGE/BLEU/chrF, bootstrap intervals.

Every headline number comes with a per-example score, so it can carry a bootstrap confidence interval and a
paired comparison between two models scored on the same examples. Perplexity is token-weighted: the summed
negative log-likelihood over every unmasked token divided by the number of such tokens, never a mean of
per-batch means (batches hold different numbers of answer tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from .data import IGNORE_INDEX, pad_batch
from .metrics import parse_json
from .tasks import FIELDS

# ----------------------------------------------------------------------------------------------- perplexity


@dataclass(frozen=True)
class Perplexity:
    """Summed negative log-likelihood (nats) over `n_tokens` scored tokens, and what follows from it."""

    nll_sum: float
    n_tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    def __str__(self) -> str:
        return f"perplexity {self.perplexity:.3f} (mean loss {self.mean_nll:.4f} over {self.n_tokens} tokens)"


def batch_nll(model, batch: dict) -> tuple[float, int]:
    """Summed next-token NLL and the number of scored tokens (labels != -100) of one padded batch."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Position t predicts token t+1: drop the last logit and the first label.
    logits = logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((labels != IGNORE_INDEX).sum())


def perplexity(model, rows: Sequence[dict], batch_size: int = 8, progress: bool = True) -> Perplexity:
    """Token-weighted perplexity of `model` on tokenized rows (input_ids, labels with -100 on unscored tokens)."""
    import torch
    from tqdm.auto import tqdm

    if not rows:
        raise ValueError("perplexity needs at least one row")
    for i, row in enumerate(rows):
        if "input_ids" not in row or "labels" not in row:
            raise ValueError(f"row {i} needs input_ids and labels (use data.tokenize_chat)")
        if len(row["labels"]) != len(row["input_ids"]):
            raise ValueError(f"row {i}: {len(row['labels'])} labels for {len(row['input_ids'])} input_ids")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="perplexity", disable=not progress or len(starts) < 2, leave=False):
        chunk = []
        for row in rows[start : start + batch_size]:
            chunk.append({"input_ids": list(row["input_ids"]), "labels": list(row["labels"]),
                          "attention_mask": list(row.get("attention_mask") or [1] * len(row["input_ids"]))})
        batch = pad_batch(chunk, pad_token_id=0, padding_side="right")
        batch = {k: torch.as_tensor(v).to(device) for k, v in batch.items()}
        nll, n = batch_nll(model, batch)
        total += nll  # sums, not means: the final division weights every token equally
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("no scored token in any row: every label is -100")
    return Perplexity(total, count)


# ---------------------------------------------------------------------------------------- JSON task scores


@dataclass(frozen=True)
class JsonScores:
    """Per-example scores for the JSON task; unparseable replies score 0 everywhere."""

    exact: list[float]
    fields: list[float]  # fraction of the fields right, per example
    per_field: dict[str, list[float]]
    parsed: list[bool]

    @property
    def parse_failures(self) -> int:
        return sum(not p for p in self.parsed)


def json_scores(predictions: Sequence[str], references: Sequence[dict], fields: Sequence[str] = FIELDS) -> JsonScores:
    """Exact match and field-level accuracy per example; a parse failure counts as wrong, never dropped."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    exact, frac, parsed = [], [], []
    per_field: dict[str, list[float]] = {f: [] for f in fields}
    for i, (prediction, reference) in enumerate(zip(predictions, references)):
        if not isinstance(reference, dict):
            raise ValueError(f"reference {i} is not a dict: {reference!r:.60}")
        value = parse_json(prediction)
        parsed.append(value is not None)
        value = value or {}
        exact.append(float(bool(parsed[-1]) and value == reference))
        hits = [float(f in value and value[f] == reference.get(f)) for f in fields]
        for f, hit in zip(fields, hits):
            per_field[f].append(hit)
        frac.append(sum(hits) / len(fields))
    return JsonScores(exact, frac, per_field, parsed)


def field_accuracy(predictions: Sequence[str], references: Sequence[dict], fields: Sequence[str] = FIELDS) -> dict[str, float]:
    """Accuracy of each field over all examples (unparseable replies get every field wrong)."""
    scores = json_scores(predictions, references, fields)
    return {f: sum(v) / len(v) if v else 0.0 for f, v in scores.per_field.items()}


# ------------------------------------------------------------------------------------- text overlap metrics


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise ValueError(f"example {i}: predictions and references must be strings")


def rouge_scores(predictions: Sequence[str], references: Sequence[str], kind: str = "rougeL") -> list[float]:
    """Per-example ROUGE F-measure (`rouge1`, `rouge2` or `rougeL`) from Google's `rouge-score`."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return [scorer.score(r, p)[kind].fmeasure for p, r in zip(predictions, references)]


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) from `sacrebleu`, one reference per example."""
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example chrF (0-100) from `sacrebleu`."""
    import sacrebleu

    _check_pairs(predictions, references)
    return [float(sacrebleu.sentence_chrf(p, [r]).score) for p, r in zip(predictions, references)]


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L (mean F, 0-1), corpus BLEU and corpus chrF (0-100) in one dict."""
    import sacrebleu

    out = {k: _mean(rouge_scores(predictions, references, k)) for k in ("rouge1", "rouge2", "rougeL")}
    out["bleu"] = bleu(predictions, references)
    out["chrf"] = float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ------------------------------------------------------------------------------------------------ bootstrap


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap percentile interval."""

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
    import numpy as np

    if n == 0:
        raise ValueError("cannot bootstrap zero examples")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of per-example scores (resampling examples with replacement)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    means = data[_indices(len(data), n_resamples, seed)].mean(axis=1)
    tail = (1 - confidence) / 2
    return Interval(float(data.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)), confidence)


def bootstrap_metric(metric: Callable[..., float], *columns: Sequence, n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap interval of a corpus-level metric (e.g. `bleu`) called on resampled, aligned columns."""
    import numpy as np

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
        verdict = "B is better" if self.difference.low > 0 else "A is better" if self.difference.high < 0 else \
            "no clear difference"
        return (f"A {self.mean_a:.3f}, B {self.mean_b:.3f}, B - A = {self.difference} "
                f"(p ≈ {self.p_value:.3f}): {verdict}")


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> PairedComparison:
    """Compare two models scored on the same examples: resample examples, keep each example's pair together."""
    import numpy as np

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


# ------------------------------------------------------------------------------------------- error analysis


def worst_examples(inputs: Sequence[str], references: Sequence, outputs: Sequence[str], scores: Sequence[float],
                   k: int = 5) -> list[dict]:
    """The `k` lowest-scoring examples (ties keep input order) with their input, reference, output and score."""
    n = len(inputs)
    if not (len(references) == len(outputs) == len(scores) == n):
        raise ValueError(f"lengths differ: {n} inputs, {len(references)} references, {len(outputs)} outputs, "
                         f"{len(scores)} scores")
    order = sorted(range(n), key=lambda i: (scores[i], i))[:k]
    return [{"index": i, "input": inputs[i], "reference": references[i], "output": outputs[i], "score": scores[i]}
            for i in order]


def format_examples(rows: Sequence[dict], width: int = 100) -> str:
    """A readable block for `worst_examples` rows."""
    lines = []
    for row in rows:
        lines.append(f"#{row['index']} score {row['score']:.2f}")
        for key in ("input", "reference", "output"):
            text = str(row[key]).replace("\n", " ")
            lines.append(f"  {key:9}: {text[:width] + ('…' if len(text) > width else '')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- plotting


def plot_train_val(runs: dict[str, tuple[Sequence[dict], Sequence[dict]]], axes=None):
    """One panel per run: training loss and validation loss against the step."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
        axes = axes[0]
    for ax, (name, (train_hist, eval_hist)) in zip(axes, runs.items()):
        ax.plot([r["step"] for r in train_hist], [r["loss"] for r in train_hist], alpha=0.7, label="train")
        ax.plot([r["step"] for r in eval_hist], [r["eval_loss"] for r in eval_hist], marker="o", label="validation")
        ax.set(title=name, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return axes


def plot_intervals(rows: dict[str, Interval], title: str = "", ax=None):
    """Point estimates with their confidence intervals as error bars."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    names = list(rows)
    est = [rows[n].estimate for n in names]
    err = [[rows[n].estimate - rows[n].low for n in names], [rows[n].high - rows[n].estimate for n in names]]
    ax.errorbar(names, est, yerr=err, fmt="o", capsize=6)
    ax.set(title=title, ylabel="score")
    ax.grid(alpha=0.3)
    return ax
