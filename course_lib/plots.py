"""Plots the notebooks share: loss curves and before/after bars."""

from __future__ import annotations

from typing import Mapping, Sequence


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
