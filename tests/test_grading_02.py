"""Notebook 02 grading: a typical wrong answer loses the marks of its own exercise and no others."""

import pytest

from conftest import edited_solution

STEM = "02_lora_math"
FULL_MARKS = {
    "test_lora_param_count": 1,
    "test_lora_forward": 2,
    "test_init_lora_weights": 2,
    "test_merge_weight": 2,
    "test_inject_my_lora": 2,
    "test_peft_lora_parts": 2,
}


@pytest.mark.grading
def test_scaling_by_alpha_instead_of_alpha_over_r_loses_only_the_forward_marks(course, tmp_path):
    wrong = edited_solution(STEM, "lora_forward", "scaling = alpha / r", "scaling = alpha", tmp_path)
    scores = course.autograde(STEM, "alpha_not_over_r", wrong).by_cell()
    assert scores == {**FULL_MARKS, "test_lora_forward": 0}, scores


@pytest.mark.grading
def test_a_zero_too_loses_only_the_init_marks(course, tmp_path):
    """B = 0 and A = 0 also starts from the base model, but then nothing ever trains."""
    wrong = edited_solution(STEM, "init_lora_weights", "nn.init.kaiming_uniform_(A, a=math.sqrt(5))", "A.zero_()",
                            tmp_path)
    scores = course.autograde(STEM, "both_zero", wrong).by_cell()
    assert scores == {**FULL_MARKS, "test_init_lora_weights": 0}, scores
