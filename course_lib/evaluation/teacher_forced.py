"""Score reference answers in one forward pass: their loss, and whether greedy decoding would write them exactly.

Greedy decoding picks the most likely token at every step. If, with the reference answer fed in (teacher forcing),
the most likely next token at every answer position *is* the reference token, greedy decoding writes the reference
token for token, end-of-turn token included, and stops; if it is not at some position, greedy decoding leaves the
reference there. So one forward pass per batch gives the strictest exact match (token for token) that
`metrics.exact_match_report` would give after generating, at a fraction of the cost: what a sweep of many models
on a CPU can afford. (A reply that differs in tokens but parses to the same JSON counts as right after generation
and wrong here, so this is a lower bound; with answers written as the model was trained to write them, it is tight.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from course_lib.core.progress import progress_bar
from course_lib.data.tokenize import IGNORE_INDEX, pad_batch
from course_lib.training.scored_logits import scored_logits


@dataclass(frozen=True)
class AnswerScores:
    """Summed answer NLL (nats) over `n_tokens`, and per row 1.0 where greedy decoding writes the answer exactly."""

    nll_sum: float
    n_tokens: int
    exact: list[float]

    @property
    def loss(self) -> float:
        """Mean loss per answer token."""
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def exact_match(self) -> float:
        """The share of rows greedy decoding would answer exactly."""
        return sum(self.exact) / len(self.exact)

    def __str__(self) -> str:
        return (f"greedy exact match {self.exact_match:.0%} ({int(sum(self.exact))}/{len(self.exact)}), "
                f"answer loss {self.loss:.3f} over {self.n_tokens} tokens")


def score_answers(model, rows: Sequence[dict], batch_size: int = 8, progress: bool = False) -> AnswerScores:
    """Teacher-forced scores of tokenized rows (input_ids, labels with -100 outside the answer)."""
    if not rows:
        raise ValueError("score_answers needs at least one row")
    for i, row in enumerate(rows):
        if "input_ids" not in row or "labels" not in row or len(row["labels"]) != len(row["input_ids"]):
            raise ValueError(f"row {i} needs input_ids and labels of the same length (use data.tokenize_chat)")
        if not any(label != IGNORE_INDEX for label in row["labels"][1:]):
            raise ValueError(f"row {i} has no scored token after the first position")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, exact = 0.0, 0, []
    starts = range(0, len(rows), batch_size)
    for start in progress_bar(starts, desc="scoring", disable=not progress or len(starts) < 2, leave=False):
        chunk = [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"]),
                  "attention_mask": [1] * len(r["input_ids"])} for r in rows[start : start + batch_size]]
        batch = {k: torch.as_tensor(v).to(device) for k, v in pad_batch(chunk, 0, "right").items()}
        with torch.no_grad():  # logits where position t predicts a scored token t + 1, and those tokens
            logits, labels = scored_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        logits = logits.float()
        scored = labels != IGNORE_INDEX
        total += float(F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int(scored.sum())
        hits = (logits.argmax(-1) == labels) | ~scored
        exact.extend(float(row_hits.all()) for row_hits in hits)
    model.train(was_training)
    return AnswerScores(total, count, exact)
