"""Plots for module 03: quantization levels over the weights, error by block size, the memory breakdown."""

from __future__ import annotations

import torch

from course_lib.qlora.memory import COMPONENTS, GiB
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
