"""Padding-free batches that keep example boundaries: the data side of the GPU fast path.

The textbook recipe pads every example to 512 tokens, so with instruction-style lengths (median ~180) more than half
of each batch is padding the GPU multiplies through and throws away. Here the examples of an optimizer step are
concatenated into one row instead, and three things keep them apart:

* position ids restart at 0 for every example, so rotary embeddings see each example exactly as it would alone;
* `cu_seqlens` (cumulative example lengths) tells the attention kernel where each example starts, so no token
  attends across a boundary (varlen attention, see `fast.ops`);
* the loss targets are shifted inside each example, so the last token of one example never "predicts" the first
  token of the next.

An optimizer step holds the same number of examples as the recipe's (batch × accumulation), so the optimization
is unchanged; the step is cut into micro-batches only when its tokens exceed the micro-batch token budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from course_lib.data.packing import pack_indices
from course_lib.data.tokenize import IGNORE_INDEX


@dataclass
class PackedBatch:
    """Several examples concatenated into one row, with the boundaries the model needs to keep them apart."""

    input_ids: object  # LongTensor [1, T]
    position_ids: object  # LongTensor [1, T], restarting at 0 per example
    cu_seqlens: object  # IntTensor [n + 1]: example i spans cu_seqlens[i]:cu_seqlens[i+1]
    max_seqlen: int  # the longest example (the attention kernel's tile bound)
    target_index: object  # LongTensor [M]: positions whose next token is learned
    targets: object  # LongTensor [M]: the token learned at each of those positions
    lengths: list[int]  # the examples' lengths, in order

    @property
    def tokens(self) -> int:
        """Real tokens in the batch (there is no padding)."""
        return int(sum(self.lengths))

    @property
    def label_tokens(self) -> int:
        """How many tokens the loss is taken over."""
        return int(self.targets.numel())

    def to(self, device) -> "PackedBatch":
        """The same batch with its tensors on `device`: one pinned host-to-GPU copy, so the host never waits."""

        if torch.device(device).type == "cpu":
            return self
        parts = [self.input_ids[0], self.position_ids[0], self.target_index, self.targets, self.cu_seqlens.long()]
        staged = torch.cat(parts).pin_memory().to(device, non_blocking=True)
        ids, pos, index, targets, cu = staged.split([p.numel() for p in parts])
        return PackedBatch(ids.unsqueeze(0), pos.unsqueeze(0), cu.to(torch.int32), self.max_seqlen, index, targets,
                           self.lengths)


def learned_positions(labels: Sequence[int]) -> list[int]:
    """The positions t of one example that learn a token: labels[t + 1] is not ignored (its rows in the loss).

    The shift stays inside the example, so no target crosses into the next one when examples are packed.
    """
    return [t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX]


def pack_rows(rows: Sequence[dict]) -> PackedBatch:
    """Concatenate tokenized rows ({"input_ids", "labels"}) into one padding-free PackedBatch."""

    if not rows:
        raise ValueError("pack_rows got no rows")
    ids: list[int] = []
    positions: list[int] = []
    target_index: list[int] = []
    targets: list[int] = []
    cu = [0]
    lengths = []
    for i, row in enumerate(rows):
        row_ids, labels = list(row["input_ids"]), list(row.get("labels", row["input_ids"]))
        if len(row_ids) != len(labels):
            raise ValueError(f"row {i}: {len(row_ids)} input_ids but {len(labels)} labels")
        if not row_ids:
            raise ValueError(f"row {i} is empty")
        start = len(ids)
        for t in learned_positions(labels):
            target_index.append(start + t)
            targets.append(labels[t + 1])
        ids.extend(row_ids)
        positions.extend(range(len(row_ids)))
        lengths.append(len(row_ids))
        cu.append(len(ids))
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackedBatch(
        input_ids=as_long(ids).unsqueeze(0), position_ids=as_long(positions).unsqueeze(0),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32), max_seqlen=max(lengths),
        target_index=as_long(target_index), targets=as_long(targets), lengths=lengths,
    )


def split_by_tokens(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of examples grouped into as few micro-batches of at most `max_tokens` tokens as first-fit-decreasing finds."""
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"example {i} has {n} tokens, more than the micro-batch budget of {max_tokens}; "
                             "raise max_tokens or lower max_length")
    blocks = pack_indices(lengths, max_tokens, strategy="first_fit_decreasing")
    return [sorted(b) for b in blocks]  # keep data order inside a micro-batch: easier to inspect, same maths


def step_batches(n_examples: int, batch_size: int, steps: int, seed: int = 0, shuffle: bool = True) -> Iterator[list[int]]:
    """Example indices for each optimizer step: seeded shuffled epochs, `batch_size` examples a step."""
    if n_examples <= 0:
        raise ValueError("no training examples")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:  # a step may run across an epoch boundary, as an endless sampler does
            epoch = list(range(n_examples))
            if shuffle:
                rng.shuffle(epoch)
            order.extend(epoch)
        yield order[:batch_size]
        order = order[batch_size:]


def plan_step(rows: Sequence[dict], indices: Sequence[int], max_tokens: int) -> list[list[dict]]:
    """The rows of one optimizer step, grouped into micro-batches under the token budget."""
    chosen = [rows[i] for i in indices]
    groups = split_by_tokens([len(r["input_ids"]) for r in chosen], max_tokens)
    return [[chosen[i] for i in group] for group in groups]
