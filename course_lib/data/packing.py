"""Pack tokenized examples into fixed-size blocks without letting them see each other, and measure padding waste.

A packed block holds several examples back to back. Three things keep them apart:

1. position ids restart at 0 for every example, so each one is positioned as if it were alone;
2. the first label of every example is -100, so no token is trained to predict the next example's start;
3. attention: given `position_ids` and *no* `attention_mask`, transformers' sdpa, eager and flex attention
   build a block-diagonal causal mask from the restarts. Outside the Trainer also pass use_cache=False:
   with a cache object the restarts are not looked at. flash-attention reads the restarts only when the
   batch is a single row, so with it use transformers' DataCollatorWithFlattening (one row per batch).

Examples are never split across blocks; one longer than the block is an error naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from datasets import Dataset

from course_lib.data.tokenize import IGNORE_INDEX, SOURCE_ROW

STRATEGIES = ("next_fit", "first_fit_decreasing")


def pack_indices(lengths: Sequence[int], block_size: int, strategy: str = "next_fit") -> list[list[int]]:
    """Group example indices into blocks of at most `block_size` tokens.

    'next_fit' keeps the order and opens a new block when the next example does not fit;
    'first_fit_decreasing' places the longest examples first, each into the first block with room
    (fewer blocks, less padding, order not kept).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    for index, n in enumerate(lengths):
        if n < 1:
            raise ValueError(f"row {index} is empty: nothing to pack")
        if n > block_size:
            raise ValueError(f"row {index} has {n} tokens, more than block_size={block_size}; "
                             "truncate or drop it first (packing never splits an example)")
    if strategy == "next_fit":
        blocks: list[list[int]] = []
        room = 0
        for index, n in enumerate(lengths):
            if not blocks or n > room:
                blocks.append([])
                room = block_size
            blocks[-1].append(index)
            room -= n
        return blocks
    if strategy == "first_fit_decreasing":
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep their order
        blocks, rooms = [], []
        for index in order:
            for b, room in enumerate(rooms):
                if lengths[index] <= room:
                    blocks[b].append(index)
                    rooms[b] -= lengths[index]
                    break
            else:
                blocks.append([index])
                rooms.append(block_size - lengths[index])
        return blocks
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")


def _ids_and_labels(row) -> tuple[list[int], list[int]]:
    if isinstance(row, dict):
        ids = list(row["input_ids"])
        labels = list(row["labels"]) if row.get("labels") is not None else list(ids)
        if len(labels) != len(ids):
            raise ValueError(f"input_ids ({len(ids)}) and labels ({len(labels)}) differ in length")
        return ids, labels
    return list(row), list(row)


def pack_sequences(rows: Sequence, block_size: int, pad_token_id: int | None = None,
                   strategy: str = "next_fit") -> list[dict]:
    """Pack tokenized rows (dicts with input_ids and labels, or plain id lists) into blocks.

    Each block has input_ids, labels, position_ids (restarting per example), seq_lens and rows (the
    packed row indices). With pad_token_id, every block is padded to exactly block_size; the padding
    forms its own segment (positions from 0, labels -100), so no real token attends to it.
    """
    pairs = [_ids_and_labels(row) for row in rows]
    blocks = []
    for members in pack_indices([len(ids) for ids, _ in pairs], block_size, strategy):
        block = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": [], "rows": list(members)}
        for index in members:
            ids, labels = pairs[index]
            block["input_ids"] += ids
            block["labels"] += [IGNORE_INDEX] + labels[1:]  # never predict this example from the previous one
            block["position_ids"] += list(range(len(ids)))
            block["seq_lens"].append(len(ids))
        if pad_token_id is not None:
            _pad_block(block, block_size, pad_token_id)
        blocks.append(block)
    return blocks


def _pad_block(block: dict, width: int, pad_token_id: int) -> None:
    gap = width - len(block["input_ids"])
    if gap > 0:
        block["input_ids"] += [pad_token_id] * gap
        block["labels"] += [IGNORE_INDEX] * gap
        block["position_ids"] += list(range(gap))


class PackedCollator:
    """A Trainer data collator for packed blocks: input_ids, labels, position_ids, and deliberately no attention_mask.

    Blocks shorter than the longest one in the batch get a padding segment. transformers only turns
    position-id restarts into a block-diagonal mask when attention_mask is None.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, blocks: list[dict]) -> dict:

        width = max(len(b["input_ids"]) for b in blocks)
        out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
        for block in blocks:
            padded = {key: list(block[key]) for key in out}
            _pad_block(padded, width, self.pad_token_id)
            for key in out:
                out[key].append(padded[key])
        return {key: torch.tensor(value, dtype=torch.long) for key, value in out.items()}


def pack_dataset(dataset: Dataset, block_size: int, pad_token_id: int | None = None, strategy: str = "next_fit",
                 batch_size: int = 1000) -> Dataset:
    """Pack a tokenized `datasets.Dataset` (input_ids, labels) with a batched map; packs within each map batch.

    A list of tokenized rows is taken too.
    """
    if not isinstance(dataset, Dataset):
        dataset = Dataset.from_list([dict(row) for row in dataset])

    def pack(batch: dict, indices: list[int]) -> dict:
        names = batch.get(SOURCE_ROW, indices)  # the learner's row numbers, not positions in this map batch
        for name, ids in zip(names, batch["input_ids"]):
            if len(ids) > block_size:
                raise ValueError(f"row {name} has {len(ids)} tokens, more than block_size={block_size}; "
                                 "tokenize with max_length <= block_size")
        rows = [{"input_ids": ids, "labels": labels} for ids, labels in zip(batch["input_ids"], batch["labels"])]
        blocks = pack_sequences(rows, block_size, pad_token_id, strategy)
        return {key: [b[key] for b in blocks] for key in ("input_ids", "labels", "position_ids", "seq_lens")}

    return dataset.map(pack, batched=True, with_indices=True, batch_size=batch_size, remove_columns=dataset.column_names)


# ---------------------------------------------------------------------------------------------------- waste


@dataclass(frozen=True)
class PaddingReport:
    """Tokens a layout computes on: real ones and padding."""

    name: str
    real_tokens: int
    total_tokens: int
    rows: int  # sequences (or blocks) the model runs

    @property
    def pad_tokens(self) -> int:
        return self.total_tokens - self.real_tokens

    @property
    def waste(self) -> float:
        """Fraction of computed tokens that are padding."""
        return self.pad_tokens / self.total_tokens if self.total_tokens else 0.0

    def __str__(self) -> str:
        return (f"{self.name:<36} {self.rows:>5} rows  {self.total_tokens:>8} tokens  "
                f"{self.pad_tokens:>8} padding  ({self.waste:.1%} wasted)")


def waste_fixed(lengths: Sequence[int], max_length: int) -> PaddingReport:
    """Every row padded to max_length (padding='max_length')."""
    lengths = [min(n, max_length) for n in lengths]
    return PaddingReport(f"pad to max_length={max_length}", sum(lengths), max_length * len(lengths), len(lengths))


def waste_dynamic(lengths: Sequence[int], batch_size: int, sort_by_length: bool = False) -> PaddingReport:
    """Each batch padded to its longest row (dynamic padding), in the given order or sorted by length."""
    order = sorted(lengths) if sort_by_length else list(lengths)
    total = sum(max(order[i : i + batch_size]) * len(order[i : i + batch_size]) for i in range(0, len(order), batch_size))
    name = "dynamic padding" + (", sorted" if sort_by_length else "") + f" (batch {batch_size})"
    return PaddingReport(name, sum(order), total, len(order))


def waste_packed(lengths: Sequence[int], block_size: int, strategy: str = "next_fit") -> PaddingReport:
    """Rows packed into blocks of block_size, each block padded to full size."""
    blocks = pack_indices(lengths, block_size, strategy)
    return PaddingReport(f"packed {block_size} ({strategy})", sum(lengths), block_size * len(blocks), len(blocks))


def compare_padding(lengths: Sequence[int], batch_size: int, block_size: int,
                    max_length: int | None = None) -> list[PaddingReport]:
    """Padding waste of the usual layouts for the same rows, worst first."""
    reports = [waste_fixed(lengths, max_length or block_size), waste_dynamic(lengths, batch_size),
               waste_dynamic(lengths, batch_size, sort_by_length=True)]
    reports += [waste_packed(lengths, block_size, s) for s in STRATEGIES]
    return reports


def packed_lengths(blocks: Iterable[dict]) -> list[int]:
    """Real (non-padding) tokens per packed block."""
    return [sum(block["seq_lens"]) for block in blocks]


# ---------------------------------------------------------------------------------------------------- proof


def packed_vs_separate(model, sequences: Sequence[Sequence[int]]) -> float:
    """Largest |logit difference| between the sequences run packed in one row and each run alone.

    Near 0 (float noise) means the examples in a block did not see each other.
    """

    device = next(model.parameters()).device
    ids = torch.tensor([[t for seq in sequences for t in seq]], device=device)
    positions = torch.tensor([[p for seq in sequences for p in range(len(seq))]], device=device)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        worst, offset = 0.0, 0
        for seq in sequences:
            alone = model(input_ids=torch.tensor([list(seq)], device=device), use_cache=False).logits[0]
            part = packed[offset : offset + len(seq)]
            worst = max(worst, (part - alone).abs().max().item())
            offset += len(seq)
    return worst
