"""Plots for module 05: train/validation curves side by side, intervals as error bars, before/after scores."""

from __future__ import annotations

from typing import Mapping, Sequence

from course_lib.evaluation.classify import LABELS
from course_lib.evaluation.intervals import Interval
from course_lib.training.plots import plot_train_val


def plot_runs(runs: dict[str, tuple[Sequence[dict], Sequence[dict]]], axes=None):
    """One panel per run ({name: (history, eval_history)}), each drawn by `training.plots.plot_train_val`."""
    import matplotlib.pyplot as plt  # heavy, and only for notebooks that plot

    if axes is None:
        _, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
        axes = axes[0]
    for ax, (name, (train_hist, eval_hist)) in zip(axes, runs.items()):
        plot_train_val(train_hist, eval_hist, title=name, ax=ax)
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


def plot_scores(scores: Mapping[str, float], title: str = "exact match on held-out examples", ax=None):
    """A bar per model, labelled with its score as a percentage."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    names, values = list(scores), [100 * v for v in scores.values()]
    bars = ax.bar(names, values, color=["#999999", "#2a7ab9", "#e07b39", "#4c9a2a"][: len(names)])
    ax.bar_label(bars, labels=[f"{v:.0f}%" for v in values])
    ax.set(ylim=(0, 110), ylabel="%", title=title)
    return ax


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str] = LABELS, title: str = "confusion matrix", ax=None):
    """The confusion matrix as a heat map with the counts written in."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            ax.text(c, r, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax
