"""Packing (course_lib.data.packing): bin packing, seams that learn nothing, and the same loss as padding."""

import pytest
import torch

from course_lib.core import tasks
from course_lib.data import packing, tokenize
from course_lib.data.tokenize import IGNORE_INDEX


def test_next_fit_keeps_order_and_opens_a_block_only_when_needed():
    lengths = [3, 4, 2, 5, 1, 6]
    blocks = packing.pack_indices(lengths, 8)
    assert blocks == [[0, 1], [2, 3, 4], [5]]
    assert [i for b in blocks for i in b] == list(range(len(lengths)))
    for block, nxt in zip(blocks, blocks[1:]):  # the next block's first row did not fit in this one
        assert sum(lengths[i] for i in block) + lengths[nxt[0]] > 8


def test_first_fit_decreasing_uses_fewer_blocks_and_places_every_row_once():
    lengths = [5, 5, 3, 3, 2, 2, 4]
    ffd = packing.pack_indices(lengths, 8, "first_fit_decreasing")
    assert sorted(i for b in ffd for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 8 for b in ffd)
    assert len(ffd) == 3 < len(packing.pack_indices(lengths, 8))


@pytest.mark.parametrize("lengths, words", [([3, 9, 2], "row 1 has 9 tokens"), ([2, 0], "row 1 is empty")])
def test_rows_that_cannot_be_packed_are_named(lengths, words):
    with pytest.raises(ValueError, match=words):
        packing.pack_indices(lengths, 8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        packing.pack_indices([1], 0)
    with pytest.raises(ValueError, match="strategy"):
        packing.pack_indices([1], 4, "best_fit")


def test_packed_block_restarts_positions_and_masks_the_seam():
    rows = [{"input_ids": [11, 12, 13], "labels": [-100, 12, 13]}, {"input_ids": [21, 22], "labels": [21, 22]}, [31, 32]]
    blocks = packing.pack_sequences(rows, block_size=6, pad_token_id=0)
    assert len(blocks) == 2
    first, second = blocks
    assert first["input_ids"] == [11, 12, 13, 21, 22, 0]
    assert first["position_ids"] == [0, 1, 2, 0, 1, 0]
    assert first["labels"] == [-100, 12, 13, -100, 22, -100]  # 21 is never predicted from 13
    assert first["seq_lens"] == [3, 2] and first["rows"] == [0, 1]
    assert second["input_ids"] == [31, 32, 0, 0, 0, 0] and second["position_ids"] == [0, 1, 0, 1, 2, 3]
    unpadded = packing.pack_sequences(rows, block_size=6)
    assert [len(b["input_ids"]) for b in unpadded] == [5, 2]
    assert packing.packed_lengths(blocks) == [5, 2]


def test_mismatched_labels_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        packing.pack_sequences([{"input_ids": [1, 2], "labels": [1]}], 4)


def test_matches_transformers_data_collator_with_flattening(tokenizer):
    from transformers import DataCollatorWithFlattening

    rows = [tokenize.tokenize_row({"messages": tasks.to_messages(e)}, tokenizer) for e in tasks.make_examples(3, seed=9)]
    block = packing.pack_sequences(rows, block_size=sum(len(r["input_ids"]) for r in rows))[0]
    flat = DataCollatorWithFlattening()(rows)
    assert flat["input_ids"][0].tolist() == block["input_ids"]
    assert flat["labels"][0].tolist() == block["labels"]
    assert flat["position_ids"][0].tolist() == block["position_ids"]


def test_collator_gives_position_ids_and_no_attention_mask():
    blocks = packing.pack_sequences([[1, 2, 3], [4, 5], [6, 7, 8, 9]], block_size=5)
    batch = packing.PackedCollator(pad_token_id=0)(blocks)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5], [-100, 7, 8, 9, -100]]


def test_pack_dataset_with_batched_map():
    from datasets import Dataset

    ds = Dataset.from_list([{"input_ids": [1] * n, "labels": [1] * n, "other": "x"} for n in (3, 4, 2, 5)])
    packed = packing.pack_dataset(ds, block_size=8, pad_token_id=0)
    assert packed.column_names == ["input_ids", "labels", "position_ids", "seq_lens"]
    assert packed["seq_lens"] == [[3, 4], [2, 5]] and all(len(ids) == 8 for ids in packed["input_ids"])


def test_padding_waste_of_each_layout():
    lengths = [3, 8, 7, 2]
    fixed = packing.waste_fixed(lengths, 10)
    assert (fixed.real_tokens, fixed.total_tokens, fixed.pad_tokens) == (20, 40, 20) and fixed.waste == 0.5
    dynamic = packing.waste_dynamic(lengths, batch_size=2)
    assert dynamic.total_tokens == 2 * 8 + 2 * 7
    assert packing.waste_dynamic(lengths, 2, sort_by_length=True).total_tokens == 2 * 3 + 2 * 8
    packed = packing.waste_packed(lengths, 10)
    assert (packed.rows, packed.total_tokens) == (3, 30)
    assert packing.waste_packed(lengths, 10, "first_fit_decreasing").total_tokens == 20
    reports = packing.compare_padding(lengths, batch_size=2, block_size=10)
    assert len(reports) == 5 and reports[0].waste == 0.5 and reports[-1].waste == 0.0
    assert "50.0% wasted" in str(fixed)
    assert packing.PaddingReport("none", 0, 0, 0).waste == 0.0


def test_packed_examples_do_not_see_each_other(tiny_llama):
    tiny_llama.eval()
    sequences = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    assert packing.packed_vs_separate(tiny_llama, sequences) < 1e-4


def test_the_proof_can_fail(tiny_llama):
    """Without restarted positions the same function sees cross-example attention: it is not vacuous."""
    tiny_llama.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        crossed = tiny_llama(input_ids=ids, use_cache=False).logits[0, 4:]
        alone = tiny_llama(input_ids=ids[:, 4:], use_cache=False).logits[0]
    assert (crossed - alone).abs().max().item() > 1e-3


def test_packed_and_padded_batches_give_the_same_loss(tokenizer, tiny_llama):
    tiny_llama.eval()
    rows = [tokenize.tokenize_row({"messages": tasks.to_messages(e)}, tokenizer) for e in tasks.make_examples(5, seed=2)]
    padded = tokenize.pad_batch(rows, tokenizer.pad_token_id)
    batch = packing.PackedCollator(tokenizer.pad_token_id)(packing.pack_sequences(rows, 256, tokenizer.pad_token_id))
    with torch.no_grad():
        loss_padded = tiny_llama(**padded).loss
        loss_packed = tiny_llama(**batch, use_cache=False).loss
    assert torch.allclose(loss_padded, loss_packed, atol=1e-5)
    assert batch["labels"].ne(IGNORE_INDEX).sum() == padded["labels"][:, 1:].ne(IGNORE_INDEX).sum()
