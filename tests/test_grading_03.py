"""Notebook 03: a typical wrong answer loses only its own exercise's marks."""

import pytest

from conftest import edited_solution

STEM = "03_qlora"
POINTS = {"test_absmax": 2, "test_nf4_code_book": 2, "test_nf4_quantize_block": 2,
          "test_double_quant_saved_bytes": 2, "test_qlora_state_bytes": 2}


@pytest.mark.grading
def test_absmax_without_per_block_scale_loses_only_its_marks(course, tmp_path):
    """One absmax for the whole tensor (repeated per block) instead of one per block."""
    wrong = edited_solution(STEM, "absmax", "absmax = blocks.abs().amax(dim=1)",
                            "absmax = blocks.abs().amax().repeat(blocks.shape[0])", tmp_path)
    scores = course.autograde(STEM, "global-absmax", wrong).by_cell()
    assert scores["test_absmax"] == 0
    assert {k: v for k, v in scores.items() if k != "test_absmax"} == {k: v for k, v in POINTS.items() if k != "test_absmax"}


@pytest.mark.grading
def test_double_quant_forgetting_second_level_scales_loses_only_its_marks(course, tmp_path):
    """Counting the 8-bit scales but not the float32 scale of every 256 blocks."""
    wrong = edited_solution(STEM, "double_quant_saved_bytes", "after = 1 * blocks + 4 * blocks / block_size2",
                            "after = 1 * blocks", tmp_path)
    scores = course.autograde(STEM, "no-second-level", wrong).by_cell()
    assert scores["test_double_quant_saved_bytes"] == 0
    assert scores["test_absmax"] == 2 and scores["test_qlora_state_bytes"] == 2
