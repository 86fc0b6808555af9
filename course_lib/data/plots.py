"""Pictures for module 01: a row token by token with masked tokens shaded, lengths before/after packing, padding waste."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from course_lib.data.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LEARNED_COLOR = "#8fd18f"
MASKED_COLOR = "#d9d9d9"


def _visible(text: str) -> str:
    """Token text with whitespace made visible: spaces as '·', newlines as '↵'."""
    return text.replace("\n", "↵").replace(" ", "·") or "∅"


def plot_tokens(row: Mapping, tokenizer, max_tokens: int | None = 160, width: int = 96, title: str | None = None,
                ax: Axes | None = None) -> Axes:
    """Draw a tokenized row as boxes, one per token: green where the label is learned, grey where it is -100."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ids = list(row["input_ids"])
    labels = list(row.get("labels") or ids)
    shown = len(ids) if max_tokens is None else min(len(ids), max_tokens)
    cells = [(_visible(tokenizer.decode([t])), label != IGNORE_INDEX) for t, label in zip(ids[:shown], labels[:shown])]
    lines: list[list] = [[]]
    used = 0
    for text, learned in cells:  # wrap into lines of about `width` characters, breaking after newlines too
        cost = len(text) + 1
        if used + cost > width and lines[-1]:
            lines.append([])
            used = 0
        lines[-1].append((text, learned, used))
        used += cost
        if text.endswith("↵"):
            lines.append([])
            used = 0
    lines = [line for line in lines if line]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 0.115 * width + 1), 0.32 * len(lines) + 0.9))
    for y, line in enumerate(lines):
        for text, learned, x in line:
            ax.text(x, -y, text, family="monospace", fontsize=8, va="center", ha="left",
                    bbox={"boxstyle": "square,pad=0.15", "fc": LEARNED_COLOR if learned else MASKED_COLOR,
                          "ec": "white", "lw": 0.5})
    ax.set_xlim(-1, width + 1)
    ax.set_ylim(-len(lines) + 0.4, 0.6)
    ax.axis("off")
    learned_n = sum(label != IGNORE_INDEX for label in labels)
    more = f" (first {shown} shown)" if shown < len(ids) else ""
    ax.set_title(title or f"{len(ids)} tokens, {learned_n} learned{more}", loc="left", fontsize=10)
    ax.legend(handles=[Patch(fc=LEARNED_COLOR, label="learned (label = token id)"),
                       Patch(fc=MASKED_COLOR, label="masked (label = -100)")],
              loc="upper right", bbox_to_anchor=(1, 1.25), ncol=2, fontsize=8, frameon=False)
    return ax


def plot_lengths(before: Sequence[int], after: Sequence[int], block_size: int, ax=None) -> Sequence[Axes]:
    """Histograms of tokens per training row: the examples alone, then the packed blocks (real tokens)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(9, 3.2), sharey=False)
    step = max(1, block_size // 16)
    bins = [*range(0, block_size, step), block_size + 1]  # a full block falls in the last bin, not past the line
    ax[0].hist(before, bins=bins, color="#2a7ab9")
    ax[0].set(title=f"{len(before)} examples", xlabel="tokens per row", ylabel="rows")
    ax[1].hist(after, bins=bins, color="#e07b39")
    ax[1].set(title=f"{len(after)} packed blocks", xlabel="real tokens per block", ylabel="blocks")
    for a in ax:
        a.axvline(block_size, color="black", ls="--", lw=1, label=f"block size {block_size}")
        a.legend(loc="upper left", fontsize=8, frameon=False)
        a.grid(alpha=0.3)
    return ax


def plot_padding_waste(reports: Sequence, ax: Axes | None = None) -> Axes:
    """Horizontal bars: the share of computed tokens that are padding, per layout."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(reports) + 1))
    names = [r.name for r in reports][::-1]
    values = [100 * r.waste for r in reports][::-1]
    bars = ax.barh(names, values, color="#c44e52")
    ax.bar_label(bars, labels=[f"{v:.0f}%" for v in values], padding=3)
    ax.set(xlim=(0, 105), xlabel="% of computed tokens that are padding", title="padding waste")
    ax.grid(axis="x", alpha=0.3)
    return ax
