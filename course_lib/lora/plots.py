"""Plots for module 02: the rank-r error curve, ours next to peft's loss, the rsLoRA rank experiment."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def plot_rank_error(curves: Mapping[str, torch.Tensor], r: int | None = None, ax=None):
    """Relative error vs rank, one line per matrix, with an optional marker at rank r."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    for name, curve in curves.items():
        (line,) = ax.plot(range(len(curve)), curve.tolist(), label=name)
        if r is not None and r < len(curve):
            ax.plot([r], [float(curve[r])], "o", color=line.get_color())
    if r is not None:
        ax.axvline(r, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="rank r", ylabel="relative error ||W - W_r|| / ||W||", ylim=(0, 1.02),
           title="best rank-r approximation (Eckart-Young)")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_loss_comparison(curves: Mapping[str, Sequence[float]], title: str = "same run, two LoRA implementations", ax=None):
    """Loss per step for each run on one axis; identical runs draw on top of each other."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    styles = [dict(lw=3, alpha=0.5), dict(lw=1.2, ls="--", marker="o", ms=3)]
    for i, (name, losses) in enumerate(curves.items()):
        ax.plot(range(1, len(losses) + 1), list(losses), label=name, **styles[i % len(styles)])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def plot_rank_scaling(results: Mapping[str, Mapping[int, Sequence[float]]], axes=None):
    """One panel per scaling rule: loss curves coloured by rank (darker = higher rank)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(results), figsize=(10, 3.4), sharey=True)
    for ax, (name, by_rank) in zip(axes, results.items()):
        ranks = sorted(by_rank)
        for i, r in enumerate(ranks):
            ax.plot(by_rank[r], color=plt.cm.viridis(0.9 - 0.8 * i / max(1, len(ranks) - 1)), label=f"r={r}")
        ax.set(yscale="log", xlabel="Adam step", title=f"scaling {name}")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("loss / starting loss")
    axes[-1].legend(fontsize=8)
    return axes
