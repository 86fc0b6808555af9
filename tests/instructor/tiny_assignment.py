"""The tiny two-exercise assignment (fixtures/tiny_assignment.ipynb) that the instructor tests grade: no model, so
the grader itself is what takes the time. Helpers shared by test_hostile.py and test_validate_button.py."""

import functools
import tempfile
from pathlib import Path

import nbformat

from course_lib.instructor.grading import release

TINY = Path(__file__).parent / "fixtures" / "tiny_assignment.ipynb"
STEM = TINY.stem
FULL = {"test_add": 1.0, "test_is_even": 2.0}


@functools.lru_cache(maxsize=1)
def released() -> str:
    """The student notebook as nbgrader releases it (hidden tests gone, checksums in)."""
    with tempfile.TemporaryDirectory() as folder:
        (written,) = release(TINY.parent, Path(folder))
        return written.read_text()


def solution() -> nbformat.NotebookNode:
    """What an honest student hands in: the released notebook with the exercises solved."""
    nb = nbformat.reads(released(), as_version=4)
    reference = nbformat.read(TINY, as_version=4)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            solved = graded_cell(reference, meta["grade_id"]).source
            cell.source = "\n".join(line for line in solved.splitlines() if "### " not in line)
    return nb


def graded_cell(nb, grade_id):
    """The cell whose nbgrader grade_id is `grade_id`."""
    return next(c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id)


def wrong_is_even(nb):
    """`nb` with the typical wrong answer to is_even (odd numbers are even)."""
    answer = graded_cell(nb, "is_even")
    answer.source = answer.source.replace("n % 2 == 0", "n % 2 == 1")
    return nb
