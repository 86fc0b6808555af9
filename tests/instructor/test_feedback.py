"""The feedback page is built from the grade alone: escaped text, one line per failure, no source, no markup."""

from course_lib.instructor.feedback import feedback_page, message, write_feedback
from course_lib.instructor.grading import CellGrade, NotebookGrade

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def _grade(**overrides) -> NotebookGrade:
    cells = (CellGrade("test_add", 1.0, 1.0),
             CellGrade("test_is_even", 0.0, 2.0, message=f"AssertionError: expected {HOSTILE}\nassert is_even(-7)"))
    return NotebookGrade(**{"notebook": "tiny", "student": "student-1a2b3c4d", "cells": cells,
                            "note": f"found {HOSTILE}.ipynb but no tiny.ipynb", **overrides})


def test_the_page_has_title_total_rows_and_note():
    page = feedback_page(_grade(), name="李明")
    assert "<title>tiny: feedback for 李明 (student-1a2b3c4d)</title>" in page
    assert "Total: 1 / 3" in page
    assert page.count("<tr class=") == 2 and '<tr class="failed"><td>test_is_even</td><td>0 / 2</td>' in page
    assert "<b>Note:</b> found &lt;script&gt;" in page


def test_nothing_from_the_student_or_the_tests_is_markup_or_more_than_one_line():
    page = feedback_page(_grade(), name=HOSTILE)
    assert "<script" not in page and "<img" not in page
    assert page.count("&lt;script&gt;") == 4  # the name (title and heading), the message and the note
    assert "assert is_even(-7)" not in page  # only the first line of a message


def test_a_passed_cell_shows_no_message_and_a_failed_one_without_a_reason_says_so():
    assert message(CellGrade("a", 1.0, 1.0, message="stale")) == ""
    assert message(CellGrade("a", 0.0, 1.0)) == "failed"
    assert message(CellGrade("a", 0.0, 1.0, message="x" * 1000)) == "x" * 300


def test_write_feedback_replaces_the_page(tmp_path):
    first = write_feedback(_grade(), tmp_path / "student-1a2b3c4d")
    second = write_feedback(_grade(note=""), tmp_path / "student-1a2b3c4d")
    assert first == second == tmp_path / "student-1a2b3c4d" / "tiny.html"
    assert "Note:" not in second.read_text(encoding="utf-8")
    assert [p.name for p in (tmp_path / "student-1a2b3c4d").iterdir()] == ["tiny.html"]
