"""The "Validate" button: nbgrader's validator runs a learner's notebook and names the failing visible test."""

import subprocess
import sys

import nbformat
import pytest

from tests.instructor.tiny_assignment import STEM, graded_cell, solution, wrong_is_even


@pytest.mark.grading
@pytest.mark.parametrize("wrong, verdict", [(False, "Success! Your notebook passes all the tests."),
                                            (True, "VALIDATION FAILED")])
def test_validate_reports_failing_visible_tests(tmp_path, wrong, verdict):
    nb = wrong_is_even(solution()) if wrong else solution()
    path = tmp_path / f"{STEM}.ipynb"
    nbformat.write(nb, path)
    result = subprocess.run([sys.executable, "-m", "nbgrader", "validate", str(path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert verdict in result.stdout, result.stdout + result.stderr
    if wrong:
        assert "assert is_even(2) and not is_even(3)" in result.stdout
    assert "HIDDEN" not in result.stdout and "is_even(-7)" not in result.stdout
    assert graded_cell(nb, "test_add")  # the released notebook kept its test cells
