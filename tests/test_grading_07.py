"""Notebook 07: typical wrong answers lose their own marks and nothing else."""

import pytest

from conftest import edited_solution

STEM = "07_scaling_up"
FULL = {"test_global_batch_size": 1, "test_allreduce_bytes": 2, "test_scaling_efficiency": 2, "test_model_state_gb": 2}


@pytest.mark.grading
@pytest.mark.parametrize("grade_id, old, new, lost", [
    # The speed-up instead of the efficiency: forgetting to divide by the number of processes.
    ("scaling_efficiency", "tokens_per_s_n / (n * tokens_per_s_1)", "tokens_per_s_n / tokens_per_s_1",
     "test_scaling_efficiency"),
    # Per-process batch times accumulation: forgetting that every process brings its own batch.
    ("global_batch_size", "per_device * accumulation * processes", "per_device * accumulation",
     "test_global_batch_size"),
    # DDP sharded like ZeRO-3: dividing everything by the number of GPUs.
    ("model_state_gb", '"ddp": 16,', '"ddp": 16 / gpus,', "test_model_state_gb"),
], ids=["efficiency-is-speedup", "batch-without-processes", "ddp-sharded"])
def test_a_typical_wrong_answer_loses_only_its_marks(course, tmp_path, grade_id, old, new, lost):
    wrong = edited_solution(STEM, grade_id, old, new, tmp_path)
    scores = course.autograde(STEM, grade_id, wrong).by_cell()
    assert scores[lost] == 0, scores
    assert {k: v for k, v in scores.items() if k != lost} == {k: v for k, v in FULL.items() if k != lost}, scores
