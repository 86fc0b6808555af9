"""The fast path's packing (course_lib.fast.packing): positions restart per example, targets stay inside it, steps
are seeded epochs split by a token budget."""

import pytest
import torch

from course_lib.fast.packing import pack_rows, plan_step, split_by_tokens, step_batches
from tests.helpers import random_rows


def test_pack_rows_restarts_positions_and_keeps_targets_inside_examples():
    rows = [{"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
            {"input_ids": [21, 22], "labels": [21, 22]},
            {"input_ids": [31, 32, 33, 34], "labels": [-100, -100, 33, -100]}]
    batch = pack_rows(rows)
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 32, 33, 34]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch.cu_seqlens.tolist() == [0, 3, 5, 9] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 4 and batch.tokens == 9
    # position t learns the label at t + 1 of the same example: 13's row ends, so nothing learns 21 across the seam
    assert batch.target_index.tolist() == [0, 1, 3, 6]
    assert batch.targets.tolist() == [12, 13, 22, 33]
    assert batch.label_tokens == 4


def test_pack_rows_rejects_bad_rows():
    with pytest.raises(ValueError, match="row 1"):
        pack_rows([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(ValueError, match="no rows"):
        pack_rows([])


def test_split_by_tokens_respects_the_budget_and_keeps_every_example_once():
    lengths = [300, 120, 500, 80, 80, 40, 260, 512]
    groups = split_by_tokens(lengths, 600)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 600 for g in groups)
    assert len(groups) == 4  # 1892 tokens need at least 4 bins of 600
    with pytest.raises(ValueError, match="example 7 has 512 tokens"):
        split_by_tokens(lengths, 511)


def test_step_batches_are_seeded_epochs():
    a = list(step_batches(10, 4, 5, seed=1))
    assert a == list(step_batches(10, 4, 5, seed=1))
    assert a != list(step_batches(10, 4, 5, seed=2))
    flat = [i for step in a for i in step]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # whole epochs
    assert list(step_batches(5, 2, 2, shuffle=False)) == [[0, 1], [2, 3]]


def test_plan_step_groups_the_chosen_rows():
    rows = random_rows([50, 60, 70, 80])
    micro = plan_step(rows, [3, 1, 0], max_tokens=140)
    assert sorted(len(r["input_ids"]) for group in micro for r in group) == [50, 60, 80]
    assert all(sum(len(r["input_ids"]) for r in group) <= 140 for group in micro)
