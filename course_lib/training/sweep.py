"""Hyperparameter searches as tidy tables: a learning-rate sweep, and a 2-D grid chosen on validation, confirmed on test.

Both train short runs that differ only in the swept values (same seed, data and steps). The grid search picks its
winner on the validation loss alone; the test split is read only afterwards, to report how the chosen settings
(and the runner-up) do on data the choice never saw.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields
from typing import Callable, Sequence

import pandas as pd

from course_lib.core.results import NonFiniteLossError
from course_lib.training.config import TrainConfig
from course_lib.training.methods import apply_method, run_method, train_method
from course_lib.training.trainer import evaluate_loss

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


def _split_grid(grid: dict) -> tuple[set[str], set[str]]:
    """The grid's keys that are TrainConfig fields, and those that are `apply_method` keywords; raise on any other."""

    if not isinstance(grid, dict) or len(grid) != 2:
        raise ValueError(f"grid must be a dict of exactly two names to lists of values, got {grid!r}")
    config_fields = {f.name for f in fields(TrainConfig)}
    method_keywords = set(apply_method.__kwdefaults__) - {"seed"}
    for name, values in grid.items():
        if name not in config_fields | method_keywords:
            raise ValueError(f"grid key {name!r} is neither a TrainConfig field (learning_rate, warmup_ratio, ...) "
                             f"nor an apply_method keyword ({', '.join(sorted(method_keywords))})")
        if isinstance(values, (str, bytes)) or not len(values):
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got {values!r}")
    return {k for k in grid if k in config_fields}, {k for k in grid if k not in config_fields}


def grid_search(make_model: Callable, tokenizer, train_data, val_data, test_data, config, grid: dict,
                method: str = "lora", confirm: int = 2, progress: bool = True, **method_kwargs):
    """Train one run per cell of a 2-D grid, pick the cell with the lowest validation loss, then confirm on test.

    `grid` maps two names to their values: TrainConfig fields (`learning_rate`, `warmup_ratio`, ...) or
    `apply_method` keywords (`lora_r`, `lora_alpha`); what the grid does not set comes from `config` (the learning
    rate too) and `method_kwargs`. Returns a DataFrame with one row per cell: the two values,
    train_loss, val_loss, diverged, seconds, val_rank (1 = lowest validation loss among runs that did not diverge),
    selected (the winner), and test_loss for the `confirm` best cells on validation (NaN for the rest).

    The test split is read only after every cell has trained and the ranking is fixed, so it cannot sway the
    choice; only the models of the current `confirm` best cells are kept in memory until then.
    """

    config_keys, method_keys = _split_grid(grid)
    if confirm < 1:
        raise ValueError(f"confirm must be >= 1 (the winner at least is confirmed on test), got {confirm}")
    names = list(grid)
    rows, kept = [], {}  # kept: row index -> trained model, for the best `confirm` cells on validation so far
    for values in itertools.product(*grid.values()):
        cell = dict(zip(names, values))
        run_config = config.replace(**{k: cell[k] for k in config_keys})
        if "warmup_ratio" in config_keys:
            run_config = run_config.replace(warmup_steps=None)  # a ratio in the grid replaces any fixed warmup
        if "warmup_steps" in config_keys:
            run_config = run_config.replace(warmup_ratio=None)
        kwargs = {**method_kwargs, **{k: cell[k] for k in method_keys}}
        label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cell.items())
        try:
            result, model = train_method(make_model, tokenizer, train_data, val_data, run_config, method,
                                         learning_rate=run_config.learning_rate, progress=progress, **kwargs)
            first = result.history[0]["loss"] if result.history else float("nan")
            diverged = not (result.train_loss <= DIVERGED_ABOVE * first and math.isfinite(result.val_loss))
            rows.append({**cell, "train_loss": result.train_loss, "val_loss": result.val_loss, "diverged": diverged,
                         "seconds": result.seconds, "note": ""})
        except NonFiniteLossError as error:
            model = None
            rows.append({**cell, "train_loss": float("nan"), "val_loss": float("nan"), "diverged": True,
                         "seconds": float("nan"), "note": str(error).split(".")[0]})
        if model is not None and not rows[-1]["diverged"]:
            kept[len(rows) - 1] = model
            best = sorted(kept, key=lambda i: rows[i]["val_loss"])[:confirm]  # validation loss only
            kept = {i: kept[i] for i in best}
        if progress:
            print(f"{label}: validation loss {rows[-1]['val_loss']:.4f}{' (diverged)' if rows[-1]['diverged'] else ''}")

    table = pd.DataFrame(rows)
    ok = ~table["diverged"]
    if not ok.any():
        raise ValueError("every run in the grid diverged: try smaller learning rates")
    table["val_rank"] = table["val_loss"].where(ok).rank(method="first").astype("Int64")
    table["selected"] = table["val_rank"] == 1
    table["selected"] = table["selected"].fillna(False).astype(bool)
    # the choice is made: only now is the test split read, for the best `confirm` cells on validation
    table["test_loss"] = float("nan")
    for index, model in kept.items():
        table.loc[index, "test_loss"] = evaluate_loss(model, tokenizer, test_data, config)
    table.attrs["grid"] = names
    table.attrs["method"] = method
    return table


def grid_winner(table, rank: int = 1) -> dict:
    """The grid values of the cell ranked `rank` on validation (1, the default: the one chosen), as a dict."""
    chosen = table[table["val_rank"] == rank] if "val_rank" in table else table.iloc[:0]
    if len(chosen) != 1:
        raise ValueError(f"the table has no cell of validation rank {rank}: is it a grid_search table?")
    row = chosen.iloc[0]
    return {name: row[name].item() if hasattr(row[name], "item") else row[name] for name in table.attrs["grid"]}
