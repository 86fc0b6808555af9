"""Plots for module 03: quantization levels over the weights, the Q4_1 grid of the offline weights, error by block
size, the memory breakdown."""

from __future__ import annotations

import torch

from course_lib.qlora.memory import COMPONENTS, GiB
from course_lib.qlora.provenance import distinct_per_block, grid_positions
from course_lib.qlora.quantize import _TINY, _blocks, nf4_code_book


def plot_levels_over_weights(weight: torch.Tensor, block_size: int = 64, ax=None, title: str | None = None,
                             code: torch.Tensor | None = None):
    """Histogram of a layer's weights divided by their block's absmax, with the 16 NF4 levels drawn over it."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.4))
    blocks = _blocks(weight, block_size)
    scaled = (blocks / blocks.abs().amax(dim=1, keepdim=True).clamp(min=_TINY)).reshape(-1)[: weight.numel()]
    ax.hist(scaled.numpy(), bins=201, range=(-1, 1), color="#2a7ab9", alpha=0.75, density=True,
            label="weights / block absmax")
    for i, level in enumerate((nf4_code_book() if code is None else code).tolist()):
        ax.axvline(level, color="#e07b39", lw=1, label="NF4 levels" if i == 0 else None)
    ax.set(xlabel=f"value / absmax of its {block_size}-value block", ylabel="density",
           title=title or "a real layer's weights and the 16 NF4 levels")
    ax.legend(fontsize=8)
    return ax


def plot_error_by_block_size(rows: list[dict], ax=None, title: str = "quantization error vs block size"):
    """Relative error of int8 and NF4 for each block size (a row from error_by_block_size)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    labels = ["all" if row["block_size"] == "whole tensor" else str(row["block_size"]) for row in rows]
    ax.plot(labels, [100 * row["nf4"] for row in rows], "o-", label="NF4 (4 bits)")
    ax.plot(labels, [100 * row["int8"] for row in rows], "s-", label="absmax int8 (8 bits)")
    ax.set_yscale("log")  # int8 and NF4 differ by ten times: a log axis shows both trends
    ax.set(xlabel="block size (all: one scale for the whole tensor)", ylabel="relative error (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_breakdown(estimates: dict, ax=None, title: str = "predicted peak memory by component"):
    """Stacked bars: one per labelled estimate, one colour per component (GiB)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.6))
    labels = list(estimates)
    bottom = [0.0] * len(labels)
    colors = {"weights": "#2a7ab9", "gradients": "#e07b39", "optimizer": "#4c9a2a", "activations": "#b94a6c",
              "overhead": "#999999"}
    for name in COMPONENTS:
        values = [estimates[label].breakdown[name] / GiB for label in labels]
        ax.bar(labels, values, bottom=bottom, label=name, color=colors[name])
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.2f} GiB", ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="GiB", title=title, ylim=(0, max(bottom) * 1.18))
    ax.legend(fontsize=8, loc="upper right")
    return ax


def plot_q4_1_grid(weights: dict[str, torch.Tensor], block_size: int = 32, axes=None):
    """Two panels per set of weights: distinct values per `block_size`-weight block, and each weight's place on its
    block's 16-level Q4_1 grid (spikes at whole numbers: the weights went through Q4_1; a smooth spread: they never did)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    left, right = axes
    colors = ["#e07b39", "#2a7ab9", "#4c9a2a", "#b94a6c"]
    for (label, weight), color in zip(weights.items(), colors):
        counts = distinct_per_block(weight, block_size)
        left.hist(counts.numpy(), bins=range(1, block_size + 2), align="left", alpha=0.6, color=color, density=True,
                  label=label)
        right.hist(grid_positions(weight, 16, block_size).numpy(), bins=300, range=(0, 15), alpha=0.6, color=color,
                   density=True, label=label)
    left.axvline(16, color="black", lw=1, ls="--")
    left.set(xlabel=f"distinct values in a block of {block_size} (dashed: Q4_1's 16 levels)", ylabel="share of blocks",
             title="values per block")
    right.set(xlabel="(w - block min) / (block max - block min) x 15", ylabel="density", xticks=range(0, 16, 3),
              title="place on the block's 16-level grid")
    left.legend(fontsize=8)
    return axes
