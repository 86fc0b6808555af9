"""nbgrader round trips: the reference solution gets full marks, the blank student notebook zero."""

import json

import pytest

from conftest import REPO, SOLUTIONS, edited_solution
from course_lib import grading


@pytest.mark.grading
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_reference_solution_gets_full_marks(course, notebook):
    result = course.autograde(notebook.stem, "reference", notebook)
    assert result.cells, "a graded notebook needs graded cells"
    assert result.score == result.max_score, result.by_cell()
    # every cell, not only the graded ones, runs cleanly inside the sandbox (model cache, plots, training)
    executed = json.loads(course.autograded_notebook(notebook.stem, "reference").read_text())
    errors = [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(executed["cells"])
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], errors


@pytest.mark.grading
@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_blank_student_notebook_gets_zero(course, notebook):
    result = course.autograde(notebook.stem, "blank", course.student_notebook(notebook.stem))
    assert result.max_score > 0
    assert result.score == 0, result.by_cell()


@pytest.mark.grading
def test_a_typical_wrong_answer_loses_only_its_marks(course, tmp_path):
    """Exercise 1 of notebook 00 with ensure_ascii left on: only that exercise loses its points."""
    stem = "00_quick_start"
    wrong = edited_solution(stem, "build_messages", "ensure_ascii=False", "ensure_ascii=True", tmp_path)
    scores = course.autograde(stem, "ascii", wrong).by_cell()
    assert scores["test_build_messages"] == 0
    assert scores["test_is_exact_match"] == 2


def test_released_notebooks_match_their_solutions_and_hide_answers(tmp_path):
    written = grading.release(REPO / "solutions", tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")), \
        "notebooks/ and solutions/ hold different notebooks: run `course release`"
    for fresh in written:
        committed = REPO / "notebooks" / fresh.name
        assert grading.notebook_json(committed) == grading.notebook_json(fresh), \
            f"{committed} is out of date: run `course release`"
        assert grading.leaked_markers(committed) == []
        text = committed.read_text()
        assert "BEGIN SOLUTION" not in text and "HIDDEN" not in text
        assert "raise NotImplementedError()" in text


def test_committed_notebooks_carry_no_outputs():
    for path in [*SOLUTIONS, *sorted((REPO / "notebooks").glob("*.ipynb"))]:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"
