"""`course grade` as the README gives it, run from a folder outside the repository on a class whose students
each hand in several notebooks (a relative --output once zeroed every one of them)."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.instructor.tiny_assignment import FULL, STEM, TINY, released, solution

pytestmark = pytest.mark.grading
SECOND = "second_assignment"


def test_grading_from_another_folder_gives_every_notebook_its_grade(tmp_path):
    solutions = tmp_path / "term" / "solutions"
    solutions.mkdir(parents=True)
    shutil.copy(TINY, solutions / f"{STEM}.ipynb")
    shutil.copy(TINY, solutions / f"{SECOND}.ipynb")
    for student, notebook in (("honest", solution()), ("blank", nbformat.reads(released(), as_version=4))):
        for stem in (STEM, SECOND):
            (tmp_path / "term" / "submissions" / student).mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook, tmp_path / "term" / "submissions" / student / f"{stem}.ipynb")
    course = Path(sys.executable).parent / "course"
    done = subprocess.run([str(course), "grade", "submissions", "--output", "grading", "--solutions", "solutions"],
                          cwd=tmp_path / "term", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "see the above traceback" not in done.stdout + done.stderr
    with (tmp_path / "term" / "grading" / "grades.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for stem in (STEM, SECOND):
        got = {r["exercise"]: float(r["score"]) for r in rows if r["student"] == "honest" and r["notebook"] == stem}
        assert got == FULL, (stem, rows)
        blank = [float(r["score"]) for r in rows if r["student"] == "blank" and r["notebook"] == stem]
        assert blank == [0.0, 0.0], (stem, rows)


def test_a_grader_failure_names_its_cause_not_the_traceback_above():
    from course_lib.instructor.grading import _cause

    log = ("[AutogradeApp | ERROR] There was an error processing assignment: x\n"
           "Traceback (most recent call last):\n  File \"a.py\", line 1\n"
           "sqlalchemy.exc.OperationalError: unable to open database file\n"
           "Traceback (most recent call last):\n    raise NbGraderException(msg)\n"
           "[AutogradeApp | ERROR] Please see the the above traceback for details on the specific errors\n")
    result = {"success": False, "log": log,
              "error": "nbgrader.converters.base.NbGraderException: Please see the the above traceback for details"}
    assert _cause(result) == "sqlalchemy.exc.OperationalError: unable to open database file"
