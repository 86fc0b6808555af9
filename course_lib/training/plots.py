"""Plots for module 04: the LR schedule, train/validation curves with early stopping, the sweep, the grid, the methods."""

from __future__ import annotations

import math
from typing import Sequence


def _axes(ax, size=(6, 3.2)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def plot_schedule(curves: dict[str, Sequence[float]], warmup: int | None = None, title: str = "learning rate schedule",
                  ax=None):
    """One line per named LR curve (learning rate at each optimizer step), the warmup's end marked."""
    ax = _axes(ax)
    for name, curve in curves.items():
        ax.plot(range(len(curve)), list(curve), label=name)
    if warmup:
        ax.axvline(warmup, color="grey", ls=":", lw=1)
        ax.annotate("end of warmup", (warmup, ax.get_ylim()[1] * 0.95), fontsize=8, color="grey", ha="left")
    ax.set(xlabel="optimizer step", ylabel="learning rate", title=title)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_train_val(history: Sequence[dict], eval_history: Sequence[dict], stopped_at: int | None = None,
                   best_step: int | None = None, title: str = "training and validation loss", ax=None):
    """Training loss per step, validation loss per evaluation, and where early stopping stopped the run."""
    ax = _axes(ax)
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], alpha=0.6, label="train")
    ax.plot([r["step"] for r in eval_history], [r["eval_loss"] for r in eval_history], "o-", label="validation")
    if best_step is not None:
        best = [r["eval_loss"] for r in eval_history if r["step"] == best_step]
        if best:
            ax.plot([best_step], best, "*", ms=14, color="gold", mec="black", label=f"best (step {best_step})")
    if stopped_at is not None:
        ax.axvline(stopped_at, color="crimson", ls="--", label=f"early stop (step {stopped_at})")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_curves(runs: dict[str, tuple[Sequence[dict], Sequence[dict]]], title: str = "training and validation loss",
                ax=None):
    """Several runs on one axis ({name: (history, eval_history)}): each run's training loss faint, its validation
    loss as a line with markers in the same colour."""
    ax = _axes(ax)
    for index, (name, (history, eval_history)) in enumerate(runs.items()):
        color = f"C{index}"
        ax.plot([r["step"] for r in history], [r["loss"] for r in history], color=color, alpha=0.3, lw=1)
        ax.plot([r["step"] for r in eval_history], [r["eval_loss"] for r in eval_history], "o-", color=color, ms=4,
                label=f"{name}: validation")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.set_yscale("log")  # the losses of a fast and a slow run differ tenfold by the end
    ax.legend(fontsize=8, title="faint: training loss", title_fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_sweep(table, title: str = "learning-rate sweep", ax=None):
    """Final training and validation loss against the learning rate (log scales); diverged runs marked with x."""

    ax = _axes(ax, (5.5, 3.2))
    ok = table[~table["diverged"]]
    ax.plot(table["learning_rate"], table["train_loss"], "o-", label="train (last steps)")
    ax.plot(table["learning_rate"], table["val_loss"], "s-", label="validation")
    finite = [v for v in list(table["train_loss"]) + list(table["val_loss"]) if not math.isnan(v)]
    top = max(finite) if finite else 1.0
    for lr in table[table["diverged"]]["learning_rate"]:
        ax.plot([lr], [top], "x", color="crimson", ms=10)
    if not ok.empty:
        best = ok.loc[ok["val_loss"].idxmin()]
        ax.axvline(best["learning_rate"], color="grey", ls=":", label=f"best {best['learning_rate']:.0e}")
    ax.set_xscale("log")
    if finite and min(finite) > 0:  # a diverged run's loss is 100x a good one's: on a linear axis the rest is flat
        ax.set_yscale("log")
    ax.set(xlabel="learning rate", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_methods(table, columns: Sequence[str] = ("trainable_%", "peak_memory_MB", "seconds", "val_loss")):
    """One bar chart per measure, one bar per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.2))
    colors = ["#999999", "#7a5195", "#ef5675", "#ffa600", "#bc5090", "#58a65c", "#2a7ab9", "#003f5c"]
    for ax, column in zip(axes, columns):
        bars = ax.bar(table["method"], table[column], color=[colors[i % len(colors)] for i in range(len(table))])
        ax.bar_label(bars, labels=[_short(v) for v in table[column]], fontsize=7)
        ax.set_title(column.replace("_", " "))
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        if column == "trainable_%":
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def plot_grid(table, value: str = "val_loss", title: str | None = None, ax=None):
    """A grid search as a heatmap of `value` (rows: the grid's first name, columns: its second), the cell chosen on
    validation framed, diverged cells marked with x, and each confirmed cell's test loss written under its own."""

    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 3.6))
    row_name, col_name = table.attrs.get("grid") or list(table.columns[:2])
    row_values = sorted(table[row_name].unique())
    col_values = sorted(table[col_name].unique())
    grid = table.pivot(index=row_name, columns=col_name, values=value).reindex(index=row_values, columns=col_values)
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis_r", aspect="auto")  # dark = low loss = good
    plt.colorbar(image, ax=ax, label=value.replace("_", " "))
    for _, row in table.iterrows():
        i, j = row_values.index(row[row_name]), col_values.index(row[col_name])
        if row.get("diverged", False):
            ax.text(j, i, "x", ha="center", va="center", color="crimson", fontsize=14, fontweight="bold")
            continue
        text = _short(row[value])
        if "test_loss" in row and not math.isnan(row["test_loss"]):
            text += f"\ntest {_short(row['test_loss'])}"
        red, green, blue, _ = image.cmap(image.norm(row[value]))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells, black on light ones
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        if row.get("selected", False):
            ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, ec="crimson", lw=3,
                                   label="chosen on validation"))
    ax.set_xticks(range(len(col_values)), [_label(v) for v in col_values])
    ax.set_yticks(range(len(row_values)), [_label(v) for v in row_values])
    ax.set(xlabel=col_name.replace("_", " "), ylabel=row_name.replace("_", " "),
           title=title or f"{value.replace('_', ' ')} over the grid")
    if any(isinstance(p, Rectangle) for p in ax.patches):
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.18), fontsize=8, frameon=False)
    return ax


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def plot_resume(crashed: Sequence[dict], resumed: Sequence[dict], reference: Sequence[dict] | None = None,
                checkpoint_step: int | None = None, title: str = "crash and resume", ax=None):
    """The killed run's losses, the resumed run's, and an uninterrupted reference: the curves should join."""
    ax = _axes(ax)
    if reference:
        ax.plot([r["step"] for r in reference], [r["loss"] for r in reference], color="lightgrey", lw=6,
                label="uninterrupted run")
    ax.plot([r["step"] for r in crashed], [r["loss"] for r in crashed], "o-", ms=4, color="crimson",
            label="run before the kill")
    after = [r for r in resumed if checkpoint_step is None or r["step"] > checkpoint_step]
    ax.plot([r["step"] for r in after], [r["loss"] for r in after], "s-", ms=3, color="#2a7ab9",
            label="resumed from checkpoint")
    if checkpoint_step is not None:
        ax.axvline(checkpoint_step, color="grey", ls=":", label=f"checkpoint-{checkpoint_step}")
    if crashed:
        ax.axvline(crashed[-1]["step"], color="crimson", ls="--", lw=1, label="killed here")
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def plot_losses(history: Sequence[dict], title: str = "training loss", ax=None):
    """Loss per step, with a moving average when there are enough points to smooth."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    steps = [row["step"] for row in history]
    losses = [row["loss"] for row in history]
    ax.plot(steps, losses, alpha=0.45 if len(losses) >= 10 else 1.0, label="loss")
    if len(losses) >= 10:
        k = max(3, len(losses) // 10)
        smooth = [sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, label=f"moving average ({k} steps)")
        ax.legend()
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    return ax
