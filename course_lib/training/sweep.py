"""A small learning-rate sweep: several short runs that differ only in the learning rate, as a tidy table."""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd

from course_lib.core.results import NonFiniteLossError
from course_lib.training.methods import run_method

DIVERGED_ABOVE = 1.1  # a run whose final loss is above 110 % of its first loss went the wrong way


def lr_sweep(make_model: Callable, tokenizer, train_data, eval_data, config, learning_rates: Sequence[float],
             method: str = "lora", progress: bool = True, **method_kwargs):
    """Train one short run per learning rate (same seed, data and steps); a DataFrame with one row per run.

    Columns: learning_rate, train_loss (mean of the last logged losses), val_loss, diverged (the loss became
    NaN/inf, or ended more than 10 % above where it started), seconds. A diverged run stays in the table: dropping it would
    hide where the usable range ends.
    """

    if not learning_rates:
        raise ValueError("give at least one learning rate")
    rows = []
    for lr in sorted(learning_rates):
        try:
            result = run_method(make_model, tokenizer, train_data, eval_data, config, method, learning_rate=lr,
                                progress=progress, **method_kwargs)
            first = result.history[0]["loss"] if result.history else float("nan")
            rows.append({"learning_rate": lr, "train_loss": result.train_loss, "val_loss": result.val_loss,
                         "diverged": not result.train_loss <= DIVERGED_ABOVE * first, "seconds": result.seconds})
        except NonFiniteLossError as error:
            rows.append({"learning_rate": lr, "train_loss": float("nan"), "val_loss": float("nan"),
                         "diverged": True, "seconds": float("nan"), "note": str(error).split(".")[0]})
    table = pd.DataFrame(rows)
    if "note" not in table:
        table["note"] = ""
    table["note"] = table["note"].fillna("")
    return table


def best_learning_rate(table) -> float:
    """The learning rate with the lowest validation loss among runs that did not diverge."""
    ok = table[~table["diverged"]]
    if ok.empty:
        raise ValueError("every run in the sweep diverged: try smaller learning rates")
    return float(ok.loc[ok["val_loss"].idxmin(), "learning_rate"])
