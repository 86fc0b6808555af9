"""Notebook 04: a typical wrong answer loses that exercise's marks and nothing else."""

import pytest

from conftest import edited_solution

STEM = "04_trainer_configuration"
EXERCISES = ["test_effective_batch_and_steps", "test_lr_at", "test_decay_parameter_names", "test_stop_on_nan",
             "test_plan_run"]


@pytest.mark.grading
def test_cosine_without_its_warmup_loses_only_the_lr_exercise(course, tmp_path):
    """The classic slip: cosine decay from step 0, the warmup forgotten."""
    wrong = edited_solution(
        STEM, "lr_at",
        "    if step < warmup_steps:\n        return peak_lr * step / warmup_steps\n"
        "    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)\n",
        "    progress = step / total_steps\n",
        tmp_path)
    scores = course.autograde(STEM, "no-warmup", wrong).by_cell()
    assert scores["test_lr_at"] == 0
    assert {name: scores[name] for name in EXERCISES if name != "test_lr_at"} == \
        {name: 2 for name in EXERCISES if name != "test_lr_at"}
