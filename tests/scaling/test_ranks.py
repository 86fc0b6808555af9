"""course_lib.scaling.ranks: a notebook function on two forked gloo processes, and the reference accelerate loop."""

import time
from functools import partial

import pytest

from course_lib.core.models import load_tokenizer
from course_lib.scaling import ranks


@pytest.fixture(scope="module")
def inputs():
    tokenizer = load_tokenizer()
    rows = ranks.text_rows(tokenizer, 13, seq_len=32, seed=0)
    return (partial(ranks.tiny_model, len(tokenizer), tokenizer.pad_token_id, 0), rows[:8], rows[8:],
            ranks.collate_for(tokenizer.pad_token_id))


def test_collate_pads_right_and_masks_the_labels():
    batch = ranks.collate_for(0)([[5, 6, 7], [8]])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_reference_loop_on_two_processes_keeps_ranks_identical_and_counts_each_eval_row_once(inputs):
    results = ranks.run_on_ranks(ranks.reference_train, inputs, num_processes=2)
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["world_size"] for r in results] == [2, 2]
    first, second = (r["returned"] for r in results)
    assert first["model"]["weights"] == second["model"]["weights"]
    assert first["losses"] == second["losses"] and first["losses"][-1] < first["losses"][0]
    assert len(first["eval_losses"]) == 5  # 5 rows on 2 ranks: gather_for_metrics drops the padding repeat


def _no_accelerate(*args):
    return {"nothing": 1}


def _fails(*args):
    raise ValueError("broken on purpose")


def test_a_function_without_a_process_group_reports_world_size_one():
    assert [r["world_size"] for r in ranks.run_on_ranks(_no_accelerate, num_processes=2)] == [1, 1]


def test_a_failing_rank_raises_with_its_error():
    with pytest.raises(RuntimeError, match="broken on purpose"):
        ranks.run_on_ranks(_fails, num_processes=2)


def _waits_forever(*args):
    time.sleep(60)


def test_a_hanging_rank_is_stopped_after_the_timeout():
    with pytest.raises(TimeoutError):
        ranks.run_on_ranks(_waits_forever, num_processes=2, timeout=2)


def test_an_accelerator_made_before_the_fork_does_not_leak_into_the_ranks(inputs):
    """A notebook (or a test session) that built an Accelerator before launching: each rank still joins the group."""
    from accelerate import Accelerator

    Accelerator(cpu=True)  # the parent's single-process state
    results = ranks.run_on_ranks(ranks.reference_train, inputs, num_processes=2)
    assert [r["world_size"] for r in results] == [2, 2]
