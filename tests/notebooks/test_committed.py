"""The committed notebooks: notebooks/ is exactly what `course release` makes of solutions/, answers hidden, no
outputs anywhere, and every solution carries the current Colab badge and setup lines."""

import json

import pytest

from course_lib.instructor import badges, grading
from tests.helpers import REPO, SOLUTIONS


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


@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_solution_notebook_carries_the_current_badge_and_setup_lines(notebook):
    assert badges.problems(notebook) == []


@pytest.mark.parametrize("notebook", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_graded_cells_let_run_all_go_on(notebook):
    """A failing test cell must not stop papermill or JupyterLab's Run All: graded cells carry `raises-exception`."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            assert "raises-exception" in cell["metadata"].get("tags", []), \
                f"{notebook.name}: {cell['metadata']['nbgrader']['grade_id']} has no raises-exception tag"
