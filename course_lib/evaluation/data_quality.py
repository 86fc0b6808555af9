"""Same budget, different data: one LoRA run per training set, every run scored on one clean test split.

The budget is fixed (steps × batch = examples seen), so the sets differ only in what those examples are: few and
clean, the same with faults, many with faults, many curated. The test split is clean and shares no prompt with
any training set; its score is the greedy exact match computed by teacher forcing (`teacher_forced`), with a
bootstrap interval, and the answer loss.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import pandas as pd

from course_lib.data.curation import turns
from course_lib.data.splits import leakage
from course_lib.data.tokenize import tokenize_chat
from course_lib.evaluation.intervals import bootstrap_ci
from course_lib.evaluation.teacher_forced import score_answers
from course_lib.training.finetune import LoraSettings, finetune_lora


def budget_experiment(make_model: Callable, tokenizer, train_sets: Mapping[str, Sequence[Mapping]],
                      test_rows: Sequence[Mapping], settings: LoraSettings, baseline: bool = True,
                      progress: bool = True) -> pd.DataFrame:
    """Train a fresh `make_model()` with `settings` on each training set and score it on the clean `test_rows`.

    Rows are chat rows ({"messages": [...]}) or any format `formats.conversation` reads. With `baseline`, the
    untrained model is scored first (alone, when no training set is given). Columns: training set, rows, epochs (examples seen / rows), exact match and
    its 95% bootstrap interval, answer loss on the test split, training seconds.
    """
    if not train_sets and not baseline:
        raise ValueError("give at least one training set (or baseline=True)")
    for name, rows in train_sets.items():
        if not rows:
            raise ValueError(f"training set {name!r} is empty")
        shared = leakage({"train": rows, "test": test_rows})
        if shared:
            raise ValueError(f"training set {name!r} shares {len(shared)} prompt(s) with the test split, e.g. "
                             f"{next(iter(shared))[:60]!r}: the score would measure memory")
    test = [tokenize_chat(turns(row), tokenizer, max_length=settings.max_length) for row in test_rows]
    seen = settings.steps * settings.batch_size
    results = []
    if baseline:
        results.append(_row("no fine-tuning", 0, float("nan"), score_answers(make_model(), test), 0.0))
    for name, rows in train_sets.items():
        model = make_model()
        started = time.perf_counter()
        run = finetune_lora(model, tokenizer, [turns(row) for row in rows], settings, progress=progress)
        seconds = time.perf_counter() - started
        results.append(_row(name, len(rows), seen / len(rows), score_answers(run.model, test), seconds))
    return pd.DataFrame(results)


def _row(name: str, rows: int, epochs: float, scores, seconds: float) -> dict:
    ci = bootstrap_ci(scores.exact)
    return {"training set": name, "rows": rows, "epochs": round(epochs, 2), "exact match": scores.exact_match,
            "95% CI low": ci.low, "95% CI high": ci.high, "answer loss": scores.loss, "seconds": round(seconds, 1)}
