"""Metrics for the course task: exact match on parsed JSON, with parse failures counted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence


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
