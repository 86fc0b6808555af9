"""Notebook 06: a typical wrong answer loses its own marks and no others."""

import pytest

from conftest import edited_solution

STEM = "06_deployment"
FULL = {"test_max_abs_logit_diff": 2, "test_read_card_facts": 2, "test_json_endpoint_settings": 2,
        "test_adapter_num_params": 2}


def _only_lost(scores: dict, cell: str) -> None:
    assert scores[cell] == 0, scores
    assert {k: v for k, v in scores.items() if k != cell} == {k: v for k, v in FULL.items() if k != cell}, scores


@pytest.mark.grading
def test_mean_instead_of_max_logit_difference_loses_only_its_marks(course, tmp_path):
    wrong = edited_solution(STEM, "max_abs_logit_diff", "diff[attention_mask.bool()].max()",
                            "diff[attention_mask.bool()].mean()", tmp_path)
    _only_lost(course.autograde(STEM, "mean", wrong).by_cell(), "test_max_abs_logit_diff")


@pytest.mark.grading
def test_adapter_size_with_one_matrix_or_no_bias_loses_only_its_marks(course, tmp_path):
    wrong = edited_solution(STEM, "adapter_num_params", "total += r * (n_in + n_out)", "total += r * n_in", tmp_path)
    _only_lost(course.autograde(STEM, "one_matrix", wrong).by_cell(), "test_adapter_num_params")
    (tmp_path / "bias").mkdir()
    wrong = edited_solution(STEM, "adapter_num_params", 'if has_bias and (bias == "all"', "if False and (bias == \"all\"",
                            tmp_path / "bias")
    _only_lost(course.autograde(STEM, "no_bias", wrong).by_cell(), "test_adapter_num_params")


@pytest.mark.grading
def test_sampling_endpoint_settings_lose_only_their_marks(course, tmp_path):
    wrong = edited_solution(STEM, "json_endpoint_settings", "temperature=0.0", "temperature=0.7", tmp_path)
    _only_lost(course.autograde(STEM, "sampling", wrong).by_cell(), "test_json_endpoint_settings")
