"""Notebook 01: a typical wrong answer loses the marks of its exercise, and only those."""

import pytest

from conftest import edited_solution

STEM = "01_data_formatting"
FULL = {"test_format_instruction": 2, "test_build_labels": 3, "test_check_chat_row": 2,
        "test_split_without_leakage": 2, "test_pack_into_blocks": 3}

WRONG = {
    # masking nothing: every token learned, the model trains on the prompt too
    "mask_nothing": ("build_labels", "labels = [IGNORE_INDEX] * len(ids)", "labels = list(ids)", "test_build_labels"),
    # no EOS after the output: the model never learns to stop
    "no_eos": ("format_instruction", 'return prompt + row["output"] + eos_token', 'return prompt + row["output"]',
               "test_format_instruction"),
    # positions run on across examples instead of restarting
    "positions_run_on": ("pack_into_blocks", 'block["position_ids"] += list(range(len(seq)))',
                         'block["position_ids"] += list(range(len(block["position_ids"]), '
                         'len(block["position_ids"]) + len(seq)))', "test_pack_into_blocks"),
}


@pytest.mark.grading
@pytest.mark.parametrize("mistake", list(WRONG))
def test_a_typical_wrong_answer_loses_only_its_marks(course, tmp_path, mistake):
    grade_id, old, new, test_cell = WRONG[mistake]
    wrong = edited_solution(STEM, grade_id, old, new, tmp_path)
    scores = course.autograde(STEM, mistake, wrong).by_cell()
    assert scores == {**FULL, test_cell: 0}, scores
