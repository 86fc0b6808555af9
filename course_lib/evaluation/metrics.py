"""Honest evaluation: exact match on parsed JSON, perplexity over answer tokens, field scores, ROUGE/BLEU/chrF.

Every headline number comes with a per-example score, so it can carry a bootstrap confidence interval and a
paired comparison between two models scored on the same examples. Perplexity is token-weighted: the summed
negative log-likelihood over every unmasked token divided by the number of such tokens, never a mean of
per-batch means (batches hold different numbers of answer tokens).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

import sacrebleu
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer

from course_lib.core.progress import progress_bar
from course_lib.core.tasks import FIELDS
from course_lib.data.tokenize import IGNORE_INDEX, pad_batch
from course_lib.training.scored_logits import scored_logits

# ----------------------------------------------------------------------------------------------- exact match


def parse_json(text: str) -> dict | None:
    """The JSON object in a model's reply, or None when the reply is not one."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def json_exact_match(prediction: str, reference: dict) -> bool:
    """True when the reply parses to exactly the reference object (keys and values)."""
    parsed = parse_json(prediction)
    return parsed is not None and parsed == reference


@dataclass(frozen=True)
class ExactMatchReport:
    """Exact match over a set of examples, with parse failures counted, not dropped."""

    n: int
    correct: int
    parse_failures: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def __str__(self) -> str:
        return f"exact match {self.accuracy:.0%} ({self.correct}/{self.n}), unparseable replies: {self.parse_failures}"


def exact_match_report(predictions: Sequence[str], references: Sequence[dict]) -> ExactMatchReport:
    """Score replies against references; every example counts, unparseable ones as wrong."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    correct = sum(json_exact_match(p, r) for p, r in zip(predictions, references))
    failures = sum(parse_json(p) is None for p in predictions)
    return ExactMatchReport(n=len(references), correct=correct, parse_failures=failures)


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

    device = next(model.parameters()).device
    with torch.no_grad():  # the output layer runs only where a label is scored; `logits_nll` shows the whole sum
        logits, targets = scored_logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                        batch["labels"].to(device))
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((targets != IGNORE_INDEX).sum())


def logits_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL (nats) and the number of scored tokens, from a batch's logits and its labels.

    `labels` line up with the input ids (-100 where nothing is scored: the prompt, the padding).
    """
    # Position t predicts token t+1: drop the last logit and the first label.
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return float(nll), int((labels != IGNORE_INDEX).sum())


def perplexity(model, rows: Sequence[dict], batch_size: int = 8, progress: bool = True) -> Perplexity:
    """Token-weighted perplexity of `model` on tokenized rows (input_ids, labels with -100 on unscored tokens)."""

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
    for start in progress_bar(starts, desc="perplexity", disable=not progress or len(starts) < 2, leave=False):
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

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return [scorer.score(r, p)[kind].fmeasure for p, r in zip(predictions, references)]


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) from `sacrebleu`, one reference per example."""

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example chrF (0-100) from `sacrebleu`."""

    _check_pairs(predictions, references)
    return [float(sacrebleu.sentence_chrf(p, [r]).score) for p, r in zip(predictions, references)]


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L (mean F, 0-1), corpus BLEU and corpus chrF (0-100) in one dict."""

    out = {k: _mean(rouge_scores(predictions, references, k)) for k in ("rouge1", "rouge2", "rougeL")}
    out["bleu"] = bleu(predictions, references)
    out["chrf"] = float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


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


